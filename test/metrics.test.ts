/**
 * GET /metrics on real processes: the coordinator's and every counter's series exist with the
 * documented types, they move when items are written and gossip runs, the access rules hold
 * (CLUSTER_SECRET on counters, API_KEY on the coordinator), and METRICS=off removes them.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import pino from 'pino';
import { Mesh } from './support/mesh.ts';
import { waitFor } from '../src/shared/wait.ts';
import { buildCoordinatorServer } from '../src/coordinator/server.ts';
import { coordinatorConfig } from '../src/shared/config.ts';

interface Family {
  type: string;
  samples: { name: string; labels: Record<string, string>; value: number }[];
}

/** The Prometheus text format, as far as these tests need it: TYPE lines and samples. */
function parse(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  for (const line of text.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) {
      families.set(type[1]!, { type: type[2]!, samples: [] });
      continue;
    }
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    const name = m[1]!;
    const family = families.get(name) ?? families.get(name.replace(/_(bucket|sum|count)$/, ''));
    assert.ok(family, `sample ${name} has no TYPE line`);
    family.samples.push({ name, labels, value: Number(m[3]) });
  }
  return families;
}

/** The sum of a family's samples named `name` (default: the family itself) whose labels include `where`. */
function sum(f: Map<string, Family>, family: string, where: Record<string, string> = {}, name = family): number {
  const fam = f.get(family);
  assert.ok(fam, `no metric ${family}`);
  return fam.samples.filter((s) => s.name === name && Object.entries(where).every(([k, v]) => s.labels[k] === v)).reduce((a, s) => a + s.value, 0);
}

function expectTypes(f: Map<string, Family>, types: Record<string, string>): void {
  for (const [name, type] of Object.entries(types)) {
    assert.ok(f.has(name), `metric ${name} is missing`);
    assert.is(f.get(name)!.type, type, `${name} is a ${type}`);
  }
}

const COORDINATOR_TYPES = {
  counter_mesh_http_request_duration_seconds: 'histogram',
  counter_mesh_items_accepted_total: 'counter',
  counter_mesh_failovers_total: 'counter',
  counter_mesh_counter_links: 'gauge',
  counter_mesh_counter_reachable: 'gauge',
  counter_mesh_counter_ready: 'gauge',
  counter_mesh_counter_items: 'gauge',
  counter_mesh_counter_replication_lag_seconds: 'gauge',
  counter_mesh_process_cpu_seconds_total: 'counter',
  counter_mesh_process_resident_memory_bytes: 'gauge',
  counter_mesh_nodejs_eventloop_lag_seconds: 'gauge',
};

const COUNTER_TYPES = {
  counter_mesh_items: 'gauge',
  counter_mesh_tenants: 'gauge',
  counter_mesh_ready: 'gauge',
  counter_mesh_items_accepted_total: 'counter',
  counter_mesh_fsync_duration_seconds: 'histogram',
  counter_mesh_group_commit_appends: 'histogram',
  counter_mesh_compaction_duration_seconds: 'histogram',
  counter_mesh_replay_duration_seconds: 'gauge',
  counter_mesh_connected_peers: 'gauge',
  counter_mesh_gossip_received_bytes_total: 'counter',
  counter_mesh_gossip_sent_bytes_total: 'counter',
  counter_mesh_gossip_received_messages_total: 'counter',
  counter_mesh_gossip_sent_messages_total: 'counter',
  counter_mesh_replication_lag_bytes: 'gauge',
  counter_mesh_replication_lag_seconds: 'gauge',
  counter_mesh_http_request_duration_seconds: 'histogram',
  counter_mesh_process_cpu_seconds_total: 'counter',
};

test('coordinator and counters: the series exist with their types and move with writes and gossip', async () => {
  // the smallest COMPACT_BYTES, so that the batch below makes every counter compact
  const mesh = await Mesh.start({ counters: 3, env: { COMPACT_BYTES: '65536' } });
  try {
    const coordinatorMetrics = async () => {
      const res = await fetch(mesh.url('/metrics'));
      assert.is(res.status, 200);
      assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
      return parse(await res.text());
    };
    const counterMetrics = async (i: number) => {
      const c = mesh.counters[i]!;
      const res = await fetch(`http://${c.host}:${c.port}/metrics`, { headers: { authorization: `Bearer ${mesh.secret}` } });
      assert.is(res.status, 200, `${c.id} /metrics`);
      return parse(await res.text());
    };

    const before = await coordinatorMetrics();
    expectTypes(before, COORDINATOR_TYPES);
    assert.is(sum(before, 'counter_mesh_counter_links', { state: 'ready' }), 3, 'three ready counter links');
    assert.is(sum(before, 'counter_mesh_counter_reachable'), 3);
    const countersBefore = await Promise.all([0, 1, 2].map(counterMetrics));
    for (const f of countersBefore) {
      expectTypes(f, COUNTER_TYPES);
      assert.is(sum(f, 'counter_mesh_connected_peers'), 2, 'each counter is linked to the two others');
      assert.is(sum(f, 'counter_mesh_ready'), 1);
    }

    const N = 40;
    for (let i = 0; i < N; i++) assert.is(await mesh.post([{ id: `m-${i}`, tenant: 't' }, { id: `m-${i}-b`, tenant: 'u' }]), 200);
    assert.is(await mesh.count('t'), N);
    await mesh.waitConverged(new Map([['t', N], ['u', N]]));

    const after = await coordinatorMetrics();
    assert.is(sum(after, 'counter_mesh_items_accepted_total'), 2 * N, 'every acknowledged item is counted');
    const posts = { route: '/items', method: 'POST', status: '200' };
    assert.is(sum(after, 'counter_mesh_http_request_duration_seconds', posts, 'counter_mesh_http_request_duration_seconds_count'), N);
    assert.ok(sum(after, 'counter_mesh_http_request_duration_seconds', posts, 'counter_mesh_http_request_duration_seconds_sum') > 0);
    assert.ok(
      sum(after, 'counter_mesh_http_request_duration_seconds', { route: '/items/:tenant/count', status: '200' }, 'counter_mesh_http_request_duration_seconds_count') >= 1,
    );

    const countersAfter = await Promise.all([0, 1, 2].map(counterMetrics));
    let accepted = 0;
    for (const [i, f] of countersAfter.entries()) {
      const id = mesh.counters[i]!.id;
      assert.is(sum(f, 'counter_mesh_items'), 2 * N, `${id} holds every item`);
      assert.is(sum(f, 'counter_mesh_tenants'), 2);
      accepted += sum(f, 'counter_mesh_items_accepted_total');
      assert.ok(sum(f, 'counter_mesh_replay_duration_seconds') > 0, `${id} measured its replay`);
    }
    // gossip runs both ways with each peer (updates, and state vectors every ANTI_ENTROPY_MS), labelled by the peer's id
    const GOSSIP = ['counter_mesh_gossip_received_bytes_total', 'counter_mesh_gossip_sent_bytes_total', 'counter_mesh_gossip_received_messages_total', 'counter_mesh_gossip_sent_messages_total'];
    let still: string[] = [];
    await waitFor(async () => {
      const now = await Promise.all([0, 1, 2].map(counterMetrics));
      still = [];
      for (const [i, f] of now.entries()) {
        const id = mesh.counters[i]!.id;
        for (const other of mesh.counters.filter((o) => o.id !== id)) {
          for (const m of GOSSIP) if (!(sum(f, m, { peer: other.id }) > sum(countersBefore[i]!, m, { peer: other.id }))) still.push(`${id} ${m}{peer=${other.id}}`);
        }
      }
      return still.length === 0;
    }, 10_000, 'gossip series to move', 200).catch((err: Error) => {
      throw new Error(`${err.message}; still flat: ${still.join(', ')}`);
    });
    assert.is(accepted, 2 * N, 'the counters acknowledged every item once between them');
    // the counter that took the writes synced its log for them, in group-commit rounds
    const synced = countersAfter.map((f) => sum(f, 'counter_mesh_fsync_duration_seconds', {}, 'counter_mesh_fsync_duration_seconds_count'));
    assert.ok(Math.max(...synced) >= 1, `some counter fsynced: ${synced}`);
    const appends = countersAfter.map((f) => sum(f, 'counter_mesh_group_commit_appends', {}, 'counter_mesh_group_commit_appends_sum'));
    assert.ok(Math.max(...appends) >= N / 2, `group commit covered the writes: ${appends}`);

    // a few thousand items pass COMPACT_BYTES on every counter (peers' updates are logged too)
    for (const f of countersAfter) assert.is(sum(f, 'counter_mesh_compaction_duration_seconds', {}, 'counter_mesh_compaction_duration_seconds_count'), 0);
    const big = Array.from({ length: 1000 }, (_, k) => ({ id: `compact-${k}-${'x'.repeat(40)}`, tenant: 'big' }));
    for (let r = 0; r < 3; r++) assert.is(await mesh.post(big.map((it) => ({ ...it, id: `${r}-${it.id}` }))), 200);
    await waitFor(async () => {
      const fs = await Promise.all([0, 1, 2].map(counterMetrics));
      return fs.every((f) => sum(f, 'counter_mesh_compaction_duration_seconds', {}, 'counter_mesh_compaction_duration_seconds_count') >= 1 && sum(f, 'counter_mesh_items') === 2 * N + 3000);
    }, 15_000, 'every counter to compact its log', 200);

    // replication lag: once converged and a state vector exchange has passed, nobody lacks anything
    await waitFor(async () => {
      const fs = await Promise.all([0, 1, 2].map(counterMetrics));
      return fs.every((f) => f.get('counter_mesh_replication_lag_bytes')!.samples.length === 2 && sum(f, 'counter_mesh_replication_lag_bytes') === 0 && sum(f, 'counter_mesh_replication_lag_seconds') === 0);
    }, 10_000, 'replication lag back to 0 on every counter for both peers', 200);
  } finally {
    await mesh.close();
  }
});

test('failovers are counted; replication lag grows for a counter that is down while writes go on, and the coordinator reports it', async () => {
  const mesh = await Mesh.start({ counters: 3 });
  const counterText = async (i: number) => {
    const c = mesh.counters[i]!;
    return parse(await (await fetch(`http://${c.host}:${c.port}/metrics`, { headers: { authorization: `Bearer ${mesh.secret}` } })).text());
  };
  try {
    // the coordinator's home counter (the one that took the first write) stops answering it: the next write fails over
    assert.is(await mesh.post({ id: 'f-0', tenant: 'f' }), 200);
    const accepted = await Promise.all([0, 1, 2].map(async (i) => sum(await counterText(i), 'counter_mesh_items_accepted_total')));
    const home = mesh.counters[accepted.findIndex((n) => n > 0)]!;
    const failovers = async () => sum(parse(await (await fetch(mesh.url('/metrics'))).text()), 'counter_mesh_failovers_total');
    assert.is(await failovers(), 0);
    mesh.isolateFromCoordinator(home, 'blackhole');
    assert.is(await mesh.post({ id: 'f-1', tenant: 'f' }), 200);
    assert.ok((await failovers()) >= 1, 'the write that waited for the blackholed counter failed over');
    mesh.heal();

    const victim = mesh.counters.find((c) => c !== home)!;
    await victim.process.kill('SIGKILL');
    let i = 0;
    await waitFor(async () => {
      assert.is(await mesh.post({ id: `lag-${i++}`, tenant: 'lag' }), 200);
      const f = await counterText(home.index);
      return sum(f, 'counter_mesh_replication_lag_seconds', { peer: victim.id }) >= 1 && sum(f, 'counter_mesh_connected_peers') === 1;
    }, 15_000, `${home.id} reports lag towards the stopped ${victim.id}`);
    await waitFor(async () => {
      const f = parse(await (await fetch(mesh.url('/metrics'))).text());
      return sum(f, 'counter_mesh_counter_replication_lag_seconds', { counter: victim.id }) >= 1 && sum(f, 'counter_mesh_counter_reachable', { counter: victim.id }) === 0;
    }, 10_000, 'the coordinator shows the stopped counter unreachable and lagging');

    await mesh.restartCounter(victim);
    await mesh.waitConverged(new Map([['lag', i], ['f', 2]]));
    await waitFor(async () => {
      const f = parse(await (await fetch(mesh.url('/metrics'))).text());
      return sum(f, 'counter_mesh_counter_replication_lag_seconds', { counter: victim.id }) === 0;
    }, 15_000, 'the restarted counter caught up: lag 0 again');
  } finally {
    await mesh.close();
  }
});

test('access: counters need CLUSTER_SECRET for /metrics; the coordinator needs API_KEY when set', async () => {
  const mesh = await Mesh.start({ counters: 1 });
  try {
    const c = mesh.counters[0]!;
    assert.is((await fetch(`http://${c.host}:${c.port}/metrics`)).status, 401);
    assert.is((await fetch(`http://${c.host}:${c.port}/metrics`, { headers: { authorization: 'Bearer wrong' } })).status, 401);
  } finally {
    await mesh.close();
  }
  const pool = { anyUsable: true, view: () => [], count: async () => 0, add: async () => 0, replicas: () => [] };
  const app = buildCoordinatorServer(coordinatorConfig({ API_KEY: 'k3y' }), pool, pino({ level: 'silent' }));
  try {
    assert.is((await app.inject({ url: '/metrics' })).statusCode, 401);
    const ok = await app.inject({ url: '/metrics', headers: { authorization: 'Bearer k3y' } });
    assert.is(ok.statusCode, 200);
    assert.match(ok.body, /# TYPE counter_mesh_items_accepted_total counter/);
  } finally {
    await app.close();
  }
});

test('METRICS=off: no /metrics (a 404 that says how to turn them on) and the page says the rates are off', async () => {
  const pool = { anyUsable: true, view: () => [], count: async () => 0, add: async () => 0, replicas: () => [] };
  const app = buildCoordinatorServer(coordinatorConfig({ METRICS: 'off' }), pool, pino({ level: 'silent' }));
  try {
    const res = await app.inject({ url: '/metrics' });
    assert.is(res.statusCode, 404);
    assert.match(res.json().message, /METRICS=on/);
    assert.is((await app.inject({ url: '/' })).statusCode, 200, 'the status page is still there');
  } finally {
    await app.close();
  }
  assert.throws(() => coordinatorConfig({ METRICS: 'yes' }), /METRICS="yes" is not valid: use on or off/);
});

test.run();
