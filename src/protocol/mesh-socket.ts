/**
 * One WebSocket of the mesh, either side: heartbeats, safe decoding, typed sends.
 * A peer silent for two heartbeats is terminated, so a blackholed link is noticed even though
 * TCP stays up. Malformed frames are logged once with the peer's address and close the socket.
 */
import type WebSocket from 'ws';
import type { Logger } from 'pino';
import { CloseCode, readMessage, type Message } from './messages.ts';

export interface MeshSocketOptions {
  heartbeatMs: number;
  log: Logger;
  /** Called for each decoded message; a throw closes the socket as a protocol error. */
  onMessage: (msg: Message, sock: MeshSocket) => void;
  onClose: (sock: MeshSocket, code: number, reason: string) => void;
}

/** Bytes and messages through a socket, both ways. */
export interface Traffic {
  bytesIn: number;
  bytesOut: number;
  messagesIn: number;
  messagesOut: number;
}

export class MeshSocket {
  lastHeardAt = Date.now();
  /** This socket's tally; an owner may swap in one shared by all sockets of a peer (the metrics do). */
  traffic: Traffic = { bytesIn: 0, bytesOut: 0, messagesIn: 0, messagesOut: 0 };
  /** Replaced once the first message (Hello) says who is on the other side. */
  handler: (msg: Message, sock: MeshSocket) => void;
  /** Likewise replaced by whoever owns the socket after the Hello. */
  closeHandler: (sock: MeshSocket, code: number, reason: string) => void;
  private readonly timer: NodeJS.Timeout;
  private closed = false;
  private corked = false;

  constructor(readonly ws: WebSocket, readonly remote: string, private readonly opts: MeshSocketOptions) {
    this.handler = opts.onMessage;
    this.closeHandler = opts.onClose;
    ws.binaryType = 'nodebuffer';
    ws.on('message', (data, isBinary) => this.receive(data as Buffer, isBinary));
    ws.on('pong', () => (this.lastHeardAt = Date.now()));
    ws.on('ping', () => (this.lastHeardAt = Date.now()));
    // errors are followed by 'close'; the reconnect logic there is all the handling needed.
    // WS_ERR_* are frame-level protocol violations by the other side (over maxPayload, invalid
    // UTF-8 in a text frame, bad opcode...): ws closes with 1002/1007/1009; log them once, like
    // a malformed message, unless this socket was already closed for one (logged once, not per
    // frame of a flood). Everything else (resets, refused) is routine and stays at debug.
    ws.on('error', (err: Error & { code?: unknown }) => {
      if (typeof err.code === 'string' && err.code.startsWith('WS_ERR_') && !this.closed) {
        opts.log.warn({ err: { message: err.message, code: err.code }, remote }, 'malformed frame from peer; closing connection');
      } else {
        opts.log.debug({ err, remote }, 'socket error');
      }
    });
    ws.on('close', (code, reason) => this.finish(code, reason.toString()));
    this.timer = setInterval(() => this.beat(), opts.heartbeatMs);
    this.timer.unref();
  }

  get open(): boolean {
    return !this.closed && this.ws.readyState === this.ws.OPEN;
  }

  /** Heard from within two heartbeats. */
  get alive(): boolean {
    return this.open && Date.now() - this.lastHeardAt <= 2 * this.opts.heartbeatMs;
  }

  send(frame: Uint8Array): void {
    if (!this.open) return;
    if (!this.corked) {
      // frames sent during one event-loop turn (many replies, many requests) leave in one syscall
      const raw = this.raw;
      if (raw) {
        this.corked = true;
        raw.cork();
        setImmediate(() => {
          if (!this.corked) return;
          this.corked = false;
          raw.uncork();
        });
      }
    }
    this.ws.send(frame);
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
    this.ws.send(frame);
    this.traffic.bytesOut += frame.length;
    this.traffic.messagesOut++;
    if (this.corked) {
      this.corked = false;
      this.raw?.uncork();
    }
  }

  private get raw(): { cork(): void; uncork(): void } | undefined {
    return (this.ws as unknown as { _socket?: { cork(): void; uncork(): void } })._socket;
  }

  /** Bytes queued in the socket but not yet sent: lets senders back off a slow peer. */
  get buffered(): number {
    return this.ws.bufferedAmount;
  }

  close(code: number = CloseCode.Normal, reason = ''): void {
    if (this.closed) return;
    try {
      this.ws.close(code, reason);
    } catch {
      this.ws.terminate();
    }
    // a peer that never answers the close handshake must not pin the socket
    setTimeout(() => this.ws.terminate(), 1000).unref();
    this.finish(code, reason);
  }

  private receive(data: Buffer, isBinary: boolean): void {
    this.lastHeardAt = Date.now();
    if (this.closed) return;
    this.traffic.bytesIn += data.length;
    this.traffic.messagesIn++;
    let msg: Message;
    try {
      if (!isBinary) throw new Error('text frame');
      msg = readMessage(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
      this.handler(msg, this);
    } catch (err) {
      this.opts.log.warn({ err: { message: (err as Error).message }, remote: this.remote }, 'malformed message from peer; closing connection');
      this.close(CloseCode.ProtocolError, 'malformed message');
    }
  }

  private beat(): void {
    if (Date.now() - this.lastHeardAt > 2 * this.opts.heartbeatMs) {
      this.opts.log.info({ remote: this.remote }, 'peer silent for two heartbeats; dropping connection');
      this.ws.terminate();
      this.finish(CloseCode.GoingAway, 'heartbeat timeout');
      return;
    }
    try {
      this.ws.ping();
    } catch {
      // socket is closing; 'close' follows
    }
  }

  private finish(code: number, reason: string): void {
    if (this.closed) {
      return;
    }
    this.closed = true;
    clearInterval(this.timer);
    this.closeHandler(this, code, reason);
  }
}
