/**
 * One shard as a counter holds it: the shard's document (a GSet) and its log store. Everything
 * that must be in order per document lives here: appends, the log's tail, compaction, and the
 * rewrite that repays a failed write. Shards are independent of each other, so a compaction
 * encodes one shard's state (1/SHARDS of the counter's items), not all of it, and it does so a
 * slice at a time (state-slices.ts).
 */
import type { Logger } from 'pino';
import { GSet, type Origin } from './gset.ts';
import { encodeStateInSlices } from './state-slices.ts';

/** What a shard needs of its disk: its log store in production, an in-memory log in tests. */
export interface UpdateLog {
  /** Appends one update; resolves once written, and fsynced when `durable`. Appends are written in order. */
  append(update: Uint8Array, durable: boolean): Promise<void>;
  /** Resolves once every update appended so far is fsynced (non-durable appends included). */
  sync(): Promise<void>;
  /** True when the log has grown enough to be folded into a snapshot (the store's policy). */
  needsCompaction(): boolean;
  /** Writes the state `snapshot` returns as the new snapshot and drops the logs it covers. */
  compact(snapshot: () => Uint8Array): Promise<void>;
  /** The same with the state encoded over several turns of the event loop, in parts; a log without it gets compact(). */
  compactInParts?(snapshot: () => Promise<readonly Uint8Array[]>): Promise<void>;
  close(): Promise<void>;
}

/** What a shard's log store held when it was opened. */
export interface Recovered {
  snapshot: Uint8Array | null;
  updates: Uint8Array[];
  /** Files found damaged and moved aside: the counter waits for a peer's state before serving. */
  damaged: string[];
  tornTail: boolean;
}

export class Shard {
  readonly gset: GSet;
  /** Answers reads and takes writes; false while it catches up from its replicas (fed by gossip meanwhile). */
  serving = true;
  /** Settles once every update appended so far is in the log (appends are written in order). */
  private logTail: Promise<void> = Promise.resolve();
  /** Some update is in memory but not on disk; the next write first rewrites the snapshot. */
  private persistDebt = false;

  constructor(
    readonly id: number,
    readonly log: UpdateLog,
    private readonly logger: Logger,
    clientID?: number,
  ) {
    this.gset = new GSet(logger, clientID);
  }

  /**
   * Stores an update this shard's document applied: to the log (fsynced when `durable`), asking
   * for a compaction once the store says it is due. Resolves when the log has it.
   */
  append(update: Uint8Array, durable: boolean): Promise<void> {
    const appended = this.log.append(update, durable);
    this.logTail = appended;
    appended.then(
      () => {
        // the store owns the policy (see LogStore.needsCompaction); the shard asks after each append
        if (this.log.needsCompaction()) this.compact();
      },
      () => {
        // the storage layer logged it; the next acknowledged write rewrites the whole state
        this.persistDebt = true;
      },
    );
    return appended;
  }

  /** Resolves once everything appended so far is on disk (for items held already: maybe appended lazily). */
  synced(): Promise<void> {
    return this.logTail.then(() => this.log.sync());
  }

  /** After an acknowledged write: if an earlier append failed, rewrite the state to a snapshot first. */
  async repayDebt(): Promise<void> {
    if (!this.persistDebt) return;
    await this.rewrite();
    this.persistDebt = false;
    this.logger.info('disk takes writes again; shard rewritten to a fresh snapshot');
  }

  /**
   * Rewrites the state into a snapshot (after damaged or cut files were read, or on the store's
   * policy), encoded in slices so that the counter keeps answering meanwhile.
   */
  rewrite(): Promise<void> {
    if (this.log.compactInParts) return this.log.compactInParts(async () => (await encodeStateInSlices(this.gset.doc)).parts);
    return this.log.compact(() => this.gset.encodeState());
  }

  private compact(): void {
    this.rewrite().catch((err: Error) => this.logger.error({ err }, 'compaction failed; will retry after the next write'));
  }

  /** Waits for appends in flight, then closes the log. */
  async close(): Promise<void> {
    await this.logTail.catch(() => {});
    try {
      await this.log.close();
    } finally {
      this.gset.close();
    }
  }

  apply(update: Uint8Array, origin: Origin): Uint8Array[] {
    return this.gset.apply(update, origin);
  }
}
