/**
 * Keeps one outgoing connection to an address open: reconnects with capped exponential backoff
 * and jitter. Refused connections while a peer is down are expected; the transport logs them at
 * debug only.
 */
import type { Logger } from 'pino';
import type { Clock, TimerHandle } from '../shared/clock.ts';
import type { Transport, Wire } from './wire.ts';

export interface DialerOptions {
  address: string;
  transport: Transport;
  clock: Clock;
  reconnectMaxMs: number;
  log: Logger;
  /** Called with each newly opened wire; the dialer redials once that connection closes. */
  onOpen: (wire: Wire) => void;
}

export class Dialer {
  private abort: (() => void) | null = null;
  private wire: Wire | null = null;
  private timer: TimerHandle | null = null;
  private attempt = 0;
  private stopped = false;

  constructor(private readonly opts: DialerOptions) {}

  start(): void {
    this.connect();
  }

  get connected(): boolean {
    return this.wire?.open === true;
  }

  close(): void {
    this.stopped = true;
    this.opts.clock.clear(this.timer);
    this.timer = null;
    // only a dial still under way is cut: an open wire is its owner's to close, after its last
    // frames (a terminate would drop them)
    if (this.wire === null) this.abort?.();
    this.abort = null;
    this.wire = null;
  }

  private connect(): void {
    if (this.stopped) return;
    let settled = false;
    this.abort = this.opts.transport.dial(this.opts.address, {
      opened: (wire) => {
        if (this.stopped) {
          wire.terminate();
          return;
        }
        this.attempt = 0;
        this.wire = wire;
        this.opts.onOpen(wire);
      },
      closed: (permanent = false) => {
        if (settled) return;
        settled = true;
        this.wire = null;
        this.abort = null;
        if (permanent) {
          this.opts.log.warn({ address: this.opts.address }, 'giving up on this address');
          this.stopped = true;
          return;
        }
        this.schedule();
      },
    });
  }

  private schedule(): void {
    if (this.stopped || this.timer) return;
    const base = Math.min(this.opts.reconnectMaxMs, 50 * 2 ** this.attempt++);
    this.timer = this.opts.clock.setTimeout(
      () => {
        this.timer = null;
        this.connect();
      },
      base / 2 + this.opts.clock.random() * (base / 2),
    );
  }
}
