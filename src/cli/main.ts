/**
 * `counter-mesh <command>`: up, coordinator, counter, and the operator's remove and leave. (The
 * chaos and bench tools live in tools/ and run on their own.)
 */
import { ConfigError, coordinatorConfig, counterConfig, launcherConfig, loadEnv } from '../shared/config.ts';
import { createLogger, type Logger } from '../shared/log.ts';
import { HELP, commandHelp } from './help.ts';
import type { TlsFiles } from '../shared/tls.ts';

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === '--help' || command === 'help' || command === '-h') {
    process.stdout.write(HELP);
    return command ? 0 : 1;
  }
  if ((rest.includes('--help') || rest.includes('-h'))) {
    const text = commandHelp(command);
    if (!text) throw new ConfigError(`unknown command "${command}"; run counter-mesh --help`);
    process.stdout.write(text);
    return 0;
  }
  switch (command) {
    case 'counter': {
      const config = counterConfig(loadEnv(rest));
      const log = createLogger(`counter ${config.id}`, config.logLevel);
      const { Counter } = await import('../counter/counter.ts');
      const counter = await Counter.start(config, log);
      reloadOnHangup(config.tls, log);
      // removed from the mesh (counter-mesh leave, or DELETE /counters/:id while it runs): once
      // every shard is handed off it stops by itself, with 0
      const left = counter.left.then(async () => {
        log.warn({ id: config.id }, 'removed from the mesh, every shard handed off: stopping. A removed COUNTER_ID is never placed again: to bring this machine back, start it with a new COUNTER_ID and an empty DATA_DIR');
        await counter.close();
        return 0;
      });
      return Promise.race([left, untilSignal(() => counter.close(), log, config.shutdownTimeoutMs)]);
    }
    case 'coordinator': {
      const config = coordinatorConfig(loadEnv(rest));
      const log = createLogger('coordinator', config.logLevel);
      const { Coordinator } = await import('../coordinator/server.ts');
      const coordinator = await Coordinator.start(config, log);
      reloadOnHangup(config.tls, log);
      return untilSignal(() => coordinator.close(), log, config.shutdownTimeoutMs);
    }
    case 'up': {
      const env = loadEnv(rest);
      const { runUp } = await import('./up.ts');
      return runUp(launcherConfig(env), env);
    }
    case 'remove':
    case 'leave': {
      // their flags are their own (--coordinator, --timeout), not settings: only API_KEY, TLS_CA and the like come from the environment
      const env = loadEnv([]);
      const { runLeave, runRemove } = await import('./membership.ts');
      return command === 'remove' ? runRemove(rest, env) : runLeave(rest, env);
    }
    default:
      throw new ConfigError(`unknown command "${command}"; run counter-mesh --help`);
  }
}

/**
 * SIGHUP re-reads TLS_CERT, TLS_KEY and TLS_CA: renewed certificates apply to new connections
 * without a restart. A file that cannot be used is logged and the old certificates stay.
 */
function reloadOnHangup(tls: TlsFiles | null, log: Logger): void {
  if (!tls) return;
  process.on('SIGHUP', () => {
    try {
      tls.reload();
      log.info({ cert: tls.paths.cert, ca: tls.paths.ca }, 'TLS certificates re-read (SIGHUP)');
    } catch (err) {
      log.error({ err: { message: (err as Error).message } }, 'TLS certificates not re-read; the previous ones stay in use');
    }
  });
}

/**
 * Resolves with the exit code once SIGINT or SIGTERM has stopped the process: 0 after a graceful
 * close (bounded by SHUTDOWN_TIMEOUT_MS inside `close`), 1 if closing failed. A repeated signal
 * does not cut the wait short (under `up`, Ctrl-C reaches a child as SIGINT and `up` then sends
 * SIGTERM); SIGKILL does.
 */
function untilSignal(close: () => Promise<void>, log: Logger, timeoutMs: number): Promise<number> {
  return new Promise((resolve) => {
    let stopping = false;
    const stop = (signal: NodeJS.Signals) => {
      if (stopping) {
        log.info({ signal }, 'already stopping');
        return;
      }
      stopping = true;
      const t0 = Date.now();
      log.info({ signal, timeoutMs }, 'stopping: no new connections; answering the requests already received');
      close().then(
        () => {
          log.info({ ms: Date.now() - t0 }, 'stopped');
          resolve(0);
        },
        (err: Error) => {
          log.error({ err }, 'could not stop cleanly');
          resolve(1);
        },
      );
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: Error) => {
    if (err instanceof ConfigError || err.name === 'DataDirLockedError' || err.name === 'UsageError') {
      process.stderr.write(`counter-mesh: ${err.message}\n`);
    } else {
      process.stderr.write(`counter-mesh: ${err.stack ?? err.message}\n`);
    }
    process.exitCode = 2;
  },
);
