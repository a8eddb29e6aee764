/**
 * The turns compactions take across a counter's shards: at most `limit` at once, in the order
 * asked, and a place given up before its turn never runs. Stores sharing a queue are in
 * storage.test.ts.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { CompactionQueue } from '../src/counter/storage/compaction-queue.ts';
import { settled } from './support/storage.ts';

test('one at a time by default, granted in the order asked', async () => {
  const q = new CompactionQueue();
  const turns = [q.turn(), q.turn(), q.turn()];
  assert.is(await settled(turns[0]!.granted), true);
  assert.is(await settled(turns[1]!.granted), false, 'the second waits');
  assert.equal([q.active, q.queued], [1, 2]);
  turns[0]!.release();
  assert.is(await turns[1]!.granted, true);
  assert.is(await settled(turns[2]!.granted), false);
  turns[1]!.release();
  turns[1]!.release(); // idempotent: must not free a second slot
  assert.is(await turns[2]!.granted, true);
  assert.equal([q.active, q.queued], [1, 0]);
  turns[2]!.release();
  assert.equal([q.active, q.queued], [0, 0]);
});

test('a limit of n runs n side by side', async () => {
  const q = new CompactionQueue(2);
  const turns = [q.turn(), q.turn(), q.turn()];
  assert.is(await turns[0]!.granted, true);
  assert.is(await turns[1]!.granted, true);
  assert.is(await settled(turns[2]!.granted), false);
  turns[1]!.release();
  assert.is(await turns[2]!.granted, true);
  assert.is(q.active, 2);
  assert.throws(() => new CompactionQueue(0), /at least 1/);
});

test('withdrawing a waiting turn gives up its place; withdrawing a running one does nothing', async () => {
  const q = new CompactionQueue();
  const running = q.turn();
  const gone = q.turn();
  const next = q.turn();
  assert.is(await running.granted, true);
  gone.withdraw();
  assert.is(await gone.granted, false, 'a withdrawn turn is told it will not run');
  assert.is(q.queued, 1);
  running.withdraw();
  assert.is(q.active, 1, 'still running');
  assert.is(await settled(next.granted), false);
  running.release();
  assert.is(await next.granted, true, 'the withdrawn turn was skipped');
  gone.release(); // releasing a withdrawn turn frees nothing
  assert.is(q.active, 1);
  next.release();
});

test.run();
