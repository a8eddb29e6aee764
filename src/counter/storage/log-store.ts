/**
 * The log store of one Yjs document: an append-only log of updates with group commit, and
 * compaction of the logs into a snapshot, in one directory. The writer and compaction live
 * together because rotation, the one step of compaction that touches the current log, must run
 * between two write rounds: both go through the single loop in this class.
 *
 * A store takes no lock: the counter holds its DATA_DIR's lock (see lock.ts) and may open
 * one store per subdirectory; it must never open two stores on the same directory.
 */
import { writeSync } from 'node:fs';
import { type FileHandle, mkdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { crc32 } from 'node:zlib';
import { encodeFrame, FRAME_HEAD_BYTES, HEADER_BYTES, LOG_MAGIC, logPath, SNAPSHOT_NAME, SNAPSHOT_TMP_NAME, snapshotHead } from './codec.ts';
import type { CompactionQueue, CompactionTurn } from './compaction-queue.ts';
import { createFile, DIR_MODE, ignoreCode, replaceFile, syncDir } from './files.ts';
import { type CurrentLog, type OldLog, type Recovered, recoverDir } from './recovery.ts';

const EMPTY = Buffer.alloc(0);
/** A peer's updates written without a sync are synced at most this much later. */
const LAZY_SYNC_MS = 1000;
/** Bytes of a snapshot checksummed between two turns of the event loop. */
const CRC_SLICE_BYTES = 1 << 20;

/** The state a compaction writes: whole, or in parts to be written one after another. */
type SnapshotSource = () => Promise<Uint8Array | readonly Uint8Array[]>;

/** Options for {@link LogStore.open}. */
export interface LogStoreOptions {
  /** Directory holding this store's snapshot and logs; created (mode 0700) if missing. */
  dir: string;
  /** Logs smaller than this never need compaction: see {@link LogStore.needsCompaction}. */
  compactBytes: number;
  /** Receives warnings about cut tails, errors about damaged files and failed writes. */
  log: Logger;
  /** Told of each fdatasync (duration, records covered) and compaction: the metrics. */
  observer?: { synced(seconds: number, appends: number): void; compacted(seconds: number): void } | undefined;
  /** Turns shared by the counter's stores, so that few compactions run at once; none: no limit across stores. */
  compactions?: CompactionQueue | undefined;
}

interface Pending {
  frame: Buffer;
  durable: boolean;
  resolve: () => void;
  reject: (err: Error) => void;
}

interface Rotation {
  /** The log appends switch to: created and fsynced (name included) before it was asked for. */
  next: CurrentLog;
  done: () => void;
}

/** A log that rotation took out of use, open until what non-durable appends left in it is synced. */
interface RetiredLog {
  path: string;
  fh: FileHandle;
  /** Its sync, started at the rotation; null after one failed, so that the next durable round tries again. */
  synced: Promise<void> | null;
}

/**
 * The on-disk log and snapshot of one document. Obtain one with {@link LogStore.open}.
 */
export class LogStore {
  private queue: Pending[] = [];
  private rotation: Rotation | null = null;
  /** Logs rotated out whose sync the next durable round must also wait for. */
  private retired: RetiredLog[] = [];
  /** The compaction's place in the shared queue while it waits for or holds one. */
  private turn: CompactionTurn | null = null;
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

  private constructor(
    private readonly dir: string,
    private readonly compactBytes: number,
    private readonly log: Logger,
    private current: CurrentLog,
    private oldLogs: OldLog[],
    /** Bytes of the state in `snapshot.ydoc` as it is on disk; see {@link needsCompaction}. */
    private snapshotBytes: number,
    private readonly observer: LogStoreOptions['observer'],
    private readonly compactions: CompactionQueue | undefined,
  ) {}

  /**
   * Recover whatever is in `opts.dir` and get ready to append. Damaged data never makes this
   * throw (it is moved aside and reported in `recovered.damaged`); I/O errors on the directory
   * do. Takes no lock: the caller holds the DATA_DIR's.
   */
  static async open(opts: LogStoreOptions): Promise<{ store: LogStore; recovered: Recovered }> {
    await mkdir(opts.dir, { recursive: true, mode: DIR_MODE });
    const found = await recoverDir(opts.dir, opts.log);
    const store = new LogStore(opts.dir, opts.compactBytes, opts.log, found.current, found.oldLogs, found.snapshotBytes, opts.observer, opts.compactions);
    return { store, recovered: found.recovered };
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
    if (!this.unsynced && !this.loopRunning && this.retired.length === 0) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ frame: EMPTY, durable: true, resolve, reject });
      this.kick();
    });
  }

  /**
   * The compaction policy, and its only owner: true once the logs hold more record bytes than
   * both `compactBytes` and the state in the current snapshot. The store owns it because both
   * sizes are of files only it writes; the counter only decides when to ask (after each append)
   * and supplies the state. The snapshot bound lets the logs grow to the snapshot's size before
   * the next rewrite, so the total rewrite work stays linear in the bytes appended.
   */
  needsCompaction(): boolean {
    return this.logBytes() > Math.max(this.compactBytes, this.snapshotBytes);
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
   * Replace the logs with a snapshot. Once the shared queue (if any) gives
   * this store its turn, a new log file is made, appends switch to it, then
   * `snapshot` is called and its result becomes `snapshot.ydoc`; then the
   * older log files are deleted. Appends keep working throughout and never
   * wait for the new file's fsyncs. A call while a compaction waits or runs
   * returns that one's promise; one still waiting when the store closes
   * resolves without doing anything.
   *
   * @param snapshot Returns the merged document state synchronously. It must
   *   include every update appended before this call and everything
   *   {@link open} recovered (containing more is fine: replay is idempotent).
   */
  compact(snapshot: () => Uint8Array): Promise<void> {
    return this.startCompaction(async () => snapshot());
  }

  /**
   * {@link compact} with the state supplied over several turns of the event loop, in parts whose
   * concatenation is the state (see src/counter/state-slices.ts). The parts must hold the state as
   * it was when `snapshot` was called, with the same guarantees as for compact.
   */
  compactInParts(snapshot: () => Promise<readonly Uint8Array[]>): Promise<void> {
    return this.startCompaction(snapshot);
  }

  private startCompaction(snapshot: SnapshotSource): Promise<void> {
    if (this.compacting !== null) return this.compacting;
    if (this.closed) return Promise.reject(new Error('cannot compact: storage is closed'));
    const run = this.runCompaction(snapshot).finally(() => {
      if (this.compacting === run) this.compacting = null;
    });
    this.compacting = run;
    return run;
  }

  /** Write and sync everything already appended, then close the log file. Idempotent. */
  close(): Promise<void> {
    if (this.closing === null) {
      this.closed = true;
      this.closing = this.shutdown();
    }
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    // a compaction still waiting for its turn gives it up; one running is waited for
    this.turn?.withdraw();
    if (this.compacting !== null) await this.compacting.catch(() => undefined);
    while (this.loopRunning) await this.loopDone;
    if (this.lazySync) clearTimeout(this.lazySync);
    await this.settleRetired().catch((err: unknown) => this.log.warn({ err }, 'could not sync a rotated log at shutdown'));
    for (const r of this.retired.splice(0)) await r.fh.close().catch(() => undefined);
    if (this.unsynced) await this.current.fh.datasync().catch((err: unknown) => this.log.warn({ err }, 'could not sync the log at shutdown'));
    await this.current.fh.close();
  }

  private kick(): void {
    if (this.loopRunning) return;
    this.loopRunning = true;
    // the round starts once the running code is done (a microtask, not a later phase of the event
    // loop, which would add to every write's latency): the appends it makes (a write's shards, a
    // peer's frames read from one socket chunk) share its fsync, where the first would go alone
    this.loopDone = Promise.resolve().then(() => this.runLoop());
  }

  // The only code that touches the current log's fd, so rounds and rotation
  // never interleave and `current.size` needs no locking.
  private async runLoop(): Promise<void> {
    try {
      while (this.queue.length > 0 || this.rotation !== null) {
        const rotation = this.rotation;
        if (rotation !== null) {
          this.rotation = null;
          this.switchTo(rotation.next);
          rotation.done();
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
        const t0 = performance.now();
        // a durable round covers everything appended before it, in rotated-out logs too
        await Promise.all([cur.fh.datasync(), this.settleRetired()]);
        this.observer?.synced((performance.now() - t0) / 1000, batch.length);
        this.unsynced = false;
        if (this.lazySync) clearTimeout(this.lazySync);
        this.lazySync = null;
      } else {
        this.markUnsynced();
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

  /** Something written is not synced: a sync-only round follows within LAZY_SYNC_MS unless a durable one comes first. */
  private markUnsynced(): void {
    if (this.unsynced) return;
    this.unsynced = true;
    this.lazySync = setTimeout(() => this.syncLater(), LAZY_SYNC_MS);
    this.lazySync.unref();
  }

  /** A sync-only round for what non-durable appends left unsynced. */
  private syncLater(): void {
    this.lazySync = null;
    if (!this.unsynced || this.closed) return;
    this.queue.push({ frame: EMPTY, durable: true, resolve: () => {}, reject: () => {} });
    this.kick();
  }

  /**
   * The next log, made outside the write loop: creating it and fsyncing it and its name take
   * several fsyncs, which appends must not queue behind. A crash before the switch leaves it
   * empty after the log in use; recovery then treats the log in use as the last one.
   */
  private async createNextLog(): Promise<CurrentLog> {
    const seq = this.current.seq + 1;
    const path = logPath(this.dir, seq);
    const fh = await createFile(path, LOG_MAGIC);
    try {
      await syncDir(this.dir);
    } catch (err) {
      await fh.close().catch(() => undefined);
      await unlink(path).catch(() => undefined);
      throw err;
    }
    return { seq, path, fh, size: HEADER_BYTES };
  }

  /** Has the loop switch appends to `next` between two rounds. */
  private requestRotation(next: CurrentLog): Promise<void> {
    return new Promise<void>((done) => {
      this.rotation = { next, done };
      this.kick();
    });
  }

  /**
   * Between two rounds: appends go to `next` from now on. What the old log holds unsynced is
   * synced at once but not waited for here; the next durable round waits for it (with its own
   * fdatasync, side by side), so an acknowledgment still covers every append before it.
   */
  private switchTo(next: CurrentLog): void {
    const old = this.current;
    const tailDirty = this.tailDirty;
    const unsynced = this.unsynced;
    this.current = next;
    this.oldLogs.push({ path: old.path, size: old.size });
    this.tailDirty = false;
    this.unsynced = false;
    if (this.lazySync) clearTimeout(this.lazySync);
    this.lazySync = null;
    const retired: RetiredLog = { path: old.path, fh: old.fh, synced: null };
    this.retired.push(retired);
    const synced = (async () => {
      // Best effort: if this fails the old file keeps a garbage tail, and
      // recovery will treat it as damaged and salvage its good records.
      if (tailDirty) await old.fh.truncate(old.size).catch(() => undefined);
      if (unsynced) await old.fh.datasync();
    })();
    retired.synced = synced;
    // on failure the next durable round (a lazy one at the latest) tries again and reports it
    synced.then(
      () => this.closeRetired(retired),
      () => {
        retired.synced = null;
        if (!this.closed) this.markUnsynced();
      },
    );
  }

  /** Waits until every rotated-out log is synced, trying a failed sync again. */
  private async settleRetired(): Promise<void> {
    if (this.retired.length === 0) return;
    await Promise.all(
      [...this.retired].map(async (r) => {
        r.synced ??= r.fh.datasync();
        try {
          await r.synced;
        } catch (err) {
          r.synced = null;
          throw err;
        }
        this.closeRetired(r);
      }),
    );
  }

  private closeRetired(r: RetiredLog): void {
    const at = this.retired.indexOf(r);
    if (at < 0) return;
    this.retired.splice(at, 1);
    r.fh.close().catch((err: unknown) => this.log.warn({ err, path: r.path }, 'could not close old log file'));
  }

  private async runCompaction(snapshot: SnapshotSource): Promise<void> {
    const turn = this.compactions?.turn() ?? null;
    this.turn = turn;
    try {
      if (turn !== null && !(await turn.granted)) return; // the store closed while it waited
      await this.compactNow(snapshot);
    } finally {
      turn?.release();
      this.turn = null;
    }
  }

  private async compactNow(snapshot: SnapshotSource): Promise<void> {
    const started = performance.now();
    const beforeBytes = this.diskBytes();
    const steps = { rotateMs: 0, encodeMs: 0, writeMs: 0 };
    try {
      await this.requestRotation(await this.createNextLog());
      steps.rotateMs = performance.now() - started;
      let t = performance.now();
      const state = await snapshot();
      const parts = state instanceof Uint8Array ? [state] : state;
      steps.encodeMs = performance.now() - t;
      t = performance.now();
      const { bytes, crc } = await checksum(parts);
      await replaceFile(join(this.dir, SNAPSHOT_NAME), join(this.dir, SNAPSHOT_TMP_NAME), [snapshotHead(bytes, crc), ...parts]);
      steps.writeMs = performance.now() - t;
      this.snapshotBytes = bytes;
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
    this.observer?.compacted((performance.now() - started) / 1000);
    this.log.info(
      {
        beforeBytes,
        afterBytes: this.diskBytes(),
        snapshotBytes: this.snapshotBytes,
        ms: Math.round(performance.now() - started),
        rotateMs: Math.round(steps.rotateMs),
        encodeMs: Math.round(steps.encodeMs),
        writeMs: Math.round(steps.writeMs),
      },
      'compacted log into snapshot',
    );
  }

  /** Bytes of framed records in all live log files (headers excluded). */
  private logBytes(): number {
    let total = this.current.size - HEADER_BYTES;
    for (const old of this.oldLogs) total += Math.max(0, old.size - HEADER_BYTES);
    return total;
  }

  /** Size of every live file, for the compaction log line. */
  private diskBytes(): number {
    let total = this.snapshotBytes > 0 ? HEADER_BYTES + FRAME_HEAD_BYTES + this.snapshotBytes : 0;
    total += this.current.size;
    for (const old of this.oldLogs) total += old.size;
    return total;
  }
}

/** Length and crc32 of the concatenated parts, a slice per turn of the event loop. */
async function checksum(parts: readonly Uint8Array[]): Promise<{ bytes: number; crc: number }> {
  let crc = 0;
  let bytes = 0;
  let slice = 0;
  for (const part of parts) {
    crc = crc32(part, crc);
    bytes += part.length;
    slice += part.length;
    if (slice >= CRC_SLICE_BYTES) {
      slice = 0;
      await nextTurn();
    }
  }
  return { bytes, crc };
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
