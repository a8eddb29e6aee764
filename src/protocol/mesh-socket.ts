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
import { CloseCode, MessageType, ProtocolError, readMessage, writePart, type Message } from './messages.ts';
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
  /**
   * Frames bigger than this leave in parts (Part messages), each within it; the receiver joins
   * them. Set it below the other side's MAX_MESSAGE_BYTES. Absent: frames leave whole.
   */
  maxFrameBytes?: number;
  /** The largest message this side joins from parts (default 2 GiB: a shard's whole state). */
  maxJoinedBytes?: number;
}

/** Bytes a Part message adds around its piece (type, index, count, length). */
const PART_OVERHEAD_BYTES = 32;
const DEFAULT_MAX_JOINED_BYTES = 2 ** 31;

/** The pieces of the message being received in parts (they arrive together and in order). */
interface Joining {
  count: number;
  pieces: Uint8Array[];
  bytes: number;
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
  private joining: Joining | null = null;

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
    if (this.tooBig(frame)) {
      for (const part of this.split(frame)) this.send(part);
      return;
    }
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
    if (this.tooBig(frame)) {
      const parts = this.split(frame);
      for (const part of parts.slice(0, -1)) this.send(part);
      this.sendNow(parts[parts.length - 1]!);
      return;
    }
    this.wire.send(frame);
    this.traffic.bytesOut += frame.length;
    this.traffic.messagesOut++;
    if (this.corked) {
      this.corked = false;
      this.wire.uncork();
    }
  }

  private tooBig(frame: Uint8Array): boolean {
    return this.opts.maxFrameBytes !== undefined && frame.length > this.opts.maxFrameBytes;
  }

  /** The frame cut into Part messages, each within maxFrameBytes; written one after another, so they arrive together. */
  private split(frame: Uint8Array): Uint8Array[] {
    const piece = Math.max(1, this.opts.maxFrameBytes! - PART_OVERHEAD_BYTES);
    const count = Math.ceil(frame.length / piece);
    const parts: Uint8Array[] = [];
    for (let i = 0; i < count; i++) parts.push(writePart(i, count, frame.subarray(i * piece, (i + 1) * piece)));
    return parts;
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
      if (msg.type === MessageType.Part) {
        const whole = this.join(msg);
        if (!whole) return;
        msg = readMessage(whole);
      } else if (this.joining) {
        throw new ProtocolError(`a message arrived between the parts of another (${this.joining.pieces.length} of ${this.joining.count} came)`);
      }
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

  /** Adds a piece; returns the whole message once the last piece came. */
  private join(part: Extract<Message, { type: typeof MessageType.Part }>): Uint8Array | null {
    const j = this.joining ?? { count: part.count, pieces: [], bytes: 0 };
    if (part.count !== j.count || part.index !== j.pieces.length) {
      throw new ProtocolError(`part ${part.index} of ${part.count} after ${j.pieces.length} of ${j.count}`);
    }
    const limit = this.opts.maxJoinedBytes ?? DEFAULT_MAX_JOINED_BYTES;
    j.bytes += part.bytes.length;
    if (j.bytes > limit) throw new ProtocolError(`a message in parts is over ${limit} bytes`);
    j.pieces.push(part.bytes);
    if (j.pieces.length < j.count) {
      this.joining = j;
      return null;
    }
    this.joining = null;
    const whole = new Uint8Array(j.bytes);
    let at = 0;
    for (const p of j.pieces) {
      whole.set(p, at);
      at += p.length;
    }
    return whole;
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
