/**
 * The status page's routes without a browser: the page and its files are open and carry a strict
 * CSP; the event stream follows API_KEY, sends a snapshot at once and one every second, counts
 * requests in its rates, is bounded in viewers, and closing the coordinator ends it.
 */
import type { AddressInfo } from 'node:net';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import pino from 'pino';
import type { FastifyInstance } from 'fastify';
import { buildCoordinatorServer } from '../src/coordinator/server.ts';
import { coordinatorConfig, type Env } from '../src/shared/config.ts';
import type { StatusSnapshot } from '../src/coordinator/status-page.ts';
import { waitFor } from '../src/shared/wait.ts';

const KEY = 'k-123';
const AUTH = { authorization: `Bearer ${KEY}` };

async function start(env: Env = {}): Promise<{ app: FastifyInstance; base: string }> {
  const pool = {
    anyUsable: true,
    view: () => [{ id: 'c1', address: '127.0.0.1:1', reachable: true, ready: true, lastHeardAt: null, items: 3, replicationLagSeconds: 0.2 }],
    count: async () => 3,
    add: async () => 1,
    replicas: () => [],
  };
  const app = buildCoordinatorServer(coordinatorConfig({ API_KEY: KEY, ...env }), pool, pino({ level: 'silent' }));
  await app.listen({ host: '127.0.0.1', port: 0 });
  return { app, base: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}` };
}

/** Reads server-sent events of a response, as snapshots. */
function events(res: Response): { next(): Promise<StatusSnapshot> } {
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  return {
    async next() {
      for (;;) {
        const end = buffer.indexOf('\n\n');
        if (end >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split('\n').find((l) => l.startsWith('data: '));
          if (data) return JSON.parse(data.slice(6)) as StatusSnapshot;
          continue;
        }
        const { value, done } = await reader.read();
        if (done) throw new Error('stream ended');
        buffer += value;
      }
    },
  };
}

test('the page and its files are open, typed, and carry a CSP that allows this origin only', async () => {
  const { app, base } = await start();
  try {
    for (const [path, type] of [['/', 'text/html'], ['/status-page/app.js', 'text/javascript'], ['/status-page/style.css', 'text/css']] as const) {
      const res = await fetch(base + path);
      assert.is(res.status, 200, path);
      assert.ok(res.headers.get('content-type')?.startsWith(type), `${path} is ${type}`);
      assert.match(res.headers.get('content-security-policy') ?? '', /default-src 'none'; script-src 'self'/);
      assert.ok((await res.text()).length > 100);
    }
    assert.is((await fetch(`${base}/`, { method: 'HEAD' })).status, 200);
    const post = await fetch(`${base}/status/events`, { method: 'POST', headers: AUTH });
    assert.is(post.status, 405);
    assert.is(post.headers.get('allow'), 'GET');
    // the page's HTML names no other origin
    const html = await (await fetch(`${base}/`)).text();
    assert.not.match(html, /https?:\/\//);
  } finally {
    await app.close();
  }
});

test('the stream needs API_KEY, sends a snapshot at once and every second, with the rates of the requests', async () => {
  const { app, base } = await start();
  try {
    const refused = await fetch(`${base}/status/events`);
    assert.is(refused.status, 401);
    assert.is(((await refused.json()) as { code: string }).code, 'UNAUTHORIZED');

    const ctl = new AbortController();
    const res = await fetch(`${base}/status/events`, { headers: AUTH, signal: ctl.signal });
    assert.is(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/event-stream/);
    const stream = events(res);
    const first = await stream.next();
    assert.equal(first.counters.map((c) => [c.id, c.ready, c.items, c.replicationLagSeconds]), [['c1', true, 3, 0.2]]);
    assert.ok(first.rates, 'rates with METRICS=on');
    assert.is(first.heartbeatMs, 2000);

    for (let i = 0; i < 5; i++) {
      const r = await fetch(`${base}/items`, { method: 'POST', headers: { ...AUTH, 'content-type': 'application/json' }, body: '{"id":"a","tenant":"t"}' });
      assert.is(r.status, 200);
    }
    assert.is((await fetch(`${base}/items/t/count`, { headers: AUTH })).status, 200);
    // the requests land in the second in progress; a later event carries them
    let writes = 0;
    let reads = 0;
    await waitFor(async () => {
      const s = await stream.next();
      writes = s.rates!.writes.reduce((a, b) => a + b, 0);
      reads = s.rates!.reads.reduce((a, b) => a + b, 0);
      return writes === 5 && reads === 1;
    }, 5000, 'the rates to show 5 writes and 1 read');
    ctl.abort();
  } finally {
    await app.close();
  }
});

test('METRICS=off: the stream still shows the counters, with no rates', async () => {
  const { app, base } = await start({ METRICS: 'off' });
  try {
    const ctl = new AbortController();
    const res = await fetch(`${base}/status/events`, { headers: AUTH, signal: ctl.signal });
    const s = await events(res).next();
    assert.is(s.rates, null);
    assert.is(s.counters.length, 1);
    ctl.abort();
  } finally {
    await app.close();
  }
});

test('viewers are bounded (503 TOO_MANY_VIEWERS), and closing the coordinator ends every stream', async () => {
  const { app, base } = await start();
  const ctl = new AbortController();
  const open: Response[] = [];
  for (let i = 0; i < 64; i++) open.push(await fetch(`${base}/status/events`, { headers: AUTH, signal: ctl.signal }));
  assert.ok(open.every((r) => r.status === 200));
  const refused = await fetch(`${base}/status/events`, { headers: AUTH });
  assert.is(refused.status, 503);
  assert.is(((await refused.json()) as { code: string }).code, 'TOO_MANY_VIEWERS');
  assert.is(refused.headers.get('retry-after'), '5');
  const first = events(open[0]!);
  await first.next();
  await app.close(); // would hang if a stream stayed open
  await first.next().then(
    () => assert.unreachable('the stream should have ended'),
    (err: Error) => assert.match(err.message, /stream ended|terminated/),
  );
  ctl.abort();
});

test.run();
