/** JSON Schemas of the public API; fastify validates every request against them. */
import { MAX_WIRE_FIELD_CHARS } from '../shared/limits.ts';

/** Well-formed Unicode only: a lone surrogate would not survive UTF-8 on its way to the counters. */
const WELL_FORMED = '^(?:[^\\uD800-\\uDFFF]|[\\uD800-\\uDBFF][\\uDC00-\\uDFFF])*$';
export const MAX_FIELD_CHARS = 256;

const field = { type: 'string', minLength: 1, maxLength: MAX_FIELD_CHARS, pattern: WELL_FORMED } as const;

/**
 * A tenant is read back as one URL path segment; "." and ".." cannot be one (URL parsers in
 * clients remove them, `encodeURIComponent` leaves dots alone), so they are refused as tenants.
 */
const tenant = { ...field, not: { enum: ['.', '..'] } } as const;

/** Extra properties are rejected, never silently dropped: a typo like "tennant" must not pass. */
export const itemSchema = {
  type: 'object',
  required: ['id', 'tenant'],
  additionalProperties: false,
  properties: { id: field, tenant },
} as const;

/** The body after the preValidation hook has wrapped a single item in an array. */
export function postItemsBody(maxBatch: number) {
  return { type: 'array', minItems: 1, maxItems: maxBatch, items: itemSchema } as const;
}

export const countParams = {
  type: 'object',
  required: ['tenant'],
  properties: { tenant },
} as const;

export const errorResponse = {
  type: 'object',
  properties: { statusCode: { type: 'integer' }, code: { type: 'string' }, error: { type: 'string' }, message: { type: 'string' } },
} as const;

export const countResponse = {
  type: 'object',
  required: ['count'],
  properties: { count: { type: 'integer' } },
} as const;

export const postItemsResponse = {
  type: 'object',
  required: ['accepted'],
  properties: { accepted: { type: 'integer' } },
} as const;

/** DELETE /counters/:id: a counter id as counters send it (COUNTER_ID, at most 1,024 characters). */
export const counterParams = {
  type: 'object',
  required: ['id'],
  properties: { id: { type: 'string', minLength: 1, maxLength: MAX_WIRE_FIELD_CHARS, pattern: WELL_FORMED } },
} as const;
