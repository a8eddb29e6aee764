/**
 * A seeded simulation of time and network for the in-memory mesh tier (the idea of Yjs' own test
 * connector): virtual time that jumps from event to event, connections whose messages a seeded
 * generator delays (reordering them across connections), drops and cuts, and a trace of what was
 * delivered so that a replayed seed can be shown to give the same run.
 */
import { createHash } from 'node:crypto';
import type { Clock, TimerHandle } from '../../src/shared/clock.ts';
import type { DialHandlers, Transport, Wire, WireEvents } from '../../src/protocol/wire.ts';
import { mulberry32, type Rng } from './prng.ts';

interface Task {
  at: number;
  seq: number;
  run: () => void;
  cancelled: boolean;
  /** For intervals: re-armed after each run. */
  every?: number;
}

/** Virtual time: timers fire in (time, creation) order when the simulation advances. */
export class SimClock implements Clock {
  private t = 0;
  private seq = 0;
  private readonly tasks: Task[] = [];

  constructor(private readonly rng: Rng) {}

  now(): number {
    return this.t;
  }

  setTimeout(fn: () => void, ms: number): TimerHandle {
    return this.push(fn, Math.max(0, ms));
  }

  setInterval(fn: () => void, ms: number): TimerHandle {
    const task = this.push(fn, Math.max(1, ms));
    task.every = Math.max(1, ms);
    return task;
  }

  clear(timer: TimerHandle | null | undefined): void {
    if (timer) (timer as Task).cancelled = true;
  }

  setImmediate(fn: () => void): void {
    this.push(fn, 0);
  }

  random(): number {
    return this.rng();
  }

  /** Schedules `fn` at `delay` from now (network deliveries use this too). */
  push(run: () => void, delay: number): Task {
    const task: Task = { at: this.t + delay, seq: this.seq++, run, cancelled: false };
    this.tasks.push(task);
    return task;
  }

  /** Runs the next task due at or before `limit`; false when there is none (time then moves to `limit`). */
  step(limit: number): boolean {
    // drop cancelled tasks now and then so the scan stays short
    if (this.tasks.length > 512) {
      const live = this.tasks.filter((k) => !k.cancelled);
      this.tasks.length = 0;
      this.tasks.push(...live);
    }
    let best = -1;
    for (let i = 0; i < this.tasks.length; i++) {
      const k = this.tasks[i]!;
      if (k.cancelled) continue;
      const b = this.tasks[best];
      if (!b || k.at < b.at || (k.at === b.at && k.seq < b.seq)) best = i;
    }
    if (best < 0 || this.tasks[best]!.at > limit) {
      this.t = Math.max(this.t, limit);
      return false;
    }
    const task = this.tasks[best]!;
    this.tasks.splice(best, 1);
    this.t = Math.max(this.t, task.at);
    if (task.every !== undefined) {
      task.at = this.t + task.every;
      task.seq = this.seq++;
      this.tasks.push(task);
    }
    task.run();
    return true;
  }
}

export interface NetworkFaults {
  /** Probability that a message on an open connection is silently lost (a half-open link). */
  drop: number;
  /** Probability, per message sent, that the connection is cut right after it (both ends see a close). */
  disconnect: number;
  /** Delivery delay range in ms; messages of one direction of one connection stay in order. */
  minDelayMs: number;
  maxDelayMs: number;
}

export const NO_FAULTS: NetworkFaults = { drop: 0, disconnect: 0, minDelayMs: 1, maxDelayMs: 5 };

export type Accept = (wire: Wire, remote: string) => void;

/** One end of an in-memory connection. */
class SimWire implements Wire {
  peer!: SimWire;
  events: WireEvents | null = null;
  isOpen = true;
  /** Delivery time of the last message this end sent: one direction stays FIFO, like TCP. */
  lastAt = 0;
  /** The dialer of this end, told when the connection is gone (as a ws client's 'close' does). */
  onGone: (() => void) | null = null;

  constructor(
    private readonly net: SimNetwork,
    readonly self: string,
    readonly other: string,
  ) {}

  get open(): boolean {
    return this.isOpen;
  }

  get bufferedBytes(): number {
    return 0;
  }

  bind(events: WireEvents): void {
    if (this.events) throw new Error('a wire is bound once');
    this.events = events;
  }

  send(frame: Uint8Array): void {
    if (!this.isOpen) return;
    this.net.carry(this, frame.slice());
  }

  ping(): void {
    if (this.isOpen) this.net.carryPing(this);
  }

  cork(): void {}
  uncork(): void {}

  close(code: number, reason: string): void {
    this.net.cut(this, code, reason);
  }

  terminate(): void {
    this.net.cut(this, 1006, '');
  }
}

/**
 * The network between named nodes (coordinators and counters, each with its address). Each node
 * dials through its own transport, so cuts can be made per pair.
 */
export class SimNetwork {
  private readonly listeners = new Map<string, { name: string; accept: Accept }>();
  /** Unordered pairs of node names that cannot reach each other. */
  private readonly cuts = new Set<string>();
  private readonly wires = new Set<SimWire>();
  private readonly trace = createHash('sha256');
  private traced = 0;
  delivered = 0;
  dropped = 0;
  /** Frames sent, by message type (their first byte), dropped ones included. */
  readonly sentByType = new Map<number, number>();
  /** The largest frame sent of each message type. */
  readonly largestByType = new Map<number, number>();

  constructor(
    readonly clock: SimClock,
    private readonly rng: Rng,
    public faults: NetworkFaults = NO_FAULTS,
  ) {}

  /** Serves connections to `address` (a counter starting); `name` is who it is for cuts. */
  listen(address: string, name: string, accept: Accept): void {
    this.listeners.set(address, { name, accept });
  }

  /** The counter at `address` stops: its listener goes and every connection of `name` drops. */
  crash(address: string, name: string): void {
    this.listeners.delete(address);
    for (const w of [...this.wires]) if (w.self === name) this.cut(w, 1006, '');
  }

  /** Cuts the pair both ways: open connections between them drop, new ones are refused. */
  partition(a: string, b: string): void {
    this.cuts.add(pairKey(a, b));
    for (const w of [...this.wires]) if (pairKey(w.self, w.other) === pairKey(a, b)) this.cut(w, 1006, '');
  }

  heal(): void {
    this.cuts.clear();
  }

  transportFor(name: string): Transport {
    return {
      dial: (address: string, handlers: DialHandlers) => {
        let aborted = false;
        let opened: SimWire | null = null;
        this.clock.push(() => {
          if (aborted) return;
          const target = this.listeners.get(address);
          if (!target || this.cuts.has(pairKey(name, target.name))) {
            this.note(`refuse ${name}>${address}`);
            handlers.closed();
            return;
          }
          const mine = new SimWire(this, name, target.name);
          const theirs = new SimWire(this, target.name, name);
          mine.peer = theirs;
          theirs.peer = mine;
          this.wires.add(mine);
          this.wires.add(theirs);
          opened = mine;
          mine.onGone = () => handlers.closed();
          this.note(`open ${name}>${target.name}`);
          target.accept(theirs, name);
          handlers.opened(mine);
        }, this.delay());
        return () => {
          aborted = true;
          if (opened) this.cut(opened, 1006, '');
        };
      },
    };
  }

  /** Takes a frame from `from` to its peer after a seeded delay, unless dropped or cut. */
  carry(from: SimWire, frame: Uint8Array): void {
    this.sentByType.set(frame[0]!, (this.sentByType.get(frame[0]!) ?? 0) + 1);
    this.largestByType.set(frame[0]!, Math.max(this.largestByType.get(frame[0]!) ?? 0, frame.length));
    if (this.rng() < this.faults.drop) {
      this.dropped++;
      this.note(`drop ${from.self}>${from.other} ${frame.length}`);
      return;
    }
    const to = from.peer;
    from.lastAt = Math.max(from.lastAt, this.clock.now() + this.delay());
    this.clock.push(() => {
      if (!to.isOpen || !to.events) return;
      this.delivered++;
      this.note(`msg ${from.self}>${to.self} ${frame.length} ${frame[0]}`);
      to.events.message(frame, true);
    }, from.lastAt - this.clock.now());
    if (this.rng() < this.faults.disconnect) this.clock.push(() => this.cut(from, 1006, ''), from.lastAt - this.clock.now());
  }

  carryPing(from: SimWire): void {
    const to = from.peer;
    from.lastAt = Math.max(from.lastAt, this.clock.now() + this.delay());
    this.clock.push(() => {
      if (!to.isOpen || !to.events) return;
      to.events.heard();
      // the pong
      this.clock.push(() => from.isOpen && from.events?.heard(), this.delay());
    }, from.lastAt - this.clock.now());
  }

  /** Closes both ends; each learns of it in its own time. */
  cut(end: SimWire, code: number, reason: string): void {
    for (const w of [end, end.peer]) {
      if (!w.isOpen) continue;
      w.isOpen = false;
      this.wires.delete(w);
      this.clock.push(
        () => {
          w.events?.closed(code, reason);
          w.onGone?.();
        },
        w === end ? 0 : this.delay(),
      );
    }
    this.note(`close ${end.self}>${end.other} ${code}`);
  }

  /** A digest of every delivery, refusal, drop and close, in order: equal for equal runs. */
  digest(): string {
    return `${this.traced}:${this.trace.copy().digest('hex').slice(0, 16)}`;
  }

  private note(line: string): void {
    this.traced++;
    this.trace.update(`${this.clock.now()} ${line}\n`);
  }

  private delay(): number {
    const { minDelayMs, maxDelayMs } = this.faults;
    return minDelayMs + Math.floor(this.rng() * (maxDelayMs - minDelayMs + 1));
  }
}

function pairKey(a: string, b: string): string {
  return a < b ? `${a}|${b}` : `${b}|${a}`;
}

/** The seed of this run: SEED from the environment to replay one, else a fresh one. */
export function runSeed(): number {
  const env = process.env.SEED;
  if (env !== undefined && env !== '') {
    const n = Number(env);
    if (!Number.isInteger(n) || n < 0) throw new Error(`SEED must be a non-negative integer, got ${JSON.stringify(env)}`);
    return n;
  }
  return Math.floor(Math.random() * 2 ** 31);
}

/** Runs a seeded test body; a failure names the seed and how to replay it. */
export async function withSeed(name: string, body: (seed: number, rng: Rng) => Promise<void>, seed = runSeed()): Promise<void> {
  // the test file that called us, for the replay command
  const file = /\/test\/([\w.-]+)\.test\.ts/.exec(new Error().stack ?? '')?.[1] ?? '';
  try {
    await body(seed, mulberry32(seed));
  } catch (err) {
    const e = err as Error;
    e.message = `${e.message}\n  [${name}] seed ${seed}: replay with SEED=${seed} npx uvu -r tsx test ${file}`;
    throw e;
  }
}
