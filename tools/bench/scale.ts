/**
 * The sharded mesh's figures (README "Performance"):
 *
 * - scale: 6 counters, factor 3, `scaleItems` items: the largest counter's share of all items, and
 *   RSS of all counters per item (as found after the load, and after a forced full GC on fresh
 *   processes: every counter restarted with --inspect, then GC through the inspector).
 * - join, restart_20m, compaction: 3 counters, factor 3, `joinItems` items. A counter killed with
 *   SIGKILL and restarted, until it answers a sample of its tenants' counts right; a fourth
 *   counter joining, until it serves every shard placed on it; then POST p99 over a round in which
 *   shards compact (their logs topped up, from outside, to just short of compacting first).
 */
import { SETTINGS } from '../../src/shared/config.ts';
import { placeShards, shardOf } from '../../src/shared/placement.ts';
import { waitFor } from '../../src/shared/wait.ts';
import type { Item } from '../../src/protocol/messages.ts';
import { startDirectMesh, type DirectCounter, type DirectMesh } from './direct-mesh.ts';
import { Inspector, placedOn, pssBytes, rssBytes, servesPlaced, sleep, type CounterEndpoint, type CounterStatus } from './procs.ts';
import { ShardedLoader } from './loader.ts';
import { TENANTS, TENANT_NAMES, fill, nextId, roundRobinCount } from './items.ts';
import { bytesToCompaction } from './shard-logs.ts';

export interface ScaleOptions {
  scaleItems: number;
  joinItems: number;
  roundS: number;
  /** COMPACT_BYTES for the join mesh (the product default unless a smoke run needs compactions at a tiny size). */
  compactBytes: number;
}

export interface ScaleFigures {
  scale: { items: number; counters: number; items_per_counter_ratio: number; rss_bytes_per_item: number; rss_bytes_per_item_gc: number; pss_bytes_per_item: number };
  join: { items: number; ms: number };
  restart_ms_20m: number;
  compaction: { items: number; post_p99_ms: number; compactions: number };
}

type Say = (line: string) => void;
/** One post_single round through the coordinator (autocannon), from main.ts. */
export type PostRound = (url: string, seconds: number) => Promise<{ rps: number; p99: number; p50: number }>;

const mb = (b: number) => `${(b / 1024 / 1024).toFixed(0)} MiB`;
const fmt = (x: number) => Math.round(x).toLocaleString('en-US');

async function statuses(nodes: readonly DirectCounter[]): Promise<CounterStatus[]> {
  return Promise.all(nodes.map((n) => n.ep.status()));
}

function placementOf(s: CounterStatus): string[][] {
  return placeShards(s.shards, s.placed, s.factor);
}

/** Items of `n` round-robin items that fall in each shard. */
function itemsPerShard(n: number, shards: number): number[] {
  const out = new Array<number>(shards).fill(0);
  for (let t = 0; t < TENANTS; t++) out[shardOf(TENANT_NAMES[t]!, shards)]! += roundRobinCount(n, t);
  return out;
}

/** Every counter holds exactly the items of the shards placed on it (and serves them). */
async function waitLoaded(nodes: readonly DirectCounter[], n: number, timeoutMs: number): Promise<void> {
  await waitFor(async () => {
    for (const s of await statuses(nodes)) {
      const per = itemsPerShard(n, s.shards);
      const expected = placedOn(s).reduce((sum, shard) => sum + per[shard]!, 0);
      if (!servesPlaced(s) || s.items !== expected) return false;
    }
    return true;
  }, timeoutMs, 'every counter to hold the items of the shards placed on it', 200);
}

async function load(mesh: DirectMesh, n: number, secret: string, say: Say, what: string): Promise<void> {
  const st = await mesh.nodes[0]!.ep.status();
  const loader = await ShardedLoader.connect(mesh.nodes.map((x) => ({ id: x.id, address: x.ep.address })), secret, placementOf(st));
  const t0 = performance.now();
  try {
    await loader.load(fill(n, 1000), 8);
  } finally {
    loader.close();
  }
  const acked = performance.now() - t0;
  await waitLoaded(mesh.nodes, n, Math.max(120_000, n / 5));
  say(`  ${what}: ${fmt(n)} items loaded to their home replicas in ${fmt(acked)} ms, replicated after ${fmt(performance.now() - t0)} ms`);
}

/** 6 counters, factor 3: the largest counter's share of the items, and RSS per item both ways. */
async function scaleFigures(o: ScaleOptions, root: string, secret: string, say: Say, notes: string[], cleanups: (() => Promise<void>)[]): Promise<ScaleFigures['scale']> {
  const n = o.scaleItems;
  const mesh = await startDirectMesh(root, secret, 6, () => [], undefined, { REPLICATION_FACTOR: '3' });
  cleanups.push(() => mesh.close());
  try {
    await load(mesh, n, secret, say, 'scale');
    const held = (await statuses(mesh.nodes)).map((s) => s.items);
    const ratio = Math.max(...held) / n;
    await sleep(200);
    const rss = mesh.nodes.map((x) => rssBytes(x.proc.pid));
    const noGc = rss.reduce((a, b) => a + b, 0) / n;
    const pss = mesh.nodes.map((x) => pssBytes(x.proc.pid)).reduce((a, b) => a + b, 0) / n;
    // the other way: fresh processes (restarted from their data), a full GC in each, then RSS
    for (const x of mesh.nodes) await x.proc.kill('SIGTERM');
    for (const x of mesh.nodes) {
      x.proc.nodeArgs = [`--inspect=${x.ep.host}:0`];
      x.proc.output.length = 0;
      x.proc.start();
    }
    await waitLoaded(mesh.nodes, n, Math.max(120_000, n / 5));
    const rssGc: number[] = [];
    for (const x of mesh.nodes) {
      const insp = await Inspector.attach(x.proc);
      try {
        await insp.gc();
        rssGc.push(rssBytes(x.proc.pid));
      } finally {
        insp.close();
      }
    }
    const gc = rssGc.reduce((a, b) => a + b, 0) / n;
    say(`  scale: largest counter ${(ratio * 100).toFixed(1)}% of ${fmt(n)} items; RSS ${noGc.toFixed(1)} B/item as found (PSS ${pss.toFixed(1)}), ${gc.toFixed(1)} B/item after restart + full GC`);
    notes.push(
      `scale: 6 counters, REPLICATION_FACTOR 3, SHARDS ${SETTINGS.SHARDS}, ${fmt(n)} items loaded to each shard's home replica (gossip copies the rest); counters hold ${held.map(fmt).join(' / ')} items; ` +
        `RSS as found after the load ${rss.map(mb).join(' / ')} (rss_bytes_per_item: sum / items, no GC forced); after a restart with --inspect and a full GC ${rssGc.map(mb).join(' / ')} (rss_bytes_per_item_gc). Both include each process's fixed RSS (about 70 MiB for an empty counter, 43 MiB of it the node binary and libraries mapped from files, which every process counts again); pss_bytes_per_item is the same moment as the first, in proportional set size (shared pages split among the processes mapping them)`,
    );
    return { items: n, counters: 6, items_per_counter_ratio: Math.round(ratio * 1000) / 1000, rss_bytes_per_item: Math.round(noGc * 10) / 10, rss_bytes_per_item_gc: Math.round(gc * 10) / 10, pss_bytes_per_item: Math.round(pss * 10) / 10 };
  } finally {
    await mesh.close();
  }
}

/** Tenants of the sample held by `s`'s counter, with their expected counts. */
function sampleOn(s: CounterStatus, n: number, every = 20): [string, number][] {
  const mine = new Set(placedOn(s));
  const out: [string, number][] = [];
  for (let t = 0; t < TENANTS; t += every) if (mine.has(shardOf(TENANT_NAMES[t]!, s.shards))) out.push([TENANT_NAMES[t]!, roundRobinCount(n, t)]);
  return out;
}

async function countsRight(ep: CounterEndpoint, sample: readonly [string, number][]): Promise<boolean> {
  const got = await Promise.all(sample.map(([t]) => ep.count(t)));
  return got.every((c, i) => c === sample[i]![1]);
}

/** Items for one shard: its tenants among the 1,000, or made-up tenant names that fall in it. */
function shardTenants(shard: number, shards: number): string[] {
  const own = TENANT_NAMES.filter((t) => shardOf(t, shards) === shard);
  if (own.length > 0) return own;
  for (let k = 0; ; k++) if (shardOf(`tenant-x${k}`, shards) === shard) return [`tenant-x${k}`];
}

function* shardFill(perShard: ReadonlyMap<number, number>, shards: number, batch = 1000): Generator<Item[]> {
  let items: Item[] = [];
  for (const [shard, count] of perShard) {
    const tenants = shardTenants(shard, shards);
    for (let k = 0; k < count; k++) {
      items.push({ tenant: tenants[k % tenants.length]!, id: nextId() });
      if (items.length === batch) {
        yield items;
        items = [];
      }
    }
  }
  if (items.length > 0) yield items;
}

/** Per shard, the fewest bytes any of its replicas still needs before it compacts. */
async function remaining(mesh: DirectMesh, compactBytes: number, shards: number): Promise<Map<number, number>> {
  const out = new Map<number, number>();
  for (const x of mesh.nodes) {
    for (const [shard, r] of bytesToCompaction(x.dataDir, compactBytes, shards)) out.set(shard, Math.min(out.get(shard) ?? Infinity, r));
  }
  return out;
}

/** A counter's "compacted log into snapshot" line: when it ended and how long its steps took (ms). */
interface CompactionLine {
  time: number;
  ms: number;
  rotateMs?: number;
  encodeMs?: number;
  writeMs?: number;
}

/** "median / max" of step timings (absent from lines logged before they were). */
function stat(xs: (number | undefined)[]): string {
  const v = xs.filter((x): x is number => x !== undefined);
  return v.length === 0 ? '?' : `${median(v)} / ${Math.max(...v)}`;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? 0 : s[s.length >> 1]!;
}

/**
 * POST p99 over a round in which shards compact: a warm-up round says how many log bytes a round
 * adds per shard; every shard is then topped up (items sent straight to its home replica, outside
 * the round) to within a third of that of its threshold, so the round's own writes compact them.
 */
async function compactionRound(mesh: DirectMesh, o: ScaleOptions, secret: string, post: PostRound, say: Say, notes: string[]): Promise<{ p99: number; compactions: number }> {
  const st = await mesh.nodes[0]!.ep.status();
  const shards = st.shards;
  const compacted = () => mesh.nodes.flatMap((x) => x.proc.watched.map((line) => JSON.parse(line) as CompactionLine));
  const before = await remaining(mesh, o.compactBytes, shards);
  // the same round with no shard near its threshold: what the machine gives now without compactions
  const quietFrom = Date.now();
  const quiet = await post(mesh.url, o.roundS);
  const quietTo = Date.now();
  await sleep(500);
  const after = await remaining(mesh, o.compactBytes, shards);
  const roundBytes = Math.max(1, median([...after].map(([s, r]) => (before.get(s) ?? r) - r).filter((d) => d > 0)));
  const loader = await ShardedLoader.connect(mesh.nodes.map((x) => ({ id: x.id, address: x.ep.address })), secret, placementOf(await mesh.nodes[0]!.ep.status()));
  try {
    // calibrate log bytes per topped-up item, then top up twice (the second pass corrects the first)
    const probe = 50;
    const r0 = await remaining(mesh, o.compactBytes, shards);
    await loader.load(shardFill(new Map([...r0.keys()].map((s) => [s, probe])), shards), 8);
    await sleep(1500); // peers write gossiped updates without waiting for their fsync
    const r1 = await remaining(mesh, o.compactBytes, shards);
    const perItem = Math.max(1, median([...r1].map(([s, r]) => ((r0.get(s) ?? r) - r) / probe).filter((d) => d > 0)));
    let cur = r1;
    for (let pass = 0; pass < 2; pass++) {
      const need = new Map<number, number>();
      for (const [s, r] of cur) {
        const k = Math.floor((r - roundBytes / 3) / perItem);
        if (k > 0) need.set(s, k);
      }
      await loader.load(shardFill(need, shards), 8);
      await sleep(1500);
      cur = await remaining(mesh, o.compactBytes, shards);
    }
    say(`  compaction: a round adds ~${fmt(roundBytes)} log bytes per shard; logs topped up (${perItem.toFixed(1)} B per item) to within ${fmt(median([...cur.values()]))} B (median) of compacting`);
  } finally {
    loader.close();
  }
  const from = Date.now();
  const r = await post(mesh.url, o.roundS);
  const to = Date.now();
  await sleep(200);
  const during = compacted().filter((c) => c.time >= from && c.time <= to);
  const n = during.length;
  const steps = `compactions took ${stat(during.map((c) => c.ms))} ms (new log ${stat(during.map((c) => c.rotateMs))}, encoding ${stat(during.map((c) => c.encodeMs))}, snapshot written ${stat(during.map((c) => c.writeMs))}; median / max)`;
  const quietN = compacted().filter((c) => c.time >= quietFrom && c.time <= quietTo).length;
  const baseline = `the round before (logs far from their thresholds, ${quietN} compactions): p99 ${quiet.p99} ms (p50 ${quiet.p50} ms, ${fmt(quiet.rps)} req/s)`;
  say(`  compaction: POST p99 ${r.p99} ms (p50 ${r.p50} ms, ${fmt(r.rps)} req/s) over a ${o.roundS} s round with ${n} shard compactions; ${baseline}; ${steps}`);
  notes.push(
    `compaction.post_p99_ms: post_single (50 connections, through the coordinator) for ${o.roundS} s on the join mesh after the join, every shard's log topped up beforehand to just short of its compaction threshold (max(COMPACT_BYTES / SHARDS, snapshot)); ${n} shard compactions logged during the round (a counter runs one at a time); ${baseline}; ${steps}`,
  );
  return { p99: r.p99, compactions: n };
}

/** restart_20m, join and compaction on one 3-counter mesh holding `joinItems` items. */
async function joinFigures(o: ScaleOptions, root: string, secret: string, post: PostRound, say: Say, notes: string[], cleanups: (() => Promise<void>)[]): Promise<Omit<ScaleFigures, 'scale'>> {
  const n = o.joinItems;
  const mesh = await startDirectMesh(root, secret, 3, () => [], undefined, { REPLICATION_FACTOR: '3', COMPACT_BYTES: String(o.compactBytes) });
  cleanups.push(() => mesh.close());
  try {
    await load(mesh, n, secret, say, 'join mesh');
    const rss = mesh.nodes.map((x) => rssBytes(x.proc.pid));
    notes.push(`join mesh: 3 counters holding ${fmt(n)} items each, RSS ${rss.map(mb).join(' / ')} (no GC forced)`);

    // restart: SIGKILL, then from spawn until a sample of its tenants counts right on it
    const victim = mesh.nodes[0]!;
    const sample = sampleOn(await victim.ep.status(), n);
    await victim.proc.kill('SIGKILL');
    victim.proc.start();
    const t0 = victim.proc.startedAt;
    await waitFor(() => countsRight(victim.ep, sample), 600_000, `${victim.id} to count its tenants right after kill -9\n${victim.proc.tail()}`, 20);
    const restartMs = performance.now() - t0;
    say(`  restart_20m: ${fmt(restartMs)} ms from spawn after kill -9 until ${sample.length} sampled tenants count right (${fmt(n)} items)`);
    await waitFor(() => victim.ep.serving(), 600_000, `${victim.id} to serve every shard again`);

    // join: a fourth counter, from spawn until it serves every shard placed on it
    const joiner = await mesh.newCounter('c3', 3);
    joiner.proc.start();
    const j0 = joiner.proc.startedAt;
    let seen = '';
    await waitFor(async () => {
      const s = await joiner.ep.status();
      seen = `placed ${s.placed.length}, held ${s.held.length}, serving ${s.serving.length}`;
      return s.placed.length === 4 && servesPlaced(s);
    }, 1_200_000, `c3 to serve every shard placed on it (${seen})`, 20);
    const joinMs = performance.now() - j0;
    const js = await joiner.ep.status();
    say(`  join: ${fmt(joinMs)} ms from spawn until c3 serves all ${js.serving.length} shards placed on it (${fmt(js.items)} items)`);
    notes.push(`join.ms: from spawn of c3 (PEERS = the 3 counters) until its /status serving == held == the ${js.serving.length} shards placed on it over 4 members; restart_20m: c0 of the same mesh before the join, kill -9, from spawn until ${sample.length} sampled tenants count right on it directly`);

    // compaction: once the old counters handed off what moved to c3
    await waitFor(async () => (await statuses(mesh.nodes)).every((s) => s.placed.length === 4 && servesPlaced(s)), 600_000, 'every counter to hold only the shards placed on it after the join', 200);
    const c = await compactionRound(mesh, o, secret, post, say, notes);
    return { join: { items: n, ms: Math.round(joinMs) }, restart_ms_20m: Math.round(restartMs), compaction: { items: n, post_p99_ms: c.p99, compactions: c.compactions } };
  } finally {
    await mesh.close();
  }
}

export async function shardedFigures(o: ScaleOptions, root: string, secret: string, post: PostRound, say: Say, notes: string[], cleanups: (() => Promise<void>)[]): Promise<ScaleFigures> {
  const scale = await scaleFigures(o, `${root}/scale`, secret, say, notes, cleanups);
  const rest = await joinFigures(o, `${root}/join`, secret, post, say, notes, cleanups);
  return { scale, ...rest };
}
