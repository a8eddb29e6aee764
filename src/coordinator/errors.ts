/**
 * The coordinator's error catalogue: every error a client can get, with its status and code.
 * Bodies are `{ statusCode, code, error, message }`; messages say what was wrong, where, and what to do.
 *
 * | status | code                     | when                                                               |
 * |--------|--------------------------|--------------------------------------------------------------------|
 * | 400    | INVALID_REQUEST          | the body, a URL parameter or `w`/`r` breaks the rules (message names field/index, or the allowed levels) |
 * | 400    | INVALID_JSON             | the body is not JSON (or not UTF-8)                                |
 * | 400    | EMPTY_BODY               | Content-Type: application/json with no body                        |
 * | 400    | INVALID_CONTENT_LENGTH   | Content-Length does not match the body                             |
 * | 400    | BAD_URL                  | the path is not valid percent-encoded UTF-8                        |
 * | 400    | BAD_HTTP                 | not HTTP/1.1 at all (answered by the socket handler, then closed)  |
 * | 408    | REQUEST_TIMEOUT          | the request was not complete within 30 s (headers within 10 s)     |
 * | 431    | HEADERS_TOO_LARGE        | request line and headers over Node's 16 KiB                        |
 * | 400    | REJECTED_BY_COUNTER      | a counter refused the items as malformed                           |
 * | 401    | UNAUTHORIZED             | API_KEY is set and the request lacks `Authorization: Bearer <API_KEY>` |
 * | 404    | NOT_FOUND                | no such route                                                      |
 * | 404    | UNKNOWN_COUNTER          | DELETE /counters/:id: no counter has that id as a member (the message lists the members) |
 * | 404    | ALREADY_REMOVED          | DELETE /counters/:id: that counter was removed already             |
 * | 409    | LAST_MEMBER              | DELETE /counters/:id: it is the mesh's last member                 |
 * | 405    | METHOD_NOT_ALLOWED       | the path exists for other methods (see the `Allow` header)        |
 * | 413    | BODY_TOO_LARGE           | the body is larger than BODY_LIMIT                                 |
 * | 414    | URI_TOO_LONG             | the URL (or a path parameter) is too long                          |
 * | 415    | UNSUPPORTED_MEDIA_TYPE   | a body that is not `application/json` (UTF-8)                      |
 * | 429    | RATE_LIMITED             | more than RATE_LIMIT_MAX requests in RATE_LIMIT_WINDOW_MS from one client (`Retry-After`) |
 * | 400    | HTTPS_REQUIRED           | plain HTTP to a TLS port (answered in clear text by src/shared/tls.ts, then closed) |
 * | 503    | NO_COUNTER               | no counter can take the request now, or none serves the tenant's shard within COUNTER_TIMEOUT_MS (`Retry-After`) |
 * | 503    | TOO_MANY_VIEWERS         | 64 status-page streams are open already (`Retry-After`)            |
 * | 503    | SHUTTING_DOWN            | `/ready` only: the coordinator is stopping (README "Shutdown")     |
 * | 503    | NOT_ENOUGH_REPLICAS      | fewer replicas than `w`/`r` acknowledged or answered in time (`Retry-After`); the message gives both numbers |
 * | 500    | INTERNAL                 | a bug; logged                                                      |
 */
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';

export function sendError(reply: FastifyReply, statusCode: number, code: string, message: string): FastifyReply {
  return reply.code(statusCode).send({ statusCode, code, error: STATUS_CODES[statusCode] ?? 'Error', message });
}

/** An error whose status, code and message go to the client as they are (always a 4xx). */
export class ClientError extends Error {
  override name = 'ClientError';
  constructor(readonly statusCode: number, readonly code: string, message: string) {
    super(message);
  }
}

interface AjvError {
  instancePath: string;
  keyword: string;
  message?: string;
  params: Record<string, unknown>;
}

/** `/3/id` with keyword `type` → "item 3: id must be string". A single-item body has no index. */
export function describeValidation(errors: AjvError[], context: string, single: boolean): string {
  const e = errors[0];
  if (!e) return `${context} is not valid`;
  const parts = e.instancePath.split('/').filter(Boolean);
  let where: string;
  if (context === 'body') {
    if (parts.length === 0) where = 'body';
    else if (single) where = parts.slice(1).join('.') || 'body';
    else where = `item ${parts[0]}${parts.length > 1 ? `: ${parts.slice(1).join('.')}` : ''}`;
  } else {
    where = `${context} ${parts.join('.')}`.trim();
  }
  let what = e.message ?? 'is not valid';
  if (e.keyword === 'pattern') what = 'must be well-formed Unicode text (no lone surrogates)';
  if (e.keyword === 'additionalProperties') what = `has unknown property ${JSON.stringify(String(e.params.additionalProperty))} (only "id" and "tenant" are allowed)`;
  if (e.keyword === 'not') what = 'must not be "." or ".." (a URL cannot carry them as a path segment)';
  if (e.keyword === 'maxItems') what = `must hold at most ${String(e.params.limit)} items per request (MAX_BATCH); split the batch`;
  if (e.keyword === 'minItems') what = 'must hold at least one item';
  if (e.keyword === 'type' && parts.length === 0 && context === 'body') what = 'must be an item {"id","tenant"} or an array of items';
  if (e.keyword === 'type' && parts.length === 1 && context === 'body' && !single) what = 'must be an object {"id","tenant"}';
  return `${where} ${what}`;
}

/** Maps fastify's own errors (parser, limits, validation) to the catalogue. Never a 5xx for bad input. */
export function handleError(err: FastifyError, req: FastifyRequest, reply: FastifyReply): FastifyReply {
  if (err.validation) {
    const single = (req as FastifyRequest & { singleItem?: boolean }).singleItem === true;
    return sendError(reply, 400, 'INVALID_REQUEST', describeValidation(err.validation as AjvError[], err.validationContext ?? 'body', single));
  }
  if (err instanceof ClientError) return sendError(reply, err.statusCode, err.code, err.message);
  switch (err.code) {
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return sendError(reply, 415, 'UNSUPPORTED_MEDIA_TYPE', 'send the body as JSON with Content-Type: application/json');
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return sendError(reply, 413, 'BODY_TOO_LARGE', `the body is larger than BODY_LIMIT (${String(req.routeOptions.bodyLimit ?? 0)} bytes); split the batch`);
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return sendError(reply, 400, 'EMPTY_BODY', 'the body is empty; send an item {"id","tenant"} or an array of items');
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return sendError(reply, 400, 'INVALID_CONTENT_LENGTH', 'Content-Length does not match the body');
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return sendError(reply, 400, 'INVALID_JSON', 'the body is not valid JSON');
    case 'FST_ERR_BAD_URL':
      return sendError(reply, 400, 'BAD_URL', 'the URL is not valid percent-encoded UTF-8; encode the tenant with encodeURIComponent');
    case 'FST_ERR_MAX_PARAM_LENGTH':
      return sendError(reply, 414, 'URI_TOO_LONG', 'a path parameter of the URL is too long; tenants have at most 256 characters');
  }
  if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500) {
    return sendError(reply, err.statusCode, err.code ?? 'BAD_REQUEST', err.message);
  }
  req.log.error({ err }, 'request failed');
  return sendError(reply, 500, 'INTERNAL', 'the coordinator failed to handle the request; it is logged');
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * The only body parser: `application/json` in UTF-8. The charset parameter, when given, must be
 * UTF-8; invalid UTF-8 and invalid JSON are 400s whose message says what the parser tripped on.
 * Plain `JSON.parse` is safe here: a `__proto__` key becomes an own property, which the schema
 * then rejects as an unknown property.
 */
export function parseJsonBody(contentType: string | undefined, body: Buffer): unknown {
  const charset = /;\s*charset\s*=\s*"?([^";\s]*)/i.exec(contentType ?? '')?.[1]?.toLowerCase();
  if (charset !== undefined && charset !== 'utf-8' && charset !== 'utf8') {
    throw new ClientError(415, 'UNSUPPORTED_MEDIA_TYPE', `charset ${JSON.stringify(charset.slice(0, 40))} is not supported; send the body as UTF-8 JSON`);
  }
  if (body.length === 0) throw new ClientError(400, 'EMPTY_BODY', 'the body is empty; send an item {"id","tenant"} or an array of items');
  let text: string;
  try {
    text = utf8.decode(body);
  } catch {
    throw new ClientError(400, 'INVALID_JSON', 'the body is not valid UTF-8');
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    const why = (err as Error).message.slice(0, 200);
    throw new ClientError(400, 'INVALID_JSON', `the body is not valid JSON (${body.length} bytes): ${why}`);
  }
}

/**
 * Requests Node's HTTP parser refuses before fastify sees them (garbage, header overflow,
 * timeouts) get the same JSON error body, then the connection is closed.
 */
export function clientErrorHandler(err: Error & { code?: string }, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  let statusCode = 400;
  let code = 'BAD_HTTP';
  let message = `the request is not valid HTTP/1.1 (${err.code ?? 'parse error'}); nothing was done`;
  if (err.code === 'HPE_HEADER_OVERFLOW') {
    statusCode = 431;
    code = 'HEADERS_TOO_LARGE';
    message = 'the request line and headers are larger than 16 KiB; tenants have at most 256 characters';
  } else if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
    statusCode = 408;
    code = 'REQUEST_TIMEOUT';
    message = 'the request was not complete in time; nothing was done';
  }
  // answer unless a response already started on this socket (its bytes would be corrupted);
  // a body error (bad chunk) comes after fastify took the request but before it answered
  const inFlight = (socket as Socket & { _httpMessage?: { headersSent?: boolean } | null })._httpMessage;
  if (socket.writable && !inFlight?.headersSent) {
    const body = JSON.stringify({ statusCode, code, error: STATUS_CODES[statusCode], message });
    // end, then destroy once written: over TLS the encrypted answer is still queued right after
    // write(), and an immediate destroy would drop it (the client saw a bare close)
    socket.end(`HTTP/1.1 ${statusCode} ${STATUS_CODES[statusCode]}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
    socket.once('finish', () => socket.destroy());
    // a client that does not read cannot keep the socket
    setTimeout(() => socket.destroy(), 5000).unref();
    return;
  }
  socket.destroy();
}
