/**
 * One connection of the mesh, either side: heartbeats, safe decoding, typed sends.
 *
 * A socket has two stages and hands off once: until the other side's Hello, its receiver is the
 * handshake (who is this?); the handshake then gives the socket to its owner for good (a peer
 * session, a coordinator session, a counter link) with `handOff`. A peer silent for two heartbeats
 * is terminated, so a blackholed link is noticed even though TCP stays up.
 *
 * Whose fault is an exception: bytes that do not decode, and a ProtocolError thrown by a receiver
 * (a message not allowed here), are the peer's: logged once with its address, closed with 4400.
 * Anything else a receiver throws is a bug of ours: logged at error level with its stack, closed
 * with 1011, never reported as the peer's doing.
 */
import type { Logger } from 'pino';
import type { Clock, TimerHandle } from '../shared/clock.ts';
import { CloseCode, ProtocolError, readMessage, type Message } from './messages.ts';
import type { Wire } from './wire.ts';

/** Whoever the socket's messages go to at a stage. */
export interface Receiver {
  /** One decoded message. Throw ProtocolError for a message the peer should not have sent. */
  onMessage(msg: Message, sock: MeshSocket): void;
  onClose(sock: MeshSocket, code: number, reason: string): void;
}

export interface MeshSocketOptions {
  heartbeatMs: number;
  log: Logger;
  clock: Clock;
}

/** Bytes and messages through a socket, both ways. */
export interface Traffic {
  bytesIn: number;
  bytesOut: number;
  messagesIn: number;
  messagesOut: number;
}

export class MeshSocket {
  /** This socket's tally; an owner may swap in one shared by all sockets of a peer (the metrics do). */
  traffic: Traffic = { bytesIn: 0, bytesOut: 0, messagesIn: 0, messagesOut: 0 };
  private heard: number;
  private receiver: Receiver;
  private handedOff = false;
  private readonly timer: TimerHandle;
  private closeTimer: TimerHandle | null = null;
  private closed = false;
  private corked = false;

  constructor(
    private readonly wire: Wire,
    readonly remote: string,
    first: Receiver,
    private readonly opts: MeshSocketOptions,
  ) {
    this.receiver = first;
    this.heard = opts.clock.now();
    wire.bind({
      message: (data, binary) => this.receive(data, binary),
      heard: () => {
        this.heard = this.opts.clock.now();
      },
      closed: (code, reason) => this.finish(code, reason),
    });
    this.timer = opts.clock.setInterval(() => this.beat(), opts.heartbeatMs);
  }

  /** Gives the socket to the owner of its second stage; allowed once. */
  handOff(next: Receiver): void {
    if (this.handedOff) throw new Error('a mesh socket is handed off once');
    this.handedOff = true;
    this.receiver = next;
  }

  get lastHeardAt(): number {
    return this.heard;
  }

  get open(): boolean {
    return !this.closed && this.wire.open;
  }

  /** Heard from within two heartbeats. */
  get alive(): boolean {
    return this.open && this.opts.clock.now() - this.heard <= 2 * this.opts.heartbeatMs;
  }

  send(frame: Uint8Array): void {
    if (!this.open) return;
    if (!this.corked) {
      // frames sent during one event-loop turn (many replies, many requests) leave in one write
      this.corked = true;
      this.wire.cork();
      this.opts.clock.setImmediate(() => {
        if (!this.corked) return;
        this.corked = false;
        this.wire.uncork();
      });
    }
    this.wire.send(frame);
    this.traffic.bytesOut += frame.length;
    this.traffic.messagesOut++;
  }

  /**
   * Sends the frame, and whatever this turn corked, right away: for a frame someone is waiting on
   * (a flushed batch, an acknowledgment). Corked, it would wait for the check phase, behind every
   * other event of this poll phase; sent from a setImmediate callback, behind the next poll phase.
   */
  sendNow(frame: Uint8Array): void {
    if (!this.open) return;
    this.wire.send(frame);
    this.traffic.bytesOut += frame.length;
    this.traffic.messagesOut++;
    if (this.corked) {
      this.corked = false;
      this.wire.uncork();
    }
  }

  /** Bytes queued but not yet sent: lets senders back off a slow peer. */
  get buffered(): number {
    return this.wire.bufferedBytes;
  }

  close(code: number = CloseCode.Normal, reason = ''): void {
    if (this.closed) return;
    this.wire.close(code, reason);
    // a peer that never answers the close handshake must not pin the connection
    this.closeTimer = this.opts.clock.setTimeout(() => this.wire.terminate(), 1000);
    this.finish(code, reason);
  }

  private receive(data: Uint8Array, binary: boolean): void {
    this.heard = this.opts.clock.now();
    if (this.closed) return;
    this.traffic.bytesIn += data.length;
    this.traffic.messagesIn++;
    let msg: Message;
    try {
      if (!binary) throw new ProtocolError('text frame');
      msg = readMessage(data);
    } catch (err) {
      this.blamePeer(err as Error);
      return;
    }
    try {
      this.receiver.onMessage(msg, this);
    } catch (err) {
      if (err instanceof ProtocolError) {
        this.blamePeer(err);
        return;
      }
      this.opts.log.error({ err, remote: this.remote, type: msg.type }, 'bug: handling a valid message threw; closing the connection');
      this.close(CloseCode.InternalError, 'internal error');
    }
  }

  private blamePeer(err: Error): void {
    this.opts.log.warn({ err: { message: err.message }, remote: this.remote }, 'malformed message from peer; closing connection');
    this.close(CloseCode.ProtocolError, 'malformed message');
  }

  private beat(): void {
    if (this.opts.clock.now() - this.heard > 2 * this.opts.heartbeatMs) {
      this.opts.log.info({ remote: this.remote }, 'peer silent for two heartbeats; dropping connection');
      this.wire.terminate();
      this.finish(CloseCode.GoingAway, 'heartbeat timeout');
      return;
    }
    this.wire.ping();
  }

  private finish(code: number, reason: string): void {
    if (this.closed) {
      // the connection is gone: the close handshake's deadline has nothing left to do
      this.opts.clock.clear(this.closeTimer);
      this.closeTimer = null;
      return;
    }
    this.closed = true;
    this.opts.clock.clear(this.timer);
    this.receiver.onClose(this, code, reason);
  }
}
