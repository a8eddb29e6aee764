/**
 * Graceful shutdown (README "Operations / Shutdown"). In process: the coordinator's HTTP drain
 * step by step, and Counter.close. With real processes: SIGTERM on a coordinator and on each
 * counter in turn while clients post continuously (every request answered 200 or refused before it
 * was accepted, exit code 0, nothing acknowledged lost), and the bound SHUTDOWN_TIMEOUT_MS puts on
 * a request that never completes.
 */
import http from 'node:http';
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import pino from 'pino';
import WebSocket from 'ws';
import { Mesh, freePort, type ExitStatus, type MeshOptions } from './support/mesh.ts';
import { waitFor } from '../src/shared/wait.ts';
import { buildCoordinatorServer, type PoolApi } from '../src/coordinator/server.ts';
import { coordinatorConfig, counterConfig } from '../src/shared/config.ts';
import { closeWithin } from '../src/shared/http-shutdown.ts';
import { Counter } from '../src/counter/counter.ts';
import { CloseCode, MessageType, ReplyStatus, readMessage, writeAdd, writeHello, type Item, type Message } from '../src/protocol/messages.ts';

const silent = pino({ level: 'silent' });

async function withMesh(opts: MeshOptions, fn: (mesh: Mesh) => Promise<void>): Promise<void> {
  const mesh = await Mesh.start(opts);
  try {
    await fn(mesh);
  } finally {
    await mesh.close();
  }
}

// ---------------------------------------------------------------- raw HTTP connections

/** A client socket that keeps everything it received, and whether the server closed it. */
interface RawConn {
  socket: net.Socket;
  received: () => string;
  closed: () => boolean;
}

function connect(host: string, port: number): Promise<RawConn> {
  return new Promise((resolve, reject) => {
    let data = '';
    let closed = false;
    const socket = net.connect({ host, port }, () => resolve({ socket, received: () => data, closed: () => closed }));
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => {
      data += d;
    });
    socket.on('error', reject);
    socket.on('close', () => {
      closed = true;
    });
  });
}

function connectError(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port }, () => {
      s.destroy();
      resolve('connected');
    });
    s.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

function postHead(host: string, body: string, expectContinue: boolean): string {
  const expect = expectContinue ? 'Expect: 100-continue\r\n' : '';
  return `POST /items HTTP/1.1\r\nHost: ${host}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n${expect}\r\n`;
}

/** Status line and headers (lower-cased names) of the last complete response in `text`. */
function lastResponse(text: string): { status: number; headers: Record<string, string>; body: string } | null {
  const start = text.lastIndexOf('HTTP/1.1 ');
  if (start < 0) return null;
  const [head, body = ''] = text.slice(start).split('\r\n\r\n');
  const [statusLine, ...lines] = head!.split('\r\n');
  const headers: Record<string, string> = {};
  for (const l of lines) {
    const i = l.indexOf(':');
    headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
  }
  return { status: Number(statusLine!.split(' ')[1]), headers, body };
}

// ---------------------------------------------------------------- load

interface Target {
  host: string;
  port: number;
}

interface PostResult {
  /**
   * `ok` (200); `refused` (ECONNREFUSED: never accepted); `reset` (the connection closed before any
   * answer: a keep-alive connection closed as idle just as this request went out on it, or a new
   * connection caught in the listen queue as the listener closed); or a description of anything else.
   */
  outcome: string;
  /** The response said `Connection: close`. */
  close: boolean;
}

function post(target: Target, agent: http.Agent, item: Item): Promise<PostResult> {
  const body = JSON.stringify(item);
  return new Promise((resolve) => {
    const req = http.request(
      { ...target, path: '/items', method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } },
      (res) => {
        const close = res.headers.connection === 'close';
        res.resume();
        res.on('end', () => resolve({ outcome: res.statusCode === 200 ? 'ok' : `status ${res.statusCode}`, close }));
        res.on('close', () => {
          if (!res.complete) resolve({ outcome: 'response cut before its end', close });
        });
      },
    );
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ECONNREFUSED') resolve({ outcome: 'refused', close: false });
      // no answer at all: whether the server had read the request is for the count to tell (see the tests)
      else if (err.code === 'ECONNRESET' || err.code === 'EPIPE') resolve({ outcome: 'reset', close: false });
      else resolve({ outcome: `error ${err.code ?? err.message}`, close: false });
    });
    req.end(body);
  });
}

interface LoadStats {
  ok: number;
  refused: number;
  reset: number;
  /** Responses that said `Connection: close`. */
  closeHeaders: number;
  unexpected: string[];
}

/**
 * `clients` loops posting one fresh item each time, one connection per request or one keep-alive
 * connection per client. A client ends at its first refused connection (the listener is gone for
 * good) or when `stop()` is called.
 */
function startLoad(target: Target, opts: { clients: number; keepAlive: boolean; tenant: string; prefix: string }) {
  const stats: LoadStats = { ok: 0, refused: 0, reset: 0, closeHeaders: 0, unexpected: [] };
  let stopping = false;
  let seq = 0;
  const run = async (client: number) => {
    const agent = new http.Agent({ keepAlive: opts.keepAlive, maxSockets: 1 });
    try {
      while (!stopping) {
        const r = await post(target, agent, { tenant: opts.tenant, id: `${opts.prefix}${client}-${seq++}` });
        if (r.close) stats.closeHeaders++;
        if (r.outcome === 'ok') stats.ok++;
        else if (r.outcome === 'reset') stats.reset++;
        else if (r.outcome === 'refused') {
          stats.refused++;
          return;
        } else stats.unexpected.push(r.outcome);
      }
    } finally {
      agent.destroy();
    }
  };
  const running = Promise.all(Array.from({ length: opts.clients }, (_, c) => run(c)));
  let ended = false;
  void running.then(() => {
    ended = true;
  });
  return {
    stats,
    /** Resolves once every client has ended (at most 20 s). */
    ended: () => waitFor(() => ended, 20_000, 'the load clients to end'),
    stop: () => {
      stopping = true;
      return waitFor(() => ended, 20_000, 'the load clients to stop');
    },
  };
}

/** Sends the signal and waits (at most `timeoutMs`) for the exit. */
async function stopWith(proc: { stop(signal: NodeJS.Signals): Promise<ExitStatus | null>; tail(): string }, signal: NodeJS.Signals, timeoutMs: number): Promise<ExitStatus | null> {
  let exit: ExitStatus | null | undefined;
  void proc.stop(signal).then((e) => {
    exit = e;
  });
  await waitFor(() => exit !== undefined, timeoutMs, `exit after ${signal}\n${proc.tail()}`);
  return exit ?? null;
}

/** pino lines of a process with this message. */
function logLines(output: readonly string[], msg: string): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const line of output) {
    if (!line.includes(`"msg":"${msg}"`)) continue;
    out.push(JSON.parse(line) as Record<string, unknown>);
  }
  return out;
}

// ---------------------------------------------------------------- in process

/** A pool whose adds wait until the test releases them. */
class HeldPool implements PoolApi {
  anyUsable = true;
  readonly held: (() => void)[] = [];
  view() {
    return [];
  }
  replicas() {
    return [];
  }
  add(_items: readonly Item[]): Promise<void> {
    return new Promise((resolve) => this.held.push(resolve));
  }
  async count(): Promise<number> {
    return 0;
  }
}

test('coordinator HTTP drain: idle keep-alive closed at once, new connections refused, a request in progress answered with Connection: close, /ready 503', async () => {
  const pool = new HeldPool();
  const app = buildCoordinatorServer(coordinatorConfig({ LOG_LEVEL: 'silent' }), pool, silent);
  const serverSockets: net.Socket[] = [];
  app.server.on('connection', (s: net.Socket) => serverSockets.push(s));
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as net.AddressInfo;
  const host = '127.0.0.1';
  let closing: Promise<number> | null = null;
  try {
    // in progress: a POST waiting for the pool
    const inProgress = await connect(host, port);
    const body = JSON.stringify({ tenant: 't', id: 'a' });
    inProgress.socket.write(postHead(host, body, false) + body);
    await waitFor(() => pool.held.length === 1, 5_000, 'the POST to reach the pool');
    // half a request: the server has read the first bytes of /ready, not the end of its headers
    const half = await connect(host, port);
    const readyHead = `GET /ready HTTP/1.1\r\nHost: ${host}\r\n`;
    half.socket.write(readyHead);
    await waitFor(() => serverSockets.length === 2 && serverSockets[1]!.bytesRead >= readyHead.length, 5_000, 'the server to read the half request');
    // idle: one finished request on a keep-alive connection
    const idle = await connect(host, port);
    idle.socket.write(`GET /health HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
    await waitFor(() => lastResponse(idle.received())?.status === 200, 5_000, 'the /health answer');

    closing = closeWithin(app, 10_000);
    await waitFor(() => idle.closed(), 2_000, 'the idle keep-alive connection to be closed at once');
    assert.is(await connectError(host, port), 'ECONNREFUSED', 'no new connection is accepted');

    half.socket.write('\r\n');
    await waitFor(() => lastResponse(half.received())?.body.includes('}'), 5_000, 'the /ready answer');
    const ready = lastResponse(half.received())!;
    assert.is(ready.status, 503);
    assert.is((JSON.parse(ready.body) as { code: string }).code, 'SHUTTING_DOWN');
    assert.is(ready.headers.connection, 'close');

    assert.not.ok(inProgress.closed(), 'the request in progress keeps its connection');
    pool.held[0]!();
    await waitFor(() => lastResponse(inProgress.received())?.body.includes('}'), 5_000, 'the POST answer');
    const answer = lastResponse(inProgress.received())!;
    assert.is(answer.status, 200);
    assert.equal(JSON.parse(answer.body), { accepted: 1 });
    assert.is(answer.headers.connection, 'close', 'the client is told not to reuse the connection');
    assert.is(await closing, 0, 'nothing was cut: every request finished');
  } finally {
    for (const release of pool.held) release();
    await (closing ?? app.close());
  }
});

test('Counter.close detaches its document listeners, is idempotent and leaves the data on disk', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cm-close-'));
  const config = counterConfig({ LOG_LEVEL: 'silent', HOST: '127.0.0.1', COUNTER_PORT: '0', COUNTER_ID: 'solo', DATA_DIR: dir });
  try {
    const counter = await Counter.start(config, silent);
    assert.is(await counter.add([{ tenant: 't', id: 'x' }]), 1);
    // Y.Doc keeps its listeners per event name (lib0 ObservableV2); the shard's GSet and the
    // metrics add them for 'afterTransaction' (an 'update' one only while a GSet call captures)
    const doc = counter.shardDoc(counter.shardOf('t'))!;
    const listeners = (event: string) => (doc as unknown as { _observers: Map<string, Set<unknown>> })._observers.get(event)?.size ?? 0;
    const updateListeners = () => listeners('afterTransaction') + listeners('update');
    assert.ok(listeners('afterTransaction') >= 1, 'listeners attached while running');
    assert.is(listeners('update'), 0, 'no update listener between writes: Yjs would encode every transaction for it');
    const first = counter.close();
    assert.is(counter.close(), first, 'a second close returns the same promise');
    await first;
    assert.is(updateListeners(), 0, 'no listener left on the document');
    assert.not.ok(counter.ready);

    // the lock is released and the item is on disk
    const again = await Counter.start(config, silent);
    assert.is(again.count('t'), 1);
    await again.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a stopping counter tells its coordinators it is not ready, answers the add it had taken once it is fsynced, then closes', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cm-drain-'));
  const port = await freePort();
  const config = counterConfig({ LOG_LEVEL: 'silent', HOST: '127.0.0.1', COUNTER_PORT: String(port), COUNTER_ID: 'solo', DATA_DIR: dir });
  let ws: WebSocket | null = null;
  try {
    const counter = await Counter.start(config, silent);
    // the stop begins the moment the add is taken: it is in progress by construction
    let closing: Promise<void> | null = null;
    const add = counter.add.bind(counter);
    counter.add = (items) => {
      const taken = add(items);
      closing ??= counter.close();
      return taken;
    };
    const socket = new WebSocket(`ws://127.0.0.1:${port}/mesh`, { perMessageDeflate: false });
    ws = socket;
    const received: Message[] = [];
    let closeCode = 0;
    socket.on('message', (data: Buffer) => received.push(readMessage(new Uint8Array(data))));
    socket.on('close', (code) => {
      closeCode = code;
    });
    await new Promise((resolve, reject) => socket.once('open', resolve).once('error', reject));
    socket.send(writeHello({ role: 'coordinator', nodeId: 'test', address: '' }));
    socket.send(writeAdd(7, [{ tenant: 't', id: 'a' }, { tenant: 't', id: 'b' }]));
    await waitFor(() => closeCode !== 0, 10_000, 'the counter to close the connection');
    await closing;

    const replyAt = received.findIndex((m) => m.type === MessageType.Reply);
    const reply = received[replyAt];
    assert.ok(reply?.type === MessageType.Reply, 'the add was answered');
    assert.equal([reply.reqId, reply.status, reply.value], [7, ReplyStatus.Ok, 2]);
    const notReadyAt = received.findIndex((m) => m.type === MessageType.Status && !m.status.ready);
    assert.ok(notReadyAt >= 0 && notReadyAt < replyAt, 'not ready was announced before the answer');
    assert.is(closeCode, CloseCode.GoingAway);

    const again = await Counter.start(config, silent);
    assert.is(again.count('t'), 2, 'the answered items are on disk');
    await again.close();
  } finally {
    ws?.terminate();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------- real processes

test('SIGTERM on a coordinator under load: exit 0, every request answered 200 or refused before it was accepted, nothing acknowledged lost', () =>
  withMesh({ counters: 2, logLevel: 'info', env: { SHUTDOWN_TIMEOUT_MS: '5000' } }, async (mesh) => {
    const coord = mesh.coordinators[0]!;
    const target = { host: coord.host, port: coord.port };
    const fresh = startLoad(target, { clients: 4, keepAlive: false, tenant: 'drain', prefix: 'f' });
    const kept = startLoad(target, { clients: 4, keepAlive: true, tenant: 'drain', prefix: 'k' });
    await waitFor(() => fresh.stats.ok > 100 && kept.stats.ok > 100, 30_000, 'writes to flow');

    const t0 = Date.now();
    const exit = await stopWith(coord.process, 'SIGTERM', 10_000);
    const stopMs = Date.now() - t0;
    // every client ends at its first refused connection
    await fresh.ended();
    await kept.ended();

    assert.equal(exit, { code: 0, signal: null }, `coordinator exit\n${coord.process.tail()}`);
    assert.ok(stopMs < 5_000, `stopped in ${stopMs} ms`);
    const stats = JSON.stringify({ fresh: fresh.stats, kept: kept.stats });
    assert.equal(fresh.stats.unexpected, [], `one connection per request: 200, refused, or reset before any answer; ${stats}`);
    assert.equal(kept.stats.unexpected, [], `keep-alive: 200, refused, or reset before any answer; ${stats}`);
    assert.is(fresh.stats.refused, 4, 'each fresh-connection client met the closed listener');
    assert.equal(logLines(coord.process.output, 'stopped').length, 1, 'the coordinator logged its stop');
    assert.equal(logLines(coord.process.output, 'requests still open at SHUTDOWN_TIMEOUT_MS; their connections were cut'), [], 'nothing was cut');

    // Exactly the acknowledged items: none lost, and none of the reset requests was stored. The
    // coordinator stores a request before it answers and cuts nothing before the timeout, so a
    // reset request that was not stored had not been read: it failed before it was accepted.
    const acked = fresh.stats.ok + kept.stats.ok;
    await mesh.waitConverged(new Map([['drain', acked]]));
    await mesh.addCoordinator();
    await waitFor(async () => (await mesh.count('drain', 1)) === acked, 10_000, `a fresh coordinator to count ${acked}`);
  }));

test('SIGTERM on each counter in turn under load: exit 0, adds in progress answered, every request 200, nothing acknowledged lost', () =>
  withMesh({ counters: 3, logLevel: 'info' }, async (mesh) => {
    const coord = mesh.coordinators[0]!;
    const load = startLoad({ host: coord.host, port: coord.port }, { clients: 6, keepAlive: true, tenant: 'rolling', prefix: 'r' });
    try {
      for (const c of mesh.counters) {
        const before = load.stats.ok;
        await waitFor(() => load.stats.ok > before + 100, 30_000, 'writes to flow');
        const exit = await stopWith(c.process, 'SIGTERM', 15_000);
        assert.equal(exit, { code: 0, signal: null }, `${c.id} exit\n${c.process.tail()}`);
        await mesh.restartCounter(c);
        await mesh.waitReady();
      }
      const before = load.stats.ok;
      await waitFor(() => load.stats.ok > before + 100, 30_000, 'writes to flow after the last restart');
    } finally {
      await load.stop();
    }
    assert.equal(load.stats.unexpected, [], 'every request is answered 200 while counters stop one by one');
    assert.is(load.stats.refused + load.stats.reset, 0);
    // each counter stopped with every add it had taken answered (whether one was in progress at
    // that instant is timing; the in-process test above makes sure of that case)
    const stops = mesh.counters.flatMap((c) => logLines(c.process.output, 'stopping: answered the adds taken before the stop'));
    assert.is(stops.length, 3, 'each counter logged its stop');
    for (const s of stops) assert.is(s.unanswered, 0);

    const acked = load.stats.ok;
    await mesh.waitConverged(new Map([['rolling', acked]]));
    await mesh.addCoordinator();
    await waitFor(async () => (await mesh.count('rolling', 1)) === acked, 10_000, `a fresh coordinator to count ${acked}`);
  }));

test('a coordinator stopping answers a request whose body is still arriving, and cuts one never completed at SHUTDOWN_TIMEOUT_MS; exit 0', () =>
  withMesh({ counters: 1, logLevel: 'info', env: { SHUTDOWN_TIMEOUT_MS: '1500' } }, async (mesh) => {
    const { host, port, process: proc } = mesh.coordinators[0]!;
    const body = JSON.stringify({ tenant: 'slow', id: 'one' });
    // both requests are received (the server said 100 Continue after their headers), their bodies not yet
    const arriving = await connect(host, port);
    arriving.socket.write(postHead(host, body, true));
    const stuck = await connect(host, port);
    stuck.socket.write(postHead(host, body, true));
    await waitFor(() => arriving.received().startsWith('HTTP/1.1 100') && stuck.received().startsWith('HTTP/1.1 100'), 5_000, '100 Continue');

    const t0 = Date.now();
    let exit: ExitStatus | null | undefined;
    void proc.stop('SIGTERM').then((e) => {
      exit = e;
    });
    await waitFor(async () => (await connectError(host, port)) === 'ECONNREFUSED', 5_000, 'the listener to close');
    arriving.socket.write(body);
    await waitFor(() => lastResponse(arriving.received())?.body.includes('}'), 5_000, 'the answer to the arriving request');
    const answer = lastResponse(arriving.received())!;
    assert.is(answer.status, 200);
    assert.is(answer.headers.connection, 'close');

    await waitFor(() => exit !== undefined, 10_000, `exit\n${proc.tail()}`);
    const stopMs = Date.now() - t0;
    assert.equal(exit, { code: 0, signal: null }, proc.tail());
    assert.ok(stopMs >= 1_400 && stopMs < 4_500, `held by the stuck request until the timeout: ${stopMs} ms`);
    await waitFor(() => stuck.closed(), 2_000, 'the stuck connection to be cut');
    assert.not.match(stuck.received(), /HTTP\/1\.1 [2-5]\d\d/, 'the stuck request got no answer: it was cut');
    const cut = logLines(proc.output, 'requests still open at SHUTDOWN_TIMEOUT_MS; their connections were cut');
    assert.is(cut.length, 1);
    assert.is(cut[0]!.connections, 1);
  }));

test.run();
