/**
 * What the coordinator's and the counters' metrics share: one prom-client registry per process
 * object (tests run several coordinators and counters in one Node process, so the library's global
 * default registry would mix them), and the HTTP request histogram.
 */
import { collectDefaultMetrics, Histogram, Registry } from 'prom-client';

/** Prometheus names start with this (`counter_mesh_..._total`, `..._seconds`, `..._bytes`). */
export const PREFIX = 'counter_mesh_';

/** The Prometheus text format, as prom-client writes it. */
export const METRICS_CONTENT_TYPE = Registry.PROMETHEUS_CONTENT_TYPE;

/** A registry of its own with Node's process metrics (CPU, memory, event loop lag, GC, handles). */
export function createRegistry(): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: PREFIX });
  return registry;
}

/** Routes that match none: one label value, so a scan of random paths cannot explode the series. */
const UNMATCHED = 'unmatched';

type Observer = { observe(value: number): void };

/**
 * `counter_mesh_http_request_duration_seconds{route, method, status}`; its `_count` is the number
 * of requests by route and status. The label children are made once per combination and kept:
 * a request costs three map lookups and one observe, no label object of ours.
 */
export class HttpMetrics {
  private readonly histogram: Histogram<'route' | 'method' | 'status'>;
  private readonly children = new Map<string, Map<string, Map<number, Observer>>>();

  constructor(registry: Registry) {
    this.histogram = new Histogram({
      name: `${PREFIX}http_request_duration_seconds`,
      help: 'HTTP requests by route template, method and status: latency from the request to the last byte of the answer',
      labelNames: ['route', 'method', 'status'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry],
    });
  }

  /**
   * @param route the matched route template (`/items/:tenant/count`), undefined when none matched
   * @param elapsedMs fastify's `reply.elapsedTime`
   */
  observe(route: string | undefined, method: string, status: number, elapsedMs: number): void {
    const r = route || UNMATCHED;
    let byMethod = this.children.get(r);
    if (!byMethod) {
      byMethod = new Map();
      this.children.set(r, byMethod);
    }
    let byStatus = byMethod.get(method);
    if (!byStatus) {
      byStatus = new Map();
      byMethod.set(method, byStatus);
    }
    let child = byStatus.get(status);
    if (!child) {
      // methods outside the usual few are folded too: `P0ST` must not be a series of its own
      const m = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'].includes(method) ? method : 'other';
      child = this.histogram.labels(r, m, String(status));
      byStatus.set(status, child);
    }
    child.observe(elapsedMs / 1000);
  }
}
