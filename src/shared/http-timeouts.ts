/** Slow or idle clients cannot pin connections (test/api.test.ts checks the server has them). */
export const TIMEOUTS = {
  /** The whole request, headers and body. */
  requestMs: 30_000,
  /** The request headers. */
  headersMs: 10_000,
  /** A socket with no traffic at all. */
  idleMs: 60_000,
  /** An idle keep-alive connection between requests. */
  keepAliveMs: 5_000,
} as const;
