/** The on-disk format, byte for byte: file names, magics, frames and the snapshot file. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  decodeSnapshot,
  encodeFrame,
  encodeSnapshot,
  frameEnd,
  framePayload,
  LOG_MAGIC,
  logPath,
  logSeq,
  nextFrame,
  SNAP_MAGIC,
} from '../src/counter/storage/codec.ts';

// crc32("123456789") is the standard check value of CRC-32 (IEEE), 0xcbf43926.
const CHECK = Buffer.from('123456789');
// length 9, then the checksum, both little-endian, then the payload
const CHECK_FRAME = Buffer.concat([Buffer.from('09000000', 'hex'), Buffer.from('2639f4cb', 'hex'), CHECK]);

test('magics and file names are the documented ones', () => {
  assert.is(LOG_MAGIC.toString('latin1'), 'CMLOG001');
  assert.is(SNAP_MAGIC.toString('latin1'), 'CMSNAP01');
  assert.is(logPath('/d', 7), '/d/log-0000000007.ylog');
  assert.is(logSeq('log-0000000007.ylog'), 7);
  assert.is(logSeq('log-12345678901.ylog'), 12345678901, 'more digits than the padding still parse');
  for (const other of ['snapshot.ydoc', 'counter.lock', 'log-7.ylog.damaged-1', 'log-.ylog', 'xlog-1.ylog']) assert.is(logSeq(other), null, other);
});

test('a frame is u32le length, u32le crc32, payload', () => {
  assert.equal(encodeFrame(CHECK), CHECK_FRAME);
  const buf = Buffer.concat([Buffer.from('pad'), CHECK_FRAME, Buffer.from('tail')]);
  const end = frameEnd(buf, 3);
  assert.is(end, 3 + CHECK_FRAME.length);
  assert.equal(Buffer.from(framePayload(buf, 3, end)), CHECK);
  assert.instance(framePayload(buf, 3, end), Uint8Array);
  assert.not.instance(framePayload(buf, 3, end), Buffer, 'payloads compare equal to Yjs updates (plain Uint8Array)');
});

test('frameEnd refuses a bad checksum, an empty payload, a length past the end and a cut head', () => {
  const badCrc = Buffer.from(CHECK_FRAME);
  badCrc[4] = (badCrc[4] ?? 0) ^ 1;
  assert.is(frameEnd(badCrc, 0), -1);
  const badPayload = Buffer.from(CHECK_FRAME);
  badPayload[12] = (badPayload[12] ?? 0) ^ 1;
  assert.is(frameEnd(badPayload, 0), -1);
  // a zero-filled tail would otherwise read as empty records with crc32("") = 0
  assert.is(frameEnd(Buffer.alloc(64), 0), -1);
  assert.is(frameEnd(CHECK_FRAME.subarray(0, CHECK_FRAME.length - 1), 0), -1);
  assert.is(frameEnd(CHECK_FRAME.subarray(0, 8), 0), -1);
  assert.is(frameEnd(CHECK_FRAME, CHECK_FRAME.length), -1);
});

test('nextFrame finds the first valid frame at or after an offset', () => {
  const junk = Buffer.alloc(13, 0xab);
  const buf = Buffer.concat([junk, CHECK_FRAME, CHECK_FRAME]);
  assert.is(nextFrame(buf, 0), 13);
  assert.is(nextFrame(buf, 13), 13);
  assert.is(nextFrame(buf, 14), 13 + CHECK_FRAME.length);
  assert.is(nextFrame(buf, 14 + CHECK_FRAME.length), -1);
  assert.is(nextFrame(Buffer.alloc(100), 0), -1);
});

test('a snapshot file is the magic and one frame; anything else is damage', () => {
  const file = encodeSnapshot(CHECK);
  assert.equal(file, Buffer.concat([Buffer.from('CMSNAP01', 'latin1'), CHECK_FRAME]));
  assert.equal(Buffer.from(decodeSnapshot(file) ?? []), CHECK);

  const badMagic = Buffer.from(file);
  badMagic[0] = 0x58;
  const badCrc = Buffer.from(file);
  badCrc[file.length - 1] = (badCrc[file.length - 1] ?? 0) ^ 1;
  const cases: [string, Buffer][] = [
    ['bad magic', badMagic],
    ['bad checksum', badCrc],
    ['cut short', file.subarray(0, file.length - 1)],
    ['trailing bytes', Buffer.concat([file, Buffer.from([0])])],
    ['header only', file.subarray(0, 12)],
    ['empty', Buffer.alloc(0)],
  ];
  for (const [what, buf] of cases) assert.is(decodeSnapshot(buf), null, what);
});

test.run();
