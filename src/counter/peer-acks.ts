/**
 * The acknowledgments one replicated update collects: a write with w ≥ 2 is stored on its home
 * counter, sent as a Replicate to the peers it needs (the others are asked after a hedge delay,
 * if still needed), and each peer answers Durable once the update is on its disk. Gossip reports
 * every link it sent on and what became of it; the counter awaits `done`.
 *
 * Acknowledgments are counted per shard, and only from peers that `counts` accepts for the shard:
 * the counter passes its replicas that serve it. A copy on a counter handing the shard off (about
 * to delete it) or on one still catching up (not read by quorum reads yet) is not one of the `w`
 * a reader's quorum is sure to meet; and in a write of several shards, a peer that holds one of
 * them vouches for that one only.
 */
import type { Clock, TimerHandle } from '../shared/clock.ts';

export class PeerAcks {
  /** Resolves once every shard has `needed` acknowledgments, nothing more can come, or the wait ran out (never rejects). */
  readonly done: Promise<void>;
  /** Per shard of the write, the peers whose acknowledgment counts. */
  private readonly from = new Map<number, Set<string>>();
  /** Links sent on whose answer has not come. */
  private awaiting = 0;
  private sealed = false;
  private settled = false;
  private resolve!: () => void;
  private readonly timer: TimerHandle;
  /** Drop the links' references to us once settled: an answer that comes later is then ignored. */
  private readonly forgets: (() => void)[] = [];
  /** Asks the peers held back (see `hedge`); null once done or when there are none. */
  private askOthers: (() => void) | null = null;
  private hedgeTimer: TimerHandle | null = null;

  /**
   * @param needed distinct peers per shard whose acknowledgments settle it at once.
   * @param shards the shards the write touches.
   * @param waitMs how long to wait for them; then it settles with those that came.
   * @param counts whether a peer's acknowledgment counts for a shard.
   */
  constructor(
    readonly needed: number,
    shards: Iterable<number>,
    waitMs: number,
    private readonly clock: Clock,
    readonly counts: (peerId: string, shard: number) => boolean = () => true,
  ) {
    for (const s of shards) this.from.set(s, new Set());
    this.done = new Promise((resolve) => {
      this.resolve = resolve;
    });
    this.timer = clock.setTimeout(() => this.settle(), waitMs);
  }

  /** The update left on one link; its answer comes as `ack` or `lost`, unless `forget` is called first. */
  sentOnLink(forget: () => void): void {
    this.awaiting++;
    this.forgets.push(forget);
  }

  /** Every link it goes to has it: once they have all answered, nothing more can come. */
  seal(): void {
    this.sealed = true;
    this.check();
  }

  /**
   * Some peers were not asked (enough others were): `askOthers` asks them, then seals. It runs
   * after `ms`, or as soon as the peers asked have all answered without enough acknowledgments,
   * unless enough came first.
   */
  hedge(ms: number, askOthers: () => void): void {
    this.askOthers = askOthers;
    this.hedgeTimer = this.clock.setTimeout(() => this.askTheOthers(), ms);
    this.check();
  }

  /** The peer has the shards it was sent on disk. */
  ack(peerId: string, shards: readonly number[]): void {
    this.awaiting--;
    for (const s of shards) if (this.counts(peerId, s)) this.from.get(s)?.add(peerId);
    this.check();
  }

  /** A link closed, or answered without an id, before acknowledging. */
  lost(): void {
    this.awaiting--;
    this.check();
  }

  /** The fewest counted acknowledgments among `shards` (the shards of one request of the write). */
  acknowledged(shards: Iterable<number>): number {
    let least = Number.POSITIVE_INFINITY;
    for (const s of shards) least = Math.min(least, this.from.get(s)?.size ?? 0);
    return least === Number.POSITIVE_INFINITY ? 0 : least;
  }

  private check(): void {
    if (this.settled) return;
    if (this.acknowledged(this.from.keys()) >= this.needed) this.settle();
    else if (this.awaiting === 0 && this.askOthers) this.askTheOthers();
    else if (this.awaiting === 0 && this.sealed) this.settle();
  }

  private askTheOthers(): void {
    const ask = this.askOthers;
    if (!ask) return;
    this.askOthers = null;
    this.clock.clear(this.hedgeTimer);
    if (!this.settled) ask();
  }

  private settle(): void {
    if (this.settled) return;
    this.settled = true;
    this.askOthers = null;
    this.clock.clear(this.timer);
    this.clock.clear(this.hedgeTimer);
    for (const forget of this.forgets) forget();
    this.resolve();
  }
}
