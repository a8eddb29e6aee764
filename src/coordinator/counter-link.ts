/**
 * The coordinator's persistent WebSocket to one counter: requests with ids, replies matched back,
 * timeouts, the counter's last Status, and the counts of the tenants it watches on the counter.
 */
import type { Logger } from 'pino';
import { Dialer } from '../protocol/dialer.ts';
import { MeshSocket, type Receiver } from '../protocol/mesh-socket.ts';
import { MessageType, NOT_WATCHED, ProtocolError, ReplyStatus, writeAdd, writeHello, writeRemove, writeTally, writeTallyBatch, writeUnwatch, MAX_TALLY_BATCH, writeWatch, type Item, type Message, type Status } from '../protocol/messages.ts';
import { shardOf } from '../shared/placement.ts';
import type { Transport, Wire } from '../protocol/wire.ts';
import type { Clock, TimerHandle } from '../shared/clock.ts';
import type { CoordinatorConfig } from '../shared/config.ts';

/** How a coordinator reaches counters: WebSockets and the system clock in production, the in-memory mesh in tests. */
export interface LinkRuntime {
  transport: Transport;
  clock: Clock;
}

/** The counter could not do it (down, not ready, disk failing, timed out): another counter may. */
export class CounterUnavailableError extends Error {
  override name = 'CounterUnavailableError';
}
/** The counter refused the request as malformed: another counter would too. */
export class CounterRejectedError extends Error {
  override name = 'CounterRejectedError';
}
/**
 * The counter stored the items, but fewer counters than the Add asked for (`acknowledged`, that
 * one included) confirmed having them on disk in time. Another counter would wait for the same peers.
 */
export class TooFewAcksError extends Error {
  override name = 'TooFewAcksError';
  constructor(
    readonly acknowledged: number,
    message: string,
  ) {
    super(message);
  }
}

/** Adds of at most this many items are coalesced; a coalesced frame carries at most this many too. */
const COALESCE_MAX_ITEMS = 4096;
/**
 * Coalesced Add frames awaiting their reply, per link and acknowledgment level. Adds arriving
 * while the limit is reached wait and leave together when a reply frees a slot: under load the
 * batch grows with the counter's round trip (fsync included), so each transaction, fsync and
 * gossip message carries many items instead of a few. The counter's group commit merges the
 * frames in flight anyway; 8 rather than 2 keeps requests from queueing here behind a slow fsync
 * (bench --ab, 2026-12-02: the same post_single throughput, p99 24 ms with 8 against 31 ms with 2).
 */
const MAX_ADDS_IN_FLIGHT = 8;

/**
 * The adds of one acknowledgment level: their own queue and in-flight slots, so quorum writes
 * waiting for a counter's peers never hold back, nor share a frame with, plain writes.
 */
interface AddLane {
  readonly acks: number;
  queue: QueuedAdd[];
  inFlight: number;
  flushScheduled: boolean;
}

interface QueuedAdd {
  items: readonly Item[];
  /** An upper bound of the items' size in an Add frame. */
  bytes: number;
  resolve: (n: number) => void;
  reject: (err: Error) => void;
}

/**
 * Tally frames (quorum reads) per link whose answers are awaited; the reads arriving meanwhile
 * wait and leave together, corked into one write, once the batch in flight is answered. On this
 * kind of machine a socket write costs more than everything else a read does (bench profiles,
 * 2026-12-03: writev was 40% of the coordinator's busy time under get_count_quorum), so one
 * write per batch instead of one per event-loop turn is what makes quorum reads cheap.
 */
const MAX_TALLY_BATCHES_IN_FLIGHT = 1;

interface QueuedTally {
  tenant: string;
  resolve: (t: Tally) => void;
  reject: (err: Error) => void;
}

/**
 * Tenants whose counts a link keeps (pushed by the counter as they change). Past it the oldest
 * is unwatched; well below the counter's per-session limit (MAX_WATCHED_PER_SESSION).
 */
export const MAX_WATCHED_TENANTS = 16_384;

/** A counter's count of a tenant with the digest of the tenant's ids (see `IdIndex.digest`). */
export interface Tally {
  count: number;
  digest: number;
}

interface Pending {
  /** `digest` is set for Tallied answers only. */
  resolve: (value: number, digest: number) => void;
  reject: (err: Error) => void;
  deadline: number;
  /** Set for a Watch: the tenant whose count the answer starts keeping. */
  watch?: string;
  /** Set for a TallyBatch: the reads it answers, in its order (`reject` fails them all), and what to call once each has settled. */
  batch?: readonly QueuedTally[];
  settled?: () => void;
}

/** Two length prefixes and at most 3 UTF-8 bytes per UTF-16 unit: never less than the frame needs. */
function frameBytesAtMost(items: readonly Item[]): number {
  let n = 0;
  for (const it of items) n += 6 + 3 * (it.id.length + it.tenant.length);
  return n;
}

export class CounterLink implements Receiver {
  status: Status | null = null;
  lastHeardAt: number | null = null;
  private sock: MeshSocket | null = null;
  private readonly dialer: Dialer;
  private readonly pending = new Map<number, Pending>();
  private readonly sweep: TimerHandle;
  private readonly clock: Clock;
  private nextReqId = 1;
  /**
   * Counts of watched tenants, as the counter last pushed them (oldest watch first). Valid while
   * this socket is: cleared when it closes, since the counter's watches end with it.
   */
  private readonly watched = new Map<string, number>();
  /** Watches sent and not answered yet, so concurrent reads of a tenant share one. */
  private readonly watching = new Map<string, Promise<number>>();
  /** By the number of acknowledgments asked for. */
  private readonly lanes = new Map<number, AddLane>();
  /** Quorum reads waiting for the batch in flight to be answered (see MAX_TALLY_BATCHES_IN_FLIGHT). */
  private tallyQueue: QueuedTally[] = [];
  private tallyBatchesInFlight = 0;
  private tallyFlushScheduled = false;
  /** Set when a request timed out; cleared by the next message. A blackholed counter gets no traffic meanwhile. */
  private suspect = false;

  constructor(
    readonly address: string,
    private readonly config: Readonly<CoordinatorConfig>,
    private readonly log: Logger,
    private readonly onStatus: (link: CounterLink) => void,
    runtime: LinkRuntime,
  ) {
    this.clock = runtime.clock;
    this.dialer = new Dialer({
      address,
      transport: runtime.transport,
      clock: runtime.clock,
      reconnectMaxMs: config.reconnectMaxMs,
      log,
      onOpen: (wire) => this.attach(wire),
    });
    this.dialer.start();
    this.sweep = this.clock.setInterval(() => this.expire(), Math.max(10, Math.floor(config.counterTimeoutMs / 10)));
  }

  get id(): string {
    return this.status?.id ?? this.address;
  }

  /** Connected and heard from within two heartbeats. */
  get reachable(): boolean {
    return this.sock?.alive === true && !this.suspect;
  }

  /** Reachable and ready to take requests. */
  get usable(): boolean {
    return this.reachable && this.status?.ready === true;
  }

  /**
   * Adds arriving together travel as one Add (one frame, one reply, one transaction on the
   * counter); each caller's promise settles with the shared reply, with the number of items.
   * With `acks` > 1 the counter answers once `acks` counters (itself and its peers) have the
   * items on disk, or rejects with TooFewAcksError after waiting half of COUNTER_TIMEOUT_MS for
   * them: so its answer, even a short one, comes before this link gives up on it.
   */
  add(items: readonly Item[], acks = 1): Promise<number> {
    // big batches need no company, and must not add up past the counters' frame limit
    if (items.length > COALESCE_MAX_ITEMS) return this.request((reqId) => this.addFrame(reqId, items, acks));
    let lane = this.lanes.get(acks);
    if (!lane) {
      lane = { acks, queue: [], inFlight: 0, flushScheduled: false };
      this.lanes.set(acks, lane);
    }
    const into = lane;
    return new Promise((resolve, reject) => {
      into.queue.push({ items, bytes: frameBytesAtMost(items), resolve, reject });
      this.scheduleFlush(into);
    });
  }

  private addFrame(reqId: number, items: readonly Item[], acks: number): Uint8Array {
    return writeAdd(reqId, items, acks, Math.floor(this.config.counterTimeoutMs / 2));
  }

  private scheduleFlush(lane: AddLane): void {
    if (lane.flushScheduled || lane.queue.length === 0 || lane.inFlight >= MAX_ADDS_IN_FLIGHT) return;
    lane.flushScheduled = true;
    // the rest of this turn's requests join the frame
    this.clock.setImmediate(() => this.flushAdds(lane));
  }

  private flushAdds(lane: AddLane): void {
    lane.flushScheduled = false;
    if (this.suspect) {
      // a counter that just timed out gets no new writes: they fail over now instead of waiting again
      const queue = lane.queue;
      lane.queue = [];
      const err = new CounterUnavailableError(`counter ${this.id} did not answer in time`);
      for (const q of queue) q.reject(err);
      return;
    }
    while (lane.queue.length > 0 && lane.inFlight < MAX_ADDS_IN_FLIGHT) {
      const batch = this.takeBatch(lane);
      const items = batch.length === 1 ? batch[0]!.items : batch.flatMap((q) => q.items);
      lane.inFlight++;
      this.request((reqId) => this.addFrame(reqId, items, lane.acks), true).then(
        () => {
          for (const q of batch) q.resolve(q.items.length);
        },
        (err: Error) => {
          for (const q of batch) q.reject(err);
        },
      ).finally(() => {
        lane.inFlight--;
        this.scheduleFlush(lane);
      });
    }
  }

  /**
   * The queued adds that fit in one frame, oldest first. BODY_LIMIT fits in the counters'
   * MAX_MESSAGE_BYTES (checked at start), so a frame no bigger than one full request does too.
   */
  private takeBatch(lane: AddLane): QueuedAdd[] {
    let n = 0;
    let items = 0;
    let bytes = 0;
    for (const q of lane.queue) {
      if (n > 0 && (items + q.items.length > COALESCE_MAX_ITEMS || bytes + q.bytes > this.config.bodyLimit)) break;
      items += q.items.length;
      bytes += q.bytes;
      n++;
    }
    return lane.queue.splice(0, n);
  }

  /**
   * The tenant's count as the counter last pushed it, when this link watches the tenant: as fresh
   * as a Count's answer (see CountWatches), without the round trip. Undefined otherwise.
   */
  knownCount(tenant: string): number | undefined {
    return this.watched.get(tenant);
  }

  /** Asks the counter for the tenant's count and to push it from now on (a Watch). */
  count(tenant: string): Promise<number> {
    const known = this.watched.get(tenant);
    if (known !== undefined) return Promise.resolve(known);
    let p = this.watching.get(tenant);
    if (!p) {
      p = this.request((reqId) => writeWatch(reqId, tenant), false, tenant);
      this.watching.set(tenant, p);
      const done = () => this.watching.delete(tenant);
      p.then(done, done);
    }
    return p;
  }

  /** Keeps the count the counter answered a Watch with, unwatching the oldest tenant when full. */
  private startWatching(tenant: string, count: number): void {
    if (!this.watched.has(tenant) && this.watched.size >= MAX_WATCHED_TENANTS) {
      const oldest = this.watched.keys().next().value as string;
      this.watched.delete(oldest);
      this.sock?.send(writeUnwatch([oldest]));
    }
    this.watched.set(tenant, count);
  }

  /**
   * Count and digest of a tenant, after the counter pulled from the peers with ids `pullFrom`
   * (read repair, sent at once). Plain tallies are batched: see MAX_TALLY_BATCHES_IN_FLIGHT.
   */
  tally(tenant: string, pullFrom: readonly string[] = []): Promise<Tally> {
    if (pullFrom.length > 0) return this.sendTally(tenant, pullFrom, true);
    if (!this.sock?.open) return Promise.reject(new CounterUnavailableError(`counter ${this.address} is not connected`));
    return new Promise<Tally>((resolve, reject) => {
      this.tallyQueue.push({ tenant, resolve, reject });
      this.scheduleTallies();
    });
  }

  private scheduleTallies(): void {
    if (this.tallyFlushScheduled || this.tallyQueue.length === 0 || this.tallyBatchesInFlight >= MAX_TALLY_BATCHES_IN_FLIGHT) return;
    this.tallyFlushScheduled = true;
    // the rest of this turn's reads join the batch
    this.clock.setImmediate(() => this.flushTallies());
  }

  private flushTallies(): void {
    this.tallyFlushScheduled = false;
    const batch = this.tallyQueue;
    this.tallyQueue = [];
    if (batch.length === 0) return;
    if (this.suspect) {
      // the batch before timed out: these reads ask another replica now instead of waiting again
      const err = new CounterUnavailableError(`counter ${this.id} did not answer in time`);
      for (const q of batch) q.reject(err);
      return;
    }
    this.tallyBatchesInFlight++;
    let answered: Promise<unknown>[];
    if (this.status?.tallyBatch === true && batch.length > 1) {
      // one frame for the whole batch: a frame per tally cost the coordinator a third of its CPU
      // per quorum read (WebSocket framing and masking, one pending request each)
      answered = [];
      for (let i = 0; i < batch.length; i += MAX_TALLY_BATCH) {
        answered.push(this.sendTallyBatch(batch.slice(i, i + MAX_TALLY_BATCH), i + MAX_TALLY_BATCH >= batch.length));
      }
    } else {
      // a counter of an earlier version: one Tally each, corked, the last one flushing them all in one write
      answered = batch.map((q, i) => this.sendTally(q.tenant, [], i === batch.length - 1).then(q.resolve, q.reject));
    }
    void Promise.all(answered).then(() => {
      this.tallyBatchesInFlight--;
      this.scheduleTallies();
    });
  }

  /** Sends one TallyBatch; resolves (never rejects) once each of its reads has settled. */
  private sendTallyBatch(batch: readonly QueuedTally[], now: boolean): Promise<void> {
    const sock = this.sock;
    if (!sock?.open) {
      const err = new CounterUnavailableError(`counter ${this.address} is not connected`);
      for (const q of batch) q.reject(err);
      return Promise.resolve();
    }
    const reqId = this.takeReqId();
    return new Promise<void>((settled) => {
      this.pending.set(reqId, {
        // a batch is answered by TalliedBatch (see onMessage), never with a bare value
        resolve: () => {
          for (const q of batch) q.reject(new ProtocolError('a tally batch answered with a single value'));
          settled();
        },
        reject: (err) => {
          for (const q of batch) q.reject(err);
          settled();
        },
        deadline: this.clock.now() + this.config.counterTimeoutMs,
        batch,
        settled,
      });
      const frame = writeTallyBatch(reqId, batch.map((q) => q.tenant));
      if (now) sock.sendNow(frame);
      else sock.send(frame);
    });
  }

  private sendTally(tenant: string, pullFrom: readonly string[], now: boolean): Promise<Tally> {
    const sock = this.sock;
    if (!sock?.open) return Promise.reject(new CounterUnavailableError(`counter ${this.address} is not connected`));
    const reqId = this.takeReqId();
    return new Promise<Tally>((resolve, reject) => {
      this.pending.set(reqId, { resolve: (count, digest) => resolve({ count, digest }), reject, deadline: this.clock.now() + this.config.counterTimeoutMs });
      const frame = writeTally(reqId, tenant, pullFrom);
      if (now) sock.sendNow(frame);
      else sock.send(frame);
    });
  }

  /**
   * Asks the counter to remove the member `nodeId` from the mesh for good. Resolves once the
   * removal is in the counter's member list on disk; rejects with CounterRejectedError when the
   * counter refuses it (not a member, or the last one).
   */
  remove(nodeId: string): Promise<void> {
    return this.request((reqId) => writeRemove(reqId, nodeId)).then(() => undefined);
  }

  close(): void {
    this.clock.clear(this.sweep);
    this.dialer.close();
    this.sock?.close();
    this.failAll('coordinator shutting down');
  }

  private request(frame: (reqId: number) => Uint8Array, now = false, watch?: string): Promise<number> {
    const sock = this.sock;
    if (!sock?.open) return Promise.reject(new CounterUnavailableError(`counter ${this.address} is not connected`));
    const reqId = this.takeReqId();
    return new Promise<number>((resolve, reject) => {
      this.pending.set(reqId, { resolve, reject, deadline: this.clock.now() + this.config.counterTimeoutMs, watch });
      if (now) sock.sendNow(frame(reqId));
      else sock.send(frame(reqId));
    });
  }

  private takeReqId(): number {
    const reqId = this.nextReqId++;
    if (this.nextReqId > 0x7fffffff) this.nextReqId = 1;
    return reqId;
  }

  /** One sweep timer instead of a timer per request (measurable at tens of thousands of reads/s). */
  private expire(): void {
    const now = this.clock.now();
    let expired = 0;
    for (const [reqId, p] of this.pending) {
      if (p.deadline > now) continue;
      this.pending.delete(reqId);
      expired++;
      p.reject(new CounterUnavailableError(`counter ${this.id} did not answer within ${this.config.counterTimeoutMs} ms`));
    }
    if (expired > 0) {
      this.suspect = true;
      this.log.warn({ counter: this.id, timeoutMs: this.config.counterTimeoutMs, expired }, 'counter did not answer in time; failing over');
    }
  }

  private attach(wire: Wire): void {
    const sock = new MeshSocket(wire, this.address, this, { heartbeatMs: this.config.heartbeatMs, log: this.log, clock: this.clock });
    this.sock = sock;
    this.watched.clear();
    this.suspect = false;
    sock.send(writeHello({ role: 'coordinator', nodeId: this.config.id, address: '' }));
  }

  onClose(sock: MeshSocket): void {
    if (this.sock === sock) {
      this.sock = null;
      // the counter's watches ended with the connection: these counts would go stale
      this.watched.clear();
    }
    this.failAll(`connection to counter ${this.id} closed`);
    this.onStatus(this);
  }

  onMessage(msg: Message): void {
    this.lastHeardAt = this.clock.now();
    this.suspect = false;
    switch (msg.type) {
      case MessageType.Hello:
        return;
      case MessageType.Status: {
        const wasReady = this.status?.ready;
        const before = this.status;
        this.status = msg.status;
        this.forgetUnserved(before, msg.status);
        if (wasReady !== msg.status.ready) this.log.info({ counter: msg.status.id, ready: msg.status.ready }, 'counter readiness changed');
        this.onStatus(this);
        return;
      }
      case MessageType.Reply: {
        const p = this.pending.get(msg.reqId);
        if (!p) return; // answered after its timeout
        this.pending.delete(msg.reqId);
        if (p.watch !== undefined && msg.status === ReplyStatus.Ok && msg.message !== NOT_WATCHED) this.startWatching(p.watch, msg.value);
        // no digest in a Reply: NaN equals nothing, so a quorum read would not take it for agreement
        if (msg.status === ReplyStatus.Ok) p.resolve(msg.value, Number.NaN);
        else if (msg.status === ReplyStatus.BadRequest) p.reject(new CounterRejectedError(msg.message));
        else if (msg.status === ReplyStatus.TooFewAcks) p.reject(new TooFewAcksError(msg.value, msg.message));
        else p.reject(new CounterUnavailableError(`counter ${this.id}: ${msg.message}`));
        return;
      }
      case MessageType.Counts:
        for (const { tenant, count } of msg.counts) {
          // a tenant unwatched a moment ago may still be pushed once: only watched ones are kept
          if (this.watched.has(tenant)) this.watched.set(tenant, count);
        }
        return;
      case MessageType.Tallied: {
        const p = this.pending.get(msg.reqId);
        if (!p) return;
        this.pending.delete(msg.reqId);
        p.resolve(msg.count, msg.digest);
        return;
      }
      case MessageType.TalliedBatch: {
        const p = this.pending.get(msg.reqId);
        if (!p) return;
        if (!p.batch || p.batch.length !== msg.tallies.length) {
          throw new ProtocolError(`tallied batch of ${msg.tallies.length} answers for a request of ${p.batch?.length ?? 'no'} tallies`);
        }
        this.pending.delete(msg.reqId);
        for (const [i, t] of msg.tallies.entries()) {
          const q = p.batch[i]!;
          if ('refused' in t) q.reject(new CounterUnavailableError(`counter ${this.id}: ${t.refused}`));
          else q.resolve(t);
        }
        p.settled?.();
        return;
      }
      default:
        throw new ProtocolError(`message type ${msg.type} is not valid from a counter`);
    }
  }

  /**
   * Drops the watched counts of tenants whose shard the counter no longer serves: it may stop
   * pushing them, and a count kept here would go stale unnoticed should the shard come back.
   */
  private forgetUnserved(before: Status | null, now: Status): void {
    if (this.watched.size === 0 || now.serving === undefined || now.shards === undefined) return;
    const was = before?.serving;
    if (was !== undefined && was.length === now.serving.length && was.every((s, i) => s === now.serving![i])) return;
    const serving = new Set(now.serving);
    const dropped: string[] = [];
    for (const tenant of this.watched.keys()) {
      if (!serving.has(shardOf(tenant, now.shards))) dropped.push(tenant);
    }
    if (dropped.length === 0) return;
    for (const tenant of dropped) this.watched.delete(tenant);
    this.sock?.send(writeUnwatch(dropped));
  }

  private failAll(reason: string): void {
    for (const p of this.pending.values()) {
      p.reject(new CounterUnavailableError(reason));
    }
    this.pending.clear();
    for (const q of this.tallyQueue.splice(0)) q.reject(new CounterUnavailableError(reason));
  }
}
