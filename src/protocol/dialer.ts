/**
 * Keeps one outgoing WebSocket to an address open: reconnects with capped exponential backoff
 * and jitter. Refused connections while a peer is down are expected and logged at debug only.
 */
import WebSocket from 'ws';
import type { Logger } from 'pino';
import { isLoopback } from '../shared/address.ts';

export const MESH_PATH = '/mesh';

export interface DialerOptions {
  address: string;
  secret: string;
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
    const { address, secret, host, maxPayload, log } = this.opts;
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
      // an address that is no URL authority can never work: stop instead of throwing from a timer
      log.warn({ address, err: { message: (err as Error).message } }, 'cannot dial this address; giving up on it');
      this.stopped = true;
      return;
    }
    this.ws = ws;
    ws.on('open', () => {
      this.attempt = 0;
      this.opts.onOpen(ws);
    });
    ws.on('unexpected-response', (_req, res) => {
      log.warn({ address, status: res.statusCode }, res.statusCode === 401 ? 'counter refused our CLUSTER_SECRET; check that every process has the same one' : 'unexpected answer to WebSocket upgrade');
      ws.terminate();
    });
    ws.on('error', (err) => log.debug({ address, err: { message: err.message } }, 'dial failed'));
    ws.on('close', () => {
      if (this.ws === ws) this.ws = null;
      this.schedule();
    });
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
