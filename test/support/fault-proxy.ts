/**
 * A tiny TCP proxy that injects network faults from OUTSIDE the processes under
 * test, so product code needs no fault switches.
 *
 * Every process of a test mesh gets its own loopback IP (all of 127.0.0.0/8 is
 * loopback on Linux) and binds its outgoing sockets to it. Every process reaches
 * a counter only through that counter's FaultProxy, so the proxy can tell who is
 * talking from `socket.remoteAddress` and cut individual links of the mesh:
 *
 * ```ts
 * const proxy = await FaultProxy.start({ listenHost: '127.0.0.111', targetHost: '127.0.0.11', targetPort: 4001 });
 * proxy.cut('reset', ['127.0.0.2']);      // coordinator -> counter 1 refused / reset
 * proxy.cut('blackhole', ['127.0.0.12']); // counter 2 -> counter 1 silently dead
 * proxy.healFrom(['127.0.0.2']);
 * proxy.heal();
 * await proxy.close();
 * ```
 *
 * The module deliberately holds no module-level state: every proxy owns its
 * server, its cut table and its connections, so several proxies (one per
 * counter) and several test files in one process never see each other's faults
 * and `close()` can release everything it created.
 *
 * @module
 */
import net from 'node:net';
import { once } from 'node:events';

/**
 * How traffic from a source is cut.
 *
 * - `'reset'`: existing connections are torn down with a TCP RST (both the
 *   client side and the upstream side), and new connections are accepted and
 *   immediately reset, so the client sees ECONNRESET / a closed socket, much
 *   like a refused connection.
 * - `'blackhole'`: connections stay open but every byte in both directions is
 *   read and discarded, like a dead network path while TCP still looks up.
 *   New connections are accepted but not forwarded upstream at all.
 */
export type Cut = 'reset' | 'blackhole';

/** Options of {@link FaultProxy.start}. */
export interface FaultProxyOptions {
  /** Local IP the proxy listens on (typically a dedicated loopback IP). */
  listenHost: string;
  /** Port to listen on; `0` or omitted picks an ephemeral port. */
  listenPort?: number;
  /** Host of the real service the proxy forwards to. */
  targetHost: string;
  /** Port of the real service the proxy forwards to. */
  targetPort: number;
}

/** One proxied connection: the accepted client socket and its upstream twin. */
interface Link {
  readonly source: string;
  readonly client: net.Socket;
  /** `null` when the connection was opened during a blackhole (never forwarded). */
  readonly upstream: net.Socket | null;
  /**
   * The byte stream of this connection is no longer intact: bytes (or a FIN)
   * were dropped by a blackhole, or it was opened during one. Such a link is
   * destroyed when its blackhole is healed.
   */
  tainted: boolean;
  /** Resolves once both sockets have emitted 'close'. */
  readonly closed: Promise<void>;
}

/** Per-source entries may also record an explicit exemption from a global cut. */
type SourceRule = Cut | 'none';

/**
 * Strips the IPv4-mapped IPv6 prefix so `::ffff:127.0.0.5` (seen when the
 * proxy listens on a dual-stack address) matches a cut for `127.0.0.5`.
 */
function normalizeIp(ip: string | undefined): string {
  if (ip === undefined) return '';
  return ip.startsWith('::ffff:') ? ip.slice('::ffff:'.length) : ip;
}

/**
 * Tears a socket down abruptly: with an RST when the socket is a connected TCP
 * socket and the runtime supports `resetAndDestroy()`, otherwise with a plain
 * `destroy()`. A socket still connecting is destroyed directly, because
 * `resetAndDestroy()` would wait for the connection to complete first.
 * Never throws.
 */
function hardClose(socket: net.Socket): void {
  // resetAndDestroy() on a socket whose peer already half-closed it can leave the TCP handle open
  // forever on Node 20 (seen here: close() never finished), so a plain destroy it is.
  socket.destroy();
}

/** Resolves when `socket` has emitted 'close' (immediately if it already has). */
function whenClosed(socket: net.Socket): Promise<void> {
  if (socket.closed) return Promise.resolve();
  return new Promise((resolve) => socket.once('close', () => resolve()));
}

/**
 * A TCP proxy in front of one service that can reset or blackhole traffic per
 * client source IP.
 *
 * Forwarding is plain byte pumping with backpressure in both directions and
 * `setNoDelay(true)` on every socket. Socket errors on either side tear down
 * both sides of the connection and are never thrown or left unhandled.
 *
 * Healing policy (a deliberate choice): a connection that lost bytes to a
 * blackhole, or was opened while its source was blackholed, is destroyed when
 * the blackhole is lifted. Its byte stream has a hole in it, and for a framed
 * protocol such as WebSocket a stream with missing bytes is garbage; a real
 * peer would eventually notice too (timeouts, protocol errors). Clients are
 * expected to reconnect. Connections that were blackholed but happened to
 * exchange no bytes meanwhile are intact and simply flow again.
 */
export class FaultProxy {
  /** `${host}:${port}` the proxy actually listens on (IPv6 hosts in brackets). */
  readonly address: string;
  /** Host the proxy listens on. */
  readonly host: string;
  /** Port the proxy actually listens on (resolved when `listenPort` was 0). */
  readonly port: number;

  readonly #server: net.Server;
  readonly #targetHost: string;
  readonly #targetPort: number;
  readonly #links = new Set<Link>();
  /** Cut applied to every source without its own rule; `undefined` = none. */
  #allCut: Cut | undefined;
  /** Per-source rules; they take precedence over {@link #allCut}. */
  readonly #rules = new Map<string, SourceRule>();
  #closing: Promise<void> | undefined;

  private constructor(server: net.Server, opts: FaultProxyOptions) {
    this.#server = server;
    this.#targetHost = opts.targetHost;
    this.#targetPort = opts.targetPort;
    const addr = server.address();
    if (addr === null || typeof addr === 'string') {
      throw new Error('FaultProxy: server is not listening on a TCP address');
    }
    this.host = addr.address;
    this.port = addr.port;
    this.address = addr.family === 'IPv6' || addr.address.includes(':')
      ? `[${addr.address}]:${addr.port}`
      : `${addr.address}:${addr.port}`;
    server.on('connection', (socket) => this.#accept(socket));
  }

  /**
   * Starts a proxy listening on `listenHost:listenPort` that forwards to
   * `targetHost:targetPort`. Resolves once the proxy is listening; rejects if
   * it cannot listen (e.g. the port is taken).
   */
  static async start(opts: FaultProxyOptions): Promise<FaultProxy> {
    // allowHalfOpen: a FIN from one side is forwarded as a FIN to the other
    // instead of closing both directions at once, so data still in flight the
    // other way is not lost.
    const server = net.createServer({ allowHalfOpen: true });
    // events.once rejects if 'error' comes first (port taken, address not local)
    server.listen({ host: opts.listenHost, port: opts.listenPort ?? 0 });
    await once(server, 'listening');
    // Late server errors (rare once listening) must never crash the process.
    server.on('error', () => {});
    return new FaultProxy(server, opts);
  }

  /** Number of live proxied connections (including blackholed ones). */
  get connections(): number {
    return this.#links.size;
  }

  /**
   * Cuts traffic from clients whose source IP is in `from`, or from every
   * client when `from` is undefined (which replaces all per-source rules).
   * Takes effect immediately on existing connections and on new ones.
   * Several cuts may be active at once, e.g. reset for one source and
   * blackhole for another; a later cut for the same source replaces the
   * earlier one.
   */
  cut(kind: Cut, from?: Iterable<string>): void {
    if (from === undefined) {
      this.#allCut = kind;
      this.#rules.clear();
    } else {
      for (const ip of from) this.#rules.set(normalizeIp(ip), kind);
    }
    this.#reconcile();
  }

  /**
   * Removes every cut. New and existing connections flow again, except that
   * connections which lost bytes to a blackhole (or were opened during one)
   * are destroyed, since their streams are corrupt; see the class docs.
   */
  heal(): void {
    this.#allCut = undefined;
    this.#rules.clear();
    this.#reconcile();
  }

  /**
   * Removes the cuts for the given sources only (also exempting them from a
   * cut applied to everyone). Same healing policy as {@link heal}.
   */
  healFrom(from: Iterable<string>): void {
    for (const ip of from) {
      if (this.#allCut === undefined) this.#rules.delete(normalizeIp(ip));
      else this.#rules.set(normalizeIp(ip), 'none');
    }
    this.#reconcile();
  }

  /**
   * Stops listening and destroys every connection (both sides). Resolves once
   * the server and all sockets are closed, leaving no open handles behind.
   * Idempotent.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    const serverClosed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    const links = [...this.#links];
    for (const link of links) {
      this.#kill(link);
      // a socket still connecting or half-closed may not have been reset; make sure it goes
      link.client.destroy();
      link.upstream?.destroy();
    }
    await Promise.all([serverClosed, ...links.map((l) => l.closed)]);
  }

  /** The cut currently applying to `source`, if any. */
  #cutFor(source: string): Cut | undefined {
    const rule = this.#rules.get(source);
    if (rule === 'none') return undefined;
    return rule ?? this.#allCut;
  }

  /** Applies the current cut table to every existing connection. */
  #reconcile(): void {
    for (const link of [...this.#links]) {
      const cut = this.#cutFor(link.source);
      if (cut === 'reset') {
        this.#kill(link);
      } else if (cut === 'blackhole') {
        // Keep both sides flowing so incoming bytes are read and discarded
        // rather than piling up behind a backpressure pause.
        link.client.resume();
        link.upstream?.resume();
      } else if (link.tainted) {
        this.#kill(link);
      }
    }
  }

  /** Resets both sides of a link; its 'close' handlers remove it from the set. */
  #kill(link: Link): void {
    hardClose(link.client);
    if (link.upstream !== null) hardClose(link.upstream);
  }

  #accept(client: net.Socket): void {
    // Attached first so no error can ever go unhandled.
    client.on('error', () => {});
    const source = normalizeIp(client.remoteAddress);
    const cut = this.#closing === undefined ? this.#cutFor(source) : 'reset';
    if (cut === 'reset') {
      // Accept, then reset at once: the client sees ECONNRESET / closed.
      hardClose(client);
      return;
    }
    client.setNoDelay(true);

    let upstream: net.Socket | null = null;
    if (cut !== 'blackhole') {
      upstream = net.connect({ host: this.#targetHost, port: this.#targetPort, allowHalfOpen: true });
      upstream.on('error', () => {});
      upstream.setNoDelay(true);
    }

    const link: Link = {
      source,
      client,
      upstream,
      // Opened during a blackhole: never forwarded, so dead on heal.
      tainted: upstream === null,
      closed: Promise.all([whenClosed(client), upstream === null ? undefined : whenClosed(upstream)]).then(
        () => undefined,
      ),
    };
    this.#links.add(link);
    void link.closed.then(() => this.#links.delete(link));

    if (upstream === null) {
      // Blackholed from the start: read and discard everything.
      client.on('data', () => {});
      client.on('end', () => {});
      client.on('close', () => this.#kill(link));
      return;
    }

    this.#pump(link, client, upstream);
    this.#pump(link, upstream, client);
    // Upstream connect failure surfaces as an error + close on `upstream`,
    // which the close handler below turns into destroying the client.
  }

  /**
   * Forwards `src` to `dst` with backpressure (pause `src` while `dst` is
   * full), dropping bytes and FIN while the link's source is blackholed.
   * Equivalent to `src.pipe(dst)`, but with a per-chunk blackhole check that a
   * bare pipe cannot offer.
   */
  #pump(link: Link, src: net.Socket, dst: net.Socket): void {
    src.on('data', (chunk: Buffer) => {
      if (this.#cutFor(link.source) !== undefined) {
        link.tainted = true;
        return;
      }
      if (dst.destroyed) return;
      if (!dst.write(chunk)) {
        src.pause();
        dst.once('drain', () => src.resume());
      }
    });
    src.on('end', () => {
      if (this.#cutFor(link.source) !== undefined) {
        link.tainted = true;
        return;
      }
      if (!dst.destroyed) dst.end();
    });
    src.on('close', (hadError: boolean) => {
      if (dst.destroyed) return;
      if (this.#cutFor(link.source) !== undefined) {
        // Blackholed: the other side must not learn about it; the link dies
        // on heal (or on close()).
        link.tainted = true;
        return;
      }
      if (hadError || !src.readableEnded) {
        // Error, reset or an aborted stream: tear the other side down too.
        hardClose(dst);
      } else {
        // Clean close: `src` sent its FIN (already forwarded) and got ours;
        // let `dst` flush what it still has buffered, then finish.
        dst.end();
      }
    });
  }
}
