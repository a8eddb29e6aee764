/**
 * Compact exact hash set of (tenant, id) pairs.
 *
 * Layout
 * - Tenants are mapped to small integers through a `Map<string, TenantEntry>`
 *   (there are few tenants); the entry also carries the tenant's distinct count,
 *   so `count()` is O(1).
 * - Every key lives in one growable byte arena (`Uint8Array`, grown by 1.5x):
 *
 *       varint(tenantNo * 2 + wide)  varint(idLength)  id code units
 *
 *   `idLength` counts UTF-16 code units. When every code unit of the id is
 *   < 256 (`wide = 0`) each code unit takes one byte, otherwise (`wide = 1`)
 *   each takes two bytes, little endian. With ~1000 tenants the header is
 *   3 bytes, so a 16-char ASCII id costs 19 bytes.
 * - An open-addressing table (linear probing, power-of-two size, load factor
 *   <= 0.7, doubled on growth) in one `Uint32Array` holding, per slot, the
 *   key's arena offset + 1 (0 = empty) and the key's hash side by side (one
 *   cache line per probe instead of two parallel arrays): probing compares the
 *   stored hash before touching the arena, and rehashing never re-reads keys.
 *
 * No string object is kept per key. Nothing is ever removed (the counters
 * are grow-only sets).
 *
 * Limits: the arena must stay below 4 GiB (offsets are 32-bit), and there can
 * be at most 2^31 tenants; exceeding either throws a RangeError.
 */
import { fmix32 } from '../shared/fmix32.ts';

/** Maximum load factor of the open-addressing table. */
const MAX_LOAD = 0.7;
/** Smallest table (slots). Must be a power of two. */
const MIN_SLOTS = 16;
/** Largest table (slots): 2^29 slots = a 4 GiB Uint32Array, beyond any sane use. */
const MAX_SLOTS = 2 ** 29;
/** Largest arena: offsets are stored + 1 in a Uint32Array. */
const MAX_ARENA = 0xffff_fffe;
/** Smallest arena (bytes). */
const MIN_ARENA = 256;
/** Arena bytes reserved up front per expected item when `initialCapacity` is given. */
const BYTES_PER_ITEM_GUESS = 20;
/** Most bytes a header can take: two varints of a uint32 (5 bytes each). */
const MAX_HEADER = 10;
const MAX_TENANTS = 2 ** 31;

interface TenantEntry {
  readonly name: string;
  readonly no: number;
  count: number;
  /** XOR of the ids' digest hashes. */
  dx: number;
  /** Sum mod 2^32 of a second mix of the same hashes. */
  ds: number;
}

/**
 * Stands in for the tenant number when hashing an id for the digest: tenant numbers depend on the
 * order tenants arrived in, which differs between counters, and digests must not.
 */
const DIGEST_SEED = 0x3c6ef372;

/** murmur3's fmix32 over `h ^ 0x5bd1e995`: a second, non-linear view of a hash for the digest's sum. */
function remix(h: number): number {
  return fmix32(h ^ 0x5bd1e995);
}

/**
 * Second result of `hashId`: 1 when the id has a code unit >= 256.
 * Module-level scratch instead of an allocated tuple (single-threaded, no re-entry).
 */
let scratchWide = 0;

/**
 * 32-bit hash over the tenant number and the id's UTF-16 code units:
 * FNV-1a per code unit, seeded with the tenant number, finished with the
 * murmur3 fmix32 avalanche so that ids differing only in their last
 * character (sequential ids) spread over the low bits used for indexing.
 * Also sets `scratchWide`.
 */
function hashId(tenantNo: number, text: string, start: number, n: number): number {
  let h = Math.imul(tenantNo ^ 0x2545f491, 0x9e3779b1) ^ 0x811c9dc5;
  let or = 0;
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(start + i);
    or |= c;
    h = Math.imul(h ^ c, 0x01000193);
  }
  scratchWide = or > 0xff ? 1 : 0;
  return fmix32(h ^ n);
}

/** Does `name` equal text[start, start + n)? */
function sameSpan(name: string, text: string, start: number, n: number): boolean {
  if (name.length !== n) return false;
  for (let i = 0; i < n; i++) if (name.charCodeAt(i) !== text.charCodeAt(start + i)) return false;
  return true;
}

function slotsFor(items: number): number {
  let slots = MIN_SLOTS;
  while (slots < MAX_SLOTS && slots * MAX_LOAD < items) slots *= 2;
  return slots;
}

/** Exact set of (tenant, id) pairs with O(1) per-tenant counts, stored in typed arrays. */
export class IdIndex {
  readonly #tenants = new Map<string, TenantEntry>();
  /** The same entries by tenant number, and an open-addressing table of numbers + 1 by name hash: a tenant found from a span of a record text without slicing it out. */
  readonly #byNo: TenantEntry[] = [];
  #tenantTable = new Int32Array(64);
  #arena: Uint8Array;
  /** Bytes of the arena in use. */
  #used = 0;
  /**
   * The table, two uint32 per slot: [2i] = arena offset + 1 of the key (0 = empty),
   * [2i + 1] = its hash. Interleaved so that a probe touches one cache line.
   */
  #table: Uint32Array;
  #mask: number;
  #size = 0;
  /** Grow the table when `#size` reaches this. */
  #growAt: number;

  /**
   * Test seam: hashes are ANDed with this. A test subclass narrows it (e.g. to 3)
   * to force hash collisions so that the byte-level equality is exercised.
   * Leave it alone in production.
   */
  protected readonly hashMask: number = 0xffff_ffff;

  /**
   * @param initialCapacity expected number of distinct pairs; the table and
   *   arena are sized for it up front (both still grow on demand).
   */
  constructor(initialCapacity = 0) {
    if (!Number.isSafeInteger(initialCapacity) || initialCapacity < 0) {
      throw new RangeError(`IdIndex: initialCapacity must be a non-negative integer, got ${initialCapacity}`);
    }
    const slots = slotsFor(initialCapacity);
    this.#table = new Uint32Array(slots * 2);
    this.#mask = slots - 1;
    this.#growAt = Math.floor(slots * MAX_LOAD);
    this.#arena = new Uint8Array(
      Math.min(MAX_ARENA, Math.max(MIN_ARENA, initialCapacity * BYTES_PER_ITEM_GUESS)),
    );
  }

  /** Adds the pair; returns true if it was new. */
  add(tenant: string, id: string): boolean {
    return this.#addId(this.#tenants.get(tenant) ?? this.#newTenant(tenant, 0, tenant.length), id, 0, id.length);
  }

  /**
   * Adds the pair whose tenant is text[tenantStart, + tenantLength) and whose id is
   * text[idStart, + idLength), without slicing either out of the text (a restart indexes tens of
   * millions of records; two short-lived strings each were most of its garbage). Returns the
   * tenant's name when the pair was new, else null.
   */
  addSpan(text: string, tenantStart: number, tenantLength: number, idStart: number, idLength: number): string | null {
    const entry = this.#tenantOfSpan(text, tenantStart, tenantLength);
    return this.#addId(entry, text, idStart, idLength) ? entry.name : null;
  }

  has(tenant: string, id: string): boolean {
    const entry = this.#tenants.get(tenant);
    if (entry === undefined) return false;
    const h = (hashId(entry.no, id, 0, id.length) & this.hashMask) >>> 0;
    return this.#table[2 * this.#slot(h, entry.no * 2 + scratchWide, id, 0, id.length)] !== 0;
  }

  /** Adds text[start, + n) as an id of `entry`'s tenant; true if it was new. */
  #addId(entry: TenantEntry, text: string, start: number, n: number): boolean {
    const h = (hashId(entry.no, text, start, n) & this.hashMask) >>> 0;
    const tag = entry.no * 2 + scratchWide;
    const table = this.#table;
    const i = this.#slot(h, tag, text, start, n);
    if (table[2 * i] !== 0) return false;
    table[2 * i] = this.#append(tag, text, start, n) + 1;
    table[2 * i + 1] = h;
    entry.count++;
    const g = hashId(DIGEST_SEED, text, start, n);
    entry.dx = (entry.dx ^ g) >>> 0;
    entry.ds = (entry.ds + remix(g)) >>> 0;
    if (++this.#size >= this.#growAt) this.#grow();
    return true;
  }

  /** The tenant named text[start, + n), added if new. */
  #tenantOfSpan(text: string, start: number, n: number): TenantEntry {
    const table = this.#tenantTable;
    const mask = table.length - 1;
    for (let i = hashId(0, text, start, n) & mask; ; i = (i + 1) & mask) {
      const ref = table[i]!;
      if (ref === 0) return this.#newTenant(text, start, n);
      const entry = this.#byNo[ref - 1]!;
      if (sameSpan(entry.name, text, start, n)) return entry;
    }
  }

  #newTenant(text: string, start: number, n: number): TenantEntry {
    if (this.#byNo.length >= MAX_TENANTS) throw new RangeError('IdIndex: too many tenants');
    // callers pass slices of large strings; keeping one would keep the whole parent alive
    const entry: TenantEntry = { name: flatCopy(text.slice(start, start + n)), no: this.#byNo.length, count: 0, dx: 0, ds: 0 };
    this.#tenants.set(entry.name, entry);
    this.#byNo.push(entry);
    if (this.#byNo.length * 2 > this.#tenantTable.length) {
      // at most half full: twice the size, every tenant placed again
      this.#tenantTable = new Int32Array(this.#tenantTable.length * 2);
      for (const e of this.#byNo) this.#placeTenant(e);
    } else {
      this.#placeTenant(entry);
    }
    return entry;
  }

  #placeTenant(entry: TenantEntry): void {
    const table = this.#tenantTable;
    const mask = table.length - 1;
    let i = hashId(0, entry.name, 0, entry.name.length) & mask;
    while (table[i] !== 0) i = (i + 1) & mask;
    table[i] = entry.no + 1;
  }

  /** The slot holding the key (hash `h`, header `tag`, id text[start, + n)), or the empty slot where it would go. */
  #slot(h: number, tag: number, text: string, start: number, n: number): number {
    const table = this.#table;
    const mask = this.#mask;
    let i = h & mask;
    for (;;) {
      const ref = table[2 * i]!;
      if (ref === 0 || (table[2 * i + 1] === h && this.#equals(ref - 1, tag, text, start, n))) return i;
      i = (i + 1) & mask;
    }
  }

  /**
   * Grows the table and the arena once so that `items` pairs in all fit without further growth
   * (the arena by a guess of bytes per key); never shrinks.
   */
  reserve(items: number): void {
    const slots = slotsFor(items);
    if (slots > this.#table.length / 2) this.#rehash(slots);
    const bytes = Math.min(MAX_ARENA, this.#used + (items - this.#size) * BYTES_PER_ITEM_GUESS);
    if (bytes > this.#arena.length) this.#growArena(bytes);
  }

  /** Distinct ids added under `tenant`; 0 for unknown tenants. */
  count(tenant: string): number {
    return this.#tenants.get(tenant)?.count ?? 0;
  }

  /**
   * A digest of the tenant's set of ids, below 2^53 and independent of the order ids arrived in:
   * two counters whose counts and digests of a tenant are equal hold the same ids of it (but for
   * a chance of about 2^-53). Quorum reads compare them to know that replicas agree.
   */
  digest(tenant: string): number {
    const e = this.#tenants.get(tenant);
    return e === undefined ? 0 : e.dx * 2 ** 21 + (e.ds >>> 11);
  }

  /** Distinct pairs in total. */
  get size(): number {
    return this.#size;
  }

  /** Distinct tenants. */
  get tenants(): number {
    return this.#tenants.size;
  }

  /** Bytes held by the typed arrays (for diagnostics). */
  get byteLength(): number {
    return this.#arena.byteLength + this.#table.byteLength;
  }

  /** Does the key stored at arena offset `off` have header tag `tag` and id text[start, + n)? */
  #equals(off: number, tag: number, text: string, start: number, n: number): boolean {
    const a = this.#arena;
    let p = off;
    // Header varints, compared byte by byte against the expected encoding.
    let v = tag;
    while (v >= 0x80) {
      if (a[p++] !== ((v & 0x7f) | 0x80)) return false;
      v >>>= 7;
    }
    if (a[p++] !== v) return false;
    v = n;
    while (v >= 0x80) {
      if (a[p++] !== ((v & 0x7f) | 0x80)) return false;
      v >>>= 7;
    }
    if (a[p++] !== v) return false;
    if ((tag & 1) === 0) {
      for (let i = 0; i < n; i++) {
        if (a[p + i] !== text.charCodeAt(start + i)) return false;
      }
    } else {
      for (let i = 0; i < n; i++) {
        const c = text.charCodeAt(start + i);
        if (a[p] !== (c & 0xff) || a[p + 1] !== c >>> 8) return false;
        p += 2;
      }
    }
    return true;
  }

  /** Writes a key (header `tag`, id text[start, + n)) at the end of the arena; returns its offset. */
  #append(tag: number, text: string, start: number, n: number): number {
    const wide = tag & 1;
    const need = this.#used + MAX_HEADER + (n << wide);
    if (need > this.#arena.length) this.#growArena(need);
    const a = this.#arena;
    const off = this.#used;
    let p = off;
    let v = tag;
    while (v >= 0x80) {
      a[p++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    a[p++] = v;
    v = n;
    while (v >= 0x80) {
      a[p++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    a[p++] = v;
    if (wide === 0) {
      for (let i = 0; i < n; i++) a[p++] = text.charCodeAt(start + i);
    } else {
      for (let i = 0; i < n; i++) {
        const c = text.charCodeAt(start + i);
        a[p++] = c & 0xff;
        a[p++] = c >>> 8;
      }
    }
    this.#used = p;
    return off;
  }

  #growArena(need: number): void {
    if (need > MAX_ARENA) throw new RangeError('IdIndex: key arena would exceed 4 GiB');
    const old = this.#arena;
    const next = new Uint8Array(Math.min(MAX_ARENA, Math.max(need, Math.floor(old.length * 1.5))));
    next.set(old.subarray(0, this.#used));
    this.#arena = next;
  }

  /** Doubles the table, re-placing every key by its stored hash. */
  #grow(): void {
    const old = this.#table;
    const oldSlots = old.length / 2;
    if (oldSlots >= MAX_SLOTS) {
      if (this.#size >= MAX_SLOTS - 1) throw new RangeError('IdIndex: table is full');
      // Keep going above MAX_LOAD rather than failing; probing still terminates.
      this.#growAt = MAX_SLOTS - 1;
      return;
    }
    this.#rehash(oldSlots * 2);
  }

  /** Moves every key to a table of `n` slots (a power of two), placed by its stored hash. */
  #rehash(n: number): void {
    const old = this.#table;
    const table = new Uint32Array(n * 2);
    const mask = n - 1;
    for (let j = 0; j < old.length; j += 2) {
      const ref = old[j]!;
      if (ref === 0) continue;
      const h = old[j + 1]!;
      let i = h & mask;
      while (table[2 * i] !== 0) i = (i + 1) & mask;
      table[2 * i] = ref;
      table[2 * i + 1] = h;
    }
    this.#table = table;
    this.#mask = mask;
    this.#growAt = Math.floor(n * MAX_LOAD);
  }
}

/** A copy that shares no storage with `s` (V8 keeps substrings as views into their parent). */
function flatCopy(s: string): string {
  return Buffer.from(s, 'utf16le').toString('utf16le');
}
