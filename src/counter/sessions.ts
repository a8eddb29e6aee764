/**
 * Coordinator connections on a counter: Add, Count, Tally and Watch requests, Status pushed on
 * change and every heartbeat so the coordinator knows who is ready and what the mesh looks like,
 * and the counts of watched tenants pushed as they change (see CountWatches).
 */
import type { Logger } from 'pino';
import { CloseCode, MessageType, NOT_WATCHED, ProtocolError, ReplyStatus, writeHello, writeReply, writeStatus, writeTallied, writeTalliedBatch, type BatchTally, type Message, type Status } from '../protocol/messages.ts';
import { CountWatches } from './count-watches.ts';
import type { MeshSocket } from '../protocol/mesh-socket.ts';
import type { Clock, TimerHandle } from '../shared/clock.ts';
import { isValidItem } from './records.ts';
import { MembershipError } from './membership.ts';
import type { Item } from '../protocol/messages.ts';

/** Replies queued for a coordinator that does not read them; past this the connection is closed. */
const MAX_UNREAD_REPLY_BYTES = 16 * 1024 * 1024;

export interface CounterApi {
  readonly id: string;
  readonly address: string;
  readonly ready: boolean;
  /** Resolves with the number of counters, this one included, that have the items on disk (see `Counter.add`). */
  add(items: Item[], acks?: number, ackWaitMs?: number): Promise<number>;
  /** Peers linked to this counter now. */
  connectedPeers(): number;
  count(tenant: string): number;
  /** The tenant's set digest: equal counts and digests on two counters mean the same ids. */
  digest(tenant: string): number;
  /** Resolves once what the peer holds and this counter lacks is applied (read repair). */
  pull(peerId: string, tenant: string): Promise<void>;
  status(): Status;
  /** Null when this counter serves the tenant's shard (`write`: and takes writes for it); else why not (the coordinator tries another). */
  refusal(tenant: string, write?: boolean): string | null;
  /** Removes a member for good; resolves once on disk, throws MembershipError when it cannot be. */
  remove(id: string): Promise<void>;
}

export class CoordinatorSessions {
  private readonly socks = new Set<MeshSocket>();
  private readonly timer: TimerHandle;
  /** Adds taken whose reply is not sent yet: a stopping counter answers them before it closes. */
  private unanswered = 0;
  private readonly answeredWaiters = new Set<() => void>();
  /** Feed it every tenant whose count grew (GSet.onCounted). */
  readonly watches: CountWatches;

  constructor(
    private readonly counter: CounterApi,
    heartbeatMs: number,
    private readonly log: Logger,
    private readonly clock: Clock,
  ) {
    this.timer = clock.setInterval(() => this.pushStatus(), heartbeatMs);
    this.watches = new CountWatches((tenant) => counter.count(tenant), clock);
  }

  /** Takes over an accepted socket whose first message was a coordinator Hello. */
  adopt(sock: MeshSocket): void {
    sock.handOff({
      onMessage: (msg) => this.onMessage(sock, msg),
      onClose: () => {
        this.socks.delete(sock);
        this.watches.drop(sock);
      },
    });
    this.socks.add(sock);
    sock.send(writeHello({ role: 'peer', nodeId: this.counter.id, address: this.counter.address }));
    sock.send(writeStatus(this.counter.status()));
    this.log.debug({ remote: sock.remote }, 'coordinator connected');
  }

  pushStatus(): void {
    if (this.socks.size === 0) return;
    const frame = writeStatus(this.counter.status());
    for (const s of this.socks) s.send(frame);
  }

  /** Adds taken and not answered yet. */
  get pending(): number {
    return this.unanswered;
  }

  /**
   * Resolves once every Add taken so far has been answered, or after `timeoutMs`. New Adds are
   * refused meanwhile only if the counter reports not ready, which a stopping counter does.
   */
  whenAnswered(timeoutMs: number): Promise<void> {
    if (this.unanswered === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this.clock.clear(timer);
        this.answeredWaiters.delete(done);
        resolve();
      };
      const timer = this.clock.setTimeout(done, timeoutMs);
      this.answeredWaiters.add(done);
    });
  }

  private answered(): void {
    if (--this.unanswered === 0) for (const done of [...this.answeredWaiters]) done();
  }

  close(): void {
    this.clock.clear(this.timer);
    for (const s of this.socks) s.close(CloseCode.GoingAway, 'shutting down');
  }

  private onMessage(sock: MeshSocket, msg: Message): void {
    if (sock.buffered > MAX_UNREAD_REPLY_BYTES) {
      this.log.warn({ remote: sock.remote, buffered: sock.buffered }, 'coordinator does not read its replies; closing');
      sock.close(CloseCode.ProtocolError, 'replies not read');
      return;
    }
    switch (msg.type) {
      case MessageType.Add: {
        const { reqId, items, acks, ackWaitMs } = msg;
        if (!this.counter.ready) {
          sock.send(writeReply(reqId, ReplyStatus.Unavailable, 0, 'counter is not ready'));
          return;
        }
        const bad = items.findIndex((it) => !isValidItem(it));
        if (bad >= 0 || items.length === 0) {
          sock.send(writeReply(reqId, ReplyStatus.BadRequest, 0, bad >= 0 ? `item ${bad} is not valid` : 'no items'));
          return;
        }
        // one item of a shard not served here refuses the whole Add: the coordinator sends it elsewhere
        for (const it of items) {
          const refusal = this.counter.refusal(it.tenant, true);
          if (refusal) {
            sock.send(writeReply(reqId, ReplyStatus.Unavailable, 0, refusal));
            return;
          }
        }
        // a counter that cannot reach enough peers stores nothing: the coordinator tries the next replica
        const peers = this.counter.connectedPeers();
        if (peers < acks - 1) {
          sock.send(writeReply(reqId, ReplyStatus.Unavailable, 0, `counter ${this.counter.id} is linked to ${peers} peers, and ${acks} acknowledgments need ${acks - 1}`));
          return;
        }
        this.unanswered++;
        this.counter.add(items, acks, ackWaitMs).then(
          // the coordinator holds requests until this acknowledgment: no waiting for the turn's end
          (counters) => {
            // the counts these items changed reach the coordinator before the acknowledgment
            this.watches.flushBefore(sock);
            if (counters >= acks) sock.sendNow(writeReply(reqId, ReplyStatus.Ok, items.length));
            else sock.sendNow(writeReply(reqId, ReplyStatus.TooFewAcks, counters, `counter ${this.counter.id} stored the items, but only ${counters - 1} of its ${peers} peers confirmed having them on disk within ${ackWaitMs} ms`));
            this.answered();
          },
          (err: Error) => {
            sock.send(writeReply(reqId, ReplyStatus.Unavailable, 0, err.message));
            this.answered();
          },
        );
        return;
      }
      case MessageType.Count:
      case MessageType.Watch: {
        if (!this.counter.ready) {
          sock.send(writeReply(msg.reqId, ReplyStatus.Unavailable, 0, 'counter is not ready'));
          return;
        }
        const refusal = this.counter.refusal(msg.tenant);
        if (refusal) {
          sock.send(writeReply(msg.reqId, ReplyStatus.Unavailable, 0, refusal));
          return;
        }
        // a session over its watch limit gets the count, marked as not watched
        if (msg.type === MessageType.Watch && !this.watches.watch(sock, msg.tenant)) {
          sock.send(writeReply(msg.reqId, ReplyStatus.Ok, this.counter.count(msg.tenant), NOT_WATCHED));
          return;
        }
        sock.send(writeReply(msg.reqId, ReplyStatus.Ok, this.counter.count(msg.tenant)));
        return;
      }
      case MessageType.Unwatch:
        this.watches.unwatch(sock, msg.tenants);
        return;
      case MessageType.Tally: {
        const { reqId, tenant, pullFrom } = msg;
        if (!this.counter.ready) {
          sock.send(writeReply(reqId, ReplyStatus.Unavailable, 0, 'counter is not ready'));
          return;
        }
        const refusal = this.counter.refusal(tenant);
        if (refusal) {
          sock.send(writeReply(reqId, ReplyStatus.Unavailable, 0, refusal));
          return;
        }
        const tally = () => sock.send(writeTallied(reqId, this.counter.count(tenant), this.counter.digest(tenant)));
        if (pullFrom.length === 0) {
          tally();
          return;
        }
        Promise.all(pullFrom.map((id) => this.counter.pull(id, tenant))).then(tally, (err: Error) => {
          this.log.debug({ err: err.message, tenant }, 'read repair could not pull from a peer');
          sock.send(writeReply(reqId, ReplyStatus.Unavailable, 0, err.message));
        });
        return;
      }
      case MessageType.TallyBatch: {
        const { reqId, tenants } = msg;
        if (!this.counter.ready) {
          sock.send(writeReply(reqId, ReplyStatus.Unavailable, 0, 'counter is not ready'));
          return;
        }
        const tallies: BatchTally[] = tenants.map((tenant) => {
          const refusal = this.counter.refusal(tenant);
          return refusal ? { refused: refusal } : { count: this.counter.count(tenant), digest: this.counter.digest(tenant) };
        });
        sock.send(writeTalliedBatch(reqId, tallies));
        return;
      }
      case MessageType.Remove: {
        const { reqId, nodeId } = msg;
        let removed: Promise<void>;
        try {
          removed = this.counter.remove(nodeId);
        } catch (err) {
          if (!(err instanceof MembershipError)) throw err;
          sock.send(writeReply(reqId, ReplyStatus.BadRequest, 0, err.message));
          return;
        }
        removed.then(
          () => sock.send(writeReply(reqId, ReplyStatus.Ok, 1)),
          (err: Error) => sock.send(writeReply(reqId, ReplyStatus.Unavailable, 0, `could not store the removal: ${err.message}`)),
        );
        return;
      }
      case MessageType.Hello:
        return; // a repeated hello changes nothing
      default:
        throw new ProtocolError(`message type ${msg.type} is not valid from a coordinator`);
    }
  }
}
