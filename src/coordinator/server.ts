/**
 * The public REST API: POST /items, GET /items/:tenant/count, /health, /ready, /counters; and the
 * operator's routes: /shards, DELETE /counters/:id, /metrics and the status page (/, /status/events).
 */
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyRequest, type onResponseHookHandler } from 'fastify';
import type { Logger } from 'pino';
import type { CoordinatorConfig } from '../shared/config.ts';
import { bearerMatches } from '../shared/secret.ts';
import type { Item } from '../protocol/messages.ts';
import { counterParams, countParams, countResponse, postItemsBody, postItemsResponse } from './schemas.ts';
import { clientErrorHandler, handleError, parseJsonBody, sendError } from './errors.ts';
import { CounterPool, NO_PLACEMENT, NoCounterAvailableError } from './counter-pool.ts';
import { wsTransport } from '../protocol/ws-wire.ts';
import { systemClock } from '../shared/clock.ts';
import { CounterRejectedError } from './counter-link.ts';
import { groupByReplicas, NotEnoughReplicasError, readQuorum, requestedReplicas, writeQuorum, type Replica } from './quorum.ts';
import { TIMEOUTS } from '../shared/http-timeouts.ts';
import { serveTls } from '../shared/tls.ts';
import type { Server as TlsServer } from 'node:tls';
import rateLimit from '@fastify/rate-limit';
import { METRICS_CONTENT_TYPE } from '../shared/metrics.ts';
import { CoordinatorMetrics } from './metrics.ts';
import { PAGE_PATHS, StatusPage } from './status-page.ts';
import { closeWithin, drainingResponse, type DrainState } from '../shared/http-shutdown.ts';

export { TIMEOUTS };

/** Routes that answer without API_KEY (load balancers and orchestrators probe them). */
const OPEN_ROUTES = new Set<string>(['/health', '/ready', ...PAGE_PATHS]);
const MAX_URL_LENGTH = 8192;
/** Which methods each path answers, for 405 + Allow. */
const ALLOWED: [RegExp, string][] = [
  [/^\/items\/?$/, 'POST'],
  [/^\/items\/[^/]+\/count\/?$/, 'GET, HEAD'],
  [/^\/(health|ready|counters|shards|metrics)\/?$/, 'GET, HEAD'],
  [/^\/counters\/[^/]+\/?$/, 'DELETE'],
  [/^\/(status-page\/(app\.js|style\.css))?$/, 'GET, HEAD'],
  [/^\/status\/events\/?$/, 'GET'],
];

type Req = FastifyRequest & { singleItem?: boolean };

/**
 * What the HTTP layer needs of the pool (tests pass an in-memory fake). A pool without
 * `shardsView` and `removeCounter` knows no placement: GET /shards and DELETE /counters/:id then
 * answer as they do while no counter reports one.
 */
export type PoolApi = Pick<CounterPool, 'anyUsable' | 'view' | 'count'> & Partial<Pick<CounterPool, 'failovers' | 'shardsView' | 'removeCounter'>> & {
  add(items: readonly Item[]): Promise<unknown>;
  /** The tenant's replicas in placement order (see CounterPool.replicas). */
  replicas(tenant: string): readonly Replica[];
};

/** `?w=` / `?r=`: read by hand, not by a querystring schema, so requests without them pay nothing. */
type LevelQuery = { w?: unknown; r?: unknown };

export function buildCoordinatorServer(config: Readonly<CoordinatorConfig>, pool: PoolApi, log: Logger): FastifyInstance {
  const drain: DrainState = { draining: false };
  const app: FastifyInstance = Fastify({
    // once close() begins, responses say `Connection: close` (see drainingResponse)
    http: { ServerResponse: drainingResponse(drain) },
    // requests that reach us while we drain (already on an open connection) are answered, not 503'd
    return503OnClosing: false,
    loggerInstance: log.child({ component: 'http' }) as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: config.bodyLimit,
    routerOptions: { maxParamLength: MAX_URL_LENGTH, ignoreTrailingSlash: true },
    requestTimeout: TIMEOUTS.requestMs,
    connectionTimeout: TIMEOUTS.idleMs,
    keepAliveTimeout: TIMEOUTS.keepAliveMs,
    // bad percent-encoding and over-long parameters go through the catalogue too
    frameworkErrors: handleError,
    // and so do requests Node's HTTP parser refuses (garbage, 431, 408)
    clientErrorHandler,
    // request logging is off, so a child logger per request would only cost time
    childLoggerFactory: (logger) => logger,
    // extra properties are rejected, never silently dropped; nothing is coerced
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
    // TLS_CERT/TLS_KEY: the public port speaks HTTPS only (plain HTTP gets a 400 HTTPS_REQUIRED);
    // https.createServer takes the http options too, the draining response among them
    ...(config.tls?.listens ? { https: { ...config.tls.serverOptions(), ServerResponse: drainingResponse(drain) } } : {}),
  }) as unknown as FastifyInstance;
  app.server.headersTimeout = TIMEOUTS.headersMs;
  app.setErrorHandler(handleError);
  // runs when close() begins, before the listener closes
  app.addHook('preClose', (done) => {
    drain.draining = true;
    done();
  });
  if (config.tls?.listens) {
    const detach = serveTls(app.server as unknown as TlsServer, config.tls, log, TIMEOUTS.headersMs);
    app.addHook('onClose', async () => detach());
  }
  // before the API key check, so a client sending bad keys is limited too; no hook at all when off
  if (config.rateLimitMax > 0) addRateLimit(app, config);

  // JSON only: no text/plain parser (a wrong Content-Type is a 415, not a confusing 400)
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (req: Req, body, done) => {
    let parsed: unknown;
    try {
      parsed = parseJsonBody(req.headers['content-type'], body as Buffer);
    } catch (err) {
      return done(err as Error, undefined);
    }
    // one item is validated and stored as a batch of one (error messages still speak of "the body")
    if (parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed)) {
      req.singleItem = true;
      parsed = [parsed];
    }
    done(null, parsed);
  });

  app.setNotFoundHandler((req, reply) => {
    // no route, so no route hook: unmatched requests are counted here, as they are answered
    if (metrics) reply.raw.once('finish', () => metrics.onResponse(undefined, req.method, reply.statusCode, reply.elapsedTime));
    if (req.url.length > MAX_URL_LENGTH) return sendError(reply, 414, 'URI_TOO_LONG', `the URL is longer than ${MAX_URL_LENGTH} characters`);
    const path = req.url.split('?')[0] ?? '';
    const allowed = ALLOWED.find(([re]) => re.test(path));
    if (allowed && !allowed[1].split(', ').includes(req.method)) {
      reply.header('allow', allowed[1]);
      return sendError(reply, 405, 'METHOD_NOT_ALLOWED', `${req.method} is not allowed on ${path}; use ${allowed[1]}`);
    }
    return sendError(reply, 404, 'NOT_FOUND', `no route ${req.method} ${path}; see the README for the API`);
  });

  // no hook at all without a key: a hook per request is measurable on the hot path
  if (config.apiKey) {
    const apiKey = config.apiKey;
    app.addHook('onRequest', (req, reply, done) => {
      // the matched route, not the raw URL: `/health?x` is open, an unknown path is not
      if (OPEN_ROUTES.has(req.routeOptions.url ?? '') || bearerMatches(req.headers.authorization, apiKey)) return done();
      reply.header('www-authenticate', 'Bearer');
      sendError(reply, 401, 'UNAUTHORIZED', 'send Authorization: Bearer <API_KEY>');
    });
  }

  // METRICS=off: no hook at all, for the same reason
  const metrics = config.metrics ? new CoordinatorMetrics(pool) : null;
  if (metrics) {
    // an onResponse hook per route, added as the route is registered: its template is known here,
    // so a request pays no lookup of it (fastify's request.routeOptions builds an object per call)
    app.addHook('onRoute', (route) => {
      const template = route.url;
      const observe: onResponseHookHandler = (req, reply, done) => {
        metrics.onResponse(template, req.method, reply.statusCode, reply.elapsedTime);
        done();
      };
      route.onResponse = route.onResponse ? [...[route.onResponse].flat(), observe] : [observe];
    });
  }
  const page = new StatusPage({ coordinatorId: config.id, heartbeatMs: config.heartbeatMs }, pool, metrics);
  page.register(app);
  // before the server closes: it waits for open responses, and a status stream never ends by itself
  app.addHook('preClose', (done) => {
    page.close();
    done();
  });
  app.get('/metrics', async (_req, reply) => {
    if (!metrics) return sendError(reply, 404, 'NOT_FOUND', 'metrics are off on this coordinator (METRICS=off); start it with METRICS=on');
    const text = await metrics.registry.metrics();
    return reply.type(METRICS_CONTENT_TYPE).send(text);
  });

  app.get('/health', async () => ({ status: 'ok' }));
  app.get('/ready', async (_req, reply) => {
    // load balancers stop sending here while the requests already received are answered
    if (drain.draining) return sendError(reply, 503, 'SHUTTING_DOWN', 'the coordinator is shutting down; send requests to another coordinator');
    if (!pool.anyUsable) return sendError(reply, 503, 'NO_COUNTER', 'no counter is reachable and ready');
    return { ready: true };
  });
  app.get('/counters', async () => pool.view());
  app.get('/shards', async () => pool.shardsView?.() ?? NO_PLACEMENT);
  app.delete<{ Params: { id: string } }>('/counters/:id', {
    schema: { params: counterParams },
    handler: async (req, reply) => {
      const { id } = req.params;
      try {
        if (!pool.removeCounter) throw new NoCounterAvailableError('no counter reports the member list yet');
        await pool.removeCounter(id);
      } catch (err) {
        if (!(err instanceof NoCounterAvailableError)) throw err;
        reply.header('retry-after', '1');
        // a counter asked that did not answer may have stored the removal: a retry then says so (404 ALREADY_REMOVED)
        const outcome = err.sent ? 'the removal may have been stored before an answer was lost' : 'nothing was removed';
        return sendError(reply, 503, 'NO_COUNTER', `${err.message}; ${outcome}, retry later`);
      }
      return reply.code(202).send({ removed: id });
    },
  });

  app.post<{ Body: Item[] }>('/items', {
    schema: { body: postItemsBody(config.maxBatch), response: { 200: postItemsResponse } },
    handler: async (req, reply) => {
      const raw = (req.query as LevelQuery).w;
      try {
        if (raw === undefined && config.writeQuorum === 'one') {
          await pool.add(req.body);
        } else {
          // every shard has as many replicas (min(factor, members)), so the first tenant's count for all
          const replicas = pool.replicas(req.body[0]!.tenant);
          const w = requestedReplicas(raw, 'w', config.writeQuorum, replicas.length);
          if (w === 1) await pool.add(req.body);
          else await Promise.all(groupByReplicas(req.body, (t) => pool.replicas(t)).map((g) => writeQuorum(g.replicas, g.items, w)));
        }
      } catch (err) {
        return unavailable(reply, err);
      }
      metrics?.accepted(req.body.length);
      return { accepted: req.body.length };
    },
  });

  app.get<{ Params: { tenant: string } }>('/items/:tenant/count', {
    // a response schema lets fastify serialize with a compiled stringifier
    schema: { params: countParams, response: { 200: countResponse } },
    handler: async (req, reply) => {
      const raw = (req.query as LevelQuery).r;
      const { tenant } = req.params;
      try {
        if (raw === undefined && config.readQuorum === 'one') return { count: await pool.count(tenant) };
        const replicas = pool.replicas(tenant);
        const r = requestedReplicas(raw, 'r', config.readQuorum, replicas.length);
        return { count: r === 1 ? await pool.count(tenant) : await readQuorum(replicas, tenant, r) };
      } catch (err) {
        return unavailable(reply, err, true);
      }
    },
  });

  function unavailable(reply: Parameters<typeof sendError>[0], err: unknown, read = false) {
    if (err instanceof CounterRejectedError) return sendError(reply, 400, 'REJECTED_BY_COUNTER', err.message);
    if (err instanceof NotEnoughReplicasError) {
      reply.header('retry-after', '1');
      const hint = read ? 'retry later, or read with a smaller r' : 'retry later: what was stored stays stored and adds are idempotent, so resending the same items is safe';
      return sendError(reply, 503, 'NOT_ENOUGH_REPLICAS', `${err.message}; ${hint}`);
    }
    if (!(err instanceof NoCounterAvailableError)) throw err;
    reply.header('retry-after', '1');
    return sendError(reply, 503, 'NO_COUNTER', `${err.message}; retry later — adds are idempotent, so resending the same items is safe`);
  }
  return app;
}

/**
 * RATE_LIMIT_MAX requests per RATE_LIMIT_WINDOW_MS per client: per API key for requests carrying
 * API_KEY (however many addresses share it), per client address otherwise. /health and /ready
 * are not limited (probes of load balancers often come from one address). @fastify/rate-limit
 * keeps the counts (an LRU of windows); the answer is the catalogue's 429 with Retry-After.
 */
function addRateLimit(app: FastifyInstance, config: Readonly<CoordinatorConfig>): void {
  type Limiter = ReturnType<FastifyInstance['createRateLimit']>;
  let limiter: Limiter | null = null;
  const { apiKey } = config;
  app.register(rateLimit, { global: false }).after(() => {
    limiter = app.createRateLimit({
      max: config.rateLimitMax,
      timeWindow: config.rateLimitWindowMs,
      keyGenerator: (req) => (apiKey && bearerMatches(req.headers.authorization, apiKey) ? 'api-key' : `address:${req.ip}`),
    });
  });
  app.addHook('onRequest', async (req, reply) => {
    if (OPEN_ROUTES.has(req.routeOptions.url ?? '') || !limiter) return;
    const r = await limiter(req);
    if (r.isAllowed || !r.isExceeded) return;
    reply.header('retry-after', String(Math.max(1, r.ttlInSeconds)));
    return sendError(reply, 429, 'RATE_LIMITED', `more than ${r.max} requests in ${config.rateLimitWindowMs} ms from this client (RATE_LIMIT_MAX); wait Retry-After seconds and send again`);
  });
}

export class Coordinator {
  private constructor(
    readonly app: FastifyInstance,
    readonly pool: CounterPool,
    private readonly config: Readonly<CoordinatorConfig>,
    private readonly log: Logger,
  ) {}

  static async start(config: Readonly<CoordinatorConfig>, log: Logger): Promise<Coordinator> {
    // counters send small replies and status messages only: 1 MiB bounds what one may send us
    const transport = wsTransport({ secret: config.clusterSecret, previousSecret: config.acceptedSecrets[1], tls: config.tls, host: config.host, maxPayload: 1024 * 1024, log });
    const pool = new CounterPool(config, log.child({ component: 'pool' }), { transport, clock: systemClock });
    await pool.start();
    const app = buildCoordinatorServer(config, pool, log);
    try {
      await app.listen({ host: config.host, port: config.port });
    } catch (err) {
      pool.close();
      throw err;
    }
    log.info({ address: app.server.address(), counters: config.counters.length }, 'coordinator listening');
    return new Coordinator(app, pool, config, log);
  }

  /**
   * Stops taking connections, answers every request already received (they still need the
   * counters, so the counter links close last), and cuts what is still open after
   * SHUTDOWN_TIMEOUT_MS.
   */
  async close(): Promise<void> {
    const cut = await closeWithin(this.app, this.config.shutdownTimeoutMs);
    if (cut > 0) this.log.warn({ connections: cut, timeoutMs: this.config.shutdownTimeoutMs }, 'requests still open at SHUTDOWN_TIMEOUT_MS; their connections were cut');
    this.pool.close();
  }
}
