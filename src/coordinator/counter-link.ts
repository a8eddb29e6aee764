/**
 * The coordinator's persistent WebSocket to one counter: requests with ids, replies matched back,
 * timeouts, and the counter's last Status.
 */
import type WebSocket from 'ws';
import type { Logger } from 'pino';
import { Dialer } from '../protocol/dialer.ts';
import { MeshSocket } from '../protocol/mesh-socket.ts';
import { MessageType, ReplyStatus, writeAdd, writeCount, writeHello, type Item, type Message, type Status } from '../protocol/messages.ts';
import type { CoordinatorConfig } from '../shared/config.ts';

/** The counter could not do it (down, not ready, disk failing, timed out): another counter may. */
export class CounterUnavailableError extends Error {
  override name = 'CounterUnavailableError';
}
/** The counter refused the request as malformed: another counter would too. */
export class CounterRejectedError extends Error {
  override name = 'CounterRejectedError';
}

/** Adds of at most this many items are coalesced per event-loop turn (at most ~1,000 per frame in practice). */
const COALESCE_MAX_ITEMS = 16;

interface Pending {
  resolve: (value: number) => void;
  reject: (err: Error) => void;
  deadline: number;
}

export class CounterLink {
  status: Status | null = null;
  lastHeardAt: number | null = null;
  private sock: MeshSocket | null = null;
  private readonly dialer: Dialer;
  private readonly pending = new Map<number, Pending>();
  private readonly sweep: NodeJS.Timeout;
  private nextReqId = 1;
  private addQueue: { items: readonly Item[]; resolve: (n: number) => void; reject: (err: Error) => void }[] = [];
  /** Set when a request timed out; cleared by the next message. A blackholed counter gets no traffic meanwhile. */
  private suspect = false;

  constructor(
    readonly address: string,
    private readonly config: Readonly<CoordinatorConfig>,
    private readonly log: Logger,
    private readonly onStatus: (link: CounterLink) => void,
  ) {
    this.dialer = new Dialer({
      address,
      secret: config.clusterSecret,
      host: config.host,
      maxPayload: 1024 * 1024,
      reconnectMaxMs: config.reconnectMaxMs,
      log,
      onOpen: (ws) => this.attach(ws),
    });
    this.dialer.start();
    this.sweep = setInterval(() => this.expire(), Math.max(10, Math.floor(config.counterTimeoutMs / 10)));
    this.sweep.unref();
  }

  get id(): string {
    return this.status?.id ?? this.address;
  }

  /** Connected and heard from within two heartbeats. */
  get reachable(): boolean {
    return this.sock !== null && this.sock.alive && !this.suspect;
  }

  /** Reachable and ready to take requests. */
  get usable(): boolean {
    return this.reachable && this.status?.ready === true;
  }

  /**
   * Adds arriving in one event-loop turn travel as one Add (one frame, one reply, one transaction on
   * the counter); each caller's promise settles with the shared reply.
   */
  add(items: readonly Item[]): Promise<number> {
    // big batches need no company, and must not add up past the counters' frame limit
    if (items.length > COALESCE_MAX_ITEMS) return this.request((reqId) => writeAdd(reqId, items));
    return new Promise((resolve, reject) => {
      this.addQueue.push({ items, resolve, reject });
      if (this.addQueue.length === 1) setImmediate(() => this.flushAdds());
    });
  }

  private flushAdds(): void {
    const queue = this.addQueue;
    this.addQueue = [];
    const items = queue.length === 1 ? queue[0]!.items : queue.flatMap((q) => q.items);
    this.request((reqId) => writeAdd(reqId, items)).then(
      () => {
        for (const q of queue) q.resolve(q.items.length);
      },
      (err: Error) => {
        for (const q of queue) q.reject(err);
      },
    );
  }

  count(tenant: string): Promise<number> {
    return this.request((reqId) => writeCount(reqId, tenant));
  }

  close(): void {
    clearInterval(this.sweep);
    this.dialer.close();
    this.sock?.close();
    this.failAll('coordinator shutting down');
  }

  private request(frame: (reqId: number) => Uint8Array): Promise<number> {
    const sock = this.sock;
    if (!sock || !sock.open) return Promise.reject(new CounterUnavailableError(`counter ${this.address} is not connected`));
    const reqId = this.nextReqId++;
    if (this.nextReqId > 0x7fffffff) this.nextReqId = 1;
    return new Promise<number>((resolve, reject) => {
      this.pending.set(reqId, { resolve, reject, deadline: Date.now() + this.config.counterTimeoutMs });
      sock.send(frame(reqId));
    });
  }

  /** One sweep timer instead of a timer per request (measurable at tens of thousands of reads/s). */
  private expire(): void {
    const now = Date.now();
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

  private attach(ws: WebSocket): void {
    const sock = new MeshSocket(ws, this.address, {
      heartbeatMs: this.config.heartbeatMs,
      log: this.log,
      onMessage: (msg) => this.onMessage(msg),
      onClose: () => {
        if (this.sock === sock) this.sock = null;
        this.failAll(`connection to counter ${this.id} closed`);
        this.onStatus(this);
      },
    });
    this.sock = sock;
    this.suspect = false;
    sock.send(writeHello({ role: 'coordinator', nodeId: 'coordinator', address: '' }));
  }

  private onMessage(msg: Message): void {
    this.lastHeardAt = Date.now();
    this.suspect = false;
    switch (msg.type) {
      case MessageType.Hello:
        return;
      case MessageType.Status: {
        const wasReady = this.status?.ready;
        this.status = msg.status;
        if (wasReady !== msg.status.ready) this.log.info({ counter: msg.status.id, ready: msg.status.ready }, 'counter readiness changed');
        this.onStatus(this);
        return;
      }
      case MessageType.Reply: {
        const p = this.pending.get(msg.reqId);
        if (!p) return; // answered after its timeout
        this.pending.delete(msg.reqId);
        if (msg.status === ReplyStatus.Ok) p.resolve(msg.value);
        else if (msg.status === ReplyStatus.BadRequest) p.reject(new CounterRejectedError(msg.message));
        else p.reject(new CounterUnavailableError(`counter ${this.id}: ${msg.message}`));
        return;
      }
      default:
        throw new Error(`message type ${msg.type} is not valid from a counter`);
    }
  }

  private failAll(reason: string): void {
    for (const p of this.pending.values()) {
      p.reject(new CounterUnavailableError(reason));
    }
    this.pending.clear();
  }
}
