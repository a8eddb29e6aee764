/**
 * The mesh's wire protocol: every WebSocket frame (binary) is one message,
 * `varUint(type)` followed by the type's payload. PROTOCOL.md beside this file describes the bytes.
 * Types are numbered once and never renumbered.
 */
import * as encoding from 'lib0/encoding';
import { MAX_WIRE_FIELD_CHARS } from '../shared/limits.ts';
import * as decoding from 'lib0/decoding';

export const MessageType = {
  /** y-protocols sync message (step 1, step 2 or update), counter ↔ counter. */
  Sync: 0,
  /** y-protocols awareness update: who is alive in the mesh and where, counter ↔ counter. */
  Awareness: 1,
  /** First message on every connection, both directions. */
  Hello: 2,
  /** Coordinator → counter: add items (optionally: answer once that many counters have them on disk). */
  Add: 3,
  /** Coordinator → counter: count one tenant. */
  Count: 4,
  /** Counter → coordinator: answer to Add or Count. */
  Reply: 5,
  /** Counter → coordinator: readiness, size and known members, sent on change and every heartbeat. */
  Status: 6,
  /**
   * Coordinator → counter: count one tenant with the tenant's set digest, after first pulling
   * what the named peers hold and this counter lacks (quorum reads and their read repair).
   */
  Tally: 7,
  /** Counter → coordinator: answer to Tally (a failed Tally is answered with Reply). */
  Tallied: 8,
  /**
   * Counter → counter: a Yjs update its sender waits to hear is on the receiver's disk (a write
   * with w ≥ 2 on its home counter). Applied like a sync update, then answered with Durable.
   */
  Replicate: 9,
  /** Counter → counter: everything in the Replicate with this ack id is fsynced here. */
  Durable: 10,
  /**
   * Coordinator → counter: count one tenant (answered with Reply, like Count) and from then on
   * push the tenant's count in Counts whenever it changes, until Unwatch or the connection ends.
   */
  Watch: 11,
  /** Counter → coordinator: new counts of watched tenants. */
  Counts: 12,
  /** Coordinator → counter: stop pushing these tenants' counts. */
  Unwatch: 13,
  /** y-protocols sync message of one shard's document, counter ↔ counter (Sync's successor). */
  ShardSync: 14,
  /**
   * Counter → counter: one shard's Yjs update that its sender waits to hear is on the receiver's
   * disk (Replicate's successor). A write spanning several shards sends one per shard, all with
   * the same ack id; the receiver answers each with Durable.
   */
  ShardReplicate: 15,
  /**
   * Coordinator → counter: remove a member from the mesh for good (it is never placed again; its
   * shards are re-replicated from the others). Answered with Reply once the removal is on disk.
   */
  Remove: 16,
  /** y-protocols sync message of the member list's document, counter ↔ counter. */
  MembersSync: 17,
  /**
   * Counter → counter: the answer to a shard's sync step 1 (or a pull) from a counter that does
   * not hold that shard; it takes the place of the step 2, so answers stay in order.
   */
  NotHeld: 18,
  /**
   * Either direction: one piece of a message too big for one WebSocket message (a shard's state
   * past MAX_MESSAGE_BYTES); the receiver joins the pieces and reads the whole as one message.
   */
  Part: 19,
  /**
   * Coordinator → counter: several tenants' Tallies in one frame (quorum reads that arrived
   * together), none with peers to pull from. Sent only to counters whose Status has `tallyBatch`.
   */
  TallyBatch: 20,
  /** Counter → coordinator: the answers to a TallyBatch, one per tenant in its order (a failed batch is answered with Reply). */
  TalliedBatch: 21,
} as const;
export type MessageTypeNumber = (typeof MessageType)[keyof typeof MessageType];

export type Role = 'peer' | 'coordinator';

export const ReplyStatus = {
  Ok: 0,
  /** Not ready, disk failing, or shutting down: try another counter. */
  Unavailable: 1,
  /** The request itself is wrong: another counter would refuse it too. */
  BadRequest: 2,
  /**
   * An Add asking for more than one acknowledgment: stored here, but fewer counters than it asked
   * for (the value, this one included) confirmed they have the items on disk in time.
   */
  TooFewAcks: 3,
} as const;
export type ReplyStatusNumber = (typeof ReplyStatus)[keyof typeof ReplyStatus];

/** WebSocket close codes the mesh uses (4000-4999 is the application range). */
export const CloseCode = {
  Normal: 1000,
  GoingAway: 1001,
  InternalError: 1011,
  /** The counter is loading DATA_DIR: dial again later. */
  TryAgainLater: 1013,
  ProtocolError: 4400,
  Unauthorized: 4401,
  SelfConnection: 4409,
} as const;

export interface Item {
  tenant: string;
  id: string;
}

export interface Hello {
  role: Role;
  nodeId: string;
  address: string;
  /** The mesh's SHARDS, from counters (peer hellos must carry it); absent from coordinators. */
  shards?: number;
}

/** Most shards a mesh may have (SHARDS): a shard id is below this. */
export const MAX_SHARDS = 4096;

export interface Member {
  id: string;
  address: string;
}

export interface Status {
  id: string;
  address: string;
  ready: boolean;
  items: number;
  members: Member[];
  /** The mesh's SHARDS. */
  shards?: number;
  /** REPLICATION_FACTOR: counters each shard is placed on. */
  factor?: number;
  /** Member ids shards are placed on, as this counter knows them (removed ones left out). */
  placed?: string[];
  /** Member ids removed from the mesh, as this counter knows them. */
  removed?: string[];
  /** Shards this counter holds in sync and serves (reads and writes). */
  serving?: number[];
  /** Shards this counter holds: serving, catching up, or handing off. */
  held?: number[];
  /**
   * Per peer id, seconds since the oldest update this counter holds that the peer's last state
   * vector lacked (0 when it lacked nothing). Absent when the counter runs with METRICS=off.
   */
  lag?: Record<string, number>;
  /** The counter answers TallyBatch (versions before it close the connection on one). */
  tallyBatch?: boolean;
}

/** One answer of a TalliedBatch: the tenant's count and digest, or why this counter cannot tell (its shard is not served here). */
export type BatchTally = { count: number; digest: number } | { refused: string };

export type Message =
  | { type: typeof MessageType.Sync; decoder: decoding.Decoder }
  | { type: typeof MessageType.Awareness; update: Uint8Array }
  | { type: typeof MessageType.Hello; hello: Hello }
  | { type: typeof MessageType.Add; reqId: number; items: Item[]; acks: number; ackWaitMs: number }
  | { type: typeof MessageType.Count; reqId: number; tenant: string }
  | { type: typeof MessageType.Reply; reqId: number; status: ReplyStatusNumber; value: number; message: string }
  | { type: typeof MessageType.Status; status: Status }
  | { type: typeof MessageType.Tally; reqId: number; tenant: string; pullFrom: string[] }
  | { type: typeof MessageType.Tallied; reqId: number; count: number; digest: number }
  | { type: typeof MessageType.Replicate; ackId: number; update: Uint8Array }
  | { type: typeof MessageType.Durable; ackId: number }
  | { type: typeof MessageType.Watch; reqId: number; tenant: string }
  | { type: typeof MessageType.Counts; counts: TenantCount[] }
  | { type: typeof MessageType.Unwatch; tenants: string[] }
  | { type: typeof MessageType.ShardSync; shard: number; decoder: decoding.Decoder }
  | { type: typeof MessageType.ShardReplicate; ackId: number; shard: number; update: Uint8Array }
  | { type: typeof MessageType.Remove; reqId: number; nodeId: string }
  | { type: typeof MessageType.MembersSync; decoder: decoding.Decoder }
  | { type: typeof MessageType.NotHeld; shard: number }
  | { type: typeof MessageType.Part; index: number; count: number; bytes: Uint8Array }
  | { type: typeof MessageType.TallyBatch; reqId: number; tenants: string[] }
  | { type: typeof MessageType.TalliedBatch; reqId: number; tallies: BatchTally[] };

export interface TenantCount {
  tenant: string;
  count: number;
}

export class ProtocolError extends Error {
  override name = 'ProtocolError';
}

function frame(type: MessageTypeNumber, write: (e: encoding.Encoder) => void): Uint8Array {
  const e = encoding.createEncoder();
  encoding.writeVarUint(e, type);
  write(e);
  return encoding.toUint8Array(e);
}

/** Wraps an already encoded y-protocols sync message about one shard's document. */
export function writeShardSync(shard: number, write: (e: encoding.Encoder) => void): Uint8Array {
  return frame(MessageType.ShardSync, (e) => {
    encoding.writeVarUint(e, shard);
    write(e);
  });
}

/** @param update a Yjs update (v1) of the shard; the receiver answers `writeDurable(ackId)` once it is on its disk. */
export function writeShardReplicate(ackId: number, shard: number, update: Uint8Array): Uint8Array {
  return frame(MessageType.ShardReplicate, (e) => {
    encoding.writeVarUint(e, ackId);
    encoding.writeVarUint(e, shard);
    encoding.writeVarUint8Array(e, update);
  });
}

export function writeRemove(reqId: number, nodeId: string): Uint8Array {
  return frame(MessageType.Remove, (e) => {
    encoding.writeVarUint(e, reqId);
    encoding.writeVarString(e, nodeId);
  });
}

/** Wraps an already encoded y-protocols sync message about the member list. */
export function writeMembersSync(write: (e: encoding.Encoder) => void): Uint8Array {
  return frame(MessageType.MembersSync, write);
}

/** Piece `index` (from 0) of `count` of a message sent in parts (see MeshSocket). */
export function writePart(index: number, count: number, bytes: Uint8Array): Uint8Array {
  return frame(MessageType.Part, (e) => {
    encoding.writeVarUint(e, index);
    encoding.writeVarUint(e, count);
    encoding.writeVarUint8Array(e, bytes);
  });
}

export function writeNotHeld(shard: number): Uint8Array {
  return frame(MessageType.NotHeld, (e) => encoding.writeVarUint(e, shard));
}

export function writeAwareness(update: Uint8Array): Uint8Array {
  return frame(MessageType.Awareness, (e) => encoding.writeVarUint8Array(e, update));
}

export function writeHello(h: Hello): Uint8Array {
  return frame(MessageType.Hello, (e) => {
    encoding.writeVarString(e, h.role);
    encoding.writeVarString(e, h.nodeId);
    encoding.writeVarString(e, h.address);
    if (h.shards !== undefined) encoding.writeVarUint(e, h.shards);
  });
}

/** Most acknowledgments an Add may ask for: more than any mesh has replicas of a tenant. */
export const MAX_ACKS = 64;
/** Longest an Add may let its counter wait for its peers' acknowledgments. */
export const MAX_ACK_WAIT_MS = 600_000;

/**
 * @param acks counters (the receiver included) that must have the items on disk before the
 *   reply; 1, the default, is written as nothing at all (the frame of a plain add).
 * @param ackWaitMs with acks > 1: how long the counter waits for its peers' acknowledgments.
 */
export function writeAdd(reqId: number, items: readonly Item[], acks = 1, ackWaitMs = 0): Uint8Array {
  return frame(MessageType.Add, (e) => {
    encoding.writeVarUint(e, reqId);
    encoding.writeVarUint(e, items.length);
    for (const it of items) {
      encoding.writeVarString(e, it.tenant);
      encoding.writeVarString(e, it.id);
    }
    if (acks > 1) {
      encoding.writeVarUint(e, acks);
      encoding.writeVarUint(e, ackWaitMs);
    }
  });
}

/** @param update a Yjs update (v1) the receiver answers with `writeDurable(ackId)` once it is on its disk. */
export function writeReplicate(ackId: number, update: Uint8Array): Uint8Array {
  return frame(MessageType.Replicate, (e) => {
    encoding.writeVarUint(e, ackId);
    encoding.writeVarUint8Array(e, update);
  });
}

export function writeDurable(ackId: number): Uint8Array {
  return frame(MessageType.Durable, (e) => encoding.writeVarUint(e, ackId));
}

export function writeCount(reqId: number, tenant: string): Uint8Array {
  return frame(MessageType.Count, (e) => {
    encoding.writeVarUint(e, reqId);
    encoding.writeVarString(e, tenant);
  });
}

export function writeReply(reqId: number, status: ReplyStatusNumber, value: number, message = ''): Uint8Array {
  return frame(MessageType.Reply, (e) => {
    encoding.writeVarUint(e, reqId);
    encoding.writeVarUint(e, status);
    encoding.writeVarUint(e, value);
    encoding.writeVarString(e, message);
  });
}

export function writeStatus(s: Status): Uint8Array {
  return frame(MessageType.Status, (e) => encoding.writeVarString(e, JSON.stringify(s)));
}

/** Most peers a Tally may name: more than any mesh has replicas of a tenant. */
export const MAX_TALLY_PEERS = 64;

/** @param pullFrom node ids of peers to pull from first; empty: count at once. */
export function writeTally(reqId: number, tenant: string, pullFrom: readonly string[] = []): Uint8Array {
  return frame(MessageType.Tally, (e) => {
    encoding.writeVarUint(e, reqId);
    encoding.writeVarString(e, tenant);
    encoding.writeVarUint(e, pullFrom.length);
    for (const id of pullFrom) encoding.writeVarString(e, id);
  });
}

/** @param digest the tenant's set digest, below 2^53 (see `IdIndex.digest`). */
export function writeTallied(reqId: number, count: number, digest: number): Uint8Array {
  return frame(MessageType.Tallied, (e) => {
    encoding.writeVarUint(e, reqId);
    encoding.writeVarUint(e, count);
    encoding.writeVarUint(e, digest);
  });
}

/** Most tenants one TallyBatch carries; more queued reads leave in several. */
export const MAX_TALLY_BATCH = 1024;

export function writeTallyBatch(reqId: number, tenants: readonly string[]): Uint8Array {
  return frame(MessageType.TallyBatch, (e) => {
    encoding.writeVarUint(e, reqId);
    encoding.writeVarUint(e, tenants.length);
    for (const t of tenants) encoding.writeVarString(e, t);
  });
}

export function writeTalliedBatch(reqId: number, tallies: readonly BatchTally[]): Uint8Array {
  return frame(MessageType.TalliedBatch, (e) => {
    encoding.writeVarUint(e, reqId);
    encoding.writeVarUint(e, tallies.length);
    for (const t of tallies) {
      if ('refused' in t) {
        encoding.writeUint8(e, 1);
        encoding.writeVarString(e, t.refused);
      } else {
        encoding.writeUint8(e, 0);
        encoding.writeVarUint(e, t.count);
        encoding.writeVarUint(e, t.digest);
      }
    }
  });
}

/** The reply message of a Watch answered with the count but not watched (the session watches too many tenants). */
export const NOT_WATCHED = 'not watched';

export function writeWatch(reqId: number, tenant: string): Uint8Array {
  return frame(MessageType.Watch, (e) => {
    encoding.writeVarUint(e, reqId);
    encoding.writeVarString(e, tenant);
  });
}

export function writeCounts(counts: readonly TenantCount[]): Uint8Array {
  return frame(MessageType.Counts, (e) => {
    encoding.writeVarUint(e, counts.length);
    for (const c of counts) {
      encoding.writeVarString(e, c.tenant);
      encoding.writeVarUint(e, c.count);
    }
  });
}

export function writeUnwatch(tenants: readonly string[]): Uint8Array {
  return frame(MessageType.Unwatch, (e) => {
    encoding.writeVarUint(e, tenants.length);
    for (const t of tenants) encoding.writeVarString(e, t);
  });
}

export { MAX_WIRE_FIELD_CHARS };

function readBoundedString(d: decoding.Decoder, what: string, max = MAX_WIRE_FIELD_CHARS): string {
  const s = decoding.readVarString(d);
  if (s.length > max) throw new ProtocolError(`${what} longer than ${max} characters`);
  return s;
}

function readRole(d: decoding.Decoder): Role {
  const r = decoding.readVarString(d);
  if (r !== 'peer' && r !== 'coordinator') throw new ProtocolError(`unknown role ${JSON.stringify(r.slice(0, 40))}`);
  return r;
}

function isLagMap(v: unknown): v is Record<string, number> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && Object.values(v).every((x) => typeof x === 'number' && Number.isFinite(x) && x >= 0);
}

function optionalIds(v: unknown): boolean {
  return v === undefined || (Array.isArray(v) && v.every((x) => typeof x === 'string'));
}

function optionalShards(v: unknown): boolean {
  return v === undefined || (Array.isArray(v) && v.every((x) => Number.isInteger(x) && x >= 0 && x < MAX_SHARDS));
}

function parseStatus(json: string): Status {
  const v: unknown = JSON.parse(json);
  const o = v as Partial<Status>;
  if (
    typeof o !== 'object' || o === null || typeof o.id !== 'string' || typeof o.address !== 'string' ||
    typeof o.ready !== 'boolean' || typeof o.items !== 'number' || !Array.isArray(o.members) ||
    !o.members.every((m) => typeof m?.id === 'string' && typeof m?.address === 'string') ||
    (o.lag !== undefined && !isLagMap(o.lag)) ||
    (o.shards !== undefined && !(Number.isInteger(o.shards) && o.shards >= 1 && o.shards <= MAX_SHARDS)) ||
    (o.factor !== undefined && !(Number.isInteger(o.factor) && o.factor >= 1)) ||
    !optionalIds(o.placed) || !optionalIds(o.removed) || !optionalShards(o.serving) || !optionalShards(o.held) ||
    (o.tallyBatch !== undefined && typeof o.tallyBatch !== 'boolean')
  ) {
    throw new ProtocolError('malformed status');
  }
  return o as Status;
}

function readShardCount(d: decoding.Decoder): number {
  const n = decoding.readVarUint(d);
  if (n < 1 || n > MAX_SHARDS) throw new ProtocolError(`hello names ${n} shards (1 to ${MAX_SHARDS})`);
  return n;
}

/** A shard id; whether this mesh has that shard is the receiver's check (it knows SHARDS). */
function readShardId(d: decoding.Decoder): number {
  const shard = decoding.readVarUint(d);
  if (shard >= MAX_SHARDS) throw new ProtocolError(`shard ${shard} does not exist (at most ${MAX_SHARDS} shards)`);
  return shard;
}

/** A list length no bigger than the bytes left could hold (entries of at least one byte each). */
function readListLength(d: decoding.Decoder, what: string): number {
  const n = decoding.readVarUint(d);
  if (n > d.arr.length - d.pos) throw new ProtocolError(`${what} claims ${n} entries`);
  return n;
}

/**
 * Decodes one frame. Throws ProtocolError (or a lib0 decoding error) on anything malformed;
 * callers catch, log the peer once and close the connection with CloseCode.ProtocolError.
 */
export function readMessage(data: Uint8Array): Message {
  const d = decoding.createDecoder(data);
  const type = decoding.readVarUint(d);
  let msg: Message;
  switch (type) {
    case MessageType.Sync:
      return { type, decoder: d }; // the sync payload is read (and checked) by y-protocols
    case MessageType.Awareness:
      msg = { type, update: decoding.readVarUint8Array(d) };
      break;
    case MessageType.Hello: {
      const hello: Hello = { role: readRole(d), nodeId: readBoundedString(d, 'node id'), address: readBoundedString(d, 'address') };
      if (decoding.hasContent(d)) hello.shards = readShardCount(d);
      msg = { type, hello };
      break;
    }
    case MessageType.ShardSync:
      return { type, shard: readShardId(d), decoder: d }; // the sync payload is read (and checked) by y-protocols
    case MessageType.MembersSync:
      return { type, decoder: d }; // the sync payload is read (and checked) by y-protocols
    case MessageType.NotHeld:
      msg = { type, shard: readShardId(d) };
      break;
    case MessageType.Part: {
      const index = decoding.readVarUint(d);
      const count = decoding.readVarUint(d);
      if (count < 2 || index >= count) throw new ProtocolError(`part ${index} of ${count}`);
      msg = { type, index, count, bytes: decoding.readVarUint8Array(d) };
      break;
    }
    case MessageType.TallyBatch: {
      const reqId = decoding.readVarUint(d);
      const n = readListLength(d, 'tally batch');
      if (n === 0 || n > MAX_TALLY_BATCH) throw new ProtocolError(`tally batch of ${n} tenants (1 to ${MAX_TALLY_BATCH})`);
      const tenants: string[] = new Array(n);
      for (let i = 0; i < n; i++) tenants[i] = readBoundedString(d, 'tenant');
      msg = { type, reqId, tenants };
      break;
    }
    case MessageType.TalliedBatch: {
      const reqId = decoding.readVarUint(d);
      const n = readListLength(d, 'tallied batch');
      if (n > MAX_TALLY_BATCH) throw new ProtocolError(`tallied batch of ${n} answers (at most ${MAX_TALLY_BATCH})`);
      const tallies: BatchTally[] = new Array(n);
      for (let i = 0; i < n; i++) {
        const kind = decoding.readUint8(d);
        if (kind === 0) tallies[i] = { count: decoding.readVarUint(d), digest: decoding.readVarUint(d) };
        else if (kind === 1) tallies[i] = { refused: readBoundedString(d, 'refusal', 4096) };
        else throw new ProtocolError(`unknown tally answer kind ${kind}`);
      }
      msg = { type, reqId, tallies };
      break;
    }
    case MessageType.Remove:
      msg = { type, reqId: decoding.readVarUint(d), nodeId: readBoundedString(d, 'node id') };
      break;
    case MessageType.ShardReplicate:
      msg = { type, ackId: decoding.readVarUint(d), shard: readShardId(d), update: decoding.readVarUint8Array(d) };
      break;
    case MessageType.Add: {
      const reqId = decoding.readVarUint(d);
      const n = decoding.readVarUint(d);
      // each item takes at least 2 bytes, so a larger n is a lie that would make us allocate for nothing
      if (n > (d.arr.length - d.pos) / 2) throw new ProtocolError(`add claims ${n} items`);
      const items: Item[] = new Array(n);
      for (let i = 0; i < n; i++) items[i] = { tenant: decoding.readVarString(d), id: decoding.readVarString(d) };
      // the acknowledgment fields are there only when more than one is asked for
      let acks = 1;
      let ackWaitMs = 0;
      if (decoding.hasContent(d)) {
        acks = decoding.readVarUint(d);
        ackWaitMs = decoding.readVarUint(d);
        if (acks < 2 || acks > MAX_ACKS) throw new ProtocolError(`add asks for ${acks} acknowledgments (2 to ${MAX_ACKS}, or none)`);
        if (ackWaitMs > MAX_ACK_WAIT_MS) throw new ProtocolError(`add waits ${ackWaitMs} ms for acknowledgments (at most ${MAX_ACK_WAIT_MS})`);
      }
      msg = { type, reqId, items, acks, ackWaitMs };
      break;
    }
    case MessageType.Count:
      msg = { type, reqId: decoding.readVarUint(d), tenant: readBoundedString(d, 'tenant') };
      break;
    case MessageType.Reply: {
      const reqId = decoding.readVarUint(d);
      const status = decoding.readVarUint(d);
      if (status > 3) throw new ProtocolError(`unknown reply status ${status}`);
      msg = { type, reqId, status: status as ReplyStatusNumber, value: decoding.readVarUint(d), message: readBoundedString(d, 'reply message', 4096) };
      break;
    }
    case MessageType.Status:
      msg = { type, status: parseStatus(decoding.readVarString(d)) };
      break;
    case MessageType.Tally: {
      const reqId = decoding.readVarUint(d);
      const tenant = readBoundedString(d, 'tenant');
      const n = decoding.readVarUint(d);
      if (n > MAX_TALLY_PEERS) throw new ProtocolError(`tally names ${n} peers (at most ${MAX_TALLY_PEERS})`);
      const pullFrom: string[] = [];
      for (let i = 0; i < n; i++) pullFrom.push(readBoundedString(d, 'node id'));
      msg = { type, reqId, tenant, pullFrom };
      break;
    }
    case MessageType.Tallied:
      msg = { type, reqId: decoding.readVarUint(d), count: decoding.readVarUint(d), digest: decoding.readVarUint(d) };
      break;
    case MessageType.Replicate:
      msg = { type, ackId: decoding.readVarUint(d), update: decoding.readVarUint8Array(d) };
      break;
    case MessageType.Durable:
      msg = { type, ackId: decoding.readVarUint(d) };
      break;
    case MessageType.Watch:
      msg = { type, reqId: decoding.readVarUint(d), tenant: readBoundedString(d, 'tenant') };
      break;
    case MessageType.Counts: {
      const n = readListLength(d, 'counts');
      const counts: TenantCount[] = new Array(n);
      for (let i = 0; i < n; i++) counts[i] = { tenant: readBoundedString(d, 'tenant'), count: decoding.readVarUint(d) };
      msg = { type, counts };
      break;
    }
    case MessageType.Unwatch: {
      const n = readListLength(d, 'unwatch');
      const tenants: string[] = new Array(n);
      for (let i = 0; i < n; i++) tenants[i] = readBoundedString(d, 'tenant');
      msg = { type, tenants };
      break;
    }
    default:
      throw new ProtocolError(`unknown message type ${type}`);
  }
  if (decoding.hasContent(d)) throw new ProtocolError(`trailing bytes after message type ${type}`);
  return msg;
}
