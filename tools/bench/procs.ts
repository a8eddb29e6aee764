/**
 * Child processes for the benchmark: mesh processes spawned with extra Node flags (MeshProcess
 * cannot take any), readiness and status polling, and memory readings from outside the process
 * (/proc/<pid>/status for RSS, the V8 inspector for the heap).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { waitFor } from '../../src/shared/wait.ts';
import { httpsRequest, type SimpleResponse } from '../../test/support/mesh.ts';
import type { CertSet } from '../../test/support/certs.ts';
import { placeShards } from '../../src/shared/placement.ts';

export const MAIN = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));

/**
 * How a process runs the CLI: as the plain JavaScript bundle in the file COUNTER_MESH_TEST_BUILD
 * names (the benchmark makes one at start, as the test runner does: the product as `npm start`
 * and the image run it), else through tsx. Scripts (.ts) keep tsx.
 */
function entry(command: string): string[] {
  if (command.endsWith('.ts')) return ['--import', 'tsx', command];
  const built = process.env.COUNTER_MESH_TEST_BUILD;
  return built ? [built, command] : ['--import', 'tsx', MAIN, command];
}

/** A Node child running `counter-mesh <command>` (or any script) under tsx, with extra Node flags. */
export class NodeProc {
  proc: ChildProcess | null = null;
  readonly output: string[] = [];
  /** performance.now() at the last spawn. */
  startedAt = 0;
  /** Output lines matching `watch`, kept whole (the tail in `output` is bounded). */
  readonly watched: string[] = [];
  watch: RegExp | null = null;

  constructor(
    readonly name: string,
    /** 'counter' | 'coordinator', or the path of a script to run instead of the CLI. */
    readonly command: string,
    public env: Record<string, string>,
    public nodeArgs: string[] = [],
  ) {}

  start(): void {
    const proc = spawn(process.execPath, [...this.nodeArgs, ...entry(this.command)], {
      env: { ...process.env, ...this.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.startedAt = performance.now();
    this.proc = proc;
    const keep = (chunk: Buffer) => {
      for (const line of chunk.toString().split('\n')) {
        if (!line) continue;
        this.output.push(line);
        if (this.watch?.test(line)) this.watched.push(line);
      }
      if (this.output.length > 400) this.output.splice(0, this.output.length - 400);
    };
    proc.stdout!.on('data', keep);
    proc.stderr!.on('data', keep);
    proc.once('exit', () => {
      if (this.proc === proc) this.proc = null;
    });
  }

  get pid(): number {
    const pid = this.proc?.pid;
    if (pid === undefined) throw new Error(`${this.name} is not running\n${this.tail()}`);
    return pid;
  }

  get running(): boolean {
    return this.proc !== null;
  }

  /** Sends the signal and waits for the exit (SIGKILL after `graceMs` if it lingers). */
  async kill(signal: NodeJS.Signals = 'SIGKILL', graceMs = 15_000): Promise<void> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise<void>((r) => proc.once('exit', () => r()));
    proc.kill(signal);
    const timer = setTimeout(() => proc.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(timer);
  }

  /** Waits for an output line matching `re` and returns its match. */
  async waitForLine(re: RegExp, timeoutMs = 20_000): Promise<RegExpExecArray> {
    return waitFor(() => {
      for (const line of this.output) {
        const m = re.exec(line);
        if (m) return m;
      }
      if (!this.running) throw new Error(`${this.name} exited`);
      return null;
    }, timeoutMs, `${this.name} to print ${re}\n${this.tail()}`, 10);
  }

  tail(n = 30): string {
    return this.output.slice(-n).join('\n');
  }
}

/** VmRSS of a process in bytes. */
export function rssBytes(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}

/**
 * The process's proportional set size: its private pages plus its share of pages mapped by
 * several processes (the node binary, shared libraries). Summed over processes, the physical
 * memory they use together, where summed RSS counts every shared page once per process.
 */
export function pssBytes(pid: number): number {
  const rollup = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const m = /^Pss:\s+(\d+)\s+kB/m.exec(rollup);
  if (!m) throw new Error(`no Pss for pid ${pid}`);
  return Number(m[1]) * 1024;
}

export interface CounterStatus {
  id: string;
  ready: boolean;
  items: number;
  members: { id: string; address: string }[];
  shards: number;
  factor: number;
  /** Members shards are placed over (not removed). */
  placed: string[];
  /** Shards held here, serving or catching up. */
  held: number[];
  serving: number[];
}

/**
 * The shards placed on this counter by the member list it knows. Empty until that list is known
 * (a counter that has not heard from a peer yet places nothing).
 */
export function placedOn(s: CounterStatus): number[] {
  if (s.placed.length === 0) return [];
  return placeShards(s.shards, s.placed, s.factor).flatMap((replicas, shard) => (replicas.includes(s.id) ? [shard] : []));
}

/**
 * Ready and serving exactly the shards placed on it: /ready alone says the counter loaded its data
 * and knows the member list, not that it created and caught up every shard it holds (those answer
 * 503 meanwhile).
 */
export function servesPlaced(s: CounterStatus): boolean {
  const placed = placedOn(s);
  return s.ready && placed.length > 0 && sameList(s.held, placed) && sameList(s.serving, placed);
}

function sameList(a: readonly number[], b: readonly number[]): boolean {
  if (a.length !== b.length) return false;
  const set = new Set(a);
  return b.every((x) => set.has(x));
}

/** A counter reached on its real address (not through a proxy). */
export class CounterEndpoint {
  /** With `tls`, the counter listens with TLS and is asked over https with that CA. */
  constructor(readonly host: string, readonly port: number, private readonly secret: string, private readonly tls?: CertSet) {}

  private get(p: string): Promise<SimpleResponse> {
    if (this.tls) return httpsRequest(`https://${this.address}${p}`, this.tls, { headers: this.headers });
    return fetch(`http://${this.address}${p}`, { headers: this.headers });
  }

  get address(): string {
    return `${this.host}:${this.port}`;
  }

  private get headers(): Record<string, string> {
    return { authorization: `Bearer ${this.secret}` };
  }

  async status(): Promise<CounterStatus> {
    const res = await this.get('/status');
    if (!res.ok) throw new Error(`${this.address} /status: ${res.status}`);
    return (await res.json()) as CounterStatus;
  }

  /** Ready and serving every shard placed on it (see servesPlaced); false when it does not answer. */
  async serving(): Promise<boolean> {
    try {
      return servesPlaced(await this.status());
    } catch {
      return false;
    }
  }

  async ready(): Promise<boolean> {
    try {
      const res = await this.get('/ready');
      await res.arrayBuffer();
      return res.ok;
    } catch {
      return false;
    }
  }

  async count(tenant: string): Promise<number> {
    const res = await this.get(`/items/${encodeURIComponent(tenant)}/count`);
    const body = (await res.json()) as { count?: number };
    if (!res.ok || typeof body.count !== 'number') throw new Error(`${this.address} count: ${res.status}`);
    return body.count;
  }
}

/** Items held by each counter, asked concurrently; a counter that does not answer counts -1. */
export async function itemsOf(counters: readonly CounterEndpoint[]): Promise<number[]> {
  return Promise.all(counters.map((c) => c.status().then((s) => s.items, () => -1)));
}

/**
 * Polls until every counter holds at least `expected` items; returns performance.now() at the poll
 * that saw it. Polls every `intervalMs`.
 */
export async function waitAllHold(counters: readonly CounterEndpoint[], expected: number, timeoutMs: number, intervalMs = 10): Promise<number> {
  const deadline = performance.now() + timeoutMs;
  let last: number[] = [];
  for (;;) {
    last = await itemsOf(counters);
    const now = performance.now();
    if (last.every((n) => n >= expected)) return now;
    if (now > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for every counter to hold ${expected} items (they hold ${last.join(', ')})`);
    await sleep(intervalMs);
  }
}

/** Waits until every counter holds the same number of items on two polls in a row; returns it. */
export async function waitSettled(counters: readonly CounterEndpoint[], timeoutMs: number): Promise<number> {
  const deadline = performance.now() + timeoutMs;
  let prev = '';
  for (;;) {
    const items = await itemsOf(counters);
    const key = items.join(',');
    if (items[0]! >= 0 && items.every((n) => n === items[0]) && key === prev) return items[0]!;
    prev = key;
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for the counters to agree (they hold ${key})`);
    await sleep(50);
  }
}

/** CPU time (user + system) a process has used, in seconds; 0 once it is gone. */
function cpuSeconds(pid: number): number {
  let stat: string;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return 0;
  }
  // fields after the command name (which may hold spaces): utime and stime are the 12th and 13th
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_S;
}
const CLOCK_TICKS_PER_S = 100;

/**
 * Waits until the processes together use less than `maxCores` over a `windowMs` window (at most
 * `timeoutMs`) and returns how long that took. Every throughput round starts on a quiet machine:
 * without it, the mesh's backlog from its own round (gossip, fsyncs, compaction, GC) ran during
 * the next ceiling round and lowered the ceiling.
 */
export async function waitQuiet(pids: readonly number[], timeoutMs: number, maxCores = 0.1, windowMs = 300): Promise<number> {
  const t0 = performance.now();
  for (;;) {
    const before = pids.reduce((s, pid) => s + cpuSeconds(pid), 0);
    await sleep(windowMs);
    const used = pids.reduce((s, pid) => s + cpuSeconds(pid), 0) - before;
    if (used / (windowMs / 1000) < maxCores || performance.now() - t0 > timeoutMs) return performance.now() - t0;
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * A Chrome DevTools Protocol session with a process started with `--inspect=host:0`: forces a full
 * GC and reads process.memoryUsage() from inside the real process, without changing its code.
 */
export class Inspector {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();

  private constructor(private readonly ws: WebSocket) {
    ws.on('message', (data) => {
      const msg = JSON.parse(String(data)) as { id?: number; result?: unknown; error?: { message: string } };
      if (msg.id === undefined) return;
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      if (msg.error) p.reject(new Error(msg.error.message));
      else p.resolve(msg.result);
    });
  }

  /** Connects to the inspector URL the process printed ("Debugger listening on ws://..."). */
  static async attach(proc: NodeProc): Promise<Inspector> {
    const m = await proc.waitForLine(/Debugger listening on (ws:\/\/\S+)/);
    const ws = new WebSocket(m[1]!, { perMessageDeflate: false, maxPayload: 256 * 1024 * 1024 });
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    return new Inspector(ws);
  }

  call(method: string, params: object = {}): Promise<unknown> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ id, method, params }));
    });
  }

  async gc(): Promise<void> {
    await this.call('HeapProfiler.collectGarbage');
    await this.call('HeapProfiler.collectGarbage');
  }

  async memoryUsage(): Promise<NodeJS.MemoryUsage> {
    const r = (await this.call('Runtime.evaluate', { expression: 'JSON.stringify(process.memoryUsage())', returnByValue: true })) as {
      result: { value?: string };
      exceptionDetails?: { text: string };
    };
    if (r.exceptionDetails || typeof r.result.value !== 'string') throw new Error(`could not read memoryUsage: ${r.exceptionDetails?.text ?? 'no value'}`);
    return JSON.parse(r.result.value) as NodeJS.MemoryUsage;
  }

  close(): void {
    this.ws.close();
  }
}
