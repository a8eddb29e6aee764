/**
 * A small typed client for the counter-mesh HTTP API.
 *
 *   npm start                        # in another terminal
 *   npx tsx examples/client.ts       # BASE=http://host:8080 API_KEY=... npx tsx examples/client.ts
 *
 * `add` retries a batch the coordinator answered with 503 (after the Retry-After it sends) and
 * a batch whose request failed or timed out. That is safe because adds are idempotent: an item
 * stored twice is counted once, so resending a batch that was in fact stored changes nothing.
 */
import { pathToFileURL } from 'node:url';

export interface Item {
  tenant: string;
  id: string;
}

export interface ClientOptions {
  /** Coordinator URL, e.g. http://localhost:8080. */
  baseUrl: string;
  /** Sent as `Authorization: Bearer <apiKey>` when the coordinator has API_KEY set. */
  apiKey?: string;
  /** Tries per call, the first included (default 5). */
  maxAttempts?: number;
  /** Per-request timeout in ms (default 10 s). */
  timeoutMs?: number;
  /** Wait before a retry when the answer names none, in ms (default 500, doubled per retry). */
  backoffMs?: number;
}

/** A refusal the caller must act on (4xx, or 5xx after the last try): `code` is the API's error code. */
export class CounterMeshError extends Error {
  override name = 'CounterMeshError';
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

interface ErrorBody {
  code?: string;
  message?: string;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Retry-After as seconds or as an HTTP date, in ms; null when absent or unreadable. */
export function retryAfterMs(header: string | null, now = Date.now()): number | null {
  if (!header) return null;
  if (/^\d+$/.test(header.trim())) return Number(header.trim()) * 1000;
  const at = Date.parse(header);
  return Number.isNaN(at) ? null : Math.max(0, at - now);
}

export class CounterMeshClient {
  private readonly baseUrl: string;
  private readonly maxAttempts: number;
  private readonly timeoutMs: number;
  private readonly backoffMs: number;

  constructor(private readonly options: ClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, '');
    this.maxAttempts = options.maxAttempts ?? 5;
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.backoffMs = options.backoffMs ?? 500;
  }

  /** Adds items (one request; split batches larger than the coordinator's MAX_BATCH). Resolves once stored durably. */
  async add(items: Item | readonly Item[]): Promise<{ accepted: number }> {
    return this.request<{ accepted: number }>('POST', '/items', items);
  }

  /** Distinct items of a tenant, as one counter currently knows them. */
  async count(tenant: string): Promise<number> {
    const body = await this.request<{ count: number }>('GET', `/items/${encodeURIComponent(tenant)}/count`);
    return body.count;
  }

  /** Retries 503s and failed or timed-out requests; both calls are safe to repeat. */
  private async request<T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { accept: 'application/json' };
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (this.options.apiKey) headers.authorization = `Bearer ${this.options.apiKey}`;
    let lastError: Error = new Error('no attempt made');
    for (let attempt = 1; attempt <= this.maxAttempts; attempt++) {
      let wait = this.backoffMs * 2 ** (attempt - 1);
      try {
        const res = await fetch(this.baseUrl + path, {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
          signal: AbortSignal.timeout(this.timeoutMs),
        });
        const parsed = (await res.json().catch(() => ({}))) as T & ErrorBody;
        if (res.ok) return parsed;
        const error = new CounterMeshError(res.status, parsed.code ?? 'HTTP_ERROR', parsed.message ?? `HTTP ${res.status}`);
        if (res.status !== 503) throw error; // 4xx: resending the same request cannot help
        lastError = error;
        wait = retryAfterMs(res.headers.get('retry-after')) ?? wait;
      } catch (err) {
        if (err instanceof CounterMeshError) throw err;
        lastError = err as Error; // connection refused or reset, or timed out
      }
      if (attempt < this.maxAttempts) await sleep(wait);
    }
    throw lastError;
  }
}

async function main(): Promise<void> {
  const client = new CounterMeshClient({ baseUrl: process.env.BASE ?? 'http://localhost:8080', apiKey: process.env.API_KEY || undefined });
  const tenant = 'globex corp/eu west'; // any text: the client percent-encodes it in the URL

  console.log('add one item:', await client.add({ tenant, id: 'invoice-1' }));
  console.log(
    'add a batch with a duplicate:',
    await client.add([
      { tenant, id: 'invoice-2' },
      { tenant, id: 'invoice-3' },
      { tenant, id: 'invoice-1' },
    ]),
  );
  console.log(`count of "${tenant}":`, await client.count(tenant)); // 3, however often this runs

  try {
    await client.add({ tenant, id: '' });
  } catch (err) {
    if (!(err instanceof CounterMeshError)) throw err;
    console.log(`a bad item is refused: ${err.status} ${err.code}: ${err.message}`);
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: Error) => {
    console.error(`client example failed: ${err.message}`);
    process.exitCode = 1;
  });
}
