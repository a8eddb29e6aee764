/**
 * On-disk persistence for one counter: an append-only log of Yjs updates plus
 * a snapshot of the merged document, in a directory guarded by a lock socket.
 *
 * Layout under `dir`:
 * - `snapshot.ydoc`: `CMSNAP01` + one framed record holding a Yjs update.
 * - `log-<seq>.ylog`: `CMLOG001` + framed records, one per appended update.
 *   Normally one file; two (or more after a crash) while compaction runs.
 * - `counter.lock`: Unix domain socket held by the running counter.
 *
 * Frame: `[u32le payloadLength][u32le crc32(payload)][payload]`.
 */
import { createConnection, createServer, type Server } from 'node:net';
import { crc32 } from 'node:zlib';
import { mkdir, open, readdir, readFile, rename, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { writeSync } from 'node:fs';
import type { Logger } from 'pino';
import { once } from 'node:events';

const LOG_MAGIC = Buffer.from('CMLOG001', 'latin1');
const SNAP_MAGIC = Buffer.from('CMSNAP01', 'latin1');
const HEADER_BYTES = 8;
const FRAME_HEAD_BYTES = 8;
const EMPTY = Buffer.alloc(0);
/** A peer's updates written without a sync are synced at most this much later. */
const LAZY_SYNC_MS = 1000;
const SNAPSHOT_NAME = 'snapshot.ydoc';
const SNAPSHOT_TMP_NAME = 'snapshot.ydoc.tmp';
const LOCK_NAME = 'counter.lock';
const LOG_NAME = /^log-(\d+)\.ylog$/;
const SEQ_DIGITS = 10;
// sun_path holds 108 bytes on Linux and 104 on macOS, NUL included; stay
// below both so the same DATA_DIR works everywhere.
const MAX_LOCK_PATH_BYTES = 100;
// The kernel completes a connect to a listening socket without the holder's
// help, so a slow answer means something odd rather than a dead holder.
const LOCK_PROBE_TIMEOUT_MS = 3000;

/** Options for {@link Storage.open}. */
export interface StorageOptions {
  /** Directory holding this counter's snapshot, logs and lock; created (mode 0700) if missing. */
  dir: string;
  /** {@link Storage.needsCompaction} turns true once the logs hold more record bytes than this. */
  compactBytes: number;
  /** Receives warnings about cut tails, errors about damaged files and failed writes. */
  log: Logger;
}

/** What {@link Storage.open} found on disk. */
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

/** Thrown by {@link Storage.open} when another live process holds the directory's lock socket. */
export class DataDirLockedError extends Error {
  override readonly name = 'DataDirLockedError';
}

interface Pending {
  frame: Buffer;
  durable: boolean;
  resolve: () => void;
  reject: (err: Error) => void;
}

interface Deferred {
  resolve: () => void;
  reject: (err: unknown) => void;
}

interface CurrentLog {
  seq: number;
  path: string;
  fh: FileHandle;
  /** End of the last durably written record; the file may be longer after a failed write. */
  size: number;
}

interface OldLog {
  path: string;
  size: number;
}

interface ParsedLog {
  records: Uint8Array[];
  /** Where a torn tail starts; only meaningful when `torn`. */
  goodEnd: number;
  torn: boolean;
  damage: string | null;
}

interface InitState {
  opts: StorageOptions;
  lock: Server;
  current: CurrentLog;
  oldLogs: OldLog[];
  snapshotBytes: number;
}

/**
 * The on-disk log and snapshot of one counter. Obtain one with
 * {@link Storage.open}; only one instance (in any process) may hold a
 * directory at a time.
 */
export class Storage {
  private readonly dir: string;
  private readonly compactBytes: number;
  private readonly log: Logger;
  private readonly lock: Server;
  private current: CurrentLog;
  private oldLogs: OldLog[];
  private snapshotBytes: number;

  private queue: Pending[] = [];
  private rotation: Deferred | null = null;
  private loopRunning = false;
  private loopDone: Promise<void> = Promise.resolve();
  private tailDirty = false;
  private isHealthy = true;
  private rounds = 0;
  private compacting: Promise<void> | null = null;
  /** Bytes written by rounds that did not sync; a timer syncs them. */
  private unsynced = false;
  private lazySync: NodeJS.Timeout | null = null;
  private closed = false;
  private closing: Promise<void> | null = null;

  private constructor(init: InitState) {
    this.dir = init.opts.dir;
    this.compactBytes = init.opts.compactBytes;
    this.log = init.opts.log;
    this.lock = init.lock;
    this.current = init.current;
    this.oldLogs = init.oldLogs;
    this.snapshotBytes = init.snapshotBytes;
  }

  /**
   * Take the directory's lock, recover whatever is on disk and get ready to
   * append. Damaged data never makes this throw (it is moved aside and
   * reported in `recovered.damaged`); I/O errors on the directory and a held
   * lock do.
   *
   * @throws {@link DataDirLockedError} if another live counter uses `opts.dir`.
   */
  static async open(opts: StorageOptions): Promise<{ storage: Storage; recovered: Recovered }> {
    const lockPath = join(opts.dir, LOCK_NAME);
    const lockPathBytes = Buffer.byteLength(lockPath);
    if (lockPathBytes > MAX_LOCK_PATH_BYTES) {
      throw new Error(
        `DATA_DIR ${opts.dir} is too long for its lock socket: ${lockPath} is ${lockPathBytes} bytes, ` +
          `Unix socket paths must stay under ${MAX_LOCK_PATH_BYTES}; use a shorter DATA_DIR`,
      );
    }
    await mkdir(opts.dir, { recursive: true, mode: 0o700 });
    const lock = await acquireLock(opts.dir, lockPath, opts.log);
    try {
      const { init, recovered } = await recover(opts, lock);
      return { storage: new Storage(init), recovered };
    } catch (err) {
      await closeServer(lock);
      throw err;
    }
  }

  /**
   * Persist one Yjs update. Resolves once it is written and fdatasync'ed;
   * concurrent calls share one write and one sync (group commit). Rejects
   * with "could not persist update: …" if the write or sync failed; later
   * calls try again.
   *
   * @param durable false for copies that exist elsewhere (a peer's updates):
   *   resolves once written; the next durable round, or a sync at most
   *   LAZY_SYNC_MS later, makes it durable.
   */
  append(update: Uint8Array, durable = true): Promise<void> {
    if (this.closed) return Promise.reject(new Error('could not persist update: storage is closed'));
    // An empty record would be indistinguishable from a zero-filled tail
    // left by a crash, which recovery must be able to cut.
    if (update.length === 0) return Promise.reject(new TypeError('cannot persist an empty update'));
    const frame = encodeFrame(update);
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ frame, durable, resolve, reject });
      this.kick();
    });
  }

  /**
   * Resolves once everything appended so far is on disk (fdatasync'ed). For an acknowledgment of
   * items that were already held: they may have come from a peer and been written without a sync.
   */
  sync(): Promise<void> {
    if (this.closed) return Promise.reject(new Error('could not sync: storage is closed'));
    if (!this.unsynced && !this.loopRunning) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ frame: EMPTY, durable: true, resolve, reject });
      this.kick();
    });
  }

  /** Bytes of framed records in all live log files (headers excluded). */
  get logBytes(): number {
    let total = this.current.size - HEADER_BYTES;
    for (const old of this.oldLogs) total += Math.max(0, old.size - HEADER_BYTES);
    return total;
  }

  /** True when {@link logBytes} exceeds `compactBytes`. */
  needsCompaction(): boolean {
    return this.logBytes > this.compactBytes;
  }

  /** False after a failed write or sync, until a later round succeeds. */
  get healthy(): boolean {
    return this.isHealthy;
  }

  /** Number of successful write+fdatasync rounds so far; each may carry many appends. */
  get syncRounds(): number {
    return this.rounds;
  }

  /**
   * Replace the logs with a snapshot. Appends made from now on go to a new
   * log file; then `snapshot` is called and its result becomes
   * `snapshot.ydoc`; then the older log files are deleted. Appends keep
   * working throughout. A call while a compaction runs returns that one's
   * promise.
   *
   * @param snapshot Returns the merged document state synchronously. It must
   *   include every update appended before this call and everything
   *   {@link open} recovered (containing more is fine: replay is idempotent).
   */
  compact(snapshot: () => Uint8Array): Promise<void> {
    if (this.compacting !== null) return this.compacting;
    if (this.closed) return Promise.reject(new Error('cannot compact: storage is closed'));
    const run = this.runCompaction(snapshot).finally(() => {
      if (this.compacting === run) this.compacting = null;
    });
    this.compacting = run;
    return run;
  }

  /** Write everything already appended, then release the log file and the lock. Idempotent. */
  close(): Promise<void> {
    if (this.closing === null) {
      this.closed = true;
      this.closing = this.shutdown();
    }
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    try {
      if (this.compacting !== null) await this.compacting.catch(() => undefined);
      while (this.loopRunning) await this.loopDone;
      if (this.lazySync) clearTimeout(this.lazySync);
      if (this.unsynced) await this.current.fh.datasync().catch((err: unknown) => this.log.warn({ err }, 'could not sync the log at shutdown'));
      await this.current.fh.close();
    } finally {
      await closeServer(this.lock);
    }
  }

  private kick(): void {
    if (this.loopRunning) return;
    this.loopRunning = true;
    this.loopDone = this.runLoop();
  }

  // The only code that touches the current log's fd, so rounds and rotation
  // never interleave and `current.size` needs no locking.
  private async runLoop(): Promise<void> {
    try {
      while (this.queue.length > 0 || this.rotation !== null) {
        const rotation = this.rotation;
        if (rotation !== null) {
          this.rotation = null;
          try {
            await this.rotate();
            rotation.resolve();
          } catch (err) {
            rotation.reject(err);
          }
          continue;
        }
        const batch = this.queue;
        this.queue = [];
        await this.writeRound(batch);
      }
    } finally {
      // Runs in the same tick as the empty-queue check above, so an append
      // can never find the loop "running" when it has in fact finished.
      this.loopRunning = false;
    }
  }

  private async writeRound(batch: Pending[]): Promise<void> {
    const cur = this.current;
    const first = batch[0];
    const bytes = batch.length === 1 && first !== undefined ? first.frame : Buffer.concat(batch.map((p) => p.frame));
    try {
      if (this.tailDirty) {
        // A failed round may have left part of its bytes behind; a shorter
        // next round would otherwise leave them as a garbage tail.
        await cur.fh.truncate(cur.size);
        this.tailDirty = false;
      }
      this.writeAt(cur, bytes);
      if (batch.some((p) => p.durable)) {
        await cur.fh.datasync();
        this.unsynced = false;
        if (this.lazySync) clearTimeout(this.lazySync);
        this.lazySync = null;
      } else if (!this.unsynced) {
        this.unsynced = true;
        this.lazySync = setTimeout(() => this.syncLater(), LAZY_SYNC_MS);
        this.lazySync.unref();
      }
    } catch (cause) {
      this.tailDirty = true;
      if (this.isHealthy) {
        this.isHealthy = false;
        this.log.error({ err: cause, path: cur.path }, 'could not persist updates to the log; appends fail until a write succeeds');
      }
      const err = new Error(`could not persist update: ${errorMessage(cause)}`, { cause });
      for (const p of batch) p.reject(err);
      return;
    }
    cur.size += bytes.length;
    this.rounds++;
    if (!this.isHealthy) {
      this.isHealthy = true;
      this.log.info({ path: cur.path }, 'log writes succeed again');
    }
    for (const p of batch) p.resolve();
  }

  /**
   * Synchronous: copying a few KB into the page cache costs less than a trip through the thread
   * pool, and only the fdatasync that follows waits for the disk.
   */
  private writeAt(log: CurrentLog, bytes: Uint8Array): void {
    let done = 0;
    while (done < bytes.length) {
      const written = writeSync(log.fh.fd, bytes, done, bytes.length - done, log.size + done);
      if (written <= 0) throw new Error(`short write to log at offset ${log.size + done}`);
      done += written;
    }
  }

  /** A sync-only round for what non-durable appends left unsynced. */
  private syncLater(): void {
    this.lazySync = null;
    if (!this.unsynced || this.closed) return;
    this.queue.push({ frame: EMPTY, durable: true, resolve: () => {}, reject: () => {} });
    this.kick();
  }

  private requestRotation(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.rotation = { resolve, reject };
      this.kick();
    });
  }

  private async rotate(): Promise<void> {
    const seq = this.current.seq + 1;
    const path = logPath(this.dir, seq);
    const fh = await createLogFile(path, LOG_MAGIC);
    try {
      await syncDir(this.dir);
    } catch (err) {
      await fh.close().catch(() => undefined);
      await unlink(path).catch(() => undefined);
      throw err;
    }
    const old = this.current;
    if (this.unsynced) {
      // the new log starts synced; what the old one holds must be too
      await old.fh.datasync();
      this.unsynced = false;
    }
    if (this.tailDirty) {
      // Best effort: if this fails the old file keeps a garbage tail, and
      // recovery will treat it as damaged and salvage its good records.
      await old.fh.truncate(old.size).catch(() => undefined);
      this.tailDirty = false;
    }
    this.current = { seq, path, fh, size: HEADER_BYTES };
    this.oldLogs.push({ path: old.path, size: old.size });
    await old.fh.close().catch((err: unknown) => this.log.warn({ err, path: old.path }, 'could not close old log file'));
  }

  private async runCompaction(snapshot: () => Uint8Array): Promise<void> {
    const started = performance.now();
    const beforeBytes = this.diskBytes();
    try {
      await this.requestRotation();
      const body = Buffer.concat([SNAP_MAGIC, encodeFrame(snapshot())]);
      const tmpPath = join(this.dir, SNAPSHOT_TMP_NAME);
      try {
        const fh = await open(tmpPath, 'w', 0o600);
        try {
          await writeFully(fh, body, 0);
          await fh.sync();
        } finally {
          await fh.close();
        }
        await rename(tmpPath, join(this.dir, SNAPSHOT_NAME));
      } catch (err) {
        await unlink(tmpPath).catch(() => undefined);
        throw err;
      }
      await syncDir(this.dir);
      this.snapshotBytes = body.length;
      // Only delete a log once the snapshot replacing it is durable; if we
      // stop half way the remaining old logs are still replayed (harmlessly)
      // and the next compaction retries them.
      while (this.oldLogs.length > 0) {
        const old = this.oldLogs[0];
        if (old === undefined) break;
        await unlink(old.path).catch(ignoreCode('ENOENT'));
        this.oldLogs.shift();
      }
      await syncDir(this.dir);
    } catch (err) {
      this.log.error({ err, dir: this.dir }, 'compaction failed; the logs still hold all updates');
      throw err;
    }
    this.log.info(
      { beforeBytes, afterBytes: this.diskBytes(), snapshotBytes: this.snapshotBytes, ms: Math.round(performance.now() - started) },
      'compacted log into snapshot',
    );
  }

  private diskBytes(): number {
    let total = this.snapshotBytes + this.current.size;
    for (const old of this.oldLogs) total += old.size;
    return total;
  }
}

async function recover(opts: StorageOptions, lock: Server): Promise<{ init: InitState; recovered: Recovered }> {
  const { dir, log } = opts;
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
  let snapshotBytes = 0;
  if (names.includes(SNAPSHOT_NAME)) {
    const path = join(dir, SNAPSHOT_NAME);
    const buf = await readFile(path);
    snapshot = parseSnapshot(buf);
    if (snapshot !== null) {
      snapshotBytes = buf.length;
    } else {
      damaged.push(await moveAside(
          path,
          'snapshot has a bad magic, length or checksum',
          'its state is lost unless the logs or peers still hold it',
          log,
        ));
      dirChanged = true;
    }
  }

  const logs = names
    .flatMap((name) => {
      const m = LOG_NAME.exec(name);
      return m?.[1] !== undefined ? [{ seq: Number(m[1]), name }] : [];
    })
    .sort((a, b) => a.seq - b.seq || (a.name < b.name ? -1 : 1));

  const updates: Uint8Array[] = [];
  const parsed: { seq: number; path: string; size: number; result: ParsedLog }[] = [];
  for (const [i, { seq, name }] of logs.entries()) {
    const path = join(dir, name);
    const buf = await readFile(path);
    const result = parseLog(buf, i === logs.length - 1);
    for (const r of result.records) updates.push(r);
    parsed.push({ seq, path, size: buf.length, result });
  }

  const lastSeq = parsed.at(-1)?.seq ?? 0;
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
    const fh = await createLogFile(path, body);
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
      current = { seq, path, fh: await createLogFile(path, LOG_MAGIC), size: HEADER_BYTES };
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

  return {
    init: { opts, lock, current, oldLogs, snapshotBytes },
    recovered: { snapshot, updates, damaged, tornTail },
  };
}

function parseSnapshot(buf: Buffer): Uint8Array | null {
  if (buf.length < HEADER_BYTES + FRAME_HEAD_BYTES) return null;
  if (!buf.subarray(0, HEADER_BYTES).equals(SNAP_MAGIC)) return null;
  const len = buf.readUInt32LE(HEADER_BYTES);
  // The file is written whole and renamed into place, so anything but one
  // exact record is damage, not a torn write.
  if (len !== buf.length - HEADER_BYTES - FRAME_HEAD_BYTES) return null;
  const payload = view(buf, HEADER_BYTES + FRAME_HEAD_BYTES, buf.length);
  return crc32(payload) === buf.readUInt32LE(HEADER_BYTES + 4) ? payload : null;
}

function parseLog(buf: Buffer, isLast: boolean): ParsedLog {
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
      records.push(view(buf, off + FRAME_HEAD_BYTES, end));
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

/** End offset of a valid frame starting at `off`, or -1. */
function frameEnd(buf: Buffer, off: number): number {
  if (off + FRAME_HEAD_BYTES >= buf.length) return -1;
  const len = buf.readUInt32LE(off);
  // Records are never empty, so a zero-filled tail (space allocated but not
  // written before a crash) cannot parse as records.
  if (len === 0 || len > buf.length - off - FRAME_HEAD_BYTES) return -1;
  const end = off + FRAME_HEAD_BYTES + len;
  return crc32(buf.subarray(off + FRAME_HEAD_BYTES, end)) === buf.readUInt32LE(off + 4) ? end : -1;
}

function nextFrame(buf: Buffer, from: number): number {
  for (let off = from; off + FRAME_HEAD_BYTES < buf.length; off++) {
    if (frameEnd(buf, off) > 0) return off;
  }
  return -1;
}

// Plain Uint8Array views rather than Buffer slices, so callers comparing
// against Yjs updates see the same type.
function view(buf: Buffer, start: number, end: number): Uint8Array {
  return new Uint8Array(buf.buffer, buf.byteOffset + start, end - start);
}

function encodeFrame(payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(FRAME_HEAD_BYTES + payload.length);
  out.writeUInt32LE(payload.length, 0);
  out.writeUInt32LE(crc32(payload), 4);
  out.set(payload, FRAME_HEAD_BYTES);
  return out;
}

function logPath(dir: string, seq: number): string {
  return join(dir, `log-${String(seq).padStart(SEQ_DIGITS, '0')}.ylog`);
}

/** Create a new file holding exactly `content`, durably; returns it open for read/write. */
async function createLogFile(path: string, content: Uint8Array): Promise<FileHandle> {
  const fh = await open(path, 'wx+', 0o600);
  try {
    await writeFully(fh, content, 0);
    await fh.sync();
    return fh;
  } catch (err) {
    await fh.close().catch(() => undefined);
    await unlink(path).catch(() => undefined);
    throw err;
  }
}

async function writeFully(fh: FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < bytes.length) {
    const { bytesWritten } = await fh.write(bytes, done, bytes.length - done, position + done);
    if (bytesWritten <= 0) throw new Error(`short write to log at offset ${position + done}`);
    done += bytesWritten;
  }
}

// Creating, renaming and unlinking are only durable once the directory
// itself is synced.
async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function moveAside(path: string, reason: string, consequence: string, log: Logger): Promise<string> {
  const movedTo = `${path}.damaged-${Date.now()}`;
  await rename(path, movedTo);
  log.error({ path, movedTo, reason }, `damaged file moved aside to ${movedTo}; ${consequence}`);
  return movedTo;
}

async function acquireLock(dir: string, path: string, log: Logger): Promise<Server> {
  // Bounded: another process may be racing us through the stale-socket path.
  for (let attempt = 0; ; attempt++) {
    const server = createServer((socket) => socket.destroy());
    try {
      await listen(server, path);
      server.unref();
      return server;
    } catch (err) {
      if (errorCode(err) !== 'EADDRINUSE' || attempt >= 3) throw err;
    }
    if (await lockAnswers(path)) {
      throw new DataDirLockedError(
        `DATA_DIR ${dir} is in use by another running counter (lock socket ${path} answers); give each counter its own DATA_DIR`,
      );
    }
    // The holder died without closing its server (e.g. SIGKILL); the kernel
    // refuses connections to its leftover socket file.
    log.warn({ path }, 'removing stale lock socket left by a counter that is no longer running');
    await unlink(path).catch(ignoreCode('ENOENT'));
  }
}

async function listen(server: Server, path: string): Promise<void> {
  server.listen(path);
  await once(server, 'listening'); // rejects when 'error' (EADDRINUSE) comes first
}

function lockAnswers(path: string): Promise<boolean> {
  return new Promise<boolean>((resolve, reject) => {
    const socket = createConnection(path);
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(true);
    }, LOCK_PROBE_TIMEOUT_MS);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(true);
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      const code = errorCode(err);
      if (code === 'ECONNREFUSED' || code === 'ENOENT') resolve(false);
      else reject(err);
    });
  });
}

function closeServer(server: Server): Promise<void> {
  return new Promise<void>((resolve) => server.close(() => resolve()));
}

function errorCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string' ? err.code : undefined;
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function ignoreCode(code: string): (err: unknown) => void {
  return (err) => {
    if (errorCode(err) !== code) throw err;
  };
}
