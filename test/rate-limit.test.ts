/**
 * Rate limits on the coordinator (RATE_LIMIT_MAX per RATE_LIMIT_WINDOW_MS): off by default; per
 * client address, or per API key for requests that carry API_KEY; a 429 with Retry-After and the
 * catalogue's body; other clients keep being served; /health and /ready are never limited.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import pino from 'pino';
import type { FastifyInstance } from 'fastify';
import { buildCoordinatorServer, type PoolApi } from '../src/coordinator/server.ts';
import { coordinatorConfig, ConfigError, type Env } from '../src/shared/config.ts';
import { waitFor } from '../src/shared/wait.ts';
import type { Item } from '../src/protocol/messages.ts';

class FakePool implements PoolApi {
  readonly adds: Item[][] = [];
  anyUsable = true;
  view() {
    return [];
  }
  async add(items: readonly Item[]): Promise<void> {
    this.adds.push([...items]);
  }
  async count(): Promise<number> {
    return 0;
  }
  replicas() {
    return [];
  }
}

const apps: FastifyInstance[] = [];
function build(env: Env): { app: FastifyInstance; pool: FakePool } {
  const pool = new FakePool();
  const app = buildCoordinatorServer(coordinatorConfig({ LOG_LEVEL: 'silent', ...env }), pool, pino({ level: 'silent' }));
  apps.push(app);
  return { app, pool };
}
test.after.each(async () => {
  await Promise.all(apps.splice(0).map((a) => a.close()));
});

const count = (app: FastifyInstance, remoteAddress: string, headers: Record<string, string> = {}) => app.inject({ method: 'GET', url: '/items/acme/count', remoteAddress, headers });

test('off by default: no limit and no rate-limit headers', async () => {
  const { app } = build({});
  for (let i = 0; i < 300; i++) {
    const res = await count(app, '127.0.0.5');
    assert.is(res.statusCode, 200, `request ${i}`);
    assert.is(res.headers['retry-after'], undefined);
    assert.is(res.headers['x-ratelimit-limit'], undefined);
  }
});

test('per client address: the catalogue 429 with Retry-After past the limit; other addresses and the probes are served', async () => {
  const { app, pool } = build({ RATE_LIMIT_MAX: '3', RATE_LIMIT_WINDOW_MS: '60000' });
  for (let i = 0; i < 3; i++) assert.is((await count(app, '127.0.0.5')).statusCode, 200);
  const limited = await count(app, '127.0.0.5');
  assert.is(limited.statusCode, 429);
  const retryAfter = Number(limited.headers['retry-after']);
  assert.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 60, `Retry-After in whole seconds within the window (got ${limited.headers['retry-after']})`);
  const body = limited.json() as { statusCode: number; code: string; error: string; message: string };
  assert.equal(Object.keys(body).sort(), ['code', 'error', 'message', 'statusCode']);
  assert.is(body.statusCode, 429);
  assert.is(body.code, 'RATE_LIMITED');
  assert.is(body.error, 'Too Many Requests');
  assert.match(body.message, /RATE_LIMIT_MAX/);

  // a limited write never reaches the counters
  const post = await app.inject({ method: 'POST', url: '/items', remoteAddress: '127.0.0.5', headers: { 'content-type': 'application/json' }, payload: { id: 'x', tenant: 'acme' } });
  assert.is(post.statusCode, 429);
  assert.is(pool.adds.length, 0);

  // others are left alone, and so are the probes of the limited client
  assert.is((await count(app, '127.0.0.6')).statusCode, 200, 'another address');
  for (const url of ['/health', '/ready']) {
    for (let i = 0; i < 5; i++) assert.is((await app.inject({ method: 'GET', url, remoteAddress: '127.0.0.5' })).statusCode, 200, url);
  }
});

test('with API_KEY: requests carrying the key share one budget per key, whatever their address; others are limited per address', async () => {
  const { app } = build({ RATE_LIMIT_MAX: '4', RATE_LIMIT_WINDOW_MS: '60000', API_KEY: 'k3y' });
  const key = { authorization: 'Bearer k3y' };
  assert.is((await count(app, '127.0.0.5', key)).statusCode, 200);
  assert.is((await count(app, '127.0.0.6', key)).statusCode, 200);
  assert.is((await count(app, '127.0.0.7', key)).statusCode, 200);
  assert.is((await count(app, '127.0.0.8', key)).statusCode, 200);
  assert.is((await count(app, '127.0.0.9', key)).statusCode, 429, 'a new address does not buy the key a new budget');

  // a client without the key gets its 401s, then 429s, on its own address's budget
  const bad = { authorization: 'Bearer wrong' };
  for (let i = 0; i < 4; i++) assert.is((await count(app, '127.0.0.20', bad)).statusCode, 401);
  assert.is((await count(app, '127.0.0.20', bad)).statusCode, 429, 'bad keys are limited too');
  assert.is((await count(app, '127.0.0.21', bad)).statusCode, 401, 'another address has its own budget');
});

test('the budget comes back once the window has passed', async () => {
  const { app } = build({ RATE_LIMIT_MAX: '2', RATE_LIMIT_WINDOW_MS: '300' });
  await count(app, '127.0.0.5');
  await count(app, '127.0.0.5');
  assert.is((await count(app, '127.0.0.5')).statusCode, 429);
  await waitFor(async () => (await count(app, '127.0.0.5')).statusCode === 200, 3000, 'served again after the window');
});

test('over real sockets the client address is the peer address: a limited client leaves another one alone', async () => {
  const { app } = build({ RATE_LIMIT_MAX: '5', RATE_LIMIT_WINDOW_MS: '60000' });
  await app.listen({ host: '127.0.0.50', port: 0 });
  const { port } = app.server.address() as AddressInfo;
  const get = (localAddress: string) =>
    new Promise<number>((resolve, reject) => {
      const req = http.get({ host: '127.0.0.50', port, path: '/items/acme/count', localAddress, agent: false }, (res) => {
        res.resume();
        res.once('end', () => resolve(res.statusCode ?? 0));
      });
      req.once('error', reject);
    });
  const a: number[] = [];
  for (let i = 0; i < 8; i++) a.push(await get('127.0.0.51'));
  assert.equal(a, [200, 200, 200, 200, 200, 429, 429, 429]);
  assert.is(await get('127.0.0.52'), 200);
});

test('RATE_LIMIT_MAX and RATE_LIMIT_WINDOW_MS are checked at start', () => {
  assert.throws(() => coordinatorConfig({ RATE_LIMIT_MAX: '-1' }), (e: Error) => e instanceof ConfigError && /RATE_LIMIT_MAX/.test(e.message));
  assert.throws(() => coordinatorConfig({ RATE_LIMIT_WINDOW_MS: '10' }), (e: Error) => e instanceof ConfigError && /RATE_LIMIT_WINDOW_MS/.test(e.message));
  assert.is(coordinatorConfig({}).rateLimitMax, 0, 'off by default');
});

test.run();
