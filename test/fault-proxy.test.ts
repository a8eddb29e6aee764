import net from 'node:net';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { FaultProxy } from './support/fault-proxy.ts';

const A = '127.0.0.5';
const B = '127.0.0.6';
const DEADLINE_MS = 2000;

/** Rejects if `promise` does not settle within `ms`; never leaves a timer behind. */
async function within<T>(promise: Promise<T>, what: string, ms = DEADLINE_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Polls `predicate` (on short intervals) until true, failing after a deadline. */
async function waitFor(predicate: () => boolean, what: string, ms = DEADLINE_MS): Promise<void> {
  const end = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function closed(socket: net.Socket): Promise<void> {
  if (socket.closed) return Promise.resolve();
  return new Promise((resolve) => socket.once('close', () => resolve()));
}

/** Opens a client bound to `localAddress`; errors are recorded, never thrown. */
function dial(proxy: FaultProxy, localAddress: string): net.Socket {
  const socket = net.connect({ host: proxy.host, port: proxy.port, localAddress });
  socket.on('error', () => {});
  socket.setNoDelay(true);
  clients.add(socket);
  socket.once('close', () => clients.delete(socket));
  return socket;
}

async function connected(socket: net.Socket): Promise<net.Socket> {
  if (!socket.connecting && !socket.destroyed) return socket;
  await within(
    new Promise<void>((resolve, reject) => {
      socket.once('connect', () => resolve());
      socket.once('close', () => reject(new Error('closed before connect')));
    }),
    'connect',
  );
  return socket;
}

/** Collects data from `socket` until `n` bytes arrived. */
function read(socket: net.Socket, n: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    const onData = (chunk: Buffer): void => {
      got += chunk.toString('utf8');
      if (got.length >= n) {
        cleanup();
        resolve(got);
      }
    };
    const onClose = (): void => {
      cleanup();
      reject(new Error(`closed after ${got.length}/${n} bytes`));
    };
    const cleanup = (): void => {
      socket.off('data', onData);
      socket.off('close', onClose);
    };
    socket.on('data', onData);
    socket.on('close', onClose);
  });
}

/**
 * Writes `msg` and asserts that nothing comes back within `ms` while the socket
 * stays open. The bounded wait is itself the assertion (silence cannot be
 * awaited otherwise), not a synchronisation sleep.
 */
async function assertSilent(socket: net.Socket, msg: string, ms = 300): Promise<void> {
  let got = '';
  let closedEarly = false;
  const onData = (chunk: Buffer): void => {
    got += chunk.toString('utf8');
  };
  const onClose = (): void => {
    closedEarly = true;
  };
  socket.on('data', onData);
  socket.on('close', onClose);
  try {
    socket.write(msg);
    await new Promise((r) => setTimeout(r, ms));
  } finally {
    socket.off('data', onData);
    socket.off('close', onClose);
  }
  assert.is(got, '', 'no bytes should come back through a blackhole');
  assert.not.ok(closedEarly, 'a blackholed connection should stay open');
}

async function echo(socket: net.Socket, msg: string): Promise<string> {
  const reply = read(socket, msg.length);
  socket.write(msg);
  return within(reply, `echo of ${JSON.stringify(msg)}`);
}

// Shared fixtures: one echo server and one proxy in front of it.
let echoServer: net.Server;
const echoSockets = new Set<net.Socket>();
let proxy: FaultProxy;
const clients = new Set<net.Socket>();

test.before(async () => {
  echoServer = net.createServer((s) => {
    echoSockets.add(s);
    s.on('error', () => {});
    s.once('close', () => echoSockets.delete(s));
    s.pipe(s);
  });
  await new Promise<void>((resolve) => echoServer.listen(0, '127.0.0.1', resolve));
  const addr = echoServer.address() as net.AddressInfo;
  proxy = await FaultProxy.start({ listenHost: '127.0.0.1', listenPort: 0, targetHost: '127.0.0.1', targetPort: addr.port });
});

test.after.each(async () => {
  proxy.heal();
  for (const c of clients) c.destroy();
  await within(Promise.all([...clients].map(closed)), 'clients to close');
  await waitFor(() => proxy.connections === 0, 'proxy connections to drain');
});

test('address reports the actual listening port', () => {
  assert.ok(proxy.port > 0);
  assert.is(proxy.address, `127.0.0.1:${proxy.port}`);
});

test('echo works through the proxy', async () => {
  const a = await connected(dial(proxy, A));
  assert.is(await echo(a, 'hello'), 'hello');
  const big = 'x'.repeat(1 << 20);
  assert.is(await echo(a, big), big);
  assert.is(proxy.connections, 1);
});

test('reset cuts the matching source only, refuses new connections, heal restores', async () => {
  const a = await connected(dial(proxy, A));
  const b = await connected(dial(proxy, B));
  assert.is(await echo(a, 'a1'), 'a1');
  assert.is(await echo(b, 'b1'), 'b1');

  proxy.cut('reset', [A]);
  await within(closed(a), 'reset .5 connection to close');
  assert.is(await echo(b, 'b2'), 'b2');

  const a2 = dial(proxy, A);
  await within(closed(a2), 'new .5 connection to be reset');
  assert.is(await echo(b, 'b3'), 'b3');

  proxy.heal();
  const a3 = await connected(dial(proxy, A));
  assert.is(await echo(a3, 'a3'), 'a3');
  assert.is(await echo(b, 'b4'), 'b4');
});

test('blackhole keeps the connection open but drops bytes; heal destroys it', async () => {
  const a = await connected(dial(proxy, A));
  const b = await connected(dial(proxy, B));
  assert.is(await echo(b, 'b1'), 'b1');

  proxy.cut('blackhole', [B]);
  await assertSilent(b, 'b2');
  assert.not.ok(b.destroyed);
  assert.is(await echo(a, 'a1'), 'a1');

  // A connection opened during the blackhole is accepted but goes nowhere.
  const b2 = await connected(dial(proxy, B));
  await assertSilent(b2, 'c1');
  assert.not.ok(b2.destroyed);

  proxy.heal();
  await within(closed(b), 'corrupted .6 connection to be destroyed on heal');
  await within(closed(b2), '.6 connection opened during blackhole to be destroyed on heal');
  const b3 = await connected(dial(proxy, B));
  assert.is(await echo(b3, 'b3'), 'b3');
  assert.is(await echo(a, 'a2'), 'a2');
});

test('a blackholed connection that lost no bytes survives heal', async () => {
  const b = await connected(dial(proxy, B));
  proxy.cut('blackhole', [B]);
  proxy.heal();
  assert.is(await echo(b, 'ok'), 'ok');
});

test('several cuts at once; healFrom clears only the given sources', async () => {
  const b = await connected(dial(proxy, B));
  proxy.cut('reset', [A]);
  proxy.cut('blackhole', [B]);
  await within(closed(dial(proxy, A)), '.5 reset');

  proxy.healFrom([A]);
  const a = await connected(dial(proxy, A));
  assert.is(await echo(a, 'a1'), 'a1');
  await assertSilent(b, 'b1');
});

test('cut without sources applies to everyone; healFrom exempts some', async () => {
  const a = await connected(dial(proxy, A));
  const b = await connected(dial(proxy, B));
  proxy.cut('reset');
  await within(Promise.all([closed(a), closed(b)]), 'everyone reset');
  proxy.healFrom([B]);
  await within(closed(dial(proxy, A)), '.5 still reset');
  const b2 = await connected(dial(proxy, B));
  assert.is(await echo(b2, 'b'), 'b');
});

test('upstream connect failure closes the client', async () => {
  const probe = net.createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const deadPort = (probe.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  const dead = await FaultProxy.start({ listenHost: '127.0.0.1', targetHost: '127.0.0.1', targetPort: deadPort });
  try {
    await within(closed(dial(dead, A)), 'client of dead upstream to close');
    await waitFor(() => dead.connections === 0, 'dead proxy to drop the link');
  } finally {
    await dead.close();
  }
});

test('close() destroys every connection and leaves no open handles', async () => {
  const a = await connected(dial(proxy, A));
  const b = await connected(dial(proxy, B));
  proxy.cut('blackhole', [B]);
  assert.is(await echo(a, 'a'), 'a');
  await within(proxy.close(), 'proxy.close()');
  assert.is(proxy.connections, 0);
  await within(Promise.all([closed(a), closed(b)]), 'clients to close after proxy.close()');
  for (const s of echoSockets) s.destroy();
  await within(new Promise<void>((resolve) => echoServer.close(() => resolve())), 'echo server close');
  await waitFor(
    () => !process.getActiveResourcesInfo().some((r) => r.startsWith('TCP')),
    'TCP handles to be released',
  );
  // close() is idempotent.
  await proxy.close();
});

test.run();
