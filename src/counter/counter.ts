/**
 * One counter process: recovers its shards from disk, replicates them with its peers, takes
 * writes from coordinators and acknowledges them only once they are fsynced.
 */
import type { FastifyInstance } from 'fastify';
import * as Y from 'yjs';
import type { Logger } from 'pino';
import type { CounterConfig } from '../shared/config.ts';
import { systemClock, type Clock, type TimerHandle } from '../shared/clock.ts';
import { CloseCode, type Item, type Status } from '../protocol/messages.ts';
import type { Transport, Wire } from '../protocol/wire.ts';
import { wsTransport } from '../protocol/ws-wire.ts';
import { GSet, LOCAL, STORAGE, type Origin } from './gset.ts';
import { CompactionQueue, DataDirLock, LogStore } from './storage/index.ts';
import { ShardDirs } from './storage/shard-dirs.ts';
import { join } from 'node:path';
import { Gossip, meshFrameBytes, type ShardDocs, type ShardUpdate } from './gossip.ts';
import { Shard, type Recovered, type UpdateLog } from './shard.ts';
import { decodeJournal, Journal, JOURNAL_TRIM_BYTES } from './journal.ts';
import { shardOf } from '../shared/placement.ts';
import { PeerAcks } from './peer-acks.ts';
import { Membership, type MembersStore } from './membership.ts';
import { ShardKeeper } from './shard-keeper.ts';
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

export type { Recovered, UpdateLog } from './shard.ts';

/** What the counter needs of its disk: one log store per shard (DATA_DIR in production, in memory in tests). */
export interface ShardStorage {
  /** The shards stored, as the counter left them. */
  held(): Promise<number[]>;
  /** Opens one shard's log store, creating it when missing, with what it held and whether it was still catching up. */
  open(shard: number): Promise<{ log: UpdateLog; recovered: Recovered; catchingUp: boolean }>;
  /** Marks a shard as catching up (before anything of it is stored), or as caught up. */
  setCatchingUp(shard: number, on: boolean): Promise<void>;
  /** Deletes a shard whose log store is closed. */
  remove(shard: number): Promise<void>;
  /** The member list. */
  members: MembersStore;
  /**
   * A store of the format before shards, if DATA_DIR holds one: every update in it (snapshot
   * first), and `done` to delete it once its items are in the shards.
   */
  legacy?(): Promise<{ updates: Uint8Array[]; done(): Promise<void> } | null>;
  /**
   * The journal's store, where durable writes of every shard share one fsync (see journal.ts).
   * Without one (the in-memory tier), each shard's log is fsynced on its own.
   */
  journal?(): Promise<{ log: UpdateLog; recovered: Recovered }>;
}

/** The world a counter runs in; tests substitute the in-memory network, log and a virtual clock. */
export interface CounterRuntime {
  storage: ShardStorage;
  /** DATA_DIR's lock, released once the logs are closed (none in tests). */
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
  /** The shards this counter holds, by shard id. */
  private readonly shards: (Shard | undefined)[];
  readonly shardDocs: ShardDocs;
  private readonly gossip: Gossip;
  private readonly sessions: CoordinatorSessions;
  private readonly membership: Membership;
  private readonly keeper: ShardKeeper;
  private readonly storage: ShardStorage;
  /** Null until recovered, and for storage without a journal. */
  private journal: Journal | null = null;
  /**
   * Shards whose logs took peers' updates without a sync and outside the journal (gossip), with
   * a count of those appends: a replicated write may build on them (see storeReplicated).
   */
  private readonly unjournaled = new Map<Shard, number>();
  private readonly clientID: number | undefined;
  private readonly lock: { close(): Promise<void> } | undefined;
  private readonly clock: Clock;
  private app: FastifyInstance | null = null;
  private queue: PendingAdd[] = [];
  private flushScheduled = false;
  private needsPeerSync = false;
  /**
   * Set until load has applied the recovered state and starts catching up (see load): bytes
   * replayed of the total. Mesh connections are refused meanwhile: a peer's member list applied
   * before the catch-up starts would let placement finish and the counter serve without it.
   */
  private replaying: { done: number; total: number } | null = { done: 0, total: 0 };
  private readonly replayStepBytes: number;
  /** Briefly after start, wait for one peer's state so a restarted counter does not answer stale counts. */
  private catchingUp = false;
  private catchUpTimer: TimerHandle | null = null;
  /** Shards are placed once the member list is known (see activatePlacement); ready after the first pass. */
  private placing: 'waiting' | 'first pass' | 'done' = 'waiting';
  private closing = false;
  private closed: Promise<void> | null = null;
  private lastStatusKey = '';
  /** Null with METRICS=off. */
  readonly metrics: CounterMetrics | null;

  private constructor(
    readonly config: Readonly<CounterConfig>,
    runtime: CounterRuntime,
    private readonly log: Logger,
    membership: Membership,
  ) {
    this.membership = membership;
    this.replayStepBytes = runtime.replayStepBytes ?? REPLAY_STEP_BYTES;
    this.storage = runtime.storage;
    this.lock = runtime.lock;
    this.clock = runtime.clock;
    this.clientID = runtime.clientID;
    this.metrics = runtime.metrics ?? null;
    this.shards = new Array(config.shards).fill(undefined);
    const shards = this.shards;
    this.shardDocs = {
      count: config.shards,
      get: (id) => shards[id],
      *held() {
        for (const s of shards) if (s) yield s;
      },
    };
    const events = {
      onSynced: (peer: string | null) => this.onSynced(peer),
      onPlacementInput: () => void this.keeper.reconcile(),
      onMembersChanged: () => this.statusChanged(),
      onApplied: (shard: Shard, update: Uint8Array, origin: Origin) => void this.commit(shard, update, origin).catch(() => {}),
      onReplicated: (shard: Shard, produced: Uint8Array[], origin: Origin) => this.storeReplicated(shard, produced, origin),
      observer: this.metrics?.gossip,
    };
    this.gossip = new Gossip(config, this.shardDocs, log.child({ component: 'gossip' }), events, membership, runtime.transport, runtime.clock, runtime.clientID);
    this.sessions = new CoordinatorSessions(this, config.heartbeatMs, log.child({ component: 'sessions' }), runtime.clock);
    const gossip = this.gossip;
    const mesh = {
      aliveIds: () => new Set(gossip.members().map((m) => m.id)),
      linkedPeers: () => gossip.linkedPeers(),
      peerShards: (id: string) => gossip.peerShards(id),
      peerCovers: (id: string, shard: number, required: ReadonlyMap<number, number>) => gossip.peerCovers(id, shard, required),
      syncShard: (id: string, shard: number, timeoutMs: number) => gossip.syncShard(id, shard, timeoutMs),
      announceShards: (held: readonly number[], serving: readonly number[]) => gossip.announceShards(held, serving),
    };
    const host = {
      state: (id: number) => {
        const shard = shards[id];
        return shard ? (shard.serving ? ('serving' as const) : ('catching-up' as const)) : null;
      },
      create: (id: number, serve: boolean) => this.createShard(id, serve),
      serve: (id: number) => this.serveShard(id),
      drop: (id: number) => this.dropShard(id),
      stateVector: (id: number) => {
        const doc = shards[id]!.gset.doc;
        return { sv: Y.decodeStateVector(Y.encodeStateVector(doc)), own: doc.clientID };
      },
      changed: () => this.statusChanged(),
    };
    this.keeper = new ShardKeeper(config.id, config.shards, config.replicationFactor, membership, mesh, host, runtime.clock, log.child({ component: 'shards' }), config.heartbeatMs);
    membership.onChange = () => {
      void this.keeper.reconcile();
      this.statusChanged();
    };
    membership.onPeerSynced = () => void this.activatePlacement('member list synced from a peer');
  }

  /** Takes DATA_DIR's lock, checks its layout, listens on COUNTER_PORT, then loads the shards in it. */
  static async start(config: Readonly<CounterConfig>, log: Logger): Promise<Counter> {
    const t0 = Date.now();
    const metrics = config.metrics ? new CounterMetrics(config.antiEntropyMs, systemClock) : null;
    const storageLog = log.child({ component: 'storage' });
    // the lock is the directory's, taken once; the shards' log stores open under it
    const lock = await DataDirLock.acquire(config.dataDir, storageLog);
    const dirs = await ShardDirs.open(config.dataDir, config.shards).catch(async (err: unknown) => {
      await lock.close();
      throw err;
    });
    const storage = dirStorage(dirs, config, storageLog, metrics);
    const transport = wsTransport({ secret: config.clusterSecret, previousSecret: config.acceptedSecrets[1], tls: config.tls, host: config.host, maxPayload: config.maxMessageBytes, log });
    const counter = await Counter.create(config, { storage, lock, transport, clock: systemClock, metrics }, log).catch(async (err: unknown) => {
      await lock.close();
      throw err;
    });
    metrics?.attach(counter, { connectedPeers: () => counter.connectedPeers() });
    try {
      // listening while the state loads: /health, /ready (which says how far replay got) and
      // /metrics answer; mesh connections wait until it is loaded (see accept)
      const app = buildCounterServer({ config, log, counter, acceptMesh: (wire, remote) => counter.accept(wire, remote), metrics });
      counter.app = app;
      await app.listen({ host: config.host, port: config.port });
      log.info({ id: config.id, address: app.server.address(), advertised: config.advertiseAddress }, 'counter listening; loading DATA_DIR');
      await counter.load();
      metrics?.replayed((Date.now() - t0) / 1000);
      log.info({ id: config.id, ready: counter.ready }, 'counter joined the mesh');
      return counter;
    } catch (err) {
      await counter.close();
      throw err;
    }
  }

  /** A counter on a runtime (the in-memory mesh tests pass theirs), with its member list read, not loaded yet: see `load`. */
  static async create(config: Readonly<CounterConfig>, runtime: CounterRuntime, log: Logger): Promise<Counter> {
    const clientID = runtime.clientID === undefined ? undefined : runtime.clientID + 1 + config.shards;
    const membership = await Membership.open(runtime.storage.members, log.child({ component: 'membership' }), clientID);
    return new Counter(config, runtime, log, membership);
  }

  /** Opens every shard's log store and applies what it held (not ready meanwhile), then joins the mesh. */
  async load(): Promise<void> {
    await this.recover();
    const knewMesh = this.membership.placed().some((id) => id !== this.id);
    await this.membership.join(this.id, this.address);
    this.replaying = null;
    this.join();
    // alone, or with the member list from disk, placement can start now; a new counter with PEERS
    // first learns the list from a peer (or gives up waiting with the catch-up grace)
    if (this.config.peers.length === 0 || knewMesh) await this.activatePlacement(knewMesh ? 'member list read from DATA_DIR' : 'no PEERS: the only member');
  }

  /** Resolves once this counter was removed from the mesh and handed off every shard it held. */
  get left(): Promise<void> {
    return this.keeper.left;
  }

  /**
   * Removes a member from the mesh for good; resolves once the removal is on this counter's
   * disk (gossip spreads it). Throws MembershipError for an id that is not a member or the last one.
   */
  remove(id: string): Promise<void> {
    return this.membership.remove(id);
  }

  /**
   * Null when this counter serves the tenant's shard (for a write: takes writes for it); else why
   * not, for the coordinator to try another counter.
   */
  refusal(tenant: string, write = false): string | null {
    const id = this.shardOf(tenant);
    const shard = this.shards[id];
    if (!shard) return `counter ${this.id} does not serve shard ${id}`;
    if (!shard.serving) return `counter ${this.id} is still catching up shard ${id}`;
    if (write && !this.keeper.takesWrites(id)) return `counter ${this.id} is handing shard ${id} off to its new replicas; write to them`;
    return null;
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
      { heartbeatMs: this.config.heartbeatMs, log: this.log, clock: this.clock, maxFrameBytes: meshFrameBytes(this.config) },
    );
  }

  get id(): string {
    return this.config.id;
  }

  get address(): string {
    return this.config.advertiseAddress;
  }

  get ready(): boolean {
    return !this.closing && this.replaying === null && !this.needsPeerSync && !this.catchingUp && this.placing === 'done';
  }

  notReadyReason(): string {
    if (this.closing) return 'counter is shutting down';
    if (this.replaying) {
      const { done, total } = this.replaying;
      return `counter is loading DATA_DIR: ${percent(done, total)}% replayed (${done} of ${total} bytes)`;
    }
    if (this.needsPeerSync) return 'counter found damaged data on disk and waits to sync from a peer';
    if (this.catchingUp) return 'counter just started and is catching up from its peers';
    if (this.placing !== 'done') return this.placing === 'waiting' ? 'counter waits for the member list from a peer' : 'counter is placing its shards';
    return '';
  }

  /** The shard holding a tenant's items. */
  shardOf(tenant: string): number {
    return shardOf(tenant, this.config.shards);
  }

  /** False once the peer is known not to hold the shard: it announces its shards without it, or it was removed and announces none. */
  peerHolds(peerId: string, shard: number): boolean {
    const theirs = this.gossip.peerShards(peerId);
    return theirs ? theirs.held.has(shard) : !this.membership.isRemoved(peerId);
  }

  /** Whether this counter counts the peer's acknowledgments for the shard: one of its replicas, serving it. */
  servedBy(peerId: string, shard: number): boolean {
    return this.keeper.servedBy(peerId, shard);
  }

  count(tenant: string): number {
    return this.shards[this.shardOf(tenant)]?.gset.count(tenant) ?? 0;
  }

  digest(tenant: string): number {
    return this.shards[this.shardOf(tenant)]?.gset.digest(tenant) ?? 0;
  }

  /** Distinct items held, over every shard held. */
  get items(): number {
    let n = 0;
    for (const s of this.shards) if (s) n += s.gset.size;
    return n;
  }

  get tenants(): number {
    let n = 0;
    for (const s of this.shards) if (s) n += s.gset.tenants;
    return n;
  }

  shardDoc(shard: number): Y.Doc | undefined {
    return this.shards[shard]?.gset.doc;
  }

  pull(peerId: string, tenant: string): Promise<void> {
    return this.gossip.pull(peerId, this.shardOf(tenant), PULL_TIMEOUT_MS);
  }

  status(): Status {
    const [held, serving] = this.shardLists();
    return {
      id: this.id,
      address: this.address,
      ready: this.ready,
      items: this.items,
      members: this.gossip.members(),
      shards: this.config.shards,
      factor: this.config.replicationFactor,
      placed: this.membership.placed(),
      removed: this.membership.removed(),
      serving,
      held,
      lag: this.metrics?.lagByPeer(),
      tallyBatch: true,
    };
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
    this.keeper.close();
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
    try {
      await Promise.all([...this.shardDocs.held()].map((s) => s.close()));
      // after the shards: closing them synced their logs, so nothing depends on the journal now
      await this.journal?.close();
      await this.membership.saved().catch(() => {});
    } finally {
      this.membership.close();
      await this.lock?.close();
    }
  }

  /**
   * The write path: sort the batch's items by shard, apply each shard's in memory (one
   * transaction), store them (each shard's log, fsync), hand them to gossip, and acknowledge once
   * every log has them. Items already held make no update, but may be in an append still in
   * flight: their acknowledgment waits for the shard log's tail. Adds that need peers'
   * acknowledgments too make gossip send the updates at once, marked for answers, and wait for
   * those after the fsync (README "Guarantees").
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
    // each request's shards: its acknowledgments are the fewest among them
    const shardIdsOf: Set<number>[] = [];
    const touched: Shard[] = [];
    try {
      const stored: Promise<void>[] = [];
      const toReplicate: ShardUpdate[] = [];
      for (const [shard, items] of this.byShard(batch.map((b) => b.items), peersNeeded > 0 ? shardIdsOf : undefined)) {
        touched.push(shard);
        const update = shard.gset.add(items, peersNeeded > 0);
        // nothing new: the items came earlier, maybe from a peer and not synced yet; an ack means on disk
        if (!update) {
          stored.push(shard.synced());
          continue;
        }
        stored.push(this.commit(shard, update, LOCAL, true, peersNeeded === 0));
        if (peersNeeded > 0) toReplicate.push({ shard: shard.id, update });
      }
      if (toReplicate.length > 0) {
        // only the shard's replicas that serve it count: the copies a reader's quorum will meet
        peerAcks = new PeerAcks(peersNeeded, toReplicate.map((u) => u.shard), waitMs, this.clock, (peer, shard) => this.servedBy(peer, shard));
        this.gossip.replicate(toReplicate, peerAcks);
      }
      await Promise.all(stored);
      for (const shard of touched) await shard.repayDebt();
    } catch (err) {
      const e = new Error(`could not store the items durably: ${(err as Error).message}`);
      for (const b of batch) b.reject(e);
      return;
    }
    if (this.metrics) this.metrics.accepted(batch.reduce((n, b) => n + b.items.length, 0));
    for (const b of batch) if (b.acks < 2) b.resolve(1);
    if (peersNeeded === 0) return;
    if (peerAcks) await peerAcks.done;
    for (const [i, b] of batch.entries()) if (b.acks >= 2) b.resolve(1 + (peerAcks?.acknowledged(shardIdsOf[i]!) ?? 0));
  }

  /**
   * Items by the shard holding them; a shard not held (moved away since the request came) fails
   * the batch, unstored. With `shardIdsOf`, each list's shard ids go in at its index.
   */
  private byShard(lists: readonly (readonly Item[])[], shardIdsOf?: Set<number>[]): Map<Shard, Item[]> {
    const out = new Map<Shard, Item[]>();
    for (const [i, items] of lists.entries()) {
      const ids = shardIdsOf ? new Set<number>() : null;
      if (ids && shardIdsOf) shardIdsOf[i] = ids;
      for (const it of items) {
        const id = this.shardOf(it.tenant);
        ids?.add(id);
        const shard = this.shards[id];
        if (!shard) throw new Error(`shard ${id} is no longer held by counter ${this.id}`);
        const list = out.get(shard);
        if (list) list.push(it);
        else out.set(shard, [it]);
      }
    }
    return out;
  }

  /**
   * A peer's update that the peer waits to hear is on our disk (a ShardReplicate): stored like
   * any peer's update, but fsynced at once. Resolves once it is on disk, and with it everything
   * appended before (appends are written in order). Nothing new: we held it already, maybe in an
   * append still in flight or written without a sync.
   */
  private async storeReplicated(shard: Shard, produced: Uint8Array[], origin: Origin): Promise<void> {
    let last: Promise<void> | null = null;
    for (const update of produced) last = this.commit(shard, update, origin, true);
    // the writer's earlier updates may have come by gossip, written to the shard log without a
    // sync: the journaled update is no use after a power cut without them, so they are synced too
    const gossiped = this.unjournaled.get(shard);
    if (last !== null && this.journal !== null && gossiped !== undefined) {
      last = Promise.all([last, shard.synced()]).then(() => {
        if (this.unjournaled.get(shard) === gossiped) this.unjournaled.delete(shard);
      });
    }
    await (last ?? shard.synced());
    await shard.repayDebt();
  }

  /**
   * Every update this counter applied to a shard, its own or a peer's, goes here once: first to
   * the shard's log (our own writes fsynced before they are acknowledged; a peer's are durable on
   * that peer already, so they are synced with our next write, unless the peer waits for our
   * acknowledgment), then to gossip, which forwards it to the peers that lack it. A write waiting
   * for peers' acknowledgments (`gossipNow` false) was handed to gossip by the caller. Resolves
   * when the log has it.
   */
  private commit(shard: Shard, update: Uint8Array, origin: Origin, durable = origin.kind !== 'peer', gossipNow = true): Promise<void> {
    let appended: Promise<void>;
    if (durable && this.journal) {
      // to the shard's log without a sync (first: a journal trim syncs the shard logs before it
      // drops records), and durable through the journal, whose fsync the batch's shards share
      void shard.append(update, false);
      appended = this.journal.append(shard.id, update);
    } else {
      appended = shard.append(update, durable);
      if (!durable && this.journal) this.unjournaled.set(shard, (this.unjournaled.get(shard) ?? 0) + 1);
    }
    if (gossipNow) this.gossip.enqueue(shard.id, update, origin);
    return appended;
  }

  /**
   * Opens every shard's log store and replays what it held; then moves the items of a pre-shard
   * store, if DATA_DIR has one, into the shards.
   */
  private async recover(): Promise<void> {
    const t0 = this.clock.now();
    const opened: { shard: Shard; recovered: Recovered }[] = [];
    // a pre-shard DATA_DIR's items go to every shard (placement then hands off those not placed here)
    const legacy = await this.storage.legacy?.();
    const ids = legacy ? Array.from({ length: this.config.shards }, (_, i) => i) : await this.storage.held();
    for (const id of ids) {
      const { log, recovered, catchingUp } = await this.storage.open(id);
      const shard = this.newShard(id, log, !catchingUp);
      opened.push({ shard, recovered });
    }
    await this.replay(opened);
    const damaged = opened.flatMap((o) => o.recovered.damaged);
    damaged.push(...(await this.openJournal()));
    if (damaged.length > 0) {
      this.needsPeerSync = true;
      this.log.error({ damaged }, 'damaged data moved aside; not ready until synced from a peer');
    }
    // rewrite what was read into a clean snapshot so the damaged or cut files are not needed again
    for (const { shard, recovered } of opened) if (recovered.damaged.length > 0 || recovered.tornTail) await shard.rewrite();
    if (legacy) await this.migrateLegacy(legacy);
    this.log.info({ items: this.items, tenants: this.tenants, shards: opened.length, ms: this.clock.now() - t0 }, 'state loaded');
  }

  /**
   * A DATA_DIR written before shards: its one document's items are added to the shards (fsynced),
   * and only then is the old store deleted. A crash in between repeats the move, which adds nothing twice.
   */
  private async migrateLegacy(legacy: { updates: Uint8Array[]; done(): Promise<void> }): Promise<void> {
    const old = new GSet(this.log.child({ component: 'migration' }));
    try {
      old.applyUpdates(legacy.updates, STORAGE);
      const items = [...old.items()];
      const stored: Promise<void>[] = [];
      for (const [shard, list] of this.byShard([items])) {
        const update = shard.gset.add(list);
        stored.push(update ? shard.append(update, true) : shard.synced());
      }
      await Promise.all(stored);
      await legacy.done();
      this.log.warn({ items: items.length, tenants: old.tenants }, 'moved the items of a DATA_DIR written before shards into shards; the old store is deleted');
    } finally {
      old.close();
    }
  }

  /**
   * Opens the journal and applies its records to the shards still held (Yjs skips what a shard
   * holds already): updates a crash left only there are appended to their shard logs again.
   * Returns the journal files found damaged.
   */
  private async openJournal(): Promise<string[]> {
    if (!this.storage.journal) return [];
    const { log, recovered } = await this.storage.journal();
    let reapplied = 0;
    for (const { shard: id, update } of decodeJournal(recovered)) {
      const shard = this.shards[id];
      if (!shard) continue; // handed off before the crash: its replicas have it
      for (const u of shard.gset.apply(update, STORAGE)) {
        void shard.append(u, false);
        reapplied++;
      }
    }
    if (reapplied > 0) this.log.info({ updates: reapplied }, 'journal: updates missing from the shard logs were applied again');
    this.journal = new Journal(log, () => this.syncShardLogs(), this.log.child({ component: 'journal' }));
    return recovered.damaged;
  }

  /** Resolves once every shard log has everything appended to it so far on disk (a journal trim waits for it). */
  private async syncShardLogs(): Promise<void> {
    await Promise.all(
      [...this.shardDocs.held()].map(async (shard) => {
        try {
          await shard.repayDebt();
          await shard.synced();
        } catch (err) {
          // a shard handed off meanwhile needs nothing of the journal any more
          if (this.shards[shard.id] === shard) throw err;
        }
      }),
    );
  }

  /** Applies the recovered updates in steps, logging progress; not ready meanwhile (load clears `replaying`). */
  private async replay(opened: readonly { shard: Shard; recovered: Recovered }[]): Promise<void> {
    const work = opened.map(({ shard, recovered: { snapshot, updates } }) => ({ shard, all: snapshot ? [snapshot, ...updates] : updates }));
    const total = work.reduce((n, w) => n + w.all.reduce((m, u) => m + u.length, 0), 0);
    const progress = { done: 0, total };
    this.replaying = progress;
    const step = this.replayStepBytes;
    let loggedAt = this.clock.now();
    let sinceTurn = 0;
    if (total > step) this.log.info({ bytes: total, shards: work.length }, 'replaying DATA_DIR');
    for (const { shard, all } of work) {
      for (let i = 0; i < all.length; ) {
        let j = i;
        let bytes = 0;
        while (j < all.length && (j === i || bytes + all[j]!.length <= step)) bytes += all[j++]!.length;
        shard.gset.applyUpdates(all.slice(i, j), STORAGE);
        progress.done += bytes;
        i = j;
        if (this.clock.now() - loggedAt >= PROGRESS_LOG_MS) {
          loggedAt = this.clock.now();
          this.log.info({ done: progress.done, total, items: this.items }, `replaying DATA_DIR: ${percent(progress.done, total)}%`);
        }
        // the event loop gets a turn after every step's worth of bytes: /ready and /metrics answer meanwhile
        sinceTurn += bytes;
        if (sinceTurn >= step) {
          sinceTurn = 0;
          await new Promise<void>((resolve) => this.clock.setImmediate(resolve));
        }
      }
    }
  }

  /** Starts replicating: dial PEERS, wait briefly for one peer's state before serving. */
  private join(): void {
    this.startCatchUp();
    this.gossip.start();
  }

  private newShard(id: number, log: UpdateLog, serving: boolean): Shard {
    const shard = new Shard(id, log, this.log.child({ shard: id }), this.clientID === undefined ? undefined : this.clientID + 1 + id);
    shard.serving = serving;
    shard.gset.onCounted = this.sessions.watches.counted;
    this.shards[id] = shard;
    return shard;
  }

  /** A shard placed here: marked catching up on disk first (unless served at once), then held. */
  private async createShard(id: number, serve: boolean): Promise<void> {
    if (!serve) await this.storage.setCatchingUp(id, true);
    const { log } = await this.storage.open(id);
    this.newShard(id, log, serve);
  }

  private async serveShard(id: number): Promise<void> {
    const shard = this.shards[id];
    if (!shard) return;
    // what the catch-up brought is on disk before the shard says it is complete
    await shard.synced();
    await this.storage.setCatchingUp(id, false);
    shard.serving = true;
  }

  /** A shard handed off: no longer held (requests for it are refused from now on), then deleted. */
  private async dropShard(id: number): Promise<void> {
    const shard = this.shards[id];
    if (!shard) return;
    this.shards[id] = undefined;
    this.unjournaled.delete(shard);
    await shard.close();
    await this.storage.remove(id);
  }

  /** Placement starts once the member list is known; shards move from then on. */
  private async activatePlacement(why: string): Promise<void> {
    if (this.placing !== 'waiting' || this.closing || this.replaying) return;
    this.placing = 'first pass';
    this.keeper.active = true;
    this.log.info({ why, members: this.membership.placed() }, 'placing shards');
    await this.keeper.reconcile();
    this.placing = 'done';
    this.statusChanged();
  }

  private startCatchUp(): void {
    if (this.config.peers.length === 0) return;
    this.catchingUp = true;
    // peers that are all down must not keep a healthy counter out of service for long
    this.catchUpTimer = this.clock.setTimeout(() => {
      // a new counter whose peers did not answer is the first of its mesh: it places over what it knows
      void this.activatePlacement('no peer answered in time; placing over the members known');
      this.endCatchUp('no peer answered in time');
    }, CATCH_UP_GRACE_HEARTBEATS * this.config.heartbeatMs);
  }

  private endCatchUp(why: string): void {
    if (!this.catchingUp) return;
    this.catchingUp = false;
    this.clock.clear(this.catchUpTimer);
    this.log.info({ why, items: this.items }, 'ready');
    this.statusChanged();
  }

  private shardLists(): [number[], number[]] {
    const held: number[] = [];
    const serving: number[] = [];
    for (const s of this.shards) {
      if (!s) continue;
      held.push(s.id);
      if (s.serving) serving.push(s.id);
    }
    return [held, serving];
  }

  private onSynced(peer: string | null): void {
    this.endCatchUp(`synced from ${peer ?? 'a peer'}`);
    if (this.needsPeerSync) {
      this.needsPeerSync = false;
      this.log.info({ peer, items: this.items }, 'synced from a peer after damaged data; ready');
    }
    this.statusChanged();
  }

  private statusChanged(): void {
    const [held, serving] = this.shardLists();
    this.gossip.announceShards(held, serving);
    const key = `${this.ready}|${this.gossip.members().length}|${held.length}|${serving.length}|${this.membership.placed().length}|${this.membership.removed().length}`;
    if (key !== this.lastStatusKey) {
      this.lastStatusKey = key;
      this.sessions.pushStatus();
    }
  }
}

/** Shards in DATA_DIR/shards/<id>/, one log store each; COMPACT_BYTES is shared among them. */
function dirStorage(dirs: ShardDirs, config: Readonly<CounterConfig>, log: Logger, metrics: CounterMetrics | null): ShardStorage {
  const compactBytes = Math.max(MIN_SHARD_COMPACT_BYTES, Math.floor(config.compactBytes / config.shards));
  // shards reach their thresholds together (they take the same writes): one compaction at a time
  const compactions = new CompactionQueue(1);
  return {
    held: async () => {
      await dirs.removeLeftovers();
      return dirs.held();
    },
    open: async (shard) => {
      const catchingUp = await dirs.catchingUp(shard);
      const { store, recovered } = await LogStore.open({ dir: dirs.dir(shard), compactBytes, log: log.child({ shard }), observer: metrics?.storage, compactions });
      return { log: store, recovered, catchingUp };
    },
    setCatchingUp: (shard, on) => dirs.setCatchingUp(shard, on),
    remove: (shard) => dirs.remove(shard),
    members: { load: () => dirs.loadMembers(), save: (state) => dirs.saveMembers(state) },
    journal: async () => {
      const { store, recovered } = await LogStore.open({ dir: join(dirs.root, JOURNAL_DIR), compactBytes: JOURNAL_TRIM_BYTES, log: log.child({ component: 'journal' }), observer: metrics?.storage });
      return { log: store, recovered };
    },
    legacy: async () => {
      if (!dirs.legacy) return null;
      const { store, recovered } = await LogStore.open({ dir: dirs.root, compactBytes: config.compactBytes, log, observer: undefined });
      await store.close();
      const { snapshot, updates } = recovered;
      return { updates: snapshot ? [snapshot, ...updates] : updates, done: () => dirs.removeLegacy() };
    },
  };
}

/** The journal's directory in DATA_DIR (see journal.ts). */
const JOURNAL_DIR = 'journal';

/** A shard's logs are compacted once past COMPACT_BYTES / SHARDS, but never below this. */
const MIN_SHARD_COMPACT_BYTES = 64 * 1024;
