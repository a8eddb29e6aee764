/**
 * The counter's journal (src/counter/journal.ts), on real files: records round-trip; a trim drops
 * only records whose shard logs were synced before it began, keeps those appended while it ran,
 * and drops nothing when a shard cannot sync; and a counter whose shard logs lost their unsynced
 * tail (a crash) gets the acknowledged items back from the journal.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import { readdirSync, rmSync } from 'node:fs';
import pino from 'pino';
import { Counter } from '../src/counter/counter.ts';
import { decodeJournal, Journal, type JournalRecord } from '../src/counter/journal.ts';
import { LogStore } from '../src/counter/storage/index.ts';
import { GSet, LOCAL } from '../src/counter/gset.ts';
import { counterConfig } from '../src/shared/config.ts';
import { shardOf } from '../src/shared/placement.ts';
import { waitFor } from '../src/shared/wait.ts';
import { tempDirs } from './support/storage.ts';

const silent = pino({ level: 'silent' });
const dirs = tempDirs('cm-journal-');
test.after(() => dirs.removeAll());

const bytes = (...xs: number[]) => new Uint8Array(xs);

async function reopen(dir: string, compactBytes = 1 << 30): Promise<{ store: LogStore; records: JournalRecord[] }> {
  const { store, recovered } = await LogStore.open({ dir, compactBytes, log: silent });
  return { store, records: decodeJournal(recovered) };
}

function short(records: readonly JournalRecord[]): string[] {
  return records.map((r) => `${r.shard}:${[...r.update].join(',')}`);
}

/** A promise and the functions that settle it. */
function deferred(): { promise: Promise<void>; resolve: () => void; reject: (err: Error) => void } {
  let resolve!: () => void;
  let reject!: (err: Error) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

test('records round-trip through the store, in order, with their shard', async () => {
  const dir = dirs.make();
  const { store } = await reopen(dir);
  const journal = new Journal(store, async () => {}, silent);
  await Promise.all([journal.append(3, bytes(1, 2)), journal.append(0, bytes(9)), journal.append(63, bytes(7, 7, 7))]);
  await journal.close();
  const { store: again, records } = await reopen(dir);
  assert.equal(short(records), ['3:1,2', '0:9', '63:7,7,7']);
  await again.close();
});

test('a trim waits for the shard logs, drops what they cover, and keeps what came meanwhile', async () => {
  const dir = dirs.make();
  // a tiny trim size: the second append starts a trim
  const { store } = await reopen(dir, 16);
  const synced = deferred();
  let syncCalls = 0;
  const journal = new Journal(
    store,
    () => {
      syncCalls++;
      return synced.promise;
    },
    silent,
  );
  await journal.append(1, new Uint8Array(12).fill(1));
  await journal.append(2, new Uint8Array(12).fill(2));
  assert.is(syncCalls, 1, 'a trim began and asked the shards to sync');
  // appended while the shards sync: their shard logs may not have it on disk yet
  await journal.append(5, bytes(5, 5));
  assert.not.ok(readdirSync(dir).includes('snapshot.ydoc'), 'nothing is trimmed before the shard logs are synced');
  synced.resolve();
  await journal.settled();
  assert.ok(readdirSync(dir).includes('snapshot.ydoc'), 'trimmed once they are');
  await journal.append(6, bytes(6));
  await journal.close();
  const { store: again, records } = await reopen(dir);
  assert.equal(short(records), ['5:5,5', '6:6'], 'the synced records are gone; the one appended during the trim and the one after are kept');
  await again.close();
});

test('a trim whose shard sync fails drops nothing', async () => {
  const dir = dirs.make();
  const { store } = await reopen(dir, 16);
  const journal = new Journal(store, () => Promise.reject(new Error('disk full')), silent);
  await journal.append(1, new Uint8Array(12).fill(1));
  await journal.append(2, new Uint8Array(12).fill(2));
  await journal.settled();
  await journal.close();
  const { store: again, records } = await reopen(dir);
  assert.equal(records.length, 2, 'both records kept');
  await again.close();
});

test('a counter whose shard logs lost what they had not synced recovers the acknowledged items from the journal', async () => {
  const dir = dirs.make();
  const config = counterConfig({ LOG_LEVEL: 'silent', HOST: '127.0.0.1', COUNTER_PORT: '0', COUNTER_ID: 'solo', DATA_DIR: dir, METRICS: 'off', SHARDS: '4' });
  const counter = await Counter.start(config, silent);
  const items = Array.from({ length: 40 }, (_, i) => ({ tenant: `t${i % 8}`, id: `i${i}` }));
  try {
    await waitFor(() => counter.ready, 10_000, 'the counter to be ready');
    await counter.add(items.slice(0, 20));
    await counter.add(items.slice(20));
  } finally {
    await counter.close();
  }
  // as if the machine lost power before the shard logs' lazy sync: their logs are gone, and with
  // them every item, but for the journal (the snapshots are empty this early)
  for (const shard of readdirSync(join(dir, 'shards'))) {
    for (const f of readdirSync(join(dir, 'shards', shard))) if (f.startsWith('log-')) rmSync(join(dir, 'shards', shard, f));
  }
  const { store, records } = await reopen(join(dir, 'journal'));
  await store.close();
  const held = new GSet(silent);
  for (const r of records) held.apply(r.update, LOCAL);
  assert.is(held.size, 40, 'the journal holds every acknowledged item');
  held.close();

  const again = await Counter.start(config, silent);
  try {
    await waitFor(() => again.ready, 10_000, 'the restarted counter to be ready');
    for (let t = 0; t < 8; t++) assert.is(again.count(`t${t}`), 5, `tenant t${t} (shard ${shardOf(`t${t}`, 4)})`);
  } finally {
    await again.close();
  }
  // and the shard logs have them again: without the journal, a restart still counts them
  rmSync(join(dir, 'journal'), { recursive: true });
  const third = await Counter.start(config, silent);
  try {
    await waitFor(() => third.ready, 10_000, 'the counter to be ready a third time');
    assert.is(third.items, 40);
  } finally {
    await third.close();
  }
});

test.run();
