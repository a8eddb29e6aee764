/**
 * The production wire: a `ws` WebSocket. Outgoing connections (wsTransport) authenticate with the
 * cluster secret and bind to our own loopback address when we listen on one (README, fault model).
 */
import WebSocket from 'ws';
import type { Logger } from 'pino';
import { isLoopback } from '../shared/address.ts';
import type { DialHandlers, Transport, Wire, WireEvents } from './wire.ts';

export const MESH_PATH = '/mesh';

export function authHeaders(secret: string): Record<string, string> {
  return secret ? { authorization: `Bearer ${secret}` } : {};
}

/** A process listening on one loopback IP also connects from it, so a proxy in front of a counter can tell who connects. */
export function localAddressFor(host: string): string | undefined {
  return isLoopback(host) && host.startsWith('127.') ? host : undefined;
}

/** Wraps an open WebSocket. */
export function wsWire(ws: WebSocket, remote: string, log: Logger): Wire {
  ws.binaryType = 'nodebuffer';
  // one warning per connection, and none once we closed it (for a malformed message, logged then)
  let quiet = false;
  const raw = () => (ws as unknown as { _socket?: { cork(): void; uncork(): void } })._socket;
  return {
    get open() {
      return ws.readyState === ws.OPEN;
    },
    get bufferedBytes() {
      return ws.bufferedAmount;
    },
    bind(events: WireEvents) {
      ws.on('message', (data: Buffer, isBinary: boolean) => events.message(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), isBinary));
      ws.on('pong', () => events.heard());
      ws.on('ping', () => events.heard());
      // errors are followed by 'close'; the owner's close handling is all the handling needed.
      // WS_ERR_* are frame-level protocol violations by the other side (over maxPayload, invalid
      // UTF-8 in a text frame, bad opcode...): ws closes with 1002/1007/1009; log them once, like
      // a malformed message. Everything else (resets, refused) is routine and stays at debug.
      ws.on('error', (err: Error & { code?: unknown }) => {
        if (typeof err.code === 'string' && err.code.startsWith('WS_ERR_') && !quiet) {
          quiet = true;
          log.warn({ err: { message: err.message, code: err.code }, remote }, 'malformed frame from peer; closing connection');
        } else {
          log.debug({ err, remote }, 'socket error');
        }
      });
      ws.on('close', (code: number, reason: Buffer) => events.closed(code, reason.toString()));
    },
    send: (frame) => ws.send(frame),
    ping: () => {
      try {
        ws.ping();
      } catch {
        // socket is closing; 'close' follows
      }
    },
    cork: () => raw()?.cork(),
    uncork: () => raw()?.uncork(),
    close: (code, reason) => {
      quiet = true;
      try {
        ws.close(code, reason);
      } catch {
        ws.terminate();
      }
    },
    terminate: () => {
      quiet = true;
      ws.terminate();
    },
  };
}

export interface WsTransportOptions {
  secret: string;
  /** Our own listening host; outgoing sockets bind to it when it is a specific loopback IP. */
  host: string;
  maxPayload: number;
  log: Logger;
}

/** Dials `ws://address/mesh` with the cluster secret. */
export function wsTransport(opts: WsTransportOptions): Transport {
  const { secret, host, maxPayload, log } = opts;
  return {
    dial(address: string, handlers: DialHandlers): () => void {
      let ws: WebSocket;
      try {
        ws = new WebSocket(`ws://${address}${MESH_PATH}`, {
          headers: authHeaders(secret),
          maxPayload,
          localAddress: localAddressFor(host),
          handshakeTimeout: 5000,
          perMessageDeflate: false,
        });
      } catch (err) {
        // an address that is no URL authority can never work: say so once, report it closed
        log.warn({ address, err: { message: (err as Error).message } }, 'cannot dial this address');
        queueMicrotask(() => handlers.closed(true));
        return () => {};
      }
      ws.on('open', () => handlers.opened(wsWire(ws, address, log)));
      ws.on('unexpected-response', (_req, res) => {
        log.warn(
          { address, status: res.statusCode },
          res.statusCode === 401 ? 'counter refused our CLUSTER_SECRET; check that every process has the same one' : 'unexpected answer to WebSocket upgrade',
        );
        ws.terminate();
      });
      ws.on('error', (err) => log.debug({ address, err: { message: err.message } }, 'dial failed'));
      ws.on('close', () => handlers.closed());
      return () => ws.terminate();
    },
  };
}
