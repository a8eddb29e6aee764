/**
 * The public REST API: POST /items, GET /items/:tenant/count, /health, /ready, /counters.
 */
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { CoordinatorConfig } from '../shared/config.ts';
import { bearerMatches } from '../shared/secret.ts';
import type { Item } from '../protocol/messages.ts';
import { countParams, countResponse, postItemsBody, postItemsResponse } from './schemas.ts';
import { clientErrorHandler, handleError, parseJsonBody, sendError } from './errors.ts';
import { CounterPool, NoCounterAvailableError } from './counter-pool.ts';
import { CounterRejectedError } from './counter-link.ts';
import { TIMEOUTS } from '../shared/http-timeouts.ts';
import { serveTls } from '../shared/tls.ts';
import type { Server as TlsServer } from 'node:tls';
import rateLimit from '@fastify/rate-limit';

export { TIMEOUTS };

/** Routes that answer without API_KEY (load balancers and orchestrators probe them). */
const OPEN_ROUTES = new Set(['/health', '/ready']);
const MAX_URL_LENGTH = 8192;
/** Which methods each path answers, for 405 + Allow. */
const ALLOWED: [RegExp, string][] = [
  [/^\/items\/?$/, 'POST'],
  [/^\/items\/[^/]+\/count\/?$/, 'GET, HEAD'],
  [/^\/(health|ready|counters)\/?$/, 'GET, HEAD'],
];

type Req = FastifyRequest & { singleItem?: boolean };

/** What the HTTP layer needs of the pool (tests pass an in-memory fake). */
export type PoolApi = Pick<CounterPool, 'anyUsable' | 'view' | 'count'> & { add(items: readonly Item[]): Promise<unknown> };

export function buildCoordinatorServer(config: Readonly<CoordinatorConfig>, pool: PoolApi, log: Logger): FastifyInstance {
  const app: FastifyInstance = Fastify({
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
    // TLS_CERT/TLS_KEY: the public port speaks HTTPS only (plain HTTP gets a 400 HTTPS_REQUIRED)
    ...(config.tls?.listens ? { https: config.tls.serverOptions() } : {}),
  }) as unknown as FastifyInstance;
  app.server.headersTimeout = TIMEOUTS.headersMs;
  app.setErrorHandler(handleError);
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

  app.get('/health', async () => ({ status: 'ok' }));
  app.get('/ready', async (_req, reply) => {
    if (!pool.anyUsable) return sendError(reply, 503, 'NO_COUNTER', 'no counter is reachable and ready');
    return { ready: true };
  });
  app.get('/counters', async () => pool.view());

  app.post<{ Body: Item[] }>('/items', {
    schema: { body: postItemsBody(config.maxBatch), response: { 200: postItemsResponse } },
    handler: async (req, reply) => {
      try {
        await pool.add(req.body);
      } catch (err) {
        return unavailable(reply, err);
      }
      return { accepted: req.body.length };
    },
  });

  app.get<{ Params: { tenant: string } }>('/items/:tenant/count', {
    // a response schema lets fastify serialize with a compiled stringifier
    schema: { params: countParams, response: { 200: countResponse } },
    handler: async (req, reply) => {
      try {
        return { count: await pool.count(req.params.tenant) };
      } catch (err) {
        return unavailable(reply, err);
      }
    },
  });

  function unavailable(reply: Parameters<typeof sendError>[0], err: unknown) {
    if (err instanceof CounterRejectedError) return sendError(reply, 400, 'REJECTED_BY_COUNTER', err.message);
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
  private constructor(readonly app: FastifyInstance, readonly pool: CounterPool) {}

  static async start(config: Readonly<CoordinatorConfig>, log: Logger): Promise<Coordinator> {
    const pool = new CounterPool(config, log.child({ component: 'pool' }));
    await pool.start();
    const app = buildCoordinatorServer(config, pool, log);
    try {
      await app.listen({ host: config.host, port: config.port });
    } catch (err) {
      pool.close();
      throw err;
    }
    log.info({ address: app.server.address(), counters: config.counters.length }, 'coordinator listening');
    return new Coordinator(app, pool);
  }

  async close(): Promise<void> {
    this.pool.close();
    await this.app.close();
  }
}
