/**
 * Recovery of a log store's directory at open: replay the snapshot and the logs, cut a torn tail
 * off the last log, move damaged files aside after salvaging their readable records, and leave
 * exactly one log open for appending.
 *
 * {@link parseLog} is the pure part (it decides what is a torn write and what is damage) and is
 * unit-tested on bytes; {@link recoverDir} applies its verdicts to the files.
 */
import type { FileHandle } from 'node:fs/promises';
import { open, readdir, readFile, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import {
  decodeSnapshot,
  encodeFrame,
  frameEnd,
  framePayload,
  HEADER_BYTES,
  LOG_MAGIC,
  logPath,
  logSeq,
  nextFrame,
  SNAPSHOT_NAME,
  SNAPSHOT_TMP_NAME,
} from './codec.ts';
import { createFile, syncDir, writeFully } from './files.ts';

/** What a log store found on disk when it opened. */
export interface Recovered {
  /** Merged state from the snapshot file; null if there is none or it was damaged. */
  snapshot: Uint8Array | null;
  /** Every good log record after the snapshot, in log order. Apply after `snapshot`. */
  updates: Uint8Array[];
  /** Paths the damaged files were moved to (never deleted); empty if nothing was damaged. */
  damaged: string[];
  /** A torn or garbage tail was cut off the last log; expected after a crash, not damage. */
  tornTail: boolean;
}

/** The verdict on one log file's bytes. */
export interface ParsedLog {
  /** Every readable record, in file order (views into the buffer). */
  records: Uint8Array[];
  /** Where a torn tail starts; only meaningful when `torn`. */
  goodEnd: number;
  /** The file ends in a torn write to cut at `goodEnd`: only ever for the last log. */
  torn: boolean;
  /** Why the file is damaged, or null. A damaged file's `records` are what could be salvaged. */
  damage: string | null;
}

/** The log appends go to. */
export interface CurrentLog {
  seq: number;
  path: string;
  fh: FileHandle;
  /** End of the last durably written record; the file may be longer after a failed write. */
  size: number;
}

/** A log kept only until the snapshot that covers it is durable. */
export interface OldLog {
  path: string;
  size: number;
}

/** A recovered directory, ready for appends. */
export interface RecoveredDir {
  recovered: Recovered;
  current: CurrentLog;
  oldLogs: OldLog[];
  /** Bytes of the state held in `snapshot.ydoc` (its payload); 0 without a readable snapshot. */
  snapshotBytes: number;
}

/**
 * Sort a log file's bytes into records, a torn tail, or damage.
 *
 * @param isLast Only the last log that holds records can end in a torn write: the ones before
 *   it were complete when appends switched away from them, so anything unreadable in them is damage.
 */
export function parseLog(buf: Buffer, isLast: boolean): ParsedLog {
  const records: Uint8Array[] = [];
  if (buf.length < HEADER_BYTES || !buf.subarray(0, HEADER_BYTES).equals(LOG_MAGIC)) {
    // A crash while rotation wrote the header leaves a prefix of it.
    if (isLast && buf.length < HEADER_BYTES && LOG_MAGIC.subarray(0, buf.length).equals(buf)) {
      return { records, goodEnd: 0, torn: buf.length > 0, damage: null };
    }
    return { records, goodEnd: 0, torn: false, damage: 'bad magic' };
  }
  let off = HEADER_BYTES;
  let damage: string | null = null;
  while (off < buf.length) {
    const end = frameEnd(buf, off);
    if (end > 0) {
      records.push(framePayload(buf, off, end));
      off = end;
      continue;
    }
    // Look for any valid record further on before calling this a torn tail:
    // a corrupted length field can make middle damage look like a record
    // running past EOF, and cutting there would destroy the good records
    // after it.
    const next = nextFrame(buf, off + 1);
    if (next < 0) {
      if (isLast && damage === null) return { records, goodEnd: off, torn: true, damage: null };
      damage ??= `unreadable bytes from offset ${off} to end of file`;
      break;
    }
    // Salvage what follows: a false resync needs a crc32 collision.
    damage ??= `corrupt record at offset ${off}`;
    off = next;
  }
  return { records, goodEnd: off, torn: false, damage };
}

/**
 * Recover `dir` (which must exist): remove a compaction's leftover temporary snapshot, read the
 * snapshot and every log, then either salvage all readable records into one fresh log (when any
 * file is damaged) or cut a torn tail off the last log and keep appending to it. Damaged data
 * never makes this throw; I/O errors do.
 */
export async function recoverDir(dir: string, log: Logger): Promise<RecoveredDir> {
  const damaged: string[] = [];
  let tornTail = false;
  let dirChanged = false;
  const names = await readdir(dir);

  if (names.includes(SNAPSHOT_TMP_NAME)) {
    // A compaction died before its rename; the logs it meant to replace are
    // all still present, so the half-written file carries nothing we need.
    await unlink(join(dir, SNAPSHOT_TMP_NAME));
    dirChanged = true;
  }

  let snapshot: Uint8Array | null = null;
  if (names.includes(SNAPSHOT_NAME)) {
    const path = join(dir, SNAPSHOT_NAME);
    snapshot = decodeSnapshot(await readFile(path));
    if (snapshot === null) {
      damaged.push(
        await moveAside(path, 'snapshot has a bad magic, length or checksum', 'its state is lost unless the logs or peers still hold it', log),
      );
      dirChanged = true;
    }
  }

  const logs = names
    .flatMap((name) => {
      const seq = logSeq(name);
      return seq !== null ? [{ seq, name }] : [];
    })
    .sort((a, b) => a.seq - b.seq || (a.name < b.name ? -1 : 1));

  const bufs = await Promise.all(logs.map(({ name }) => readFile(join(dir, name))));
  // Rotation makes the next log before appends switch to it, so the log in use may be followed
  // by logs holding nothing yet (a header, or part of one): it is the one a crash can tear.
  let written = bufs.length - 1;
  while (written > 0 && bufs[written]!.length <= HEADER_BYTES) written--;
  const updates: Uint8Array[] = [];
  const parsed: { seq: number; path: string; size: number; result: ParsedLog }[] = [];
  for (const [i, { seq, name }] of logs.entries()) {
    const buf = bufs[i]!;
    const result = parseLog(buf, i >= written);
    for (const r of result.records) updates.push(r);
    parsed.push({ seq, path: join(dir, name), size: buf.length, result });
  }

  const lastSeq = parsed.at(-1)?.seq ?? 0;
  if (parsed[written]?.result.torn && written < parsed.length - 1) {
    // The empty logs after the torn one go, so that its tail is cut and appends resume in it.
    for (const p of parsed.splice(written + 1)) await unlink(p.path);
    dirChanged = true;
  }
  let current: CurrentLog;
  let oldLogs: OldLog[];

  if (parsed.some((p) => p.result.damage !== null)) {
    // Copy every surviving record into one fresh log before the damaged file
    // leaves the replay set: the salvaged records become durable again and
    // replay order is kept. A crash part-way only leads to replaying
    // duplicates, which Yjs ignores.
    const seq = lastSeq + 1;
    const path = logPath(dir, seq);
    const parts: Buffer[] = [LOG_MAGIC];
    for (const u of updates) parts.push(encodeFrame(u));
    const body = Buffer.concat(parts);
    const fh = await createFile(path, body);
    try {
      await syncDir(dir);
      for (const p of parsed) {
        if (p.result.damage !== null) {
          damaged.push(await moveAside(p.path, p.result.damage, `its readable records were copied to ${path}`, log));
        } else {
          await unlink(p.path);
        }
      }
      await syncDir(dir);
    } catch (err) {
      await fh.close().catch(() => undefined);
      throw err;
    }
    dirChanged = false;
    current = { seq, path, fh, size: body.length };
    oldLogs = [];
  } else {
    const last = parsed.pop();
    oldLogs = parsed.map((p) => ({ path: p.path, size: p.size }));
    if (last === undefined) {
      const seq = lastSeq + 1;
      const path = logPath(dir, seq);
      current = { seq, path, fh: await createFile(path, LOG_MAGIC), size: HEADER_BYTES };
      dirChanged = true;
    } else {
      const fh = await open(last.path, 'r+');
      try {
        let size = last.size;
        if (last.result.torn) {
          const cutBytes = last.size - last.result.goodEnd;
          await fh.truncate(last.result.goodEnd);
          size = last.result.goodEnd;
          tornTail = true;
          log.warn({ path: last.path, cutBytes }, 'cut torn tail of log');
        }
        if (size < HEADER_BYTES) {
          // A crash right after creating the file (during rotation) left
          // its header incomplete; it holds no records yet.
          await fh.truncate(0);
          await writeFully(fh, LOG_MAGIC, 0);
          size = HEADER_BYTES;
        }
        if (size !== last.size) await fh.sync();
        current = { seq: last.seq, path: last.path, fh, size };
      } catch (err) {
        await fh.close().catch(() => undefined);
        throw err;
      }
    }
  }

  if (dirChanged) {
    try {
      await syncDir(dir);
    } catch (err) {
      await current.fh.close().catch(() => undefined);
      throw err;
    }
  }

  return { recovered: { snapshot, updates, damaged, tornTail }, current, oldLogs, snapshotBytes: snapshot?.length ?? 0 };
}

/** Rename a damaged file to `<name>.damaged-<timestamp>` (never delete it) and say so. */
async function moveAside(path: string, reason: string, consequence: string, log: Logger): Promise<string> {
  const movedTo = `${path}.damaged-${Date.now()}`;
  await rename(path, movedTo);
  log.error({ path, movedTo, reason }, `damaged file moved aside to ${movedTo}; ${consequence}`);
  return movedTo;
}
