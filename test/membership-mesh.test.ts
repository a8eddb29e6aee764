/**
 * Membership changes with real processes, sockets and DATA_DIRs: a counter joins a running mesh
 * (PEERS naming one member) and takes its share of shards. Counts are checked through the
 * coordinator and on every counter that serves each tenant's shard.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Mesh, type CounterNode, type ExitStatus } from './support/mesh.ts';
import { tsxLoaderUrl } from '../src/shared/tsx-loader.ts';
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

/** Writes one item to each tenant; adds them to `expected`. */
async function writeRound(mesh: Mesh, expected: Map<string, number>, tag: string): Promise<void> {
  const items = TENANTS.map((tenant) => ({ tenant, id: `${tag}` }));
  assert.is(await mesh.post(items), 200, `round ${tag} is acknowledged`);
  for (const t of TENANTS) expected.set(t, (expected.get(t) ?? 0) + 1);
}

/** Four counters (factor 2, so shards are spread) with their shards placed, and five rounds written. */
async function fourCountersWithItems(): Promise<{ mesh: Mesh; expected: Map<string, number> }> {
  const mesh = await Mesh.start({ counters: 4, env: { SHARDS: String(SHARDS), REPLICATION_FACTOR: String(FACTOR) } });
  const expected = new Map<string, number>();
  try {
    await mesh.waitReady();
    await settled(mesh, 'four counters place their shards');
    for (let r = 0; r < 5; r++) await writeRound(mesh, expected, `r${r}`);
  } catch (err) {
    await mesh.close();
    throw err;
  }
  return { mesh, expected };
}

test('a dead counter removed through the coordinator: its shards are re-replicated from the survivors, counts stay right', async () => {
  const { mesh, expected } = await fourCountersWithItems();
  try {
    await mesh.waitConverged(expected);
    const dead = mesh.counters[3]!;
    await dead.process.kill('SIGKILL');
    fs.rmSync(dead.dataDir, { recursive: true, force: true });
    const res = await mesh.call(mesh.url(`/counters/${dead.id}`), { method: 'DELETE' });
    assert.is(res.status, 202, await res.text());
    for (let r = 5; r < 10; r++) await writeRound(mesh, expected, `r${r}`);
    await settled(mesh, 'the survivors hold every shard');
    const again = await mesh.call(mesh.url(`/counters/${dead.id}`), { method: 'DELETE' });
    assert.is(again.status, 404, 'a removed counter cannot be removed twice');
    await countsEverywhere(mesh, expected);
  } finally {
    await mesh.close();
  }
});

test('counter-mesh leave: a running counter hands its shards off, exits 0 by itself, and no count changes', async () => {
  const { mesh, expected } = await fourCountersWithItems();
  try {
    const leaver = mesh.counters[1]!;
    const proc = leaver.process.proc!;
    const exited = new Promise<ExitStatus>((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
    const coordinator = mesh.coordinators[0]!;
    const cli = runCli(['leave', leaver.id, '--coordinator', `http://${coordinator.host}:${coordinator.port}`, '--timeout', '60']);
    // writes go on while it hands off
    for (let r = 5; r < 10; r++) await writeRound(mesh, expected, `r${r}`);
    const { code, output } = await cli;
    assert.is(code, 0, `counter-mesh leave succeeds:\n${output}\n${leaver.process.tail()}`);
    assert.equal(await exited, { code: 0, signal: null }, 'the counter stopped by itself with 0');
    await settled(mesh, 'the remaining counters hold every shard');
    await countsEverywhere(mesh, expected);
  } finally {
    await mesh.close();
  }
});

const MAIN = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));

function runCli(args: string[]): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['--import', tsxLoaderUrl(), MAIN, ...args], { timeout: 90_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, output: `${stdout}${stderr}` });
    });
  });
}

test.run();
