/**
 * The benchmark's own mesh: coordinator and counters talking to each other directly (no proxies),
 * with the product's default settings, and the wait for a mesh to be formed.
 */
import path from 'node:path';
import { waitFor } from '../../src/shared/wait.ts';
import { SETTINGS } from '../../src/shared/config.ts';
import { freePort, httpsRequest, type SimpleResponse } from '../../test/support/mesh.ts';
import type { CertSet } from '../../test/support/certs.ts';
import { CounterEndpoint, NodeProc, servesPlaced } from './procs.ts';

/** What the figures need of a running mesh. */
export interface MeshHandle {
  url: string;
  counters: CounterEndpoint[];
  /** Coordinator first, then counters. */
  procs: { name: string; pid: () => number; startedAt: () => number; stop: (signal: NodeJS.Signals) => Promise<void> }[];
  /** Compactions the counters logged ("compacted log into snapshot"), as [counter, ms]; direct mesh only. */
  compactions: () => [string, number][];
  close(): Promise<void>;
}

/** Product defaults for timing settings (examples/lib/mesh.ts shortens them for tests). */
export function productEnv(): Record<string, string> {
  return {
    LOG_LEVEL: SETTINGS.LOG_LEVEL,
    HEARTBEAT_MS: SETTINGS.HEARTBEAT_MS,
    ANTI_ENTROPY_MS: SETTINGS.ANTI_ENTROPY_MS,
    RECONNECT_MAX_MS: SETTINGS.RECONNECT_MAX_MS,
    COUNTER_TIMEOUT_MS: SETTINGS.COUNTER_TIMEOUT_MS,
  };
}

/** GET for the bench's own checks: fetch, or https with the mesh's CA when it runs with TLS. */
function get(url: string, tls?: CertSet): Promise<SimpleResponse> {
  return tls ? httpsRequest(url, tls) : fetch(url);
}

/** Every counter sees all members and serves every shard placed on it; the coordinator sees all counters ready. */
export async function waitMeshFormed(url: string, counters: CounterEndpoint[], timeoutMs = 30_000, tls?: CertSet): Promise<void> {
  for (const c of counters) {
    await waitFor(async () => {
      const s = await c.status();
      return s.members.length >= counters.length && s.placed.length >= counters.length && servesPlaced(s);
    }, timeoutMs, `${c.address} to see ${counters.length} members and serve every shard placed on it`);
  }
  await waitFor(async () => {
    const res = await get(`${url}/counters`, tls);
    const list = (await res.json()) as { ready: boolean }[];
    return list.filter((x) => x.ready).length >= counters.length;
  }, timeoutMs, 'the coordinator to see every counter ready');
}

/**
 * Coordinator and counters talking to each other directly (no proxies): counter i on
 * 127.0.0.(10+i), the coordinator on 127.0.0.2, PEERS/COUNTERS set to the real addresses.
 */
/** One counter of a direct mesh. */
export interface DirectCounter {
  id: string;
  proc: NodeProc;
  ep: CounterEndpoint;
  dataDir: string;
}

/** A direct mesh: its counters' processes are the bench's own, to restart or to join more to. */
export interface DirectMesh extends MeshHandle {
  nodes: DirectCounter[];
  /** A new counter `id` on 127.0.0.(10+i) with PEERS = the mesh's counters; not started. */
  newCounter(id: string, i: number): Promise<DirectCounter>;
}

export async function startDirectMesh(root: string, secret: string, n: number, nodeArgs: (name: string) => string[] = () => [], tls?: CertSet, env: Record<string, string> = {}): Promise<DirectMesh> {
  const base = { ...productEnv(), CLUSTER_SECRET: secret, ...(tls ? { TLS_CERT: tls.cert, TLS_KEY: tls.key, TLS_CA: tls.ca } : {}), ...env };
  const nodes: { proc: NodeProc; ep: CounterEndpoint }[] = [];
  for (let i = 0; i < n; i++) {
    const host = `127.0.0.${10 + i}`;
    const port = await freePort(host);
    const proc = new NodeProc(`c${i}`, 'counter', {}, nodeArgs(`c${i}`));
    proc.watch = /compacted log into snapshot/;
    nodes.push({ proc, ep: new CounterEndpoint(host, port, secret, tls) });
  }
  for (const [i, { proc, ep }] of nodes.entries()) {
    proc.env = {
      ...base,
      HOST: ep.host,
      COUNTER_PORT: String(ep.port),
      COUNTER_ID: `c${i}`,
      DATA_DIR: path.join(root, `c${i}`),
      PEERS: nodes.filter((_, j) => j !== i).map((o) => o.ep.address).join(','),
    };
  }
  const coordHost = '127.0.0.2';
  const coordPort = await freePort(coordHost);
  const coordinator = new NodeProc('coordinator', 'coordinator', {
    ...base,
    HOST: coordHost,
    HTTP_PORT: String(coordPort),
    COUNTERS: nodes.map((x) => x.ep.address).join(','),
  }, nodeArgs('coordinator'));
  const all = [coordinator, ...nodes.map((x) => x.proc)];
  const handle: DirectMesh = {
    nodes: nodes.map(({ proc, ep }, i) => ({ id: `c${i}`, proc, ep, dataDir: path.join(root, `c${i}`) })),
    newCounter: async (id, i) => {
      const host = `127.0.0.${10 + i}`;
      const ep = new CounterEndpoint(host, await freePort(host), secret, tls);
      const proc = new NodeProc(id, 'counter', {
        ...base,
        HOST: host,
        COUNTER_PORT: String(ep.port),
        COUNTER_ID: id,
        DATA_DIR: path.join(root, id),
        PEERS: nodes.map((o) => o.ep.address).join(','),
      });
      proc.watch = /compacted log into snapshot/;
      all.push(proc);
      const c = { id, proc, ep, dataDir: path.join(root, id) };
      handle.nodes.push(c);
      return c;
    },
    url: `${tls ? 'https' : 'http'}://${coordHost}:${coordPort}`,
    counters: nodes.map((x) => x.ep),
    procs: all.map((p) => ({ name: p.name, pid: () => p.pid, startedAt: () => p.startedAt, stop: (s) => p.kill(s) })),
    compactions: () =>
      nodes.flatMap(({ proc }) =>
        proc.watched.map((line): [string, number] => {
          try {
            return [proc.name, Number((JSON.parse(line) as { ms?: number }).ms)];
          } catch {
            return [proc.name, NaN];
          }
        }),
      ),
    close: async () => {
      await Promise.all(all.map((p) => p.kill('SIGKILL')));
    },
  };
  try {
    for (const x of nodes) x.proc.start();
    coordinator.start();
    await waitFor(async () => (await get(`${handle.url}/health`, tls)).ok, 90_000, `coordinator health\n${coordinator.tail()}`);
    await waitMeshFormed(handle.url, handle.counters, 90_000, tls);
    return handle;
  } catch (err) {
    await handle.close();
    throw new Error(`${(err as Error).message}\n${all.map((p) => `--- ${p.name}\n${p.tail(10)}`).join('\n')}`);
  }
}
