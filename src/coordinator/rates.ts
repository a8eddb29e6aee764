/**
 * Requests per second over the last few minutes, for the status page's charts: a ring of
 * per-second totals. The request path only increments a number; the status page's one-second
 * timer calls {@link RateHistory.tick} to close the second.
 */

export interface RateSeries {
  /** Seconds per point. */
  stepSeconds: number;
  /** Unix time in ms of the end of the newest point. */
  endAt: number;
  /** Oldest first; one point per second, as many as have elapsed (at most the ring's length). */
  writes: number[];
  reads: number[];
  errors: number[];
}

export class RateHistory {
  /** Counts of the second in progress: the request path increments these. */
  writes = 0;
  reads = 0;
  errors = 0;
  private readonly ring: { writes: Uint32Array; reads: Uint32Array; errors: Uint32Array };
  /** Points written so far (the newest is at (filled - 1) % size). */
  private filled = 0;
  private endAt = Date.now();

  /** @param seconds how many per-second points to keep */
  constructor(readonly seconds: number) {
    this.ring = { writes: new Uint32Array(seconds), reads: new Uint32Array(seconds), errors: new Uint32Array(seconds) };
  }

  /** Closes the second in progress. */
  tick(now = Date.now()): void {
    const i = this.filled % this.seconds;
    this.ring.writes[i] = this.writes;
    this.ring.reads[i] = this.reads;
    this.ring.errors[i] = this.errors;
    this.writes = this.reads = this.errors = 0;
    this.filled++;
    this.endAt = now;
  }

  series(): RateSeries {
    const n = Math.min(this.filled, this.seconds);
    const start = this.filled - n;
    const pick = (a: Uint32Array) => Array.from({ length: n }, (_, k) => a[(start + k) % this.seconds]!);
    return { stepSeconds: 1, endAt: this.endAt, writes: pick(this.ring.writes), reads: pick(this.ring.reads), errors: pick(this.ring.errors) };
  }
}
