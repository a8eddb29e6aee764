/**
 * Pure units behind the metrics and the status page: replication lag from state vectors (with a
 * clock of the test's own) and the per-second rate ring.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as Y from 'yjs';
import { ReplicationLag, ShardLags } from '../src/counter/replication-lag.ts';
import { systemClock } from '../src/shared/clock.ts';
import { RateHistory } from '../src/coordinator/rates.ts';
import { lagBehind } from '../src/coordinator/replication-lag.ts';
import type { Status } from '../src/protocol/messages.ts';

const STALE_MS = 5000;

function setup() {
  const clock = { t: 1_000_000 };
  const doc = new Y.Doc();
  // only "now" matters here: the sampling timer is the system's and samples are taken by hand
  const lag = new ReplicationLag(doc, STALE_MS, { ...systemClock, now: () => clock.t });
  const write = (s: string) => {
    doc.getText('t').insert(0, s);
    lag.sample();
  };
  const sv = () => Y.decodeStateVector(Y.encodeStateVector(doc));
  return { clock, doc, lag, write, sv };
}

test('a peer that lacks nothing has no lag; bytes are passed through', () => {
  const { clock, lag, write, sv } = setup();
  write('a');
  clock.t += 1000;
  lag.peerStateVector('p', sv(), 0);
  assert.is(lag.lagSeconds('p'), 0);
  assert.is(lag.missingBytes('p'), 0);
  assert.is(lag.lagSeconds('unknown'), 0, 'no state vector yet: nothing known, 0');
  lag.close();
});

test('the age of the oldest missing update, measured when the state vector arrived', () => {
  const { clock, lag, write, sv } = setup();
  write('a'); // t0
  const afterFirst = sv();
  clock.t += 1000;
  write('b'); // t0 + 1 s: the peer never gets this one
  clock.t += 2000;
  lag.peerStateVector('p', afterFirst, 12);
  assert.is(lag.lagSeconds('p'), 2, 'lacks what came 2 s before its state vector arrived');
  assert.is(lag.missingBytes('p'), 12);
  // not overdue yet: the figure stays what it was when the state vector arrived
  clock.t += STALE_MS - 1;
  assert.is(lag.lagSeconds('p'), 2);
  // overdue (peer down or cut off): measured against now, so it grows
  clock.t += 2;
  assert.is(lag.lagSeconds('p'), 2 + (STALE_MS + 1) / 1000);
  assert.equal(lag.byPeer(), { p: 2 + (STALE_MS + 1) / 1000 });

  // a peer that lacks everything, reporting now: as old as the first write
  lag.peerStateVector('q', new Map(), 20);
  assert.is(lag.lagSeconds('q'), 3 + STALE_MS / 1000 + 0.001);
  lag.close();
});

test('steady writes are not lag: what came after the state vector left does not count', () => {
  const { clock, lag, write, sv } = setup();
  write('a');
  const seen = sv();
  clock.t += 100;
  lag.peerStateVector('p', seen, 0);
  clock.t += 100;
  write('b'); // after the peer's state vector arrived
  assert.is(lag.lagSeconds('p'), 0);
  lag.close();
});

test('ShardLags: a peer that handed a shard off, and a shard handed off here, stop counting; a peer that is down still does', () => {
  const clock = { t: 1_000_000 };
  const now = { ...systemClock, now: () => clock.t };
  const docs = new Map([0, 1].map((s) => [s, new Y.Doc()]));
  const held = new Map([['p', new Set([0, 1])], ['q', new Set([0])]]);
  const lags = new ShardLags((s) => docs.get(s), STALE_MS, now, (peer, s) => held.get(peer)?.has(s) ?? true);
  try {
    const write = (s: number) => docs.get(s)!.getText('t').insert(0, 'x');
    write(0);
    write(1);
    // both peers lack everything, as of now
    lags.peerStateVector('p', 0, new Map(), 10);
    lags.peerStateVector('p', 1, new Map(), 20);
    lags.peerStateVector('q', 0, new Map(), 30);
    clock.t += STALE_MS + 1000;
    write(1);
    assert.is(lags.missingBytes('p'), 30);
    assert.ok(lags.lagSeconds('p') > STALE_MS / 1000, 'overdue: measured against now');
    // p hands shard 1 off (its announcement no longer has it): only shard 0 counts for p
    held.get('p')!.delete(1);
    assert.is(lags.missingBytes('p'), 10);
    // this counter hands shard 0 off: nothing of it counts for anyone, not even q (down, unknown)
    held.delete('q');
    assert.ok(lags.lagSeconds('q') > 0, 'q, whose shards are unknown now (down), is still measured');
    docs.delete(0);
    assert.is(lags.lagSeconds('q'), 0);
    assert.is(lags.missingBytes('p'), 0);
    assert.equal([...lags.peerIds()], []);
  } finally {
    lags.close();
  }
});

test('lagBehind: the worst report about a counter from the others; null when none reports', () => {
  const base = { address: 'a:1', ready: true, items: 0, members: [] };
  const statuses: (Status | null)[] = [
    { ...base, id: 'a', lag: { b: 0.5, c: 4 } },
    { ...base, id: 'b', lag: { a: 0, c: 2 } },
    { ...base, id: 'c' },
    null,
  ];
  assert.is(lagBehind('c', statuses), 4);
  assert.is(lagBehind('a', statuses), 0);
  assert.is(lagBehind('b', statuses), 0.5);
  assert.is(lagBehind('x', [{ ...base, id: 'c' }]), null);
});

test('RateHistory: one point per second, oldest first, at most its length', () => {
  const r = new RateHistory(3);
  assert.equal(r.series().writes, []);
  for (let s = 1; s <= 4; s++) {
    r.writes += s;
    r.reads += 10 * s;
    if (s === 2) r.errors++;
    r.tick(s * 1000);
  }
  const series = r.series();
  assert.equal(series.writes, [2, 3, 4]);
  assert.equal(series.reads, [20, 30, 40]);
  assert.equal(series.errors, [1, 0, 0]);
  assert.is(series.endAt, 4000);
  assert.is(r.writes, 0, 'the second in progress starts from 0');
});

test.run();
