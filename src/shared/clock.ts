/**
 * Time as the product sees it: timers and "now". Production uses the system clock; the in-memory
 * mesh tests (test/support/memory-mesh.ts) pass a virtual clock that a seeded scheduler advances,
 * so a run is a pure function of its seed.
 */

/** An opaque timer handle, given back to `clear`. */
export type TimerHandle = { readonly __timer: unique symbol } | object;

export interface Clock {
  /** Milliseconds since an arbitrary epoch (wall clock in production). */
  now(): number;
  /** Runs `fn` once after `ms`; a timer never keeps the process alive. */
  setTimeout(fn: () => void, ms: number): TimerHandle;
  /** Runs `fn` every `ms`; a timer never keeps the process alive. */
  setInterval(fn: () => void, ms: number): TimerHandle;
  clear(timer: TimerHandle | null | undefined): void;
  /** Runs `fn` after the I/O of the current event-loop turn (coalescing point for batches). */
  setImmediate(fn: () => void): void;
  /** A number in [0, 1) for jitter; seeded in tests. */
  random(): number;
}

/** The real clock. Timers are unref'd: sockets and servers, not timers, keep a process alive. */
export const systemClock: Clock = Object.freeze({
  now: () => Date.now(),
  setTimeout: (fn: () => void, ms: number) => setTimeout(fn, ms).unref(),
  setInterval: (fn: () => void, ms: number) => setInterval(fn, ms).unref(),
  clear: (timer: TimerHandle | null | undefined) => {
    if (timer) clearTimeout(timer as NodeJS.Timeout);
  },
  setImmediate: (fn: () => void) => {
    setImmediate(fn);
  },
  random: () => Math.random(),
});
