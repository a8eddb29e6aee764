/**
 * The coordinator's metrics (GET /metrics): HTTP requests, items accepted, its counter links and
 * failovers, and Node's process metrics; plus the per-second rates the status page charts.
 *
 * The request path pays one onResponse hook (a histogram observe and an increment) and one
 * counter increment per accepted POST; everything about counters is read from the pool when
 * Prometheus scrapes. With METRICS=off none of this exists.
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import { createRegistry, HttpMetrics, PREFIX } from '../shared/metrics.ts';
import type { CounterView } from './counter-pool.ts';
import { RateHistory } from './rates.ts';

/** Route templates of the two hot routes, as fastify reports them in `routeOptions.url`. */
export const WRITE_ROUTE = '/items';
export const READ_ROUTE = '/items/:tenant/count';
/** Five minutes of per-second points for the status page. */
const RATE_SECONDS = 300;

/** What the metrics read from the pool at scrape time. */
export interface PoolStats {
  view(): CounterView[];
  /** Requests that left their first counter for another; absent in test fakes. */
  readonly failovers?: number;
}

export class CoordinatorMetrics {
  readonly registry: Registry;
  readonly rates = new RateHistory(RATE_SECONDS);
  private readonly http: HttpMetrics;
  private readonly itemsAccepted: Counter;

  constructor(pool: PoolStats) {
    const registry = createRegistry();
    this.registry = registry;
    this.http = new HttpMetrics(registry);
    this.itemsAccepted = new Counter({
      name: `${PREFIX}items_accepted_total`,
      help: 'Items acknowledged to clients by POST /items (duplicates included: every item of every 200)',
      registers: [registry],
    });
    new Counter({
      name: `${PREFIX}failovers_total`,
      help: 'Requests that a counter could not take and that were tried on the next counter',
      registers: [registry],
      collect() {
        this.reset();
        this.inc(pool.failovers ?? 0);
      },
    });
    // views are read once per scrape, by the first collector that needs one
    let scrape: { at: number; view: CounterView[] } | null = null;
    const view = () => {
      const now = Date.now();
      if (!scrape || now - scrape.at > 100) scrape = { at: now, view: pool.view() };
      return scrape.view;
    };
    new Gauge({
      name: `${PREFIX}counter_links`,
      help: 'Counters this coordinator knows (state="known"), of which reachable (heard from within two heartbeats) and ready (reachable and taking requests)',
      labelNames: ['state'],
      registers: [registry],
      collect() {
        const v = view();
        this.set({ state: 'known' }, v.length);
        this.set({ state: 'reachable' }, v.filter((c) => c.reachable).length);
        this.set({ state: 'ready' }, v.filter((c) => c.ready).length);
      },
    });
    const perCounter = (name: string, help: string, value: (c: CounterView) => number | null) =>
      new Gauge({
        name: `${PREFIX}${name}`,
        help,
        labelNames: ['counter'],
        registers: [registry],
        collect() {
          this.reset(); // a counter whose link was dropped leaves no stale series
          for (const c of view()) {
            const x = value(c);
            if (x !== null) this.set({ counter: c.id }, x);
          }
        },
      });
    perCounter('counter_reachable', '1 when the counter was heard from within two heartbeats, else 0', (c) => (c.reachable ? 1 : 0));
    perCounter('counter_ready', '1 when the counter is reachable and ready to take requests, else 0', (c) => (c.ready ? 1 : 0));
    perCounter('counter_items', 'Distinct items the counter held at its last status message (every HEARTBEAT_MS)', (c) => c.items);
    perCounter(
      'counter_replication_lag_seconds',
      "Age of the oldest update another counter holds and this counter had not received, as the other counters last reported (needs METRICS=on on the counters)",
      (c) => c.replicationLagSeconds,
    );
  }

  /** The onResponse hook: every answered request. */
  onResponse(route: string | undefined, method: string, status: number, elapsedMs: number): void {
    this.http.observe(route, method, status, elapsedMs);
    if (route === WRITE_ROUTE) this.rates.writes++;
    else if (route === READ_ROUTE) this.rates.reads++;
    if (status >= 500) this.rates.errors++;
  }

  /** A POST /items was acknowledged. */
  accepted(items: number): void {
    this.itemsAccepted.inc(items);
  }
}
