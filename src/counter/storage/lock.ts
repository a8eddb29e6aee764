/**
 * The lock of a counter's DATA_DIR: a Unix domain socket, `counter.lock`, listened on by the
 * running counter. A socket rather than a lock file because the kernel tells a live holder from a
 * dead one: a socket left by a killed process refuses connections, so a stale lock is detected
 * without pids or timestamps.
 *
 * The lock belongs to the directory, not to a log store: a counter takes it once, then opens as
 * many log stores (one per subdirectory) as it needs.
 */
import { once } from 'node:events';
import { mkdir, unlink } from 'node:fs/promises';
import { createConnection, createServer, type Server } from 'node:net';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { DIR_MODE, errorCode, ignoreCode } from './files.ts';

const LOCK_NAME = 'counter.lock';
// sun_path holds 108 bytes on Linux and 104 on macOS, NUL included; stay
// below both so the same DATA_DIR works everywhere.
const MAX_LOCK_PATH_BYTES = 100;
// The kernel completes a connect to a listening socket without the holder's
// help, so a slow answer means something odd rather than a dead holder.
const LOCK_PROBE_TIMEOUT_MS = 3000;
// Bounded: another process may be racing us through the stale-socket path.
const MAX_STALE_RETRIES = 3;

/** Thrown by {@link DataDirLock.acquire} when another live process holds the directory's lock. */
export class DataDirLockedError extends Error {
  override readonly name = 'DataDirLockedError';
  readonly code = 'DATA_DIR_LOCKED';
}

/** A held DATA_DIR lock; {@link close} releases it. */
export class DataDirLock {
  private closing: Promise<void> | null = null;

  private constructor(
    /** Path of the lock socket. */
    readonly path: string,
    private readonly server: Server,
  ) {}

  /**
   * Create `dir` if missing (mode 0700) and take its lock. A socket left by a holder that died is
   * removed (with a warning) and taken over.
   *
   * @throws {@link DataDirLockedError} if a live process holds the lock.
   * @throws Error if the lock path is too long for a Unix socket (the message says to shorten DATA_DIR).
   */
  static async acquire(dir: string, log: Logger): Promise<DataDirLock> {
    const path = join(dir, LOCK_NAME);
    const pathBytes = Buffer.byteLength(path);
    if (pathBytes > MAX_LOCK_PATH_BYTES) {
      throw new Error(
        `DATA_DIR ${dir} is too long for its lock socket: ${path} is ${pathBytes} bytes, ` +
          `Unix socket paths must stay under ${MAX_LOCK_PATH_BYTES}; use a shorter DATA_DIR`,
      );
    }
    await mkdir(dir, { recursive: true, mode: DIR_MODE });
    for (let attempt = 0; ; attempt++) {
      const server = createServer((socket) => socket.destroy());
      try {
        await listen(server, path);
        // The lock must not keep the process alive on its own.
        server.unref();
        return new DataDirLock(path, server);
      } catch (err) {
        if (errorCode(err) !== 'EADDRINUSE' || attempt >= MAX_STALE_RETRIES) throw err;
      }
      if (await lockAnswers(path)) {
        throw new DataDirLockedError(
          `DATA_DIR ${dir} is in use by another running counter (lock socket ${path} answers); give each counter its own DATA_DIR`,
        );
      }
      // The holder died without closing its server (e.g. SIGKILL); the kernel
      // refuses connections to its leftover socket file.
      log.warn({ path }, 'removing stale lock socket left by a counter that is no longer running');
      await unlink(path).catch(ignoreCode('ENOENT'));
    }
  }

  /** Release the lock (closing the socket removes its file). Idempotent. */
  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolve) => this.server.close(() => resolve()));
    return this.closing;
  }
}

async function listen(server: Server, path: string): Promise<void> {
  server.listen(path);
  await once(server, 'listening'); // rejects when 'error' (EADDRINUSE) comes first
}

function lockAnswers(path: string): Promise<boolean> {
  return new Promise<boolean>((resolve, reject) => {
    const socket = createConnection(path);
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(true);
    }, LOCK_PROBE_TIMEOUT_MS);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(true);
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      const code = errorCode(err);
      if (code === 'ECONNREFUSED' || code === 'ENOENT') resolve(false);
      else reject(err);
    });
  });
}
