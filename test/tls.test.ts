/**
 * TLS on every socket, with real certificates made at test time (test/support/certs.ts): a TLS
 * mesh replicates and converges; plain HTTP to a TLS port gets a clear 400 at once; a counter
 * with a certificate from another CA is refused (and warned about once per address); with
 * TLS_CLIENT_AUTH=require a peer without a certificate is refused in the handshake, before its
 * bearer secret is looked at; SIGHUP re-reads the certificate files; bad TLS settings stop a
 * process at start with a message naming the setting.
 */
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Mesh, MeshProcess, freePort, httpsRequest } from './support/mesh.ts';
import { makeTestCerts, type TestCerts } from './support/certs.ts';
import { waitFor } from '../src/shared/wait.ts';
import { ConfigError, SETTINGS, coordinatorConfig, counterConfig } from '../src/shared/config.ts';
import { Counter } from '../src/counter/counter.ts';
import { parseAllDocuments } from 'yaml';
import pino from 'pino';
import { freePorts } from './support/ports.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const MAIN = path.join(ROOT, 'src', 'cli', 'main.ts');

let certs: TestCerts;
const meshes: Mesh[] = [];
const strays: MeshProcess[] = [];

test.before(() => {
  certs = makeTestCerts();
});
test.after(async () => {
  await Promise.all(strays.map((p) => p.kill('SIGKILL')));
  await Promise.all(meshes.map((m) => m.close()));
  certs?.close();
});

async function startMesh(opts: Parameters<typeof Mesh.start>[0]): Promise<Mesh> {
  const mesh = await Mesh.start(opts);
  meshes.push(mesh);
  return mesh;
}

function lines(p: MeshProcess, pattern: RegExp): string[] {
  return p.output.filter((l) => pattern.test(l));
}

/** Plain HTTP to a TLS port: the answer comes at once and says what to do. */
async function assertPlainHttpRefused(url: string): Promise<void> {
  const t0 = Date.now();
  const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
  const body = (await res.json()) as { code?: string; message?: string };
  assert.is(res.status, 400, `plain HTTP to ${url}`);
  assert.is(body.code, 'HTTPS_REQUIRED');
  assert.match(body.message ?? '', /https:\/\//);
  assert.ok(Date.now() - t0 < 2000, `answered in ${Date.now() - t0} ms`);
}

test('a TLS mesh replicates and converges; plain HTTP to its ports gets 400 HTTPS_REQUIRED at once', async () => {
  const mesh = await startMesh({ counters: 3, tls: certs.good });
  const expected = new Map([
    ['alpha', 40],
    ['beta', 1],
  ]);
  assert.is(await mesh.post(Array.from({ length: 40 }, (_, i) => ({ tenant: 'alpha', id: `a${i}` }))), 200);
  assert.is(await mesh.post({ tenant: 'beta', id: 'b0' }), 200);
  assert.is(await mesh.count('alpha'), 40, 'read your writes over HTTPS');
  await mesh.waitConverged(expected);

  const coord = mesh.coordinators[0]!;
  await assertPlainHttpRefused(`http://${coord.host}:${coord.port}/health`);
  const c = mesh.counters[1]!;
  await assertPlainHttpRefused(`http://${c.host}:${c.port}/health`);
  // the processes are still serving after the plain attempts
  assert.is(await mesh.count('beta'), 1);
});

test('a counter with a certificate from another CA is refused, and warns once per peer address', async () => {
  const mesh = await startMesh({ counters: 2, tls: certs.good });
  assert.is(await mesh.post({ tenant: 'gamma', id: 'g0' }), 200);
  await mesh.waitConverged(new Map([['gamma', 1]]));

  const host = '127.0.0.40';
  const port = await freePort(host);
  const stranger = new MeshProcess('stranger', 'counter', {
    ...mesh.baseEnv,
    TLS_CERT: certs.other.cert,
    TLS_KEY: certs.other.key,
    TLS_CA: certs.other.ca,
    HOST: host,
    COUNTER_PORT: String(port),
    COUNTER_ID: 'stranger',
    DATA_DIR: fs.mkdtempSync(path.join(certs.dir, 'stranger-')),
    PEERS: mesh.counters.map((c) => c.proxy.address).join(','),
  });
  strays.push(stranger);
  stranger.start();
  const warned = /TLS handshake with counter failed/;
  await waitFor(() => lines(stranger, warned).length >= mesh.counters.length, 15_000, `the stranger to warn about each peer\n${stranger.tail()}`);
  // the mesh side logs its refusal too
  await waitFor(() => mesh.counters.some((c) => lines(c.process, /refused a TLS connection/).length > 0), 10_000, `a mesh counter to log the refused handshake\n${mesh.counters.map((c) => c.process.tail(10)).join('\n')}`);
  // retries go on every RECONNECT_MAX_MS (400 ms); wait for two heartbeats' worth of them, then count the warnings
  await waitFor(async () => {
    const res = await httpsRequest(`https://${host}:${port}/ready`, certs.other, { headers: { authorization: `Bearer ${mesh.secret}` } }).catch(() => null);
    return res?.ok === true;
  }, 10_000, 'the stranger to give up waiting for a peer and report ready');
  for (const c of mesh.counters) {
    const about = lines(stranger, warned).filter((l) => l.includes(c.proxy.address));
    assert.is(about.length, 1, `one warning about ${c.proxy.address}, not one per retry:\n${about.join('\n')}`);
  }
  const res = await httpsRequest(`https://${host}:${port}/items/gamma/count`, certs.other, { headers: { authorization: `Bearer ${mesh.secret}` } });
  assert.equal(await res.json(), { count: 0 }, 'nothing replicated to the stranger');
  assert.is(lines(mesh.counters[0]!.process, /stranger/).length, 0, 'the stranger never became a member');
});

test('TLS_CLIENT_AUTH=require: a peer without a certificate from the CA is refused in the handshake, before its secret is read', async () => {
  const mesh = await startMesh({ counters: 2, tls: { ...certs.good, clientAuth: true } });
  assert.is(await mesh.post({ tenant: 'delta', id: 'd0' }), 200);
  await mesh.waitConverged(new Map([['delta', 1]]));
  const c = mesh.counters[0]!;
  const url = `https://${c.host}:${c.port}/ready`;
  const ca = fs.readFileSync(certs.good.ca);

  // with the right certificate: a wrong secret is a 401, the right one a 200
  assert.is((await httpsRequest(url, certs.good, { headers: { authorization: 'Bearer wrong' } })).status, 401);
  assert.is((await httpsRequest(url, certs.good, { headers: { authorization: `Bearer ${mesh.secret}` } })).status, 200);

  // without a client certificate, or with one from another CA: no HTTP answer at all, whatever the secret
  for (const [what, extra] of [
    ['no certificate', {}],
    ['another CA', { cert: fs.readFileSync(certs.other.cert), key: fs.readFileSync(certs.other.key) }],
  ] as const) {
    for (const secret of ['wrong', mesh.secret]) {
      const outcome = await new Promise<string>((resolve) => {
        const sock = tls.connect({ host: c.host, port: c.port, ca, ...extra }, () => {
          sock.write(`GET /ready HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${secret}\r\nConnection: close\r\n\r\n`);
        });
        let data = '';
        sock.on('data', (d: Buffer) => (data += d.toString()));
        sock.on('error', (err: Error & { code?: string }) => resolve(`error ${err.code ?? err.message}`));
        sock.on('close', () => resolve(data ? `answer ${data.split('\r\n')[0]}` : 'closed'));
        sock.setTimeout(5000, () => sock.destroy(new Error('timeout')));
      });
      assert.not.match(outcome, /^answer/, `${what}, secret ${secret === 'wrong' ? 'wrong' : 'right'}: got ${outcome}`);
      assert.not.match(outcome, /timeout/, `${what}: refused at once, not left hanging`);
    }
  }
  await waitFor(() => lines(c.process, /refused a TLS connection/).length > 0, 5000, 'the counter logs the refused handshake');
  assert.is(lines(c.process, /CLUSTER_SECRET/).length, 0, 'no secret was checked for the refused connections');
});

test('SIGHUP re-reads TLS_CERT and TLS_KEY: new connections get the renewed certificate', async () => {
  // copies, so overwriting them touches no other test
  const dir = fs.mkdtempSync(path.join(certs.dir, 'reload-'));
  const own = { ca: certs.good.ca, cert: path.join(dir, 'node.pem'), key: path.join(dir, 'node.key') };
  fs.copyFileSync(certs.good.cert, own.cert);
  fs.copyFileSync(certs.good.key, own.key);
  const mesh = await startMesh({ counters: 1, coordinators: 0, tls: own });
  const c = mesh.counters[0]!;
  const fingerprint = () =>
    new Promise<string>((resolve, reject) => {
      const sock = tls.connect({ host: c.host, port: c.port, ca: fs.readFileSync(own.ca), cert: fs.readFileSync(own.cert), key: fs.readFileSync(own.key) }, () => {
        resolve(sock.getPeerCertificate().fingerprint256);
        sock.destroy();
      });
      sock.once('error', reject);
    });
  const before = await fingerprint();
  const renewed = certs.renew('renewed');
  fs.copyFileSync(renewed.cert, own.cert);
  fs.copyFileSync(renewed.key, own.key);
  assert.is(await fingerprint(), before, 'nothing changes before the signal');
  c.process.proc!.kill('SIGHUP');
  await waitFor(async () => (await fingerprint()) !== before, 5000, 'the renewed certificate to be served');
  assert.ok(c.process.running, 'SIGHUP does not stop the process');
  assert.ok(await mesh.counterReady(c), 'still serving');

  // a broken file on SIGHUP keeps the current certificate and says so
  const current = await fingerprint();
  fs.writeFileSync(own.key, 'not a key');
  c.process.proc!.kill('SIGHUP');
  await waitFor(() => lines(c.process, /TLS certificates not re-read/).length > 0, 5000, 'the failed reload is logged');
  fs.copyFileSync(renewed.key, own.key);
  assert.is(await fingerprint(), current);
});

test('TLS settings are checked at start, with messages naming the setting', () => {
  const { cert, key, ca } = certs.good;
  const bad: [string, () => unknown, RegExp][] = [
    ['cert without key', () => coordinatorConfig({ TLS_CERT: cert }), /TLS_CERT and TLS_KEY go together/],
    ['missing file', () => coordinatorConfig({ TLS_CERT: `${cert}.nope`, TLS_KEY: key }), /TLS_CERT=.*cannot be read \(ENOENT\)/],
    ['not PEM', () => coordinatorConfig({ TLS_CA: path.join(certs.dir, 'node.ext') }), /TLS_CA=.* is not a PEM file/],
    ['key of another certificate', () => coordinatorConfig({ TLS_CERT: cert, TLS_KEY: certs.other.key }), /key belongs to the certificate/],
    ['counter listening without a CA', () => counterConfig({ TLS_CERT: cert, TLS_KEY: key }), /TLS_CERT, TLS_KEY and TLS_CA together/],
    ['counter with a CA only', () => counterConfig({ TLS_CA: ca }), /TLS_CERT, TLS_KEY and TLS_CA together/],
    ['client auth value', () => counterConfig({ TLS_CERT: cert, TLS_KEY: key, TLS_CA: ca, TLS_CLIENT_AUTH: 'yes' }), /TLS_CLIENT_AUTH="yes" is not valid/],
    ['client auth without TLS', () => counterConfig({ TLS_CLIENT_AUTH: 'require' }), /TLS_CLIENT_AUTH=require needs/],
  ];
  for (const [what, make, message] of bad) {
    assert.throws(make, (e: Error) => e instanceof ConfigError && message.test(e.message), what);
  }
  const coord = coordinatorConfig({ TLS_CA: ca });
  assert.ok(coord.tls?.dials && !coord.tls.listens, 'a coordinator may dial over TLS and serve plain HTTP');
  const counter = counterConfig({ TLS_CERT: cert, TLS_KEY: key, TLS_CA: ca, TLS_CLIENT_AUTH: 'require' });
  assert.ok(counter.tls?.listens && counter.tls.dials && counter.tls.requireClientCert);
  assert.is(counterConfig({}).tls, null, 'no TLS by default');
});

test('the Kubernetes readiness command works over TLS with client certificates and mid-rotation (current,previous)', async () => {
  const docs = parseAllDocuments(fs.readFileSync(path.join(ROOT, 'deploy', 'kubernetes', 'counters.yaml'), 'utf8')).map((d) => d.toJS() as Record<string, unknown>);
  const set = docs.find((d) => d.kind === 'StatefulSet') as { spec: { template: { spec: { containers: { readinessProbe: { exec: { command: string[] } } }[] } } } };
  const command = set.spec.template.spec.containers[0]!.readinessProbe.exec.command;
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(certs.dir, 'probe-'));
  const tlsEnv = { TLS_CERT: certs.good.cert, TLS_KEY: certs.good.key, TLS_CA: certs.good.ca };
  const config = counterConfig({ ...tlsEnv, TLS_CLIENT_AUTH: 'require', CLUSTER_SECRET: 'n3w,0ld', HOST: '127.0.0.1', COUNTER_PORT: String(port), DATA_DIR: dir, LOG_LEVEL: 'silent' });
  const counter = await Counter.start(config, pino({ level: 'silent' }));
  const probe = (env: Record<string, string>) =>
    new Promise<number | null>((resolve, reject) => {
      const child = spawn(process.execPath, command.slice(1).map((a) => a.replace(':9001/', `:${port}/`)), { env: { PATH: process.env.PATH ?? '', ...env }, stdio: 'ignore' });
      child.once('error', reject);
      child.once('exit', (code) => resolve(code));
    });
  try {
    assert.is(await probe({ ...tlsEnv, CLUSTER_SECRET: 'n3w,0ld' }), 0, 'ready, sending the current secret of the pair');
    assert.is(await probe({ ...tlsEnv, CLUSTER_SECRET: 'other' }), 1, 'refused with a wrong secret');
    assert.is(await probe({ CLUSTER_SECRET: 'n3w,0ld' }), 1, 'plain HTTP to the TLS port is not ready');
  } finally {
    await counter.close();
  }
});


test('the README TLS quick start works as written: its openssl commands, its settings for npm start, its curl commands', async () => {
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const at = readme.indexOf('### With TLS');
  assert.ok(at > 0, 'the README has a "With TLS" quick start');
  const section = readme.slice(at, readme.indexOf('\n## ', at));
  const blocks = [...section.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!);
  assert.is(blocks.length, 3, 'certificates, start, curl');
  const dir = fs.mkdtempSync(path.join(certs.dir, 'readme-'));

  // 1. the certificates, made by the README's own commands
  execFileSync('bash', ['-e', '-c', blocks[0]!], { cwd: dir, stdio: 'pipe' });
  // 2. `VAR=value ... npm start`: npm start is `counter-mesh up`, run here on free ports
  const start = blocks[1]!.trim();
  assert.match(start, /^(\w+=\S+ )+npm start$/);
  const settings = Object.fromEntries([...start.matchAll(/(\w+)=(\S+)/g)].map((m) => [m[1]!, path.resolve(dir, m[2]!)]));
  assert.equal(Object.keys(settings).sort(), ['TLS_CA', 'TLS_CERT', 'TLS_KEY']);
  const httpPort = await freePorts(1);
  const basePort = await freePorts(3);
  const up = spawn(process.execPath, ['--import', 'tsx', MAIN, 'up'], {
    cwd: ROOT,
    env: { ...(process.env as Record<string, string>), ...SETTINGS, ...settings, HTTP_PORT: String(httpPort), COUNTER_BASE_PORT: String(basePort), DATA_DIR: path.join(dir, 'data'), LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output: string[] = [];
  up.stdout.on('data', (d: Buffer) => output.push(d.toString()));
  up.stderr.on('data', (d: Buffer) => output.push(d.toString()));
  const exited = new Promise<void>((r) => up.once('exit', () => r()));
  try {
    const own = { ca: settings.TLS_CA!, cert: settings.TLS_CERT!, key: settings.TLS_KEY! };
    const api = `https://127.0.0.1:${httpPort}`;
    // every counter ready, so the home counter does not change between the write and the read
    await waitFor(async () => {
      const res = await httpsRequest(`${api}/counters`, own).catch(() => null);
      return res?.ok === true && ((await res.json()) as { ready: boolean }[]).filter((c) => c.ready).length === 3;
    }, 30_000, `the mesh started by up to be ready\n${output.join('').slice(-2000)}`);

    // 3. each curl command, its expected output in the comment line under it
    const commands: { cmd: string; expected: string }[] = [];
    let pending = '';
    for (const line of blocks[2]!.split('\n')) {
      if (pending || line.startsWith('curl ')) {
        pending += line.replace(/\\$/, ' ');
        if (!line.endsWith('\\')) {
          commands.push({ cmd: pending, expected: '' });
          pending = '';
        }
      } else if (line.startsWith('# {') && commands.length > 0) {
        commands.at(-1)!.expected = line.slice(2);
      }
    }
    assert.ok(commands.length >= 3 && commands.every((c) => c.expected), `every curl command shows its output: ${JSON.stringify(commands)}`);
    for (const { cmd, expected } of commands) {
      assert.match(cmd, /127\.0\.0\.1:8080/);
      const out = execFileSync('bash', ['-c', cmd.replaceAll('127.0.0.1:8080', `127.0.0.1:${httpPort}`)], { cwd: dir, encoding: 'utf8', timeout: 10_000 });
      assert.is(out.trim(), expected, cmd);
    }
  } finally {
    up.kill('SIGTERM');
    await waitFor(() => up.exitCode !== null || up.signalCode !== null, 15_000, 'up to stop its children and exit').catch(() => up.kill('SIGKILL'));
    await exited;
  }
});

test.run();
