/**
 * The public REST API, route by route, through `app.inject()` against an in-memory pool:
 * every hostile-input case gets an exact status and a `message` that names the field or index,
 * and no rejected request reaches the pool (nothing half-applied, no count changed).
 */
import http from 'node:http';
import net from 'node:net';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import pino from 'pino';
import type { FastifyInstance, InjectOptions } from 'fastify';
import { buildCoordinatorServer, TIMEOUTS, type PoolApi } from '../src/coordinator/server.ts';
import { NoCounterAvailableError } from '../src/coordinator/counter-pool.ts';
import { coordinatorConfig, ConfigError, type Env } from '../src/shared/config.ts';
import type { Item } from '../src/protocol/messages.ts';

/** The pool as the HTTP layer sees it: a Map of tenant → ids, and a log of the calls that reached it. */
class FakePool implements PoolApi {
  readonly sets = new Map<string, Set<string>>();
  readonly adds: Item[][] = [];
  readonly counts: string[] = [];
  anyUsable = true;
  down = false;
  view() {
    return [{ id: 'fake', address: '127.0.0.1:1', reachable: true, ready: this.anyUsable, lastHeardAt: null, items: this.total, replicationLagSeconds: null }];
  }
  async add(items: readonly Item[]): Promise<void> {
    if (this.down) throw new NoCounterAvailableError('no counter can take the write right now');
    this.adds.push([...items]);
    for (const it of items) {
      let s = this.sets.get(it.tenant);
      if (!s) {
        s = new Set();
        this.sets.set(it.tenant, s);
      }
      s.add(it.id);
    }
  }
  async count(tenant: string): Promise<number> {
    if (this.down) throw new NoCounterAvailableError('no counter is reachable right now');
    this.counts.push(tenant);
    return this.sets.get(tenant)?.size ?? 0;
  }
  replicas() {
    return [];
  }
  /** What removeCounter throws next (null: it succeeds). */
  removal: NoCounterAvailableError | null = null;
  async removeCounter(_id: string): Promise<void> {
    if (this.removal) throw this.removal;
  }
  get total(): number {
    let n = 0;
    for (const s of this.sets.values()) n += s.size;
    return n;
  }
}

const silent = pino({ level: 'silent' });
const JSON_CT = { 'content-type': 'application/json' };

function build(env: Env = {}): { app: FastifyInstance; pool: FakePool } {
  const pool = new FakePool();
  const app = buildCoordinatorServer(coordinatorConfig({ LOG_LEVEL: 'silent', ...env }), pool, silent);
  return { app, pool };
}

let app: FastifyInstance;
let pool: FakePool;

test.before.each(() => {
  ({ app, pool } = build());
});
test.after.each(async () => {
  await app.close();
});

interface ErrorBody {
  statusCode: number;
  code: string;
  error: string;
  message: string;
}

async function send(opts: InjectOptions, target = app) {
  const res = await target.inject(opts);
  let body: unknown ;
  if (res.body) body = JSON.parse(res.body);
  return { status: res.statusCode, headers: res.headers, body: body as Record<string, unknown> & Partial<ErrorBody> };
}

function post(payload: unknown, headers: Record<string, string> = JSON_CT) {
  return send({ method: 'POST', url: '/items', headers, payload: typeof payload === 'string' || Buffer.isBuffer(payload) ? payload : JSON.stringify(payload) });
}

/** A rejection: status, JSON error body with a message matching `message`, and the pool untouched. */
async function rejects(res: Promise<Awaited<ReturnType<typeof send>>>, status: number, message: RegExp, code?: string) {
  const before = pool.adds.length;
  const r = await res;
  assert.is(r.status, status, `status (body: ${JSON.stringify(r.body)})`);
  assert.type(r.body, 'object', 'a JSON body');
  assert.is(r.body.statusCode, status);
  assert.type(r.body.message, 'string');
  assert.match(r.body.message!, message);
  if (code) assert.is(r.body.code, code);
  assert.is(pool.adds.length, before, 'a rejected request never reaches the counters');
  return r;
}

const item = (id: string, tenant = 't') => ({ id, tenant });

// ---------------------------------------------------------------- the happy path

test('a single item and a batch are accepted and counted', async () => {
  let r = await post(item('a'));
  assert.is(r.status, 200);
  assert.equal(r.body, { accepted: 1 });
  r = await post([item('b'), item('c'), item('a')]);
  assert.is(r.status, 200);
  assert.equal(r.body, { accepted: 3 });
  r = await send({ method: 'GET', url: '/items/t/count' });
  assert.is(r.status, 200);
  assert.equal(r.body, { count: 3 });
  r = await send({ method: 'HEAD', url: '/items/t/count' });
  assert.is(r.status, 200);
});

test('tenants with slashes, spaces, percent signs and unicode are countable via encodeURIComponent', async () => {
  const tenants = ['a/b', 'a b', 'a%2Fb', '100%', 'q?x=1#frag', 'über', '租户', '😀/😀', '../..', '...', '.a', ' ', '\\', 'a+b', '\u0000nul'];
  for (const [i, tenant] of tenants.entries()) {
    const ids = Array.from({ length: i + 1 }, (_, k) => `id-${k}`);
    assert.is((await post(ids.map((id) => ({ id, tenant })))).status, 200, `post for ${JSON.stringify(tenant)}`);
  }
  for (const [i, tenant] of tenants.entries()) {
    const r = await send({ method: 'GET', url: `/items/${encodeURIComponent(tenant)}/count` });
    assert.is(r.status, 200, `count for ${JSON.stringify(tenant)}: ${JSON.stringify(r.body)}`);
    assert.is(r.body.count, i + 1, `count for ${JSON.stringify(tenant)}`);
  }
  assert.is(pool.counts.at(-1), '\u0000nul', 'the pool gets the decoded tenant');
});

test('tenants "." and ".." are refused: URLs cannot carry them as a path segment (clients remove dot segments)', async () => {
  assert.is(new URL(`http://h/items/${encodeURIComponent('.')}/count`).pathname, '/items/count', 'why: fetch and browsers normalise them away');
  assert.is(new URL('http://h/items/%2E%2E/count').pathname, '/count');
  await rejects(post(item('a', '.')), 400, /^tenant must not be "\." or "\.\."/);
  await rejects(post([item('a'), item('b', '..')]), 400, /^item 1: tenant must not be "\." or "\.\."/);
  assert.is((await post(item('.', '..a'))).status, 200, 'ids may be dots; tenants merely containing dots are fine');
});

test('256 characters is the limit, counted in code points (astral characters included)', async () => {
  assert.is((await post(item('x'.repeat(256), 'y'.repeat(256)))).status, 200);
  assert.is((await post(item('😀'.repeat(256), '😀'.repeat(256)))).status, 200, '256 astral characters are 512 UTF-16 units and still fit');
  assert.is((await send({ method: 'GET', url: `/items/${encodeURIComponent('😀'.repeat(256))}/count` })).body.count, 1);
  await rejects(post(item('x'.repeat(257))), 400, /^id must NOT have more than 256 characters/);
  await rejects(post([item('a'), item('b', 'y'.repeat(257))]), 400, /^item 1: tenant must NOT have more than 256 characters/);
  await rejects(send({ method: 'GET', url: `/items/${'y'.repeat(257)}/count` }), 400, /^params tenant must NOT have more than 256 characters/);
});

// ---------------------------------------------------------------- the body as a whole

test('invalid and truncated JSON → 400 INVALID_JSON', async () => {
  const valid = JSON.stringify([item('a'), item('b')]);
  for (let cut = 1; cut < valid.length; cut += 3) {
    await rejects(post(valid.slice(0, cut)), 400, /not valid JSON/, 'INVALID_JSON');
  }
  await rejects(post('{bad}'), 400, /not valid JSON.*position 1/, 'INVALID_JSON');
  await rejects(post('[{"id":"a","tenant":"t"},]'), 400, /not valid JSON/, 'INVALID_JSON');
  await rejects(post('{"id":"a","tenant":"t"}}'), 400, /not valid JSON.*position 23/, 'INVALID_JSON');
  await rejects(post("{'id':'a','tenant':'t'}"), 400, /not valid JSON/, 'INVALID_JSON');
  await rejects(post('NaN'), 400, /not valid JSON/, 'INVALID_JSON');
  await rejects(post(Buffer.from([0x7b, 0x22, 0x69, 0x64, 0x22, 0x3a, 0x22, 0xc3, 0x28, 0x22, 0x7d])), 400, /not valid UTF-8/, 'INVALID_JSON');
});

test('wrong content type → 415 UNSUPPORTED_MEDIA_TYPE', async () => {
  const body = JSON.stringify(item('a'));
  for (const ct of ['text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/xml', 'application/jsonx', 'application/json; charset=utf-16', 'application/json; charset=latin1']) {
    await rejects(post(body, { 'content-type': ct }), 415, /JSON|UTF-8/, 'UNSUPPORTED_MEDIA_TYPE');
  }
  // parameters and case do not matter for the real thing
  assert.is((await post(body, { 'content-type': 'Application/JSON; charset=UTF-8' })).status, 200);
  assert.is((await post(body, { 'content-type': 'application/json; charset="utf-8"' })).status, 200);
});

test('empty body → 400 EMPTY_BODY; no body at all → 400', async () => {
  await rejects(post(''), 400, /body is empty/, 'EMPTY_BODY');
  await rejects(send({ method: 'POST', url: '/items' }), 400, /^body must be an item/, 'INVALID_REQUEST');
});

test('the body must be an item or an array of items: null, numbers, strings, booleans → 400', async () => {
  for (const v of ['null', '1', '-0.5e3', '"x"', 'true', 'false']) {
    await rejects(post(v), 400, /^body must be an item \{"id","tenant"\} or an array of items$/, 'INVALID_REQUEST');
  }
});

test('empty array → 400; array over MAX_BATCH (default 10,000) → 400 naming the limit', async () => {
  await rejects(post([]), 400, /^body must hold at least one item$/);
  const many = Array.from({ length: 10_001 }, (_, i) => item(`i${i}`));
  await rejects(post(many), 400, /^body must hold at most 10000 items per request \(MAX_BATCH\)/);
  const r = await post(many.slice(0, 10_000));
  assert.is(r.status, 200);
  assert.is(r.body.accepted, 10_000);
});

test('MAX_BATCH and BODY_LIMIT are configurable', async () => {
  const small = build({ MAX_BATCH: '3', BODY_LIMIT: '2048' });
  try {
    let r = await send({ method: 'POST', url: '/items', headers: JSON_CT, payload: JSON.stringify([item('a'), item('b'), item('c'), item('d')]) }, small.app);
    assert.is(r.status, 400);
    assert.match(r.body.message!, /at most 3 items/);
    r = await send({ method: 'POST', url: '/items', headers: JSON_CT, payload: JSON.stringify([item('a'.repeat(250)), item('b'.repeat(250)), item('c'.repeat(250))]) }, small.app);
    assert.is(r.status, 200);
    r = await send({ method: 'POST', url: '/items', headers: JSON_CT, payload: JSON.stringify([item('a'), item('b'.repeat(2100))]) }, small.app);
    assert.is(r.status, 413);
    assert.is(r.body.code, 'BODY_TOO_LARGE');
    assert.match(r.body.message!, /BODY_LIMIT \(2048 bytes\)/);
    assert.is(small.pool.adds.length, 1);
  } finally {
    await small.app.close();
  }
  assert.throws(() => coordinatorConfig({ MAX_BATCH: '0' }), (e: Error) => e instanceof ConfigError);
  assert.throws(() => coordinatorConfig({ BODY_LIMIT: '1e6' }), (e: Error) => e instanceof ConfigError);
});

test('a huge body (over the default 1 MiB) → 413 BODY_TOO_LARGE', async () => {
  const huge = JSON.stringify(Array.from({ length: 40_000 }, (_, i) => item(`item-number-${i}`, 'tenant')));
  assert.ok(huge.length > 1024 * 1024);
  await rejects(post(huge), 413, /larger than BODY_LIMIT \(1048576 bytes\)/, 'BODY_TOO_LARGE');
  await rejects(post(`"${'x'.repeat(1024 * 1024)}"`), 413, /BODY_LIMIT/, 'BODY_TOO_LARGE');
});

test('deeply nested arrays and objects → 400, never a stack overflow', async () => {
  const depth = 200_000;
  await rejects(post('['.repeat(depth) + ']'.repeat(depth)), 400, /^item 0 must be an object/);
  await rejects(post(`${'{"id":'.repeat(depth / 10)}"x"${'}'.repeat(depth / 10)}`), 400, /^body must have required property 'tenant'/);
  await rejects(post(`${'{"tenant":"t","id":'.repeat(depth / 20)}"x"${'}'.repeat(depth / 20)}`), 400, /^id must be string/);
  await rejects(post('['.repeat(depth)), 400, /not valid JSON/);
});

// ---------------------------------------------------------------- the items

test('nested arrays → 400 naming the index', async () => {
  await rejects(post([[item('a')]]), 400, /^item 0 must be an object \{"id","tenant"\}$/);
  await rejects(post([item('a'), item('b'), [item('c')]]), 400, /^item 2 must be an object/);
  await rejects(post([item('a'), null]), 400, /^item 1 must be an object/);
  await rejects(post([item('a'), 'a']), 400, /^item 1 must be an object/);
});

test('numbers, objects, arrays, booleans and null as id or tenant → 400 naming field and index', async () => {
  const bad: unknown[] = [1, 0, -1, 1.5, { a: 1 }, {}, [], ['a'], true, false, null];
  for (const v of bad) {
    await rejects(post({ id: v, tenant: 't' }), 400, /^id must be string$/);
    await rejects(post({ id: 'a', tenant: v }), 400, /^tenant must be string$/);
    await rejects(post([item('a'), item('b'), item('c'), { id: v, tenant: 't' }]), 400, /^item 3: id must be string$/);
    await rejects(post([item('a'), { id: 'x', tenant: v }]), 400, /^item 1: tenant must be string$/);
  }
});

test('missing properties → 400 naming the property', async () => {
  await rejects(post({ id: 'a' }), 400, /^body must have required property 'tenant'$/);
  await rejects(post({}), 400, /^body must have required property 'id'$/);
  await rejects(post([item('a'), { tenant: 't' }]), 400, /^item 1 must have required property 'id'$/);
});

test('empty strings → 400', async () => {
  await rejects(post(item('')), 400, /^id must NOT have fewer than 1 characters$/);
  await rejects(post(item('a', '')), 400, /^tenant must NOT have fewer than 1 characters$/);
  await rejects(post([item('a'), item('b'), item('c', '')]), 400, /^item 2: tenant must NOT have fewer than 1 characters$/);
  await rejects(send({ method: 'GET', url: '/items//count' }), 400, /tenant must NOT have fewer than 1 characters/);
});

test('extra properties are rejected (documented choice), never silently dropped', async () => {
  await rejects(post({ id: 'a', tenant: 't', count: 5 }), 400, /^body has unknown property "count" \(only "id" and "tenant" are allowed\)$/);
  await rejects(post([item('a'), { id: 'b', tenant: 't', extra: null }]), 400, /^item 1 has unknown property "extra"/);
  await rejects(post('{"id":"a","tenant":"t","__proto__":{"polluted":true}}'), 400, /unknown property "__proto__"/);
  await rejects(post('{"id":"a","tenant":"t","constructor":{"prototype":{"polluted":true}}}'), 400, /unknown property "constructor"/);
  assert.is(({} as Record<string, unknown>).polluted, undefined, 'no prototype pollution');
});

test('lone surrogates → 400 (body and URL); a proper pair is fine', async () => {
  for (const s of ['\\ud800', '\\udfff', 'a\\udc00b', '\\udc00\\ud800', '\\ud83d']) {
    await rejects(post(`{"id":"x","tenant":"${s}"}`), 400, /^tenant must be well-formed Unicode text \(no lone surrogates\)$/);
    await rejects(post(`[{"id":"x","tenant":"t"},{"id":"${s}","tenant":"t"}]`), 400, /^item 1: id must be well-formed Unicode/);
  }
  assert.is((await post('{"id":"\\ud83d\\ude00","tenant":"t"}')).status, 200);
  // a surrogate cannot be percent-encoded as valid UTF-8: CESU-style bytes do not decode
  await rejects(send({ method: 'GET', url: '/items/%ED%A0%80/count' }), 400, /percent-encoded UTF-8/, 'BAD_URL');
});

test('one bad item rejects the whole batch: nothing half-applied, counts unchanged', async () => {
  assert.is((await post([item('a'), item('b')])).status, 200);
  const adds = pool.adds.length;
  await rejects(post([item('c'), item('d'), item('e'), { id: 'f', tenant: 7 }, item('g')]), 400, /^item 3: tenant must be string$/);
  await rejects(post([item('c'), item('d'), item('', 't')]), 400, /^item 2: id/);
  assert.is(pool.adds.length, adds);
  assert.is((await send({ method: 'GET', url: '/items/t/count' })).body.count, 2);
});

// ---------------------------------------------------------------- URLs and methods

test('unknown route → 404', async () => {
  for (const url of ['/nope', '/items/a', '/items/a/b/count', '/items/a/count/x', '/ITEMS', '/health/x']) {
    await rejects(send({ method: 'GET', url }), 404, /^no route GET /, 'NOT_FOUND');
  }
});

test('wrong method → 405 with Allow', async () => {
  const cases: [InjectOptions['method'], string, string][] = [
    ['GET', '/items', 'POST'],
    ['PUT', '/items', 'POST'],
    ['DELETE', '/items', 'POST'],
    ['POST', '/items/t/count', 'GET, HEAD'],
    ['DELETE', '/items/t/count', 'GET, HEAD'],
    ['PATCH', '/health', 'GET, HEAD'],
    ['POST', '/ready', 'GET, HEAD'],
    ['PUT', '/counters', 'GET, HEAD'],
  ];
  for (const [method, url, allow] of cases) {
    const r = await rejects(send({ method, url, headers: JSON_CT, payload: '{}' }), 405, new RegExp(`^${method} is not allowed on ${url}; use ${allow}$`), 'METHOD_NOT_ALLOWED');
    assert.is(r.headers.allow, allow, `Allow for ${method} ${url}`);
  }
});

test('percent-encoding that does not decode → 400 BAD_URL', async () => {
  for (const url of ['/items/%/count', '/items/%ZZ/count', '/items/%E0%A4%A/count', '/items/%C3/count', '/items/%FF%FE/count', '/%', '/items/a%/count']) {
    await rejects(send({ method: 'GET', url }), 400, /^the URL is not valid percent-encoded UTF-8/, 'BAD_URL');
  }
});

test('an over-long URL → 414 through inject, 431 from the socket; never a 5xx', async () => {
  await rejects(send({ method: 'GET', url: `/items/${'a'.repeat(9000)}/count` }), 414, /too long/, 'URI_TOO_LONG');
  await rejects(send({ method: 'GET', url: `/nope?${'a'.repeat(9000)}` }), 414, /longer than 8192/, 'URI_TOO_LONG');
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as net.AddressInfo;
  const { status, body } = await new Promise<{ status: number; body: string }>((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: `/items/${'a'.repeat(20_000)}/count` }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    }).on('error', reject);
  });
  assert.is(status, 431);
  assert.is((JSON.parse(body) as ErrorBody).code, 'HEADERS_TOO_LARGE');
  assert.match((JSON.parse(body) as ErrorBody).message, /larger than 16 KiB/);
});

/** Writes raw bytes to a listening app and returns everything it answers until it closes. */
async function rawExchange(bytes: string): Promise<string> {
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as net.AddressInfo;
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let got = '';
    s.on('data', (d) => (got += d.toString('latin1')));
    s.on('error', () => {});
    s.on('close', () => resolve(got));
    s.write(bytes);
  });
}

test('what is not HTTP at all → 400 BAD_HTTP with a JSON message, then the connection is closed', async () => {
  for (const bytes of ['\x01\x02\x03 garbage\r\n\r\n', 'GET /health HTTP/9.9\r\nHost: x\r\n\r\n', 'POST /items HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}', 'POST /items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n']) {
    if (app.server.listening) await app.close();
    ({ app, pool } = build());
    const answer = await rawExchange(bytes);
    assert.match(answer, /^HTTP\/1\.1 400 Bad Request\r\n/, JSON.stringify(bytes));
    const body = JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4)) as ErrorBody;
    assert.is(body.code, 'BAD_HTTP');
    assert.match(body.message, /not valid HTTP\/1\.1 \(HPE_[A-Z_]+\)/);
    assert.is(pool.adds.length, 0);
  }
});

test('server timeouts are set: slow or idle clients cannot pin connections', async () => {
  await app.ready();
  const s = app.server;
  assert.is(s.requestTimeout, TIMEOUTS.requestMs);
  assert.is(s.headersTimeout, TIMEOUTS.headersMs);
  assert.is(s.keepAliveTimeout, TIMEOUTS.keepAliveMs);
  assert.is(s.timeout, TIMEOUTS.idleMs);
  for (const v of [s.requestTimeout, s.headersTimeout, s.keepAliveTimeout, s.timeout]) assert.ok(v > 0 && v <= 60_000);
  assert.ok(s.headersTimeout <= s.requestTimeout, 'headers are due before the whole request');
});

// ---------------------------------------------------------------- availability

test('no counter available → 503 with Retry-After, not a 500', async () => {
  pool.down = true;
  let r = await post(item('a'));
  assert.is(r.status, 503);
  assert.is(r.headers['retry-after'], '1');
  assert.is(r.body.code, 'NO_COUNTER');
  r = await send({ method: 'GET', url: '/items/t/count' });
  assert.is(r.status, 503);
  pool.anyUsable = false;
  r = await send({ method: 'GET', url: '/ready' });
  assert.is(r.status, 503);
});

test('DELETE /counters/:id → 503 NO_COUNTER says whether the removal may have been stored', async () => {
  pool.removal = new NoCounterAvailableError('no counter is reachable and ready to take the removal');
  let r = await send({ method: 'DELETE', url: '/counters/c3' });
  assert.is(r.status, 503);
  assert.is(r.headers['retry-after'], '1');
  assert.match(r.body.message ?? '', /nothing was removed, retry later$/);
  // asked, and no answer in time: it may have been stored
  pool.removal = new NoCounterAvailableError('no counter took the removal: counter c1 did not answer within 1000 ms', true);
  r = await send({ method: 'DELETE', url: '/counters/c3' });
  assert.is(r.status, 503);
  assert.match(r.body.message ?? '', /the removal may have been stored before an answer was lost, retry later$/);
  assert.not.match(r.body.message ?? '', /nothing was removed/);
  pool.removal = null;
  r = await send({ method: 'DELETE', url: '/counters/c3' });
  assert.is(r.status, 202);
});

// ---------------------------------------------------------------- API_KEY

test('with API_KEY set, every route but /health and /ready needs the key; 401 changes nothing', async () => {
  const key = 'k3y-with-some-length';
  const secured = build({ API_KEY: key });
  const sa = secured.app;
  try {
    const wrong: (Record<string, string> | undefined)[] = [
      undefined,
      { authorization: '' },
      { authorization: 'Bearer' },
      { authorization: 'Bearer ' },
      { authorization: `Bearer ${key}x` },
      { authorization: `Bearer ${key.slice(0, -1)}` },
      { authorization: `bearer ${key}` },
      { authorization: `Basic ${Buffer.from(`u:${key}`).toString('base64')}` },
      { authorization: key },
      { authorization: `Bearer  ${key}` },
      { 'x-api-key': key },
    ];
    for (const h of wrong) {
      for (const [method, url, payload] of [
        ['POST', '/items', JSON.stringify(item('a'))],
        ['GET', '/items/t/count', undefined],
        ['GET', '/counters', undefined],
        ['GET', '/nope', undefined],
        ['DELETE', '/items', undefined],
      ] as const) {
        const r = await send({ method, url, payload, headers: { ...JSON_CT, ...h } }, sa);
        assert.is(r.status, 401, `${method} ${url} with ${JSON.stringify(h)}`);
        assert.is(r.body.code, 'UNAUTHORIZED');
        assert.match(r.body.message!, /Authorization: Bearer <API_KEY>/);
        assert.is(r.headers['www-authenticate'], 'Bearer');
      }
    }
    assert.is(secured.pool.adds.length, 0, 'nothing reached the counters');
    assert.is(secured.pool.counts.length, 0);
    // the open routes, also with a query string or a trailing slash
    for (const url of ['/health', '/ready', '/health?probe=1', '/ready/']) assert.is((await send({ method: 'GET', url }, sa)).status, 200, url);
    // the right key
    const auth = { ...JSON_CT, authorization: `Bearer ${key}` };
    assert.is((await send({ method: 'POST', url: '/items', headers: auth, payload: JSON.stringify(item('a')) }, sa)).status, 200);
    assert.equal((await send({ method: 'GET', url: '/items/t/count', headers: auth }, sa)).body, { count: 1 });
    assert.is((await send({ method: 'GET', url: '/counters', headers: auth }, sa)).status, 200);
    assert.is((await send({ method: 'GET', url: '/nope', headers: auth }, sa)).status, 404);
  } finally {
    await sa.close();
  }
});

test.run();
