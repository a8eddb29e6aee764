/**
 * Seeded HTTP fuzzing of a running coordinator in front of a real two-counter mesh, over raw
 * sockets (so malformed requests that fetch refuses to send get sent): random and mutated bodies,
 * headers, paths, methods, content types and framing.
 *
 * Invariants: every answer is 2xx or 4xx (or the server closes the connection on framing garbage),
 * never a 5xx; the coordinator stays up; an independent oracle decides for each body-mutated POST
 * whether it is a valid request, and the answer must agree (valid → 200, invalid → 4xx); at the
 * end every tenant counts exactly the distinct items of the accepted requests.
 * The same run goes twice: over plain HTTP, then over TLS (a mesh with TLS_CERT/TLS_KEY/TLS_CA,
 * certificates made at test time), where the raw bytes travel inside a TLS connection.
 * SEED=<n> replays a run; the seed is printed.
 */
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Mesh } from './support/mesh.ts';
import { SETTINGS } from '../src/shared/config.ts';
import { makeTestCerts, type TestCerts } from './support/certs.ts';
import { mulberry32 } from './support/prng.ts';

const SEED = Number(process.env.SEED ?? Math.floor(Math.random() * 2 ** 31));
console.log(`http-fuzz: SEED=${SEED}`);
const REQUESTS = Number(process.env.FUZZ_REQUESTS ?? 3000);
const PARALLEL = 12;
const BODY_LIMIT = 1024 * 1024;
const MAX_BATCH = 10_000;
const REQUEST_TIMEOUT_MS = 15_000;
/** Requests that cannot add counted items are half-closed when the server still waits after this. */
const IDLE_END_MS = 1000;

const rng = mulberry32(SEED);
const int = (min: number, max: number) => min + Math.floor(rng() * (max - min + 1));
const pick = <T>(list: readonly T[]): T => list[Math.floor(rng() * list.length)]!;
const chance = (p: number) => rng() < p;

/** The tenants valid requests write to; mutations may create more, the oracle tracks them all. */
const TENANTS = ['hf-a', 'hf b/c', 'hf-ü😀', 'hf%2F', 'hf.x', 'hf?#'];

let mesh: Mesh;
const meshes: Mesh[] = [];
let certs: TestCerts | null = null;
/** The CA the raw sockets trust in the TLS run; null in the plain run. */
let tlsCa: Buffer | null = null;
/** tenant → ids the mesh must hold. */
const model = new Map<string, Set<string>>();

// ---------------------------------------------------------------- the oracle

type Item = { id: string; tenant: string };
const utf8 = new TextDecoder('utf-8', { fatal: true });

function validField(v: unknown): v is string {
  if (typeof v !== 'string' || !v.isWellFormed()) return false;
  const n = [...v].length;
  return n >= 1 && n <= 256;
}

/** The items a POST /items with this JSON body adds, or null when the coordinator must refuse it. */
function oracle(body: Buffer): Item[] | null {
  if (body.length === 0 || body.length > BODY_LIMIT) return null;
  let value: unknown;
  try {
    value = JSON.parse(utf8.decode(body));
  } catch {
    return null;
  }
  const list = Array.isArray(value) ? value : value !== null && typeof value === 'object' ? [value] : null;
  if (!list || list.length < 1 || list.length > MAX_BATCH) return null;
  const items: Item[] = [];
  for (const it of list as unknown[]) {
    if (it === null || typeof it !== 'object' || Array.isArray(it)) return null;
    const keys = Object.keys(it);
    if (keys.length !== 2 || !keys.includes('id') || !keys.includes('tenant')) return null;
    const { id, tenant } = it as Record<string, unknown>;
    if (!validField(id) || !validField(tenant) || tenant === '.' || tenant === '..') return null;
    items.push({ id, tenant });
  }
  return items;
}

function remember(items: Item[]): void {
  for (const { id, tenant } of items) {
    let s = model.get(tenant);
    if (!s) {
      s = new Set();
      model.set(tenant, s);
    }
    s.add(id);
  }
}

// ---------------------------------------------------------------- raw requests

interface Answer {
  /** Status of the first final response, null when the server closed without one. */
  status: number | null;
  head: string;
  /** Its body (empty for HEAD). */
  body: string;
}

function target(): { host: string; port: number } {
  return mesh.coordinators[0]!;
}

/**
 * Writes `parts` (with a tick between them) and resolves with the first final answer's status as
 * soon as its header block is in, or null when the server closes without one. With `idleEndMs`,
 * a request the server is still waiting on after that long is half-closed (garbage that promised
 * more bytes); requests that may add items are never cut short, as the add could still happen.
 */
function raw(parts: Buffer[], idleEndMs?: number): Promise<Answer> {
  const { host, port } = target();
  return new Promise((resolve, reject) => {
    const socket = tlsCa ? tls.connect({ host, port, ca: tlsCa }) : net.connect({ host, port });
    let text = '';
    let done = false;
    let idle: NodeJS.Timeout | undefined;
    const timer = setTimeout(() => {
      socket.destroy();
      finish(() => reject(new Error(`no answer and no close within ${REQUEST_TIMEOUT_MS} ms for ${JSON.stringify(Buffer.concat(parts).subarray(0, 200).toString('latin1'))}`)));
    }, REQUEST_TIMEOUT_MS);
    const finish = (then: () => void) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      clearTimeout(idle);
      socket.destroy();
      then();
    };
    const isHead = Buffer.concat(parts).subarray(0, 5).toString('latin1') === 'HEAD ';
    // the first final (non-1xx) response whose header block and (Content-Length) body are in
    const answer = (closed: boolean): Answer | null => {
      const m = /^HTTP\/1\.[01] ([2-9]\d\d)[^\r\n]*/m.exec(text);
      const end = m ? text.indexOf('\r\n\r\n', m.index) : -1;
      if (!m || end < 0) return null;
      const head = text.slice(m.index, end);
      const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0);
      const body = isHead ? '' : Buffer.from(text.slice(end + 4), 'latin1').subarray(0, length).toString('utf8');
      if (!closed && !isHead && Buffer.byteLength(body) < length) return null;
      return { status: Number(m[1]), head: head.slice(0, 300), body };
    };
    socket.on('data', (d) => {
      if (text.length < 65536) text += d.toString('latin1');
      const a = answer(false);
      if (a) finish(() => resolve(a));
    });
    socket.on('error', () => {});
    socket.on('close', () => finish(() => resolve(answer(true) ?? { status: null, head: text.slice(0, 300), body: '' })));
    socket.once(tlsCa ? 'secureConnect' : 'connect', async () => {
      for (const [i, p] of parts.entries()) {
        if (socket.destroyed) return;
        socket.write(p);
        if (i < parts.length - 1) await new Promise((r) => setImmediate(r));
      }
      if (idleEndMs !== undefined) idle = setTimeout(() => socket.end(), idleEndMs);
    });
  });
}

function request(method: string, path: string, headers: [string, string][], body: Buffer = Buffer.alloc(0)): Buffer {
  const head = [`${method} ${path} HTTP/1.1`, `Host: ${target().host}:${target().port}`, ...headers.map(([k, v]) => `${k}: ${v}`)].join('\r\n');
  return Buffer.concat([Buffer.from(`${head}\r\n\r\n`, 'latin1'), body]);
}

function jsonPost(body: Buffer, contentType = 'application/json'): Buffer {
  return request('POST', '/items', [['Content-Type', contentType], ['Content-Length', String(body.length)], ['Connection', 'close']], body);
}

// ---------------------------------------------------------------- generators

let nextId = 0;
function validItems(tenants: readonly string[] = TENANTS): Item[] {
  return Array.from({ length: chance(0.3) ? 1 : int(1, 20) }, () => ({ tenant: pick(tenants), id: chance(0.2) ? `i${int(0, 50)}` : `i${SEED}-${nextId++}` }));
}
function encodeItems(items: Item[]): Buffer {
  return Buffer.from(JSON.stringify(items.length === 1 && chance(0.5) ? items[0] : items));
}

const NOT_STRINGS: unknown[] = [0, 1, -1, 1.5e300, true, false, null, {}, { id: 'x' }, [], ['a']];

/** A body derived from a valid one by one of many mutations; the oracle says what it is now. */
function mutatedBody(): { body: Buffer; how: string } {
  const items = validItems();
  const body = encodeItems(items);
  switch (int(0, 15)) {
    case 0:
      return { how: 'truncated', body: body.subarray(0, int(0, body.length - 1)) };
    case 1: {
      const b = Buffer.from(body);
      for (let k = int(1, 3); k > 0; k--) b[int(0, b.length - 1)] = int(0, 255);
      return { how: 'byte flips', body: b };
    }
    case 2: {
      const b = Buffer.from(body);
      const i = int(0, b.length - 1);
      b[i] = b[i]! ^ (1 << int(0, 6));
      return { how: 'bit flip', body: b };
    }
    case 3: {
      const it = pick(items) as Record<string, unknown>;
      it[pick(['id', 'tenant'])] = pick(NOT_STRINGS);
      return { how: 'type swap', body: Buffer.from(JSON.stringify(items)) };
    }
    case 4: {
      const depth = pick([1, 2, 10, 1000, 100_000]);
      return { how: `nested ${depth}`, body: Buffer.from('['.repeat(depth) + body.toString() + ']'.repeat(depth)) };
    }
    case 5: {
      const it = pick(items);
      const len = pick([255, 256, 257, 1000, 100_000]);
      it[pick(['id', 'tenant'] as const)] = (chance(0.5) ? 'x' : '😀').repeat(len);
      return { how: `long string ${len}`, body: Buffer.from(JSON.stringify(items)) };
    }
    case 6: {
      const it = pick(items) as Record<string, unknown>;
      it[pick(['extra', '__proto__', 'constructor', 'ID', 'tenant '])] = pick(['x', 1, null]);
      return { how: 'extra property', body: Buffer.from(JSON.stringify(items).replace('"__proto__"', '"__proto__"')) };
    }
    case 7: {
      const it = pick(items);
      it[pick(['id', 'tenant'] as const)] = '';
      return { how: 'empty string', body: Buffer.from(JSON.stringify(items)) };
    }
    case 8: {
      const it = pick(items) as Partial<Item>;
      delete it[pick(['id', 'tenant'] as const)];
      return { how: 'missing property', body: Buffer.from(JSON.stringify(items)) };
    }
    case 9:
      return { how: 'lone surrogate', body: Buffer.from(JSON.stringify(items).replace(/"id":"/, `"id":"${pick(['\\ud800', '\\udfff', '\\udc00\\ud800'])}`)) };
    case 10:
      return { how: 'invalid UTF-8', body: Buffer.concat([body.subarray(0, body.length - 3), Buffer.from([pick([0xff, 0xc3, 0xed, 0x80])]), body.subarray(body.length - 3)]) };
    case 11:
      return { how: 'empty', body: Buffer.from(pick(['', '[]', '{}', 'null', ' ', '[null]', '[[]]', '[{}]', '""', '0'])) };
    case 12:
      return { how: 'whitespace and BOM', body: Buffer.concat([Buffer.from(pick(['\ufeff', ' \n\t', '\r\n'])), body, Buffer.from(pick(['', ' ', '\n']))]) };
    case 13:
      return { how: 'dot tenant', body: Buffer.from(JSON.stringify([{ id: 'x', tenant: pick(['.', '..', '...']) }])) };
    case 14: {
      const n = pick([MAX_BATCH, MAX_BATCH + 1]);
      return { how: `batch of ${n}`, body: Buffer.from(JSON.stringify(Array.from({ length: n }, (_, i) => ({ id: `b${SEED}-${i}`, tenant: 'hf-batch' })))) };
    }
    default:
      return { how: 'duplicate key', body: Buffer.from(JSON.stringify(items[0]).replace('{', `{"id":${JSON.stringify(pick(['dup', 1, null]))},`)) };
  }
}

const SINK = () => `hf-sink-${int(0, 9)}`;
const sinkBody = () => encodeItems(validItems([SINK()]));
const METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS', 'TRACE', 'FOO', 'get', 'P0ST'];
const PATHS = () => [
  '/items',
  '/items/',
  `/items/${encodeURIComponent(SINK())}/count`,
  '/health',
  '/ready',
  '/counters',
  '/',
  '/nope',
  '/items/%ZZ/count',
  '/items/%ED%A0%80/count',
  '/items/%E0%A4%A/count',
  '/items/%/count',
  '/items/%00/count',
  '/items/./count',
  '/items/../count',
  `/items/${'a'.repeat(int(200, 9000))}/count`,
  `/nope?${'q'.repeat(int(8000, 9000))}`,
  '*',
  'http://example.com/items',
  '/items?x=%&y=%ZZ',
  '//items',
  '/items//count',
  '/items/a/count?tenant=x',
  '/items/\u00e9/count',
];
const CONTENT_TYPES = [
  null,
  'application/json',
  'application/json; charset=utf-8',
  'application/json; charset=utf-16',
  'APPLICATION/JSON',
  'application/json;;;',
  'application/jsonp',
  'text/plain',
  'text/json',
  'application/x-www-form-urlencoded',
  'multipart/form-data; boundary=--x',
  '*/*',
  'application/json, text/plain',
  '',
  ';',
  'application/json; charset=',
];
const EXTRA_HEADERS = (): [string, string][] =>
  pick<[string, string][]>([
    [],
    [['Authorization', 'Bearer whatever']],
    [['Accept', '*/*']],
    [['Accept-Encoding', 'gzip, br']],
    [['Content-Encoding', 'gzip']],
    [['Expect', '100-continue']],
    [['X-Forwarded-For', '1.2.3.4']],
    [['Cookie', 'a=b'.repeat(100)]],
    [['Accept-Version', '1.x']],
    [['Range', 'bytes=0-10']],
  ]);

/** A request fuzzed in its method, path, headers and content type, with a body of sink tenants only. */
function fuzzedHeaders(): Buffer[] {
  const method = pick(METHODS);
  const path = pick(PATHS());
  const ct = pick(CONTENT_TYPES);
  const body = chance(0.8) ? sinkBody() : Buffer.alloc(int(0, 3), 0x20);
  const headers: [string, string][] = [...EXTRA_HEADERS()];
  if (ct !== null) headers.push(['Content-Type', ct]);
  headers.push(['Content-Length', String(body.length)], ['Connection', pick(['close', 'keep-alive', 'Upgrade'])]);
  return [request(method, path, headers, body)];
}

/** Broken framing: the server may answer 4xx or drop the connection, never a 5xx. */
function framingGarbage(): Buffer[] {
  const body = sinkBody();
  const head = (extra: [string, string][], method = 'POST', path = '/items') => request(method, path, [['Content-Type', 'application/json'], ...extra]);
  switch (int(0, 17)) {
    case 0:
      return [Buffer.from(Array.from({ length: int(1, 500) }, () => int(0, 255)))];
    case 1:
      return [Buffer.from(Array.from({ length: int(1, 300) }, () => int(32, 126)))];
    case 2:
      return [Buffer.from(pick(['GET', 'GET /', 'GET / HTTP/1.1', 'GET / HTTP/1.1\r\n', 'POST /items HTTP/1.1\r\nContent-Length: 5\r\n']))];
    case 3:
      return [Buffer.from(`GET /health HTTP/${pick(['9.9', '1', '2.0', '0.9', '1.1x'])}\r\nHost: x\r\n\r\n`)];
    case 4:
      return [Buffer.from('GET /health HTTP/1.1\r\nHost: x\r\nBroken header line\r\n\r\n')];
    case 5:
      return [head([['Content-Length', String(body.length + int(1, 100))]]), body]; // promises more than it sends
    case 6:
      return [head([['Content-Length', String(Math.max(0, body.length - int(1, 5)))]]), body]; // sends more than it promises
    case 7:
      return [head([['Content-Length', pick(['-1', 'abc', '1e3', '0x10', ' ', '99999999999999999999'])]]), body];
    case 8:
      return [head([['Content-Length', String(body.length)], ['Content-Length', String(body.length + 1)]]), body];
    case 9:
      return [head([['Transfer-Encoding', 'chunked']]), Buffer.from(`${body.length.toString(16)}\r\n`), body, Buffer.from('\r\n0\r\n\r\n')]; // a valid chunked body
    case 10:
      return [head([['Transfer-Encoding', 'chunked']]), Buffer.from(pick(['zz\r\nabc\r\n0\r\n\r\n', 'ffffffffffffffff\r\n', '5\r\nab\r\n', '-1\r\n\r\n']))];
    case 11:
      return [head([['Transfer-Encoding', 'chunked'], ['Content-Length', String(body.length)]]), body];
    case 12:
      return [request('GET', `/items/${'a'.repeat(int(17_000, 40_000))}/count`, [])]; // over Node's header limit → 431
    case 13:
      return [request('GET', '/health', [['X-Big', 'v'.repeat(int(17_000, 30_000))]])];
    case 14:
      return [request('GET', '/health', Array.from({ length: int(100, 3000) }, (_, i) => [`X-H${i}`, 'v'] as [string, string]))];
    case 15: {
      // two pipelined requests (sink tenants), then garbage
      const one = jsonPost(sinkBody()).toString('latin1').replace('Connection: close\r\n', '');
      return [Buffer.from(one + one, 'latin1'), Buffer.from('\x00\x01garbage\r\n\r\n')];
    }
    case 16: {
      // a body over BODY_LIMIT, announced or chunked: 413 (or the connection dropped mid-upload)
      const big = Buffer.alloc(BODY_LIMIT + int(1, 200_000), 0x20);
      return chance(0.5)
        ? [head([['Content-Length', String(big.length)]]), big]
        : [head([['Transfer-Encoding', 'chunked']]), Buffer.from(`${big.length.toString(16)}\r\n`), big, Buffer.from('\r\n0\r\n\r\n')];
    }
    default:
      return [Buffer.from(`${pick(METHODS)} ${pick(PATHS())} HTTP/1.1\r\nHost: x\r\n${'\r\n'.repeat(int(0, 2))}`), Buffer.from(pick(['\r\n', '\n\n', '\0', '']))];
  }
}

/** Counts for random tenants: encoded strings, raw bytes, invalid escapes. */
function randomCount(): Buffer[] {
  const alphabet = ['a', 'Z', '/', ' ', '%', '?', '#', '.', 'é', '😀', '\u0000', '\\', '+', '"', '\u200b'];
  const t = Array.from({ length: int(1, 300) }, () => pick(alphabet)).join('');
  const path = chance(0.8) ? encodeURIComponent(t) : pick(['%ED%A0%80', '%C0%AF', '%FF', '%%', t.replace(/[^a-z]/gi, '%')]);
  return [request(pick(['GET', 'HEAD']), `/items/${path}/count`, [['Connection', 'close']])];
}

// ---------------------------------------------------------------- the run

test.before(() => {
  certs = makeTestCerts();
});
test.after(async () => {
  await Promise.all(meshes.map((m) => m.close()));
  certs?.close();
});

/**
 * The product's heartbeat and counter timeout, not the test meshes' short ones: this test is about
 * answers to hostile input, not failure detection, and on a loaded 2-core machine a TLS process
 * starved for a second made the coordinator take a live counter for gone (503s, 2 CI runs of ~20).
 */
const PRODUCT_LIVENESS = { HEARTBEAT_MS: SETTINGS.HEARTBEAT_MS, COUNTER_TIMEOUT_MS: SETTINGS.COUNTER_TIMEOUT_MS };

test(`${REQUESTS} random and mutated requests (SEED=${SEED}): never a 5xx, oracle agrees, counts exact`, async () => {
  mesh = await Mesh.start({ counters: 2, env: PRODUCT_LIVENESS });
  meshes.push(mesh);
  await fuzz();
});

test(`over TLS: ${REQUESTS} random and mutated requests (SEED=${SEED}): never a 5xx, oracle agrees, counts exact`, async () => {
  await meshes.pop()?.close();
  mesh = await Mesh.start({ counters: 2, tls: certs!.good, env: PRODUCT_LIVENESS });
  meshes.push(mesh);
  tlsCa = fs.readFileSync(certs!.good.ca);
  model.clear();
  await fuzz();
});

async function fuzz(): Promise<void> {
  const stats = new Map<string, number>();
  const bump = (k: string) => stats.set(k, (stats.get(k) ?? 0) + 1);
  const failures: string[] = [];
  let sent = 0;

  /** Every refusal is JSON whose `message` says what was wrong. */
  function explained(a: Answer, what: string): void {
    if (a.status === null || a.status < 400 || a.status >= 500 || a.body === '') return;
    try {
      const b = JSON.parse(a.body) as { message?: unknown; statusCode?: unknown };
      if (typeof b.message === 'string' && b.message.length > 0 && b.statusCode === a.status) return;
    } catch {
      // reported below
    }
    failures.push(`${what}: a ${a.status} without a JSON message: ${a.head} ${a.body.slice(0, 200)}`);
  }

  async function one(): Promise<void> {
    const r = rng();
    if (r < 0.3) {
      const items = validItems();
      const a = await raw([jsonPost(encodeItems(items))]);
      bump(`valid → ${a.status}`);
      if (a.status === 200) remember(items);
      else failures.push(`a valid POST got ${a.status}: ${a.head}`);
    } else if (r < 0.62) {
      const { body, how } = mutatedBody();
      const expected = oracle(body);
      const a = await raw([jsonPost(body)]);
      bump(`mutated ${expected ? 'valid' : 'invalid'} → ${a.status}`);
      explained(a, how);
      if (a.status === 200 && expected) remember(expected);
      else if (expected) failures.push(`${how}: the oracle accepts ${JSON.stringify(body.subarray(0, 300).toString())} but got ${a.status}: ${a.head}`);
      else if (a.status === null || a.status < 400 || a.status >= 500) failures.push(`${how}: the oracle refuses ${JSON.stringify(body.subarray(0, 300).toString())} but got ${a.status}: ${a.head}`);
    } else if (r < 0.8) {
      const a = await raw(fuzzedHeaders(), IDLE_END_MS);
      bump(`headers → ${a.status ?? 'closed'}`);
      explained(a, 'fuzzed headers');
      if (a.status === null || a.status >= 500) failures.push(`fuzzed headers got ${a.status}: ${a.head}`);
    } else if (r < 0.92) {
      const parts = framingGarbage();
      const a = await raw(parts, IDLE_END_MS);
      bump(`framing → ${a.status ?? 'closed'}`);
      explained(a, 'framing garbage');
      if (a.status !== null && a.status >= 500) failures.push(`framing garbage got ${a.status}: ${a.head} for ${JSON.stringify(Buffer.concat(parts).subarray(0, 200).toString('latin1'))}`);
    } else {
      const a = await raw(randomCount(), IDLE_END_MS);
      bump(`count → ${a.status}`);
      explained(a, 'count');
      if (a.status === null || a.status >= 500 || ![200, 400, 414].includes(a.status)) failures.push(`a count got ${a.status}: ${a.head}`);
    }
  }

  const t0 = Date.now();
  await Promise.all(
    Array.from({ length: PARALLEL }, async () => {
      while (sent < REQUESTS) {
        sent++;
        await one();
      }
    }),
  );
  console.log(`http-fuzz${tlsCa ? ' (TLS)' : ''}: ${REQUESTS} requests in ${Date.now() - t0} ms: ${JSON.stringify(Object.fromEntries([...stats].sort()))}`);
  assert.equal(failures.slice(0, 10), [], `${failures.length} failures (SEED=${SEED})`);

  const coordinator = mesh.coordinators[0]!.process;
  assert.ok(coordinator.running, `the coordinator is up\n${coordinator.tail()}`);
  assert.is(coordinator.exits, 0);
  assert.is((await mesh.call(mesh.url('/health'))).status, 200);
  assert.not.match(coordinator.output.join('\n'), /"level":50|request failed|uncaught/i, 'no errors logged by the coordinator');

  const expected = new Map([...model].map(([t, s]) => [t, s.size]));
  assert.ok(expected.size >= TENANTS.length, `valid writes reached every tenant (${expected.size})`);
  for (const [tenant, n] of expected) assert.is(await mesh.count(tenant), n, `count of ${JSON.stringify(tenant)} through the coordinator`);
  await mesh.waitConverged(expected);
}

test.run();
