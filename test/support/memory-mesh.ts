/**
 * The in-memory mesh: real Counter and CounterPool objects, wired through the seeded SimNetwork
 * and SimClock instead of sockets and timers, each counter with an in-memory log that survives its
 * crashes. One `compare` checks every replica against the model of what was written.
 */
import { Writable } from 'node:stream';
import pino, { type Logger } from 'pino';
import { Counter, type Recovered, type ShardStorage, type UpdateLog } from '../../src/counter/counter.ts';
import type { MembersStore } from '../../src/counter/membership.ts';
import { CounterPool } from '../../src/coordinator/counter-pool.ts';
import { coordinatorConfig, counterConfig } from '../../src/shared/config.ts';
import type { Item } from '../../src/protocol/messages.ts';
import { SimClock, SimNetwork, NO_FAULTS, type NetworkFaults } from './sim.ts';
import { placeShards } from '../../src/shared/placement.ts';
import { mulberry32, type Rng } from './prng.ts';
import * as Y from 'yjs';
import { GSet, STORAGE } from '../../src/counter/gset.ts';

/** Settings that keep simulated runs short; the simulated time is cheap, but every beat is a message. */
const TIMING = { HEARTBEAT_MS: '500', ANTI_ENTROPY_MS: '1000', RECONNECT_MAX_MS: '500', GOSSIP_DELAY_MS: '20', COUNTER_TIMEOUT_MS: '1000' };

/**
 * A log that keeps what was appended across crashes of its counter (the page cache survives a
 * SIGKILL). It also knows which appends an fsync covered, for tests that take the power away
 * (`powerLoss`): a durable append covers every append before it, as an fdatasync of one file does.
 */
export class MemoryLog implements UpdateLog {
  private snapshot: Uint8Array | null = null;
  private updates: Uint8Array[] = [];
  private logBytes = 0;
  /** Appends ever made, and how many of those an fsync covered; `updates` holds those after `compacted`. */
  private appended = 0;
  private synced = 0;
  private compacted = 0;
  /** How long an fsync takes: `fsyncFloorMs` plus 1 to `fsyncMs` ms (seeded). A test may slow a disk down. */
  fsyncMs = 3;
  fsyncFloorMs = 0;

  constructor(
    private readonly clock: SimClock,
    private readonly rng: Rng,
  ) {}

  append(update: Uint8Array, durable: boolean): Promise<void> {
    this.updates.push(update.slice());
    this.logBytes += update.length;
    const upTo = ++this.appended;
    if (!durable) return Promise.resolve();
    // an fsync takes a little while; the acknowledgment waits for it
    return new Promise((resolve) =>
      this.clock.push(() => {
        this.synced = Math.max(this.synced, upTo);
        resolve();
      }, this.fsyncFloorMs + 1 + Math.floor(this.rng() * this.fsyncMs)),
    );
  }

  /** Every append is kept across crashes here, so there is nothing to wait for; a power loss is another matter. */
  sync(): Promise<void> {
    this.synced = this.appended;
    return Promise.resolve();
  }

  /** What a power loss would leave of this log now: the snapshot and the appends an fsync covered. */
  onDisk(): Recovered {
    return { snapshot: this.snapshot, updates: this.updates.slice(0, Math.max(0, this.synced - this.compacted)), damaged: [], tornTail: false };
  }

  /** The power goes: appends no fsync covered are lost. For a counter that is not running. */
  powerLoss(): void {
    this.updates = this.onDisk().updates;
    this.appended = this.synced = Math.max(this.synced, this.compacted);
    this.logBytes = this.updates.reduce((n, u) => n + u.length, 0);
  }

  /** Small, so that seeded runs compact too. */
  needsCompaction(): boolean {
    return this.logBytes > 16 * 1024;
  }

  async compact(snapshot: () => Uint8Array): Promise<void> {
    this.snapshot = snapshot();
    this.updates = [];
    this.logBytes = 0;
    // the snapshot is written and synced before the logs it covers go
    this.compacted = this.appended;
    this.synced = Math.max(this.synced, this.appended);
  }

  async close(): Promise<void> {}

  recovered(): Recovered {
    return { snapshot: this.snapshot, updates: [...this.updates], damaged: [], tornTail: false };
  }
}

/** A counter's disk: one MemoryLog per shard and one for the journal, kept across the counter's crashes. */
export class MemoryDisk implements ShardStorage {
  private readonly logs = new Map<number, MemoryLog>();
  private journalLog: MemoryLog | null = null;
  private readonly catchingUp = new Set<number>();
  private slowFsyncMs = 3;
  private floorMs = 0;
  /** Opening a shard's log or the journal takes 0 to this many ms (seeded): a real open is I/O, and peers dial in meanwhile. */
  openMs = 0;
  private membersState: Uint8Array | null = null;
  readonly members: MembersStore = {
    load: async () => this.membersState,
    save: async (state) => {
      this.membersState = state.slice();
    },
  };

  constructor(
    private readonly clock: SimClock,
    private readonly rng: Rng,
  ) {}

  /** The shard's log, made empty on first use. */
  log(shard: number): MemoryLog {
    let log = this.logs.get(shard);
    if (!log) {
      log = new MemoryLog(this.clock, this.rng);
      log.fsyncMs = this.slowFsyncMs;
      log.fsyncFloorMs = this.floorMs;
      this.logs.set(shard, log);
    }
    return log;
  }

  /** The journal's log (see src/counter/journal.ts), made empty on first use. */
  journalStore(): MemoryLog {
    if (!this.journalLog) {
      this.journalLog = new MemoryLog(this.clock, this.rng);
      this.journalLog.fsyncMs = this.slowFsyncMs;
      this.journalLog.fsyncFloorMs = this.floorMs;
    }
    return this.journalLog;
  }

  async journal(): Promise<{ log: UpdateLog; recovered: Recovered }> {
    await this.opening();
    const log = this.journalStore();
    return { log, recovered: log.recovered() };
  }

  async held(): Promise<number[]> {
    return [...this.logs.keys()].sort((a, b) => a - b);
  }

  async open(shard: number): Promise<{ log: UpdateLog; recovered: Recovered; catchingUp: boolean }> {
    await this.opening();
    const log = this.log(shard);
    return { log, recovered: log.recovered(), catchingUp: this.catchingUp.has(shard) };
  }

  private async opening(): Promise<void> {
    if (this.openMs > 0) await new Promise<void>((resolve) => this.clock.setTimeout(resolve, Math.floor(this.rng() * this.openMs)));
  }

  async setCatchingUp(shard: number, on: boolean): Promise<void> {
    if (on) {
      this.log(shard);
      this.catchingUp.add(shard);
    } else {
      this.catchingUp.delete(shard);
    }
  }

  async remove(shard: number): Promise<void> {
    this.logs.delete(shard);
    this.catchingUp.delete(shard);
  }

  /** Every fsync of this disk takes 1 to `ms` ms (seeded). */
  set fsyncMs(ms: number) {
    this.slowFsyncMs = ms;
    for (const log of this.logs.values()) log.fsyncMs = ms;
    if (this.journalLog) this.journalLog.fsyncMs = ms;
  }

  /** Every fsync of this disk takes at least `ms` ms more (the logs made from now on too). */
  set fsyncFloorMs(ms: number) {
    this.floorMs = ms;
    for (const log of this.logs.values()) log.fsyncFloorMs = ms;
    if (this.journalLog) this.journalLog.fsyncFloorMs = ms;
  }

  /** The power goes: every shard's log, and the journal, keep only what an fsync covered. */
  powerLoss(): void {
    for (const log of this.logs.values()) log.powerLoss();
    this.journalLog?.powerLoss();
  }
}

/** Collects error-level log lines: a bug of ours logs at error, and a run with one fails. */
function recordingLogger(errors: string[]): Logger {
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split('\n')) {
        if (!line) continue;
        const o = JSON.parse(line) as { level: number };
        if (o.level >= 50) errors.push(line);
      }
      done();
    },
  });
  return pino({ level: 'warn' }, sink);
}

export interface SimCounter {
  index: number;
  id: string;
  address: string;
  disk: MemoryDisk;
  counter: Counter | null;
}

export interface MemoryMeshOptions {
  seed: number;
  counters: number;
  coordinators?: number;
  faults?: Partial<NetworkFaults>;
  /** Counters replay their logs in steps of this many bytes (default: the product's). */
  replayStepBytes?: number;
  /** SHARDS (default 8: fewer messages per simulated second than the product's 64). */
  shards?: number;
  /** REPLICATION_FACTOR (default 3, the product's). */
  factor?: number;
  /** More settings for every counter. */
  counterEnv?: Record<string, string>;
}

export class MemoryMesh {
  readonly clock: SimClock;
  readonly net: SimNetwork;
  readonly rng: Rng;
  readonly counters: SimCounter[] = [];
  readonly pools: CounterPool[] = [];
  /** Items acknowledged by a coordinator, and items sent at all (acknowledged or not), per tenant. */
  readonly acked = new Map<string, Set<string>>();
  readonly sent = new Map<string, Set<string>>();
  readonly errors: string[] = [];
  private readonly log: Logger;

  private constructor(readonly opts: MemoryMeshOptions) {
    this.rng = mulberry32(opts.seed);
    this.clock = new SimClock(mulberry32(opts.seed ^ 0x5eed));
    this.net = new SimNetwork(this.clock, mulberry32(opts.seed ^ 0x0e7), { ...NO_FAULTS, ...opts.faults });
    this.log = recordingLogger(this.errors);
  }

  static async start(opts: MemoryMeshOptions): Promise<MemoryMesh> {
    const mesh = new MemoryMesh(opts);
    for (let i = 0; i < opts.counters; i++) mesh.newCounter();
    for (const c of mesh.counters) await mesh.startCounter(c.index);
    for (let j = 0; j < (opts.coordinators ?? 1); j++) {
      const name = `coordinator-${j + 1}`;
      const config = coordinatorConfig({
        ...TIMING,
        COORDINATOR_ID: name,
        COUNTERS: mesh.counters.map((c) => c.address).join(','),
      });
      const pool = new CounterPool(config, mesh.log.child({ node: name }), { transport: mesh.net.transportFor(name), clock: mesh.clock });
      await pool.start();
      mesh.pools.push(pool);
    }
    return mesh;
  }

  /**
   * Starts (or restarts after a crash) counter `i` from what its log holds; `observe` sees the
   * counter after every simulated event until it has loaded.
   */
  async startCounter(i: number, observe?: (counter: Counter) => void): Promise<void> {
    const c = this.counters[i]!;
    if (c.counter) throw new Error(`${c.id} is running`);
    const config = counterConfig({
      ...TIMING,
      COUNTER_ID: c.id,
      ADVERTISE_ADDRESS: c.address,
      SHARDS: String(this.opts.shards ?? 8),
      REPLICATION_FACTOR: String(this.opts.factor ?? 3),
      ...this.opts.counterEnv,
      PEERS: this.counters.filter((o) => o !== c).map((o) => o.address).join(','),
    });
    const counter = await Counter.create(
      config,
      { storage: c.disk, transport: this.net.transportFor(c.id), clock: this.clock, clientID: Math.floor(this.rng() * 2 ** 31), replayStepBytes: this.opts.replayStepBytes },
      this.log.child({ node: c.id }),
    );
    this.net.listen(c.address, c.id, (wire, remote) => counter.accept(wire, remote));
    c.counter = counter;
    // replay yields between steps on simulated time, so the simulation drives it
    let loaded = false;
    let failed: unknown = null;
    counter.load().then(
      () => {
        loaded = true;
      },
      (err: unknown) => {
        failed = err;
      },
    );
    await this.until(() => {
      observe?.(counter);
      return loaded || failed !== null;
    }, 30_000, `${c.id} loaded its log`);
    if (failed !== null) throw failed;
  }

  private newCounter(): SimCounter {
    const i = this.counters.length;
    const c: SimCounter = { index: i, id: `counter-${i + 1}`, address: `127.7.0.${i + 1}:9001`, disk: new MemoryDisk(this.clock, mulberry32(this.opts.seed + i)), counter: null };
    this.counters.push(c);
    return c;
  }

  /** A new counter joins the running mesh (its PEERS name every counter before it); gives its index. */
  async addCounter(): Promise<number> {
    const c = this.newCounter();
    await this.startCounter(c.index);
    return c.index;
  }

  /** Coordinator `pool` has `n` replicas for the tenant, each reachable, ready and serving its shard. */
  static servedThrough(pool: CounterPool, tenant: string, n: number): boolean {
    const replicas = pool.replicas(tenant);
    return replicas.length === n && replicas.every((r) => r.usable);
  }

  /** The placement every running counter computes (they must agree), or null while they do not. */
  placement(): string[][] | null {
    const lists = new Set<string>();
    for (const c of this.counters) if (c.counter) lists.add(c.counter.status().placed!.join(','));
    if (lists.size !== 1) return null;
    const placed = [...lists][0]!.split(',');
    return placeShards(this.opts.shards ?? 8, placed, this.opts.factor ?? 3);
  }

  /**
   * Every shard is held by exactly its placed replicas (shards handed off are deleted), each
   * running and serving it. Null when that holds, else what does not.
   */
  placementProblem(): string | null {
    const placement = this.placement();
    if (!placement) return 'counters disagree on the members';
    for (let s = 0; s < placement.length; s++) {
      const holders = this.counters.filter((c) => c.counter?.status().held?.includes(s)).map((c) => c.id).sort();
      const want = [...placement[s]!].sort();
      if (holders.join() !== want.join()) return `shard ${s} is held by [${holders}], placed on [${want}]`;
      for (const c of this.counters) {
        if (want.includes(c.id) && !c.counter?.status().serving?.includes(s)) return `${c.id} does not serve shard ${s} yet`;
      }
    }
    return null;
  }

  /** Counter `i` dies at once: connections drop, timers stop; its log keeps what was appended. */
  async crashCounter(i: number): Promise<void> {
    const c = this.counters[i]!;
    if (!c.counter) return;
    this.net.crash(c.address, c.id);
    const counter = c.counter;
    c.counter = null;
    // its connections are gone already, so close() has nothing left to say to anyone; it runs on
    // simulated time (it waits for adds in flight), so the simulation drives it
    await this.settle([counter.close()]);
  }

  /** Advances simulated time by `ms`, running every event due meanwhile (microtasks drained after each). */
  async run(ms: number): Promise<void> {
    const end = this.clock.now() + ms;
    while (this.clock.step(end)) await drain();
    await drain();
  }

  /** Runs until `cond` holds, at most `ms` of simulated time; throws with `what` when it never does. */
  async until(cond: () => boolean, ms: number, what: string): Promise<void> {
    const end = this.clock.now() + ms;
    while (!cond()) {
      if (this.clock.now() >= end) throw new Error(`not within ${ms} simulated ms: ${what}`);
      if (!this.clock.step(end)) break;
      await drain();
    }
    if (!cond()) throw new Error(`not within ${ms} simulated ms: ${what}`);
  }

  /** Runs the simulation until every promise settled (at most `ms` simulated), then gives their values. */
  async settle<T>(promises: Promise<T>[], ms = 30_000): Promise<T[]> {
    let settled = 0;
    for (const p of promises) void p.then(() => settled++, () => settled++);
    await this.until(() => settled === promises.length, ms, `${promises.length} operations answered`);
    return Promise.all(promises);
  }

  /** Writes through coordinator `j`, recording what was sent and what was acknowledged. */
  write(j: number, items: Item[]): Promise<boolean> {
    for (const it of items) setOf(this.sent, it.tenant).add(it.id);
    return this.pools[j]!.add(items).then(
      () => {
        for (const it of items) setOf(this.acked, it.tenant).add(it.id);
        return true;
      },
      () => false,
    );
  }

  /**
   * Every running counter holds the same set for every tenant: same count and same digest (two
   * replicas can hold different sets of one size for a while).
   */
  converged(): boolean {
    for (const tenant of this.sent.keys()) {
      const states = new Set(this.servingCounters(tenant).map((c) => `${c.count(tenant)}/${c.digest(tenant)}`));
      if (states.size !== 1) return false;
    }
    return true;
  }

  /** The running counters that hold the tenant's shard caught up (ready or not: a restarted one is still catching up). */
  servingCounters(tenant: string): Counter[] {
    const out: Counter[] = [];
    for (const c of this.counters) if (c.counter && c.counter.refusal(tenant) === null) out.push(c.counter);
    return out;
  }

  /**
   * The one check of a run: every running counter agrees on every tenant, holds every
   * acknowledged item, and nothing that was never sent; and no bug was logged.
   */
  compare(): void {
    const problems: string[] = [];
    for (const c of this.counters) {
      if (!c.counter) continue;
      for (const [tenant, ids] of this.sent) {
        if (c.counter.refusal(tenant) !== null) continue;
        const n = c.counter.count(tenant);
        const acked = this.acked.get(tenant)?.size ?? 0;
        if (n < acked) problems.push(`${c.id} counts ${n} for ${tenant}, below the ${acked} acknowledged`);
        if (n > ids.size) problems.push(`${c.id} counts ${n} for ${tenant}, above the ${ids.size} ever sent`);
      }
    }
    if (!this.converged()) problems.push('counters disagree');
    if (this.errors.length > 0) problems.push(`errors logged:\n${this.errors.join('\n')}`);
    if (problems.length > 0) throw new Error(problems.join('\n'));
  }

  async close(): Promise<void> {
    for (const p of this.pools) p.close();
    for (const c of this.counters) await this.crashCounter(c.index);
    await this.run(10_000);
  }
}

function setOf(map: Map<string, Set<string>>, key: string): Set<string> {
  let s = map.get(key);
  if (!s) {
    s = new Set();
    map.set(key, s);
  }
  return s;
}

/**
 * Lets every promise continuation of the last event run. They are microtasks, which all run
 * before a real macrotask; nothing else in the simulation uses the real event loop, so their
 * order is a function of the seed alone.
 */
function drain(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * The ids a counter's document of `shard` holds, per tenant (empty when it does not hold the
 * shard): read from the document itself, not inferred from counts.
 */
export function idsInShard(counter: Counter | null, shard: number): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>();
  const doc = counter?.shardDoc(shard);
  if (!doc) return out;
  const g = new GSet(pino({ level: 'silent' }));
  g.applyUpdates([Y.encodeStateAsUpdate(doc)], STORAGE);
  for (const it of g.items()) {
    const ids = out.get(it.tenant) ?? new Set<string>();
    out.set(it.tenant, ids);
    ids.add(it.id);
  }
  g.close();
  return out;
}
