/**
 * Configuration: parsed and validated once at start into frozen objects.
 * Nothing else in the code base reads `process.env`.
 */
import fs from 'node:fs';
import os from 'node:os';
import { isLoopback, parseAddressList, type Address } from './address.ts';
import { MAX_WIRE_FIELD_CHARS } from './limits.ts';
import { TlsConfigError, TlsFiles } from './tls.ts';
import { MAX_LEVEL_NUMBER, parseLevel, type Level } from './levels.ts';
import { MAX_SHARDS } from '../protocol/messages.ts';

/** More replicas than an Add may ask acknowledgments of would make w=all unreachable. */
const MAX_REPLICATION_FACTOR = 64;

export class ConfigError extends Error {
  override name = 'ConfigError';
}

export type Env = Record<string, string | undefined>;

/** Every setting the code reads, with its default; `.env.dist` and docker-compose are tested against this list. */
export const SETTINGS = {
  LOG_LEVEL: 'info',
  HOST: '127.0.0.1',
  CLUSTER_SECRET: '',
  HEARTBEAT_MS: '2000',
  MAX_MESSAGE_BYTES: String(256 * 1024 * 1024),
  RECONNECT_MAX_MS: '1000',
  TLS_CERT: '',
  TLS_KEY: '',
  TLS_CA: '',
  TLS_CLIENT_AUTH: '',
  METRICS: 'on',
  SHUTDOWN_TIMEOUT_MS: '10000',
  // coordinator
  HTTP_PORT: '8080',
  COORDINATOR_ID: '',
  COUNTERS: '127.0.0.1:9001,127.0.0.1:9002,127.0.0.1:9003',
  API_KEY: '',
  BODY_LIMIT: String(1024 * 1024),
  MAX_BATCH: '10000',
  COUNTER_TIMEOUT_MS: '3000',
  DNS_REFRESH_MS: '10000',
  RATE_LIMIT_MAX: '0',
  RATE_LIMIT_WINDOW_MS: '1000',
  WRITE_QUORUM: 'one',
  READ_QUORUM: 'one',
  // counter
  COUNTER_PORT: '9001',
  COUNTER_ID: '',
  PEERS: '',
  DATA_DIR: './data',
  ADVERTISE_ADDRESS: '',
  ANTI_ENTROPY_MS: '3000',
  GOSSIP_DELAY_MS: '50',
  COMPACT_BYTES: String(64 * 1024 * 1024),
  SHARDS: '64',
  REPLICATION_FACTOR: '3',
  // local launcher
  COUNTER_COUNT: '3',
  COUNTER_BASE_PORT: '9001',
} as const;
export type SettingName = keyof typeof SETTINGS;


/**
 * The environment the process runs with: `.env` in the working directory (when present) under
 * the real environment, under `--flag value` / `--flag=value` options (`--http-port` sets HTTP_PORT).
 */
export function loadEnv(argv: readonly string[], env: Env = process.env, envFile = '.env'): Env {
  const merged: Env = {};
  if (fs.existsSync(envFile)) Object.assign(merged, parseDotEnv(fs.readFileSync(envFile, 'utf8')));
  for (const [k, v] of Object.entries(env)) if (v !== undefined) merged[k] = v;
  Object.assign(merged, parseFlags(argv));
  return merged;
}

export function parseDotEnv(text: string): Env {
  const out: Env = {};
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const eq = line.indexOf('=');
    if (eq < 1) continue;
    let value = line.slice(eq + 1).trim();
    if (/^(['"]).*\1$/.test(value)) value = value.slice(1, -1);
    else value = value.replace(/\s+#.*$/, '');
    out[line.slice(0, eq).trim().replace(/^export\s+/, '')] = value;
  }
  return out;
}

/** `--some-name value` and `--some-name=value` become SOME_NAME; unknown names are rejected later. */
export function parseFlags(argv: readonly string[]): Env {
  const out: Env = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('--') || arg === '--help') continue;
    const eq = arg.indexOf('=');
    const name = (eq > 0 ? arg.slice(2, eq) : arg.slice(2)).toUpperCase().replace(/-/g, '_');
    let value: string | undefined;
    if (eq > 0) value = arg.slice(eq + 1);
    else if (i + 1 < argv.length && !argv[i + 1]!.startsWith('--')) value = argv[++i];
    else value = 'true';
    if (!(name in SETTINGS)) throw new ConfigError(`unknown option --${name.toLowerCase().replace(/_/g, '-')}; run with --help for the list`);
    out[name] = value;
  }
  return out;
}

class Reader {
  constructor(private readonly env: Env) {}
  /** A node id, sent in every hello: the other side refuses one longer than the protocol allows. */
  id(name: 'COUNTER_ID' | 'COORDINATOR_ID', fallback: string): string {
    const v = this.str(name) || fallback;
    if (v.length > MAX_WIRE_FIELD_CHARS) throw new ConfigError(`${name} is ${v.length} characters long; use at most ${MAX_WIRE_FIELD_CHARS}`);
    return v;
  }

  str(name: SettingName): string {
    return this.env[name] ?? SETTINGS[name];
  }
  int(name: SettingName, min: number, max: number): number {
    const raw = this.str(name).trim();
    const n = Number(raw);
    if (!/^\d+$/.test(raw) || !Number.isSafeInteger(n) || n < min || n > max) {
      throw new ConfigError(`${name}=${JSON.stringify(raw)} is not valid: expected a whole number from ${min} to ${max}`);
    }
    return n;
  }
  port(name: SettingName): number {
    return this.int(name, 0, 65535);
  }
  addresses(name: SettingName, allowEmpty: boolean): Address[] {
    try {
      const list = parseAddressList(this.str(name));
      if (!allowEmpty && list.length === 0) throw new Error('at least one host:port is required');
      return list;
    } catch (err) {
      throw new ConfigError(`${name}=${JSON.stringify(this.str(name))} is not valid: ${(err as Error).message}`);
    }
  }
  /** `on` or `off`, nothing else: a typo must not silently pick one. */
  onOff(name: SettingName): boolean {
    const v = this.str(name).trim();
    if (v !== 'on' && v !== 'off') throw new ConfigError(`${name}=${JSON.stringify(v)} is not valid: use on or off`);
    return v === 'on';
  }
  level(name: 'WRITE_QUORUM' | 'READ_QUORUM'): Level {
    const raw = this.str(name).trim();
    const level = parseLevel(raw);
    if (level === null) throw new ConfigError(`${name}=${JSON.stringify(raw)} is not valid: use one, quorum, all or a whole number from 1 to ${MAX_LEVEL_NUMBER}`);
    return level;
  }
  logLevel(): string {
    const v = this.str('LOG_LEVEL');
    if (!['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].includes(v)) {
      throw new ConfigError(`LOG_LEVEL=${JSON.stringify(v)} is not valid: use fatal, error, warn, info, debug, trace or silent`);
    }
    return v;
  }
}

export interface CommonConfig {
  logLevel: string;
  host: string;
  /** The secret this process sends (the current one). */
  clusterSecret: string;
  /** Every secret this process accepts: the current one and, during a rotation, the previous one. */
  acceptedSecrets: readonly string[];
  /** The PEM files of TLS_CERT, TLS_KEY and TLS_CA, loaded; null when none is set. */
  tls: TlsFiles | null;
  heartbeatMs: number;
  maxMessageBytes: number;
  reconnectMaxMs: number;
  /** GET /metrics and the instrumentation behind it (and the status page's rate charts). */
  metrics: boolean;
  /** After SIGTERM, how long requests already received may take before their connections are cut. */
  shutdownTimeoutMs: number;
}

/** Upper bound of SHUTDOWN_TIMEOUT_MS: an orchestrator's grace period must cover it, and they count in minutes at most. */
const MAX_SHUTDOWN_TIMEOUT_MS = 600_000;

/**
 * `CLUSTER_SECRET=current` or, during a rotation, `CLUSTER_SECRET=current,previous`: the process
 * sends the current secret and accepts both, so processes can be restarted one at a time.
 */
function secrets(r: Reader): string[] {
  const raw = r.str('CLUSTER_SECRET');
  if (raw === '') return [];
  const parts = raw.split(',').map((s) => s.trim());
  if (parts.length > 2 || parts.some((s) => s === '')) {
    throw new ConfigError(
      'CLUSTER_SECRET is not valid: use one secret, or "current,previous" (two non-empty secrets separated by one comma) while rotating; a secret cannot contain a comma',
    );
  }
  return parts;
}

/** TLS_CLIENT_AUTH is read by counters only: the coordinator's public port never asks for client certificates. */
function tlsFiles(r: Reader, readClientAuth: boolean): TlsFiles | null {
  const paths = { cert: r.str('TLS_CERT'), key: r.str('TLS_KEY'), ca: r.str('TLS_CA') };
  const clientAuth = r.str('TLS_CLIENT_AUTH');
  if (clientAuth !== '' && clientAuth !== 'require') throw new ConfigError(`TLS_CLIENT_AUTH=${JSON.stringify(clientAuth)} is not valid: leave it empty or set it to require`);
  if (!paths.cert && !paths.key && !paths.ca) {
    if (clientAuth && readClientAuth) throw new ConfigError('TLS_CLIENT_AUTH=require needs TLS_CERT, TLS_KEY and TLS_CA');
    return null;
  }
  try {
    return new TlsFiles(paths, readClientAuth && clientAuth === 'require');
  } catch (err) {
    if (err instanceof TlsConfigError) throw new ConfigError(err.message);
    throw err;
  }
}

function common(r: Reader, readClientAuth: boolean): CommonConfig {
  const accepted = secrets(r);
  return {
    logLevel: r.logLevel(),
    host: r.str('HOST'),
    clusterSecret: accepted[0] ?? '',
    acceptedSecrets: accepted,
    tls: tlsFiles(r, readClientAuth),
    heartbeatMs: r.int('HEARTBEAT_MS', 100, 60_000),
    maxMessageBytes: r.int('MAX_MESSAGE_BYTES', 1024, 2 ** 31 - 1),
    reconnectMaxMs: r.int('RECONNECT_MAX_MS', 50, 60_000),
    metrics: r.onOff('METRICS'),
    shutdownTimeoutMs: r.int('SHUTDOWN_TIMEOUT_MS', 0, MAX_SHUTDOWN_TIMEOUT_MS),
  };
}


function requireSecretOffLoopback(c: CommonConfig, who: string): void {
  if (!c.clusterSecret && !isLoopback(c.host)) {
    throw new ConfigError(
      `CLUSTER_SECRET is empty but HOST=${c.host} is not loopback: without a secret anyone who can reach the ${who} ` +
        'could read and write counts. Set CLUSTER_SECRET to a long random string on every process of the mesh, or listen on 127.0.0.1.',
    );
  }
}

export interface CounterConfig extends CommonConfig {
  port: number;
  id: string;
  peers: Address[];
  dataDir: string;
  advertiseAddress: string;
  antiEntropyMs: number;
  gossipDelayMs: number;
  /** Log bytes (all shards together) past which shards compact their logs into snapshots. */
  compactBytes: number;
  /** The mesh's shard count: fixed when the mesh is created (DATA_DIR records it). */
  shards: number;
  /** Counters each shard is placed on. */
  replicationFactor: number;
}

export function counterConfig(env: Env): Readonly<CounterConfig> {
  const r = new Reader(env);
  const c = common(r, true);
  requireSecretOffLoopback(c, 'counter');
  if (c.tls && c.tls.listens !== c.tls.dials) {
    throw new ConfigError(
      'a counter both listens for and dials other counters: set TLS_CERT, TLS_KEY and TLS_CA together (or none), the same CA on every process of the mesh',
    );
  }
  const port = r.port('COUNTER_PORT');
  const advertised = r.str('ADVERTISE_ADDRESS');
  if (advertised) r.addresses('ADVERTISE_ADDRESS', false);
  return Object.freeze({
    ...c,
    port,
    id: r.id('COUNTER_ID', `${os.hostname()}:${port}`),
    peers: r.addresses('PEERS', true),
    dataDir: r.str('DATA_DIR'),
    advertiseAddress: advertised || `${c.host === '0.0.0.0' || c.host === '::' ? os.hostname() : c.host}:${port}`,
    antiEntropyMs: r.int('ANTI_ENTROPY_MS', 100, 5_000),
    gossipDelayMs: r.int('GOSSIP_DELAY_MS', 0, 1_000),
    compactBytes: r.int('COMPACT_BYTES', 64 * 1024, 2 ** 40),
    shards: r.int('SHARDS', 1, MAX_SHARDS),
    replicationFactor: r.int('REPLICATION_FACTOR', 1, MAX_REPLICATION_FACTOR),
  });
}

/**
 * An Add frame is never larger than the JSON body it came from (each character costs at least as
 * many bytes in JSON as in UTF-8, and lengths are shorter than the JSON punctuation), plus a header.
 */
const FRAME_HEADROOM_BYTES = 1024;

export interface CoordinatorConfig extends CommonConfig {
  port: number;
  /** Picks this coordinator's home counter; coordinators with different ids spread over the counters. */
  id: string;
  counters: Address[];
  apiKey: string;
  bodyLimit: number;
  maxBatch: number;
  counterTimeoutMs: number;
  dnsRefreshMs: number;
  /** Requests per client (address, or API key when API_KEY is set) per window; 0 turns rate limiting off. */
  rateLimitMax: number;
  rateLimitWindowMs: number;
  /** Default `w` of POST /items: replicas that must have the items on disk before the 200. */
  writeQuorum: Level;
  /** Default `r` of GET /items/:tenant/count: replicas whose counts the answer is taken from. */
  readQuorum: Level;
}

export function coordinatorConfig(env: Env): Readonly<CoordinatorConfig> {
  const r = new Reader(env);
  const c = common(r, false);
  const bodyLimit = r.int('BODY_LIMIT', 1024, 1024 * 1024 * 1024);
  if (bodyLimit + FRAME_HEADROOM_BYTES > c.maxMessageBytes) {
    throw new ConfigError(
      `BODY_LIMIT=${bodyLimit} does not fit in MAX_MESSAGE_BYTES=${c.maxMessageBytes}: a full batch could not be sent to a counter. ` +
        `Keep BODY_LIMIT at most MAX_MESSAGE_BYTES - ${FRAME_HEADROOM_BYTES} (and the same MAX_MESSAGE_BYTES on every process).`,
    );
  }
  const port = r.port('HTTP_PORT');
  return Object.freeze({
    ...c,
    port,
    id: r.id('COORDINATOR_ID', `${os.hostname()}:${port}`),
    counters: r.addresses('COUNTERS', false),
    apiKey: r.str('API_KEY'),
    bodyLimit,
    maxBatch: r.int('MAX_BATCH', 1, 1_000_000),
    counterTimeoutMs: r.int('COUNTER_TIMEOUT_MS', 50, 600_000),
    dnsRefreshMs: r.int('DNS_REFRESH_MS', 100, 3_600_000),
    rateLimitMax: r.int('RATE_LIMIT_MAX', 0, 1_000_000_000),
    rateLimitWindowMs: r.int('RATE_LIMIT_WINDOW_MS', 100, 3_600_000),
    writeQuorum: r.level('WRITE_QUORUM'),
    readQuorum: r.level('READ_QUORUM'),
  });
}

export interface LauncherConfig {
  logLevel: string;
  counterCount: number;
  counterBasePort: number;
  httpPort: number;
  host: string;
  dataDir: string;
  /** The children's SHUTDOWN_TIMEOUT_MS: `up` waits that long (and a little more) before it SIGKILLs them. */
  shutdownTimeoutMs: number;
}

export function launcherConfig(env: Env): Readonly<LauncherConfig> {
  const r = new Reader(env);
  return Object.freeze({
    logLevel: r.logLevel(),
    counterCount: r.int('COUNTER_COUNT', 1, 64),
    counterBasePort: r.int('COUNTER_BASE_PORT', 1, 65535),
    httpPort: r.port('HTTP_PORT'),
    host: r.str('HOST'),
    dataDir: r.str('DATA_DIR'),
    shutdownTimeoutMs: r.int('SHUTDOWN_TIMEOUT_MS', 0, MAX_SHUTDOWN_TIMEOUT_MS),
  });
}
