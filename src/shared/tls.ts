/**
 * Transport security: loads the PEM files named by TLS_CERT, TLS_KEY and TLS_CA, hands out
 * options for listeners and dialers, and re-reads the files on demand (SIGHUP) so certificates
 * can be renewed without a restart. Depends on node: modules only.
 *
 * - A listener built from {@link TlsFiles.serverOptions} is attached with {@link TlsFiles.attach};
 *   `reload()` swaps the new context into every attached server (connections already open keep
 *   the old one until they close).
 * - A dialer asks {@link TlsFiles.clientOptions} on every dial, so a reload applies to the next
 *   connection.
 * - {@link guardPlainHttp} answers plain HTTP sent to a TLS port with a 400 that says to use
 *   https://, instead of a bare reset.
 */
import fs from 'node:fs';
import type net from 'node:net';
import tls from 'node:tls';

export class TlsConfigError extends Error {
  override name = 'TlsConfigError';
}

export interface TlsPaths {
  /** PEM certificate chain of this process's own listener (and client certificate when it dials). */
  cert: string;
  /** PEM private key of `cert`. */
  key: string;
  /** PEM CA bundle: what this process trusts when it dials, and which client certificates a listener accepts. */
  ca: string;
}

interface Material {
  cert?: Buffer;
  key?: Buffer;
  ca?: Buffer;
  /** Built once per (re)load: a dial reuses it instead of parsing the PEM files again. */
  clientContext?: tls.SecureContext;
}

/** Just what the module logs with (pino's Logger fits). */
export interface TlsLog {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

function readPem(name: string, file: string): Buffer {
  let data: Buffer;
  try {
    data = fs.readFileSync(file);
  } catch (err) {
    throw new TlsConfigError(`${name}=${file} cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); point it at a PEM file this process can read`);
  }
  if (!data.includes('-----BEGIN ')) throw new TlsConfigError(`${name}=${file} is not a PEM file (no "-----BEGIN" line)`);
  return data;
}

function load(paths: TlsPaths): Material {
  const m: Material = {};
  if (paths.cert) m.cert = readPem('TLS_CERT', paths.cert);
  if (paths.key) m.key = readPem('TLS_KEY', paths.key);
  if (paths.ca) m.ca = readPem('TLS_CA', paths.ca);
  try {
    // parses everything once: a key that does not match its certificate fails here, not on the first connection
    if (m.cert && m.key) tls.createSecureContext({ cert: m.cert, key: m.key });
    if (m.ca) m.clientContext = tls.createSecureContext({ ca: m.ca, cert: m.cert, key: m.key });
  } catch (err) {
    throw new TlsConfigError(`TLS_CERT, TLS_KEY or TLS_CA cannot be used (${(err as Error).message}); check that the key belongs to the certificate and that every file is PEM`);
  }
  return m;
}

/** The PEM material of one process, re-read by {@link TlsFiles.reload}. */
export class TlsFiles {
  private material: Material;
  private readonly servers = new Set<tls.Server>();

  /**
   * Reads the files at once: a missing or mismatched file stops the process at start.
   * @param requireClientCert listeners refuse a TLS client without a certificate signed by `ca`
   */
  constructor(readonly paths: Readonly<TlsPaths>, readonly requireClientCert: boolean) {
    if (Boolean(paths.cert) !== Boolean(paths.key)) throw new TlsConfigError('TLS_CERT and TLS_KEY go together: set both (the listener then speaks TLS) or neither');
    if (requireClientCert && !paths.ca) throw new TlsConfigError('TLS_CLIENT_AUTH=require needs TLS_CA: the CA whose certificates clients must present');
    if (requireClientCert && !paths.cert) throw new TlsConfigError('TLS_CLIENT_AUTH=require needs TLS_CERT and TLS_KEY: only a TLS listener can ask for client certificates');
    this.material = load(paths);
  }

  /** This process's own listener speaks TLS. */
  get listens(): boolean {
    return this.material.cert !== undefined;
  }

  /** This process dials counters over TLS (it has a CA to check them against). */
  get dials(): boolean {
    return this.material.clientContext !== undefined;
  }

  /** Options for `https.createServer` (or fastify's `https`). */
  serverOptions(): tls.TlsOptions {
    const { cert, key, ca } = this.material;
    return {
      cert,
      key,
      ca: this.requireClientCert ? ca : undefined,
      requestCert: this.requireClientCert,
      rejectUnauthorized: this.requireClientCert,
      // Node waits 120 s by default; a client that stalls its handshake should not hold a socket that long
      handshakeTimeout: 10_000,
    };
  }

  /** Options for one dial (`tls.connect`, or ws' options): the CA, and our certificate as client certificate when we have one. */
  clientOptions(): tls.ConnectionOptions {
    return { secureContext: this.material.clientContext, rejectUnauthorized: true };
  }

  /** Makes `reload()` reach this server; call `detach` when it closes. */
  attach(server: tls.Server): void {
    this.servers.add(server);
  }

  detach(server: tls.Server): void {
    this.servers.delete(server);
  }

  /** Re-reads the files. On error the old certificates stay in use and the error is thrown for the caller to log. */
  reload(): void {
    const next = load(this.paths);
    this.material = next;
    for (const server of this.servers) server.setSecureContext(this.serverOptions());
  }
}

/**
 * Everything an HTTPS listener of ours needs besides its options: reloads reach it, plain HTTP
 * gets a clear answer, failed handshakes are logged once per address, and an established TLS
 * connection may be half-closed by the client as a plain HTTP one may (so a client that ends its
 * side after a bad request still reads the 4xx saying why; a TLS socket otherwise ends its own
 * side at once). Only after the handshake: a client gone mid-handshake must still fail it.
 * @returns a function to call when the server closes
 */
export function serveTls(server: tls.Server, files: TlsFiles, log: TlsLog, firstByteMs: number): () => void {
  files.attach(server);
  guardPlainHttp(server, firstByteMs);
  logTlsClientErrors(server, log);
  server.prependListener('secureConnection', (socket: tls.TLSSocket) => {
    socket.allowHalfOpen = true;
  });
  return () => files.detach(server);
}

/** Errors of a TLS handshake that will fail again the same way: worth one warning, not one per retry. */
export function isTlsError(err: Error & { code?: string }): boolean {
  const code = err.code ?? '';
  return code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_') || /CERT|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|DEPTH_ZERO/.test(code);
}

/** The catalogue's error body, in shared/ so both listeners can send it without a coordinator import. */
function plainHttpAnswer(): string {
  const body = JSON.stringify({
    statusCode: 400,
    code: 'HTTPS_REQUIRED',
    error: 'Bad Request',
    message: 'this port speaks TLS: use https:// (wss:// for /mesh), and set TLS_CA on processes that dial it',
  });
  return `HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
}

/** TLS records of type handshake start with this byte; an HTTP request starts with a method name. */
const TLS_HANDSHAKE = 0x16;

/**
 * Looks at the first byte of every connection to a TLS server before the TLS layer takes it:
 * a TLS handshake goes on as usual, plain HTTP gets a 400 `HTTPS_REQUIRED` in clear text and is
 * closed, anything else is closed. Without this, curl or a plain dialer only sees a reset.
 * A connection that sends nothing within `firstByteMs` is closed.
 */
export function guardPlainHttp(server: tls.Server, firstByteMs: number): void {
  // the TLS server's own connection listener wraps the socket; it runs once we have peeked
  const tlsListeners = server.listeners('connection') as ((socket: net.Socket) => void)[];
  server.removeAllListeners('connection');
  server.on('connection', (socket: net.Socket) => {
    socket.setTimeout(firstByteMs, () => socket.destroy());
    socket.once('data', (chunk: Buffer) => {
      socket.setTimeout(0);
      socket.pause();
      // the TLS socket reads what is buffered here before it reads from the handle (initRead)
      socket.unshift(chunk);
      if (chunk[0] === TLS_HANDSHAKE) {
        for (const l of tlsListeners) l.call(server, socket);
      } else if (chunk[0]! >= 0x41 && chunk[0]! <= 0x5a) {
        socket.end(plainHttpAnswer());
        socket.once('finish', () => socket.destroy());
      } else {
        socket.destroy();
      }
    });
    socket.on('error', () => socket.destroy());
  });
}

/**
 * Logs failed TLS handshakes on a listener (a client with a certificate from another CA, none at
 * all, or plain bytes), once per client address: a peer retrying every second is one warning.
 */
export function logTlsClientErrors(server: tls.Server, log: TlsLog): void {
  const warned = new Set<string>();
  server.on('tlsClientError', (err: Error & { code?: string }, socket: tls.TLSSocket) => {
    const remote = socket.remoteAddress ?? 'unknown';
    if (warned.has(remote)) return;
    // bounded, so a scan from many addresses cannot grow it without end
    if (warned.size >= 1024) warned.clear();
    warned.add(remote);
    log.warn({ remote, err: { code: err.code, message: err.message } }, 'refused a TLS connection (further failures from this address are not logged)');
  });
}
