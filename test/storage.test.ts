import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import { appendFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import * as Y from 'yjs';
import { DataDirLockedError, Storage, type Recovered } from '../src/counter/storage.ts';
import { waitFor } from '../src/shared/wait.ts';

const log = pino({ level: 'silent' });
const dirs: string[] = [];

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'cm-storage-'));
  dirs.push(dir);
  return dir;
}

test.after(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function open(dir: string, compactBytes = 1 << 20): Promise<{ storage: Storage; recovered: Recovered }> {
  return Storage.open({ dir, compactBytes, log });
}

/** A doc whose every local edit is captured as a real Yjs update. */
function makeDoc(): { doc: Y.Doc; text: Y.Text; updates: Uint8Array[] } {
  const doc = new Y.Doc();
  const text = doc.getText('log0');
  const updates: Uint8Array[] = [];
  doc.on('update', (u: Uint8Array) => updates.push(u));
  return { doc, text, updates };
}

function writeItems(text: Y.Text, from: number, to: number): void {
  for (let i = from; i < to; i++) text.insert(text.length, `item-${i};`);
}

function logFiles(dir: string): string[] {
  return readdirSync(dir)
    .filter((n) => /^log-\d+\.ylog$/.test(n))
    .sort();
}

function logSize(dir: string): number {
  return logFiles(dir).reduce((sum, n) => sum + statSync(join(dir, n)).size, 0);
}

function onlyLog(dir: string): string {
  const files = logFiles(dir);
  assert.is(files.length, 1, `expected one log file, got ${files.join(', ')}`);
  return join(dir, files[0] ?? '');
}

function replay(recovered: Recovered): string {
  const doc = new Y.Doc();
  if (recovered.snapshot !== null) Y.applyUpdate(doc, recovered.snapshot);
  for (const u of recovered.updates) Y.applyUpdate(doc, u);
  return doc.getText('log0').toString();
}

/** Byte offset of record `i` in a log holding `updates`, counting the 8-byte header and frame heads. */
function recordOffset(updates: Uint8Array[], i: number): number {
  let off = 8;
  for (let j = 0; j < i; j++) off += 8 + (updates[j]?.length ?? 0);
  return off;
}

async function appendAll(storage: Storage, updates: Uint8Array[]): Promise<void> {
  for (const u of updates) await storage.append(u);
}

test('round trip: every update comes back in order', async () => {
  const dir = tempDir();
  const { text, updates } = makeDoc();
  writeItems(text, 0, 200);
  const first = await open(dir);
  assert.is(first.recovered.snapshot, null);
  assert.equal(first.recovered.updates, []);
  assert.equal(first.recovered.damaged, []);
  assert.is(first.recovered.tornTail, false);
  await Promise.all(updates.map((u) => first.storage.append(u)));
  assert.ok(first.storage.healthy);
  assert.ok(first.storage.logBytes > 0);
  await first.storage.close();

  const second = await open(dir);
  assert.equal(second.recovered.updates, updates);
  assert.is(second.recovered.tornTail, false);
  assert.equal(second.recovered.damaged, []);
  assert.is(replay(second.recovered), text.toString());
  await second.storage.close();
});

test('group commit: 1000 concurrent appends share a few fsync rounds', async () => {
  const dir = tempDir();
  const { text, updates } = makeDoc();
  writeItems(text, 0, 1000);
  const { storage } = await open(dir);
  await Promise.all(updates.map((u) => storage.append(u)));
  assert.ok(storage.syncRounds >= 1);
  assert.ok(storage.syncRounds <= 10, `expected few rounds, got ${storage.syncRounds}`);
  await storage.close();
  const again = await open(dir);
  assert.equal(again.recovered.updates, updates);
  await again.storage.close();
});

test('append after close rejects, empty update rejects', async () => {
  const dir = tempDir();
  const { storage } = await open(dir);
  try {
    await storage.append(new Uint8Array(0));
    assert.unreachable('empty update was accepted');
  } catch (err) {
    assert.instance(err, TypeError);
  }
  await storage.close();
  try {
    await storage.append(new Uint8Array([1, 2, 3]));
    assert.unreachable('append after close was accepted');
  } catch (err) {
    assert.match((err as Error).message, /closed/);
  }
});

test('torn tail: a truncated last record is cut off', async () => {
  const dir = tempDir();
  const { text, updates } = makeDoc();
  writeItems(text, 0, 30);
  const first = await open(dir);
  await appendAll(first.storage, updates);
  await first.storage.close();

  const path = onlyLog(dir);
  const full = statSync(path).size;
  truncateSync(path, full - 3);

  const second = await open(dir);
  assert.ok(second.recovered.tornTail);
  assert.equal(second.recovered.damaged, []);
  assert.equal(second.recovered.updates, updates.slice(0, -1));
  const lastLen = updates.at(-1)?.length ?? 0;
  assert.is(statSync(path).size, full - 8 - lastLen);
  // The cut file must take new records cleanly.
  await second.storage.append(updates.at(-1) ?? new Uint8Array());
  await second.storage.close();

  const third = await open(dir);
  assert.is(third.recovered.tornTail, false);
  assert.equal(third.recovered.updates, updates);
  await third.storage.close();
});

test('garbage after the last record is cut as a torn tail', async () => {
  const dir = tempDir();
  const { text, updates } = makeDoc();
  writeItems(text, 0, 20);
  const first = await open(dir);
  await appendAll(first.storage, updates);
  await first.storage.close();

  const path = onlyLog(dir);
  const good = statSync(path).size;
  const garbage = Buffer.alloc(57);
  for (let i = 0; i < garbage.length; i++) garbage[i] = (i * 151 + 7) & 0xff;
  appendFileSync(path, garbage);
  appendFileSync(path, Buffer.alloc(4096)); // zero-filled blocks after a crash look like this

  const second = await open(dir);
  assert.ok(second.recovered.tornTail);
  assert.equal(second.recovered.damaged, []);
  assert.equal(second.recovered.updates, updates);
  assert.is(statSync(path).size, good);
  await second.storage.close();
});

test('middle corruption: log moved aside, surrounding records kept and re-persisted', async () => {
  const dir = tempDir();
  const { text, updates } = makeDoc();
  writeItems(text, 0, 20);
  const first = await open(dir);
  await appendAll(first.storage, updates);
  await first.storage.close();

  const path = onlyLog(dir);
  const bytes = readFileSync(path);
  const at = recordOffset(updates, 3) + 8 + 1;
  bytes[at] = (bytes[at] ?? 0) ^ 0x5a;
  writeFileSync(path, bytes);

  const second = await open(dir);
  assert.is(second.recovered.damaged.length, 1);
  const moved = second.recovered.damaged[0] ?? '';
  assert.ok(moved.includes('.damaged-'));
  assert.ok(existsSync(moved), 'damaged file must be kept');
  assert.is(readFileSync(moved).length, bytes.length);
  assert.not.ok(existsSync(path));
  assert.is(second.recovered.tornTail, false);
  // Records before the damage are kept; so are the ones after it, since the
  // length field of the bad record was intact.
  assert.equal(second.recovered.updates, [...updates.slice(0, 3), ...updates.slice(4)]);
  await second.storage.append(updates[3] ?? new Uint8Array());
  await second.storage.close();

  const third = await open(dir);
  assert.equal(third.recovered.damaged, []);
  assert.equal(third.recovered.updates, [...updates.slice(0, 3), ...updates.slice(4), updates[3]]);
  assert.is(replay(third.recovered), text.toString());
  await third.storage.close();
});

test('bad magic: log moved aside, appends continue in a new log', async () => {
  const dir = tempDir();
  const { text, updates } = makeDoc();
  writeItems(text, 0, 5);
  const first = await open(dir);
  await appendAll(first.storage, updates);
  await first.storage.close();

  const path = onlyLog(dir);
  const bytes = readFileSync(path);
  bytes.write('XXLOG001', 0, 'latin1');
  writeFileSync(path, bytes);

  const second = await open(dir);
  assert.is(second.recovered.damaged.length, 1);
  assert.equal(second.recovered.updates, []);
  const fresh = onlyLog(dir);
  assert.is.not(fresh, path);
  await appendAll(second.storage, updates);
  await second.storage.close();
  const third = await open(dir);
  assert.equal(third.recovered.updates, updates);
  await third.storage.close();
});

test('corrupted snapshot: moved aside, logs still replayed', async () => {
  const dir = tempDir();
  const { doc, text, updates } = makeDoc();
  writeItems(text, 0, 10);
  const first = await open(dir);
  await appendAll(first.storage, updates);
  await first.storage.compact(() => Y.encodeStateAsUpdate(doc));
  const snapPath = join(dir, 'snapshot.ydoc');
  assert.ok(existsSync(snapPath));
  writeItems(text, 10, 20);
  await appendAll(first.storage, updates.slice(10));
  await first.storage.close();

  const intact = await open(dir);
  assert.ok(intact.recovered.snapshot !== null);
  assert.equal(intact.recovered.updates, updates.slice(10));
  assert.is(replay(intact.recovered), text.toString());
  await intact.storage.close();

  const bytes = readFileSync(snapPath);
  bytes[20] = (bytes[20] ?? 0) ^ 0xff;
  writeFileSync(snapPath, bytes);

  const second = await open(dir);
  assert.is(second.recovered.snapshot, null);
  assert.is(second.recovered.damaged.length, 1);
  const moved = second.recovered.damaged[0] ?? '';
  assert.ok(moved.includes('snapshot.ydoc.damaged-'));
  assert.ok(existsSync(moved));
  assert.not.ok(existsSync(snapPath));
  assert.equal(second.recovered.updates, updates.slice(10));
  await second.storage.close();
});

test('compaction under concurrent appends', async () => {
  const dir = tempDir();
  const { doc, text } = makeDoc();
  const first = await open(dir, 50_000);
  const storage = first.storage;
  let pending: Promise<void>[] = [];
  doc.on('update', (u: Uint8Array) => pending.push(storage.append(u)));

  writeItems(text, 0, 3000);
  await Promise.all(pending);
  assert.ok(storage.needsCompaction());
  const before = logSize(dir);
  const oldLogs = logFiles(dir);

  pending = [];
  writeItems(text, 3000, 3500);
  const compaction = storage.compact(() => Y.encodeStateAsUpdate(doc));
  assert.is(storage.compact(() => Y.encodeStateAsUpdate(doc)), compaction, 'a second call joins the running compaction');
  writeItems(text, 3500, 4000);
  await Promise.all([...pending, compaction]);
  assert.ok(storage.healthy);
  assert.not.ok(storage.needsCompaction());
  await storage.close();

  for (const name of oldLogs) assert.not.ok(existsSync(join(dir, name)), `${name} should be gone`);
  assert.ok(logSize(dir) < before, `log shrank from ${before} to ${logSize(dir)}`);
  assert.is(logFiles(dir).length, 1);

  const second = await open(dir);
  assert.ok(second.recovered.snapshot !== null);
  assert.is(replay(second.recovered), text.toString());
  assert.ok(replay(second.recovered).includes('item-3999;'));
  await second.storage.close();
});

test('write failure: appends reject, health flips, the next round recovers', async () => {
  const dir = tempDir();
  const { text, updates } = makeDoc();
  writeItems(text, 0, 6);
  const { storage } = await open(dir);
  await appendAll(storage, updates.slice(0, 2));

  // White-box: fail the next write after half its bytes reached the file,
  // which is what a full disk looks like.
  type Log = { fh: FileHandle; size: number };
  const patchable = storage as unknown as { writeAt: (log: Log, bytes: Uint8Array) => void };
  const realWrite = patchable.writeAt;
  patchable.writeAt = (log: Log, bytes: Uint8Array) => {
    writeSync(log.fh.fd, bytes, 0, Math.max(1, Math.floor(bytes.length / 2)), log.size);
    throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
  };
  const results = await Promise.allSettled(updates.slice(2, 4).map((u) => storage.append(u)));
  for (const r of results) {
    assert.is(r.status, 'rejected');
    if (r.status === 'rejected') {
      assert.match((r.reason as Error).message, /^could not persist update: ENOSPC/);
      assert.is(((r.reason as Error).cause as { code?: string }).code, 'ENOSPC');
    }
  }
  assert.is(storage.healthy, false);

  patchable.writeAt = realWrite;
  await appendAll(storage, updates.slice(4));
  assert.is(storage.healthy, true);
  await storage.close();

  const again = await open(dir);
  assert.is(again.recovered.tornTail, false);
  assert.equal(again.recovered.damaged, []);
  assert.equal(again.recovered.updates, [...updates.slice(0, 2), ...updates.slice(4)]);
  await again.storage.close();
});

test('non-durable appends (a peer\'s updates) resolve without an fdatasync; a lazy sync follows, and a durable append syncs them at once', async () => {
  const dir = tempDir();
  const { text, updates } = makeDoc();
  writeItems(text, 0, 6);
  const { storage } = await open(dir);
  // white-box: count the syncs of the current log
  const fh = (storage as unknown as { current: { fh: FileHandle } }).current.fh;
  let syncs = 0;
  const realSync = fh.datasync.bind(fh);
  fh.datasync = () => {
    syncs++;
    return realSync();
  };
  for (const u of updates.slice(0, 3)) await storage.append(u, false);
  assert.is(syncs, 0, 'no sync waited for');
  await waitFor(() => syncs === 1, 5000, 'the lazy sync within LAZY_SYNC_MS');
  await storage.append(updates[3]!, false);
  await storage.append(updates[4]!);
  assert.is(syncs, 2, 'the durable append synced (covering the non-durable one before it)');
  await storage.append(updates[5]!, false);
  await storage.close();
  assert.is(syncs, 3, 'close syncs what is left');

  const again = await open(dir);
  assert.equal(again.recovered.updates, updates);
  await again.storage.close();
});

test('sync(): after non-durable appends it syncs at once; with nothing unsynced it costs nothing', async () => {
  const { text, updates } = makeDoc();
  writeItems(text, 0, 1);
  const { storage } = await open(tempDir());
  const fh = (storage as unknown as { current: { fh: FileHandle } }).current.fh;
  let syncs = 0;
  const realSync = fh.datasync.bind(fh);
  fh.datasync = () => {
    syncs++;
    return realSync();
  };
  await storage.sync();
  assert.is(syncs, 0, 'nothing to sync');
  await storage.append(updates[0]!, false);
  assert.is(syncs, 0);
  await storage.sync();
  assert.is(syncs, 1, 'the peer update is on disk before sync() resolves, not a second later');
  await storage.close();
});

test('lock: a second open on a held dir fails until the first closes', async () => {
  const dir = tempDir();
  const first = await open(dir);
  try {
    await open(dir);
    assert.unreachable('second open succeeded');
  } catch (err) {
    assert.instance(err, DataDirLockedError);
    assert.match((err as Error).message, /in use by another running counter/);
    assert.ok((err as Error).message.includes(join(dir, 'counter.lock')));
  }
  await first.storage.close();
  const second = await open(dir);
  await second.storage.close();
});

test('lock: a stale socket from a SIGKILLed process does not block open', async () => {
  const dir = tempDir();
  const lockPath = join(dir, 'counter.lock');
  const child = spawn(
    process.execPath,
    ['-e', "require('net').createServer().listen(process.argv[1], () => console.log('ready'))", lockPath],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      if (d.toString().includes('ready')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`lock holder exited early with ${code}`)));
  });
  // While the holder lives, the dir is locked.
  try {
    await open(dir);
    assert.unreachable('open succeeded while another process held the lock');
  } catch (err) {
    assert.instance(err, DataDirLockedError);
  }
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await exited;
  assert.ok(existsSync(lockPath), 'SIGKILL leaves the socket file behind');

  const { storage } = await open(dir);
  await storage.close();
});

test('lock: a DATA_DIR too long for a socket path is a clear error', async () => {
  const dir = join(tempDir(), 'x'.repeat(120));
  try {
    await open(dir);
    assert.unreachable('open succeeded');
  } catch (err) {
    assert.match((err as Error).message, /too long for its lock socket/);
  }
});

test('interrupted compaction leftovers: tmp snapshot removed, old logs replayed', async () => {
  const dir = tempDir();
  const { text, updates } = makeDoc();
  writeItems(text, 0, 10);
  const first = await open(dir);
  await appendAll(first.storage, updates);
  await first.storage.close();
  writeFileSync(join(dir, 'snapshot.ydoc.tmp'), Buffer.from('CMSNAP01half'));
  // A crash during rotation can leave the next log with a partial header.
  const seq = Number(/log-(\d+)/.exec(onlyLog(dir))?.[1]);
  const next = join(dir, `log-${String(seq + 1).padStart(10, '0')}.ylog`);
  writeFileSync(next, Buffer.from('CMLO'));

  const second = await open(dir);
  assert.not.ok(existsSync(join(dir, 'snapshot.ydoc.tmp')));
  assert.equal(second.recovered.updates, updates);
  assert.equal(second.recovered.damaged, []);
  assert.is(readFileSync(next).toString('latin1'), 'CMLOG001');
  writeItems(text, 10, 12);
  await appendAll(second.storage, updates.slice(10));
  assert.is(statSync(next).size > 8, true, 'appends go to the newest log');
  await second.storage.close();

  const third = await open(dir);
  assert.equal(third.recovered.updates, updates);
  await third.storage.close();
});

test.run();
