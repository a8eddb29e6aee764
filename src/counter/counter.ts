/**
 * One counter process: recovers its state from disk, replicates it with its peers, takes writes
 * from coordinators and acknowledges them only once they are fsynced.
 */
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { CounterConfig } from '../shared/config.ts';
import { systemClock, type Clock, type TimerHandle } from '../shared/clock.ts';
import { CloseCode, type Item, type Status } from '../protocol/messages.ts';
import type { Transport, Wire } from '../protocol/wire.ts';
import { wsTransport } from '../protocol/ws-wire.ts';
import { GSet, LOCAL, STORAGE, type Origin } from './gset.ts';
import { DataDirLock, LogStore } from './storage/index.ts';
import { Gossip } from './gossip.ts';
import { PeerAcks } from './peer-acks.ts';
import { Handshake } from './handshake.ts';
import { CoordinatorSessions, type CounterApi } from './sessions.ts';
import { buildCounterServer } from './server.ts';
import { CounterMetrics } from './metrics.ts';
import { closeWithin } from '../shared/http-shutdown.ts';

/**
 * How long read repair waits for a peer's answer. Below the coordinator's default
 * COUNTER_TIMEOUT_MS (3 s), so a coordinator hears "could not pull" rather than nothing.
 */
const PULL_TIMEOUT_MS = 1000;

/** How long a starting counter waits for a peer's state before it serves anyway. */
const CATCH_UP_GRACE_HEARTBEATS = 2;

/** What the counter needs of its disk: the log store in production, an in-memory log in tests. */
export interface UpdateLog {
  /** Appends one update; resolves once written, and fsynced when `durable`. Appends are written in order. */
  append(update: Uint8Array, durable: boolean): Promise<void>;
  /** Resolves once every update appended so far is fsynced (non-durable appends included). */
  sync(): Promise<void>;
  /** True when the log has grown enough to be folded into a snapshot (the store's policy). */
  needsCompaction(): boolean;
  /** Writes the state `snapshot` returns as the new snapshot and drops the logs it covers. */
  compact(snapshot: () => Uint8Array): Promise<void>;
  close(): Promise<void>;
}

/** What a counter's disk held at start. */
export interface Recovered {
  snapshot: Uint8Array | null;
  updates: Uint8Array[];
  /** Files found damaged and moved aside: the counter waits for a peer's state before serving. */
  damaged: string[];
  tornTail: boolean;
}

/** The world a counter runs in; tests substitute the in-memory network, log and a virtual clock. */
export interface CounterRuntime {
  log: UpdateLog;
  /** DATA_DIR's lock, released once the log is closed (none in tests). */
  lock?: { close(): Promise<void> };
  transport: Transport;
  clock: Clock;
  /** A fixed Yjs clientID, for seeded test runs only. */
  clientID?: number;
  /** With METRICS=on: what the counter reports to them (none in tests). */
  metrics?: CounterMetrics | null;
  /** Bytes of DATA_DIR replayed per step before the event loop gets a turn (default REPLAY_STEP_BYTES). */
  replayStepBytes?: number;
}

/**
 * Replay applies the recovered updates in steps of about this many bytes and lets the event loop
 * run between steps, so /ready and /metrics answer while a large DATA_DIR loads. A snapshot is
 * one update and one step, however big.
 */
const REPLAY_STEP_BYTES = 16 * 1024 * 1024;
/** Replay progress is logged at most this often (a catch-up is one sync message: it logs when it ends). */
const PROGRESS_LOG_MS = 3000;

function percent(done: number, total: number): number {
  return Math.floor((100 * done) / Math.max(1, total));
}

interface PendingAdd {
  items: Item[];
  /** Counters, this one included, that must have the items on disk; 1: this one alone. */
  acks: number;
  ackWaitMs: number;
  /** With the number of counters that have the items on disk (at least 1). */
  resolve: (n: number) => void;
  reject: (err: Error) => void;
}

export class Counter implements CounterApi {
  readonly gset: GSet;
  private readonly gossip: Gossip;
  private readonly sessions: CoordinatorSessions;
  private readonly storage: UpdateLog;
  private readonly lock: { close(): Promise<void> } | undefined;
  private readonly clock: Clock;
  private app: FastifyInstance | null = null;
  private queue: PendingAdd[] = [];
  private flushScheduled = false;
  /** Settles once every update appended so far is in the log (appends are written in order). */
  private logTail: Promise<void> = Promise.resolve();
  /** Some update is in memory but not on disk; the next write first rewrites the snapshot. */
  private persistDebt = false;
  private needsPeerSync = false;
  /** Set until the recovered state is applied (see load): bytes done of the total. */
  private replaying: { done: number; total: number } | null = { done: 0, total: 0 };
  private readonly replayStepBytes: number;
  /** Briefly after start, wait for one peer's state so a restarted counter does not answer stale counts. */
  private catchingUp = false;
  private catchUpTimer: TimerHandle | null = null;
  private closing = false;
  private closed: Promise<void> | null = null;
  private lastStatusKey = '';
  /** Null with METRICS=off. */
  readonly metrics: CounterMetrics | null;

  private constructor(
    readonly config: Readonly<CounterConfig>,
    runtime: CounterRuntime,
    private readonly log: Logger,
  ) {
    this.replayStepBytes = runtime.replayStepBytes ?? REPLAY_STEP_BYTES;
    this.storage = runtime.log;
    this.lock = runtime.lock;
    this.clock = runtime.clock;
    this.metrics = runtime.metrics ?? null;
    this.gset = new GSet(log.child({ component: 'gset' }), runtime.clientID);
    const events = {
      onSynced: (peer: string | null) => this.onSynced(peer),
      onMembersChanged: () => this.statusChanged(),
      onApplied: (update: Uint8Array, origin: Origin) => void this.commit(update, origin).catch(() => {}),
      onReplicated: (produced: Uint8Array[], origin: Origin) => this.storeReplicated(produced, origin),
      observer: this.metrics?.gossip,
    };
    this.gossip = new Gossip(config, this.gset, log.child({ component: 'gossip' }), events, runtime.transport, runtime.clock);
    this.sessions = new CoordinatorSessions(this, config.heartbeatMs, log.child({ component: 'sessions' }), runtime.clock);
    this.gset.onCounted = this.sessions.watches.counted;
  }

  /** Takes DATA_DIR's lock, opens and replays the log store in it, then listens on COUNTER_PORT. */
  static async start(config: Readonly<CounterConfig>, log: Logger): Promise<Counter> {
    const t0 = Date.now();
    const metrics = config.metrics ? new CounterMetrics(config.antiEntropyMs, systemClock) : null;
    const storageLog = log.child({ component: 'storage' });
    // the lock is the directory's, taken once; log stores (one today) open under it
    const lock = await DataDirLock.acquire(config.dataDir, storageLog);
    const { store, recovered } = await LogStore.open({ dir: config.dataDir, compactBytes: config.compactBytes, log: storageLog, observer: metrics?.storage }).catch(async (err: unknown) => {
      await lock.close();
      throw err;
    });
    const transport = wsTransport({ secret: config.clusterSecret, previousSecret: config.acceptedSecrets[1], tls: config.tls, host: config.host, maxPayload: config.maxMessageBytes, log });
    const counter = new Counter(config, { log: store, lock, transport, clock: systemClock, metrics }, log);
    metrics?.attach(counter, { connectedPeers: () => counter.connectedPeers() });
    try {
      // listening while the state loads: /health, /ready (which says how far replay got) and
      // /metrics answer; mesh connections wait until it is loaded (see accept)
      const app = buildCounterServer({ config, log, counter, acceptMesh: (wire, remote) => counter.accept(wire, remote), metrics });
      counter.app = app;
      await app.listen({ host: config.host, port: config.port });
      log.info({ id: config.id, address: app.server.address(), advertised: config.advertiseAddress }, 'counter listening; loading DATA_DIR');
      await counter.load(recovered);
      metrics?.replayed((Date.now() - t0) / 1000);
      log.info({ id: config.id, ready: counter.ready }, 'counter joined the mesh');
      return counter;
    } catch (err) {
      await counter.close();
      throw err;
    }
  }

  /** A counter on a runtime of the caller's (the in-memory mesh tests), not loaded yet: see `load`. */
  static create(config: Readonly<CounterConfig>, runtime: CounterRuntime, log: Logger): Counter {
    return new Counter(config, runtime, log);
  }

  /** Applies what recovery read from DATA_DIR (not ready meanwhile), then joins the mesh. */
  async load(recovered: Recovered): Promise<void> {
    await this.recover(recovered);
    this.join();
  }

  /** Serves an accepted mesh connection: the handshake hands it to a peer or a coordinator session. */
  accept(wire: Wire, remote: string): void {
    if (this.closing) {
      wire.terminate();
      return;
    }
    if (this.replaying) {
      // peers and coordinators redial; meanwhile nothing changes the state being loaded (a
      // compaction now would write a snapshot without the updates not replayed yet)
      wire.close(CloseCode.TryAgainLater, 'loading DATA_DIR');
      return;
    }
    Handshake.accept(
      wire,
      remote,
      // a handshake that began before stop() may end after gossip and sessions closed: such a
      // connection is closed here, or it would hold the HTTP server's close (and the exit) forever
      {
        peer: (sock, hello) => (this.closing ? sock.close(CloseCode.GoingAway, 'shutting down') : this.gossip.adopt(sock, hello)),
        coordinator: (sock) => (this.closing ? sock.close(CloseCode.GoingAway, 'shutting down') : this.sessions.adopt(sock)),
      },
      { heartbeatMs: this.config.heartbeatMs, log: this.log, clock: this.clock },
    );
  }

  get id(): string {
    return this.config.id;
  }

  get address(): string {
    return this.config.advertiseAddress;
  }

  get ready(): boolean {
    return !this.closing && this.replaying === null && !this.needsPeerSync && !this.catchingUp;
  }

  notReadyReason(): string {
    if (this.closing) return 'counter is shutting down';
    if (this.replaying) {
      const { done, total } = this.replaying;
      return `counter is loading DATA_DIR: ${percent(done, total)}% replayed (${done} of ${total} bytes)`;
    }
    if (this.needsPeerSync) return 'counter found damaged data on disk and waits to sync from a peer';
    if (this.catchingUp) return 'counter just started and is catching up from its peers';
    return '';
  }

  count(tenant: string): number {
    return this.gset.count(tenant);
  }

  digest(tenant: string): number {
    return this.gset.digest(tenant);
  }

  pull(peerId: string): Promise<void> {
    return this.gossip.pull(peerId, PULL_TIMEOUT_MS);
  }

  status(): Status {
    return { id: this.id, address: this.address, ready: this.ready, items: this.gset.size, members: this.gossip.members(), lag: this.metrics?.lagByPeer() };
  }

  /** Peers linked to this counter: its awareness state lists them (gossip publishes it for routing). */
  connectedPeers(): number {
    return ((this.gossip.awareness.getLocalState() as { peers?: unknown[] } | null)?.peers ?? []).length;
  }

  /**
   * Applies the items and resolves once they are on this counter's disk, with 1. With `acks` > 1,
   * once `acks` − 1 peers also confirmed they have them on theirs, or after `ackWaitMs`: resolves
   * with the number of counters, this one included, that have them on disk then. Adds arriving in
   * the same event-loop turn share one transaction, one Yjs update, one fsync and one Replicate.
   */
  add(items: Item[], acks = 1, ackWaitMs = 0): Promise<number> {
    return new Promise((resolve, reject) => {
      this.queue.push({ items, acks, ackWaitMs, resolve, reject });
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        this.clock.setImmediate(() => void this.flush());
      }
    });
  }

  /**
   * Stops gracefully (README "Operations / Shutdown"): reports not ready at once, so coordinators
   * send new requests elsewhere; answers the adds already taken, whose group commit finishes and
   * is fsynced first; hands the updates still gathered for gossip to the peers, closes every
   * connection with a close handshake, then syncs and closes the log and detaches the document's
   * listeners. Waits at most SHUTDOWN_TIMEOUT_MS for the adds and for the connections.
   */
  close(): Promise<void> {
    this.closed ??= this.stop();
    return this.closed;
  }

  private async stop(): Promise<void> {
    this.closing = true;
    this.clock.clear(this.catchUpTimer);
    // not ready from now on: new Adds and Counts are refused, and the coordinators hear it now
    this.sessions.pushStatus();
    const timeoutMs = this.config.shutdownTimeoutMs;
    const pending = this.sessions.pending;
    await this.sessions.whenAnswered(timeoutMs);
    this.log.info({ adds: pending, unanswered: this.sessions.pending }, 'stopping: answered the adds taken before the stop');
    this.gossip.close();
    this.sessions.close();
    this.metrics?.close();
    if (this.app) {
      // the server waits for the mesh sockets too, closing with their handshake (cut after a second by MeshSocket)
      const cut = await closeWithin(this.app, timeoutMs);
      if (cut > 0) this.log.warn({ connections: cut, timeoutMs }, 'connections still open at SHUTDOWN_TIMEOUT_MS were cut');
    }
    await this.logTail.catch(() => {});
    try {
      await this.storage.close();
    } finally {
      await this.lock?.close();
      this.gset.close();
    }
  }

  /**
   * The write path: apply the batch in memory (one transaction), store it (log, fsync), hand it to
   * gossip, and acknowledge once the log has it. Items already held make no update, but may be
   * in an append still in flight: their acknowledgment waits for the log's tail. Adds that need
   * peers' acknowledgments too make gossip send the update at once, marked for answers, and wait
   * for those after the fsync (README "Guarantees").
   */
  private async flush(): Promise<void> {
    this.flushScheduled = false;
    const batch = this.queue;
    this.queue = [];
    let peersNeeded = 0;
    let waitMs = Number.POSITIVE_INFINITY;
    for (const b of batch) {
      if (b.acks < 2) continue;
      peersNeeded = Math.max(peersNeeded, b.acks - 1);
      waitMs = Math.min(waitMs, b.ackWaitMs);
    }
    let peerAcks: PeerAcks | null = null;
    try {
      const update = this.gset.add(batch.length === 1 ? batch[0]!.items : batch.flatMap((b) => b.items), peersNeeded > 0);
      if (update && peersNeeded > 0) peerAcks = new PeerAcks(peersNeeded, waitMs, this.clock);
      // nothing new: the items came earlier, maybe from a peer and not synced yet; an ack means on disk
      await (update ? this.commit(update, LOCAL, true, peerAcks) : this.logTail.then(() => this.storage.sync()));
      if (this.persistDebt) await this.repayDebt();
    } catch (err) {
      const e = new Error(`could not store the items durably: ${(err as Error).message}`);
      for (const b of batch) b.reject(e);
      return;
    }
    if (this.metrics) this.metrics.accepted(batch.reduce((n, b) => n + b.items.length, 0));
    for (const b of batch) if (b.acks < 2) b.resolve(1);
    if (peersNeeded === 0) return;
    const counters = 1 + (peerAcks ? await peerAcks.done : 0);
    for (const b of batch) if (b.acks >= 2) b.resolve(counters);
  }

  /**
   * A peer's update that the peer waits to hear is on our disk (a Replicate): stored like any
   * peer's update, but fsynced at once. Resolves once it is on disk, and with it everything
   * appended before (appends are written in order). Nothing new: we held it already, maybe in an
   * append still in flight or written without a sync.
   */
  private async storeReplicated(produced: Uint8Array[], origin: Origin): Promise<void> {
    let last: Promise<void> | null = null;
    for (const update of produced) last = this.commit(update, origin, true);
    await (last ?? this.logTail.then(() => this.storage.sync()));
    if (this.persistDebt) await this.repayDebt();
  }

  /**
   * Every update this counter applied, its own or a peer's, goes here once: first to the log (our
   * own writes fsynced before they are acknowledged; a peer's are durable on that peer already,
   * so they are synced with our next write, unless the peer waits for our acknowledgment), then
   * to gossip, which forwards it to the peers that lack it (at once, with `peerAcks`, to collect
   * their acknowledgments). Resolves when the log has it.
   */
  private commit(update: Uint8Array, origin: Origin, durable = origin.kind !== 'peer', peerAcks: PeerAcks | null = null): Promise<void> {
    const appended = this.storage.append(update, durable);
    this.logTail = appended;
    appended.then(
      () => {
        // the store owns the policy (see LogStore.needsCompaction); the counter asks after each append
        if (this.storage.needsCompaction()) this.compact();
      },
      () => {
        // the storage layer logged it; the next acknowledged write rewrites the whole state
        this.persistDebt = true;
      },
    );
    this.gossip.enqueue(update, origin, peerAcks);
    return appended;
  }

  private async repayDebt(): Promise<void> {
    await this.storage.compact(() => this.snapshot());
    this.persistDebt = false;
    this.log.info('disk takes writes again; state rewritten to a fresh snapshot');
  }

  private snapshot(): Uint8Array {
    return this.gset.encodeState();
  }

  private compact(): void {
    this.storage.compact(() => this.snapshot()).catch((err: Error) => this.log.error({ err }, 'compaction failed; will retry after the next write'));
  }

  private async recover({ snapshot, updates, damaged, tornTail }: Recovered): Promise<void> {
    const t0 = this.clock.now();
    const all = snapshot ? [snapshot, ...updates] : updates;
    await this.replay(all);
    if (damaged.length > 0) {
      this.needsPeerSync = true;
      this.log.error({ damaged }, 'damaged data moved aside; not ready until synced from a peer');
    }
    // rewrite what was read into a clean snapshot so the damaged or cut files are not needed again
    if (damaged.length > 0 || tornTail) await this.storage.compact(() => this.snapshot());
    this.log.info({ items: this.gset.size, tenants: this.gset.tenants, ms: this.clock.now() - t0, clientID: this.gset.doc.clientID }, 'state loaded');
  }

  /** Applies the recovered updates in steps, logging progress; not ready meanwhile. */
  private async replay(all: readonly Uint8Array[]): Promise<void> {
    const total = all.reduce((n, u) => n + u.length, 0);
    const progress = { done: 0, total };
    this.replaying = progress;
    const step = this.replayStepBytes;
    let loggedAt = this.clock.now();
    if (total > step) this.log.info({ bytes: total, updates: all.length }, 'replaying DATA_DIR');
    for (let i = 0; i < all.length; ) {
      let j = i;
      let bytes = 0;
      while (j < all.length && (j === i || bytes + all[j]!.length <= step)) bytes += all[j++]!.length;
      this.gset.applyUpdates(all.slice(i, j), STORAGE);
      progress.done += bytes;
      i = j;
      if (i < all.length) {
        if (this.clock.now() - loggedAt >= PROGRESS_LOG_MS) {
          loggedAt = this.clock.now();
          this.log.info({ done: progress.done, total, items: this.gset.size }, `replaying DATA_DIR: ${percent(progress.done, total)}%`);
        }
        await new Promise<void>((resolve) => this.clock.setImmediate(resolve));
      }
    }
    this.replaying = null;
  }

  /** Starts replicating: dial PEERS, wait briefly for one peer's state before serving. */
  private join(): void {
    this.startCatchUp();
    this.gossip.start();
  }

  private startCatchUp(): void {
    if (this.config.peers.length === 0) return;
    this.catchingUp = true;
    // peers that are all down must not keep a healthy counter out of service for long
    this.catchUpTimer = this.clock.setTimeout(() => this.endCatchUp('no peer answered in time'), CATCH_UP_GRACE_HEARTBEATS * this.config.heartbeatMs);
  }

  private endCatchUp(why: string): void {
    if (!this.catchingUp) return;
    this.catchingUp = false;
    this.clock.clear(this.catchUpTimer);
    this.log.info({ why, items: this.gset.size }, 'ready');
    this.statusChanged();
  }

  private onSynced(peer: string | null): void {
    this.endCatchUp(`synced from ${peer ?? 'a peer'}`);
    if (this.needsPeerSync) {
      this.needsPeerSync = false;
      this.log.info({ peer, items: this.gset.size }, 'synced from a peer after damaged data; ready');
    }
    this.statusChanged();
  }

  private statusChanged(): void {
    const key = `${this.ready}|${this.gossip.members().length}`;
    if (key !== this.lastStatusKey) {
      this.lastStatusKey = key;
      this.sessions.pushStatus();
    }
  }
}
