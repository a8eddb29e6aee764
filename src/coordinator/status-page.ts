/**
 * The live status page: `GET /` and its two static files (plain HTML, CSS and JavaScript under
 * ./status-page/, no build step, nothing from a CDN), and `GET /status/events`, a server-sent
 * event stream that pushes the counters and the request rates once a second.
 *
 * The page and its files hold no data and are open (a browser cannot send a Bearer header when it
 * navigates); the stream is an API route like the others and needs API_KEY when one is set. The
 * page reads it with fetch (EventSource cannot send headers), asks for the key when it gets a 401,
 * and also takes it from the URL fragment (`/#key=...`, which browsers never send to the server).
 */
import fs from 'node:fs';
import type { ServerResponse } from 'node:http';
import type { FastifyInstance } from 'fastify';
import type { CounterView } from './counter-pool.ts';
import type { CoordinatorMetrics } from './metrics.ts';
import type { RateSeries } from './rates.ts';
import { sendError } from './errors.ts';
import { systemClock, type Clock, type TimerHandle } from '../shared/clock.ts';

export const EVENTS_PATH = '/status/events';
/** The page shell and its files: open even when API_KEY is set (they hold no data). */
export const PAGE_PATHS = ['/', '/status-page/app.js', '/status-page/style.css'] as const;
/** Open streams at once; more get a 503 (each costs a socket and a JSON write per second). */
const MAX_VIEWERS = 64;

/** One event of the stream. */
export interface StatusSnapshot {
  at: string;
  coordinatorId: string;
  heartbeatMs: number;
  counters: CounterView[];
  /** Null when METRICS=off: no per-request instrumentation, so nothing to chart. */
  rates: RateSeries | null;
}

const FILES: Record<(typeof PAGE_PATHS)[number], { name: string; type: string }> = {
  '/': { name: 'index.html', type: 'text/html; charset=utf-8' },
  '/status-page/app.js': { name: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/status-page/style.css': { name: 'style.css', type: 'text/css; charset=utf-8' },
};

/** The page may talk to this origin only; no inline script, no foreign content. */
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

export class StatusPage {
  private readonly viewers = new Set<ServerResponse>();
  private readonly timer: TimerHandle;
  private readonly files = new Map<string, { body: Buffer; type: string }>();

  constructor(
    private readonly info: { coordinatorId: string; heartbeatMs: number },
    private readonly pool: { view(): CounterView[] },
    private readonly metrics: CoordinatorMetrics | null,
    private readonly clock: Clock = systemClock,
  ) {
    // read once at start: a missing file is an install error, better seen at once than per request
    const dir = new URL('./status-page/', import.meta.url);
    for (const [path, f] of Object.entries(FILES)) this.files.set(path, { body: fs.readFileSync(new URL(f.name, dir)), type: f.type });
    this.timer = clock.setInterval(() => this.tick(), 1000);
  }

  register(app: FastifyInstance): void {
    for (const path of PAGE_PATHS) {
      const file = this.files.get(path)!;
      app.get(path, (_req, reply) => {
        reply.header('content-security-policy', CSP).header('x-content-type-options', 'nosniff').header('cache-control', 'no-cache');
        return reply.type(file.type).send(file.body);
      });
    }
    app.get(EVENTS_PATH, { exposeHeadRoute: false }, (req, reply) => {
      if (this.viewers.size >= MAX_VIEWERS) {
        reply.header('retry-after', '5');
        return sendError(reply, 503, 'TOO_MANY_VIEWERS', `${MAX_VIEWERS} status streams are open on this coordinator; close one or retry later`);
      }
      reply.hijack();
      const res = reply.raw;
      res.writeHead(200, {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-store',
        // proxies (nginx) must pass events on at once, not buffer them
        'x-accel-buffering': 'no',
      });
      res.write(`retry: 2000\n${event(this.snapshot())}`);
      this.viewers.add(res);
      req.raw.socket.setNoDelay(true);
      res.on('close', () => this.viewers.delete(res));
    });
  }

  snapshot(): StatusSnapshot {
    return {
      at: new Date(this.clock.now()).toISOString(),
      coordinatorId: this.info.coordinatorId,
      heartbeatMs: this.info.heartbeatMs,
      counters: this.pool.view(),
      rates: this.metrics ? this.metrics.rates.series() : null,
    };
  }

  /** Ends every stream (before the server closes: it waits for open responses). */
  close(): void {
    this.clock.clear(this.timer);
    for (const res of this.viewers) res.end();
    this.viewers.clear();
  }

  private tick(): void {
    this.metrics?.rates.tick(this.clock.now());
    if (this.viewers.size === 0) return;
    const frame = event(this.snapshot());
    for (const res of this.viewers) res.write(frame);
  }
}

function event(s: StatusSnapshot): string {
  // JSON has no raw newlines, so one data line carries it
  return `event: status\ndata: ${JSON.stringify(s)}\n\n`;
}
