/**
 * A mesh of real processes on loopback for tests, the chaos script and the benchmark.
 * Every process gets its own loopback IP (coordinators 127.0.0.2+, counter i 127.0.0.(10+i)) and
 * every connection to a counter goes through that counter's FaultProxy (127.0.1.(10+i)), so faults
 * are injected from outside: the product carries no test switches.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { tsxLoaderUrl } from '../../src/shared/tsx-loader.ts';
import { FaultProxy, type Cut } from './fault-proxy.ts';
import { waitFor } from '../../src/shared/wait.ts';
import { shardOf } from '../../src/shared/placement.ts';
import https from 'node:https';
import type { CertSet } from './certs.ts';

const MAIN = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));
const TSX_LOADER = tsxLoaderUrl();

/**
 * How a mesh process runs the CLI: through tsx, or, when the test runner (tools/test/run.ts) has
 * bundled it into the file COUNTER_MESH_TEST_BUILD names, as plain JavaScript, which starts in about a quarter of the CPU.
 */
function cliEntry(): string[] {
  const built = process.env.COUNTER_MESH_TEST_BUILD;
  return built ? [built] : ['--import', TSX_LOADER, MAIN];
}

export async function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** One child process of the mesh; keeps the tail of its output for failure reports. */
export class MeshProcess {
  proc: ChildProcess | null = null;
  readonly output: string[] = [];
  exits = 0;

  constructor(readonly name: string, readonly command: 'counter' | 'coordinator', public env: Record<string, string>) {}

  start(): void {
    const proc = spawn(process.execPath, [...cliEntry(), this.command], {
      env: { ...process.env, ...this.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc = proc;
    const keep = (chunk: Buffer) => {
      for (const line of chunk.toString().split('\n')) if (line) this.output.push(line);
      if (this.output.length > 400) this.output.splice(0, this.output.length - 400);
    };
    proc.stdout!.on('data', keep);
    proc.stderr!.on('data', keep);
    proc.once('exit', () => {
      this.exits++;
      if (this.proc === proc) this.proc = null;
    });
  }

  get running(): boolean {
    return this.proc !== null;
  }

  /** Sends the signal and waits for the exit. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    await this.stop(signal);
  }

  /** Sends the signal and resolves with how the process ended (null if it was not running). */
  stop(signal: NodeJS.Signals): Promise<ExitStatus | null> {
    const proc = this.proc;
    if (!proc) return Promise.resolve(null);
    const exited = new Promise<ExitStatus>((r) => proc.once('exit', (code, sig) => r({ code, signal: sig })));
    proc.kill(signal);
    return exited;
  }

  tail(n = 30): string {
    return this.output.slice(-n).join('\n');
  }
}

export interface CounterNode {
  index: number;
  id: string;
  host: string;
  port: number;
  dataDir: string;
  proxy: FaultProxy;
  process: MeshProcess;
}

export interface MeshOptions {
  counters: number;
  coordinators?: number;
  /** Extra environment for every process. */
  env?: Record<string, string>;
  logLevel?: string;
  /**
   * Every process listens and dials with these certificates (TLS_CERT, TLS_KEY, TLS_CA); the
   * harness's own requests then use https with the same CA (and the certificate as client
   * certificate, which counters with TLS_CLIENT_AUTH=require ask for).
   */
  tls?: CertSet & { clientAuth?: boolean };
  /** CLUSTER_SECRET of every process (random by default). */
  secret?: string;
}

/** The part of fetch's Response the harness reads. */
export interface SimpleResponse {
  ok: boolean;
  status: number;
  text(): Promise<string>;
  json(): Promise<unknown>;
  arrayBuffer(): Promise<unknown>;
}

export interface HttpsResponse extends SimpleResponse {
  headers: Record<string, string | string[] | undefined>;
}

/** One HTTPS request with our own CA and client certificate (Node 20's fetch cannot take a CA). */
export function httpsRequest(url: string, certs: CertSet, init: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<HttpsResponse> {
  return new Promise((resolve, reject) => {
    const req = https.request(url, {
      method: init.method ?? 'GET',
      headers: init.headers,
      ca: fs.readFileSync(certs.ca),
      cert: fs.readFileSync(certs.cert),
      key: fs.readFileSync(certs.key),
      agent: false,
    });
    req.setTimeout(10_000, () => req.destroy(new Error(`no answer from ${url} in 10 s`)));
    req.once('error', reject);
    req.once('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.once('error', reject);
      res.once('end', () => {
        const text = Buffer.concat(chunks).toString();
        const status = res.statusCode ?? 0;
        resolve({ ok: status >= 200 && status < 300, status, headers: res.headers, text: async () => text, json: async () => JSON.parse(text) as unknown, arrayBuffer: async () => text });
      });
    });
    req.end(init.body);
  });
}

export class Mesh {
  /** What processes get as CLUSTER_SECRET and the harness sends; a rotation test changes it between steps. */
  secret: string;
  readonly counters: CounterNode[] = [];
  readonly coordinators: { host: string; port: number; process: MeshProcess }[] = [];
  private readonly root: string;

  private constructor(private readonly opts: MeshOptions) {
    this.secret = opts.secret ?? randomBytes(16).toString('hex');
    this.root = fs.mkdtempSync(path.join(os.tmpdir(), 'cm-'));
  }

  /** Starts counters then coordinators and waits until each counter is ready and each coordinator sees all. */
  static async start(opts: MeshOptions): Promise<Mesh> {
    const mesh = new Mesh(opts);
    try {
      for (let i = 0; i < opts.counters; i++) await mesh.addCounterNode();
      for (const c of mesh.counters) mesh.configureCounter(c, mesh.counters.filter((o) => o !== c));
      for (const c of mesh.counters) c.process.start();
      await Promise.all(Array.from({ length: opts.coordinators ?? 1 }, () => mesh.addCoordinator()));
      await mesh.waitReady();
      return mesh;
    } catch (err) {
      await mesh.close();
      throw err;
    }
  }

  get baseEnv(): Record<string, string> {
    return {
      CLUSTER_SECRET: this.secret,
      LOG_LEVEL: this.opts.logLevel ?? 'warn',
      HEARTBEAT_MS: '500',
      ANTI_ENTROPY_MS: '1000',
      RECONNECT_MAX_MS: '400',
      COUNTER_TIMEOUT_MS: '1500',
      ...(this.opts.tls
        ? { TLS_CERT: this.opts.tls.cert, TLS_KEY: this.opts.tls.key, TLS_CA: this.opts.tls.ca, TLS_CLIENT_AUTH: this.opts.tls.clientAuth ? 'require' : '' }
        : {}),
      ...this.opts.env,
    };
  }

  /** Allocates a counter (addresses, proxy, data folder) without starting it. */
  async addCounterNode(): Promise<CounterNode> {
    const index = this.counters.length;
    const host = `127.0.0.${10 + index}`;
    const port = await freePort(host);
    const proxy = await FaultProxy.start({ listenHost: `127.0.1.${10 + index}`, listenPort: 0, targetHost: host, targetPort: port });
    const dataDir = path.join(this.root, `c${index}`);
    const node: CounterNode = { index, id: `c${index}`, host, port, dataDir, proxy, process: new MeshProcess(`c${index}`, 'counter', {}) };
    this.counters.push(node);
    return node;
  }

  /** Sets a counter's environment; `peers` are reached through their proxies. */
  configureCounter(c: CounterNode, peers: CounterNode[]): void {
    c.process.env = {
      ...this.baseEnv,
      HOST: c.host,
      COUNTER_PORT: String(c.port),
      COUNTER_ID: c.id,
      DATA_DIR: c.dataDir,
      ADVERTISE_ADDRESS: c.proxy.address,
      PEERS: peers.map((p) => p.proxy.address).join(','),
    };
  }

  async addCoordinator(counters = this.counters): Promise<{ host: string; port: number; process: MeshProcess }> {
    // the index (and so the address) is taken before the first await: Mesh.start adds several at once
    const index = this.coordinators.length;
    const host = `127.0.0.${2 + index}`;
    const coord = { host, port: 0, process: new MeshProcess(`coordinator${index}`, 'coordinator', {}) };
    this.coordinators.push(coord);
    coord.port = await freePort(host);
    coord.process.env = {
      ...this.baseEnv,
      HOST: host,
      HTTP_PORT: String(coord.port),
      COUNTERS: counters.map((c) => c.proxy.address).join(','),
    };
    coord.process.start();
    await waitFor(async () => (await this.call(`${this.scheme}://${host}:${coord.port}/health`)).ok, 20_000, `${coord.process.name} health`);
    return coord;
  }

  /** `https` when the mesh runs with TLS. */
  get scheme(): string {
    return this.opts.tls ? 'https' : 'http';
  }

  /** fetch, or {@link httpsRequest} with the mesh's certificates when it runs with TLS. */
  call(url: string, init: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<SimpleResponse> {
    if (this.opts.tls) return httpsRequest(url, this.opts.tls, init);
    return fetch(url, init);
  }

  url(p: string, coordinator = 0): string {
    const c = this.coordinators[coordinator]!;
    return `${this.scheme}://${c.host}:${c.port}${p}`;
  }

  /** POSTs items through a coordinator; returns the HTTP status. */
  async post(items: { id: string; tenant: string }[] | { id: string; tenant: string }, coordinator = 0): Promise<number> {
    const res = await this.call(this.url('/items', coordinator), { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(items) });
    await res.arrayBuffer();
    return res.status;
  }

  async count(tenant: string, coordinator = 0): Promise<number> {
    const res = await this.call(this.url(`/items/${encodeURIComponent(tenant)}/count`, coordinator));
    const body = (await res.json()) as { count?: number; message?: string };
    if (!res.ok) throw new Error(`count ${tenant}: ${res.status} ${body.message}`);
    return body.count!;
  }

  /** A counter's own count, asked directly (not through its proxy). */
  async counterCount(c: CounterNode, tenant: string): Promise<number> {
    const res = await this.call(`${this.scheme}://${c.host}:${c.port}/items/${encodeURIComponent(tenant)}/count`, { headers: { authorization: `Bearer ${this.secret}` } });
    const body = (await res.json()) as { count?: number; message?: string };
    if (!res.ok) throw new Error(`${c.id} count ${tenant}: ${res.status} ${body.message}`);
    return body.count!;
  }

  /**
   * Ready, and serving every shard it holds: a restarted or new counter catches its shards up
   * after it reports ready, and answers 503 for those meanwhile.
   */
  async counterReady(c: CounterNode): Promise<boolean> {
    try {
      const auth = { headers: { authorization: `Bearer ${this.secret}` } };
      if (!(await this.call(`${this.scheme}://${c.host}:${c.port}/ready`, auth)).ok) return false;
      const st = (await (await this.call(`${this.scheme}://${c.host}:${c.port}/status`, auth)).json()) as { held?: number[]; serving?: number[] };
      return st.held?.length === st.serving?.length;
    } catch {
      return false;
    }
  }

  /** The counter's status (GET /status), or null when it does not answer. */
  async counterStatus(c: CounterNode): Promise<{ held?: number[]; serving?: number[]; shards?: number } | null> {
    try {
      const res = await this.call(`${this.scheme}://${c.host}:${c.port}/status`, { headers: { authorization: `Bearer ${this.secret}` } });
      return res.ok ? ((await res.json()) as { held?: number[]; serving?: number[]; shards?: number }) : null;
    } catch {
      return null;
    }
  }

  /** Waits until every running counter is ready and every coordinator is ready. */
  async waitReady(timeoutMs = 30_000): Promise<void> {
    for (const c of this.counters) if (c.process.running) await waitFor(() => this.counterReady(c), timeoutMs, `${c.id} ready\n${c.process.tail()}`);
    for (let i = 0; i < this.coordinators.length; i++) {
      await waitFor(async () => {
        const res = await this.call(this.url('/counters', i));
        const list = (await res.json()) as { ready: boolean }[];
        return list.filter((x) => x.ready).length >= this.counters.filter((c) => c.process.running).length;
      }, timeoutMs, `coordinator ${i} sees the running counters`);
    }
  }

  /** Waits until every running counter serving a tenant's shard counts `expected` for it. */
  async waitConverged(expected: Map<string, number>, timeoutMs = 20_000): Promise<void> {
    for (const c of this.counters) {
      if (!c.process.running) continue;
      for (const [tenant, n] of expected) {
        // asked each time: a shard may move away while we wait (a counter joined)
        const holdsIt = async () => {
          const st = await this.counterStatus(c);
          return !st?.held || !st.shards || st.held.includes(shardOf(tenant, st.shards));
        };
        await waitFor(async () => !(await holdsIt()) || (await this.counterCount(c, tenant)) === n, timeoutMs, `${c.id} to count ${n} for ${tenant} (has ${await this.counterCount(c, tenant).catch((e: Error) => e.message)})`);
      }
    }
  }

  async restartCounter(c: CounterNode): Promise<void> {
    c.process.start();
    await waitFor(() => this.counterReady(c), 30_000, `${c.id} ready after restart\n${c.process.tail()}`);
  }

  /** Cuts every link between the two sides (counter ↔ counter), both directions. */
  partition(a: CounterNode[], b: CounterNode[], kind: Cut = 'reset'): void {
    for (const x of a) x.proxy.cut(kind, b.map((y) => y.host));
    for (const y of b) y.proxy.cut(kind, a.map((x) => x.host));
  }

  /** Cuts a coordinator off a counter. */
  isolateFromCoordinator(c: CounterNode, kind: Cut = 'reset', coordinator = 0): void {
    c.proxy.cut(kind, [this.coordinators[coordinator]!.host]);
  }

  heal(): void {
    for (const c of this.counters) c.proxy.heal();
  }

  async close(): Promise<void> {
    await Promise.all([...this.coordinators.map((c) => c.process.kill('SIGKILL')), ...this.counters.map((c) => c.process.kill('SIGKILL'))]);
    await Promise.all(this.counters.map((c) => c.proxy.close()));
    fs.rmSync(this.root, { recursive: true, force: true });
  }
}
