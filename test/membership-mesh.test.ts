/**
 * Membership changes with real processes, sockets and DATA_DIRs: a counter joins a running mesh
 * (PEERS naming one member) and takes its share of shards. Counts are checked through the
 * coordinator and on every counter that serves each tenant's shard.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Mesh, type CounterNode } from './support/mesh.ts';
import { waitFor } from '../src/shared/wait.ts';
import { placeShards, shardOf } from '../src/shared/placement.ts';
import type { Status } from '../src/protocol/messages.ts';

const SHARDS = 8;
const FACTOR = 2;
const TENANTS = Array.from({ length: 16 }, (_, i) => `member-${i}`);

async function status(mesh: Mesh, c: CounterNode): Promise<Status | null> {
  try {
    const res = await mesh.call(`${mesh.scheme}://${c.host}:${c.port}/status`, { headers: { authorization: `Bearer ${mesh.secret}` } });
    return res.ok ? ((await res.json()) as Status) : null;
  } catch {
    return null;
  }
}

/**
 * Null once every running counter agrees on the members and holds exactly the shards placed on
 * it, serving them all; else what does not hold yet.
 */
async function placementProblem(mesh: Mesh): Promise<string | null> {
  const running = mesh.counters.filter((c) => c.process.running);
  const statuses = await Promise.all(running.map((c) => status(mesh, c)));
  const lists = new Set(statuses.map((s) => s?.placed?.join(',') ?? 'none'));
  if (lists.size !== 1) return `counters disagree on the members: ${[...lists].join(' | ')}`;
  const placement = placeShards(SHARDS, [...lists][0]!.split(','), FACTOR);
  for (let i = 0; i < running.length; i++) {
    const st = statuses[i]!;
    const want = placement.flatMap((replicas, s) => (replicas.includes(st.id) ? [s] : []));
    if (st.held?.join() !== want.join() || st.serving?.join() !== want.join()) return `${st.id} holds [${st.held}], serves [${st.serving}], placed [${want}]`;
  }
  return null;
}

async function settled(mesh: Mesh, what: string, timeoutMs = 30_000): Promise<void> {
  let last: string | null = '';
  await waitFor(
    async () => {
      last = await placementProblem(mesh);
      return last === null;
    },
    timeoutMs,
    what,
  ).catch((err: Error) => {
    throw new Error(`${err.message}; last: ${last}`);
  });
}

/** Every tenant counts `expected` through the coordinator and on each counter serving its shard. */
async function countsEverywhere(mesh: Mesh, expected: Map<string, number>): Promise<void> {
  for (const [tenant, n] of expected) {
    await waitFor(async () => (await mesh.count(tenant)) === n, 20_000, `coordinator to count ${n} for ${tenant}`);
    let servers = 0;
    for (const c of mesh.counters) {
      if (!c.process.running) continue;
      const st = await status(mesh, c);
      if (!st?.serving?.includes(shardOf(tenant, SHARDS))) continue;
      servers++;
      await waitFor(async () => (await mesh.counterCount(c, tenant)) === n, 20_000, `${c.id} to count ${n} for ${tenant}`);
    }
    assert.is(servers, FACTOR, `${tenant} is served by ${FACTOR} counters`);
  }
}

test('a counter joins a running mesh: it takes its share of shards, counts stay right everywhere, old replicas delete what they handed off', async () => {
  const mesh = await Mesh.start({ counters: 3, env: { SHARDS: String(SHARDS), REPLICATION_FACTOR: String(FACTOR) } });
  try {
    await mesh.waitReady();
    await settled(mesh, 'three counters place their shards');
    const expected = new Map<string, number>();
    for (const [t, tenant] of TENANTS.entries()) {
      const items = Array.from({ length: 5 + t }, (_, i) => ({ tenant, id: `before-${i}` }));
      assert.is(await mesh.post(items), 200);
      expected.set(tenant, items.length);
    }
    const heldBefore = (await Promise.all(mesh.counters.map((c) => status(mesh, c)))).map((s) => s!.held!.length);

    const joiner = await mesh.addCounterNode();
    mesh.configureCounter(joiner, [mesh.counters[0]!]);
    joiner.process.start();
    // writes go on while shards move
    let during = 0;
    let problem: string | null = 'not checked';
    while (problem !== null) {
      const tenant = TENANTS[during % TENANTS.length]!;
      assert.is(await mesh.post({ tenant, id: `during-${during}` }), 200, 'writes are taken while shards move');
      expected.set(tenant, expected.get(tenant)! + 1);
      during++;
      problem = await placementProblem(mesh);
      if (during > 3000) assert.unreachable(`shards did not settle: ${problem}\n${joiner.process.tail()}`);
    }
    const joined = (await status(mesh, joiner))!;
    assert.ok(joined.serving!.length > 0, 'the new counter serves shards');
    const heldAfter = (await Promise.all(mesh.counters.slice(0, 3).map((c) => status(mesh, c)))).map((s) => s!.held!.length);
    assert.ok(
      heldAfter.some((n, i) => n < heldBefore[i]!),
      `an old replica deleted a shard it handed off (before ${heldBefore}, after ${heldAfter})`,
    );
    await countsEverywhere(mesh, expected);
  } finally {
    await mesh.close();
  }
});

test.run();
