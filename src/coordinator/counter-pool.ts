/**
 * Every counter the coordinator knows: from COUNTERS (DNS names re-resolved periodically, a name
 * with several addresses meaning all of them) and from the members counters report.
 *
 * Requests go by shard once counters report a placement (see ShardMap): a tenant's shard has its
 * replicas, and among those that are reachable, ready and serving the shard, the home replica is
 * the one ranked first by rendezvous hashing of this coordinator's id with the counters' ids; when
 * it fails, the shard's other replicas in placement order, and last the counters still serving the
 * shard while they hand it off. With no more counters than the replication factor every shard has
 * every counter, so each coordinator has one home counter for all its tenants: one coalesced Add
 * frame, one transaction and one fsync for all the requests of a moment (spreading tenants over
 * counters split those batches three ways and cost a third of the write rate on the benchmark
 * machine). Writes and reads of a tenant meeting on one counter give read-your-writes through this
 * coordinator; coordinators with different ids spread over the counters. Before any counter
 * reports a placement (counters of an earlier version), every counter is a replica of every tenant.
 */
import dns from 'node:dns/promises';
import net from 'node:net';
import type { Logger } from 'pino';
import type { CoordinatorConfig } from '../shared/config.ts';
import { formatAddress, isAddress, type Address } from '../shared/address.ts';
import type { Item, Status } from '../protocol/messages.ts';
import { CounterLink, CounterRejectedError, CounterUnavailableError, type LinkRuntime, type Tally } from './counter-link.ts';
import type { TimerHandle } from '../shared/clock.ts';
import { lagBehind } from './replication-lag.ts';
import { ShardMap } from './shard-map.ts';
import type { Replica } from './quorum.ts';
import { ClientError } from './errors.ts';

export class NoCounterAvailableError extends Error {
  override name = 'NoCounterAvailableError';
  /**
   * @param sent true when a counter was asked and gave no answer in time: it may have done what
   *   it was asked (a removal stored before its answer was lost)
   */
  constructor(message: string, readonly sent = false) {
    super(message);
  }
}

export interface CounterView {
  id: string;
  address: string;
  reachable: boolean;
  ready: boolean;
  lastHeardAt: string | null;
  /** Distinct items the counter holds (its share of the shards), as of its last status. */
  items: number | null;
  /** Age of the oldest update other counters hold that this one lacks, as they last reported; null if none reports lag. */
  replicationLagSeconds: number | null;
  /**
   * Shards the counter serves and holds, as of its last status; null when it reports no placement.
   * Optional for views that know nothing of shards (the HTTP tests' fake pools); the pool fills both.
   */
  serving?: number | null;
  held?: number | null;
}

/** GET /shards: the placement as this coordinator sees it. */
export interface ShardsView {
  shards: { shard: number; replicas: { id: string; inSync: boolean }[]; handingOff: string[] }[];
  /** null while no counter reports a placement. */
  factor: number | null;
  members: string[];
  removed: string[];
}

/** What GET /shards answers while no counter reports a placement. */
export const NO_PLACEMENT: ShardsView = Object.freeze({ shards: [], factor: null, members: [], removed: [] }) as unknown as ShardsView;

/** The pool's message for an add no counter can take at all (as before shards). */
const NO_WRITE = 'no counter can take the write right now';

/**
 * The rendezvous weight of a counter for a coordinator: each coordinator ranks a shard's usable
 * replicas by it and sends its requests to the first (its home replica for that shard).
 */
export function coordinatorWeight(coordinatorId: string, counterId: string): number {
  return hash32(`${coordinatorId}\u0000${counterId}`);
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

/** A request on one counter, failed over to the next on CounterUnavailableError. */
type OnLink<T> = (link: CounterLink) => Promise<T>;

export class CounterPool {
  private readonly links = new Map<string, CounterLink>();
  /** Rendezvous weights by counter id (see weight). */
  private readonly weights = new Map<string, number>();
  /** Links made from members' announcements rather than from COUNTERS. */
  private readonly learned = new Set<CounterLink>();
  /** Links by counter id (a counter can be linked under two addresses for a while). */
  private byId = new Map<string, CounterLink[]>();
  /** The placement the counters report; rebuilt from their statuses as they change. */
  private readonly map = new ShardMap();
  /** Requests waiting for a counter to serve their shard; called on every status. */
  private readonly statusWaiters = new Set<() => void>();
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
    const out: CounterView[] = [];
    for (const l of this.links.values()) {
      if (this.gone(l)) continue;
      out.push({
        id: l.id,
        address: l.address,
        reachable: l.reachable,
        ready: l.usable,
        lastHeardAt: l.lastHeardAt ? new Date(l.lastHeardAt).toISOString() : null,
        items: l.status?.items ?? null,
        replicationLagSeconds: lagBehind(l.id, statuses),
        serving: l.status?.serving?.length ?? null,
        held: l.status?.held?.length ?? null,
      });
    }
    return out;
  }

  /**
   * A counter removed for good that has nothing left to hand off (it holds no shard, or it is
   * gone): no longer listed. Its link stays: another counter may be started at that address.
   */
  private gone(link: CounterLink): boolean {
    return this.map.isRemoved(link.id) && (!link.reachable || link.status?.held?.length === 0);
  }

  /** Every shard with its replicas in placement order, which of them serve it, and who still hands it off. */
  shardsView(): ShardsView {
    const m = this.map;
    if (!m.sharded) return NO_PLACEMENT;
    const shards: ShardsView['shards'] = [];
    for (let shard = 0; shard < m.shards; shard++) {
      const placed = m.replicasOf(shard);
      shards.push({
        shard,
        replicas: placed.map((id) => ({ id, inSync: this.servingLink(id, shard, false) !== undefined })),
        handingOff: this.handingOff(shard, false).map((l) => l.id),
      });
    }
    return { shards, factor: m.factor, members: [...m.members], removed: [...m.removed] };
  }

  /** Usable counters, home first (rendezvous order for this coordinator). Ignores shards. */
  candidates(exclude?: ReadonlySet<CounterLink>): CounterLink[] {
    const scored: { link: CounterLink; w: number }[] = [];
    for (const link of this.links.values()) {
      if (link.usable && !exclude?.has(link)) scored.push({ link, w: this.weight(link) });
    }
    return scored.sort((a, b) => b.w - a.w).map((s) => s.link);
  }

  /**
   * The replicas of a tenant: its home replica first, then the others in placement order. Every
   * replica counts, reachable or not, so a quorum keeps its size when counters die; a replica is
   * usable while its counter is usable and serves the tenant's shard. Counters handing the shard
   * off are not among them. Before any counter reports a placement, every counter known (one per
   * counter id), in rendezvous order.
   */
  replicas(tenant: string): Replica[] {
    if (!this.map.sharded) {
      const out: CounterLink[] = [];
      for (const links of this.byId.values()) out.push(links.find((l) => l.usable) ?? links[0]!);
      return out.sort((a, b) => this.weight(b) - this.weight(a));
    }
    const shard = this.map.shardOf(tenant);
    const home = this.shardHome(shard)?.id;
    const out: Replica[] = [];
    const serving = (id: string, s: number) => this.servingLink(id, s, true);
    for (const id of this.map.replicasOf(shard)) {
      const r = new ShardReplica(id, shard, serving);
      if (id === home) out.unshift(r);
      else out.push(r);
    }
    return out;
  }

  /**
   * Adds items on each item's home replica: one Add per counter, in parallel, each failing over
   * on its own. Resolves with the number of items once every one of them is stored.
   */
  add(items: readonly Item[]): Promise<number> {
    if (!this.map.sharded) return this.onFirstAvailable((link) => link.add(items), NO_WRITE);
    return this.addByShard(items, null, this.runtime.clock.now() + this.config.counterTimeoutMs).then(() => items.length);
  }

  /** The tenant's count on its home replica: at once when its link watches the tenant (see CounterLink.knownCount). */
  count(tenant: string): number | Promise<number> {
    if (!this.map.sharded) {
      const known = this.home()?.knownCount(tenant);
      if (known !== undefined) return known;
      return this.onFirstAvailable((link) => link.count(tenant), 'no counter is reachable right now');
    }
    const shard = this.map.shardOf(tenant);
    const known = this.shardHome(shard)?.knownCount(tenant);
    if (known !== undefined) return known;
    return this.onShard(shard, (link) => link.count(tenant), null, this.runtime.clock.now() + this.config.counterTimeoutMs);
  }

  /**
   * Removes the member `id` from the mesh for good: asks a usable counter (the others first, the
   * counter itself last), failing over while they are unavailable. Resolves once one has the
   * removal on disk; it spreads to the rest from there. ClientError 404 for an id that is not a
   * member, 409 for the last member; NoCounterAvailableError when no counter can be asked.
   */
  async removeCounter(id: string): Promise<void> {
    const m = this.map;
    if (!m.sharded) {
      throw new NoCounterAvailableError('no counter reports the member list yet (counters of a version without placement cannot remove members)');
    }
    if (m.isRemoved(id)) throw new ClientError(404, 'ALREADY_REMOVED', `counter ${JSON.stringify(id)} was removed from the mesh already`);
    // a counter this coordinator links to may be a member the placed lists do not show yet: the counters decide
    if (!m.members.includes(id) && !this.byId.has(id)) {
      throw new ClientError(404, 'UNKNOWN_COUNTER', `no counter has ${JSON.stringify(id)} as a member; members: ${m.members.join(', ')}`);
    }
    if (m.members.length === 1 && m.members[0] === id) throw lastMember(id);
    // removed counters still handing off are no longer in the member list's business
    const asked = this.candidates().filter((l) => !m.isRemoved(l.id));
    // the counter being removed is asked last: it may be on its way out already
    asked.sort((a, b) => Number(a.id === id) - Number(b.id === id));
    if (asked.length === 0) throw new NoCounterAvailableError('no counter is reachable and ready to take the removal');
    let last: Error | null = null;
    for (const link of asked) {
      try {
        await link.remove(id);
        this.log.info({ removed: id, by: link.id }, 'counter removed from the mesh');
        return;
      } catch (err) {
        if (err instanceof CounterRejectedError) throw refusal(id, err);
        if (!(err instanceof CounterUnavailableError)) throw err;
        last = err;
      }
    }
    throw new NoCounterAvailableError(`no counter took the removal: ${last!.message}`, true);
  }

  /** The home counter ignoring shards: the usable one with the highest weight, no sorting. */
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

  /**
   * A link to counter `id` that serves the shard: usable (reachable and ready) when `usable`,
   * merely heard from within two heartbeats otherwise (GET /shards).
   */
  private servingLink(id: string, shard: number, usable: boolean): CounterLink | undefined {
    const links = this.byId.get(id);
    if (!links) return undefined;
    for (const l of links) if ((usable ? l.usable : l.reachable) && this.map.serves(l.status, shard)) return l;
    return undefined;
  }

  /** The shard's home: its usable serving replica with the highest weight; a counter handing it off if none. */
  private shardHome(shard: number): CounterLink | undefined {
    let best: CounterLink | undefined;
    let bestW = -1;
    for (const id of this.map.replicasOf(shard)) {
      const link = this.servingLink(id, shard, true);
      if (!link) continue;
      const w = this.weight(link);
      if (w > bestW) {
        bestW = w;
        best = link;
      }
    }
    return best ?? this.handingOff(shard, true)[0];
  }

  /** Counters not placed for the shard that still serve it (handing it off), by weight; reachable ones, or usable ones when `usable`. */
  private handingOff(shard: number, usable: boolean): CounterLink[] {
    const placed = this.map.replicasOf(shard);
    const out: CounterLink[] = [];
    for (const [id, links] of this.byId) {
      if (placed.includes(id)) continue;
      const link = links.find((l) => (usable ? l.usable : l.reachable) && this.map.serves(l.status, shard));
      if (link && (usable || !this.gone(link))) out.push(link);
    }
    return out.sort((a, b) => this.weight(b) - this.weight(a));
  }

  /** Where a request for the shard goes next: its home, or, past the failed links, the next replica in placement order. */
  private next(shard: number, exclude: ReadonlySet<CounterLink> | null): CounterLink | undefined {
    const home = this.shardHome(shard);
    if (!exclude || !home || !exclude.has(home)) return home;
    for (const id of this.map.replicasOf(shard)) {
      const link = this.servingLink(id, shard, true);
      if (link && !exclude.has(link)) return link;
    }
    for (const link of this.handingOff(shard, true)) if (!exclude.has(link)) return link;
    return undefined;
  }

  /** Rendezvous weight of a counter for this coordinator. */
  private weight(link: CounterLink): number {
    // asked several times per request (home, replicas); a counter's id never changes its weight
    const id = link.id;
    let w = this.weights.get(id);
    if (w === undefined) {
      w = coordinatorWeight(this.config.id, id);
      this.weights.set(id, w);
    }
    return w;
  }

  /**
   * Sends each item to its shard's next counter (`exclude`: the counters that failed it), one Add
   * per counter. A batch whose items all go to one counter (the common case: one tenant, or no
   * more counters than the replication factor) is sent as it is, without grouping.
   */
  private addByShard(items: readonly Item[], exclude: ReadonlySet<CounterLink> | null, deadline: number): Promise<void> {
    let first: CounterLink | undefined;
    let firstShard = -1;
    let groups: Map<CounterLink | number, Item[]> | null = null;
    let lastTenant: string | null = null;
    let target: CounterLink | number = -1;
    for (let i = 0; i < items.length; i++) {
      const it = items[i]!;
      if (it.tenant !== lastTenant) {
        lastTenant = it.tenant;
        const shard = this.map.shardOf(it.tenant);
        // a shard nobody serves is keyed by its number: those items wait for a status
        target = this.next(shard, exclude) ?? shard;
        if (i === 0) {
          first = typeof target === 'number' ? undefined : target;
          firstShard = shard;
        }
      }
      if (groups) {
        const g = groups.get(target);
        if (g) g.push(it);
        else groups.set(target, [it]);
      } else if (target !== (first ?? firstShard)) {
        groups = new Map([[first ?? firstShard, items.slice(0, i)]]);
        groups.set(target, [it]);
      }
    }
    if (!groups) return first ? this.addOn(first, items, exclude, deadline) : this.whenServed(firstShard, items, exclude, deadline);
    const sends: Promise<void>[] = [];
    for (const [to, group] of groups) {
      sends.push(typeof to === 'number' ? this.whenServed(to, group, exclude, deadline) : this.addOn(to, group, exclude, deadline));
    }
    return Promise.all(sends).then(() => undefined);
  }

  /** One Add on one counter; on CounterUnavailableError its items go on without it. */
  private addOn(link: CounterLink, items: readonly Item[], exclude: ReadonlySet<CounterLink> | null, deadline: number): Promise<void> {
    return link.add(items).then(
      () => undefined,
      (err: unknown) => {
        if (!(err instanceof CounterUnavailableError)) throw err;
        this.failovers++;
        this.log.debug({ counter: link.id, err: err.message }, 'failing over');
        return this.addByShard(items, new Set(exclude).add(link), deadline);
      },
    );
  }

  /** Items of a shard no counter serves (or every one that did failed): they go once one does, or fail at the deadline. */
  private async whenServed(shard: number, items: readonly Item[], exclude: ReadonlySet<CounterLink> | null, deadline: number): Promise<void> {
    await this.untilServed(shard, exclude, deadline);
    return this.addByShard(items, exclude, deadline);
  }

  /** Runs `request` on the shard's home replica, failing over in placement order; waits for a status while nobody serves the shard. */
  private async onShard<T>(shard: number, request: OnLink<T>, exclude: ReadonlySet<CounterLink> | null, deadline: number): Promise<T> {
    const link = this.next(shard, exclude) ?? (await this.untilServed(shard, exclude, deadline));
    try {
      return await request(link);
    } catch (err) {
      if (!(err instanceof CounterUnavailableError)) throw err;
      this.failovers++;
      this.log.debug({ counter: link.id, err: err.message }, 'failing over');
      return this.onShard(shard, request, new Set(exclude).add(link), deadline);
    }
  }

  /**
   * Waits for a status that gives the shard a counter to ask (a move finishing, a counter coming
   * back), up to `deadline`. Gives up at once when no counter at all is usable: nothing is about
   * to serve the shard then, and the client is told to retry as it always was.
   */
  private async untilServed(shard: number, exclude: ReadonlySet<CounterLink> | null, deadline: number): Promise<CounterLink> {
    for (;;) {
      const link = this.next(shard, exclude);
      if (link) return link;
      if (!this.anyUsable) throw new NoCounterAvailableError(`no counter is reachable and ready (shard ${shard} has none)`);
      if (this.runtime.clock.now() >= deadline) {
        const failed = exclude?.size ? `; ${exclude.size} failed or timed out` : '';
        throw new NoCounterAvailableError(
          `no counter serves shard ${shard} right now (its replicas are down or it is moving between counters${failed}; waited ${this.config.counterTimeoutMs} ms)`,
        );
      }
      await this.nextStatus(deadline);
    }
  }

  /** Resolves on the next status from any counter (or a link closing), or at `deadline`. */
  private nextStatus(deadline: number): Promise<void> {
    const clock = this.runtime.clock;
    return new Promise((resolve) => {
      const done = () => {
        clock.clear(timer);
        this.statusWaiters.delete(done);
        resolve();
      };
      const timer = clock.setTimeout(done, Math.max(0, deadline - clock.now()));
      this.statusWaiters.add(done);
    });
  }

  /** Runs `request` on the home counter, failing over in rendezvous order while counters are unavailable (no placement reported). */
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
    for (const wake of [...this.statusWaiters]) wake();
  }

  private ensure(address: string, learned = false): void {
    if (this.links.has(address)) return;
    this.log.info({ address, learned }, 'new counter');
    const link = new CounterLink(address, this.config, this.log.child({ counter: address }), (l) => this.onStatus(l), this.runtime);
    if (learned) this.learned.add(link);
    this.links.set(address, link);
    this.reindex();
  }

  private onStatus(link: CounterLink): void {
    this.dropDuplicate(link);
    this.reindex();
    this.map.update(this.statuses());
    // counters announce the members they know; a counter started later is connected to within a heartbeat
    for (const m of link.status?.members ?? []) {
      if (isAddress(m.address) && !this.byId.has(m.id) && !this.map.isRemoved(m.id)) this.ensure(m.address, true);
    }
    for (const wake of [...this.statusWaiters]) wake();
  }

  private *statuses(): Iterable<Status | null> {
    for (const l of this.links.values()) yield l.status;
  }

  /** Links by counter id, again: a status can name a link for the first time. */
  private reindex(): void {
    const byId = new Map<string, CounterLink[]>();
    for (const link of this.links.values()) {
      const list = byId.get(link.id);
      if (list) list.push(link);
      else byId.set(link.id, [link]);
    }
    this.byId = byId;
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

/** A counter's refusal of a removal, as the API answers it: 409 for the last member, 404 otherwise. */
function refusal(id: string, err: CounterRejectedError): ClientError {
  if (/last member/i.test(err.message)) return lastMember(id, err.message);
  return new ClientError(404, 'UNKNOWN_COUNTER', `the counters do not have ${JSON.stringify(id)} as a member (${err.message})`);
}

function lastMember(id: string, why?: string): ClientError {
  return new ClientError(
    409,
    'LAST_MEMBER',
    `counter ${JSON.stringify(id)} is the last member of the mesh and cannot be removed${why ? ` (${why})` : ''}; start another counter first, or stop this one if the data can go`,
  );
}

/**
 * One replica of one shard for the quorum paths: usable while a link to the counter is usable and
 * serves the shard, resolved at each use since links come and go.
 */
class ShardReplica implements Replica {
  constructor(
    readonly id: string,
    private readonly shard: number,
    private readonly link: (id: string, shard: number) => CounterLink | undefined,
  ) {}

  get usable(): boolean {
    return this.link(this.id, this.shard) !== undefined;
  }

  add(items: readonly Item[], acks: number): Promise<number> {
    const link = this.link(this.id, this.shard);
    return link ? link.add(items, acks) : Promise.reject(this.unavailable());
  }

  tally(tenant: string, pullFrom?: readonly string[]): Promise<Tally> {
    const link = this.link(this.id, this.shard);
    return link ? link.tally(tenant, pullFrom) : Promise.reject(this.unavailable());
  }

  private unavailable(): CounterUnavailableError {
    return new CounterUnavailableError(`counter ${this.id} is not reachable, not ready, or does not serve shard ${this.shard}`);
  }
}
