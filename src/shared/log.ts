import pino, { type Logger } from 'pino';

/** One root logger per process; modules take child loggers from it. */
export function createLogger(name: string, level: string): Logger {
  return pino({ name, level, base: { pid: process.pid } });
}
export type { Logger };
