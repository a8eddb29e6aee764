/**
 * The production wire: a `ws` WebSocket. Outgoing connections (wsTransport) authenticate with the
 * cluster secret and bind to our own loopback address when we listen on one (README, fault model).
 */
import WebSocket from 'ws';
import type { Logger } from 'pino';
import { isLoopback } from '../shared/address.ts';
import { isTlsError, type TlsFiles } from '../shared/tls.ts';
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
  /** During a secret rotation: sent to a counter that refused `secret` (it has not been given the new one yet). */
  previousSecret?: string;
  /** Dial `wss://` with these certificates when they include a CA (TLS_CA). */
  tls?: TlsFiles | null;
  /** Our own listening host; outgoing sockets bind to it when it is a specific loopback IP. */
  host: string;
  maxPayload: number;
  log: Logger;
}

/** What the transport remembers of one address between dials. */
interface DialState {
  /** 1 after the counter refused the current secret: the next dials send the previous one. */
  secretIndex: 0 | 1;
  /** 401s since the last successful dial; with two secrets, the first one only means "try the other". */
  refusals: number;
  /** What was last warned about: the same failure on every retry is logged once, until a dial succeeds. */
  warned: string;
}

/**
 * Dials `ws://address/mesh` (`wss://` with TLS_CA) with the cluster secret. A certificate that
 * does not verify, or a refused secret, is warned about once per address until a dial succeeds;
 * while rotating, a counter that refuses the current secret is sent the previous one.
 */
export function wsTransport(opts: WsTransportOptions): Transport {
  const { host, maxPayload, log, tls, previousSecret } = opts;
  // one entry per address ever dialed: configured and announced counters, a bounded set
  const states = new Map<string, DialState>();
  const warnOnce = (st: DialState, key: string, obj: object, msg: string) => {
    if (st.warned === key) return;
    st.warned = key;
    log.warn(obj, `${msg} (logged once until a dial succeeds)`);
  };
  return {
    dial(address: string, handlers: DialHandlers): () => void {
      let st = states.get(address);
      if (!st) {
        st = { secretIndex: 0, refusals: 0, warned: '' };
        states.set(address, st);
      }
      const state = st;
      const secret = state.secretIndex === 1 && previousSecret ? previousSecret : opts.secret;
      const useTls = tls?.dials === true;
      let ws: WebSocket;
      try {
        ws = new WebSocket(`${useTls ? 'wss' : 'ws'}://${address}${MESH_PATH}`, {
          headers: authHeaders(secret),
          maxPayload,
          localAddress: localAddressFor(host),
          handshakeTimeout: 5000,
          perMessageDeflate: false,
          // read on every dial, so certificates re-read on SIGHUP apply to the next connection
          ...(useTls ? tls.clientOptions() : {}),
        });
      } catch (err) {
        // an address that is no URL authority can never work: say so once, report it closed
        log.warn({ address, err: { message: (err as Error).message } }, 'cannot dial this address');
        queueMicrotask(() => handlers.closed(true));
        return () => {};
      }
      ws.on('open', () => {
        state.refusals = 0;
        state.warned = '';
        handlers.opened(wsWire(ws, address, log));
      });
      ws.on('unexpected-response', (_req, res) => {
        ws.terminate();
        if (res.statusCode === 401 && previousSecret) {
          // mid-rotation: the counter may not know the current secret yet; the next dial sends the other one
          state.secretIndex = state.secretIndex === 0 ? 1 : 0;
          if (++state.refusals < 2) return;
        }
        const what =
          res.statusCode === 401
            ? 'counter refused our CLUSTER_SECRET; check that every process has the same one (or, while rotating, current,previous)'
            : res.statusCode === 400 && !useTls
              ? 'counter answered 400 to a plain WebSocket upgrade: it probably speaks TLS; set TLS_CA'
              : 'unexpected answer to WebSocket upgrade';
        warnOnce(state, `status ${res.statusCode}`, { address, status: res.statusCode }, what);
      });
      ws.on('error', (err: Error & { code?: string }) => {
        if (!isTlsError(err)) return log.debug({ address, err: { message: err.message } }, 'dial failed');
        // a certificate that does not verify fails again on every retry: warn once per address
        warnOnce(
          state,
          `tls ${err.code}`,
          { address, err: { code: err.code, message: err.message } },
          'TLS handshake with counter failed; check that it speaks TLS, that its certificate is signed by TLS_CA and names this address',
        );
      });
      ws.on('close', () => handlers.closed());
      return () => ws.terminate();
    },
  };
}
