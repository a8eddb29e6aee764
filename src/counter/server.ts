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
import { bearerMatches } from '../shared/secret.ts';
import type { CounterConfig } from '../shared/config.ts';
import type { Status } from '../protocol/messages.ts';
import type { Wire } from '../protocol/wire.ts';
import { MESH_PATH, wsWire } from '../protocol/ws-wire.ts';

/** What the routes read of the counter. */
export interface CounterProbe {
  readonly ready: boolean;
  notReadyReason(): string;
  count(tenant: string): number;
  status(): Status;
}

export interface CounterServerOptions {
  config: Readonly<CounterConfig>;
  log: Logger;
  counter: CounterProbe;
  /** Takes an authenticated mesh connection (from a peer or a coordinator). */
  acceptMesh: (wire: Wire, remote: string) => void;
}

export function buildCounterServer({ config, log, counter, acceptMesh }: CounterServerOptions): FastifyInstance {
  const app: FastifyInstance = Fastify({
    loggerInstance: log.child({ component: 'http' }) as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    routerOptions: { maxParamLength: 4096 },
    requestTimeout: TIMEOUTS.requestMs,
    connectionTimeout: TIMEOUTS.idleMs,
    keepAliveTimeout: TIMEOUTS.keepAliveMs,
  });
  app.server.headersTimeout = TIMEOUTS.headersMs;
  const wss = new WebSocketServer({ noServer: true, maxPayload: config.maxMessageBytes, perMessageDeflate: false });
  const authorized = (header: string | undefined) => !config.clusterSecret || bearerMatches(header, config.clusterSecret);

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
    if (!counter.ready) return reply.code(503).header('retry-after', '1').send({ statusCode: 503, error: 'Service Unavailable', message: counter.notReadyReason() });
    return { count: counter.count(req.params.tenant) };
  });
  app.get('/status', async () => counter.status());

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
