/**
 * The on-disk format of a log store's directory: file names, magics and frames. Pure: no I/O,
 * so every rule here is unit-tested byte for byte (test/storage-codec.test.ts), and README
 * "Durability" (Log format) describes the same bytes.
 *
 * - `snapshot.ydoc`: `CMSNAP01` + one frame holding the whole document state.
 * - `log-<seq>.ylog`: `CMLOG001` + frames, one per appended Yjs update.
 * - Frame: `[u32le payloadLength][u32le crc32(payload)][payload]`; a payload is never empty.
 */
import { join } from 'node:path';
import { crc32 } from 'node:zlib';

/** First bytes of every log file. */
export const LOG_MAGIC: Buffer = Buffer.from('CMLOG001', 'latin1');
/** First bytes of the snapshot file. */
export const SNAP_MAGIC: Buffer = Buffer.from('CMSNAP01', 'latin1');
/** Length of either magic: the header every file starts with. */
export const HEADER_BYTES = 8;
/** Length and checksum in front of each payload. */
export const FRAME_HEAD_BYTES = 8;

export const SNAPSHOT_NAME = 'snapshot.ydoc';
/** Where a compaction writes the next snapshot before renaming it over {@link SNAPSHOT_NAME}. */
export const SNAPSHOT_TMP_NAME = 'snapshot.ydoc.tmp';
const LOG_NAME = /^log-(\d+)\.ylog$/;
// Zero-padded so that a directory listing sorts logs in replay order for a human too.
const SEQ_DIGITS = 10;

/** Path of log number `seq` in `dir`. */
export function logPath(dir: string, seq: number): string {
  return join(dir, `log-${String(seq).padStart(SEQ_DIGITS, '0')}.ylog`);
}

/** The sequence number of a log file's name, or null for any other file. */
export function logSeq(name: string): number | null {
  const m = LOG_NAME.exec(name);
  return m?.[1] !== undefined ? Number(m[1]) : null;
}

/** One frame around `payload`. The caller rejects empty payloads: see {@link frameEnd}. */
export function encodeFrame(payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(FRAME_HEAD_BYTES + payload.length);
  out.writeUInt32LE(payload.length, 0);
  out.writeUInt32LE(crc32(payload), 4);
  out.set(payload, FRAME_HEAD_BYTES);
  return out;
}

/** End offset of a valid frame starting at `off`, or -1 when there is none. */
export function frameEnd(buf: Buffer, off: number): number {
  if (off + FRAME_HEAD_BYTES >= buf.length) return -1;
  const len = buf.readUInt32LE(off);
  // Records are never empty, so a zero-filled tail (space allocated but not
  // written before a crash) cannot parse as records.
  if (len === 0 || len > buf.length - off - FRAME_HEAD_BYTES) return -1;
  const end = off + FRAME_HEAD_BYTES + len;
  return crc32(buf.subarray(off + FRAME_HEAD_BYTES, end)) === buf.readUInt32LE(off + 4) ? end : -1;
}

/** Offset of the first valid frame at or after `from`, or -1. A false match needs a crc32 collision. */
export function nextFrame(buf: Buffer, from: number): number {
  for (let off = from; off + FRAME_HEAD_BYTES < buf.length; off++) {
    if (frameEnd(buf, off) > 0) return off;
  }
  return -1;
}

/** The payload of the valid frame from `off` to `end` (as found by {@link frameEnd}). */
export function framePayload(buf: Buffer, off: number, end: number): Uint8Array {
  return view(buf, off + FRAME_HEAD_BYTES, end);
}

/** The whole content of a snapshot file holding `state`. */
export function encodeSnapshot(state: Uint8Array): Buffer {
  return Buffer.concat([snapshotHead(state.length, crc32(state)), state]);
}

/**
 * The bytes of a snapshot file before its state: the magic and the frame head. For a state
 * written in parts, whose checksum the writer computes part by part (`crc32(part, crc)`).
 */
export function snapshotHead(stateBytes: number, stateCrc: number): Buffer {
  const head = Buffer.allocUnsafe(HEADER_BYTES + FRAME_HEAD_BYTES);
  SNAP_MAGIC.copy(head, 0);
  head.writeUInt32LE(stateBytes, HEADER_BYTES);
  head.writeUInt32LE(stateCrc, HEADER_BYTES + 4);
  return head;
}

/** The state held by a snapshot file's content, or null if it is damaged. */
export function decodeSnapshot(buf: Buffer): Uint8Array | null {
  if (buf.length < HEADER_BYTES + FRAME_HEAD_BYTES) return null;
  if (!buf.subarray(0, HEADER_BYTES).equals(SNAP_MAGIC)) return null;
  const len = buf.readUInt32LE(HEADER_BYTES);
  // The file is written whole and renamed into place, so anything but one
  // exact record is damage, not a torn write.
  if (len !== buf.length - HEADER_BYTES - FRAME_HEAD_BYTES) return null;
  const payload = view(buf, HEADER_BYTES + FRAME_HEAD_BYTES, buf.length);
  return crc32(payload) === buf.readUInt32LE(HEADER_BYTES + 4) ? payload : null;
}

// Plain Uint8Array views rather than Buffer slices, so callers comparing
// against Yjs updates see the same type.
function view(buf: Buffer, start: number, end: number): Uint8Array {
  return new Uint8Array(buf.buffer, buf.byteOffset + start, end - start);
}
