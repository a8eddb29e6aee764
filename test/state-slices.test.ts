/**
 * A shard's state encoded a slice at a time (src/counter/state-slices.ts): the same bytes as
 * Y.encodeStateAsUpdate, the state as it was at the call even when writes land between slices,
 * and the whole encoding again when Yjs moved the structs meanwhile.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as Y from 'yjs';
import { pino } from 'pino';
import { GSet, STORAGE } from '../src/counter/gset.ts';
import { encodeStateInSlices } from '../src/counter/state-slices.ts';

const log = pino({ level: 'silent' });
const concat = (parts: Uint8Array[]) => new Uint8Array(Buffer.concat(parts));

/** A shard written by two counters: its own writer and a peer's, many transactions each. */
function shard(items: number): GSet {
  const own = new GSet(log, 1);
  const peer = new GSet(log, 2);
  for (let i = 0; i < items; i++) own.add([{ tenant: `t${i % 7}`, id: `own-${i}` }]);
  for (let i = 0; i < items / 4; i++) peer.add([{ tenant: `t${i % 5}`, id: `peer-${i}` }]);
  own.apply(peer.encodeState(), STORAGE);
  return own;
}

test('the parts make exactly the update Y.encodeStateAsUpdate gives, over many turns', async () => {
  const g = shard(20_000);
  let turns = 0;
  const r = await encodeStateInSlices(g.doc, 20_000, async () => {
    turns++;
  });
  assert.ok(r.sliced);
  assert.ok(turns >= 5, `encoded over ${turns} turns`);
  assert.equal(concat(r.parts), Y.encodeStateAsUpdate(g.doc));
  assert.is(r.bytes, Y.encodeStateAsUpdate(g.doc).length);
  const empty = await encodeStateInSlices(new Y.Doc());
  assert.equal(concat(empty.parts), Y.encodeStateAsUpdate(new Y.Doc()));
});

test('writes between slices are not in the snapshot, and what it holds is whole', async () => {
  const g = shard(20_000);
  const before = Y.encodeStateAsUpdate(g.doc);
  const count = g.count('t0');
  let k = 0;
  const r = await encodeStateInSlices(g.doc, 20_000, async () => {
    // appends merge into the last struct of the writer, and a peer's update adds structs
    g.add([{ tenant: 't0', id: `late-${k++}` }]);
    await new Promise((res) => setImmediate(res));
  });
  assert.ok(k > 0);
  assert.ok(r.sliced);
  assert.equal(concat(r.parts), before, 'the state as it was at the call');
  const back = new GSet(log);
  back.apply(concat(r.parts), STORAGE);
  assert.is(back.doc.store.pendingStructs, null, 'nothing waits for a missing struct');
  assert.is(back.count('t0'), count);
  assert.is(back.size, g.size - k);
});

test('structs that move between slices (a split) make it encode the whole state again', async () => {
  const doc = new Y.Doc({ gc: false });
  const text = doc.getText('log');
  for (let i = 0; i < 200; i++) text.insert(text.length, `record-${i};`);
  const other = doc.getText('other');
  for (let i = 0; i < 200; i++) other.insert(other.length, `more-${i};`);
  let split = false;
  const r = await encodeStateInSlices(doc, 10, async () => {
    if (!split) text.insert(5, 'x'); // an insert inside the first struct splits it
    split = true;
  });
  assert.ok(split);
  assert.is(r.sliced, false);
  assert.equal(concat(r.parts), Y.encodeStateAsUpdate(doc));
});

test.run();
