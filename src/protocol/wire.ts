/**
 * A connection as the mesh protocol uses it, whatever carries it: a WebSocket in production
 * (ws-wire.ts), a seeded in-memory queue in tests (test/support/memory-mesh.ts). Frames are whole
 * binary messages; liveness is any sign of life from the other side.
 */

export interface WireEvents {
  /** One whole message; `binary` is false for a text frame (a protocol error for us). */
  message(data: Uint8Array, binary: boolean): void;
  /** The other side showed it is alive (a ping or a pong). */
  heard(): void;
  /** The connection is gone, for any reason; called once. */
  closed(code: number, reason: string): void;
}

export interface Wire {
  readonly open: boolean;
  /** Bytes queued but not yet sent: lets senders back off a slow peer. */
  readonly bufferedBytes: number;
  /** Delivers events to their one consumer; called once, by the MeshSocket that owns this wire. */
  bind(events: WireEvents): void;
  send(frame: Uint8Array): void;
  ping(): void;
  /** Holds writes back until `uncork`, so many frames leave in one write (a no-op where meaningless). */
  cork(): void;
  uncork(): void;
  /** Closes with a handshake; `terminate` drops at once. */
  close(code: number, reason: string): void;
  terminate(): void;
}

/** Ways to open outgoing connections: WebSocket dialing in production, the in-memory network in tests. */
export interface Transport {
  /**
   * Starts connecting to `address`. Exactly one of `opened` (then, later, `closed`) or `closed`
   * alone is called, asynchronously. The returned function aborts the attempt or the connection.
   */
  dial(address: string, handlers: DialHandlers): () => void;
}

export interface DialHandlers {
  opened(wire: Wire): void;
  /** The attempt failed or the open connection is gone; the dialer reconnects unless `permanent` (an address that can never work). */
  closed(permanent?: boolean): void;
}
