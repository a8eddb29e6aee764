/**
 * `counter-mesh up`: the coordinator and COUNTER_COUNT counters as child processes, logs
 * interleaved with a name prefix, counters restarted a second after they die (like a container
 * restart policy), everything stopped on Ctrl-C / SIGTERM.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { Env, LauncherConfig } from '../shared/config.ts';

/** The command line's own entry point: it runs the build (dist/) while that is fresh, else the sources through tsx. */
const BIN = fileURLToPath(new URL('../../bin/counter-mesh.mjs', import.meta.url));
const RESTART_DELAY_MS = 1000;
/** A child that keeps dying right after start (bad setting, port taken) is retried ever more slowly. */
const MAX_RESTART_DELAY_MS = 30_000;
const STABLE_AFTER_MS = 10_000;
/** On stop, how long past the children's SHUTDOWN_TIMEOUT_MS `up` waits before it SIGKILLs them. */
const KILL_AFTER_TIMEOUT_MS = 5_000;

interface Child {
  name: string;
  env: Env;
  proc: ChildProcess | null;
  restart: boolean;
  delayMs: number;
  startedAt: number;
}

/** Spawns `counter-mesh <command>` under the same Node, with `env` on top of ours. */
export function spawnMeshProcess(command: string, env: Env, stdio: 'pipe' | 'inherit' | 'ignore' = 'pipe'): ChildProcess {
  return spawn(process.execPath, [BIN, command], {
    env: { ...process.env, ...env },
    stdio: ['ignore', stdio, stdio],
  });
}

export async function runUp(config: Readonly<LauncherConfig>, env: Env): Promise<number> {
  const secret = env.CLUSTER_SECRET || randomBytes(24).toString('base64url');
  if (!env.CLUSTER_SECRET) process.stdout.write('[up] no CLUSTER_SECRET set; generated a random one for this run\n');
  const ports = Array.from({ length: config.counterCount }, (_, i) => config.counterBasePort + i);
  const addresses = ports.map((p) => `${config.host === '0.0.0.0' ? '127.0.0.1' : config.host}:${p}`);
  const shared: Env = { ...env, CLUSTER_SECRET: secret, LOG_LEVEL: config.logLevel, HOST: config.host };
  const children: Child[] = ports.map((port, i) => ({
    name: `counter-${i + 1}`,
    restart: true,
    proc: null,
    delayMs: RESTART_DELAY_MS,
    startedAt: 0,
    env: {
      ...shared,
      COUNTER_PORT: String(port),
      COUNTER_ID: `counter-${i + 1}`,
      PEERS: addresses.filter((_, j) => j !== i).join(','),
      DATA_DIR: path.join(config.dataDir, `counter-${i + 1}`),
    },
  }));
  children.push({ name: 'coordinator', restart: true, proc: null, delayMs: RESTART_DELAY_MS, startedAt: 0, env: { ...shared, HTTP_PORT: String(config.httpPort), COUNTERS: addresses.join(',') } });

  let stopping = false;
  const start = (c: Child) => {
    const proc = spawnMeshProcess(c.name === 'coordinator' ? 'coordinator' : 'counter', c.env);
    c.proc = proc;
    c.startedAt = Date.now();
    const width = Math.max(...children.map((x) => x.name.length));
    for (const stream of [proc.stdout, proc.stderr]) {
      if (!stream) continue;
      readline.createInterface({ input: stream }).on('line', (line) => process.stdout.write(`${c.name.padEnd(width)} | ${line}\n`));
    }
    proc.on('exit', (code, signal) => {
      c.proc = null;
      if (stopping) return;
      const stable = Date.now() - c.startedAt > STABLE_AFTER_MS;
      const delay = stable ? RESTART_DELAY_MS : c.delayMs;
      c.delayMs = Math.min(MAX_RESTART_DELAY_MS, delay * 2);
      process.stdout.write(`[up] ${c.name} exited (${signal ?? code}); starting it again in ${delay} ms\n`);
      setTimeout(() => !stopping && start(c), delay);
    });
  };
  children.forEach(start);
  process.stdout.write(`[up] coordinator on http://${config.host}:${config.httpPort}, counters on ${addresses.join(', ')}\n`);

  return new Promise((resolve) => {
    const stop = (signal: NodeJS.Signals) => {
      if (stopping) return;
      stopping = true;
      process.stdout.write(`[up] ${signal}: stopping all processes\n`);
      const alive = children.filter((c) => c.proc);
      let left = alive.length;
      if (left === 0) resolve(0);
      for (const c of alive) {
        c.proc!.once('exit', () => --left === 0 && resolve(0));
        c.proc!.kill('SIGTERM');
      }
      // each child answers what it has received within SHUTDOWN_TIMEOUT_MS; one that hangs past that is killed
      setTimeout(() => {
        for (const c of children) c.proc?.kill('SIGKILL');
      }, config.shutdownTimeoutMs + KILL_AFTER_TIMEOUT_MS).unref();
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
}
