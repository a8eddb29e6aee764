/**
 * Graceful stop of an HTTP server (README "Operations / Shutdown"): no new connections, every
 * request already received is answered, idle keep-alive connections are closed at once, and
 * whatever is still open after the shutdown timeout is cut.
 */
import { ServerResponse, type IncomingMessage } from 'node:http';
import type { FastifyInstance } from 'fastify';

/** Set once when the server starts to drain; read by every response written after that. */
export interface DrainState {
  draining: boolean;
}

/**
 * A response class that answers `Connection: close` once the server drains. Fastify adds that
 * header only to requests that *arrive* after close() began; a request already inside a handler
 * then (waiting for a counter) would answer keep-alive, its client would send the next request on
 * a connection the server is about to close, and that request would meet a reset. Per request
 * this costs one boolean test, less than a fastify hook. Pass it as `ServerResponse` in the
 * server options (`http`, or `https` once TLS is on).
 */
export function drainingResponse(state: DrainState): typeof ServerResponse {
  return class DrainingResponse<Request extends IncomingMessage = IncomingMessage> extends ServerResponse<Request> {
    // every response goes through writeHead (end() without it calls it too)
    // fixed arity, no rest parameter: no array per response on the hot path. Node's writeHead
    // treats (code, headers, undefined) as (code, headers) and (code, undefined, undefined) as (code)
    override writeHead(statusCode: number, reason?: unknown, headers?: unknown): this {
      if (state.draining && !this.headersSent) this.setHeader('connection', 'close');
      return (super.writeHead as (code: number, a?: unknown, b?: unknown) => this)(statusCode, reason, headers);
    }
  };
}

/**
 * Closes `app` gracefully, waiting at most `timeoutMs` for open connections (requests in
 * progress) to finish; then destroys those that remain, after calling `onTimeout` (which must
 * end any connection Node's HTTP server no longer tracks, such as upgraded WebSockets).
 * Resolves with the number of connections cut at the timeout (0 when every request finished).
 */
export async function closeWithin(app: FastifyInstance, timeoutMs: number, onTimeout: () => void = () => {}): Promise<number> {
  // Connections the kernel completed while JavaScript was busy wait in the listen queue, and
  // closing the listener resets them. Of three immediates, the first runs before the next poll,
  // the second after a poll that accepts them, the third after one that reads their first bytes:
  // they are then served instead of being closed as idle. What arrives during these turns can
  // still meet a reset (a TCP listener cannot close atomically); its request was never read.
  for (let turn = 0; turn < 3; turn++) await new Promise((resolve) => setImmediate(resolve));
  const closed = app.close();
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<true>((resolve) => {
    timer = setTimeout(() => resolve(true), timeoutMs);
  });
  const timedOut = await Promise.race([closed.then(() => false), expired]);
  clearTimeout(timer);
  if (!timedOut) return 0;
  const open = await new Promise<number>((resolve) => app.server.getConnections((err, n) => resolve(err ? 0 : n)));
  onTimeout();
  app.server.closeAllConnections();
  await closed;
  return open;
}
