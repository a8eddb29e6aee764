/**
 * CLUSTER_SECRET rotation without downtime, with real processes under load: three counters and
 * two coordinators on secret A; every process is restarted one at a time with `B,A` (sends B,
 * accepts both; falls back to A towards processes that do not know B yet), then one at a time with
 * `B` alone. Writes go on the whole time through whichever coordinator is not being restarted:
 * not one of them may fail, and every acknowledged item must be counted by every counter at the end.
 */
import { randomBytes } from 'node:crypto';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Mesh, type MeshProcess } from './support/mesh.ts';
import { waitFor } from '../src/shared/wait.ts';
import { ConfigError, counterConfig } from '../src/shared/config.ts';

let mesh: Mesh | null = null;
test.after(async () => {
  await mesh?.close();
});

test('CLUSTER_SECRET takes one secret or current,previous', () => {
  const one = counterConfig({ CLUSTER_SECRET: 'a' });
  assert.is(one.clusterSecret, 'a');
  assert.equal(one.acceptedSecrets, ['a']);
  const pair = counterConfig({ CLUSTER_SECRET: 'new, old' });
  assert.is(pair.clusterSecret, 'new', 'the first one is sent');
  assert.equal(pair.acceptedSecrets, ['new', 'old'], 'both are accepted');
  assert.equal(counterConfig({}).acceptedSecrets, [], 'none by default');
  for (const bad of ['a,b,c', ',old', 'new,', 'a,,b']) {
    assert.throws(() => counterConfig({ CLUSTER_SECRET: bad }), (e: Error) => e instanceof ConfigError && /current,previous/.test(e.message), bad);
  }
});

test('a rolling rotation under load: no failed write, no lost item', async () => {
  const a = randomBytes(12).toString('hex');
  const b = randomBytes(12).toString('hex');
  mesh = await Mesh.start({ counters: 3, coordinators: 2, secret: a, logLevel: process.env.ROTATION_LOG_LEVEL ?? 'warn' });
  const m = mesh;

  // ---- load: writers spread over the coordinators that are not being restarted
  const available = new Set([0, 1]);
  const inFlight = [0, 0];
  const acked = new Map<string, number>();
  const failures: string[] = [];
  let seq = 0;
  let stop = false;
  const stuck: string[] = [];
  /** What is being restarted, for failure reports. */
  let phase = 'start';
  const writer = async (w: number) => {
    let turn = w;
    while (!stop) {
      const choices = [...available];
      if (choices.length === 0) {
        await new Promise((r) => setTimeout(r, 5)); // both drained never happens; this only yields
        continue;
      }
      const coord = choices[turn++ % choices.length]!;
      const tenant = `t${seq % 3}`;
      const items = Array.from({ length: 1 + (seq % 4) }, () => ({ tenant, id: `i${seq++}` }));
      inFlight[coord]!++;
      try {
        const res = await m.call(m.url('/items', coord), { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(items) });
        const text = await res.text();
        if (res.status === 200) acked.set(tenant, (acked.get(tenant) ?? 0) + items.length);
        else failures.push(`coordinator ${coord}: HTTP ${res.status} ${text} (${phase})`);
      } catch (err) {
        failures.push(`coordinator ${coord}: ${(err as Error).message}`);
      } finally {
        inFlight[coord]!--;
      }
    }
  };
  const writers = [0, 1, 2, 3].map(writer);
  const ackedTotal = () => [...acked.values()].reduce((s, n) => s + n, 0);

  const restart = async (proc: MeshProcess, secret: string, coordinator: number | null) => {
    if (coordinator !== null) {
      // drain: the load moves to the other coordinator before this one stops
      available.delete(coordinator);
      await waitFor(() => inFlight[coordinator] === 0, 10_000, `requests to coordinator ${coordinator} to finish`);
    }
    phase = `restarting ${proc.name} with ${secret === b ? 'B' : 'B,A'}`;
    // graceful: SIGTERM answers what was received (within SHUTDOWN_TIMEOUT_MS), then exits. One
    // still there well after that fails the test at the end; it is killed so the run goes on
    void proc.stop('SIGTERM');
    try {
      await waitFor(() => !proc.running, 20_000, `${proc.name} to exit after SIGTERM`);
    } catch {
      stuck.push(`${proc.name} did not exit within 20 s of SIGTERM (${phase}):\n${proc.tail(15)}`);
      await proc.kill('SIGKILL');
    }
    proc.env = { ...proc.env, CLUSTER_SECRET: secret };
    const before = ackedTotal();
    proc.start();
    if (coordinator !== null) {
      await waitFor(async () => (await m.call(m.url('/ready', coordinator)).catch(() => null))?.ok === true, 20_000, `coordinator ${coordinator} ready\n${proc.tail()}`);
      available.add(coordinator);
    } else {
      const c = m.counters.find((x) => x.process === proc)!;
      await waitFor(() => m.counterReady(c), 30_000, `${c.id} ready after restart\n${proc.tail()}`);
    }
    // the load kept going through the restart
    await waitFor(() => ackedTotal() > before + 20, 20_000, `writes to go on after restarting ${proc.name}`);
  };

  // a coordinator first: it sends B to counters that only know A, so it must fall back to A
  const processes = () => [
    [m.coordinators[0]!.process, 0] as const,
    ...m.counters.map((c) => [c.process, null] as const),
    [m.coordinators[1]!.process, 1] as const,
  ];
  for (const [proc, coord] of processes()) await restart(proc, `${b},${a}`, coord);
  // every process now accepts B: the harness speaks B from here on
  m.secret = b;
  for (const [proc, coord] of processes()) await restart(proc, b, coord);

  stop = true;
  await Promise.all(writers);
  assert.equal(failures.slice(0, 10), [], `${failures.length} writes failed`);
  assert.equal(stuck, [], 'every process stops on SIGTERM');
  assert.ok(ackedTotal() > 200, `enough load went through (${ackedTotal()} items)`);
  await m.waitConverged(acked, 30_000);
  // and the old secret is refused everywhere now
  for (const c of m.counters) {
    const res = await fetch(`http://${c.host}:${c.port}/ready`, { headers: { authorization: `Bearer ${a}` } });
    assert.is(res.status, 401, `${c.id} refuses the old secret`);
  }
  for (const p of [...m.counters.map((c) => c.process), ...m.coordinators.map((c) => c.process)]) {
    assert.is(p.output.filter((l) => /refused our CLUSTER_SECRET/.test(l)).length, 0, `${p.name} never gave up on a secret:\n${p.tail()}`);
  }
});

test.run();
