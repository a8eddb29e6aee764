/**
 * Every counter the coordinator knows: from COUNTERS (DNS names re-resolved periodically, a name
 * with several addresses meaning all of them) and from the members counters report. Picks counters
 * per tenant by rendezvous hashing over the usable ones, so a tenant's writes and reads land on
 * the same counter while it stays up (read your writes) and move only when it goes away.
 */
import dns from 'node:dns/promises';
import net from 'node:net';
import type { Logger } from 'pino';
import type { CoordinatorConfig } from '../shared/config.ts';
import { formatAddress, isAddress, type Address } from '../shared/address.ts';
import type { Item } from '../protocol/messages.ts';
import { CounterLink, CounterRejectedError, CounterUnavailableError } from './counter-link.ts';

export class NoCounterAvailableError extends Error {
  override name = 'NoCounterAvailableError';
}

export interface CounterView {
  id: string;
  address: string;
  reachable: boolean;
  ready: boolean;
  lastHeardAt: string | null;
  items: number | null;
}

function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  return h >>> 0;
}

export class CounterPool {
  private readonly links = new Map<string, CounterLink>();
  /** Links made from members' announcements rather than from COUNTERS. */
  private readonly learned = new Set<CounterLink>();
  private readonly refresh: NodeJS.Timeout;

  constructor(private readonly config: Readonly<CoordinatorConfig>, private readonly log: Logger) {
    this.refresh = setInterval(() => void this.resolveConfigured(), config.dnsRefreshMs);
    this.refresh.unref();
  }

  async start(): Promise<void> {
    await this.resolveConfigured();
  }

  get anyUsable(): boolean {
    for (const l of this.links.values()) if (l.usable) return true;
    return false;
  }

  view(): CounterView[] {
    return [...this.links.values()].map((l) => ({
      id: l.id,
      address: l.address,
      reachable: l.reachable,
      ready: l.usable,
      lastHeardAt: l.lastHeardAt ? new Date(l.lastHeardAt).toISOString() : null,
      items: l.status?.items ?? null,
    }));
  }

  /** Usable counters for a tenant, best first. */
  candidates(tenant: string, exclude?: ReadonlySet<CounterLink>): CounterLink[] {
    const scored: { link: CounterLink; w: number }[] = [];
    for (const link of this.links.values()) {
      if (link.usable && !exclude?.has(link)) scored.push({ link, w: hash32(`${tenant}\u0000${link.id}`) });
    }
    return scored.sort((a, b) => b.w - a.w).map((s) => s.link);
  }

  /** The best usable counter for a tenant: the highest rendezvous weight, no sorting. */
  private best(tenant: string, usable: readonly CounterLink[]): CounterLink | undefined {
    let best: CounterLink | undefined;
    let bestW = -1;
    for (const link of usable) {
      const w = hash32(`${tenant}\u0000${link.id}`);
      if (w > bestW) {
        bestW = w;
        best = link;
      }
    }
    return best;
  }

  /** Adds items on their tenants' counters, failing over per group; resolves once all are stored. */
  async add(items: readonly Item[], exclude: ReadonlySet<CounterLink> = new Set()): Promise<void> {
    const usable = [...this.links.values()].filter((l) => l.usable && !exclude.has(l));
    if (usable.length === 0) throw new NoCounterAvailableError('no counter can take the write right now');
    const groups = new Map<CounterLink, Item[]>();
    const chosen = new Map<string, CounterLink>();
    for (const it of items) {
      let link = chosen.get(it.tenant);
      if (!link) chosen.set(it.tenant, (link = this.best(it.tenant, usable)!));
      let g = groups.get(link);
      if (!g) groups.set(link, (g = []));
      g.push(it);
    }
    await Promise.all(
      [...groups].map(async ([link, group]) => {
        try {
          await link.add(group);
        } catch (err) {
          if (!(err instanceof CounterUnavailableError)) throw err;
          this.log.debug({ counter: link.id, err: err.message }, 'write failed over');
          await this.add(group, new Set([...exclude, link]));
        }
      }),
    );
  }

  async count(tenant: string): Promise<number> {
    // the common case, the tenant's own counter, without building and sorting the whole order
    const usable: CounterLink[] = [];
    for (const l of this.links.values()) if (l.usable) usable.push(l);
    const first = this.best(tenant, usable);
    if (first) {
      try {
        return await first.count(tenant);
      } catch (err) {
        if (err instanceof CounterRejectedError) throw err;
      }
    }
    let lastErr: Error | null = null;
    for (const link of this.candidates(tenant, first ? new Set([first]) : undefined)) {
      try {
        return await link.count(tenant);
      } catch (err) {
        if (err instanceof CounterRejectedError) throw err;
        lastErr = err as Error;
      }
    }
    throw new NoCounterAvailableError(lastErr ? `no counter answered: ${lastErr.message}` : 'no counter is reachable right now');
  }

  close(): void {
    clearInterval(this.refresh);
    for (const l of this.links.values()) l.close();
  }

  private ensure(address: string, learned = false): void {
    if (this.links.has(address)) return;
    this.log.info({ address, learned }, 'new counter');
    const link = new CounterLink(address, this.config, this.log.child({ counter: address }), (l) => this.onStatus(l));
    if (learned) this.learned.add(link);
    this.links.set(address, link);
  }

  private onStatus(link: CounterLink): void {
    this.dropDuplicate(link);
    // counters announce the members they know; a counter started later is connected to within a heartbeat
    for (const m of link.status?.members ?? []) {
      if (isAddress(m.address) && ![...this.links.values()].some((l) => l.id === m.id)) this.ensure(m.address, true);
    }
  }

  /**
   * A counter announced under its own name (counter-1:9001) may already be linked through an
   * address COUNTERS resolved to (10.0.0.5:9001): once both report the same id, keep one link.
   */
  private dropDuplicate(link: CounterLink): void {
    if (!link.status) return;
    for (const other of this.links.values()) {
      if (other === link || other.status?.id !== link.status.id) continue;
      const drop = this.learned.has(link) ? link : this.learned.has(other) ? other : null;
      if (!drop) continue;
      this.log.info({ counter: drop.id, address: drop.address }, 'second address of a known counter; closing that link');
      drop.close();
      this.links.delete(drop.address);
      this.learned.delete(drop);
      return;
    }
  }

  private async resolveConfigured(): Promise<void> {
    for (const a of this.config.counters) {
      for (const addr of await this.resolve(a)) this.ensure(formatAddress(addr));
    }
  }

  private async resolve(a: Address): Promise<Address[]> {
    if (net.isIP(a.host)) return [a];
    try {
      const found = await dns.lookup(a.host, { all: true });
      return found.map((f) => ({ host: f.address, port: a.port }));
    } catch (err) {
      this.log.warn({ host: a.host, err: (err as Error).message }, 'could not resolve counter address; will retry');
      return [];
    }
  }
}
