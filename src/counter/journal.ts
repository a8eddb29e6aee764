/**
 * The counter's journal: one log shared by every shard, where writes that must be durable before
 * they are acknowledged are fsynced, so that a batch touching k shards costs one fsync and not k.
 *
 * Each shard still keeps its own log and snapshot (catch-up, moves and compaction work per
 * shard): a journaled update is appended to its shard's log too, without a sync, and the shard
 * log is synced later (at most a second later, at a trim, or at close). On this kind of machine
 * an fdatasync costs about as much CPU as everything else a small write does: with 64 shards and
 * writes spread over tenants, one per shard per batch halved `post_single_quorum` (bench,
 * 2026-12-03: 64 shards 6.3k req/s, the same code without fsyncs 10.6k, one shard 9k).
 *
 * A record is `varuint(shard)` then the update. The journal is trimmed once its logs pass
 * `trimBytes`: every shard's log is synced first, so every record appended before the trim began
 * is on its shard's disk, and the store is compacted into a "snapshot" holding only the records
 * appended while those syncs ran (their shards' appends may not be synced yet). At start, every
 * record is applied to its shard again, if the shard is still held (Yjs skips what the shard
 * holds already): what a crash left only in the journal is back in the shards.
 */
import * as decoding from 'lib0/decoding';
import * as encoding from 'lib0/encoding';
import type { Logger } from 'pino';
import type { Recovered, UpdateLog } from './shard.ts';

export interface JournalRecord {
  shard: number;
  update: Uint8Array;
}

/**
 * The journal's store is opened with this as its compaction size: trimmed once its logs hold this
 * many bytes (a restart replays at most about that).
 */
export const JOURNAL_TRIM_BYTES = 8 * 1024 * 1024;

export function encodeRecord(shard: number, update: Uint8Array): Uint8Array {
  const e = encoding.createEncoder();
  encoding.writeVarUint(e, shard);
  encoding.writeUint8Array(e, update);
  return encoding.toUint8Array(e);
}

/** What a trim keeps: the records appended while the shards synced. */
function encodeKept(records: readonly JournalRecord[]): Uint8Array {
  const e = encoding.createEncoder();
  encoding.writeVarUint(e, records.length);
  for (const r of records) {
    encoding.writeVarUint(e, r.shard);
    encoding.writeVarUint8Array(e, r.update);
  }
  return encoding.toUint8Array(e);
}

/**
 * Every record a journal store held when it opened, kept ones first. A record that does not
 * decode (it passed the frame's checksum, so it was written so) throws: the caller refuses to
 * start rather than guess.
 */
export function decodeJournal(recovered: Recovered): JournalRecord[] {
  const out: JournalRecord[] = [];
  if (recovered.snapshot) {
    const d = decoding.createDecoder(recovered.snapshot);
    const n = decoding.readVarUint(d);
    for (let i = 0; i < n; i++) out.push({ shard: decoding.readVarUint(d), update: decoding.readVarUint8Array(d) });
  }
  for (const payload of recovered.updates) {
    const d = decoding.createDecoder(payload);
    const shard = decoding.readVarUint(d);
    out.push({ shard, update: payload.subarray(d.pos) });
  }
  return out;
}

export class Journal {
  /** Records appended since the running trim began; null when no trim runs. */
  private sinceTrim: JournalRecord[] | null = null;
  private trimming: Promise<void> | null = null;

  constructor(
    private readonly store: UpdateLog,
    /** Resolves once every update appended to any shard log so far is fsynced there. */
    private readonly syncShards: () => Promise<void>,
    private readonly log: Logger,
  ) {}

  /** Appends one shard's update; resolves once it is fsynced. Concurrent appends share one fsync. */
  append(shard: number, update: Uint8Array): Promise<void> {
    this.sinceTrim?.push({ shard, update });
    const appended = this.store.append(encodeRecord(shard, update), true);
    if (this.trimming === null && this.store.needsCompaction()) this.trim();
    return appended;
  }

  /** Resolves when no trim runs (for tests and close). */
  async settled(): Promise<void> {
    await this.trimming?.catch(() => {});
  }

  async close(): Promise<void> {
    await this.settled();
    await this.store.close();
  }

  private trim(): void {
    this.sinceTrim = [];
    const run = (async () => {
      await this.syncShards();
      // the store rotates, then asks for the state: records appended until then that the syncs
      // above may not cover; later ones are in the new log
      await this.store.compact(() => encodeKept(this.sinceTrim ?? []));
    })();
    this.trimming = run
      .catch((err: Error) => this.log.warn({ err: err.message }, 'could not trim the journal; it keeps every record and the next write tries again'))
      .finally(() => {
        this.sinceTrim = null;
        this.trimming = null;
      });
  }
}
