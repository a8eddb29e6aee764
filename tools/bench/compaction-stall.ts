/**
 * One counter's storage alone, to see what compactions do to the write path without the network,
 * the coordinator or the other counters: `shards` shards (real Shard + LogStore + GSet in a temp
 * directory) of `items` items each, snapshots written, every log topped up to just short of its
 * compaction threshold; then `rate` times a second one fresh item is appended to a random shard,
 * fsynced (a POST's path on its home counter), while `replicaRate` times as many non-durable
 * appends (a peer's gossip) go to random shards. Prints the append latency (p50/p99/max), the
 * event-loop delay, the compactions that ran, and the slowest fdatasync of the write path.
 *
 *   npx tsx tools/bench/compaction-stall.ts [--shards 48] [--items 31000] [--seconds 5] [--rate 1000] [--no-compaction] [--profile FILE]
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { Shard } from '../../src/counter/shard.ts';
import * as storage from '../../src/counter/storage/index.ts';
import { TENANT_NAMES, nextId } from './items.ts';
import { formatProfile, summarizeProfile } from './profile.ts';

function post(session: Session, method: string): Promise<unknown> {
  return new Promise((resolve, reject) => session.post(method, (err, res) => (err ? reject(err) : resolve(res))));
}

const { values } = parseArgs({
  options: {
    shards: { type: 'string', default: '48' },
    items: { type: 'string', default: '31000' },
    seconds: { type: 'string', default: '5' },
    rate: { type: 'string', default: '1000' },
    'replica-rate': { type: 'string', default: '2' },
    'compact-bytes': { type: 'string', default: String(1 << 20) },
    dir: { type: 'string' },
    concurrent: { type: 'string', default: '1' },
    'no-compaction': { type: 'boolean', default: false },
    profile: { type: 'string' },
  },
});
const SHARDS = Number(values.shards);
const ITEMS = Number(values.items);
const SECONDS = Number(values.seconds);
const RATE = Number(values.rate);
const REPLICA_RATE = Number(values['replica-rate']);
const COMPACT_BYTES = Number(values['compact-bytes']);

const log = pino({ level: process.env.LOG_LEVEL ?? 'warn' });
const root = mkdtempSync(join(values.dir ?? tmpdir(), 'cm-stall-'));
const syncs: number[] = [];
const compactions: number[] = [];
const observer = { synced: (s: number) => syncs.push(s * 1000), compacted: (s: number) => compactions.push(s * 1000) };

function pct(xs: number[], p: number): number {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}
const f1 = (x: number) => x.toFixed(1);

/** Items of one shard: tenants taken in turn so that each shard has a few. */
function items(shard: number, n: number): { tenant: string; id: string }[] {
  return Array.from({ length: n }, (_, k) => ({ tenant: TENANT_NAMES[(shard * 7 + k) % TENANT_NAMES.length]!, id: nextId() }));
}

async function main(): Promise<void> {
  const shards: Shard[] = [];
  const t0 = performance.now();
  // one queue for all shards, as a counter has (absent from code before the queue: for comparisons)
  const Queue = (storage as Record<string, unknown>).CompactionQueue as (new (limit: number) => object) | undefined;
  const queue = Queue ? new Queue(Number(values.concurrent)) : undefined;
  for (let s = 0; s < SHARDS; s++) {
    const { store } = await storage.LogStore.open({ dir: join(root, String(s)), compactBytes: COMPACT_BYTES, log, observer, compactions: queue, ...(values['no-compaction'] ? { compactBytes: 2 ** 40 } : {}) } as Parameters<typeof storage.LogStore.open>[0]);
    const shard = new Shard(s, store, log);
    for (let k = 0; k < ITEMS; k += 1000) shard.gset.add(items(s, Math.min(1000, ITEMS - k)));
    await shard.rewrite();
    shards.push(shard);
  }
  // top up each log to within a few KB (spread) of its threshold: max(compactBytes, snapshot)
  compactions.length = 0;
  for (const shard of shards) {
    const store = shard.log as unknown as { snapshotBytes: number; logBytes(): number };
    const stopAt = Math.max(COMPACT_BYTES, store.snapshotBytes) - 2_000 - Math.floor(Math.random() * 20_000);
    while (store.logBytes() < stopAt) {
      const n = Math.max(1, Math.min(500, Math.floor((stopAt - store.logBytes()) / 40)));
      await shard.append(shard.gset.add(items(shard.id, n))!, false);
    }
  }
  await Promise.all(shards.map((s) => s.synced()));
  console.log(`${SHARDS} shards of ${ITEMS} items ready in ${Math.round(performance.now() - t0)} ms; ${compactions.length} compactions while topping up`);
  compactions.length = 0;
  syncs.length = 0;

  const eld = monitorEventLoopDelay({ resolution: 1 });
  // where the main thread blocks: writes into the page cache, GC pauses
  const proto = storage.LogStore.prototype as unknown as { writeAt: (...a: unknown[]) => void };
  const writeAt = proto.writeAt;
  const writes: number[] = [];
  proto.writeAt = function (this: unknown, ...a: unknown[]) {
    const t = performance.now();
    try {
      return writeAt.apply(this, a);
    } finally {
      writes.push(performance.now() - t);
    }
  };
  const gcs: number[] = [];
  const gcKinds = new Map<number, number>();
  const gcObserver = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      gcs.push(e.duration);
      const kind = (e as unknown as { detail?: { kind?: number } }).detail?.kind ?? 0;
      gcKinds.set(kind, (gcKinds.get(kind) ?? 0) + e.duration);
    }
  });
  gcObserver.observe({ entryTypes: ['gc'] });
  const latencies: number[] = [];
  const until = performance.now() + SECONDS * 1000;
  eld.enable();
  // open loop: `rate` durable appends a second at evenly spaced times, each timed from when it was due
  const one = async () => {
    const t = performance.now();
    const shard = shards[Math.floor(Math.random() * shards.length)]!;
    const update = shard.gset.add(items(shard.id, 1));
    for (let r = 0; r < REPLICA_RATE; r++) {
      const other = shards[Math.floor(Math.random() * shards.length)]!;
      const u = other.gset.add(items(other.id, 1));
      if (u) void other.append(u, false);
    }
    if (!update) return;
    await shard.append(update, true);
    latencies.push(performance.now() - t);
  };
  const inFlight: Promise<void>[] = [];
  const writer = async () => {
    const start = performance.now();
    let sent = 0;
    while (performance.now() < until) {
      const due = Math.floor(((performance.now() - start) / 1000) * RATE);
      for (; sent < due; sent++) inFlight.push(one());
      await new Promise((r) => setTimeout(r, 1));
    }
    await Promise.all(inFlight);
  };
  // libuv's pool (4 threads) runs every fs call in order: a stat's latency is the queue in front of an fdatasync
  const poolWaits: number[] = [];
  const probe = async () => {
    while (performance.now() < until) {
      const t = performance.now();
      await stat(root);
      poolWaits.push(performance.now() - t);
      await new Promise((r) => setTimeout(r, 5));
    }
  };
  const profiler = values.profile ? new Session() : null;
  if (profiler) {
    profiler.connect();
    await post(profiler, 'Profiler.enable');
    await post(profiler, 'Profiler.start');
  }
  await Promise.all([probe(), writer()]);
  if (profiler) {
    const { profile } = (await post(profiler, 'Profiler.stop')) as { profile: unknown };
    writeFileSync(values.profile!, JSON.stringify(profile));
    console.log(formatProfile(`the ${SECONDS} s round`, summarizeProfile(values.profile!, 20)));
    profiler.disconnect();
  }
  eld.disable();
  gcObserver.disconnect();
  proto.writeAt = writeAt;
  const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
  console.log(`libuv pool: a stat waits p50 ${f1(pct(poolWaits, 50))} ms, p99 ${f1(pct(poolWaits, 99))} ms, max ${f1(pct(poolWaits, 100))} ms`);
  console.log(`main thread: writes ${writes.length}, total ${Math.round(sum(writes))} ms, p99 ${f1(pct(writes, 99))} ms, max ${f1(pct(writes, 100))} ms; GC ${gcs.length} pauses, total ${Math.round(sum(gcs))} ms, max ${f1(pct(gcs, 100))} ms (ms by kind: ${[...gcKinds].map(([k, ms]) => `${k}: ${Math.round(ms)}`).join(', ')}); heap ${Math.round(process.memoryUsage().heapUsed / 2 ** 20)} MiB`);
  await Promise.all(shards.map((s) => s.synced()));
  const done = compactions.length;
  console.log(
    `appends ${latencies.length} (${Math.round(latencies.length / SECONDS)}/s): p50 ${f1(pct(latencies, 50))} ms, p99 ${f1(pct(latencies, 99))} ms, max ${f1(pct(latencies, 100))} ms; ` +
      `event-loop delay p99 ${f1(eld.percentile(99) / 1e6)} ms, max ${f1(eld.max / 1e6)} ms; ` +
      `${done} compactions (median ${Math.round(pct(compactions, 50))} ms, max ${Math.round(pct(compactions, 100))} ms); ` +
      `write-path fdatasync p50 ${f1(pct(syncs, 50))} ms, p99 ${f1(pct(syncs, 99))} ms, max ${f1(pct(syncs, 100))} ms`,
  );
  for (const s of shards) await s.close();
}

main()
  .catch((err) => {
    console.error(err);
    process.exitCode = 1;
  })
  .finally(() => rmSync(root, { recursive: true, force: true }));
