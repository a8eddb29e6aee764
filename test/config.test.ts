/**
 * Configuration: `.env.dist` and docker-compose.yml name exactly the settings the code reads,
 * and parsing (defaults, validation, flags, .env files) behaves as documented.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  ConfigError,
  SETTINGS,
  coordinatorConfig,
  counterConfig,
  launcherConfig,
  loadEnv,
  parseDotEnv,
  parseFlags,
  type Env,
} from '../src/shared/config.ts';
import { isLoopback } from '../src/shared/address.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const NO_FILE = path.join(os.tmpdir(), 'counter-mesh-no-such-env-file');
const settingNames = Object.keys(SETTINGS).sort();

function read(name: string): string {
  return fs.readFileSync(path.join(ROOT, name), 'utf8');
}

/** Runs `fn`, expects a ConfigError and returns its message. */
function configError(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.instance(err, ConfigError, `expected a ConfigError, got ${String(err)}`);
    return (err as Error).message;
  }
  assert.unreachable('expected a ConfigError');
  return '';
}

/**
 * The keys of every `environment:` block in a compose file, read with indentation rules only:
 * both the mapping form (`KEY: value`) and the list form (`- KEY=value`, `- KEY`) are understood.
 */
function composeEnvironmentKeys(yaml: string): string[] {
  const keys: string[] = [];
  let blockIndent = -1;
  for (const raw of yaml.split(/\r?\n/)) {
    if (/^\s*(#.*)?$/.test(raw)) continue;
    const indent = raw.length - raw.trimStart().length;
    if (blockIndent >= 0) {
      if (indent > blockIndent) {
        const m = /^\s*(?:-\s*)?["']?([A-Za-z_][A-Za-z0-9_]*)["']?\s*(?:[:=]|$)/.exec(raw);
        assert.ok(m, `cannot read environment line ${JSON.stringify(raw)}`);
        keys.push(m[1]!);
        continue;
      }
      blockIndent = -1;
    }
    if (/^\s*environment:\s*$/.test(raw)) blockIndent = indent;
  }
  return keys;
}

// ---------------------------------------------------------------- .env.dist and docker-compose.yml

test('.env.dist names every setting the code reads, and nothing else', () => {
  const dist = parseDotEnv(read('.env.dist'));
  const keys = Object.keys(dist).sort();
  const unknown = keys.filter((k) => !(k in SETTINGS));
  const missing = settingNames.filter((k) => !(k in dist));
  assert.equal(unknown, [], `.env.dist names settings the code does not read: ${unknown.join(', ')}`);
  assert.equal(missing, [], `.env.dist lacks settings the code reads: ${missing.join(', ')}`);
});

test('.env.dist shows the built-in defaults (except the secret, which it asks you to change)', () => {
  const dist = parseDotEnv(read('.env.dist'));
  for (const [name, value] of Object.entries(SETTINGS)) {
    if (name === 'CLUSTER_SECRET') continue;
    assert.is(dist[name], value, `${name} in .env.dist`);
  }
  assert.is(dist.HTTP_PORT, '8080');
  assert.ok(dist.CLUSTER_SECRET, 'CLUSTER_SECRET has a placeholder');
  assert.match(read('.env.dist'), /openssl rand -hex 32/);
});

test('.env.dist: every setting has a comment line right above it', () => {
  const lines = read('.env.dist').split(/\r?\n/);
  lines.forEach((line, i) => {
    if (!/^[A-Z_]+=/.test(line)) return;
    assert.match(lines[i - 1] ?? '', /^#/, `no comment above ${line}`);
  });
});

test('.env.dist is usable as is: every process type accepts it', () => {
  const dist = parseDotEnv(read('.env.dist'));
  coordinatorConfig(dist);
  counterConfig(dist);
  launcherConfig(dist);
});

test('docker-compose.yml sets only settings the code reads', () => {
  const keys = composeEnvironmentKeys(read('docker-compose.yml'));
  assert.ok(keys.length >= 20, `found only ${keys.length} environment keys; is the parser still right?`);
  const unknown = [...new Set(keys.filter((k) => !(k in SETTINGS)))];
  assert.equal(unknown, [], `docker-compose.yml sets unknown settings: ${unknown.join(', ')}`);
});

test('docker-compose.yml: each counter has its own volume, id, peers and advertised address', () => {
  const yaml = read('docker-compose.yml');
  for (const n of [1, 2, 3]) {
    const others = [1, 2, 3].filter((o) => o !== n).map((o) => `counter-${o}:9001`).join(',');
    assert.match(yaml, new RegExp(`^  counter-${n}:$`, 'm'));
    assert.match(yaml, new RegExp(`COUNTER_ID: counter-${n}$`, 'm'));
    assert.match(yaml, new RegExp(`PEERS: ${others}$`, 'm'));
    assert.match(yaml, new RegExp(`ADVERTISE_ADDRESS: counter-${n}:9001$`, 'm'));
    assert.match(yaml, new RegExp(`- counter-${n}-data:/data$`, 'm'));
  }
  assert.match(yaml, /COUNTERS: counter-1:9001,counter-2:9001,counter-3:9001$/m);
  assert.match(yaml, /"\$\{HTTP_PORT:-8080\}:8080"/);
  assert.is(yaml.match(/\$\{CLUSTER_SECRET:\?/g)?.length, 4, 'every service takes CLUSTER_SECRET from .env');
  assert.is(yaml.match(/^\s+ports:/gm)?.length, 1, 'only the coordinator publishes a port');
});

test('composeEnvironmentKeys reads both environment forms and stops at the block end', () => {
  const yaml = [
    'services:',
    '  a:',
    '    environment:',
    '      FOO: 1',
    '      "BAR": x',
    '    ports:',
    '      - "1:1"',
    '  b:',
    '    environment:',
    '      - BAZ=2',
    '',
    '      # a comment',
    '      - QUX',
    'volumes:',
  ].join('\n');
  assert.equal(composeEnvironmentKeys(yaml), ['FOO', 'BAR', 'BAZ', 'QUX']);
});

// ---------------------------------------------------------------- parsing

test('defaults: every process type starts from SETTINGS', () => {
  const coord = coordinatorConfig({});
  assert.is(coord.port, 8080);
  assert.is(coord.host, '127.0.0.1');
  assert.equal(coord.counters, [
    { host: '127.0.0.1', port: 9001 },
    { host: '127.0.0.1', port: 9002 },
    { host: '127.0.0.1', port: 9003 },
  ]);
  assert.is(coord.apiKey, '');
  assert.is(coord.bodyLimit, 1024 * 1024);
  assert.is(coord.maxBatch, 10_000);
  assert.is(coord.counterTimeoutMs, 3000);
  assert.is(coord.heartbeatMs, 2000);
  assert.is(coord.logLevel, 'info');

  const counter = counterConfig({});
  assert.is(counter.port, 9001);
  assert.is(counter.id, `${os.hostname()}:9001`);
  assert.equal(counter.peers, []);
  assert.is(counter.dataDir, './data');
  assert.is(counter.advertiseAddress, '127.0.0.1:9001');
  assert.is(counter.antiEntropyMs, 3000);
  assert.is(counter.compactBytes, 64 * 1024 * 1024);
  assert.is(counter.clusterSecret, '');

  const launcher = launcherConfig({});
  assert.is(launcher.counterCount, 3);
  assert.is(launcher.counterBasePort, 9001);
  assert.is(launcher.httpPort, 8080);
  assert.is(launcher.dataDir, './data');
});

test('parsed configurations are frozen', () => {
  assert.ok(Object.isFrozen(coordinatorConfig({})));
  assert.ok(Object.isFrozen(counterConfig({})));
  assert.ok(Object.isFrozen(launcherConfig({})));
});

test('values are read from the environment', () => {
  const c = counterConfig({ COUNTER_PORT: '9100', COUNTER_ID: 'c7', PEERS: 'a:1, b:2,,[::1]:3', ADVERTISE_ADDRESS: 'me:9100', CLUSTER_SECRET: 's' });
  assert.is(c.port, 9100);
  assert.is(c.id, 'c7');
  assert.equal(c.peers, [
    { host: 'a', port: 1 },
    { host: 'b', port: 2 },
    { host: '::1', port: 3 },
  ]);
  assert.is(c.advertiseAddress, 'me:9100');
  assert.is(c.clusterSecret, 's');
});

const BAD: [(env: Env) => unknown, Env, string][] = [
  [coordinatorConfig, { HTTP_PORT: 'abc' }, 'HTTP_PORT'],
  [coordinatorConfig, { HTTP_PORT: '65536' }, 'HTTP_PORT'],
  [coordinatorConfig, { HTTP_PORT: '-1' }, 'HTTP_PORT'],
  [coordinatorConfig, { HTTP_PORT: '80.5' }, 'HTTP_PORT'],
  [coordinatorConfig, { HEARTBEAT_MS: '0' }, 'HEARTBEAT_MS'],
  [coordinatorConfig, { COUNTERS: 'foo' }, 'COUNTERS'],
  [coordinatorConfig, { COUNTERS: '' }, 'COUNTERS'],
  [coordinatorConfig, { COUNTERS: 'a:1,b:0' }, 'COUNTERS'],
  [coordinatorConfig, { MAX_BATCH: '0' }, 'MAX_BATCH'],
  [coordinatorConfig, { BODY_LIMIT: '1e6' }, 'BODY_LIMIT'],
  [coordinatorConfig, { LOG_LEVEL: 'loud' }, 'LOG_LEVEL'],
  [counterConfig, { PEERS: 'nope' }, 'PEERS'],
  [counterConfig, { ADVERTISE_ADDRESS: 'no-port' }, 'ADVERTISE_ADDRESS'],
  [counterConfig, { ANTI_ENTROPY_MS: '60000' }, 'ANTI_ENTROPY_MS'],
  [counterConfig, { GOSSIP_DELAY_MS: '5000' }, 'GOSSIP_DELAY_MS'],
  [counterConfig, { COMPACT_BYTES: '10' }, 'COMPACT_BYTES'],
  [counterConfig, { RECONNECT_MAX_MS: 'soon' }, 'RECONNECT_MAX_MS'],
  [launcherConfig, { COUNTER_COUNT: '0' }, 'COUNTER_COUNT'],
  [launcherConfig, { COUNTER_COUNT: 'foo' }, 'COUNTER_COUNT'],
  [launcherConfig, { COUNTER_BASE_PORT: '0' }, 'COUNTER_BASE_PORT'],
];

test('a bad value throws a ConfigError naming the variable and the value', () => {
  for (const [parse, env, name] of BAD) {
    const message = configError(() => parse(env));
    assert.ok(message.startsWith(`${name}=`), `${JSON.stringify(env)}: ${message}`);
    assert.ok(message.includes(JSON.stringify(env[name])), `${JSON.stringify(env)}: the message shows the value: ${message}`);
  }
});

test('node ids longer than a hello may carry are refused at start; the defaults name host and port', () => {
  const long = 'x'.repeat(1025);
  assert.match(configError(() => counterConfig({ COUNTER_ID: long })), /^COUNTER_ID is 1025 characters long; use at most 1024/);
  assert.match(configError(() => coordinatorConfig({ COORDINATOR_ID: long })), /^COORDINATOR_ID is 1025 characters long; use at most 1024/);
  assert.is(coordinatorConfig({ COORDINATOR_ID: 'x'.repeat(1024) }).id.length, 1024);
  assert.is(coordinatorConfig({ HTTP_PORT: '8099' }).id, `${os.hostname()}:8099`);
});

test('whitespace around a number is accepted', () => {
  assert.is(coordinatorConfig({ HTTP_PORT: ' 8081 ' }).port, 8081);
});

test('the counter refuses a non-loopback HOST without CLUSTER_SECRET', () => {
  for (const host of ['0.0.0.0', '::', '10.1.2.3', 'counter-1']) {
    const message = configError(() => counterConfig({ HOST: host }));
    assert.match(message, /CLUSTER_SECRET/);
    assert.ok(message.includes(host), message);
  }
  assert.is(counterConfig({ HOST: '0.0.0.0', CLUSTER_SECRET: 'x' }).host, '0.0.0.0');
  for (const host of ['127.0.0.1', '127.0.0.12', 'localhost', '::1']) assert.is(counterConfig({ HOST: host }).host, host);
});

test('isLoopback', () => {
  for (const h of ['127.0.0.1', '127.1.2.3', 'localhost', '::1']) assert.ok(isLoopback(h), h);
  for (const h of ['0.0.0.0', '::', '10.0.0.1', '128.0.0.1', 'example.com', '127.0.0.1.example.com']) assert.not.ok(isLoopback(h), h);
});

test('a counter listening on all interfaces advertises its host name unless ADVERTISE_ADDRESS is set', () => {
  assert.is(counterConfig({ HOST: '0.0.0.0', CLUSTER_SECRET: 'x', COUNTER_PORT: '9005' }).advertiseAddress, `${os.hostname()}:9005`);
  assert.is(counterConfig({ HOST: '0.0.0.0', CLUSTER_SECRET: 'x', ADVERTISE_ADDRESS: 'counter-1:9001' }).advertiseAddress, 'counter-1:9001');
});

// ---------------------------------------------------------------- flags, .env and precedence

test('flags: --some-name value and --some-name=value set SOME_NAME', () => {
  assert.equal(parseFlags(['--http-port', '8081', '--counters=a:1,b:2', '--data-dir', './x']), {
    HTTP_PORT: '8081',
    COUNTERS: 'a:1,b:2',
    DATA_DIR: './x',
  });
  assert.equal(parseFlags(['--api-key=']), { API_KEY: '' }, 'an explicit empty value');
  assert.equal(parseFlags(['--help']), {}, '--help is not a setting');
  assert.equal(parseFlags(['positional', '--log-level', 'warn']), { LOG_LEVEL: 'warn' });
});

test('an unknown flag is rejected with its name', () => {
  const message = configError(() => parseFlags(['--http-prot', '8081']));
  assert.match(message, /--http-prot/);
  configError(() => loadEnv(['--bogus'], {}, NO_FILE));
});

test('flags override the environment, which overrides .env', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cm-config-'));
  try {
    const file = path.join(dir, '.env');
    fs.writeFileSync(file, 'HTTP_PORT=7000\nCOUNTERS=a:1\nLOG_LEVEL=warn\n');
    const env = loadEnv(['--http-port', '8081'], { HTTP_PORT: '8080', COUNTERS: 'b:2' }, file);
    assert.is(env.HTTP_PORT, '8081', 'flag beats environment and .env');
    assert.is(env.COUNTERS, 'b:2', 'environment beats .env');
    assert.is(env.LOG_LEVEL, 'warn', '.env fills in the rest');
    const config = coordinatorConfig(env);
    assert.is(config.port, 8081);
    assert.is(config.logLevel, 'warn');
    // an empty environment value still overrides .env
    assert.is(loadEnv([], { LOG_LEVEL: '' }, file).LOG_LEVEL, '');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a missing .env file is fine', () => {
  assert.equal(loadEnv([], { A: '1' }, NO_FILE), { A: '1' });
});

test('parseDotEnv: comments, blank lines, quotes, CRLF, = in values', () => {
  const text = [
    '# a comment',
    '',
    'A=1',
    '  B = two words  ',
    'C="quoted # not a comment"',
    "D='single'",
    'E=a=b=c',
    'F=',
    '=nokey',
    'no equals sign',
    'G="unbalanced',
    'H=x\r',
    '  # indented comment',
  ].join('\n');
  assert.equal(parseDotEnv(text), {
    A: '1',
    B: 'two words',
    C: 'quoted # not a comment',
    D: 'single',
    E: 'a=b=c',
    F: '',
    G: '"unbalanced',
    H: 'x',
  });
});

test('parseDotEnv reads trailing comments and export as docker compose does', () => {
  assert.equal(parseDotEnv('A=1 # note\nexport B=2\nC="x # y"\nD=a#b'), { A: '1', B: '2', C: 'x # y', D: 'a#b' });
});

test('BODY_LIMIT must fit in MAX_MESSAGE_BYTES, or a full batch could never reach a counter', () => {
  assert.throws(() => coordinatorConfig({ BODY_LIMIT: String(2 * 1024 * 1024), MAX_MESSAGE_BYTES: String(1024 * 1024) }), /BODY_LIMIT=.*MAX_MESSAGE_BYTES/);
});

test.run();
