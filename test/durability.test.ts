/**
 * Durability with real processes and real files: SIGKILL of every counter mid-stream, an item
 * surviving on one disk only, torn/garbage/corrupted files, compaction under load, the lock.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Mesh, type CounterNode } from './support/mesh.ts';
import { waitFor } from '../src/shared/wait.ts';

const MAIN = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));

/** The directory of shard 0's log store: the tests here run with SHARDS=1, so it holds every tenant. */
function shardDir(c: CounterNode): string {
  return path.join(c.dataDir, 'shards', '0');
}
function logFiles(c: CounterNode): string[] {
  return fs.readdirSync(shardDir(c)).filter((f) => /^log-\d+\.ylog$/.test(f)).sort().map((f) => path.join(shardDir(c), f));
}
function logBytes(c: CounterNode): number {
  // a compaction may delete a log between the listing and the stat
  return logFiles(c).reduce((s, f) => s + (fs.statSync(f, { throwIfNoEntry: false })?.size ?? 0), 0);
}

async function withMesh(opts: Parameters<typeof Mesh.start>[0], fn: (mesh: Mesh) => Promise<void>): Promise<void> {
  const mesh = await Mesh.start(opts);
  try {
    await fn(mesh);
  } finally {
    await mesh.close();
  }
}

test('SIGKILL of every counter during concurrent writes loses no acknowledged item', () =>
  withMesh({ counters: 3 }, async (mesh) => {
    const acked = new Map<string, Set<string>>();
    let stop = false;
    let n = 0;
    const writer = async (w: number) => {
      while (!stop) {
        const tenant = `t${n % 4}`;
        const batch = Array.from({ length: 1 + (n % 5) }, (_, i) => ({ tenant, id: `w${w}-${n}-${i}` }));
        n++;
        const status = await mesh.post(batch).catch(() => 0);
        if (status === 200) for (const it of batch) (acked.get(tenant) ?? acked.set(tenant, new Set()).get(tenant)!).add(it.id);
      }
    };
    const writers = Array.from({ length: 6 }, (_, w) => writer(w));
    await waitFor(() => [...acked.values()].reduce((s, x) => s + x.size, 0) > 300, 20_000, 'some acknowledged writes');
    await Promise.all(mesh.counters.map((c) => c.process.kill('SIGKILL')));
    stop = true;
    await Promise.all(writers);
    const total = [...acked.values()].reduce((s, x) => s + x.size, 0);
    assert.ok(total > 300);
    for (const c of mesh.counters) c.process.start();
    await mesh.waitReady();
    // a counter whose peers were slow to answer after the restart serves after its catch-up grace
    // and gets the others' items a moment later: what is checked is that none is lost for good
    for (const c of mesh.counters) {
      for (const [tenant, ids] of acked) {
        // a write that was cut off may still be counted (not acked, but applied); never fewer
        await waitFor(async () => (await mesh.counterCount(c, tenant)) >= ids.size, 15_000, `${c.id} to count at least the ${ids.size} acknowledged for ${tenant} (counts ${await mesh.counterCount(c, tenant).catch((e: Error) => e.message)})`);
      }
    }
  }),
);

test('an item acknowledged by one counter survives that counter being killed and the others wiped', () =>
  withMesh({ counters: 3 }, async (mesh) => {
    const [a, b, c] = mesh.counters as [CounterNode, CounterNode, CounterNode];
    // keep gossip from spreading it: only the accepting counter's disk will hold the item
    mesh.partition([a], [b, c]);
    mesh.partition([b], [c]);
    assert.is(await mesh.post({ tenant: 'lonely', id: 'only-on-one-disk' }), 200);
    const holders: CounterNode[] = [];
    for (const x of mesh.counters) if ((await mesh.counterCount(x, 'lonely')) === 1) holders.push(x);
    assert.is(holders.length, 1, 'exactly one counter took it');
    const holder = holders[0]!;
    await Promise.all(mesh.counters.map((x) => x.process.kill('SIGKILL')));
    for (const x of mesh.counters) if (x !== holder) fs.rmSync(x.dataDir, { recursive: true, force: true });
    mesh.heal();
    for (const x of mesh.counters) x.process.start();
    await mesh.waitReady();
    await mesh.waitConverged(new Map([['lonely', 1]]));
  }),
);

test('torn tail, garbage tail and a corrupted snapshot: the counter starts, says so, and converges', () =>
  withMesh({ counters: 2, env: { COMPACT_BYTES: '65536', SHARDS: '1' } }, async (mesh) => {
    const [a, b] = mesh.counters as [CounterNode, CounterNode];
    const expected = new Map<string, number>();
    let seq = 0;
    const write = async (n: number) => {
      for (let i = 0; i < n; i += 500) {
        const batch = Array.from({ length: Math.min(500, n - i) }, () => ({ tenant: `d${seq % 3}`, id: `item-${seq++}-padding-padding` }));
        for (const it of batch) expected.set(it.tenant, (expected.get(it.tenant) ?? 0) + 1);
        assert.is(await mesh.post(batch), 200);
      }
    };
    await write(3000); // several times COMPACT_BYTES: a snapshot exists
    await mesh.waitConverged(expected);
    await write(40); // and some records after it in the log
    await mesh.waitConverged(expected);

    // torn tail: the last record loses its last bytes
    await a.process.kill('SIGKILL');
    const last = logFiles(a).at(-1)!;
    fs.truncateSync(last, fs.statSync(last).size - 3);
    await mesh.restartCounter(a);
    await waitFor(() => a.process.output.some((l) => l.includes('torn tail')), 10_000, 'a torn-tail warning');
    await mesh.waitConverged(expected);

    // garbage appended after the last record
    await a.process.kill('SIGKILL');
    fs.appendFileSync(logFiles(a).at(-1)!, Buffer.from('this is not a log record \u0000\u0001\u0002 at all'));
    await mesh.restartCounter(a);
    await mesh.waitConverged(expected);

    // a corrupted snapshot: moved aside, not ready until synced from a peer, then converged
    await a.process.kill('SIGKILL');
    const snap = path.join(shardDir(a), 'snapshot.ydoc');
    assert.ok(fs.existsSync(snap), 'compaction wrote a snapshot');
    const bytes = fs.readFileSync(snap);
    bytes[Math.floor(bytes.length / 2)]! ^= 0xff;
    fs.writeFileSync(snap, bytes);
    await mesh.restartCounter(a); // ready only after syncing from b
    assert.ok(fs.readdirSync(shardDir(a)).some((f) => f.startsWith('snapshot.ydoc.damaged-')), 'damaged snapshot kept aside');
    assert.ok(a.process.output.some((l) => l.includes('damaged')), 'an error names the damaged file');
    await mesh.waitConverged(expected);
    assert.ok(b.process.running);
  }),
);

test('compaction under concurrent writes loses nothing and shrinks the log', () =>
  withMesh({ counters: 1, env: { COMPACT_BYTES: '65536', SHARDS: '1' } }, async (mesh) => {
    const [a] = mesh.counters as [CounterNode];
    let expected = 0;
    let maxLog = 0;
    const writer = async (w: number) => {
      for (let i = 0; i < 60; i++) {
        const batch = Array.from({ length: 50 }, (_, j) => ({ tenant: 'comp', id: `w${w}-${i}-${j}-some-longer-id` }));
        assert.is(await mesh.post(batch), 200);
        expected += batch.length;
        maxLog = Math.max(maxLog, logBytes(a));
      }
    };
    await Promise.all([0, 1, 2, 3].map(writer));
    assert.is(await mesh.counterCount(a, 'comp'), expected);
    assert.ok(fs.existsSync(path.join(shardDir(a), 'snapshot.ydoc')), 'a snapshot was written');
    assert.ok(maxLog > 0 && logBytes(a) < 2 * 65536 + 8192, `log bounded by compaction (now ${logBytes(a)} bytes)`);
    await a.process.kill('SIGKILL');
    await mesh.restartCounter(a);
    assert.is(await mesh.counterCount(a, 'comp'), expected);
  }),
);

test('a second counter on the same DATA_DIR is refused with a clear error', () =>
  withMesh({ counters: 1 }, async (mesh) => {
    const [a] = mesh.counters as [CounterNode];
    const res = spawnSync(process.execPath, ['--import', 'tsx', MAIN, 'counter'], {
      env: { ...process.env, ...a.process.env, COUNTER_PORT: '0', COUNTER_ID: 'intruder' },
      encoding: 'utf8',
      timeout: 20_000,
    });
    assert.is.not(res.status, 0);
    assert.match(res.stderr, /in use by another running counter/);
    assert.ok(await mesh.counterReady(a), 'the first counter is unaffected');
  }),
);

test.run();
