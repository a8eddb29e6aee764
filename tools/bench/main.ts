/**
 * `npm run bench`: measures the product against a do-nothing fastify ceiling.
 *
 * One run starts, on loopback, a mesh (coordinator + 3 counters, product default settings,
 * acknowledgments after fsync) and a ceiling server in a child process, drives both with
 * autocannon (every request carries fresh item ids), then measures memory, restart, catch-up and
 * partition healing on counters of its own. Prints a table with the targets and, with --out,
 * writes the figures as JSON (keys: post_single, post_batch, get_count, post_single_tls,
 * get_count_tls (the same two over HTTPS, TLS on every socket), memory, restart, catch_up,
 * partition_heal, and the sharded figures of scale.ts: scale, join, restart.ms_20m, compaction;
 * machine).
 *
 * Sizes: --smoke (about a minute, tiny sizes, used by test/bench.test.ts), --quick (about 1-2 minutes,
 * 100,000 items), default full run (about 3-5 minutes, 1,000,000 items). Throughput figures are
 * medians of alternating mesh/ceiling rounds, so a noisy neighbour hits both sides alike.
 */
import autocannon from 'autocannon';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Mesh, freePort } from '../../test/support/mesh.ts';
import { makeTestCerts } from '../../test/support/certs.ts';
import { waitFor } from '../../src/shared/wait.ts';
import { SETTINGS } from '../../src/shared/config.ts';
import type { Item } from '../../src/protocol/messages.ts';
import { CounterEndpoint, Inspector, NodeProc, rssBytes, servesPlaced, sleep, waitAllHold, waitQuiet, waitSettled } from './procs.ts';
import { productEnv, startDirectMesh, waitMeshFormed, type MeshHandle } from './direct-mesh.ts';
import { TENANTS, TENANT_NAMES, fill, nextId, randomTenant, roundRobinCount } from './items.ts';
import { CounterClient, loadBatches } from './loader.ts';
import { formatProfile, summarizeProfile } from './profile.ts';
import { shardedFigures } from './scale.ts';
import { bundleForRun } from '../build.ts';
import { runIfScript } from '../script.ts';

const CEILING_SCRIPT = fileURLToPath(new URL('./ceiling.ts', import.meta.url));

const USAGE = `Usage: npm run bench -- [--smoke | --quick] [--out FILE] [options]

  --smoke              every figure for a few seconds at tiny sizes (no thresholds; used by the tests)
  --quick              about 1-2 minutes: 3 rounds of 3 s, 100,000 items for memory/restart/catch_up
  (default)            full run, about 3-5 minutes: 5 rounds of 5 s, 1,000,000 items
  --out FILE           also write the figures as JSON
  --items N            items for memory, restart and catch_up
  --per-side N         items written on each side of the partition (default 10,000)
  --scale-items N      items for scale (6 counters, factor 3): full 2,000,000, quick 200,000
  --join-items N       items for join, restart.ms_20m and compaction (3 counters, factor 3): full
                       20,000,000 (about 3 GiB RSS per counter), quick 1,000,000
  --rounds N           throughput rounds (the median is reported)
  --seconds S          length of one throughput round
  --batch-connections N  connections for the 1,000-item POSTs (default 10)
  --mesh direct|proxied|compare  direct (default): processes talk to each other straight; proxied:
                       every connection to a counter goes through its FaultProxy (examples/lib/mesh.ts);
                       compare: both meshes at once, alternating rounds, throughput only (no JSON)
  --ab KEY=VALUE       two direct meshes, the second started with that setting (e.g. METRICS=off),
                       alternating rounds of post_single, post_batch and get_count (or --only), throughput
                       only (no JSON): the cost of a setting, measured in the same minutes
  --only LIST          run only these figures, e.g. --only post_single,get_count (post_single_tls and
                       get_count_tls: the same over HTTPS to a mesh with TLS on every socket,
                       certificates made with openssl; ratio to the same plain ceiling)
  --profile DIR        instead of the figures: run the mesh under node --cpu-prof (coordinator and
                       counters), drive --profile-route (post_single, post_batch, get_count, or a _quorum one) for
                       --seconds (default 20), stop the processes and print the top self time
  --node-arg ARG       extra Node flag for the direct mesh's processes (repeatable), e.g. to try a
                       preloaded patch: --node-arg --import=./patch.mjs
  --check              exit 1 when a target is missed
`;

type Mode = 'smoke' | 'quick' | 'full';
const PROFILE_ROUTES = ['post_single', 'post_single_quorum', 'post_batch', 'get_count', 'get_count_quorum'] as const;
type ProfileRoute = (typeof PROFILE_ROUTES)[number];
/** 'scale' runs the sharded figures: scale, join, restart.ms_20m and compaction. */
type Figure = 'post_single' | 'post_single_quorum' | 'post_batch' | 'get_count' | 'get_count_quorum' | 'post_single_tls' | 'get_count_tls' | 'partition_heal' | 'memory' | 'scale';
const FIGURES: Figure[] = ['post_single', 'post_single_quorum', 'post_batch', 'get_count', 'get_count_quorum', 'post_single_tls', 'get_count_tls', 'partition_heal', 'memory', 'scale'];

interface Options {
  mode: Mode;
  out: string | null;
  items: number;
  perSide: number;
  scaleItems: number;
  joinItems: number;
  /** COMPACT_BYTES of the join mesh: the product default, but smaller in a smoke run so that its tiny shards compact. */
  joinCompactBytes: number;
  rounds: number;
  roundS: number;
  /**
   * A smoke run's rounds end after this many requests (single: the paired figures', batch:
   * post_batch's) instead of after roundS: each round then measures something however busy the
   * machine is (1 s rounds of 1,000-item batches or of new TLS connections completed none on a
   * loaded machine), and a quiet machine is done sooner. Null: rounds of roundS.
   */
  roundRequests: { single: number; batch: number } | null;
  warmupS: number;
  connections: number;
  batchConnections: number;
  batch: number;
  mesh: 'direct' | 'proxied' | 'compare';
  /** --ab KEY=VALUE: the setting the second mesh of a comparison starts with. */
  ab: [string, string] | null;
  only: Set<Figure>;
  profileDir: string | null;
  profileRoute: ProfileRoute;
  partitionHoldMs: number;
  check: boolean;
  nodeArgs: string[];
}

export interface Figures {
  post_single: { rps: number; p50_ms: number; p99_ms: number; ceiling_rps: number; ratio: number };
  /** post_single with `?w=quorum`: acknowledged once 2 of the 3 counters have each item on disk. */
  post_single_quorum: { rps: number; p50_ms: number; p99_ms: number; ceiling_rps: number; ratio: number };
  post_batch: { items_per_s: number; batch: number; replicated_ms: number };
  get_count: { rps: number; p50_ms: number; p99_ms: number; ceiling_rps: number; ratio: number };
  /** The same two routes over HTTPS, every mesh socket with TLS; ratio to the plain ceiling of the same rounds. */
  post_single_tls: { rps: number; p50_ms: number; p99_ms: number; ceiling_rps: number; ratio: number };
  get_count_tls: { rps: number; p50_ms: number; p99_ms: number; ceiling_rps: number; ratio: number };
  /** get_count with `?r=quorum`: 2 of the 3 counters asked, their tallies compared. */
  get_count_quorum: { rps: number; p50_ms: number; p99_ms: number; ceiling_rps: number; ratio: number };
  /** rss_bytes_per_item after a full GC on both readings; _no_gc as read right after the load, as an operator's `ps` would. */
  memory: { items: number; tenants: number; rss_bytes_per_item: number; rss_bytes_per_item_no_gc: number; heap_bytes_per_item: number | null };
  /** ms: the memory counter (alone, graceful stop); ms_20m: one counter of the join mesh, kill -9, until a sample of its tenants counts right. */
  restart: { items?: number; ms?: number; ms_20m?: number };
  /** 6 counters, factor 3: the largest counter's items / all items; RSS of all counters / all items, as found and after restart + full GC. */
  scale: { items: number; counters: number; items_per_counter_ratio: number; rss_bytes_per_item: number; rss_bytes_per_item_gc: number; pss_bytes_per_item: number };
  /** A fourth counter joining 3 (factor 3) that hold `items`: from spawn until it serves every shard placed on it. */
  join: { items: number; ms: number };
  /** POST p99 (post_single through the coordinator) over a round in which `compactions` shard compactions happened. */
  compaction: { items: number; post_p99_ms: number; compactions: number };
  catch_up: { items: number; ms: number };
  partition_heal: { items_per_side: number; ms: number };
  machine: { cpus: number; node: string; date: string };
}

class UsageError extends Error {}

function parseArgs(argv: string[]): Options | null {
  const mode: Mode = argv.includes('--smoke') ? 'smoke' : argv.includes('--quick') ? 'quick' : 'full';
  const o: Options = {
    mode,
    out: null,
    // smoke: enough items that memory's RSS growth (about 10 MB) stands out of RSS noise of a few MB;
    // at 20,000 the growth after a full GC once read negative
    items: { smoke: 50_000, quick: 100_000, full: 1_000_000 }[mode],
    perSide: mode === 'smoke' ? 2_000 : 10_000,
    scaleItems: { smoke: 20_000, quick: 200_000, full: 2_000_000 }[mode],
    joinItems: { smoke: 20_000, quick: 1_000_000, full: 20_000_000 }[mode],
    joinCompactBytes: mode === 'smoke' ? 64 * 64 * 1024 : Number(SETTINGS.COMPACT_BYTES),
    rounds: { smoke: 1, quick: 3, full: 5 }[mode],
    roundS: { smoke: 1, quick: 3, full: 5 }[mode],
    roundRequests: mode === 'smoke' ? { single: 500, batch: 20 } : null,
    warmupS: { smoke: 0.2, quick: 1, full: 2 }[mode],
    connections: 50,
    batchConnections: 10,
    batch: 1000,
    mesh: 'direct',
    ab: null,
    only: new Set(FIGURES),
    profileDir: null,
    profileRoute: 'post_single',
    partitionHoldMs: mode === 'smoke' ? 500 : 3000,
    check: false,
    nodeArgs: [],
  };
  let secondsGiven = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined || v.startsWith('--')) throw new UsageError(`${a} needs a value`);
      return v;
    };
    const int = (min: number): number => {
      const v = Number(value().replace(/[_,]/g, ''));
      if (!Number.isSafeInteger(v) || v < min) throw new UsageError(`${a} needs a whole number >= ${min}`);
      return v;
    };
    switch (a) {
      case '--smoke':
      case '--quick':
        break;
      case '--help':
      case '-h':
        return null;
      case '--out':
        o.out = value();
        break;
      case '--items':
        o.items = int(1000);
        break;
      case '--per-side':
        o.perSide = int(1);
        break;
      case '--scale-items':
        o.scaleItems = int(1000);
        break;
      case '--join-items':
        o.joinItems = int(1000);
        break;
      case '--rounds':
        o.rounds = int(1);
        break;
      case '--seconds': {
        const v = Number(value());
        if (!(v > 0)) throw new UsageError('--seconds needs a positive number');
        o.roundS = v;
        o.roundRequests = null;
        secondsGiven = true;
        break;
      }
      case '--batch-connections':
        o.batchConnections = int(1);
        break;
      case '--mesh': {
        const v = value();
        if (v !== 'direct' && v !== 'proxied' && v !== 'compare') throw new UsageError('--mesh is direct, proxied or compare');
        o.mesh = v;
        break;
      }
      case '--ab': {
        const m = /^([A-Z][A-Z0-9_]*)=(.*)$/.exec(value());
        if (!m) throw new UsageError('--ab takes KEY=VALUE, e.g. --ab METRICS=off');
        o.ab = [m[1]!, m[2]!];
        break;
      }
      case '--only': {
        const list = value().split(',').map((s) => s.trim());
        for (const f of list) if (!FIGURES.includes(f as Figure)) throw new UsageError(`--only: unknown figure ${f} (${FIGURES.join(', ')})`);
        o.only = new Set(list as Figure[]);
        break;
      }
      case '--profile':
        o.profileDir = path.resolve(value());
        break;
      case '--profile-route': {
        const v = value();
        if (!PROFILE_ROUTES.includes(v as ProfileRoute)) throw new UsageError(`--profile-route is one of ${PROFILE_ROUTES.join(', ')}`);
        o.profileRoute = v as ProfileRoute;
        break;
      }
      case '--check':
        o.check = true;
        break;
      case '--node-arg': {
        const v = argv[++i];
        if (v === undefined) throw new UsageError('--node-arg needs a value');
        o.nodeArgs.push(v);
        break;
      }
      default:
        throw new UsageError(`unknown option ${a}`);
    }
  }
  if (o.profileDir && !secondsGiven) o.roundS = 20;
  return o;
}


// ---------------------------------------------------------------------------------------------
// load

interface Round {
  rps: number;
  p50: number;
  p99: number;
  ok: number;
  non2xx: number;
  errors: number;
  /** performance.now() of the last 2xx (only when tracked). */
  lastOkAt: number;
  /** CPU the driver (this process: autocannon) used, in cores. */
  driverCores: number;
}

/**
 * Single-item requests and count reads are a fixed list of requests built once (tenants drawn at
 * random), each connection cycling through it: autocannon then sends prebuilt buffers, as an
 * operator's own load tool would. A `setupRequest` per request made the driver cost more than the
 * ceiling server itself and so lowered the ceiling (the ratios looked better than an independent
 * measurement found). POST bodies get a fresh id per request from autocannon's `[<id>]`.
 */
const LOAD_VARIANTS = 64;

function postSingleRequest(query = ''): autocannon.Request[] {
  return Array.from({ length: LOAD_VARIANTS }, () => ({
    method: 'POST' as const,
    path: `/items${query}`,
    headers: { 'content-type': 'application/json' },
    body: `{"id":"[<id>]","tenant":"${randomTenant()}"}`,
  }));
}

function postBatchRequest(batch: number): autocannon.Request {
  return {
    method: 'POST',
    path: '/items',
    headers: { 'content-type': 'application/json' },
    setupRequest: (req) => {
      const items: Item[] = new Array(batch);
      for (let j = 0; j < batch; j++) items[j] = { id: nextId(), tenant: randomTenant() };
      return { ...req, body: JSON.stringify(items) };
    },
  };
}

function getCountRequest(query = ''): autocannon.Request[] {
  return Array.from({ length: LOAD_VARIANTS }, () => ({ method: 'GET' as const, path: `/items/${randomTenant()}/count${query}` }));
}

/** Load for `seconds`, or, given `requests`, until that many are answered (at most REQUESTS_ROUND_MAX_S). */
async function drive(url: string, connections: number, seconds: number, request: autocannon.Request | autocannon.Request[], track = false, requests?: number): Promise<Round> {
  let lastOkAt = 0;
  const onResponse = (status: number) => {
    if (status >= 200 && status < 300) lastOkAt = performance.now();
  };
  const list = (Array.isArray(request) ? request : [request]).map((r) => (track ? { ...r, onResponse } : r));
  const idReplacement = list.some((r) => typeof r.body === 'string' && r.body.includes('[<id>]'));
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  // autocannon stops on a sample tick (every second by default): a 0.2 s warm-up would last 1 s
  const sampleInt = requests !== undefined || !Number.isInteger(seconds) ? 100 : 1000;
  const opts = { url, connections, ...(requests !== undefined ? { amount: requests } : { duration: seconds }), sampleInt, requests: list, timeout: 10, idReplacement };
  let bound: NodeJS.Timeout | undefined;
  const r = await new Promise<autocannon.Result>((resolve, reject) => {
    const run = autocannon(opts, (err, result) => (err ? reject(err) : resolve(result)));
    if (requests !== undefined) bound = setTimeout(() => run.stop(), REQUESTS_ROUND_MAX_S * 1000);
  }).finally(() => clearTimeout(bound));
  const cpu = process.cpuUsage(cpu0);
  const driverCores = (cpu.user + cpu.system) / 1000 / (performance.now() - t0);
  return { rps: r['2xx'] / r.duration, p50: r.latency.p50, p99: r.latency.p99, ok: r['2xx'], non2xx: r.non2xx, errors: r.errors, lastOkAt, driverCores };
}

/** The longest a round of a number of requests goes on (a mesh that stopped answering). */
const REQUESTS_ROUND_MAX_S = 60;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

// ---------------------------------------------------------------------------------------------
// meshes

/** The test-harness mesh: every connection to a counter goes through that counter's FaultProxy. */
async function startProxiedMesh(n: number): Promise<{ handle: MeshHandle; mesh: Mesh }> {
  const mesh = await Mesh.start({ counters: n, env: productEnv(), logLevel: 'warn' });
  const counters = mesh.counters.map((c) => new CounterEndpoint(c.host, c.port, mesh.secret));
  const procs = [mesh.coordinators[0]!.process, ...mesh.counters.map((c) => c.process)];
  const handle: MeshHandle = {
    url: mesh.url(''),
    counters,
    procs: procs.map((p) => ({
      name: p.name,
      pid: () => {
        const pid = p.proc?.pid;
        if (pid === undefined) throw new Error(`${p.name} is not running`);
        return pid;
      },
      startedAt: () => NaN,
      stop: (s) => p.kill(s),
    })),
    compactions: () => [],
    close: () => mesh.close(),
  };
  try {
    await waitMeshFormed(handle.url, counters);
  } catch (err) {
    await mesh.close();
    throw err;
  }
  return { handle, mesh };
}

// ---------------------------------------------------------------------------------------------
// figures

type Say = (line: string) => void;

interface Paired {
  mesh: { rps: number; p50: number; p99: number };
  ceiling: { rps: number };
  rounds: Round[];
}

/** The longest wait for a quiet machine before a throughput round (a smoke run does not wait). */
const QUIET_TIMEOUT_MS = 30_000;

/** Waits for a quiet machine before a throughput round (not in a smoke run), saying when it never came. */
async function quietBeforeRound(o: Options, pids: number[], say: Say): Promise<void> {
  if (o.mode === 'smoke') return;
  const waited = await waitQuiet(pids, QUIET_TIMEOUT_MS);
  if (waited >= QUIET_TIMEOUT_MS) say(`  (the processes were still busy after ${QUIET_TIMEOUT_MS / 1000} s; round started anyway)`);
}

/** Alternates ceiling and mesh rounds (order flipped every round); medians of each. */
async function paired(o: Options, meshUrl: string, ceilingUrl: string, request: () => autocannon.Request | autocannon.Request[], say: Say, what: string, pids: () => number[]): Promise<Paired> {
  await drive(ceilingUrl, o.connections, o.warmupS, request());
  await drive(meshUrl, o.connections, o.warmupS, request());
  const mesh: Round[] = [];
  const ceiling: Round[] = [];
  for (let r = 0; r < o.rounds; r++) {
    const order: ['mesh' | 'ceiling', string][] = r % 2 === 0 ? [['ceiling', ceilingUrl], ['mesh', meshUrl]] : [['mesh', meshUrl], ['ceiling', ceilingUrl]];
    for (const [which, url] of order) {
      await quietBeforeRound(o, pids(), say);
      const res = await drive(url, o.connections, o.roundS, request(), false, o.roundRequests?.single);
      (which === 'mesh' ? mesh : ceiling).push(res);
      say(`  ${what} round ${r + 1} ${which.padEnd(7)} ${fmtInt(res.rps)} req/s  p50 ${res.p50} ms  p99 ${res.p99} ms  driver ${res.driverCores.toFixed(2)} cores${res.non2xx || res.errors ? `  (${res.non2xx} non-2xx, ${res.errors} errors)` : ''}`);
    }
  }
  return {
    mesh: { rps: median(mesh.map((x) => x.rps)), p50: median(mesh.map((x) => x.p50)), p99: median(mesh.map((x) => x.p99)) },
    ceiling: { rps: median(ceiling.map((x) => x.rps)) },
    rounds: mesh,
  };
}

async function postBatch(o: Options, mesh: MeshHandle, say: Say, notes: string[]): Promise<Figures['post_batch']> {
  await drive(mesh.url, o.batchConnections, o.warmupS, postBatchRequest(o.batch));
  let base = await waitSettled(mesh.counters, 120_000);
  const rates: number[] = [];
  const replicated: number[] = [];
  for (let r = 0; r < o.rounds; r++) {
    const res = await drive(mesh.url, o.batchConnections, o.roundS, postBatchRequest(o.batch), true, o.roundRequests?.batch);
    const expected = base + res.ok * o.batch;
    const allHold = await waitAllHold(mesh.counters, expected, 120_000, 5);
    const repl = Math.max(0, allHold - res.lastOkAt);
    rates.push(res.rps * o.batch);
    replicated.push(repl);
    say(`  post_batch round ${r + 1}: ${fmtInt(res.rps * o.batch)} items/s (${res.rps.toFixed(1)} req/s, p50 ${res.p50} ms, p99 ${res.p99} ms), all counters hold everything ${fmtInt(repl)} ms after the last ack${res.non2xx || res.errors ? `  (${res.non2xx} non-2xx, ${res.errors} errors)` : ''}`);
    base = await waitSettled(mesh.counters, 120_000);
  }
  notes.push(`post_batch per round: ${rates.map(fmtInt).join(' / ')} items/s; replicated ${replicated.map(fmtInt).join(' / ')} ms (max ${fmtInt(Math.max(...replicated))} ms)`);
  return { items_per_s: Math.round(median(rates)), batch: o.batch, replicated_ms: round1(median(replicated)) };
}

async function partitionHeal(o: Options, say: Say, notes: string[], cleanups: (() => Promise<void>)[]): Promise<Figures['partition_heal']> {
  const { handle, mesh } = await startProxiedMesh(3);
  // an interrupted run (SIGINT) must not leave this mesh's processes behind
  cleanups.push(() => handle.close());
  try {
    const [c0, c1, c2] = handle.counters as [CounterEndpoint, CounterEndpoint, CounterEndpoint];
    const base = await waitSettled(handle.counters, 30_000);
    mesh.partition([mesh.counters[0]!], [mesh.counters[1]!, mesh.counters[2]!], 'reset');
    const cutAt = performance.now();
    const [a, b] = await Promise.all([CounterClient.connect(c0.address, mesh.secret), CounterClient.connect(c1.address, mesh.secret)]);
    try {
      await Promise.all([loadBatches(a, fill(o.perSide, 1000), 4), loadBatches(b, fill(o.perSide, 1000), 4)]);
    } finally {
      a.close();
      b.close();
    }
    await waitAllHold([c0, c1, c2], base + o.perSide, 60_000);
    const held = performance.now() - cutAt;
    if (held < o.partitionHoldMs) await sleep(o.partitionHoldMs - held);
    const [n0, n1, n2] = await Promise.all([c0, c1, c2].map(async (c) => (await c.status()).items));
    if (n0 !== base + o.perSide || n1 !== base + o.perSide || n2 !== base + o.perSide) {
      throw new Error(`the partition leaked: counters hold ${n0}, ${n1}, ${n2}, expected ${base + o.perSide} each`);
    }
    const healAt = performance.now();
    mesh.heal();
    const agreeAt = await waitAllHold(handle.counters, base + 2 * o.perSide, 60_000, 5);
    const ms = Math.round(agreeAt - healAt);
    say(`  partition_heal: ${fmtInt(o.perSide)} items per side, partition held ${fmtInt(healAt - cutAt)} ms; all counters agree ${fmtInt(ms)} ms after heal`);
    notes.push(`partition_heal: proxied mesh (FaultProxy 'reset' cut c0 | c1,c2 held ${(o.partitionHoldMs / 1000).toFixed(1)} s+), product timing defaults (RECONNECT_MAX_MS=${SETTINGS.RECONNECT_MAX_MS}, ANTI_ENTROPY_MS=${SETTINGS.ANTI_ENTROPY_MS})`);
    return { items_per_side: o.perSide, ms };
  } finally {
    await handle.close();
  }
}

interface StateFigures {
  memory: Figures['memory'];
  restart: Figures['restart'];
  catch_up: Figures['catch_up'];
}

/** Memory, restart and catch-up, on counters of their own (127.0.0.30+), nothing else running. */
async function stateFigures(o: Options, root: string, secret: string, say: Say, notes: string[]): Promise<StateFigures> {
  const n = o.items;
  const started: NodeProc[] = [];
  const counter = async (name: string, i: number, peers: CounterEndpoint[], nodeArgs: string[] = []) => {
    const host = `127.0.0.${30 + i}`;
    const ep = new CounterEndpoint(host, await freePort(host), secret);
    const proc = new NodeProc(name, 'counter', {
      ...productEnv(),
      CLUSTER_SECRET: secret,
      HOST: host,
      COUNTER_PORT: String(ep.port),
      COUNTER_ID: name,
      DATA_DIR: path.join(root, name),
      PEERS: peers.map((p) => p.address).join(','),
    }, nodeArgs);
    started.push(proc);
    return { proc, ep };
  };
  const holdsAll = async (ep: CounterEndpoint) => {
    const s = await ep.status();
    return servesPlaced(s) && s.items === n && (await ep.count(TENANT_NAMES[0]!)) === roundRobinCount(n, 0);
  };
  const spawnUntil = async (proc: NodeProc, ep: CounterEndpoint, what: string): Promise<number> => {
    proc.start();
    const t0 = proc.startedAt;
    await waitFor(() => holdsAll(ep), 300_000, `${proc.name} to ${what}\n${proc.tail()}`, 10);
    return performance.now() - t0;
  };
  try {
    // memory: the same process empty, then holding n items; full GC through the inspector before each reading
    const a = await counter('m0', 0, [], [`--inspect=127.0.0.30:0`]);
    a.proc.start();
    await waitFor(() => a.ep.serving(), 30_000, `m0 to serve every shard\n${a.proc.tail()}`, 10);
    const emptyStartMs = performance.now() - a.proc.startedAt;
    const insp = await Inspector.attach(a.proc);
    let heap: number;
    let rssPerItem: number;
    let rawPerItem: number;
    let loadMs: number;
    try {
      await sleep(200);
      // both ways of reading memory: as found after the load (what `ps` shows an operator) and after
      // a full GC, each from the empty process after a full GC (the start-up garbage is no item's;
      // read before a GC, the empty baseline sometimes exceeded the loaded process's raw RSS)
      await insp.gc();
      const rss0 = rssBytes(a.proc.pid);
      const mu0 = await insp.memoryUsage();
      const client = await CounterClient.connect(a.ep.address, secret);
      const t0 = performance.now();
      try {
        await loadBatches(client, fill(n, 1000), 16);
      } finally {
        client.close();
      }
      loadMs = performance.now() - t0;
      await waitFor(() => holdsAll(a.ep), 30_000, 'm0 to hold every item');
      await sleep(200);
      rawPerItem = (rssBytes(a.proc.pid) - rss0) / n;
      await insp.gc();
      const rss1 = rssBytes(a.proc.pid);
      const mu1 = await insp.memoryUsage();
      rssPerItem = (rss1 - rss0) / n;
      heap = (mu1.heapUsed + mu1.external - (mu0.heapUsed + mu0.external)) / n;
      const per = (x: number) => (x / n).toFixed(1);
      notes.push(
        `memory: RSS ${mb(rss0)} empty -> ${mb(rss1)} with ${fmtInt(n)} items; per item: heapUsed ${per(mu1.heapUsed - mu0.heapUsed)} B, ` +
          `ArrayBuffers ${per(mu1.arrayBuffers - mu0.arrayBuffers)} B, other external ${per(mu1.external - mu1.arrayBuffers - (mu0.external - mu0.arrayBuffers))} B ` +
          `(heap_bytes_per_item = heapUsed + external, read with the V8 inspector after a full GC)`,
      );
      notes.push(`load: ${fmtInt(n)} items into one counter over its WebSocket in ${fmtInt(loadMs)} ms (${fmtInt((n / loadMs) * 1000)} items/s, batches of 1,000, 16 in flight)`);
    } finally {
      insp.close();
    }
    say(`  memory: ${rssPerItem.toFixed(1)} B RSS / item after a full GC (${rawPerItem.toFixed(1)} B read without one), ${heap.toFixed(1)} B heap / item at ${fmtInt(n)} items (loaded in ${fmtInt(loadMs)} ms)`);
    const disk = dirBytes(path.join(root, 'm0'));
    notes.push(`disk: ${mb(disk)} in m0's data folder (${(disk / n).toFixed(1)} B / item)`);

    // restart: graceful stop, then from spawn to answering the right counts
    await a.proc.kill('SIGTERM');
    a.proc.nodeArgs = [];
    const restartMs = await spawnUntil(a.proc, a.ep, `count ${n} items after restart`);
    say(`  restart: ${fmtInt(restartMs)} ms from spawn to the right count (an empty counter takes ${fmtInt(emptyStartMs)} ms to be ready)`);

    // catch-up: from one peer, then a third counter joining two peers that hold everything
    const b = await counter('m1', 1, [a.ep]);
    const onePeerMs = await spawnUntil(b.proc, b.ep, `catch up with ${n} items from one peer`);
    const c = await counter('m2', 2, [a.ep, b.ep]);
    const twoPeersMs = await spawnUntil(c.proc, c.ep, `catch up with ${n} items from two peers`);
    say(`  catch_up: ${fmtInt(twoPeersMs)} ms from spawn joining two peers (${fmtInt(onePeerMs)} ms joining one)`);
    notes.push(`catch_up: from spawn of an empty counter until it counts every item, joining two peers that hold them all (one peer: ${fmtInt(onePeerMs)} ms); restart/catch_up include process start (~${fmtInt(emptyStartMs)} ms for an empty counter)`);
    return {
      memory: { items: n, tenants: TENANTS, rss_bytes_per_item: round1(rssPerItem), rss_bytes_per_item_no_gc: round1(rawPerItem), heap_bytes_per_item: round1(heap) },
      restart: { items: n, ms: Math.round(restartMs) },
      catch_up: { items: n, ms: Math.round(twoPeersMs) },
    };
  } finally {
    await Promise.all(started.map((p) => p.kill('SIGKILL')));
  }
}

/** Bytes of the files under `dir`, shard folders included. */
function dirBytes(dir: string): number {
  let total = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) total += dirBytes(p);
    else if (e.isFile()) total += fs.statSync(p).size;
  }
  return total;
}

// ---------------------------------------------------------------------------------------------
// report

function fmtInt(x: number): string {
  return Math.round(x).toLocaleString('en-US');
}

function round1(x: number): number {
  return Math.round(x * 10) / 10;
}

function mb(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

interface Target {
  key: string;
  op: '>=' | '<=';
  value: number;
  /** Items the target is defined at (memory/restart/catch_up); the mark gets a * when measured elsewhere. */
  atItems?: number;
  /** The figure whose value is the size measured at, when not the group's `items`. */
  sizeKey?: string;
  /** The target holds from atItems up: only a smaller size gets the *. */
  atLeast?: boolean;
}

const TARGETS: Target[] = [
  { key: 'post_single.ratio', op: '>=', value: 0.4 },
  { key: 'post_single.p99_ms', op: '<=', value: 25 },
  { key: 'post_batch.items_per_s', op: '>=', value: 100_000 },
  { key: 'post_batch.replicated_ms', op: '<=', value: 1000 },
  { key: 'get_count.ratio', op: '>=', value: 0.6 },
  { key: 'post_single_quorum.ratio', op: '>=', value: 0.3 },
  { key: 'post_single_quorum.p99_ms', op: '<=', value: 25 },
  { key: 'get_count_quorum.ratio', op: '>=', value: 0.45 },
  { key: 'get_count_quorum.p99_ms', op: '<=', value: 25 },
  { key: 'memory.rss_bytes_per_item', op: '<=', value: 150, atItems: 1_000_000 },
  // the same bound read as an operator would, without forcing a GC first
  { key: 'memory.rss_bytes_per_item_no_gc', op: '<=', value: 150, atItems: 1_000_000 },
  { key: 'restart.ms', op: '<=', value: 3000, atItems: 1_000_000 },
  { key: 'catch_up.ms', op: '<=', value: 5000, atItems: 1_000_000 },
  { key: 'partition_heal.ms', op: '<=', value: 2000, atItems: 10_000 },
  { key: 'scale.items_per_counter_ratio', op: '<=', value: 0.55, atItems: 2_000_000 },
  { key: 'scale.rss_bytes_per_item', op: '<=', value: 300, atItems: 2_000_000 },
  { key: 'join.ms', op: '<=', value: 15_000, atItems: 20_000_000 },
  { key: 'restart.ms_20m', op: '<=', value: 10_000, atItems: 20_000_000, sizeKey: 'join.items' },
  { key: 'compaction.post_p99_ms', op: '<=', value: 25, atItems: 10_000_000, atLeast: true },
];

function _lookup(f: Partial<Figures>, key: string): number | null | undefined {
  const [group, field] = key.split('.') as [keyof Figures, string];
  const g = f[group] as Record<string, unknown> | undefined;
  const v = g?.[field];
  return typeof v === 'number' ? v : v === null ? null : undefined;
}

function formatTable(f: Partial<Figures>): { text: string; misses: string[] } {
  const rows: string[][] = [['figure', 'value', 'target', '']];
  const misses: string[] = [];
  let starred = false;
  for (const [group, fields] of Object.entries(f)) {
    if (group === 'machine') continue;
    for (const [field, v] of Object.entries(fields as Record<string, unknown>)) {
      const key = `${group}.${field}`;
      const t = TARGETS.find((x) => x.key === key);
      let value = v === null ? 'null' : typeof v === 'number' ? (Number.isInteger(v) ? fmtInt(v) : v < 10 ? v.toFixed(2) : v.toFixed(1)) : String(v);
      if (field === 'ratio' && typeof v === 'number') value = v.toFixed(2);
      let mark = '';
      if (t && typeof v === 'number') {
        const ok = t.op === '>=' ? v >= t.value : v <= t.value;
        const size = t.sizeKey ? (_lookup(f, t.sizeKey) ?? undefined) : group === 'partition_heal' ? f.partition_heal?.items_per_side : (fields as { items?: number }).items;
        const off = t.atItems !== undefined && size !== undefined && (t.atLeast ? size < t.atItems : size !== t.atItems);
        starred ||= off;
        mark = `${ok ? 'pass' : 'MISS'}${off ? '*' : ''}`;
        if (!ok) misses.push(key);
      }
      rows.push([key, value, t ? `${t.op === '>=' ? '≥' : '≤'} ${t.value.toLocaleString('en-US')}` : '', mark]);
    }
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const lines = rows.map((r) => r.map((c, i) => (i === 1 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd());
  lines.splice(1, 0, widths.map((w) => '-'.repeat(w)).join('  '));
  if (starred) lines.push('* measured at a smaller size than the target is set for (targets are for the full run)');
  return { text: lines.join('\n'), misses };
}

// ---------------------------------------------------------------------------------------------

export async function runBench(argv: string[]): Promise<number> {
  let o: Options | null;
  try {
    o = parseArgs(argv);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`bench: ${err.message}\n\n${USAGE}`);
    return 2;
  }
  if (!o) {
    process.stdout.write(USAGE);
    return 0;
  }
  const opts = o;
  const t0 = performance.now();
  const say: Say = (line) => process.stdout.write(`[bench ${((performance.now() - t0) / 1000).toFixed(0).padStart(3)}s] ${line}\n`);
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'cm-bench-'));
  const secret = randomBytes(16).toString('hex');
  const cleanups: (() => Promise<void>)[] = [];
  const onSignal = () => {
    void Promise.all(cleanups.map((c) => c().catch(() => {}))).finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  try {
    // the mesh's processes run the product bundled, as `npm start` and the image run it (tools/build.ts)
    if (!process.env.COUNTER_MESH_TEST_BUILD) {
      const bundle = await bundleForRun();
      process.env.COUNTER_MESH_TEST_BUILD = bundle;
      cleanups.push(async () => fs.rmSync(path.dirname(bundle), { recursive: true, force: true }));
    }
    if (opts.profileDir) return await profileRun(opts, root, secret, say, cleanups);
    if (opts.mesh === 'compare' || opts.ab) return await compareMeshes(opts, root, secret, say, cleanups);

    const figures: Partial<Figures> = {};
    const notes: string[] = [];
    say(`${opts.mode} run: ${opts.rounds} round(s) of ${opts.roundRequests ? `${opts.roundRequests.single} requests (post_batch ${opts.roundRequests.batch})` : `${opts.roundS} s`}, ${opts.connections} connections, ${opts.mesh} mesh, ${fmtInt(opts.items)} items for memory/restart/catch_up`);

    const wantTls = opts.only.has('post_single_tls') || opts.only.has('get_count_tls');
    const wantPlain = (['post_single', 'post_single_quorum', 'post_batch', 'get_count', 'get_count_quorum'] as const).some((f) => opts.only.has(f));
    const wantHttp = wantPlain || wantTls;
    if (wantHttp) {
      const ceilingHost = '127.0.0.3';
      const ceiling = new NodeProc('ceiling', CEILING_SCRIPT, { HOST: ceilingHost, PORT: String(await freePort(ceilingHost)) });
      ceiling.start();
      cleanups.push(() => ceiling.kill('SIGKILL'));
      const m = await ceiling.waitForLine(/ceiling listening (\d+)/);
      const ceilingUrl = `http://${ceilingHost}:${m[1]}`;

      if (wantPlain) {
        const mesh = opts.mesh === 'direct' ? await startDirectMesh(path.join(root, 'mesh'), secret, 3, () => opts.nodeArgs) : (await startProxiedMesh(3)).handle;
        cleanups.push(() => mesh.close());
        const pids = () => [ceiling.pid, ...mesh.procs.map((p) => p.pid())];
        say(`mesh up (${opts.mesh}): coordinator ${mesh.url}, counters ${mesh.counters.map((c) => c.address).join(', ')}; ceiling ${ceilingUrl}`);

        const throughput = (p: Paired) => ({ rps: Math.round(p.mesh.rps), p50_ms: p.mesh.p50, p99_ms: p.mesh.p99, ceiling_rps: Math.round(p.ceiling.rps), ratio: round3(p.mesh.rps / p.ceiling.rps) });
        if (opts.only.has('post_single')) figures.post_single = throughput(await paired(opts, mesh.url, ceilingUrl, () => postSingleRequest(), say, 'post_single', pids));
        // the ceiling gets the same query string, which it ignores
        if (opts.only.has('post_single_quorum')) figures.post_single_quorum = throughput(await paired(opts, mesh.url, ceilingUrl, () => postSingleRequest('?w=quorum'), say, 'post_single_quorum', pids));
        if (opts.only.has('post_batch')) figures.post_batch = await postBatch(opts, mesh, say, notes);
        if (opts.only.has('get_count') || opts.only.has('get_count_quorum')) await waitSettled(mesh.counters, 120_000);
        if (opts.only.has('get_count')) figures.get_count = throughput(await paired(opts, mesh.url, ceilingUrl, () => getCountRequest(), say, 'get_count', pids));
        if (opts.only.has('get_count_quorum')) figures.get_count_quorum = throughput(await paired(opts, mesh.url, ceilingUrl, () => getCountRequest('?r=quorum'), say, 'get_count_quorum', pids));
        const held = await Promise.all(mesh.counters.map(async (c) => (await c.status()).items));
        const rss = mesh.procs.map((p) => {
          try {
            return `${p.name} ${mb(rssBytes(p.pid()))}`;
          } catch {
            return `${p.name} ?`;
          }
        });
        notes.push(`throughput: ${opts.mesh} mesh (coordinator + 3 counters, fsync before ack) and autocannon share ${os.cpus().length} CPUs; post_batch used ${opts.batchConnections} connections`);
        notes.push(`throughput mesh afterwards: counters hold ${held.map(fmtInt).join(' / ')} items; RSS (no forced GC) ${rss.join(', ')}`);
        const compactions = mesh.compactions();
        if (compactions.length > 0) {
          notes.push(`compactions during the throughput phases (COMPACT_BYTES=${SETTINGS.COMPACT_BYTES}): ${compactions.map(([c, ms]) => `${c} ${fmtInt(ms)} ms`).join(', ')}`);
        }
        await mesh.close();
      }
      if (wantTls) {
        const t = await tlsRows(opts, path.join(root, 'mesh-tls'), secret, ceilingUrl, ceiling.pid, say, cleanups);
        if (t.post_single_tls) figures.post_single_tls = t.post_single_tls;
        if (t.get_count_tls) figures.get_count_tls = t.get_count_tls;
        notes.push('post_single_tls, get_count_tls: a direct mesh with TLS_CERT/TLS_KEY/TLS_CA on every process (EC P-256), autocannon over HTTPS with keep-alive (one handshake per connection); ratio to the plain ceiling of the same rounds');
      }
      await ceiling.kill('SIGKILL');
    }
    if (opts.only.has('partition_heal')) figures.partition_heal = await partitionHeal(opts, say, notes, cleanups);
    if (opts.only.has('memory')) {
      const s = await stateFigures(opts, path.join(root, 'state'), secret, say, notes);
      figures.memory = s.memory;
      figures.restart = s.restart;
      figures.catch_up = s.catch_up;
    }
    if (opts.only.has('scale')) {
      const post = async (url: string, seconds: number) => drive(url, opts.connections, seconds, postSingleRequest());
      const s = await shardedFigures({ scaleItems: opts.scaleItems, joinItems: opts.joinItems, roundS: Math.max(opts.roundS, 2), compactBytes: opts.joinCompactBytes }, path.join(root, 'sharded'), secret, post, say, notes, cleanups);
      figures.scale = s.scale;
      figures.join = s.join;
      figures.restart = { ...figures.restart, ms_20m: s.restart_ms_20m };
      figures.compaction = s.compaction;
    }
    figures.machine = { cpus: os.cpus().length, node: process.version, date: new Date().toISOString() };

    const { text, misses } = formatTable(figures);
    process.stdout.write(`\nbench (${opts.mode}, ${((performance.now() - t0) / 1000).toFixed(0)} s, ${figures.machine.cpus} CPUs, Node ${figures.machine.node})\n\n${text}\n\n`);
    for (const n of notes) process.stdout.write(`- ${n}\n`);
    if (opts.out) {
      fs.writeFileSync(opts.out, `${JSON.stringify(figures, null, 2)}\n`);
      process.stdout.write(`\nfigures written to ${opts.out}\n`);
    }
    return opts.check && misses.length > 0 ? 1 : 0;
  } finally {
    process.off('SIGINT', onSignal);
    for (const c of cleanups.reverse()) await c().catch(() => {});
    fs.rmSync(root, { recursive: true, force: true });
  }
}

/** post_single and get_count again, over HTTPS to a mesh with TLS on every socket, paired with the same plain ceiling. */
async function tlsRows(o: Options, root: string, secret: string, ceilingUrl: string, ceilingPid: number, say: Say, cleanups: (() => Promise<void>)[]): Promise<Pick<Partial<Figures>, 'post_single_tls' | 'get_count_tls'>> {
  const certs = makeTestCerts();
  cleanups.push(async () => certs.close());
  const mesh = await startDirectMesh(root, secret, 3, () => o.nodeArgs, certs.good);
  cleanups.push(() => mesh.close());
  const pids = () => [ceilingPid, ...mesh.procs.map((p) => p.pid())];
  say(`TLS mesh up: coordinator ${mesh.url}, counters ${mesh.counters.map((c) => c.address).join(', ')}`);
  const out: Pick<Partial<Figures>, 'post_single_tls' | 'get_count_tls'> = {};
  const row = (p: Paired) => ({ rps: Math.round(p.mesh.rps), p50_ms: p.mesh.p50, p99_ms: p.mesh.p99, ceiling_rps: Math.round(p.ceiling.rps), ratio: round3(p.mesh.rps / p.ceiling.rps) });
  if (o.only.has('post_single_tls')) out.post_single_tls = row(await paired(o, mesh.url, ceilingUrl, () => postSingleRequest(), say, 'post_single_tls', pids));
  if (o.only.has('get_count_tls')) out.get_count_tls = row(await paired(o, mesh.url, ceilingUrl, () => getCountRequest(), say, 'get_count_tls', pids));
  await mesh.close();
  return out;
}

function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}

/** --profile: the direct mesh under --cpu-prof, one route driven, then the top self time per process. */
async function profileRun(o: Options, root: string, secret: string, say: Say, cleanups: (() => Promise<void>)[]): Promise<number> {
  const dir = o.profileDir!;
  fs.mkdirSync(dir, { recursive: true });
  const stamp = Date.now();
  const mesh = await startDirectMesh(path.join(root, 'mesh'), secret, 3, (name) => [...o.nodeArgs, '--cpu-prof', '--cpu-prof-dir', dir, '--cpu-prof-name', `${name}-${stamp}.cpuprofile`]);
  cleanups.push(() => mesh.close());
  const requests: Record<ProfileRoute, () => autocannon.Request | autocannon.Request[]> = {
    post_single: () => postSingleRequest(),
    post_single_quorum: () => postSingleRequest('?w=quorum'),
    post_batch: () => postBatchRequest(o.batch),
    get_count: () => getCountRequest(),
    get_count_quorum: () => getCountRequest('?r=quorum'),
  };
  const request = requests[o.profileRoute];
  const connections = o.profileRoute === 'post_batch' ? o.batchConnections : o.connections;
  if (o.profileRoute.startsWith('get_count')) {
    const c = await CounterClient.connect(mesh.counters[0]!.address, secret);
    await loadBatches(c, fill(10_000, 1000), 4);
    c.close();
  }
  await drive(mesh.url, connections, Math.min(2, o.roundS / 4), request()); // warm-up, left out of the summary
  say(`profiling ${o.profileRoute}: ${o.roundS} s with ${connections} connections`);
  const loadFrom = performance.now();
  const res = await drive(mesh.url, connections, o.roundS, request());
  const loadTo = performance.now();
  say(`  ${fmtInt(res.rps)} req/s, p50 ${res.p50} ms, p99 ${res.p99} ms`);
  const starts = new Map(mesh.procs.map((p) => [p.name, p.startedAt()]));
  // a graceful stop lets each process write its profile
  for (const p of mesh.procs) await p.stop('SIGTERM');
  for (const p of mesh.procs) {
    const file = path.join(dir, `${p.name}-${stamp}.cpuprofile`);
    if (!fs.existsSync(file)) {
      process.stdout.write(`${p.name}: no profile written (${file})\n`);
      continue;
    }
    const spawned = starts.get(p.name)!;
    const window = { fromMs: loadFrom - spawned, toMs: loadTo - spawned };
    process.stdout.write(`\n${formatProfile(`${p.name} during the ${o.roundS} s load (${path.basename(file)})`, summarizeProfile(file, 20, window))}\n`);
  }
  return 0;
}

/**
 * --mesh compare: the direct and the proxied mesh side by side; --ab KEY=VALUE: two direct meshes,
 * the second with that setting (e.g. METRICS=off). Rounds alternate, each on a quiet machine; medians.
 */
async function compareMeshes(o: Options, root: string, secret: string, say: Say, cleanups: (() => Promise<void>)[]): Promise<number> {
  const first = await startDirectMesh(path.join(root, 'mesh'), secret, 3);
  cleanups.push(() => first.close());
  const second = o.ab ? await startDirectMesh(path.join(root, 'mesh-b'), secret, 3, () => [], undefined, { [o.ab[0]]: o.ab[1] }) : (await startProxiedMesh(3)).handle;
  cleanups.push(() => second.close());
  const names: [string, string] = o.ab ? ['default', `${o.ab[0]}=${o.ab[1]}`] : ['direct', 'proxied'];
  const meshes: [string, MeshHandle][] = [[names[0], first], [names[1], second]];
  const pids = () => meshes.flatMap(([, m]) => m.procs.map((p) => p.pid()));
  const routes: [string, () => autocannon.Request | autocannon.Request[], number, number][] = [
    ['post_single', () => postSingleRequest(), o.connections, 1],
    ['post_batch', () => postBatchRequest(o.batch), o.batchConnections, o.batch],
    ['get_count', () => getCountRequest(), o.connections, 1],
  ];
  const lines: string[] = [];
  for (const [route, request, connections, perReq] of routes) {
    if (!o.only.has(route as Figure)) continue;
    for (const [, m] of meshes) await drive(m.url, connections, o.warmupS, request());
    const res = new Map<string, Round[]>(meshes.map(([n]) => [n, []]));
    for (let r = 0; r < o.rounds; r++) {
      const order = r % 2 === 0 ? meshes : [...meshes].reverse();
      for (const [name, m] of order) {
        await quietBeforeRound(o, pids(), say);
        const x = await drive(m.url, connections, o.roundS, request());
        res.get(name)!.push(x);
        say(`  ${route} round ${r + 1} ${name.padEnd(12)} ${fmtInt(x.rps * perReq)} ${perReq > 1 ? 'items' : 'req'}/s  p50 ${x.p50} ms  p99 ${x.p99} ms`);
      }
    }
    const a = res.get(names[0])!;
    const b = res.get(names[1])!;
    const ma = median(a.map((x) => x.rps)) * perReq;
    const mb = median(b.map((x) => x.rps)) * perReq;
    lines.push(
      `${route.padEnd(12)} ${names[0]} ${fmtInt(ma).padStart(9)}/s p99 ${String(median(a.map((x) => x.p99))).padStart(4)} ms   ` +
        `${names[1]} ${fmtInt(mb).padStart(9)}/s p99 ${String(median(b.map((x) => x.p99))).padStart(4)} ms   ${names[1]}/${names[0]} ${(mb / ma).toFixed(3)}`,
    );
  }
  process.stdout.write(`\n${names[0]} vs ${names[1]} mesh (medians of ${o.rounds} alternating rounds of ${o.roundS} s):\n${lines.join('\n')}\n`);
  return 0;
}

runIfScript(import.meta.url, runBench);
