/**
 * The coordinator's error catalogue: every error a client can get, with its status and code.
 * Bodies are `{ statusCode, code, error, message }`; messages say what was wrong and what to do.
 */
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { STATUS_CODES } from 'node:http';

export function sendError(reply: FastifyReply, statusCode: number, code: string, message: string): FastifyReply {
  return reply.code(statusCode).send({ statusCode, code, error: STATUS_CODES[statusCode] ?? 'Error', message });
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
    if (parts.length === 0) where = single ? 'body' : 'body';
    else if (single) where = parts.slice(1).join('.') || 'body';
    else where = `item ${parts[0]}${parts.length > 1 ? `: ${parts.slice(1).join('.')}` : ''}`;
  } else {
    where = `${context} ${parts.join('.')}`.trim();
  }
  let what = e.message ?? 'is not valid';
  if (e.keyword === 'pattern') what = 'must be well-formed Unicode text (no lone surrogates)';
  if (e.keyword === 'additionalProperties') what = `has unknown property "${String(e.params.additionalProperty)}" (only "id" and "tenant" are allowed)`;
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
  switch (err.code) {
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return sendError(reply, 415, 'UNSUPPORTED_MEDIA_TYPE', 'send the body as JSON with Content-Type: application/json');
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return sendError(reply, 413, 'BODY_TOO_LARGE', `the body is larger than BODY_LIMIT (${String((req.routeOptions.bodyLimit ?? 0))} bytes); split the batch`);
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return sendError(reply, 400, 'EMPTY_BODY', 'the body is empty; send an item {"id","tenant"} or an array of items');
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return sendError(reply, 400, 'INVALID_CONTENT_LENGTH', 'Content-Length does not match the body');
    case 'FST_ERR_BAD_URL':
    case 'FST_ERR_ASYNC_CONSTRAINT':
      return sendError(reply, 400, 'BAD_URL', 'the URL is not valid percent-encoding; encode the tenant with encodeURIComponent');
  }
  if (err instanceof SyntaxError || (err.statusCode === 400 && /JSON/i.test(err.message))) {
    return sendError(reply, 400, 'INVALID_JSON', `the body is not valid JSON: ${err.message}`);
  }
  if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500) {
    return sendError(reply, err.statusCode, err.code ?? 'BAD_REQUEST', err.message);
  }
  req.log.error({ err }, 'request failed');
  return sendError(reply, 500, 'INTERNAL', 'the coordinator failed to handle the request; it is logged');
}
