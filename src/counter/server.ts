/**
 * The counter's port: internal HTTP routes (fastify) and the WebSocket endpoint `/mesh` where
 * peers and coordinators connect. Everything but /health needs the cluster secret; an upgrade
 * without it is refused before any state is exchanged.
 */
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import { TIMEOUTS } from '../shared/http-timeouts.ts';
import { WebSocketServer } from 'ws';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { bearerMatchesAny } from '../shared/secret.ts';
import { serveTls } from '../shared/tls.ts';
import type { Server as TlsServer } from 'node:tls';
import type { CounterConfig } from '../shared/config.ts';
import type { Status } from '../protocol/messages.ts';
import type { Wire } from '../protocol/wire.ts';
import { MESH_PATH, wsWire } from '../protocol/ws-wire.ts';
import { METRICS_CONTENT_TYPE } from '../shared/metrics.ts';
import type { CounterMetrics } from './metrics.ts';

/** What the routes read of the counter. */
export interface CounterProbe {
  readonly ready: boolean;
  notReadyReason(): string;
  count(tenant: string): number;
  /** Null when the tenant's shard is served here; else why not. */
  refusal(tenant: string): string | null;
  status(): Status;
}

export interface CounterServerOptions {
  config: Readonly<CounterConfig>;
  log: Logger;
  counter: CounterProbe;
  /** Takes an authenticated mesh connection (from a peer or a coordinator). */
  acceptMesh: (wire: Wire, remote: string) => void;
  /** GET /metrics and the HTTP histogram; null with METRICS=off. */
  metrics?: Pick<CounterMetrics, 'http' | 'registry'> | null;
}

export function buildCounterServer({ config, log, counter, acceptMesh, metrics }: CounterServerOptions): FastifyInstance {
  const app: FastifyInstance = Fastify({
    loggerInstance: log.child({ component: 'http' }) as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    routerOptions: { maxParamLength: 4096 },
    requestTimeout: TIMEOUTS.requestMs,
    connectionTimeout: TIMEOUTS.idleMs,
    keepAliveTimeout: TIMEOUTS.keepAliveMs,
    // TLS_CERT/TLS_KEY: HTTPS and WSS on the same port (with TLS_CLIENT_AUTH=require, peers without
    // a certificate from TLS_CA are refused in the handshake, before any header is read)
    ...(config.tls?.listens ? { https: config.tls.serverOptions() } : {}),
  }) as unknown as FastifyInstance;
  app.server.headersTimeout = TIMEOUTS.headersMs;
  if (config.tls?.listens) {
    const detach = serveTls(app.server as unknown as TlsServer, config.tls, log, TIMEOUTS.headersMs);
    app.addHook('onClose', async () => detach());
  }
  const wss = new WebSocketServer({ noServer: true, maxPayload: config.maxMessageBytes, perMessageDeflate: false });
  const authorized = (header: string | undefined) => config.acceptedSecrets.length === 0 || bearerMatchesAny(header, config.acceptedSecrets);

  app.addHook('onRequest', async (req, reply) => {
    if (req.routeOptions.url === '/health') return;
    if (!authorized(req.headers.authorization)) {
      return reply.code(401).send({ statusCode: 401, error: 'Unauthorized', message: 'send Authorization: Bearer <CLUSTER_SECRET>' });
    }
  });
  app.get('/health', async () => ({ status: 'ok' }));
  app.get('/ready', async (_req, reply) => {
    if (!counter.ready) return reply.code(503).send({ ready: false, message: counter.notReadyReason() });
    return { ready: true };
  });
  app.get<{ Params: { tenant: string } }>('/items/:tenant/count', async (req, reply) => {
    const why = counter.ready ? counter.refusal(req.params.tenant) : counter.notReadyReason();
    if (why) return reply.code(503).header('retry-after', '1').send({ statusCode: 503, error: 'Service Unavailable', message: why });
    return { count: counter.count(req.params.tenant) };
  });
  app.get('/status', async () => counter.status());
  if (metrics) {
    app.addHook('onResponse', (req, reply, done) => {
      metrics.http.observe(req.routeOptions.url, req.method, reply.statusCode, reply.elapsedTime);
      done();
    });
  }
  app.get('/metrics', async (_req, reply) => {
    if (!metrics) return reply.code(404).send({ statusCode: 404, error: 'Not Found', message: 'metrics are off on this counter (METRICS=off); start it with METRICS=on' });
    return reply.type(METRICS_CONTENT_TYPE).send(await metrics.registry.metrics());
  });

  app.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const refuse = (code: number, text: string) => {
      socket.once('finish', () => socket.destroy());
      socket.end(`HTTP/1.1 ${code} ${text}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    };
    if ((req.url ?? '').split('?')[0] !== MESH_PATH) return refuse(404, 'Not Found');
    if (!authorized(req.headers.authorization)) {
      log.warn({ remote: req.socket.remoteAddress }, 'refused a mesh connection without the right CLUSTER_SECRET');
      return refuse(401, 'Unauthorized');
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      const remote = `${req.socket.remoteAddress}:${req.socket.remotePort}`;
      acceptMesh(wsWire(ws, remote, log), remote);
    });
  });
  // the WebSocket server goes with the HTTP server; accepted sockets close with their sessions
  app.addHook('onClose', async () => {
    for (const c of wss.clients) c.terminate();
    wss.close();
  });
  return app;
}
