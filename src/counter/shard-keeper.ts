/**
 * Which shards this counter holds, and their moves (README "Shards"). Placement is a pure
 * function of the member list (placeShards over the members not removed); the keeper compares it
 * with what is held here and acts, one step at a time, so that no shard ever loses its last copy:
 *
 * - placed here, not held: the shard is created **catching up** (held, fed by gossip, not served)
 *   and pulled from the peers that serve it; it is served once a majority of the replication
 *   factor of them (or all there may be, if fewer) had their whole state applied here.
 *   A shard nobody holds yet (a new mesh) is served at once, but only when every member is alive
 *   and announces its shards: a member that is down may hold it.
 * - held, not placed here (a member joined, or this counter was removed): the shard is **handed
 *   off**: still stored and served until every replica it is placed on is linked to this counter,
 *   serves the shard, and showed (its latest sync step 1) that it holds everything held here; only
 *   then is it deleted.
 *
 * What each counter holds and serves travels in its awareness state, which is also what the
 * coordinators route by.
 */
import type { Logger } from 'pino';
import { placeShards, rendezvousScore } from '../shared/placement.ts';
import { levelSize } from '../shared/levels.ts';
import type { Clock, TimerHandle } from '../shared/clock.ts';
import type { Membership } from './membership.ts';
import type { PeerShards } from './gossip.ts';

/** What the keeper needs of gossip: who is alive, what they announce, and a way to pull a shard. */
export interface MeshView {
  /** Member ids alive as awareness knows them, this counter included. */
  aliveIds(): Set<string>;
  linkedPeers(): Set<string>;
  peerShards(id: string): PeerShards | null;
  /** The peer's latest sync step 1 of the shard had every client at least at `required`'s clock. */
  peerCovers(peerId: string, shard: number, required: ReadonlyMap<number, number>): boolean;
  /** Asks the peer for what it holds of the shard and this counter lacks; false if it does not serve it, the link closed, or no answer came within `timeoutMs`. */
  syncShard(peerId: string, shard: number, timeoutMs: number): Promise<boolean>;
  announceShards(held: readonly number[], serving: readonly number[]): void;
}

/** What the keeper does to the shards: the counter opens, serves and deletes them. */
export interface ShardHost {
  /** Held here: serving, or catching up. */
  state(shard: number): 'serving' | 'catching-up' | null;
  /** Creates the shard, marked catching up unless `serve`. */
  create(shard: number, serve: boolean): Promise<void>;
  /** The shard caught up: serve it (and remember that across restarts). */
  serve(shard: number): Promise<void>;
  /** The shard's state vector here (client → clock), and the client its writes here are made under. */
  stateVector(shard: number): { sv: Map<number, number>; own: number };
  /** Closes the shard and deletes it from disk. */
  drop(shard: number): Promise<void>;
  /** Held shards or their states changed. */
  changed(): void;
}

/**
 * Catch-ups in flight at once. Each holds a shard's whole state in memory on both ends while it
 * travels; a counter joining a mesh of 20 M items that asked for its 48 shards at once made each
 * source encode and queue all of them (gigabytes), and took minutes.
 */
const MAX_PULLS = 4;
/**
 * Beats a catch-up waits for a source's answer. One lost on a link that stays open (the
 * in-memory tier drops frames) would otherwise hold its place among MAX_PULLS for good; an answer
 * that comes later is applied all the same, and the next try asks only for what is still missing.
 */
const PULL_ANSWER_BEATS = 10;

export class ShardKeeper {
  private placementKey = '';
  private placement: string[][] = [];
  /** Passes run one after another on this chain (it never rejects). */
  private chain: Promise<void> = Promise.resolve();
  /** The pass asked for and not started yet: further requests join it. */
  private queued: Promise<void> | null = null;
  /**
   * Shards being handed off whose new replicas serve them already: writes for them are refused
   * here (the coordinator sends them to a replica), so this copy stops changing and the replicas
   * can be seen to cover it. Reads are still answered.
   */
  private readonly draining = new Map<number, Map<number, number>>();
  /** Shards with a catch-up request in flight. */
  private readonly pulling = new Set<number>();
  private readonly timer: TimerHandle;
  private leftResolve: (() => void) | null = null;
  /** Resolves once this counter was removed from the mesh and has handed off every shard. */
  readonly left: Promise<void>;
  /** Off until the member list is known (from disk or a peer): placing on a partial list would move shards for nothing. */
  active = false;
  private closed = false;

  constructor(
    private readonly selfId: string,
    private readonly shards: number,
    private readonly factor: number,
    private readonly membership: Membership,
    private readonly mesh: MeshView,
    private readonly host: ShardHost,
    private readonly clock: Clock,
    private readonly log: Logger,
    private readonly intervalMs: number,
  ) {
    this.left = new Promise((resolve) => {
      this.leftResolve = resolve;
    });
    // catch-ups that failed and handoffs waiting on a peer's next state vector are retried on this beat
    this.timer = clock.setInterval(() => void this.reconcile(), intervalMs);
  }

  /** The shard's replicas in placement order (none before the member list is known). */
  replicas(shard: number): readonly string[] {
    return this.current()[shard] ?? [];
  }

  isPlacedHere(shard: number): boolean {
    return this.replicas(shard).includes(this.selfId);
  }

  /**
   * The peer is one of the shard's replicas and serves it, as far as this counter knows. Before
   * the member list is known, every peer holding the shard is (nothing is placed yet).
   */
  servedBy(peerId: string, shard: number): boolean {
    const replicas = this.replicas(shard);
    if (replicas.length === 0) return true;
    return replicas.includes(peerId) && this.mesh.peerShards(peerId)?.serving.has(shard) === true;
  }

  /** False for a shard handed off to replicas that serve it already (see `draining`). */
  takesWrites(shard: number): boolean {
    return !this.draining.has(shard);
  }

  /**
   * Looks again at every shard; resolves once a pass that began after the call has ended. Passes
   * run one at a time; requests made while one runs share the next.
   */
  reconcile(): Promise<void> {
    if (!this.active || this.closed) return Promise.resolve();
    if (this.queued) return this.queued;
    const run = this.chain.then(() => {
      this.queued = null;
      if (this.closed) return;
      return this.pass().catch((err: Error) => this.log.error({ err }, 'could not move shards; retrying on the next beat'));
    });
    this.queued = run;
    this.chain = run;
    return run;
  }

  close(): void {
    this.closed = true;
    this.clock.clear(this.timer);
  }

  private current(): string[][] {
    const placed = this.membership.placed();
    const key = placed.join('\u0000');
    if (key !== this.placementKey) {
      this.placementKey = key;
      this.placement = placed.length === 0 ? [] : placeShards(this.shards, placed, this.factor);
    }
    return this.placement;
  }

  /**
   * One look at every shard. The shards' file work (creating, marking served, deleting) runs side
   * by side: one after another, 64 shards' fsyncs kept a new counter unready for many seconds.
   */
  private async pass(): Promise<void> {
    const placement = this.current();
    const created: number[] = [];
    const createdServing: number[] = [];
    const servedAlone: number[] = [];
    const dropped: number[] = [];
    const work: Promise<void>[] = [];
    for (let s = 0; s < this.shards; s++) {
      const replicas = placement[s] ?? [];
      const here = replicas.includes(this.selfId);
      const state = this.host.state(s);
      if (here && state === null) {
        const fresh = this.nobodyHolds(s, 'held');
        (fresh ? createdServing : created).push(s);
        work.push(this.host.create(s, fresh));
      } else if (here && state === 'catching-up') {
        if (this.nobodyHolds(s, 'serving')) {
          servedAlone.push(s);
          work.push(this.host.serve(s));
        } else {
          this.pull(s);
        }
      } else if (!here && state !== null) {
        if (!this.draining.has(s) && this.servedElsewhere(s, replicas)) {
          this.draining.set(s, this.host.stateVector(s).sv);
          this.log.info({ shard: s, replicas }, 'shard served by its new replicas; writes for it go there now');
        }
        if (this.handedOff(s, replicas)) {
          dropped.push(s);
          work.push(this.host.drop(s).then(() => void this.draining.delete(s)));
        }
      } else {
        this.draining.delete(s);
      }
    }
    const results = await Promise.allSettled(work);
    if (created.length > 0) this.log.info({ shards: created }, 'shards placed here; catching up from their replicas');
    if (createdServing.length > 0) this.log.info({ shards: createdServing }, 'new shards: no member holds them yet; serving them');
    if (servedAlone.length > 0) this.log.warn({ shards: servedAlone }, 'no other member serves these shards; serving what is held here');
    if (dropped.length > 0) this.log.info({ shards: dropped }, 'shards handed off to their replicas; deleted here');
    if (work.length > 0) this.host.changed();
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    if (this.membership.isRemoved(this.selfId) && this.heldCount() === 0) this.leftResolve?.();
    // new shards catch up from the next pass on: no need to wait a beat for it
    if (created.length > 0) void this.reconcile();
  }

  private heldCount(): number {
    let n = 0;
    for (let s = 0; s < this.shards; s++) if (this.host.state(s) !== null) n++;
    return n;
  }

  /**
   * True when no other member can hold (or serve) the shard: every member is alive and announces
   * its shards, and none of those announcements has it. A member down may hold it: then it is false.
   */
  private nobodyHolds(shard: number, how: 'held' | 'serving'): boolean {
    const alive = this.mesh.aliveIds();
    for (const id of this.membership.placed()) if (!alive.has(id)) return false;
    for (const id of alive) {
      if (id === this.selfId) continue;
      const theirs = this.mesh.peerShards(id);
      if (!theirs || theirs[how].has(shard)) return false;
    }
    return true;
  }

  /**
   * Asks every linked peer that serves the shard for what it holds and this counter lacks, and serves the shard once
   * enough of them answered (`sourcesNeeded`). One source is not enough: an item acknowledged
   * with w = quorum is on a majority of the old replicas, and the one asked may be among the
   * others (behind after a partition); the new replica would then serve without it, and a quorum
   * read of the new placement could miss it. Any majority of the old replicas holds it.
   */
  private pull(shard: number): void {
    if (this.pulling.has(shard) || this.pulling.size >= MAX_PULLS) return;
    const sources = [...this.mesh.linkedPeers()].filter((id) => this.mesh.peerShards(id)?.serving.has(shard) === true);
    const needed = this.sourcesNeeded(shard);
    if (sources.length === 0 || sources.length < needed) return;
    this.pulling.add(shard);
    // the whole state from one source (by rendezvous score, so the shards of a join spread over
    // the sources), then the others asked with what it brought: they send only what it lacked,
    // not the whole shard again
    sources.sort((a, b) => rendezvousScore(shard, b) - rendezvousScore(shard, a));
    const [first, ...rest] = sources as [string, ...string[]];
    let served = false;
    const ask = (id: string) => this.mesh.syncShard(id, shard, PULL_ANSWER_BEATS * this.intervalMs);
    ask(first)
      .then(async (firstOk) => [firstOk, ...(await Promise.all(rest.map(ask)))])
      .then(async (answers) => {
        const from = sources.filter((_, i) => answers[i]);
        if (from.length < needed || this.closed || this.host.state(shard) !== 'catching-up') return;
        await this.host.serve(shard);
        served = true;
        this.log.info({ shard, from }, 'shard caught up; serving it');
        this.host.changed();
      })
      .catch((err: Error) => this.log.error({ err, shard }, 'could not serve a caught-up shard; retrying'))
      .finally(() => {
        this.pulling.delete(shard);
        // the next shard waiting for a catch-up starts now rather than on the next beat
        if (served) void this.reconcile();
      });
  }

  /**
   * How many serving peers a catch-up must have pulled from: a majority of the replication
   * factor (every quorum write is on one of them), but no more than the members that may serve
   * the shard: those alive that announce serving it, and placed members that are down (they may
   * hold it; the catch-up then waits for them or for their removal). Removed members do not
   * count: what only they hold is gone with them, or reaches here when they are among the sources.
   */
  private sourcesNeeded(shard: number): number {
    const alive = this.mesh.aliveIds();
    let may = 0;
    for (const id of alive) {
      if (id !== this.selfId && !this.membership.isRemoved(id) && this.mesh.peerShards(id)?.serving.has(shard) === true) may++;
    }
    for (const id of this.membership.placed()) if (id !== this.selfId && !alive.has(id)) may++;
    return Math.min(levelSize('quorum', this.factor), may);
  }

  /** Every replica the shard is placed on is linked and serves it. */
  private servedElsewhere(shard: number, replicas: readonly string[]): boolean {
    if (replicas.length === 0) return false;
    const linked = this.mesh.linkedPeers();
    return replicas.every((id) => linked.has(id) && this.mesh.peerShards(id)?.serving.has(shard) === true);
  }

  /**
   * Every replica the shard is placed on is linked, serves it, and holds all this counter is
   * answerable for: what it held when it stopped taking writes for the shard, and every write it
   * took (one in flight then included). Updates that reached it from others since are not its
   * to keep: the replicas wrote them, or another counter handing off waits for them itself (the
   * replicas' state vectors would never catch up with a copy that keeps receiving their writes).
   */
  private handedOff(shard: number, replicas: readonly string[]): boolean {
    const snapshot = this.draining.get(shard);
    if (!snapshot || !this.servedElsewhere(shard, replicas)) return false;
    const { sv, own } = this.host.stateVector(shard);
    const required = new Map(snapshot);
    required.set(own, sv.get(own) ?? 0);
    return replicas.every((id) => this.mesh.peerCovers(id, shard, required));
  }
}
