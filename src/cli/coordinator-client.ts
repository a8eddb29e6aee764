/**
 * The operator commands' HTTP client: one JSON request to a coordinator, with API_KEY as a Bearer
 * token when set and TLS_CA as the trusted CA of an https:// coordinator (what the coordinators'
 * and counters' own TLS setup uses). Depends on node: modules only.
 */
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';

/** How long one request may take before the command gives up on it. */
const REQUEST_TIMEOUT_MS = 10_000;

/** A bad argument or setting of a command: the command stops at once (exit code 2). */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** The coordinator could not be reached, or did not answer in time. */
export class UnreachableError extends Error {
  override name = 'UnreachableError';
}

export interface Answer {
  status: number;
  /** The parsed JSON body, or null when there is none or it is not JSON. */
  body: unknown;
}

export interface ClientOptions {
  /** Sent as `Authorization: Bearer <apiKey>` when not empty. */
  apiKey: string;
  /** Path of a PEM CA bundle trusted for https:// (TLS_CA); empty: the system's CAs. */
  caFile: string;
}

export class CoordinatorClient {
  private readonly ca: Buffer | undefined;

  constructor(
    readonly base: URL,
    private readonly opts: ClientOptions,
  ) {
    if (base.protocol !== 'http:' && base.protocol !== 'https:') {
      throw new UsageError(`--coordinator ${base.href} is not valid: use an http:// or https:// URL`);
    }
    if (opts.caFile && base.protocol === 'https:') {
      try {
        this.ca = fs.readFileSync(opts.caFile);
      } catch (err) {
        throw new UsageError(`TLS_CA=${opts.caFile} cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
      }
    }
  }

  /** One request; resolves with whatever status the coordinator answered. */
  request(method: 'GET' | 'DELETE', path: string): Promise<Answer> {
    const url = new URL(path, this.base);
    const headers: Record<string, string> = { accept: 'application/json' };
    if (this.opts.apiKey) headers.authorization = `Bearer ${this.opts.apiKey}`;
    const send = url.protocol === 'https:' ? https.request : http.request;
    return new Promise((resolve, reject) => {
      const req = send(url, { method, headers, ca: this.ca, timeout: REQUEST_TIMEOUT_MS }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', (err) => reject(new UnreachableError(`the answer of ${url.origin} broke off: ${err.message}`)));
        res.on('end', () => {
          let body: unknown = null;
          try {
            body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          } catch {
            // not JSON: the status says enough
          }
          resolve({ status: res.statusCode ?? 0, body });
        });
      });
      req.on('timeout', () => req.destroy(new Error(`no answer within ${REQUEST_TIMEOUT_MS / 1000} s`)));
      req.on('error', (err: NodeJS.ErrnoException) => {
        const why = err.code ?? err.message;
        // TLS failures have codes like UNABLE_TO_VERIFY_LEAF_SIGNATURE, SELF_SIGNED_CERT_IN_CHAIN, ERR_TLS_CERT_ALTNAME_INVALID
        const hint = /CERT|SIGNATURE|TLS|SSL/.test(why) ? 'set TLS_CA to the CA that signed its certificate, and use the address the certificate names' : 'is it running, and is --coordinator right?';
        reject(new UnreachableError(`cannot reach the coordinator at ${url.origin} (${why}); ${hint}`));
      });
      req.end();
    });
  }
}

/** `503 NO_COUNTER: no counter ...` from an error answer of the API. */
export function describeAnswer(a: Answer): string {
  const b = a.body as { code?: unknown; message?: unknown } | null;
  if (b && typeof b.message === 'string') return `${a.status}${typeof b.code === 'string' ? ` ${b.code}` : ''}: ${b.message}`;
  return `HTTP ${a.status}`;
}
