/**
 * Replication lag per peer, from state vectors: what a peer lacks of what this counter holds, in
 * bytes and in age.
 *
 * Every peer sends its state vector (y-protocols sync step 1) on connect and every
 * ANTI_ENTROPY_MS. The step-2 answer this counter computes anyway is exactly what the peer lacks,
 * so its size is the lag in bytes at no extra cost. For the age, this counter samples its own
 * state vector (at most every SAMPLE_MS, only when it changed): the oldest sample the peer's state
 * vector does not cover was taken just after the oldest update the peer lacked arrived here, so
 * the time from that sample to the state vector's arrival is the age of that update, to within
 * SAMPLE_MS. Measured at the arrival, not now: under steady writes the last state vector always
 * lacks what came after it, and that is not lag. A peer whose state vector is overdue (down, cut
 * off, or too busy to send one) is measured at now instead, so its lag grows with every write
 * made meanwhile.
 */
import * as Y from 'yjs';
import { systemClock, type Clock, type TimerHandle } from '../shared/clock.ts';

/** Resolution of the age. */
const SAMPLE_MS = 250;
/** Samples kept: five minutes of constant writing; an older lag is reported as at least that. */
const MAX_SAMPLES = 1200;

type StateVector = Map<number, number>;

interface PeerState {
  sv: StateVector;
  /** When it arrived. */
  at: number;
  /** Bytes of the update the peer lacked at its last state vector. */
  missingBytes: number;
}

/** True when `peer` has everything `mine` counts. */
function covers(peer: StateVector, mine: StateVector): boolean {
  for (const [client, clock] of mine) if ((peer.get(client) ?? 0) < clock) return false;
  return true;
}

export class ReplicationLag {
  /** Own state vectors, oldest first, encoded (a few bytes per writer) to keep five minutes cheap. */
  private samples: { at: number; sv: Uint8Array }[] = [];
  private dirty = true;
  private readonly peers = new Map<string, PeerState>();
  private readonly timer: TimerHandle | null;

  /**
   * @param staleAfterMs a state vector older than this is overdue (peers send one every ANTI_ENTROPY_MS)
   * @param sampleEveryMs null: the owner calls `sample` (ShardLags samples all shards on one timer)
   */
  constructor(
    private readonly doc: Y.Doc,
    private readonly staleAfterMs: number,
    private readonly clock: Clock = systemClock,
    sampleEveryMs: number | null = SAMPLE_MS,
  ) {
    // not 'update': with a listener there, Yjs encodes every transaction's update, replays included
    doc.on('afterTransaction', this.onTransaction);
    this.timer = sampleEveryMs === null ? null : clock.setInterval(() => this.sample(), sampleEveryMs);
  }

  /**
   * A peer's state vector arrived (sync step 1).
   * @param missingBytes size of the step-2 answer: the update it lacks
   */
  peerStateVector(peerId: string, sv: StateVector, missingBytes: number): void {
    // the state as of now must be sampled, or what arrived since the last sample would look older than it is
    this.sample();
    this.peers.set(peerId, { sv, at: this.clock.now(), missingBytes });
  }

  /** Forgets a peer (it no longer holds the document's shard): it is nobody's lag here now. */
  forget(peerId: string): void {
    this.peers.delete(peerId);
  }

  /** Whether this measures `doc` (a shard dropped and held again has a new document). */
  measures(doc: Y.Doc): boolean {
    return this.doc === doc;
  }

  /** Peers a state vector was received from, ever (a peer that went down keeps its last one). */
  peerIds(): IterableIterator<string> {
    return this.peers.keys();
  }

  missingBytes(peerId: string): number {
    return this.peers.get(peerId)?.missingBytes ?? 0;
  }

  /**
   * Age in seconds of the oldest update held here that `peerId` lacked, when its last state vector
   * arrived (or now, when that is overdue); 0 if it lacked nothing.
   */
  lagSeconds(peerId: string, now = this.clock.now()): number {
    const peer = this.peers.get(peerId);
    if (!peer) return 0;
    this.sample();
    const asOf = now - peer.at > this.staleAfterMs ? now : peer.at;
    const last = this.samples.at(-1);
    if (!last || covers(peer.sv, Y.decodeStateVector(last.sv))) return 0;
    // samples only grow, so the covered ones are a prefix: find the first one not covered
    let lo = 0;
    let hi = this.samples.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (covers(peer.sv, Y.decodeStateVector(this.samples[mid]!.sv))) lo = mid + 1;
      else hi = mid;
    }
    return Math.max(0, asOf - this.samples[lo]!.at) / 1000;
  }

  /** Per peer id, {@link lagSeconds}: what a counter's Status reports. */
  byPeer(now = this.clock.now()): Record<string, number> {
    const out: Record<string, number> = {};
    for (const id of this.peers.keys()) out[id] = this.lagSeconds(id, now);
    return out;
  }

  close(): void {
    if (this.timer) this.clock.clear(this.timer);
    this.doc.off('afterTransaction', this.onTransaction);
  }

  private readonly onTransaction = (): void => {
    this.dirty = true;
  };

  /** Records the own state vector if it changed since the last sample (the timer calls this). */
  sample(): void {
    if (!this.dirty) return;
    this.dirty = false;
    this.samples.push({ at: this.clock.now(), sv: Y.encodeStateVector(this.doc) });
    if (this.samples.length > MAX_SAMPLES) this.samples.splice(0, this.samples.length - MAX_SAMPLES);
  }
}

/**
 * Replication lag over every shard a counter holds: one ReplicationLag per shard, created when a
 * peer first sends that shard's state vector, all sampled on one timer. A peer's lag is its worst
 * shard's age and the sum of the bytes it lacks. Shards move: a shard no longer held here, and a
 * peer that no longer holds a shard (`peerHolds` false), are dropped before every reading; else
 * a peer that handed a shard off would look further behind with every write to it.
 */
export class ShardLags {
  private readonly shards = new Map<number, ReplicationLag>();
  private readonly timer: TimerHandle;

  /**
   * @param peerHolds false once the peer is known not to hold the shard (its announcement lacks
   *   it); true while it may (a peer that is down is measured until it is removed)
   */
  constructor(
    private readonly docOf: (shard: number) => Y.Doc | undefined,
    private readonly staleAfterMs: number,
    private readonly clock: Clock = systemClock,
    private readonly peerHolds: (peerId: string, shard: number) => boolean = () => true,
  ) {
    this.timer = clock.setInterval(() => {
      for (const lag of this.shards.values()) lag.sample();
    }, SAMPLE_MS);
  }

  peerStateVector(peerId: string, shard: number, sv: StateVector, missingBytes: number): void {
    let lag = this.shards.get(shard);
    if (!lag) {
      const doc = this.docOf(shard);
      if (!doc) return;
      lag = new ReplicationLag(doc, this.staleAfterMs, this.clock, null);
      this.shards.set(shard, lag);
    }
    lag.peerStateVector(peerId, sv, missingBytes);
  }

  /** A shard no longer held here: its lag is nobody's business now. */
  dropShard(shard: number): void {
    this.shards.get(shard)?.close();
    this.shards.delete(shard);
  }

  /** Drops the shards no longer held here and the peers that no longer hold a shard. */
  private prune(): void {
    for (const [shard, lag] of this.shards) {
      const doc = this.docOf(shard);
      if (!doc || !lag.measures(doc)) {
        this.dropShard(shard);
        continue;
      }
      for (const id of [...lag.peerIds()]) if (!this.peerHolds(id, shard)) lag.forget(id);
    }
  }

  peerIds(): Set<string> {
    this.prune();
    const ids = new Set<string>();
    for (const lag of this.shards.values()) for (const id of lag.peerIds()) ids.add(id);
    return ids;
  }

  missingBytes(peerId: string): number {
    this.prune();
    let n = 0;
    for (const lag of this.shards.values()) n += lag.missingBytes(peerId);
    return n;
  }

  lagSeconds(peerId: string, now = this.clock.now()): number {
    this.prune();
    return this.worstAge(peerId, now);
  }

  /** Every peer's lagSeconds, pruned once (a status carries it every heartbeat). */
  byPeer(now = this.clock.now()): Record<string, number> {
    const out: Record<string, number> = {};
    for (const id of this.peerIds()) out[id] = this.worstAge(id, now);
    return out;
  }

  private worstAge(peerId: string, now: number): number {
    let worst = 0;
    for (const lag of this.shards.values()) worst = Math.max(worst, lag.lagSeconds(peerId, now));
    return worst;
  }

  close(): void {
    this.clock.clear(this.timer);
    for (const lag of this.shards.values()) lag.close();
    this.shards.clear();
  }
}
