import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { IdIndex } from '../src/counter/id-index.ts';
import { mulberry32 as prng } from './support/prng.ts';


const envSeed = process.env.SEED;
const SEED = envSeed !== undefined && envSeed !== '' ? Number(envSeed) >>> 0 : (Math.random() * 2 ** 32) >>> 0;
console.log(`id-index property test SEED=${SEED} (rerun with SEED=${SEED})`);

class Model {
  readonly tenants = new Map<string, Set<string>>();
  size = 0;
  add(tenant: string, id: string): boolean {
    let s = this.tenants.get(tenant);
    if (s === undefined) {
      s = new Set();
      this.tenants.set(tenant, s);
    }
    if (s.has(id)) return false;
    s.add(id);
    this.size++;
    return true;
  }
  has(tenant: string, id: string): boolean {
    return this.tenants.get(tenant)?.has(id) ?? false;
  }
  count(tenant: string): number {
    return this.tenants.get(tenant)?.size ?? 0;
  }
}

test('basic add / has / count / size / tenants', () => {
  const ix = new IdIndex();
  assert.is(ix.size, 0);
  assert.is(ix.tenants, 0);
  assert.is(ix.count('t'), 0);
  assert.is(ix.has('t', 'a'), false);
  assert.is(ix.tenants, 0, 'has() on an unknown tenant must not register it');
  assert.is(ix.add('t', 'a'), true);
  assert.is(ix.add('t', 'a'), false);
  assert.is(ix.add('t', 'b'), true);
  assert.is(ix.add('u', 'a'), true, 'same id under another tenant is a different pair');
  assert.is(ix.count('t'), 2);
  assert.is(ix.count('u'), 1);
  assert.is(ix.count('v'), 0);
  assert.is(ix.size, 3);
  assert.is(ix.tenants, 2);
  assert.ok(ix.has('u', 'a'));
  assert.not.ok(ix.has('u', 'b'));
  assert.ok(ix.byteLength > 0);
});

test('constructor rejects bad capacities', () => {
  assert.throws(() => new IdIndex(-1), RangeError);
  assert.throws(() => new IdIndex(1.5), RangeError);
  assert.throws(() => new IdIndex(Number.NaN), RangeError);
  const ix = new IdIndex(1000);
  assert.ok(ix.byteLength >= 1000 * 8, 'table is presized');
  assert.is(ix.size, 0);
});

test('encodings that share bytes stay distinct', () => {
  const ix = new IdIndex();
  // '\u0141' stored wide is bytes 41 01, like narrow 'A\x01'.
  const ids = [
    '\u0141', 'A\x01', 'A', '\x01A', '\u4100', '\x00', '\x00\x00', '\u0000', '\u00ff', '\u0100', '\uffff',
    '\u00e9', 'e\u0301', '\ud83d\ude00', '\ude00\ud83d', 'ab', 'ba', 'a'.repeat(127), 'a'.repeat(128),
    'a'.repeat(256), '\u4e2d'.repeat(128), '\u4e2d'.repeat(129), '\ud83d\ude00'.repeat(256),
  ];
  const unique = [...new Set(ids)];
  for (const id of unique) assert.ok(ix.add('t', id), JSON.stringify(id));
  for (const id of unique) assert.not.ok(ix.add('t', id), JSON.stringify(id));
  for (const id of unique) assert.ok(ix.has('t', id), JSON.stringify(id));
  assert.not.ok(ix.has('t', 'A\x02'));
  assert.not.ok(ix.has('t', '\u0142'));
  assert.not.ok(ix.has('t', 'a'.repeat(255)));
  assert.is(ix.count('t'), unique.length);
});

test('many tenants (multi-byte tenant numbers) and sequential ids', () => {
  const ix = new IdIndex();
  const model = new Model();
  for (let t = 0; t < 20_000; t++) {
    for (let k = 0; k < 3; k++) {
      const tenant = `tenant-${t}`;
      const id = `item-${String(t * 3 + (k % 2)).padStart(6, '0')}`;
      assert.is(ix.add(tenant, id), model.add(tenant, id));
    }
  }
  assert.is(ix.tenants, 20_000);
  assert.is(ix.size, model.size);
  for (const [tenant, s] of model.tenants) {
    assert.is(ix.count(tenant), s.size);
    for (const id of s) assert.ok(ix.has(tenant, id));
  }
  assert.not.ok(ix.has('tenant-19999', 'item-000000'));
});

// Random generators ---------------------------------------------------------

const rnd = prng(SEED);
const int = (n: number): number => Math.floor(rnd() * n);
const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)] as T;

function codePoint(kind: number): number {
  switch (kind) {
    case 0: return 0x21 + int(0x5e); // printable ASCII
    case 1: return 0x80 + int(0x80); // Latin-1 supplement (narrow, >= 128)
    case 2: return 0x100 + int(0x100); // Latin Extended (wide, low byte can match narrow)
    case 3: return 0x4e00 + int(0x5200); // CJK
    case 4: return 0x1f300 + int(0x300); // emoji (astral)
    case 5: return 0x20000 + int(0xa6e0); // CJK ext B (astral)
    default: return int(4); // tiny control codes, incl. NUL
  }
}

function randomString(maxLen: number): string {
  const r = rnd();
  let len: number;
  if (r < 0.03) len = maxLen;
  else if (r < 0.06) len = 1;
  else len = 1 + int(Math.min(24, maxLen));
  // Most strings draw from one alphabet, some mix narrow and wide characters.
  const mixed = rnd() < 0.3;
  const base = rnd() < 0.5 ? 0 : int(7);
  let s = '';
  let chars = 0;
  while (chars < len) {
    const cp = codePoint(mixed ? int(7) : base);
    s += String.fromCodePoint(cp);
    chars++;
  }
  return s;
}

const tenantNames: string[] = [
  't', 'acme', 'Ünïcode', '租户', '\ud83c\udfe2', 'x'.repeat(256),
  ...Array.from({ length: 40 }, (_, i) => `tenant-${i}`),
];

function variant(id: string): string {
  // Change only the last code unit (may leave a lone surrogate: fine, stored as code units).
  const last = id.charCodeAt(id.length - 1);
  const kinds = [last + 1, last ^ 1, last ^ 0x100, 0x41, 0x141, 0xe9];
  let c = pick(kinds) & 0xffff;
  if (c === last) c = (last + 2) & 0xffff;
  return id.slice(0, -1) + String.fromCharCode(c);
}

/** Test subclass: hashes narrowed to 2 bits, so most probes hit equal hashes and compare bytes. */
class CollidingIndex extends IdIndex {
  protected override readonly hashMask = 3;
}

function property(ix: IdIndex, OPS: number, minDistinct: number, minGrowths: number): void {
  const model = new Model();
  const seen: Array<[string, string]> = [];
  let rehashes = 0;
  let lastBytes = ix.byteLength;

  for (let op = 0; op < OPS; op++) {
    const r = rnd();
    let tenant: string;
    let id: string;
    if (r < 0.15 && seen.length > 0) {
      // exact duplicate
      [tenant, id] = pick(seen);
    } else if (r < 0.25 && seen.length > 0) {
      // same id under another tenant
      const p = pick(seen);
      tenant = pick(tenantNames);
      id = p[1];
    } else if (r < 0.35 && seen.length > 0) {
      // differs only in the last char
      const p = pick(seen);
      tenant = p[0];
      id = variant(p[1]);
    } else if (r < 0.4) {
      // sequential-looking ids
      tenant = pick(tenantNames);
      id = `item-${String(int(1_000_000)).padStart(6, '0')}`;
    } else {
      tenant = pick(tenantNames);
      id = randomString(256);
    }

    if (rnd() < 0.75) {
      const expected = model.add(tenant, id);
      const got = ix.add(tenant, id);
      if (got !== expected) {
        assert.unreachable(`op ${op}: add(${JSON.stringify(tenant)}, ${JSON.stringify(id)}) returned ${got}, model ${expected}`);
      }
      if (expected) seen.push([tenant, id]);
    } else {
      // lookups, sometimes for tenants the index has never seen
      if (rnd() < 0.05) tenant = `ghost-${int(10)}`;
      const expected = model.has(tenant, id);
      if (ix.has(tenant, id) !== expected) {
        assert.unreachable(`op ${op}: has(${JSON.stringify(tenant)}, ${JSON.stringify(id)}) should be ${expected}`);
      }
    }

    if (ix.count(tenant) !== model.count(tenant)) {
      assert.unreachable(`op ${op}: count(${JSON.stringify(tenant)}) = ${ix.count(tenant)}, model ${model.count(tenant)}`);
    }
    if (ix.size !== model.size) assert.unreachable(`op ${op}: size ${ix.size}, model ${model.size}`);
    if (ix.tenants !== model.tenants.size) assert.unreachable(`op ${op}: tenants ${ix.tenants}, model ${model.tenants.size}`);

    if (ix.byteLength !== lastBytes) {
      rehashes++;
      lastBytes = ix.byteLength;
    }
    if (op % 10_000 === 0) {
      for (const t of tenantNames) assert.is(ix.count(t), model.count(t), `count(${t}) at op ${op}`);
      for (let k = 0; k < 200 && seen.length > 0; k++) {
        const [t, i] = pick(seen);
        assert.ok(ix.has(t, i), `has(${JSON.stringify(t)}, ${JSON.stringify(i)}) at op ${op}`);
      }
    }
  }

  assert.ok(model.size > minDistinct, `enough distinct pairs (${model.size})`);
  assert.ok(rehashes >= minGrowths, `grew several times (${rehashes} size changes)`);
  // Final full check: every pair present, and near-misses absent.
  for (const [tenant, ids] of model.tenants) {
    assert.is(ix.count(tenant), ids.size, `final count(${tenant})`);
    for (const id of ids) {
      if (!ix.has(tenant, id)) assert.unreachable(`final has(${JSON.stringify(tenant)}, ${JSON.stringify(id)})`);
      const v = variant(id);
      if (ix.has(tenant, v) !== ids.has(v)) assert.unreachable(`final has(variant ${JSON.stringify(v)})`);
    }
  }
  assert.is(ix.size, model.size);
}

test(`property: matches a Map<string, Set<string>> model over 200k operations (SEED=${SEED})`, () => {
  // default capacity: grows through many rehashes
  property(new IdIndex(), 200_000, 100_000, 10);
});

test(`property: same with forced hash collisions, 6k operations (SEED=${SEED})`, () => {
  property(new CollidingIndex(), 6_000, 3_000, 5);
});


test('reserve sizes the index once: the adds it was made for do not grow it, and what was held stays', () => {
  const ix = new IdIndex();
  for (let i = 0; i < 1000; i++) ix.add(`t${i % 7}`, `before-${i}`);
  ix.reserve(ix.size + 50_000);
  const reserved = ix.byteLength;
  for (let i = 0; i < 1000; i++) assert.ok(ix.has(`t${i % 7}`, `before-${i}`), `before-${i} still held after the rehash`);
  for (let i = 0; i < 50_000; i++) assert.ok(ix.add(`t${i % 7}`, `after-${i}`));
  assert.is(ix.byteLength, reserved, 'no growth during the adds reserved for');
  assert.is(ix.size, 51_000);
  assert.is(ix.count('t0'), Math.ceil(1000 / 7) + Math.ceil(50_000 / 7));
  ix.reserve(10);
  assert.is(ix.byteLength, reserved, 'never shrinks');
  assert.not.ok(ix.add('t3', 'after-3'), 'still a set');
});

test(`addSpan, reading tenant and id out of a record text, agrees with add (SEED=${SEED})`, () => {
  for (const [byString, bySpan] of [[new IdIndex(), new IdIndex()], [new CollidingIndex(), new CollidingIndex()]] as const) {
    const pairs: [string, string][] = [];
    for (let i = 0; i < 20_000; i++) {
      const tenant = pick(tenantNames);
      const id = pairs.length > 0 && rnd() < 0.3 ? variant(pick(pairs)[1]) : rnd() < 0.1 && pairs.length > 0 ? pick(pairs)[1] : randomString(24);
      pairs.push([tenant, id]);
    }
    // one text holding every pair as [tenant][id] with junk between, as spans into it
    let text = '';
    const spans: [number, number, number, number][] = [];
    for (const [t, id] of pairs) {
      text += randomString(3);
      const ts = text.length;
      text += t;
      const is = text.length;
      text += id;
      spans.push([ts, t.length, is, id.length]);
    }
    for (const [i, [t, id]] of pairs.entries()) {
      const [ts, tl, is, il] = spans[i]!;
      const added = byString.add(t, id);
      assert.is(bySpan.addSpan(text, ts, tl, is, il), added ? t : null, `pair ${i}`);
    }
    assert.is(bySpan.size, byString.size);
    assert.is(bySpan.tenants, byString.tenants);
    for (const t of tenantNames) {
      assert.is(bySpan.count(t), byString.count(t), t);
      assert.is(bySpan.digest(t), byString.digest(t), t);
    }
    for (const [t, id] of pairs.slice(0, 500)) assert.ok(bySpan.has(t, id));
  }
});

test.run();
