/**
 * Partitions on a real multi-process mesh (4 counters each holding every shard, 2 coordinators, fault proxies):
 * split brain, two counters cut from each other, a restart during a partition, a blackholed write
 * target, the seeds' kill scenario.
 * Every wait is bounded (waitFor / Mesh.waitConverged); nothing synchronises on a fixed sleep.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Mesh, type CounterNode } from './support/mesh.ts';
import { waitFor } from '../src/shared/wait.ts';

/** Matches the Mesh environment: HEARTBEAT_MS 500, COUNTER_TIMEOUT_MS 1500. */
const HEARTBEAT_MS = 500;
const COUNTER_TIMEOUT_MS = 1500;
const CONVERGE_MS = 15_000;

let mesh: Mesh;
let c0: CounterNode, c1: CounterNode, c2: CounterNode, c3: CounterNode;
/** Every item written so far, per tenant: after each heal every counter must count exactly this. */
const expected = new Map<string, number>();
let seq = 0;

function items(tenant: string, n: number) {
  expected.set(tenant, (expected.get(tenant) ?? 0) + n);
  return Array.from({ length: n }, () => ({ tenant, id: `p-${seq++}` }));
}

/** Ids of the counters a coordinator currently considers ready. */
async function readyIds(coordinator: number): Promise<string[]> {
  const res = await fetch(mesh.url('/counters', coordinator));
  const list = (await res.json()) as { id: string; ready: boolean }[];
  return list.filter((c) => c.ready).map((c) => c.id).sort();
}

async function waitReadyIds(coordinator: number, ids: string[]): Promise<void> {
  const want = [...ids].sort().join(',');
  await waitFor(async () => (await readyIds(coordinator)).join(',') === want, 10_000, `coordinator ${coordinator} to see exactly ${want} ready (sees ${(await readyIds(coordinator).catch(() => [])).join(',')})`);
}

async function countsOf(nodes: CounterNode[], tenant: string): Promise<number[]> {
  return Promise.all(nodes.map((c) => mesh.counterCount(c, tenant)));
}

/** Waits until each of `nodes` counts exactly `n` for `tenant`. */
async function waitCount(nodes: CounterNode[], tenant: string, n: number): Promise<void> {
  await waitFor(async () => (await countsOf(nodes, tenant)).every((v) => v === n), CONVERGE_MS, `${nodes.map((c) => c.id).join(',')} to count ${n} for ${tenant} (have ${(await countsOf(nodes, tenant).catch(() => [])).join(',')})`);
}

/** Heals every cut and waits until every counter runs and both coordinators see all of them ready. */
async function healAll(): Promise<void> {
  mesh.heal();
  for (const c of mesh.counters) if (!c.process.running) await mesh.restartCounter(c);
  await waitReadyIds(0, mesh.counters.map((c) => c.id));
  await waitReadyIds(1, mesh.counters.map((c) => c.id));
}

test.before(async () => {
  // every counter holds every shard (factor 4 on 4 counters): these tests are about partitions of
  // full replicas; placement and moves have their own tests (membership*.test.ts)
  mesh = await Mesh.start({ counters: 4, coordinators: 2, env: { REPLICATION_FACTOR: '4' } });
  [c0, c1, c2, c3] = mesh.counters as [CounterNode, CounterNode, CounterNode, CounterNode];
});
test.after(async () => {
  await mesh?.close();
});

test('split brain: each side converges to its own writes only; after the heal every counter counts the union', async () => {
  mesh.partition([c0, c1], [c2, c3], 'reset');
  mesh.isolateFromCoordinator(c2, 'reset', 0);
  mesh.isolateFromCoordinator(c3, 'reset', 0);
  mesh.isolateFromCoordinator(c0, 'reset', 1);
  mesh.isolateFromCoordinator(c1, 'reset', 1);
  await waitReadyIds(0, ['c0', 'c1']);
  await waitReadyIds(1, ['c2', 'c3']);

  // two rounds per side: the second round's convergence gives the other side time to leak, if it could
  for (let round = 0; round < 2; round++) {
    assert.is(await mesh.post(items('left', 30), 0), 200, 'write on the left side');
    assert.is(await mesh.post(items('both', 5), 0), 200);
    assert.is(await mesh.post(items('right', 20), 1), 200, 'write on the right side');
    assert.is(await mesh.post(items('both', 5), 1), 200);
    const left = expected.get('left')!;
    const right = expected.get('right')!;
    const bothPerSide = (round + 1) * 5;
    await waitCount([c0, c1], 'left', left);
    await waitCount([c0, c1], 'both', bothPerSide);
    await waitCount([c2, c3], 'right', right);
    await waitCount([c2, c3], 'both', bothPerSide);
    assert.equal(await countsOf([c2, c3], 'left'), [0, 0], 'the right side never sees the left side\'s writes');
    assert.equal(await countsOf([c0, c1], 'right'), [0, 0], 'the left side never sees the right side\'s writes');
    assert.is(await mesh.count('both', 0), bothPerSide, 'coordinator 0 reads its side');
    assert.is(await mesh.count('both', 1), bothPerSide, 'coordinator 1 reads its side');
  }

  await healAll();
  await mesh.waitConverged(expected, CONVERGE_MS);
  await waitFor(async () => (await mesh.count('both', 0)) === expected.get('both') && (await mesh.count('both', 1)) === expected.get('both'), CONVERGE_MS, 'both coordinators to read the union');
});

test('two counters cut from each other: each still gets the other\'s writes through the counters that reach both', async () => {
  mesh.partition([c0], [c1], 'reset');
  for (const c of [c1, c2, c3]) mesh.isolateFromCoordinator(c, 'reset', 0);
  await waitReadyIds(0, ['c0']);
  assert.is(await mesh.post(items('relay', 15), 0), 200, 'c0 takes the write');
  // c0 announces (awareness) that it no longer reaches c1, so c2 and c3 forward c0's updates to c1
  // (and anti-entropy between c1 and them would repair a miss); the c0-c1 cut stays throughout
  await waitCount([c1, c2, c3], 'relay', 15);
  for (const c of [c1, c2, c3]) c.proxy.healFrom([mesh.coordinators[0]!.host]);
  mesh.isolateFromCoordinator(c0, 'reset', 0);
  for (const c of [c2, c3]) mesh.isolateFromCoordinator(c, 'reset', 0);
  await waitReadyIds(0, ['c1']);
  assert.is(await mesh.post(items('relay', 10), 0), 200, 'c1 takes the write');
  await waitCount([c0, c2, c3], 'relay', 25);
  await healAll();
  await mesh.waitConverged(expected, CONVERGE_MS);
});

test('a counter restarted during a partition keeps what it acknowledged and converges after the heal', async () => {
  mesh.partition([c0, c1], [c2, c3], 'blackhole');
  // the coordinator can reach c3 only, so c3 takes (and fsyncs) the first batch
  for (const c of [c0, c1, c2]) mesh.isolateFromCoordinator(c, 'reset', 0);
  await waitReadyIds(0, ['c3']);
  assert.is(await mesh.post(items('restart', 20), 0), 200);

  await c3.process.kill('SIGKILL');
  for (const c of [c0, c1, c2]) c.proxy.healFrom([mesh.coordinators[0]!.host]);
  await waitReadyIds(0, ['c0', 'c1', 'c2']);
  assert.is(await mesh.post(items('restart', 20), 0), 200, 'the second batch lands on c0..c2 while c3 is down');

  await mesh.restartCounter(c3); // still partitioned from c0, c1
  const [atC3] = await countsOf([c3], 'restart');
  assert.ok(atC3! >= 20, `c3 recovered the 20 items it acknowledged before the SIGKILL (counts ${atC3})`);
  for (const v of await countsOf([c0, c1], 'restart')) assert.ok(v <= 20, `c0/c1 cannot have c3's batch through the blackhole (count ${v})`);

  await healAll();
  await mesh.waitConverged(expected, CONVERGE_MS);
});

test('a blackholed write target: writes fail over within the counter timeout and keep succeeding; all converge after the heal', async () => {
  const coordinatorHost = mesh.coordinators[0]!.host;
  const bound = COUNTER_TIMEOUT_MS + 2 * HEARTBEAT_MS + 1000;
  let slowest = 0;
  // blackhole the coordinator's link to each counter in turn: one of them is its home counter
  for (const target of mesh.counters) {
    mesh.isolateFromCoordinator(target, 'blackhole', 0);
    for (let i = 0; i < 4; i++) {
      const t = Date.now();
      assert.is(await mesh.post(items('blackhole', 10), 0), 200, `write ${i} with ${target.id} blackholed`);
      const took = Date.now() - t;
      slowest = Math.max(slowest, took);
      assert.ok(took < bound, `write ${i} with ${target.id} blackholed took ${took} ms (bound ${bound} ms)`);
    }
    target.proxy.healFrom([coordinatorHost]);
    await waitReadyIds(0, mesh.counters.map((c) => c.id));
  }
  // the write sent into the blackhole waits for the request timeout or the heartbeat (two silent beats), whichever is first
  assert.ok(slowest >= HEARTBEAT_MS - 100, `one write hit the blackholed home counter and had to fail over (slowest ${slowest} ms)`);
  await healAll();
  await mesh.waitConverged(expected, CONVERGE_MS);
  assert.is(await mesh.count('blackhole', 0), expected.get('blackhole'));
});

test('the seeds scenario: add; SIGKILL c1; start it; SIGKILL c2 and c3; add more; start them; every counter has every item', async () => {
  const tenants = ['seed-a', 'seed-b', 'seed-c'];
  for (const t of tenants) assert.is(await mesh.post(items(t, 25), 0), 200, `first add for ${t}`);

  await c1.process.kill('SIGKILL');
  await mesh.restartCounter(c1);

  await Promise.all([c2.process.kill('SIGKILL'), c3.process.kill('SIGKILL')]);
  for (const t of tenants) assert.is(await mesh.post(items(t, 25), 0), 200, `add for ${t} with c2 and c3 down`);
  for (const t of tenants) assert.is(await mesh.post(items(t, 1)[0]!, 1), 200, `single add for ${t} through coordinator 1`);

  await Promise.all([mesh.restartCounter(c2), mesh.restartCounter(c3)]);
  await mesh.waitConverged(expected, CONVERGE_MS);
  for (const t of tenants) assert.is(await mesh.count(t, 0), expected.get(t), `read ${t} through the coordinator`);
});

test.run();
