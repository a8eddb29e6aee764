/** Multi-process mesh on loopback: replication, failover on SIGKILL, catch-up, membership. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Mesh } from './support/mesh.ts';
import { waitFor } from '../src/shared/wait.ts';

let mesh: Mesh;
const expected = new Map<string, number>();
let seq = 0;

function items(tenant: string, n: number) {
  expected.set(tenant, (expected.get(tenant) ?? 0) + n);
  return Array.from({ length: n }, () => ({ tenant, id: `item-${seq++}` }));
}

test.before(async () => {
  mesh = await Mesh.start({ counters: 3 });
});
test.after(async () => {
  await mesh?.close();
});

test('items written through the coordinator are counted by every counter', async () => {
  assert.is(await mesh.post(items('alpha', 50)), 200);
  assert.is(await mesh.post(items('beta', 1)[0]!), 200);
  assert.is(await mesh.post([{ tenant: 'alpha', id: 'item-0' }]), 200, 'a duplicate is accepted');
  assert.is(await mesh.count('alpha'), 50, 'read your writes through the coordinator');
  await mesh.waitConverged(expected);
});

test('with one counter SIGKILLed, writes and reads through the coordinator keep working', async () => {
  const victim = mesh.counters[0]!;
  await victim.process.kill('SIGKILL');
  for (const t of ['alpha', 'beta', 'gamma', 'delta', 'epsilon']) {
    assert.is(await mesh.post(items(t, 20)), 200, `write for ${t}`);
    assert.is(await mesh.count(t), expected.get(t), `read for ${t}`);
  }
  await mesh.waitConverged(expected);
  await mesh.restartCounter(victim);
  await mesh.waitConverged(expected);
});

test('a counter started later with PEERS naming one counter is learned by all and catches up', async () => {
  const node = await mesh.addCounterNode();
  mesh.configureCounter(node, [mesh.counters[1]!]);
  await mesh.restartCounter(node);
  await mesh.waitConverged(expected);
  await waitFor(async () => {
    const res = await fetch(mesh.url('/counters'));
    const list = (await res.json()) as { id: string; ready: boolean }[];
    return list.some((c) => c.id === node.id && c.ready);
  }, 10_000, 'the coordinator to learn the new counter');
  await waitFor(async () => {
    const res = await fetch(`http://${mesh.counters[2]!.host}:${mesh.counters[2]!.port}/status`, { headers: { authorization: `Bearer ${mesh.secret}` } });
    const status = (await res.json()) as { members: { id: string }[] };
    return status.members.some((m) => m.id === node.id);
  }, 10_000, 'counter c2 to learn the new counter');
  // the new counter takes writes too: kill the one it was pointed at, write, everyone converges
  assert.is(await mesh.post(items('zeta', 10)), 200);
  await mesh.waitConverged(expected);
});

test.run();
