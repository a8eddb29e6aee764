/**
 * The replicated state of a counter: every tenant's grow-only set of item ids, as one Yjs document.
 *
 * Layout (chosen for memory and speed, see README "Performance"): each item is a short record
 * appended to a root-level Y.Text of the writing process alone (`log-<clientID>-<segment>`). Root
 * types cannot collide the way nested types created concurrently under one key do, so a brand-new
 * tenant written on two counters at once keeps both sides. Nobody else inserts into a writer's
 * text, so its consecutive appends always merge into a single Yjs item holding one string (the
 * document costs little more than the characters) and finding the end never walks other writers'
 * items (one shared text made every append after a peer's update scan the whole text). A record written twice (the same item
 * added on two counters before they synced) stays twice in the text; the exact per-tenant counts
 * come from an IdIndex fed with what Yjs actually integrated.
 */
import * as Y from 'yjs';
import type { Logger } from 'pino';
import { IdIndex } from './id-index.ts';
import { decodeRecordSpans, decodeRecords, encodeRecord } from './records.ts';
import type { Item } from '../protocol/messages.ts';

/** Where a transaction came from; broadcasting skips the peer an update came from. */
export type Origin =
  | { kind: 'local' }
  | { kind: 'storage' }
  | { kind: 'peer'; peerId: string; connection: object };

export const LOCAL: Origin = Object.freeze({ kind: 'local' });
export const STORAGE: Origin = Object.freeze({ kind: 'storage' });

/**
 * A log text takes appends up to this many code units, then the writer starts the next one.
 * Kept small on purpose: Yjs merges each append into the text's one string (\`str += more\`) and
 * then slices it to encode the update, which flattens (copies) the whole string every transaction;
 * with one ever-growing text that copy made every write O(items held) (seen in profiles as
 * ContentString.write). 32 K units bound it to ~64 KB at a cost of one Yjs item per ~1,000 items.
 */
export const SEGMENT_UNITS = 1 << 15;

/**
 * Bytes an item takes in an update, a little below what it usually does (about 30 for a 16-unit
 * id and a 10-unit tenant), so that reserving for an update's items rarely falls short.
 */
const RECORD_BYTES = 28;
/** Updates below this size grow the index as usual. */
const RESERVE_FROM_BYTES = 1 << 20;

export class GSet {
  readonly doc: Y.Doc;
  private readonly index = new IdIndex();
  private segment = 0;
  private target: Y.Text | null = null;
  private targetClient = -1;
  private malformed = 0;
  /** Told of every tenant whose count grew, once per new item (the coordinators' count watches). */
  onCounted: ((tenant: string) => void) | null = null;
  /** The updates of the call in progress (add, apply); null outside one. */
  private captured: Uint8Array[] | null = null;
  /** Set by a transaction that changed the document (see `apply`). */
  private changed = false;

  constructor(
    private readonly log: Logger,
    clientID?: number,
  ) {
    // gc off: nothing is ever deleted by us, and a peer's deletion must not drop items from snapshots
    this.doc = new Y.Doc({ gc: false });
    // a fixed id is for seeded test runs only; by default every start gets a fresh random one
    if (clientID !== undefined) this.doc.clientID = clientID;
    this.doc.on('afterTransaction', this.onAfterTransaction);
  }

  private readonly onAfterTransaction = (tr: Y.Transaction): void => this.indexTransaction(tr);
  private readonly onUpdate = (update: Uint8Array): void => {
    this.captured?.push(update);
  };

  /** Detaches the document listeners; counts stay readable. For a counter that has stopped. */
  close(): void {
    this.doc.off('afterTransaction', this.onAfterTransaction);
  }

  /** Distinct items of one tenant, O(1). */
  count(tenant: string): number {
    return this.index.count(tenant);
  }

  /** The tenant's set digest (see `IdIndex.digest`). */
  digest(tenant: string): number {
    return this.index.digest(tenant);
  }

  /** Distinct items over all tenants. */
  get size(): number {
    return this.index.size;
  }

  get tenants(): number {
    return this.index.tenants;
  }

  /**
   * Appends the items not held yet, in one transaction (one Yjs item), and returns the update
   * that holds them for the log and the peers, or null when every item was held already.
   * Duplicates within `items` and of what is held are skipped; with `rewriteHeld`, only those
   * within `items`: an update that peers must acknowledge has to carry every item, since one held
   * here is not known to be on any of their disks (a retried write). The copy costs a duplicate
   * record, which the index ignores.
   */
  add(items: readonly Item[], rewriteHeld = false): Uint8Array | null {
    const text = this.freshRecords(items, rewriteHeld);
    if (text === '') return null;
    const target = this.targetFor(text.length);
    return this.capture(() => this.doc.transact(() => target.insert(target.length, text), LOCAL))[0] ?? null;
  }

  /**
   * Applies a peer's update and returns what it changed here (for the log and the other peers);
   * empty when it held nothing new or waits for updates it depends on. Throws on a malformed
   * update, leaving what was integrated before the fault.
   */
  apply(update: Uint8Array, origin: Origin): Uint8Array[] {
    const store = this.doc.store;
    if (store.pendingStructs !== null || store.pendingDs !== null) return this.capture(() => Y.applyUpdate(this.doc, update, origin));
    this.reserveFor(update.length);
    this.changed = false;
    Y.applyUpdate(this.doc, update, origin);
    // Nothing waited for a missing update before: what changed here came in this update, so the
    // update itself goes to the log and the peers, not Yjs's encoding of it again (for a shard
    // caught up from a peer, megabytes re-encoded). Updates are idempotent: parts held already,
    // or left waiting for a missing one, cost bytes, not correctness. With structs pending from
    // before, this update may integrate them too, and only Yjs's encoding holds those.
    return this.changed ? [update] : [];
  }

  /**
   * True when every struct of `update` (applied before) is integrated here: none waits in the
   * pending store for an update this counter has not received. Cheap while nothing is pending.
   */
  holdsAll(update: Uint8Array): boolean {
    if (this.doc.store.pendingStructs === null) return true;
    for (const [client, clock] of Y.parseUpdateMeta(update).to) {
      if (Y.getState(this.doc.store, client) < clock) return false;
    }
    return true;
  }

  /**
   * Sizes the index once for the items `bytes` of updates may bring, before they are applied: a
   * shard caught up or replayed whole would otherwise grow it step by step, rehashing and copying
   * it each time (1.3 s of a 20 M-item restart).
   */
  private reserveFor(bytes: number): void {
    if (bytes >= RESERVE_FROM_BYTES) this.index.reserve(this.index.size + Math.ceil(bytes / RECORD_BYTES));
  }

  /**
   * The updates `run`'s transactions made. The update listener is attached only meanwhile: Yjs
   * encodes a transaction's update whenever anything listens, and a restart's replay (one
   * transaction per shard holding all of it) has no use for that copy (1.4 s of 16 at 20 M items).
   */
  private capture(run: () => void): Uint8Array[] {
    const out: Uint8Array[] = [];
    this.captured = out;
    this.doc.on('update', this.onUpdate);
    try {
      run();
    } finally {
      this.doc.off('update', this.onUpdate);
      this.captured = null;
    }
    return out;
  }

  /** The records of the items not held yet (or all, with `rewriteHeld`), each once. */
  private freshRecords(items: readonly Item[], rewriteHeld: boolean): string {
    let text = '';
    let seen: Set<string> | null = null;
    for (const it of items) {
      if (!rewriteHeld && this.index.has(it.tenant, it.id)) continue;
      if (items.length > 1) {
        seen ??= new Set();
        const key = encodeRecord(it.tenant, it.id);
        if (seen.has(key)) continue;
        seen.add(key);
        text += key;
      } else {
        text += encodeRecord(it.tenant, it.id);
      }
    }
    return text;
  }

  /** The writer's current log text, moving to the next segment when `units` more would overflow it. */
  private targetFor(units: number): Y.Text {
    if (this.targetClient !== this.doc.clientID) {
      // first write, or Yjs gave us a new clientID after seeing ours in a peer's update
      this.targetClient = this.doc.clientID;
      this.segment = 0;
      this.target = null;
    }
    this.target ??= this.doc.getText(this.segmentName());
    if (this.target.length + units > SEGMENT_UNITS) {
      this.segment++;
      this.target = this.doc.getText(this.segmentName());
    }
    return this.target;
  }

  /** Applies many updates in one transaction (restart replay): one indexing pass, one cleanup. */
  applyUpdates(updates: readonly Uint8Array[], origin: Origin): void {
    this.reserveFor(updates.reduce((n, u) => n + u.length, 0));
    this.doc.transact(() => {
      for (const u of updates) Y.applyUpdate(this.doc, u, origin);
    }, origin);
  }

  /** Every item held, once each (a migration reads a whole document this way). */
  *items(): Generator<Item> {
    const seen = new Set<string>();
    // root types read from an update before anyone asked for them are plain AbstractTypes
    for (const type of this.doc.share.values()) {
      for (let s = type._start; s !== null; s = s.right) {
        if (s.deleted || !(s.content instanceof Y.ContentString)) continue;
        const out: Item[] = [];
        decodeRecords(s.content.str, (tenant, id) => {
          const key = encodeRecord(tenant, id);
          if (seen.has(key)) return;
          seen.add(key);
          out.push({ tenant, id });
        });
        yield* out;
      }
    }
  }

  encodeState(): Uint8Array {
    return Y.encodeStateAsUpdate(this.doc);
  }

  /** Number of malformed records seen in peers' updates (they are ignored). */
  get malformedRecords(): number {
    return this.malformed;
  }

  /** The clientID is fresh every start (and Yjs renews it on a collision), so the name is ours alone. */
  private segmentName(): string {
    return `log-${this.doc.clientID}-${this.segment}`;
  }

  /** Feeds the index with the structs this transaction integrated; pending ones arrive later. */
  private indexTransaction(tr: Y.Transaction): void {
    if (tr.deleteSet.clients.size > 0) this.changed = true;
    for (const [client, after] of tr.afterState) {
      const before = tr.beforeState.get(client) ?? 0;
      if (after <= before) continue;
      this.changed = true;
      const structs = this.doc.store.clients.get(client);
      if (!structs) continue;
      let text = '';
      for (let i = Y.findIndexSS(structs, before); i < structs.length; i++) {
        const s = structs[i]!;
        if (s.id.clock >= after) break;
        if (s instanceof Y.Item && s.content instanceof Y.ContentString && s.parentSub === null && (s.parent as Y.AbstractType<unknown>)._item === null) {
          text += s.content.str;
        }
      }
      const counted = this.onCounted;
      const used = decodeRecordSpans(text, (ts, tl, is, il) => {
        const tenant = this.index.addSpan(text, ts, tl, is, il);
        if (tenant !== null && counted) counted(tenant);
      });
      if (used < text.length) {
        this.malformed++;
        this.log.warn({ client, dropped: text.length - used }, 'ignored malformed records in an update');
      }
    }
  }
}
