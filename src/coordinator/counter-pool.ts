/**
 * Every counter the coordinator knows: from COUNTERS (DNS names re-resolved periodically, a name
 * with several addresses meaning all of them) and from the members counters report.
 *
 * All writes and reads go to one home counter, the usable counter ranked first by rendezvous
 * hashing of this coordinator's id with the counters' ids; when it fails, the next one in that
 * order. One counter taking every write of this coordinator means one coalesced Add frame, one
 * transaction and one fsync for all the requests of a moment, whatever their tenants (spreading
 * tenants over counters split those batches three ways and cost a third of the write rate on the
 * benchmark machine). Writes and reads meeting on one counter give read-your-writes through this
 * coordinator; coordinators with different ids spread over the counters.
 */
import dns from 'node:dns/promises';
import net from 'node:net';
import type { Logger } from 'pino';
import type { CoordinatorConfig } from '../shared/config.ts';
import { formatAddress, isAddress, type Address } from '../shared/address.ts';
import type { Item } from '../protocol/messages.ts';
import { CounterLink, CounterUnavailableError, type LinkRuntime } from './counter-link.ts';
import type { TimerHandle } from '../shared/clock.ts';
import { lagBehind } from './replication-lag.ts';

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
  /** Age of the oldest update other counters hold that this one lacks, as they last reported; null if none reports lag. */
  replicationLagSeconds: number | null;
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
  /** Rendezvous weights by counter id (see weight). */
  private readonly weights = new Map<string, number>();
  /** Links made from members' announcements rather than from COUNTERS. */
  private readonly learned = new Set<CounterLink>();
  private readonly refresh: TimerHandle;
  /** Requests that left their first counter for another (read by the metrics). */
  failovers = 0;

  constructor(
    private readonly config: Readonly<CoordinatorConfig>,
    private readonly log: Logger,
    private readonly runtime: LinkRuntime,
  ) {
    this.refresh = runtime.clock.setInterval(() => void this.resolveConfigured(), config.dnsRefreshMs);
  }

  async start(): Promise<void> {
    await this.resolveConfigured();
  }

  get anyUsable(): boolean {
    for (const l of this.links.values()) if (l.usable) return true;
    return false;
  }

  view(): CounterView[] {
    const statuses = [...this.links.values()].map((l) => l.status);
    return [...this.links.values()].map((l) => ({
      id: l.id,
      address: l.address,
      reachable: l.reachable,
      ready: l.usable,
      lastHeardAt: l.lastHeardAt ? new Date(l.lastHeardAt).toISOString() : null,
      items: l.status?.items ?? null,
      replicationLagSeconds: lagBehind(l.id, statuses),
    }));
  }

  /** Usable counters, home first (rendezvous order for this coordinator). */
  candidates(exclude?: ReadonlySet<CounterLink>): CounterLink[] {
    const scored: { link: CounterLink; w: number }[] = [];
    for (const link of this.links.values()) {
      if (link.usable && !exclude?.has(link)) scored.push({ link, w: this.weight(link) });
    }
    return scored.sort((a, b) => b.w - a.w).map((s) => s.link);
  }

  /**
   * The replicas of a tenant in placement order: this coordinator's home counter first, then its
   * failover order. Every member counts, reachable or not, so a quorum keeps its size when
   * counters die. Today every counter holds every tenant, so this is every counter known (one
   * link per counter id); shards will narrow it to the tenant's shard's replicas.
   */
  replicas(_tenant: string): CounterLink[] {
    const byId = new Map<string, CounterLink>();
    for (const link of this.links.values()) {
      const seen = byId.get(link.id);
      if (!seen || (!seen.usable && link.usable)) byId.set(link.id, link);
    }
    return [...byId.values()].sort((a, b) => this.weight(b) - this.weight(a));
  }

  /** The home counter: the usable one with the highest weight, no sorting. */
  private home(): CounterLink | undefined {
    let best: CounterLink | undefined;
    let bestW = -1;
    for (const link of this.links.values()) {
      if (!link.usable) continue;
      const w = this.weight(link);
      if (w > bestW) {
        bestW = w;
        best = link;
      }
    }
    return best;
  }

  /** Rendezvous weight of a counter for this coordinator. */
  private weight(link: CounterLink): number {
    // asked several times per request (home, replicas); a counter's id never changes its weight
    const id = link.id;
    let w = this.weights.get(id);
    if (w === undefined) {
      w = hash32(`${this.config.id}\u0000${id}`);
      this.weights.set(id, w);
    }
    return w;
  }

  /** Adds items on the home counter, or the next one that takes them; resolves once they are stored. */
  add(items: readonly Item[]): Promise<number> {
    return this.onFirstAvailable((link) => link.add(items), 'no counter can take the write right now');
  }

  /** The tenant's count on the home counter: at once when its link watches the tenant (see CounterLink.knownCount). */
  count(tenant: string): number | Promise<number> {
    const known = this.home()?.knownCount(tenant);
    if (known !== undefined) return known;
    return this.onFirstAvailable((link) => link.count(tenant), 'no counter is reachable right now');
  }

  /** Runs `request` on the home counter, failing over in rendezvous order while counters are unavailable. */
  private onFirstAvailable(request: (link: CounterLink) => Promise<number>, noneMessage: string): Promise<number> {
    const first = this.home();
    if (!first) return Promise.reject(new NoCounterAvailableError(noneMessage));
    return request(first).catch((err: unknown) => this.failOver(request, first, err));
  }

  private async failOver(request: (link: CounterLink) => Promise<number>, failed: CounterLink, err: unknown): Promise<number> {
    if (!(err instanceof CounterUnavailableError)) throw err;
    this.failovers++;
    this.log.debug({ counter: failed.id, err: err.message }, 'failing over');
    let lastErr = err;
    for (const link of this.candidates(new Set([failed]))) {
      try {
        return await request(link);
      } catch (e) {
        if (!(e instanceof CounterUnavailableError)) throw e;
        lastErr = e;
      }
    }
    throw new NoCounterAvailableError(`no counter answered: ${lastErr.message}`);
  }

  close(): void {
    this.runtime.clock.clear(this.refresh);
    for (const l of this.links.values()) l.close();
  }

  private ensure(address: string, learned = false): void {
    if (this.links.has(address)) return;
    this.log.info({ address, learned }, 'new counter');
    const link = new CounterLink(address, this.config, this.log.child({ counter: address }), (l) => this.onStatus(l), this.runtime);
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
