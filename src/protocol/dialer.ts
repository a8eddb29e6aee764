/**
 * Keeps one outgoing WebSocket to an address open: reconnects with capped exponential backoff
 * and jitter. Refused connections while a peer is down are expected and logged at debug only.
 */
import WebSocket from 'ws';
import type { Logger } from 'pino';
import { isLoopback } from '../shared/address.ts';
import { isTlsError, type TlsFiles } from '../shared/tls.ts';

export const MESH_PATH = '/mesh';

export interface DialerOptions {
  address: string;
  secret: string;
  /** During a secret rotation: sent when the other side refuses `secret` (it has not been given the new one yet). */
  previousSecret?: string;
  /** Dial with wss:// and these certificates when set (TLS_CA). */
  tls?: TlsFiles | null;
  /** Our own listening host; outgoing sockets bind to it when it is a specific IP (see README, fault model). */
  host: string;
  maxPayload: number;
  reconnectMaxMs: number;
  log: Logger;
  /** Called with each newly opened socket; the dialer redials once that socket closes. */
  onOpen: (ws: WebSocket) => void;
}

export function authHeaders(secret: string): Record<string, string> {
  return secret ? { authorization: `Bearer ${secret}` } : {};
}

/** A process listening on one loopback IP also connects from it, so a proxy in front of a counter can tell who connects. */
export function localAddressFor(host: string): string | undefined {
  return isLoopback(host) && host.startsWith('127.') ? host : undefined;
}

export class Dialer {
  private ws: WebSocket | null = null;
  private timer: NodeJS.Timeout | null = null;
  private attempt = 0;
  private stopped = false;
  /** 1 after the other side refused the current secret: the next dials send the previous one. */
  private secretIndex = 0;
  /** 401s since the last successful dial; with two secrets, the first one only means "try the other". */
  private refusals = 0;
  /** What was last warned about; the same failure on every retry is logged once, until a dial succeeds. */
  private warned = '';

  constructor(private readonly opts: DialerOptions) {}

  start(): void {
    this.connect();
  }

  get connected(): boolean {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  /** Skips the wait and dials now (e.g. when a member is announced). */
  poke(): void {
    if (this.stopped || this.ws) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.connect();
  }

  close(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.ws?.terminate();
    this.ws = null;
  }

  private connect(): void {
    if (this.stopped) return;
    const { address, host, maxPayload, log, tls } = this.opts;
    const secret = this.secretIndex === 1 && this.opts.previousSecret ? this.opts.previousSecret : this.opts.secret;
    const useTls = tls?.dials === true;
    let ws: WebSocket;
    try {
      ws = new WebSocket(`${useTls ? 'wss' : 'ws'}://${address}${MESH_PATH}`, {
      headers: authHeaders(secret),
      maxPayload,
      localAddress: localAddressFor(host),
      handshakeTimeout: 5000,
      perMessageDeflate: false,
      ...(useTls ? tls.clientOptions() : {}),
      });
    } catch (err) {
      // an address that is no URL authority can never work: stop instead of throwing from a timer
      log.warn({ address, err: { message: (err as Error).message } }, 'cannot dial this address; giving up on it');
      this.stopped = true;
      return;
    }
    this.ws = ws;
    ws.on('open', () => {
      this.attempt = 0;
      this.warned = '';
      this.refusals = 0;
      this.opts.onOpen(ws);
    });
    ws.on('unexpected-response', (_req, res) => {
      ws.terminate();
      if (res.statusCode === 401 && this.opts.previousSecret) {
        // mid-rotation: the other side may not know the current secret yet; try the other one next
        this.secretIndex = 1 - this.secretIndex;
        this.attempt = 0;
        if (++this.refusals < 2) return;
      }
      const what =
        res.statusCode === 401
          ? 'counter refused our CLUSTER_SECRET; check that every process has the same one (or, while rotating, current,previous)'
          : res.statusCode === 400 && !useTls
            ? 'counter answered 400 to a plain WebSocket upgrade: it probably speaks TLS; set TLS_CA'
            : 'unexpected answer to WebSocket upgrade';
      this.warnOnce(`status ${res.statusCode}`, { address, status: res.statusCode }, what);
    });
    ws.on('error', (err: Error & { code?: string }) => {
      if (!isTlsError(err)) return log.debug({ address, err: { message: err.message } }, 'dial failed');
      // a certificate that does not verify fails again on every retry: warn once per address
      this.warnOnce(`tls ${err.code}`, { address, err: { code: err.code, message: err.message } },
        useTls ? 'TLS handshake with counter failed; check that it speaks TLS, that its certificate is signed by TLS_CA and names this address' : 'dial failed');
    });
    ws.on('close', () => {
      if (this.ws === ws) this.ws = null;
      this.schedule();
    });
  }

  private warnOnce(key: string, obj: object, msg: string): void {
    if (this.warned === key) return;
    this.warned = key;
    this.opts.log.warn(obj, `${msg} (logged once until a dial succeeds)`);
  }

  private schedule(): void {
    if (this.stopped || this.timer) return;
    const base = Math.min(this.opts.reconnectMaxMs, 50 * 2 ** this.attempt++);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.connect();
    }, base / 2 + Math.random() * (base / 2));
    this.timer.unref();
  }
}
