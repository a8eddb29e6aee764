/**
 * The log store: group-commit appends, lazy syncs, failed writes, compaction and its policy, and
 * stores opened side by side. Recovery has its own file (storage-recovery.test.ts), so have the
 * codec (storage-codec), the DATA_DIR lock (storage-lock) and the file helpers (storage-files).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, readFileSync, statSync, writeSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import * as Y from 'yjs';
import { CompactionQueue, DataDirLock, LogStore } from '../src/counter/storage/index.ts';
import { waitFor } from '../src/shared/wait.ts';
import { appendAll, logFiles, logSize, makeDoc, openStore, replay, settled, silentLog, tempDirs, writeItems } from './support/storage.ts';

/** A promise and the function that settles it: what a test holds a step of the store at. */
function gate(): { open: () => void; opened: Promise<void> } {
  let open!: () => void;
  const opened = new Promise<void>((r) => {
    open = r;
  });
  return { open, opened };
}


const dirs = tempDirs('cm-storage-');
test.after(() => dirs.removeAll());

/** Record bytes in the logs of `dir`, headers excluded, as read from the disk. */
function recordBytes(dir: string): number {
  return logSize(dir) - 8 * logFiles(dir).length;
}

test('round trip: every update comes back in order', async () => {
  const dir = dirs.make();
  const { text, updates } = makeDoc();
  writeItems(text, 0, 200);
  const first = await openStore(dir);
  assert.is(first.recovered.snapshot, null);
  assert.equal(first.recovered.updates, []);
  assert.equal(first.recovered.damaged, []);
  assert.is(first.recovered.tornTail, false);
  await Promise.all(updates.map((u) => first.store.append(u)));
  assert.ok(first.store.healthy);
  await first.store.close();

  const second = await openStore(dir);
  assert.equal(second.recovered.updates, updates);
  assert.is(second.recovered.tornTail, false);
  assert.equal(second.recovered.damaged, []);
  assert.is(replay(second.recovered), text.toString());
  await second.store.close();
});

test('group commit: 1000 concurrent appends share a few fsync rounds', async () => {
  const dir = dirs.make();
  const { text, updates } = makeDoc();
  writeItems(text, 0, 1000);
  const { store } = await openStore(dir);
  await Promise.all(updates.map((u) => store.append(u)));
  assert.ok(store.syncRounds >= 1);
  assert.ok(store.syncRounds <= 10, `expected few rounds, got ${store.syncRounds}`);
  await store.close();
  const again = await openStore(dir);
  assert.equal(again.recovered.updates, updates);
  await again.store.close();
});

test('append after close rejects, empty update rejects', async () => {
  const dir = dirs.make();
  const { store } = await openStore(dir);
  try {
    await store.append(new Uint8Array(0));
    assert.unreachable('empty update was accepted');
  } catch (err) {
    assert.instance(err, TypeError);
  }
  await store.close();
  try {
    await store.append(new Uint8Array([1, 2, 3]));
    assert.unreachable('append after close was accepted');
  } catch (err) {
    assert.match((err as Error).message, /closed/);
  }
});

test('files: the directory is created 0700, logs and the snapshot 0600', async () => {
  const dir = join(dirs.make(), 'nested', 'store');
  const { doc, text, updates } = makeDoc();
  writeItems(text, 0, 3);
  const { store } = await openStore(dir);
  await appendAll(store, updates);
  await store.compact(() => Y.encodeStateAsUpdate(doc));
  await store.close();
  assert.is(statSync(dir).mode & 0o777, 0o700);
  for (const name of [...logFiles(dir), 'snapshot.ydoc']) assert.is(statSync(join(dir, name)).mode & 0o777, 0o600, name);
});

test('compaction under concurrent appends', async () => {
  const dir = dirs.make();
  const { doc, text } = makeDoc();
  const first = await openStore(dir, 50_000);
  const store = first.store;
  let pending: Promise<void>[] = [];
  doc.on('update', (u: Uint8Array) => pending.push(store.append(u)));

  writeItems(text, 0, 3000);
  await Promise.all(pending);
  assert.ok(store.needsCompaction());
  const before = logSize(dir);
  const oldLogs = logFiles(dir);

  pending = [];
  writeItems(text, 3000, 3500);
  const compaction = store.compact(() => Y.encodeStateAsUpdate(doc));
  assert.is(store.compact(() => Y.encodeStateAsUpdate(doc)), compaction, 'a second call joins the running compaction');
  writeItems(text, 3500, 4000);
  await Promise.all([...pending, compaction]);
  assert.ok(store.healthy);
  assert.not.ok(store.needsCompaction());
  await store.close();

  for (const name of oldLogs) assert.not.ok(existsSync(join(dir, name)), `${name} should be gone`);
  assert.ok(logSize(dir) < before, `log shrank from ${before} to ${logSize(dir)}`);
  assert.is(logFiles(dir).length, 1);

  const second = await openStore(dir);
  assert.ok(second.recovered.snapshot !== null);
  assert.is(replay(second.recovered), text.toString());
  assert.ok(replay(second.recovered).includes('item-3999;'));
  await second.store.close();
});

test('compaction policy: the logs must outgrow both compactBytes and the snapshot, also after a restart', async () => {
  const dir = dirs.make();
  const compactBytes = 2000;
  const { doc, text, updates } = makeDoc();
  let next = 0;
  /** Append one item at a time until `done` holds for the bytes on disk. */
  const appendUntil = async (store: LogStore, done: (bytes: number) => boolean): Promise<void> => {
    while (!done(recordBytes(dir))) {
      writeItems(text, next, next + 1);
      next++;
      await store.append(updates.at(-1)!);
    }
  };

  const first = await openStore(dir, compactBytes);
  await appendUntil(first.store, (bytes) => bytes > compactBytes - 100);
  assert.not.ok(first.store.needsCompaction(), `${recordBytes(dir)} record bytes, not past compactBytes`);
  await appendUntil(first.store, (bytes) => bytes > compactBytes);
  assert.ok(first.store.needsCompaction(), `${recordBytes(dir)} record bytes, past compactBytes and no snapshot`);

  // a snapshot larger than compactBytes raises the bound to its own size
  writeItems(text, next, next + 1000);
  next += 1000;
  const state = Y.encodeStateAsUpdate(doc);
  assert.ok(state.length > 2 * compactBytes, `state of ${state.length} bytes`);
  await first.store.compact(() => state);
  assert.is(readFileSync(join(dir, 'snapshot.ydoc')).length, 16 + state.length);
  assert.not.ok(first.store.needsCompaction());
  await appendUntil(first.store, (bytes) => bytes > compactBytes + 100);
  assert.not.ok(first.store.needsCompaction(), `${recordBytes(dir)} record bytes: past compactBytes, within the snapshot's ${state.length}`);
  await first.store.close();

  // the bound comes from the snapshot on disk, so it survives a restart
  const second = await openStore(dir, compactBytes);
  assert.not.ok(second.store.needsCompaction(), 'after reopening');
  await appendUntil(second.store, (bytes) => bytes > state.length);
  assert.ok(second.store.needsCompaction(), `${recordBytes(dir)} record bytes, past the snapshot's ${state.length}`);
  await second.store.close();
});

test('write failure: appends reject, health flips, the next round recovers', async () => {
  const dir = dirs.make();
  const { text, updates } = makeDoc();
  writeItems(text, 0, 6);
  const { store } = await openStore(dir);
  await appendAll(store, updates.slice(0, 2));

  // White-box: fail the next write after half its bytes reached the file,
  // which is what a full disk looks like.
  type Log = { fh: FileHandle; size: number };
  const patchable = store as unknown as { writeAt: (log: Log, bytes: Uint8Array) => void };
  const realWrite = patchable.writeAt;
  patchable.writeAt = (log: Log, bytes: Uint8Array) => {
    writeSync(log.fh.fd, bytes, 0, Math.max(1, Math.floor(bytes.length / 2)), log.size);
    throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
  };
  const results = await Promise.allSettled(updates.slice(2, 4).map((u) => store.append(u)));
  for (const r of results) {
    assert.is(r.status, 'rejected');
    if (r.status === 'rejected') {
      assert.match((r.reason as Error).message, /^could not persist update: ENOSPC/);
      assert.is(((r.reason as Error).cause as { code?: string }).code, 'ENOSPC');
    }
  }
  assert.is(store.healthy, false);

  patchable.writeAt = realWrite;
  await appendAll(store, updates.slice(4));
  assert.is(store.healthy, true);
  await store.close();

  const again = await openStore(dir);
  assert.is(again.recovered.tornTail, false);
  assert.equal(again.recovered.damaged, []);
  assert.equal(again.recovered.updates, [...updates.slice(0, 2), ...updates.slice(4)]);
  await again.store.close();
});

/** White-box: counts the fdatasyncs of the store's current log from now on. */
function countSyncs(store: LogStore): () => number {
  const fh = (store as unknown as { current: { fh: FileHandle } }).current.fh;
  let syncs = 0;
  const realSync = fh.datasync.bind(fh);
  fh.datasync = () => {
    syncs++;
    return realSync();
  };
  return () => syncs;
}

test("non-durable appends (a peer's updates) resolve without an fdatasync; a lazy sync follows, and a durable append syncs them at once", async () => {
  const dir = dirs.make();
  const { text, updates } = makeDoc();
  writeItems(text, 0, 6);
  const { store } = await openStore(dir);
  const syncs = countSyncs(store);
  for (const u of updates.slice(0, 3)) await store.append(u, false);
  assert.is(syncs(), 0, 'no sync waited for');
  await waitFor(() => syncs() === 1, 5000, 'the lazy sync within LAZY_SYNC_MS');
  await store.append(updates[3]!, false);
  await store.append(updates[4]!);
  assert.is(syncs(), 2, 'the durable append synced (covering the non-durable one before it)');
  await store.append(updates[5]!, false);
  await store.close();
  assert.is(syncs(), 3, 'close syncs what is left');

  const again = await openStore(dir);
  assert.equal(again.recovered.updates, updates);
  await again.store.close();
});

test('sync(): after non-durable appends it syncs at once; with nothing unsynced it costs nothing', async () => {
  const { text, updates } = makeDoc();
  writeItems(text, 0, 1);
  const { store } = await openStore(dirs.make());
  const syncs = countSyncs(store);
  await store.sync();
  assert.is(syncs(), 0, 'nothing to sync');
  await store.append(updates[0]!, false);
  assert.is(syncs(), 0);
  await store.sync();
  assert.is(syncs(), 1, 'the peer update is on disk before sync() resolves, not a second later');
  await store.close();
});

test('stores sharing a compaction queue: concurrent compactions of many run one at a time, all complete under appends, and a restart recovers every store intact', async () => {
  const queue = new CompactionQueue(1);
  const n = 12;
  const stores = await Promise.all(
    Array.from({ length: n }, async () => {
      const dir = dirs.make();
      const { doc, text, updates } = makeDoc();
      const { store } = await LogStore.open({ dir, compactBytes: 2000, log: silentLog, compactions: queue });
      return { dir, doc, text, updates, store };
    }),
  );
  let running = 0;
  let most = 0;
  let snapshots = 0;
  const compactions: Promise<void>[] = [];
  const appends: Promise<void>[] = [];
  for (let round = 0; round < 3; round++) {
    for (const [i, s] of stores.entries()) {
      const from = s.updates.length;
      writeItems(s.text, round * 1000 + i * 100, round * 1000 + i * 100 + 60);
      for (const u of s.updates.slice(from)) appends.push(s.store.append(u, u.length % 2 === 0));
    }
    for (const s of stores) {
      compactions.push(
        s.store.compactInParts(async () => {
          running++;
          most = Math.max(most, running);
          snapshots++;
          await new Promise((r) => setImmediate(r)); // a sliced encoding yields between parts
          const state = Y.encodeStateAsUpdate(s.doc);
          running--;
          return [state.subarray(0, 10), state.subarray(10)];
        }),
      );
    }
  }
  await Promise.all([...appends, ...compactions]);
  assert.is(most, 1, 'never two compactions at once');
  assert.ok(snapshots >= n, `every store compacted (${snapshots} snapshots)`);
  assert.equal([queue.active, queue.queued], [0, 0]);
  for (const s of stores) await s.store.close();
  for (const s of stores) {
    const again = await openStore(s.dir);
    assert.ok(again.recovered.snapshot !== null, 'a snapshot was written');
    assert.is(replay(again.recovered), s.text.toString());
    assert.equal(again.recovered.damaged, []);
    await again.store.close();
  }
});

test('the next log is made outside the write loop: durable appends go on while it is created and synced', async () => {
  const dir = dirs.make();
  const { doc, text, updates } = makeDoc();
  const { store } = await openStore(dir);
  writeItems(text, 0, 10);
  await appendAll(store, updates);
  // white-box: hold the making of the next log (its create, fsync and directory fsync)
  const held = gate();
  const patchable = store as unknown as { createNextLog: () => Promise<unknown> };
  const realCreate = patchable.createNextLog.bind(store);
  patchable.createNextLog = async () => {
    await held.opened;
    return realCreate();
  };
  const compaction = store.compact(() => Y.encodeStateAsUpdate(doc));
  writeItems(text, 10, 20);
  await Promise.all(updates.slice(10).map((u) => store.append(u, true)));
  assert.not.ok(await settled(compaction), 'the compaction still waits for its new log');
  held.open();
  await compaction;
  writeItems(text, 20, 25);
  await appendAll(store, updates.slice(20));
  await store.close();
  const again = await openStore(dir);
  assert.is(replay(again.recovered), text.toString());
  await again.store.close();
});

test('after a rotation, a durable append also waits for the old log to hold what non-durable appends left in it', async () => {
  const dir = dirs.make();
  const { doc, text, updates } = makeDoc();
  const { store } = await openStore(dir);
  writeItems(text, 0, 3);
  for (const u of updates) await store.append(u, false);
  // white-box: hold the old log's fdatasync
  const held = gate();
  const old = (store as unknown as { current: { fh: FileHandle } }).current.fh;
  const realSync = old.datasync.bind(old);
  let oldSyncs = 0;
  old.datasync = async () => {
    oldSyncs++;
    await held.opened;
    return realSync();
  };
  const compaction = store.compact(() => Y.encodeStateAsUpdate(doc));
  const current = () => (store as unknown as { current: { fh: FileHandle } }).current.fh;
  await waitFor(() => current() !== old, 5000, 'appends to switch to the next log');
  // count the new log's fdatasyncs that finished: once one has, only the old log can hold the append back
  const fresh = current();
  const realFresh = fresh.datasync.bind(fresh);
  let freshSynced = 0;
  fresh.datasync = async () => {
    await realFresh();
    freshSynced++;
  };
  writeItems(text, 3, 4);
  const durable = store.append(updates[3]!, true);
  const synced = store.sync();
  await waitFor(() => freshSynced >= 1, 5000, 'the new log to be synced');
  assert.not.ok(await settled(durable), 'the durable append waits for the old log');
  assert.not.ok(await settled(synced), 'so does sync()');
  assert.ok(oldSyncs >= 1, 'the old log is being synced');
  held.open();
  await Promise.all([durable, synced, compaction]);
  await store.close();
  const again = await openStore(dir);
  assert.is(replay(again.recovered), text.toString());
  await again.store.close();
});

test('a store closed while its compaction waits for a turn gives the turn up and closes at once', async () => {
  const queue = new CompactionQueue(1);
  const open = async () => {
    const dir = dirs.make();
    const { doc, text, updates } = makeDoc();
    writeItems(text, 0, 5);
    const { store } = await LogStore.open({ dir, compactBytes: 2000, log: silentLog, compactions: queue });
    await appendAll(store, updates);
    return { dir, doc, store };
  };
  const a = await open();
  const b = await open();
  const held = gate();
  const first = a.store.compactInParts(async () => {
    await held.opened;
    return [Y.encodeStateAsUpdate(a.doc)];
  });
  let bSnapshots = 0;
  const waiting = b.store.compact(() => {
    bSnapshots++;
    return Y.encodeStateAsUpdate(b.doc);
  });
  await waitFor(() => queue.queued === 1, 2000, 'b to wait for its turn');
  await b.store.close();
  await waiting;
  assert.is(bSnapshots, 0, 'the withdrawn compaction never ran');
  assert.not.ok(existsSync(join(b.dir, 'snapshot.ydoc')));
  held.open();
  await first;
  assert.ok(existsSync(join(a.dir, 'snapshot.ydoc')));
  await a.store.close();
});

test('stores take no lock: one in DATA_DIR beside the lock and one per subdirectory recover independently', async () => {
  const dataDir = dirs.make();
  const lock = await DataDirLock.acquire(dataDir, silentLog);
  try {
    const docs = ['', 'shard-a', 'shard-b'].map((sub) => ({ dir: join(dataDir, sub), ...makeDoc() }));
    const stores = await Promise.all(docs.map((d) => openStore(d.dir)));
    for (const [i, d] of docs.entries()) writeItems(d.text, i * 100, i * 100 + 20);
    await Promise.all(stores.map(({ store }, i) => appendAll(store, docs[i]!.updates)));
    // while the first store is open on the same directory, the lock stays the lock's
    assert.ok(existsSync(lock.path));
    await Promise.all(stores.map(({ store }) => store.close()));

    for (const d of docs) {
      const { store, recovered } = await openStore(d.dir);
      assert.equal(recovered.updates, d.updates, `store in ${d.dir}`);
      assert.equal(recovered.damaged, []);
      await store.close();
    }
    assert.not.ok(existsSync(join(dataDir, 'shard-a', 'counter.lock')), 'a store makes no lock of its own');
  } finally {
    await lock.close();
  }
});

test.run();
