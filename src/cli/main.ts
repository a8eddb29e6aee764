/**
 * `counter-mesh <command>`: up, coordinator, counter. (The chaos and bench tools live in tools/ and run on their own.)
 */
import { ConfigError, coordinatorConfig, counterConfig, launcherConfig, loadEnv } from '../shared/config.ts';
import { createLogger } from '../shared/log.ts';
import { HELP, commandHelp } from './help.ts';
import type { TlsFiles } from '../shared/tls.ts';
import type { Logger } from 'pino';

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
      return untilSignal(() => counter.close(), log);
    }
    case 'coordinator': {
      const config = coordinatorConfig(loadEnv(rest));
      const log = createLogger('coordinator', config.logLevel);
      const { Coordinator } = await import('../coordinator/server.ts');
      const coordinator = await Coordinator.start(config, log);
      reloadOnHangup(config.tls, log);
      return untilSignal(() => coordinator.close(), log);
    }
    case 'up': {
      const env = loadEnv(rest);
      const { runUp } = await import('./up.ts');
      return runUp(launcherConfig(env), env);
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

function untilSignal(close: () => Promise<void>, log: { info: (o: object, m: string) => void }): Promise<number> {
  return new Promise((resolve) => {
    const stop = (signal: string) => {
      log.info({ signal }, 'stopping');
      close().then(
        () => resolve(0),
        () => resolve(1),
      );
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: Error) => {
    if (err instanceof ConfigError || err.name === 'DataDirLockedError') {
      process.stderr.write(`counter-mesh: ${err.message}\n`);
    } else {
      process.stderr.write(`counter-mesh: ${err.stack ?? err.message}\n`);
    }
    process.exitCode = 2;
  },
);
