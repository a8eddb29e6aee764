/** G-Set layer: merge laws over random delivery orders, the three Yjs traps, counts vs a Set model. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as Y from 'yjs';
import pino from 'pino';
import { GSet, SEGMENT_UNITS, type Origin } from '../src/counter/gset.ts';
import { decodeRecords, encodeRecord } from '../src/counter/records.ts';
import { mulberry32 } from './support/prng.ts';

const log = pino({ level: 'silent' });
const SEED = Number(process.env.SEED ?? Date.now() % 100000);
console.log(`gset.test seed=${SEED} (SEED=${SEED} to replay)`);

const rng = mulberry32;
const PEER: Origin = { kind: 'peer', peerId: 'test', connection: {} };

function shuffle<T>(a: T[], r: () => number): T[] {
  const out = [...a];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

function countsOf(g: GSet, tenants: string[]): number[] {
  return tenants.map((t) => g.count(t));
}

test('records round-trip any characters', () => {
  const pairs = [['t', 'a'], ['a/b c', '☃'], ['😀'.repeat(256), 'x'.repeat(256)], ['\u0000', '\u0001\u0002']];
  const text = pairs.map(([t, i]) => encodeRecord(t!, i!)).join('');
  const out: string[][] = [];
  assert.is(decodeRecords(text, (t, i) => out.push([t, i])), text.length);
  assert.equal(out, pairs);
});

test('adds are idempotent and counts match a Set model', () => {
  const r = rng(SEED);
  const g = new GSet(log);
  const model = new Map<string, Set<string>>();
  for (let round = 0; round < 200; round++) {
    const batch = Array.from({ length: 1 + Math.floor(r() * 20) }, () => ({ tenant: `t${Math.floor(r() * 5)}`, id: `i${Math.floor(r() * 300)}` }));
    g.add(batch);
    for (const it of batch) {
      if (!model.has(it.tenant)) model.set(it.tenant, new Set());
      model.get(it.tenant)!.add(it.id);
    }
  }
  let total = 0;
  for (const [t, ids] of model) {
    assert.is(g.count(t), ids.size, `tenant ${t}`);
    total += ids.size;
  }
  assert.is(g.size, total);
  assert.is(g.count('never-written'), 0);
  const before = g.encodeState().length;
  const t0 = g.count('t0');
  g.add([{ tenant: 't0', id: 'i0' }, { tenant: 't0', id: 'i0' }]);
  assert.ok(g.count('t0') - t0 <= 1, 'an item twice in one batch counts once');
  assert.is(g.add([{ tenant: 't0', id: 'i0' }]), null, 'an item held already makes no update');
  g.add([...model.get('t1') ?? []].map((id) => ({ tenant: 't1', id })));
  assert.ok(g.encodeState().length - before < 20, 're-adding held items writes nothing');
});

test('merges are commutative, associative and idempotent over random delivery orders', () => {
  const r = rng(SEED + 1);
  const tenants = ['a', 'b', 'c', 'new'];
  const writers = [new GSet(log), new GSet(log), new GSet(log)];
  const updates: Uint8Array[] = [];
  for (const w of writers) w.doc.on('update', (u: Uint8Array, origin: Origin) => origin.kind === 'local' && updates.push(u));
  for (let i = 0; i < 150; i++) {
    const w = writers[Math.floor(r() * writers.length)]!;
    w.add(Array.from({ length: 1 + Math.floor(r() * 4) }, () => ({ tenant: tenants[Math.floor(r() * tenants.length)]!, id: `x${Math.floor(r() * 200)}` })));
    // occasionally let writers sync so later updates depend on others' (pending paths get exercised)
    if (r() < 0.1) {
      const [a, b] = [writers[0]!, writers[1]!];
      Y.applyUpdate(b.doc, Y.encodeStateAsUpdate(a.doc, Y.encodeStateVector(b.doc)), PEER);
    }
  }
  const expected = countsOf(writers[0]!, tenants).map(() => 0);
  const reference = new GSet(log);
  reference.applyUpdates(updates, PEER);
  expected.splice(0, expected.length, ...countsOf(reference, tenants));
  for (let trial = 0; trial < 20; trial++) {
    const g = new GSet(log);
    // random order, random duplication, random grouping into merged updates (associativity)
    const order = shuffle([...updates, ...updates.filter(() => r() < 0.3)], r);
    for (let i = 0; i < order.length; ) {
      const n = 1 + Math.floor(r() * 5);
      const group = order.slice(i, i + n);
      g.apply(group.length === 1 ? group[0]! : Y.mergeUpdates(group), PEER);
      i += n;
      // while updates are missing their dependencies, nothing pending may be counted
      assert.ok(g.size <= reference.size);
    }
    assert.equal(countsOf(g, tenants), expected, `trial ${trial}`);
    assert.is(g.size, reference.size);
  }
});

test('what apply returns is a complete log: replayed alone it rebuilds the same sets, pending structs included', () => {
  const r = rng(SEED + 7);
  const writers = [new GSet(log), new GSet(log), new GSet(log)];
  const updates: Uint8Array[] = [];
  for (const w of writers) w.doc.on('update', (u: Uint8Array, origin: Origin) => origin.kind === 'local' && updates.push(u));
  for (let i = 0; i < 120; i++) {
    writers[Math.floor(r() * writers.length)]!.add([{ tenant: `t${Math.floor(r() * 3)}`, id: `x${Math.floor(r() * 300)}` }]);
    if (r() < 0.1) Y.applyUpdate(writers[1]!.doc, Y.encodeStateAsUpdate(writers[0]!.doc, Y.encodeStateVector(writers[1]!.doc)), PEER);
  }
  for (let trial = 0; trial < 20; trial++) {
    const g = new GSet(log);
    const logged: Uint8Array[] = [];
    for (const u of shuffle([...updates, ...updates.filter(() => r() < 0.2)], r)) logged.push(...g.apply(u, PEER));
    const replayed = new GSet(log);
    replayed.applyUpdates(shuffle(logged, r), PEER);
    assert.is(replayed.size, g.size, `trial ${trial}: the log holds every item integrated`);
    assert.equal(countsOf(replayed, ['t0', 't1', 't2']), countsOf(g, ['t0', 't1', 't2']));
  }
  // in order, nothing is ever pending: each update that brings something goes on as it came (no
  // second encoding of it), and one that brings nothing produces nothing
  const g = new GSet(log);
  for (const u of updates) {
    const produced = g.apply(u, PEER);
    assert.is(produced.length, 1);
    assert.ok(produced[0] === u, 'the same bytes');
  }
  for (const u of updates.slice(0, 10)) assert.is(g.apply(u, PEER).length, 0, 'held already');
});

test('trap 1: concurrent first writes of a brand-new tenant on two docs both survive', () => {
  const a = new GSet(log);
  const b = new GSet(log);
  a.add([{ tenant: 'fresh', id: 'from-a-1' }, { tenant: 'fresh', id: 'from-a-2' }]);
  b.add([{ tenant: 'fresh', id: 'from-b-1' }]);
  const ua = a.encodeState();
  const ub = b.encodeState();
  a.apply(ub, PEER);
  b.apply(ua, PEER);
  assert.is(a.count('fresh'), 3);
  assert.is(b.count('fresh'), 3);
  // contrast: the layout we avoided loses one side (nested Y.Map under the same key)
  const x = new Y.Doc();
  const y = new Y.Doc();
  const mx = new Y.Map<boolean>();
  x.getMap<Y.Map<boolean>>('tenants').set('fresh', mx);
  mx.set('from-x', true);
  const my = new Y.Map<boolean>();
  y.getMap<Y.Map<boolean>>('tenants').set('fresh', my);
  my.set('from-y', true);
  Y.applyUpdate(x, Y.encodeStateAsUpdate(y));
  assert.is(x.getMap<Y.Map<boolean>>('tenants').get('fresh')!.size, 1, 'nested maps created concurrently lose one side');
});

test('trap 2: every GSet gets a fresh clientID, so a restarted counter is not mistaken for a duplicate', () => {
  const first = new GSet(log);
  first.add([{ tenant: 't', id: '1' }]);
  const saved = first.encodeState();
  const peer = new GSet(log);
  peer.apply(saved, PEER);
  // "restart": a new GSet loads the saved state and writes again
  const restarted = new GSet(log);
  restarted.apply(saved, { kind: 'storage' });
  assert.is.not(restarted.doc.clientID, first.doc.clientID);
  restarted.add([{ tenant: 't', id: '2' }]);
  peer.apply(Y.encodeStateAsUpdate(restarted.doc, Y.encodeStateVector(peer.doc)), PEER);
  assert.is(peer.count('t'), 2);
  // contrast: reusing the old clientID makes the peer drop the new item as already seen
  const reused = new Y.Doc();
  reused.clientID = first.doc.clientID;
  const lost = new Y.Doc();
  Y.applyUpdate(lost, saved);
  Y.applyUpdate(lost, Y.encodeStateAsUpdate(first.doc)); // peer knows clock 0.. of that client
  const other = new Y.Doc();
  other.clientID = first.doc.clientID;
  other.getText('log0').insert(0, encodeRecord('t', 'zz'));
  Y.applyUpdate(lost, Y.encodeStateAsUpdate(other));
  assert.not.ok(lost.getText('log0').toString().includes('zz'), 'a reused clientID collides with clocks the peer saw');
});

test('trap 3: a batch is one transaction and consecutive batches merge into few Yjs items', () => {
  const g = new GSet(log);
  let updates = 0;
  g.doc.on('update', () => updates++);
  for (let b = 0; b < 100; b++) g.add(Array.from({ length: 100 }, (_, i) => ({ tenant: `t${i % 10}`, id: `b${b}-${i}` })));
  assert.is(updates, 100, 'one update per batch');
  assert.is(g.size, 10_000);
  const structs = g.doc.store.clients.get(g.doc.clientID)!;
  const chars = [...g.doc.share.keys()].reduce((n, name) => n + g.doc.getText(name).length, 0);
  const segments = Math.ceil(chars / SEGMENT_UNITS);
  assert.ok(structs.length <= segments + 1, `100 batches merged into ${structs.length} Yjs item(s) over ${segments} segment(s)`);
});

test('malformed records from a peer are ignored, not counted, and do not throw', () => {
  const evil = new Y.Doc();
  evil.getText('log0').insert(0, '\u0005ab');
  const g = new GSet(log);
  g.apply(Y.encodeStateAsUpdate(evil), PEER);
  assert.is(g.size, 0);
  assert.is(g.malformedRecords, 1);
});

test.run();
