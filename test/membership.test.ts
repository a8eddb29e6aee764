/**
 * Membership changes in the in-memory mesh (seeded delivery, drops, reorders): a counter joins, a
 * dead one is removed, a live one leaves. Shards move, and through every step of every move the
 * items acknowledged so far are all held by some counter holding the shard (no handoff drops the
 * last copy); at the end every shard is held by exactly its placed replicas, serving it.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as Y from 'yjs';
import { idsInShard, MemoryMesh } from './support/memory-mesh.ts';
import { withSeed } from './support/sim.ts';
import type { Rng } from './support/prng.ts';
import { shardOf } from '../src/shared/placement.ts';
import { MessageType, type Item } from '../src/protocol/messages.ts';

const SHARDS = 8;
const TENANTS = Array.from({ length: 24 }, (_, i) => `tenant-${i}`);

function batch(rng: Rng, tag: string): Item[] {
  return Array.from({ length: 1 + Math.floor(rng() * 4) }, (_, i) => ({ tenant: TENANTS[Math.floor(rng() * TENANTS.length)]!, id: `${tag}-${i}` }));
}

/**
 * Every acknowledged item is held by at least one counter that holds its shard (running, or
 * crashed with its disk): the ids are read from each holder's document, not inferred from counts.
 */
function lastCopyProblem(mesh: MemoryMesh): string | null {
  const held = new Map<string, Set<string>>();
  for (const c of mesh.counters) {
    if (!c.counter) continue;
    for (let s = 0; s < SHARDS; s++) {
      for (const [tenant, ids] of idsInShard(c.counter, s)) {
        const all = held.get(tenant) ?? new Set<string>();
        held.set(tenant, all);
        for (const id of ids) all.add(id);
      }
    }
  }
  for (const [tenant, ids] of mesh.acked) {
    for (const id of ids) if (!held.get(tenant)?.has(id)) return `acknowledged item ${tenant}/${id} (shard ${shardOf(tenant, SHARDS)}) is held by no running counter`;
  }
  return null;
}

/** Writes through random coordinators while `moving` runs, checking the last-copy rule every 25 simulated ms. */
async function writeWhile(mesh: MemoryMesh, rng: Rng, tag: string, done: () => boolean, ms: number): Promise<number> {
  const answers: Promise<boolean>[] = [];
  const end = mesh.clock.now() + ms;
  let r = 0;
  while (!done()) {
    if (mesh.clock.now() > end) throw new Error(`not within ${ms} simulated ms: ${tag}; ${mesh.placementProblem()}`);
    answers.push(mesh.write(Math.floor(rng() * mesh.pools.length), batch(rng, `${tag}${r++}`)));
    await mesh.run(25);
    const problem = lastCopyProblem(mesh);
    if (problem) throw new Error(`during ${tag}: ${problem}`);
  }
  const ok = (await mesh.settle(answers)).filter(Boolean).length;
  // the writes answered while settling may not have reached every replica yet
  await mesh.until(() => done() && mesh.converged(), ms, `${tag}: converged after the last writes`);
  const problem = lastCopyProblem(mesh);
  if (problem) throw new Error(`after ${tag}: ${problem}`);
  return ok;
}

function settled(mesh: MemoryMesh): boolean {
  return mesh.placementProblem() === null;
}

test('a counter joins: it takes its share of shards, catches them up, and the old replicas hand them off', () =>
  withSeed('join', async (seed, rng) => {
    const mesh = await MemoryMesh.start({ seed, counters: 3, coordinators: 2, shards: SHARDS, factor: 2, faults: { minDelayMs: 0, maxDelayMs: 20, drop: 0.02 } });
    try {
      await writeWhile(mesh, rng, 'before', () => settled(mesh), 20_000);
      const before = mesh.counters.map((c) => c.counter!.status().held!.length);
      assert.ok(before.every((n) => n < SHARDS), `with factor 2 on 3 counters nobody holds every shard: ${before}`);
      const joined = await mesh.addCounter();
      const ok = await writeWhile(mesh, rng, 'join', () => settled(mesh) && mesh.converged(), 60_000);
      assert.ok(ok > 0, 'writes were acknowledged during the join');
      const share = mesh.counters[joined]!.counter!.status().serving!.length;
      assert.ok(share > 0, 'the new counter serves shards');
      assert.ok(
        mesh.counters.slice(0, 3).some((c, i) => c.counter!.status().held!.length < before[i]!),
        'some old replica handed a shard off and deleted it',
      );
      mesh.net.faults = { ...mesh.net.faults, drop: 0 };
      await mesh.until(() => mesh.converged(), 20_000, 'converged');
      mesh.compare();
    } finally {
      await mesh.close();
    }
  }));

test('a dead counter removed: its shards are re-replicated from the survivors, and its id is never placed again', () =>
  withSeed('remove', async (seed, rng) => {
    const mesh = await MemoryMesh.start({ seed, counters: 4, coordinators: 2, shards: SHARDS, factor: 2, faults: { minDelayMs: 0, maxDelayMs: 20 } });
    try {
      await writeWhile(mesh, rng, 'before', () => settled(mesh), 20_000);
      await mesh.crashCounter(1);
      // down but still a member: its shards keep one replica each and the placement does not move
      assert.is(mesh.counters[0]!.counter!.status().placed!.length, 4);
      await mesh.settle([mesh.counters[0]!.counter!.remove('counter-2')]);
      const dead = 'counter-2';
      await writeWhile(mesh, rng, 'remove', () => settled(mesh) && mesh.converged(), 60_000);
      for (const c of mesh.counters) {
        if (!c.counter) continue;
        const st = c.counter.status();
        assert.ok(!st.placed!.includes(dead), `${c.id} no longer places ${dead}`);
        assert.equal(st.removed, [dead], `${c.id} knows ${dead} is removed`);
      }
      mesh.compare();
    } finally {
      await mesh.close();
    }
  }));

test('a live counter leaves: it hands every shard off before it is done, and nothing acknowledged is lost', () =>
  withSeed('leave', async (seed, rng) => {
    const mesh = await MemoryMesh.start({ seed, counters: 4, coordinators: 2, shards: SHARDS, factor: 2, faults: { minDelayMs: 0, maxDelayMs: 20, drop: 0.02 } });
    try {
      await writeWhile(mesh, rng, 'before', () => settled(mesh), 20_000);
      const leaver = mesh.counters[2]!.counter!;
      assert.ok(leaver.status().held!.length > 0, 'the leaving counter holds shards');
      let left = false;
      void leaver.left.then(() => {
        left = true;
      });
      await mesh.settle([mesh.counters[0]!.counter!.remove('counter-3')]);
      await writeWhile(mesh, rng, 'leave', () => left, 60_000);
      assert.is(leaver.status().held!.length, 0, 'the counter that left holds nothing');
      await mesh.crashCounter(2);
      mesh.net.faults = { ...mesh.net.faults, drop: 0 };
      await mesh.until(() => settled(mesh) && mesh.converged(), 30_000, `settled: ${mesh.placementProblem()}`);
      mesh.compare();
    } finally {
      await mesh.close();
    }
  }));

test('a shard bigger than one message reaches a joining counter in parts, and no frame between counters is over MAX_MESSAGE_BYTES', () =>
  withSeed('parts', async (seed, rng) => {
    const maxBytes = 4096;
    const mesh = await MemoryMesh.start({ seed, counters: 2, coordinators: 1, shards: 2, factor: 3, counterEnv: { MAX_MESSAGE_BYTES: String(maxBytes) } });
    try {
      await writeWhile(mesh, rng, 'before', () => settled(mesh), 20_000);
      for (let b = 0; b < 40; b++) assert.ok(await mesh.settle([mesh.write(0, Array.from({ length: 20 }, (_, i) => ({ tenant: TENANTS[i % 3]!, id: `big-${b}-${i}-${'x'.repeat(40)}` })))]));
      await mesh.until(() => mesh.converged(), 10_000, 'converged before the join');
      const state = Y.encodeStateAsUpdate(mesh.counters[0]!.counter!.shardDoc(shardOf(TENANTS[0]!, 2))!);
      assert.ok(state.length > 4 * maxBytes, `a shard holds ${state.length} bytes, more than one message`);
      await mesh.addCounter();
      await mesh.until(() => settled(mesh) && mesh.converged(), 30_000, `the new counter caught up: ${mesh.placementProblem()}`);
      assert.ok((mesh.net.sentByType.get(MessageType.Part) ?? 0) > 4, 'the state went in parts');
      for (const type of [MessageType.ShardSync, MessageType.ShardReplicate, MessageType.Part]) {
        assert.ok((mesh.net.largestByType.get(type) ?? 0) <= maxBytes, `no ${type} frame over ${maxBytes} bytes (largest ${mesh.net.largestByType.get(type)})`);
      }
      mesh.compare();
    } finally {
      await mesh.close();
    }
  }));

test('removing a member that is not one, or the last one, is refused and changes nothing', () =>
  withSeed('remove-refused', async (seed) => {
    const mesh = await MemoryMesh.start({ seed, counters: 1, coordinators: 1, shards: SHARDS });
    try {
      const c = mesh.counters[0]!.counter!;
      assert.throws(() => c.remove('nobody'), /not a member of this mesh/);
      assert.throws(() => c.remove('counter-1'), /last member/);
      assert.equal(c.status().placed, ['counter-1']);
      assert.equal(c.status().removed, []);
    } finally {
      await mesh.close();
    }
  }));

test.run();
