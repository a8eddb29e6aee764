/**
 * `counter-mesh remove` and `counter-mesh leave` as a user runs them, against a fake coordinator
 * (a plain HTTP server on 127.0.0.1, port 0) that records what it is asked and answers what the
 * test scripts: argument errors, the DELETE with API_KEY as a Bearer token, the exit codes, and
 * leave's wait for the handoff (done, and timed out). Also over https with TLS_CA.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import http from 'node:http';
import https from 'node:https';
import fs from 'node:fs';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { SETTINGS } from '../src/shared/config.ts';
import { makeTestCerts, type TestCerts } from './support/certs.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const MAIN = path.join(ROOT, 'src', 'cli', 'main.ts');
/** Every setting at its default, so a developer's `.env` or exported variables change nothing here. */
const CLEAN_ENV: Record<string, string> = { ...(process.env as Record<string, string>), ...SETTINGS };

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(args: string[], env: Record<string, string> = {}, timeoutMs = 20_000): Promise<Run> {
  const proc = spawn(process.execPath, ['--import', 'tsx', MAIN, ...args], { cwd: ROOT, env: { ...CLEAN_ENV, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  proc.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`counter-mesh ${args.join(' ')} did not exit within ${timeoutMs} ms\n${stdout}\n${stderr}`));
    }, timeoutMs);
    proc.once('error', reject);
    proc.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

interface Asked {
  method: string;
  url: string;
  authorization: string | undefined;
}

type Script = (req: http.IncomingMessage, asked: Asked[]) => { status: number; body: unknown };

/** A coordinator that answers from `script` and records every request. */
async function fakeCoordinator(script: Script, tls?: TestCerts): Promise<{ url: string; asked: Asked[]; close(): Promise<void> }> {
  const asked: Asked[] = [];
  const handler = (req: http.IncomingMessage, res: http.ServerResponse) => {
    asked.push({ method: req.method!, url: req.url!, authorization: req.headers.authorization });
    const { status, body } = script(req, asked);
    res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  };
  const server = tls ? https.createServer({ cert: fs.readFileSync(tls.good.cert), key: fs.readFileSync(tls.good.key) }, handler) : http.createServer(handler);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `${tls ? 'https' : 'http'}://127.0.0.1:${port}`,
    asked,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

const error = (status: number, code: string, message: string) => ({ status, body: { statusCode: status, code, error: 'x', message } });

test('argument errors exit 2 with one line that says what is wrong', async () => {
  const cases: [string[], RegExp][] = [
    [['remove'], /remove needs exactly one counter id .* got 0/],
    [['remove', 'c1', 'c2'], /remove needs exactly one counter id .* got 2/],
    [['remove', 'c1', '--bogus'], /remove: Unknown option '--bogus'; run counter-mesh remove --help/],
    [['remove', 'c1', '--timeout', '5'], /remove: Unknown option '--timeout'/],
    [['leave', 'c1', '--timeout', 'soon'], /--timeout "soon" is not valid/],
    [['leave', 'c1', '--timeout', '0'], /--timeout "0" is not valid/],
    [['remove', 'c1', '--coordinator', 'not a url'], /--coordinator "not a url" is not a URL/],
    [['remove', 'c1', '--coordinator', 'ftp://127.0.0.1:1'], /use an http:\/\/ or https:\/\/ URL/],
    [['leave', 'c1', '--coordinator'], /leave: Option '--coordinator <value>' argument missing/],
  ];
  const runs = await Promise.all(cases.map(([args]) => run(args)));
  cases.forEach(([args, message], i) => {
    const r = runs[i]!;
    const what = `counter-mesh ${args.join(' ')}`;
    assert.is(r.code, 2, `${what}: exit code\n${r.stdout}${r.stderr}`);
    assert.match(r.stderr, message, what);
    assert.match(r.stderr, /^counter-mesh: [^\n]+\n$/, `${what}: one line, no stack: ${r.stderr}`);
    assert.is(r.stdout, '', what);
  });
});

test('remove --help and leave --help print their usage', async () => {
  const [remove, leave] = await Promise.all([run(['remove', '--help']), run(['leave', '-h'])]);
  assert.is(remove.code, 0);
  assert.ok(remove.stdout.startsWith('Usage: counter-mesh remove ID'), remove.stdout);
  assert.match(remove.stdout, /SIGTERM on a counter is a stop, not a removal/);
  assert.is(leave.code, 0);
  assert.ok(leave.stdout.startsWith('Usage: counter-mesh leave ID'), leave.stdout);
});

test('remove: DELETE /counters/ID (percent-encoded) with API_KEY as Bearer; prints the answer, exit 0 on 202', async () => {
  const fake = await fakeCoordinator((req) => ({ status: 202, body: { removed: decodeURIComponent(req.url!.split('/')[2]!) } }));
  try {
    const r = await run(['remove', 'counter 3/b', '--coordinator', fake.url], { API_KEY: 's3cret' });
    assert.is(r.code, 0, r.stderr);
    assert.equal(fake.asked, [{ method: 'DELETE', url: '/counters/counter%203%2Fb', authorization: 'Bearer s3cret' }]);
    assert.match(r.stdout, /^\{"removed":"counter 3\/b"\}\n/);
    // without API_KEY, no Authorization header
    const plain = await run(['remove', 'c3', '--coordinator', fake.url]);
    assert.is(plain.code, 0);
    assert.is(fake.asked[1]!.authorization, undefined);
  } finally {
    await fake.close();
  }
});

test('remove: a refusal exits 1 with the coordinator\'s code and message; an unreachable coordinator exits 1 saying so', async () => {
  const fake = await fakeCoordinator((req) =>
    req.url!.endsWith('/c9') ? error(404, 'UNKNOWN_COUNTER', 'no counter has "c9" as a member; members: c1, c2') : error(409, 'LAST_MEMBER', 'counter "c1" is the last member'),
  );
  const { url } = fake;
  try {
    const [unknown, last] = await Promise.all([run(['remove', 'c9', '--coordinator', url]), run(['remove', 'c1', '--coordinator', url])]);
    assert.is(unknown.code, 1);
    assert.match(unknown.stderr, /^counter-mesh: c9 was not removed: 404 UNKNOWN_COUNTER: no counter has "c9" as a member; members: c1, c2\n$/);
    assert.is(last.code, 1);
    assert.match(last.stderr, /409 LAST_MEMBER/);
  } finally {
    await fake.close();
  }
  // the same port, closed now
  const gone = await run(['remove', 'c1', '--coordinator', url]);
  assert.is(gone.code, 1);
  assert.match(gone.stderr, /cannot reach the coordinator at http:\/\/127\.0\.0\.1:\d+ \(ECONNREFUSED\)/);
});

/**
 * A coordinator through a handoff: c3 holds shards 2 and 5, then 5 only, then none while still
 * listed, then it is gone. Each GET /shards moves one step on.
 */
function handoff(): Script {
  const steps = [[2, 5], [5], [], []];
  let step = -1;
  return (req) => {
    if (req.method === 'DELETE') return { status: 202, body: { removed: 'c3' } };
    if (req.url === '/shards') {
      step = Math.min(step + 1, steps.length - 1);
      const holds = steps[step]!;
      const shards = [0, 1, 2, 3, 4, 5].map((shard) => ({ shard, replicas: [{ id: 'c1', inSync: true }], handingOff: holds.includes(shard) ? ['c3'] : [] }));
      return { status: 200, body: { shards, factor: 3, members: ['c1', 'c2', 'c4'], removed: ['c3'] } };
    }
    if (req.url === '/counters') return { status: 200, body: step < 3 ? [{ id: 'c1' }, { id: 'c3' }] : [{ id: 'c1' }] };
    return error(404, 'NOT_FOUND', 'no route');
  };
}

test('leave: removes, then waits until the counter holds no shard and is no longer listed; exit 0', async () => {
  const fake = await fakeCoordinator(handoff());
  try {
    const r = await run(['leave', 'c3', '--coordinator', fake.url, '--timeout', '30'], { API_KEY: 'k' });
    assert.is(r.code, 0, r.stderr);
    assert.equal(
      r.stdout.trim().split('\n'),
      [
        'c3 is removed from the mesh; waiting for it to hand off its shards (at most 30 s)',
        'c3 still holds 2 shards (2, 5)',
        'c3 still holds 1 shard (5)',
        'c3 holds no shard but is still listed by GET /counters (it has not exited yet)',
        'c3 has left the mesh',
      ],
    );
    assert.is(fake.asked[0]!.method, 'DELETE');
    assert.ok(fake.asked.every((a) => a.authorization === 'Bearer k'));
  } finally {
    await fake.close();
  }
});

test('leave: a removal answered 503 (no counter ready just now) is asked again until one takes it', async () => {
  const script = handoff();
  let refusals = 2;
  const fake = await fakeCoordinator((req, asked) => {
    if (req.method === 'DELETE' && refusals-- > 0) return error(503, 'NO_COUNTER', 'no counter is reachable and ready to take the removal; nothing was removed, retry later');
    return script(req, asked);
  });
  try {
    const r = await run(['leave', 'c3', '--coordinator', fake.url, '--timeout', '30']);
    assert.is(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split('\n');
    assert.match(lines[0]!, /^c3 is not removed yet: 503 NO_COUNTER: no counter is reachable .*; asking again until the timeout$/);
    assert.is(lines[1], 'c3 is removed from the mesh; waiting for it to hand off its shards (at most 30 s)');
    assert.is(lines.at(-1), 'c3 has left the mesh');
    assert.is(fake.asked.filter((a) => a.method === 'DELETE').length, 3, 'two refusals, then the removal');
  } finally {
    await fake.close();
  }
  // a 503 that lasts past the timeout ends the command with exit 1 and the coordinator's reason
  const busy = await fakeCoordinator(() => error(503, 'NO_COUNTER', 'no counter is reachable and ready to take the removal; nothing was removed, retry later'));
  try {
    const r = await run(['leave', 'c3', '--coordinator', busy.url, '--timeout', '1']);
    assert.is(r.code, 1);
    assert.match(r.stderr, /^counter-mesh: c3 was not removed: 503 NO_COUNTER/);
    assert.ok(busy.asked.length >= 2, `asked again before giving up (${busy.asked.length} requests)`);
  } finally {
    await busy.close();
  }
});

test('leave: a counter removed already is waited for too; one that never leaves times out with exit 1', async () => {
  const fake = await fakeCoordinator((req) => {
    if (req.method === 'DELETE') return error(404, 'ALREADY_REMOVED', 'counter "c3" was removed from the mesh already');
    if (req.url === '/shards') return { status: 200, body: { shards: [{ shard: 0, replicas: [], handingOff: ['c3'] }], factor: 3, members: [], removed: ['c3'] } };
    return { status: 200, body: [{ id: 'c3' }] };
  });
  try {
    const t0 = Date.now();
    const r = await run(['leave', 'c3', '--coordinator', fake.url, '--timeout', '1']);
    assert.is(r.code, 1, r.stdout);
    assert.ok(Date.now() - t0 >= 1000, 'waited the timeout');
    assert.match(r.stdout, /^c3 was removed already; waiting/);
    assert.match(r.stderr, /^counter-mesh: c3 has not left after 1 s: c3 still holds 1 shard \(0\)\. It stays removed .* run counter-mesh leave c3 again/);
    assert.ok(fake.asked.filter((a) => a.url === '/shards').length >= 2, 'polled');
  } finally {
    await fake.close();
  }
});

test('leave: a refusal of the removal or of the progress reads exits 1 at once', async () => {
  const fake = await fakeCoordinator((req) => (req.method === 'DELETE' ? { status: 202, body: { removed: 'c3' } } : error(401, 'UNAUTHORIZED', 'send Authorization: Bearer <API_KEY>')));
  try {
    const r = await run(['leave', 'c3', '--coordinator', fake.url]);
    assert.is(r.code, 1);
    assert.match(r.stderr, /GET \/shards answered 401 UNAUTHORIZED/);
  } finally {
    await fake.close();
  }
});

test('remove over https trusts TLS_CA', async () => {
  const certs = makeTestCerts();
  const fake = await fakeCoordinator(() => ({ status: 202, body: { removed: 'c3' } }), certs);
  try {
    const [trusted, untrusted] = await Promise.all([
      run(['remove', 'c3', '--coordinator', fake.url], { TLS_CA: certs.good.ca }),
      run(['remove', 'c3', '--coordinator', fake.url], { TLS_CA: certs.other.ca }),
    ]);
    assert.is(trusted.code, 0, trusted.stderr);
    assert.is(untrusted.code, 1);
    assert.match(untrusted.stderr, /cannot reach the coordinator at https:.*set TLS_CA to the CA that signed its certificate/);
  } finally {
    await fake.close();
    certs.close();
  }
});

test.run();
