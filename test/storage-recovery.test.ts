/**
 * Recovery of a log store's directory: first the pure verdict on a log's bytes (parseLog), then
 * what opening a store does with torn tails, damaged logs and snapshots, and a crashed
 * compaction's leftovers.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { appendFileSync, existsSync, readdirSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import * as Y from 'yjs';
import { parseLog } from '../src/counter/storage/recovery.ts';
import { appendAll, closedStoreWith, logFiles, makeDoc, onlyLog, openStore, recordOffset, replay, tempDirs, writeItems } from './support/storage.ts';

const dirs = tempDirs('cm-recovery-');
test.after(() => dirs.removeAll());

// Built here rather than with the codec, so these tests stand on the documented format alone.
const MAGIC = Buffer.from('CMLOG001', 'latin1');
function frame(payload: Uint8Array | string): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload) : payload;
  const head = Buffer.alloc(8);
  head.writeUInt32LE(body.length, 0);
  head.writeUInt32LE(crc32(body), 4);
  return Buffer.concat([head, body]);
}
const A = frame('first record');
const B = frame('second record');
const C = frame('third record');
const text = (records: Uint8Array[]) => records.map((r) => Buffer.from(r).toString());

test('parseLog: a clean log gives its records in order; a header alone gives none', () => {
  const clean = parseLog(Buffer.concat([MAGIC, A, B, C]), true);
  assert.equal(text(clean.records), ['first record', 'second record', 'third record']);
  assert.is(clean.torn, false);
  assert.is(clean.damage, null);
  const empty = parseLog(Buffer.from(MAGIC), false);
  assert.equal(empty.records, []);
  assert.is(empty.torn, false);
  assert.is(empty.damage, null);
});

test('parseLog: a cut last record or a zero-filled tail is torn in the last log, damage in an earlier one', () => {
  const goodEnd = MAGIC.length + A.length + B.length;
  for (const tail of [C.subarray(0, C.length - 3), C.subarray(0, 5), Buffer.alloc(4096)]) {
    const buf = Buffer.concat([MAGIC, A, B, tail]);
    const last = parseLog(buf, true);
    assert.equal(text(last.records), ['first record', 'second record']);
    assert.is(last.torn, true);
    assert.is(last.goodEnd, goodEnd);
    assert.is(last.damage, null);
    const earlier = parseLog(buf, false);
    assert.equal(text(earlier.records), ['first record', 'second record']);
    assert.is(earlier.torn, false);
    assert.is(earlier.damage, `unreadable bytes from offset ${goodEnd} to end of file`);
  }
});

test('parseLog: a corrupt record with good records after it is damage, and the later records are salvaged', () => {
  const middle = Buffer.concat([MAGIC, A, B, C]);
  const at = MAGIC.length + A.length;
  middle[at + 8 + 2] = (middle[at + 8 + 2] ?? 0) ^ 0x5a; // a payload byte of B
  const payloadHit = parseLog(middle, true);
  assert.equal(text(payloadHit.records), ['first record', 'third record']);
  assert.is(payloadHit.torn, false);
  assert.is(payloadHit.damage, `corrupt record at offset ${at}`);

  // a length field that runs past the end must not pass for a torn tail and cut C off
  const longLength = Buffer.concat([MAGIC, A, B, C]);
  longLength.writeUInt32LE(1 << 20, at);
  const lengthHit = parseLog(longLength, true);
  assert.equal(text(lengthHit.records), ['first record', 'third record']);
  assert.is(lengthHit.damage, `corrupt record at offset ${at}`);

  // damage followed by a torn-looking tail stays damage: the tail is not cut separately
  const both = Buffer.concat([middle, C.subarray(0, 6)]);
  const r = parseLog(both, true);
  assert.is(r.torn, false);
  assert.is(r.damage, `corrupt record at offset ${at}`);
});

test('parseLog: a bad magic is damage; a prefix of the magic is a torn header only in the last log', () => {
  const bad = parseLog(Buffer.concat([Buffer.from('XXLOG001', 'latin1'), A]), true);
  assert.equal(bad.records, []);
  assert.is(bad.damage, 'bad magic');
  const prefix = Buffer.from('CMLO', 'latin1');
  const last = parseLog(prefix, true);
  assert.equal({ torn: last.torn, goodEnd: last.goodEnd, damage: last.damage }, { torn: true, goodEnd: 0, damage: null });
  assert.is(parseLog(Buffer.alloc(0), true).damage, null, 'an empty last log (crash right after create) is not damage');
  assert.is(parseLog(prefix, false).damage, 'bad magic');
  assert.is(parseLog(Buffer.from('CMLX', 'latin1'), true).damage, 'bad magic', 'not a prefix of the magic');
});

test('torn tail: a truncated last record is cut off', async () => {
  const dir = dirs.make();
  const { updates } = await closedStoreWith(dir, 30);

  const path = onlyLog(dir);
  const full = statSync(path).size;
  truncateSync(path, full - 3);

  const second = await openStore(dir);
  assert.ok(second.recovered.tornTail);
  assert.equal(second.recovered.damaged, []);
  assert.equal(second.recovered.updates, updates.slice(0, -1));
  const lastLen = updates.at(-1)?.length ?? 0;
  assert.is(statSync(path).size, full - 8 - lastLen);
  // The cut file must take new records cleanly.
  await second.store.append(updates.at(-1) ?? new Uint8Array());
  await second.store.close();

  const third = await openStore(dir);
  assert.is(third.recovered.tornTail, false);
  assert.equal(third.recovered.updates, updates);
  await third.store.close();
});

test('a torn tail before an empty newer log (a crash while rotation had made the next log) is cut, not damage', async () => {
  const dir = dirs.make();
  const { updates } = await closedStoreWith(dir, 30);
  const path = onlyLog(dir);
  const full = statSync(path).size;
  truncateSync(path, full - 3);
  // compaction makes the next log (header only) before appends switch to it
  const seq = Number(/log-(\d+)/.exec(path)?.[1]);
  const next = join(dir, `log-${String(seq + 1).padStart(10, '0')}.ylog`);
  writeFileSync(next, MAGIC);

  const second = await openStore(dir);
  assert.ok(second.recovered.tornTail);
  assert.equal(second.recovered.damaged, []);
  assert.equal(second.recovered.updates, updates.slice(0, -1));
  assert.not.ok(existsSync(next), 'the empty newer log is gone');
  assert.is(statSync(path).size, full - 8 - (updates.at(-1)?.length ?? 0));
  await second.store.append(updates.at(-1)!);
  await second.store.close();

  const third = await openStore(dir);
  assert.is(third.recovered.tornTail, false);
  assert.equal(third.recovered.damaged, []);
  assert.equal(third.recovered.updates, updates);
  await third.store.close();
});

test('garbage after the last record is cut as a torn tail', async () => {
  const dir = dirs.make();
  const { updates } = await closedStoreWith(dir, 20);

  const path = onlyLog(dir);
  const good = statSync(path).size;
  const garbage = Buffer.alloc(57);
  for (let i = 0; i < garbage.length; i++) garbage[i] = (i * 151 + 7) & 0xff;
  appendFileSync(path, garbage);
  appendFileSync(path, Buffer.alloc(4096)); // zero-filled blocks after a crash look like this

  const second = await openStore(dir);
  assert.ok(second.recovered.tornTail);
  assert.equal(second.recovered.damaged, []);
  assert.equal(second.recovered.updates, updates);
  assert.is(statSync(path).size, good);
  await second.store.close();
});

test('middle corruption: log moved aside, surrounding records kept and re-persisted', async () => {
  const dir = dirs.make();
  const { text, updates } = await closedStoreWith(dir, 20);

  const path = onlyLog(dir);
  const bytes = readFileSync(path);
  const at = recordOffset(updates, 3) + 8 + 1;
  bytes[at] = (bytes[at] ?? 0) ^ 0x5a;
  writeFileSync(path, bytes);

  const second = await openStore(dir);
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
  await second.store.append(updates[3] ?? new Uint8Array());
  await second.store.close();

  const third = await openStore(dir);
  assert.equal(third.recovered.damaged, []);
  assert.equal(third.recovered.updates, [...updates.slice(0, 3), ...updates.slice(4), updates[3]]);
  assert.is(replay(third.recovered), text.toString());
  await third.store.close();
});

test('an unreadable end of an earlier log is damage: every log is salvaged into one fresh log', async () => {
  const dir = dirs.make();
  const { text, updates } = makeDoc();
  writeItems(text, 0, 10);
  const first = await openStore(dir);
  await appendAll(first.store, updates.slice(0, 5));
  await first.store.close();
  const older = onlyLog(dir);
  // a second log, as rotation leaves it, then garbage on the end of the first
  const newer = join(dir, `log-${String(Number(/log-(\d+)/.exec(older)?.[1]) + 1).padStart(10, '0')}.ylog`);
  writeFileSync(newer, Buffer.concat([MAGIC, ...updates.slice(5).map((u) => frame(u))]));
  appendFileSync(older, Buffer.alloc(100, 0xee));

  const second = await openStore(dir);
  assert.equal(second.recovered.updates, updates);
  assert.is(second.recovered.tornTail, false);
  assert.is(second.recovered.damaged.length, 1);
  assert.ok(second.recovered.damaged[0]?.startsWith(`${older}.damaged-`));
  const fresh = onlyLog(dir);
  assert.not.ok([older, newer].includes(fresh), 'the salvaged records are in a new log; the intact one was removed');
  await second.store.close();

  const third = await openStore(dir);
  assert.equal(third.recovered.updates, updates);
  assert.equal(third.recovered.damaged, []);
  await third.store.close();
});

test('bad magic: log moved aside, appends continue in a new log', async () => {
  const dir = dirs.make();
  const { updates } = await closedStoreWith(dir, 5);

  const path = onlyLog(dir);
  const bytes = readFileSync(path);
  bytes.write('XXLOG001', 0, 'latin1');
  writeFileSync(path, bytes);

  const second = await openStore(dir);
  assert.is(second.recovered.damaged.length, 1);
  assert.equal(second.recovered.updates, []);
  const fresh = onlyLog(dir);
  assert.is.not(fresh, path);
  await appendAll(second.store, updates);
  await second.store.close();
  const third = await openStore(dir);
  assert.equal(third.recovered.updates, updates);
  await third.store.close();
});

test('corrupted snapshot: moved aside, logs still replayed', async () => {
  const dir = dirs.make();
  const { doc, text, updates } = makeDoc();
  writeItems(text, 0, 10);
  const first = await openStore(dir);
  await appendAll(first.store, updates);
  await first.store.compact(() => Y.encodeStateAsUpdate(doc));
  const snapPath = join(dir, 'snapshot.ydoc');
  assert.ok(existsSync(snapPath));
  writeItems(text, 10, 20);
  await appendAll(first.store, updates.slice(10));
  await first.store.close();

  const intact = await openStore(dir);
  assert.ok(intact.recovered.snapshot !== null);
  assert.equal(intact.recovered.updates, updates.slice(10));
  assert.is(replay(intact.recovered), text.toString());
  await intact.store.close();

  const bytes = readFileSync(snapPath);
  bytes[20] = (bytes[20] ?? 0) ^ 0xff;
  writeFileSync(snapPath, bytes);

  const second = await openStore(dir);
  assert.is(second.recovered.snapshot, null);
  assert.is(second.recovered.damaged.length, 1);
  const moved = second.recovered.damaged[0] ?? '';
  assert.ok(moved.includes('snapshot.ydoc.damaged-'));
  assert.ok(existsSync(moved));
  assert.not.ok(existsSync(snapPath));
  assert.equal(second.recovered.updates, updates.slice(10));
  await second.store.close();
});

test('interrupted compaction leftovers: tmp snapshot removed, old logs replayed', async () => {
  const dir = dirs.make();
  const { text, updates } = await closedStoreWith(dir, 10);
  writeFileSync(join(dir, 'snapshot.ydoc.tmp'), Buffer.from('CMSNAP01half'));
  // A crash during rotation can leave the next log with a partial header.
  const seq = Number(/log-(\d+)/.exec(onlyLog(dir))?.[1]);
  const next = join(dir, `log-${String(seq + 1).padStart(10, '0')}.ylog`);
  writeFileSync(next, Buffer.from('CMLO'));

  const second = await openStore(dir);
  assert.not.ok(existsSync(join(dir, 'snapshot.ydoc.tmp')));
  assert.equal(second.recovered.updates, updates);
  assert.equal(second.recovered.damaged, []);
  assert.is(readFileSync(next).toString('latin1'), 'CMLOG001');
  writeItems(text, 10, 12);
  await appendAll(second.store, updates.slice(10));
  assert.is(statSync(next).size > 8, true, 'appends go to the newest log');
  await second.store.close();

  const third = await openStore(dir);
  assert.equal(third.recovered.updates, updates);
  assert.equal(logFiles(dir).length, 2, 'both logs kept until a compaction');
  assert.not.ok(readdirSync(dir).some((n) => n.includes('.damaged-')));
  await third.store.close();
});

test.run();
