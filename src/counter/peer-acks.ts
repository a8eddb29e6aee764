/**
 * The acknowledgments one replicated update collects: a write with w ≥ 2 is stored on its home
 * counter, sent to the peers as a Replicate, and each peer answers Durable once the update is on
 * its disk. Gossip reports every link it sent on and what became of it; the counter awaits `done`.
 */
import type { Clock, TimerHandle } from '../shared/clock.ts';

export class PeerAcks {
  /** Resolves with the number of distinct peers that acknowledged (never rejects). */
  readonly done: Promise<number>;
  private readonly from = new Set<string>();
  /** Links sent on whose answer has not come. */
  private awaiting = 0;
  private sealed = false;
  private settled = false;
  private resolve!: (n: number) => void;
  private readonly timer: TimerHandle;
  /** Drop the links' references to us once settled: an answer that comes later is then ignored. */
  private readonly forgets: (() => void)[] = [];

  /**
   * @param needed distinct peers whose acknowledgment settles it at once.
   * @param waitMs how long to wait for them; then it settles with those that came.
   */
  constructor(
    readonly needed: number,
    waitMs: number,
    private readonly clock: Clock,
  ) {
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

  ack(peerId: string): void {
    this.awaiting--;
    this.from.add(peerId);
    this.check();
  }

  /** A link closed, or answered without an id, before acknowledging. */
  lost(): void {
    this.awaiting--;
    this.check();
  }

  private check(): void {
    if (this.from.size >= this.needed || (this.sealed && this.awaiting === 0)) this.settle();
  }

  private settle(): void {
    if (this.settled) return;
    this.settled = true;
    this.clock.clear(this.timer);
    for (const forget of this.forgets) forget();
    this.resolve(this.from.size);
  }
}
