/**
 * Where tenants live: tenant -> shard -> replicas. Pure functions of their arguments, because every
 * counter and coordinator computes placement on its own and they only agree if nobody keeps state.
 * The hashes are part of the protocol (PROTOCOL.md §7): changing one moves every tenant's data.
 */

export const DEFAULT_SHARDS = 64;
export const DEFAULT_REPLICATION_FACTOR = 3;

// finishes the hashes: FNV-1a alone leaves the low bits (the ones `% shards` keeps) poorly mixed
import { fmix32 } from './fmix32.ts';

const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;
const REPLACEMENT_CHAR = 0xfffd;

// Shared, and stateless, so one instance serves every call.
const utf8 = new TextEncoder();


function fnvByte(h: number, byte: number): number {
  return Math.imul(h ^ byte, FNV_PRIME);
}

/**
 * fmix32(FNV-1a 32 of the tenant's UTF-8 bytes). The encoding is done here from the UTF-16 code units
 * rather than with TextEncoder because this runs on every request and should not allocate; lone
 * surrogates become U+FFFD, as TextEncoder (and a browser, or another language's encoder) does.
 */
export function tenantHash(tenant: string): number {
  let h = FNV_OFFSET;
  const n = tenant.length;
  for (let i = 0; i < n; i++) {
    let c = tenant.charCodeAt(i);
    if (c < 0x80) {
      h = fnvByte(h, c);
      continue;
    }
    if (c < 0x800) {
      h = fnvByte(h, 0xc0 | (c >> 6));
      h = fnvByte(h, 0x80 | (c & 0x3f));
      continue;
    }
    if (c >= 0xd800 && c <= 0xdfff) {
      const next = i + 1 < n ? tenant.charCodeAt(i + 1) : 0;
      if (c <= 0xdbff && next >= 0xdc00 && next <= 0xdfff) {
        const cp = 0x10000 + ((c - 0xd800) << 10) + (next - 0xdc00);
        h = fnvByte(h, 0xf0 | (cp >> 18));
        h = fnvByte(h, 0x80 | ((cp >> 12) & 0x3f));
        h = fnvByte(h, 0x80 | ((cp >> 6) & 0x3f));
        h = fnvByte(h, 0x80 | (cp & 0x3f));
        i++;
        continue;
      }
      c = REPLACEMENT_CHAR;
    }
    h = fnvByte(h, 0xe0 | (c >> 12));
    h = fnvByte(h, 0x80 | ((c >> 6) & 0x3f));
    h = fnvByte(h, 0x80 | (c & 0x3f));
  }
  return fmix32(h);
}

function checkShardCount(shards: number): void {
  if (!Number.isInteger(shards) || shards < 1 || shards > 0xffffffff) {
    throw new RangeError(`shards must be an integer from 1 to 2^32-1, got ${shards}; use the SHARDS every process is configured with`);
  }
}

/** The shard of a tenant: stable forever (documented in PROTOCOL.md §7). */
export function shardOf(tenant: string, shards: number): number {
  checkShardCount(shards);
  // The modulo bias is at most shards/2^32: invisible for any shard count we would configure.
  return tenantHash(tenant) % shards;
}

function rotl32(x: number, r: number): number {
  return (x << r) | (x >>> (32 - r));
}

function murmurBlock(h: number, k: number): number {
  k = Math.imul(k, 0xcc9e2d51);
  k = rotl32(k, 15);
  k = Math.imul(k, 0x1b873593);
  h ^= k;
  h = rotl32(h, 13);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

/**
 * MurmurHash3_x86_32, seed 0, of u32le(shard) followed by the id's UTF-8 bytes. A standard hash of a
 * byte string (rather than some ad-hoc mix of two numbers) so another language can check it with any
 * murmur3 library; the shard goes first so it is exactly the first 4-byte block.
 */
function scoreOfBytes(shard: number, id: Uint8Array): number {
  let h = murmurBlock(0, shard);
  const whole = id.length & ~3;
  for (let i = 0; i < whole; i += 4) {
    h = murmurBlock(h, id[i]! | (id[i + 1]! << 8) | (id[i + 2]! << 16) | (id[i + 3]! << 24));
  }
  const rest = id.length - whole;
  if (rest > 0) {
    let k = 0;
    if (rest === 3) k ^= id[whole + 2]! << 16;
    if (rest >= 2) k ^= id[whole + 1]! << 8;
    k ^= id[whole]!;
    k = Math.imul(k, 0xcc9e2d51);
    k = rotl32(k, 15);
    k = Math.imul(k, 0x1b873593);
    h ^= k;
  }
  return fmix32(h ^ (4 + id.length));
}

function checkShard(shard: number): void {
  if (!Number.isInteger(shard) || shard < 0 || shard > 0xffffffff) {
    throw new RangeError(`a shard is an integer from 0 to 2^32-1, got ${shard}`);
  }
}

/** Rendezvous score of (shard, counter id): higher ranks first. */
export function rendezvousScore(shard: number, counterId: string): number {
  checkShard(shard);
  return scoreOfBytes(shard, utf8.encode(counterId));
}

interface Member {
  id: string;
  bytes: Uint8Array;
}

/**
 * Ties (a 2^-32 event per pair) go to the smaller UTF-8 byte string, an order any language can
 * reproduce; code units decide only between ids that encode alike, which needs unpaired surrogates
 * and so never happens for ids that travel the wire as UTF-8.
 */
function compareMembers(a: Member, b: Member): number {
  const n = Math.min(a.bytes.length, b.bytes.length);
  for (let i = 0; i < n; i++) if (a.bytes[i] !== b.bytes[i]) return a.bytes[i]! - b.bytes[i]!;
  return a.bytes.length - b.bytes.length || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

function rank(shard: number, members: readonly Member[]): Member[] {
  const scored = members.map((m) => ({ m, score: scoreOfBytes(shard, m.bytes) }));
  scored.sort((a, b) => b.score - a.score || compareMembers(a.m, b.m));
  return scored.map((s) => s.m);
}

/** Member ids ordered by rendezvous score for this shard, highest first (ties broken by id). */
export function rendezvousOrder(shard: number, ids: readonly string[]): string[] {
  checkShard(shard);
  return rank(
    shard,
    ids.map((id) => ({ id, bytes: utf8.encode(id) })),
  ).map((m) => m.id);
}

/** For each shard 0..shards-1, the ids of its replicas in placement order (home replica first). */
export function placeShards(shards: number, members: readonly string[], factor: number): string[][] {
  checkShardCount(shards);
  if (!Number.isInteger(factor) || factor < 1) throw new RangeError(`factor must be a positive integer, got ${factor}`);
  // Deduplicated, and ranked by score alone, so the order in which a process learnt the members of
  // the mesh cannot change what it computes.
  const all: Member[] = [...new Set(members)].map((id) => ({ id, bytes: utf8.encode(id) }));
  if (all.length === 0) throw new RangeError('placeShards needs at least one member; a mesh without counters has nowhere to put shards');
  const f = Math.min(factor, all.length);
  const rankings = Array.from({ length: shards }, (_, s) => rank(s, all));
  const chosen = placeBounded(rankings, f, Math.ceil((shards * f) / all.length));
  return chosen.map((replicas, s) => rankings[s]!.filter((m) => replicas.includes(m)).map((m) => m.id));
}

/**
 * Rendezvous with bounded loads, filled in rounds: round r gives every shard (in index order) its
 * best-ranked member that it does not hold yet and that holds fewer than `bound` shards. Rounds rather
 * than one shard at a time because the bound then bites mostly in the last round: the first f-1
 * replicas of a shard stay close to its plain rendezvous top f-1, which is what keeps a surviving old
 * replica in most shards when one member joins or leaves. Measured over random meshes of 3..12
 * members, 64 shards, f = 3: a shard lost every old replica still in the mesh about once in 2
 * million (shard, join-or-leave) events, against once in 2 000 when filling one shard at a time.
 * Not a guarantee: a hard bound can always force it (see PROTOCOL.md §7). Returns each shard's
 * members in the order they were added.
 */
function placeBounded(rankings: Member[][], f: number, bound: number): Member[][] {
  const load = new Map<Member, number>(rankings[0]!.map((m) => [m, 0]));
  const chosen: Member[][] = rankings.map(() => []);
  for (let round = 0; round < f; round++) {
    for (let s = 0; s < rankings.length; s++) {
      const mine = chosen[s]!;
      const pick = rankings[s]!.find((m) => load.get(m)! < bound && !mine.includes(m));
      if (pick) {
        mine.push(pick);
        load.set(pick, load.get(pick)! + 1);
      } else {
        swapIn(s, rankings, chosen, load, bound);
      }
    }
  }
  return chosen;
}

/**
 * Shard s found every member with room already among its own. One swap always frees a place:
 * let Y be such a member; some shard t without Y holds a member W that s lacks, and t takes Y while
 * s takes W (W's load is unchanged, Y's grows within the bound). Such a t exists: s holds fewer
 * than f <= n members, so some W is outside s; W is full (else s would have picked it); and if
 * every shard holding W also held Y, Y (which also holds s) would be over the bound. t gives up its
 * most recently added member when it can, so the swap costs a low-ranked replica, not a home.
 */
function swapIn(s: number, rankings: Member[][], chosen: Member[][], load: Map<Member, number>, bound: number): void {
  const mine = chosen[s]!;
  const y = rankings[s]!.find((m) => load.get(m)! < bound)!;
  for (const lastOnly of [true, false]) {
    for (let t = 0; t < chosen.length; t++) {
      const theirs = chosen[t]!;
      if (t === s || theirs.includes(y)) continue;
      for (let i = theirs.length - 1; i >= (lastOnly ? theirs.length - 1 : 0); i--) {
        const w = theirs[i]!;
        if (mine.includes(w)) continue;
        theirs[i] = y;
        mine.push(w);
        load.set(y, load.get(y)! + 1);
        return;
      }
    }
  }
  throw new Error(`placement bug: no swap frees a place for shard ${s}; report it with the member list`);
}
