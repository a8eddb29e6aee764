/**
 * Cluster and API authentication against real processes: WebSocket upgrades and internal HTTP
 * routes of a counter without, with a wrong and with the right CLUSTER_SECRET; a coordinator
 * started with API_KEY; and the config rule that a counter off loopback needs a secret.
 */
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import WebSocket from 'ws';
import { Mesh, MeshProcess, freePort, type CounterNode } from './support/mesh.ts';
import { waitFor } from '../src/shared/wait.ts';
import { ConfigError, counterConfig, coordinatorConfig } from '../src/shared/config.ts';
import { MessageType, readMessage, writeCount, writeHello, type Message } from '../src/protocol/messages.ts';

let mesh: Mesh;
let counter: CounterNode;
let keyed: { host: string; port: number; process: MeshProcess } | null = null;
const API_KEY = randomBytes(12).toString('hex');

test.before(async () => {
  mesh = await Mesh.start({ counters: 1 });
  counter = mesh.counters[0]!;
  // a second coordinator, with API_KEY (Mesh's own coordinator has none, so its readiness checks work)
  const host = '127.0.0.9';
  const port = await freePort(host);
  const proc = new MeshProcess('coordinator-keyed', 'coordinator', {
    ...mesh.baseEnv,
    HOST: host,
    HTTP_PORT: String(port),
    COUNTERS: mesh.counters.map((c) => c.proxy.address).join(','),
    API_KEY,
  });
  proc.start();
  keyed = { host, port, process: proc };
  await waitFor(async () => (await fetch(`http://${host}:${port}/ready`)).ok, 20_000, `keyed coordinator ready\n${proc.tail()}`);
});

test.after(async () => {
  await keyed?.process.kill('SIGKILL');
  await mesh?.close();
});

interface RawAnswer {
  status: number;
  head: string;
  /** Bytes after the header block (WebSocket frames, or a body). */
  rest: Buffer;
  /** The server closed the connection. */
  closed: boolean;
}

/**
 * A WebSocket upgrade written by hand, so the test sees exactly which bytes come back.
 * Resolves once the server closes, or `settleMs` after the header block arrived.
 */
function rawUpgrade(host: string, port: number, headers: Record<string, string>, path = '/mesh', settleMs = 300): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port });
    let buf = Buffer.alloc(0);
    let settle: NodeJS.Timeout | null = null;
    const deadline = setTimeout(() => finish(false), 5000);
    const finish = (closed: boolean) => {
      clearTimeout(deadline);
      if (settle) clearTimeout(settle);
      socket.destroy();
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return reject(new Error(`no HTTP answer (closed: ${closed}, got ${JSON.stringify(buf.toString('latin1'))})`));
      const head = buf.subarray(0, end).toString('latin1');
      resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0), head, rest: buf.subarray(end + 4), closed });
    };
    socket.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (!settle && buf.includes('\r\n\r\n')) settle = setTimeout(() => finish(false), settleMs);
    });
    socket.on('close', () => finish(true));
    socket.on('error', () => {});
    const lines = [
      `GET ${path} HTTP/1.1`,
      `Host: ${host}:${port}`,
      'Connection: Upgrade',
      'Upgrade: websocket',
      'Sec-WebSocket-Version: 13',
      `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}`,
      ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
    ];
    socket.write(`${lines.join('\r\n')}\r\n\r\n`);
  });
}

function wrongAuthHeaders(secret: string): [string, Record<string, string>][] {
  return [
    ['no header', {}],
    ['empty', { Authorization: '' }],
    ['scheme only', { Authorization: 'Bearer' }],
    ['wrong secret', { Authorization: `Bearer ${randomBytes(16).toString('hex')}` }],
    ['secret with a suffix', { Authorization: `Bearer ${secret}x` }],
    ['secret cut short', { Authorization: `Bearer ${secret.slice(0, -1)}` }],
    ['lowercase scheme', { Authorization: `bearer ${secret}` }],
    ['Basic scheme', { Authorization: `Basic ${Buffer.from(`mesh:${secret}`).toString('base64')}` }],
    ['bare secret', { Authorization: secret }],
    ['secret in the query', {}],
  ];
}

test('a counter refuses a WebSocket upgrade without the right secret: 401 and closed, no frame exchanged', async () => {
  for (const [what, headers] of wrongAuthHeaders(mesh.secret)) {
    const path = what === 'secret in the query' ? `/mesh?secret=${mesh.secret}` : '/mesh';
    const a = await rawUpgrade(counter.host, counter.port, headers, path);
    assert.is(a.status, 401, `${what}: ${a.head}`);
    assert.ok(a.closed, `${what}: the counter closes the connection`);
    assert.is(a.rest.length, 0, `${what}: nothing follows the 401`);
  }
  // through the counter's proxy (the address peers and coordinators use) too
  const viaProxy = await rawUpgrade(counter.proxy.host, counter.proxy.port, {});
  assert.is(viaProxy.status, 401);
  // and the ws client library sees the same
  const ws = new WebSocket(`ws://${counter.host}:${counter.port}/mesh`, { headers: { authorization: 'Bearer nope' } });
  const status = await new Promise<number>((resolve) => {
    ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
    ws.on('open', () => resolve(101));
    ws.on('error', () => resolve(-1));
  });
  ws.terminate();
  assert.is(status, 401);
});

test('an upgrade to another path is refused (404), with or without the secret', async () => {
  const variants: Record<string, string>[] = [{}, { Authorization: `Bearer ${mesh.secret}` }];
  for (const headers of variants) {
    const a = await rawUpgrade(counter.host, counter.port, headers, '/other');
    assert.is(a.status, 404);
    assert.ok(a.closed);
  }
});

test('with the right secret the upgrade works and a coordinator hello gets a hello and a status', async () => {
  const a = await rawUpgrade(counter.host, counter.port, { Authorization: `Bearer ${mesh.secret}` }, '/mesh', 200);
  assert.is(a.status, 101, a.head);
  assert.not.ok(a.closed, 'the counter keeps the socket open, waiting for a hello');
  assert.is(a.rest.length, 0, 'the counter says nothing before the hello');

  const ws = new WebSocket(`ws://${counter.host}:${counter.port}/mesh`, { headers: { authorization: `Bearer ${mesh.secret}` }, perMessageDeflate: false });
  const got: Message[] = [];
  ws.on('message', (data: Buffer) => got.push(readMessage(new Uint8Array(data))));
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  ws.send(writeHello({ role: 'coordinator', nodeId: 'auth-test', address: '' }));
  ws.send(writeCount(1, 'nobody'));
  await waitFor(() => got.some((m) => m.type === MessageType.Reply), 5000, 'a reply');
  assert.is(got[0]?.type, MessageType.Hello);
  assert.ok(got.some((m) => m.type === MessageType.Status));
  const reply = got.find((m) => m.type === MessageType.Reply);
  assert.equal(reply && reply.type === MessageType.Reply ? [reply.reqId, reply.value] : null, [1, 0]);
  ws.close();
});

test("a counter's internal HTTP routes need the secret; /health is open", async () => {
  const base = `http://${counter.host}:${counter.port}`;
  for (const path of ['/items/t/count', '/status', '/ready', '/items/%2Fetc%2Fpasswd/count', '/nope']) {
    for (const [what, headers] of wrongAuthHeaders(mesh.secret)) {
      const res = await fetch(base + path, { headers });
      const body = (await res.json()) as { message?: string };
      assert.is(res.status, 401, `${path} with ${what}`);
      assert.match(body.message ?? '', /CLUSTER_SECRET/);
    }
  }
  const ok = { authorization: `Bearer ${mesh.secret}` };
  assert.equal(await (await fetch(`${base}/items/t/count`, { headers: ok })).json(), { count: 0 });
  assert.is((await fetch(`${base}/ready`, { headers: ok })).status, 200);
  const status = (await (await fetch(`${base}/status`, { headers: ok })).json()) as { id: string };
  assert.is(status.id, counter.id);
  assert.is((await fetch(`${base}/health`)).status, 200, '/health needs no secret');
  assert.is((await fetch(`${base}/health`, { headers: { authorization: 'Bearer wrong' } })).status, 200);
});

test('a coordinator with API_KEY: 401 without the key and nothing changes; the key works; /health and /ready are open', async () => {
  const base = `http://${keyed!.host}:${keyed!.port}`;
  const tenant = `auth-${randomBytes(4).toString('hex')}`;
  const body = JSON.stringify([{ tenant, id: 'a' }, { tenant, id: 'b' }]);
  for (const [what, headers] of wrongAuthHeaders(API_KEY)) {
    const post = await fetch(`${base}/items`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body });
    assert.is(post.status, 401, `POST with ${what}`);
    assert.is(post.headers.get('www-authenticate'), 'Bearer');
    assert.match(((await post.json()) as { message: string }).message, /API_KEY/);
    const count = await fetch(`${base}/items/${tenant}/count`, { headers });
    assert.is(count.status, 401, `count with ${what}`);
    await count.arrayBuffer();
    const counters = await fetch(`${base}/counters`, { headers });
    assert.is(counters.status, 401, `/counters with ${what}`);
    await counters.arrayBuffer();
  }
  assert.is(await mesh.count(tenant), 0, 'the refused posts changed nothing (read through the open coordinator)');
  assert.is(await mesh.counterCount(counter, tenant), 0);
  assert.is((await fetch(`${base}/health`)).status, 200);
  assert.is((await fetch(`${base}/ready`)).status, 200);

  const auth = { authorization: `Bearer ${API_KEY}` };
  const post = await fetch(`${base}/items`, { method: 'POST', headers: { 'content-type': 'application/json', ...auth }, body });
  assert.is(post.status, 200);
  assert.equal(await (await fetch(`${base}/items/${tenant}/count`, { headers: auth })).json(), { count: 2 });
  assert.is(await mesh.counterCount(counter, tenant), 2);
});

test('counterConfig refuses a non-loopback HOST without CLUSTER_SECRET', () => {
  for (const host of ['0.0.0.0', '::', '10.0.0.5', '192.168.1.2', 'counter-1.internal', '::ffff:127.0.0.1']) {
    assert.throws(
      () => counterConfig({ HOST: host }),
      (e: Error) => e instanceof ConfigError && /CLUSTER_SECRET/.test(e.message),
      `HOST=${host} without a secret`,
    );
    assert.throws(() => counterConfig({ HOST: host, CLUSTER_SECRET: '' }), (e: Error) => e instanceof ConfigError);
    assert.is(counterConfig({ HOST: host, CLUSTER_SECRET: 's3cret' }).clusterSecret, 's3cret');
  }
  for (const host of ['127.0.0.1', '127.0.0.10', '::1', 'localhost']) {
    assert.is(counterConfig({ HOST: host }).host, host, `loopback ${host} needs no secret`);
  }
  assert.is(coordinatorConfig({}).apiKey, '', 'API_KEY is off by default');
});

test.run();
