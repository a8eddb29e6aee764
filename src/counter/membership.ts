/**
 * The mesh's member list, replicated as a CRDT (a small Yjs document of its own, synced between
 * counters with MembersSync messages and kept in DATA_DIR/members). Two grow-only maps: `members`
 * (id → address, written by each counter when it joins) and `removed` (id → true, written by an
 * operator's removal). A removed id stays removed for good: merges can only add to `removed`, so
 * every counter ends up agreeing, and a counter id once removed is never placed again.
 *
 * Shards are placed over `placed()`: members not removed. A member that is down is still placed
 * (its shards keep their other replicas) until it is removed.
 */
import * as Y from 'yjs';
import * as decoding from 'lib0/decoding';
import * as syncProtocol from 'y-protocols/sync';
import type { Logger } from 'pino';
import { writeMembersSync, ProtocolError } from '../protocol/messages.ts';

/** Where the member list is kept: DATA_DIR/members in production, memory in tests. */
export interface MembersStore {
  /** The last state saved, or null for a new DATA_DIR. */
  load(): Promise<Uint8Array | null>;
  /** Replaces the saved state durably (fsynced) with `state`. */
  save(state: Uint8Array): Promise<void>;
}

/** A removal the operator asked for that cannot be done. */
export class MembershipError extends Error {
  override name = 'MembershipError';
}

export class Membership {
  private readonly doc = new Y.Doc();
  private readonly members = this.doc.getMap<string>('members');
  private readonly removedIds = this.doc.getMap<boolean>('removed');
  /** Saves run one after another on this chain (never rejects). */
  private chain: Promise<void> = Promise.resolve();
  /** The latest save: settles once the state as of its start is on disk (or rejects). */
  private lastSave: Promise<void> = Promise.resolve();
  private saveQueued = false;
  private placedCache: string[] | null = null;
  /** Told after any change, local or from a peer (placement may have moved). */
  onChange: () => void = () => {};
  /** Told when a peer's answer to our step 1 (its whole list) was applied. */
  onPeerSynced: () => void = () => {};
  /** Told of each update made here (`from` null) or received from a peer (`from`: readSync's origin), to pass on. */
  onUpdate: (update: Uint8Array, from: unknown) => void = () => {};

  private constructor(
    private readonly store: MembersStore,
    private readonly log: Logger,
    clientID?: number,
  ) {
    // a fixed id is for seeded test runs only
    if (clientID !== undefined) this.doc.clientID = clientID;
    this.doc.on('update', (update: Uint8Array, origin: unknown) => {
      this.placedCache = null;
      if (origin === 'disk') return;
      this.persist();
      this.onUpdate(update, origin);
      this.onChange();
    });
  }

  static async open(store: MembersStore, log: Logger, clientID?: number): Promise<Membership> {
    const m = new Membership(store, log, clientID);
    const saved = await store.load();
    if (saved) Y.applyUpdate(m.doc, saved, 'disk');
    return m;
  }

  /** Member ids shards are placed on: every member not removed, sorted. */
  placed(): string[] {
    this.placedCache ??= [...this.members.keys()].filter((id) => !this.removedIds.has(id)).sort();
    return this.placedCache;
  }

  removed(): string[] {
    return [...this.removedIds.keys()].sort();
  }

  isMember(id: string): boolean {
    return this.members.has(id);
  }

  isRemoved(id: string): boolean {
    return this.removedIds.has(id);
  }

  address(id: string): string | undefined {
    return this.members.get(id);
  }

  /** Adds this counter to the list (a removed id stays removed). Resolves once saved. */
  join(id: string, address: string): Promise<void> {
    if (this.members.get(id) !== address) this.members.set(id, address);
    return this.saved();
  }

  /**
   * Removes a member for good; resolves once the removal is on this counter's disk (it reaches
   * the others through MembersSync). Removing the last placed member would leave the shards
   * nowhere to go, so it is refused.
   */
  remove(id: string): Promise<void> {
    if (!this.members.has(id)) {
      throw new MembershipError(`${JSON.stringify(id)} is not a member of this mesh; GET /counters lists the members`);
    }
    if (!this.removedIds.has(id)) {
      if (this.placed().length === 1) throw new MembershipError(`${id} is the last member: removing it would leave the shards nowhere to go`);
      this.removedIds.set(id, true);
      this.log.warn({ removed: id, placed: this.placed() }, 'member removed from the mesh for good');
    }
    return this.saved();
  }

  /** Resolves once everything changed so far is on disk. */
  saved(): Promise<void> {
    return this.lastSave;
  }

  /** A peer's MembersSync message: step 1 is answered (the reply returned), step 2 and updates applied. */
  readSync(decoder: decoding.Decoder, origin: object): Uint8Array | null {
    try {
      const kind = decoding.readVarUint(decoder);
      switch (kind) {
        case syncProtocol.messageYjsSyncStep1: {
          const sv = decoding.readVarUint8Array(decoder);
          return writeMembersSync((e) => syncProtocol.writeSyncStep2(e, this.doc, sv));
        }
        case syncProtocol.messageYjsSyncStep2:
          Y.applyUpdate(this.doc, decoding.readVarUint8Array(decoder), origin);
          this.onPeerSynced();
          return null;
        case syncProtocol.messageYjsUpdate:
          Y.applyUpdate(this.doc, decoding.readVarUint8Array(decoder), origin);
          return null;
        default:
          throw new ProtocolError(`unknown members sync message type ${kind}`);
      }
    } catch (err) {
      if (err instanceof ProtocolError) throw err;
      throw new ProtocolError(`malformed members sync message: ${(err as Error).message}`);
    }
  }

  step1(): Uint8Array {
    return writeMembersSync((e) => syncProtocol.writeSyncStep1(e, this.doc));
  }

  static updateFrame(update: Uint8Array): Uint8Array {
    return writeMembersSync((e) => syncProtocol.writeUpdate(e, update));
  }

  /** Saves the whole state (a few hundred bytes) after a change; changes made before a queued save starts share it. */
  private persist(): void {
    if (this.saveQueued) return;
    this.saveQueued = true;
    const save = this.chain.then(() => {
      this.saveQueued = false;
      return this.store.save(Y.encodeStateAsUpdate(this.doc));
    });
    this.lastSave = save;
    this.chain = save.catch((err: Error) => this.log.error({ err }, 'could not save the member list; the next change retries'));
  }

  close(): void {
    this.doc.destroy();
  }
}
