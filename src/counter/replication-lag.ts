/**
 * Replication lag per peer, from state vectors: what a peer lacks of what this counter holds, in
 * bytes and in age.
 *
 * Every peer sends its state vector (y-protocols sync step 1) on connect and every
 * ANTI_ENTROPY_MS. The step-2 answer this counter computes anyway is exactly what the peer lacks,
 * so its size is the lag in bytes at no extra cost. For the age, this counter samples its own
 * state vector (at most every SAMPLE_MS, only when it changed): the oldest sample the peer's last
 * state vector does not cover was taken after the oldest update the peer lacks arrived here, so
 * `now - sample time` is the age of that update, to within SAMPLE_MS. A peer that goes down keeps
 * its last state vector, so its lag grows with every write made meanwhile.
 */
import * as Y from 'yjs';

/** Resolution of the age. */
const SAMPLE_MS = 250;
/** Samples kept: five minutes of constant writing; an older lag is reported as at least that. */
const MAX_SAMPLES = 1200;

type StateVector = Map<number, number>;

interface PeerState {
  sv: StateVector;
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
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly doc: Y.Doc) {
    doc.on('update', this.onUpdate);
    this.timer = setInterval(() => this.sample(), SAMPLE_MS);
    this.timer.unref();
  }

  /**
   * A peer's state vector arrived (sync step 1).
   * @param missingBytes size of the step-2 answer: the update it lacks
   */
  peerStateVector(peerId: string, sv: StateVector, missingBytes: number): void {
    this.peers.set(peerId, { sv, missingBytes });
  }

  /** Peers a state vector was received from, ever (a peer that went down keeps its last one). */
  peerIds(): IterableIterator<string> {
    return this.peers.keys();
  }

  missingBytes(peerId: string): number {
    return this.peers.get(peerId)?.missingBytes ?? 0;
  }

  /** Seconds since the oldest update held here that `peerId` lacked at its last state vector; 0 if none. */
  lagSeconds(peerId: string, now = Date.now()): number {
    const peer = this.peers.get(peerId);
    if (!peer) return 0;
    this.sample();
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
    return Math.max(0, now - this.samples[lo]!.at) / 1000;
  }

  /** Per peer id, {@link lagSeconds}: what a counter's Status reports. */
  byPeer(now = Date.now()): Record<string, number> {
    const out: Record<string, number> = {};
    for (const id of this.peers.keys()) out[id] = this.lagSeconds(id, now);
    return out;
  }

  close(): void {
    clearInterval(this.timer);
    this.doc.off('update', this.onUpdate);
  }

  private readonly onUpdate = (): void => {
    this.dirty = true;
  };

  private sample(): void {
    if (!this.dirty) return;
    this.dirty = false;
    this.samples.push({ at: Date.now(), sv: Y.encodeStateVector(this.doc) });
    if (this.samples.length > MAX_SAMPLES) this.samples.splice(0, this.samples.length - MAX_SAMPLES);
  }
}
