/** The DATA_DIR lock: one live holder, stale sockets taken over, a clear error for long paths. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { DataDirLock, DataDirLockedError } from '../src/counter/storage/index.ts';
import { silentLog, tempDirs } from './support/storage.ts';

const dirs = tempDirs('cm-lock-');
test.after(() => dirs.removeAll());

async function expectLocked(dir: string): Promise<DataDirLockedError> {
  try {
    const lock = await DataDirLock.acquire(dir, silentLog);
    await lock.close();
  } catch (err) {
    assert.instance(err, DataDirLockedError);
    return err as DataDirLockedError;
  }
  throw new Error(`acquired the lock of ${dir} while another holder lived`);
}

test('a second acquire on a held dir fails with a coded error until the first closes', async () => {
  const dir = dirs.make();
  const first = await DataDirLock.acquire(dir, silentLog);
  assert.is(first.path, join(dir, 'counter.lock'));
  const err = await expectLocked(dir);
  assert.is(err.code, 'DATA_DIR_LOCKED');
  assert.is(err.name, 'DataDirLockedError', 'the CLI exits 2 on this name');
  assert.match(err.message, /in use by another running counter/);
  assert.ok(err.message.includes(first.path));
  await first.close();
  assert.not.ok(existsSync(first.path), 'closing removes the socket file');
  await first.close(); // idempotent
  const second = await DataDirLock.acquire(dir, silentLog);
  await second.close();
});

test('acquire creates a missing DATA_DIR with mode 0700', async () => {
  const dir = join(dirs.make(), 'new', 'data');
  const lock = await DataDirLock.acquire(dir, silentLog);
  assert.is(statSync(dir).mode & 0o777, 0o700);
  await lock.close();
});

test('a stale socket from a SIGKILLed process does not block acquire', async () => {
  const dir = dirs.make();
  const lockPath = join(dir, 'counter.lock');
  const child = spawn(process.execPath, ['-e', "require('net').createServer().listen(process.argv[1], () => console.log('ready'))", lockPath], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      if (d.toString().includes('ready')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`lock holder exited early with ${code}`)));
  });
  // While the holder lives, the dir is locked.
  await expectLocked(dir);
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await exited;
  assert.ok(existsSync(lockPath), 'SIGKILL leaves the socket file behind');

  const lock = await DataDirLock.acquire(dir, silentLog);
  assert.ok(existsSync(lockPath));
  await lock.close();
});

test('a DATA_DIR too long for a socket path is a clear error, and nothing is created', async () => {
  const dir = join(dirs.make(), 'x'.repeat(120));
  try {
    await DataDirLock.acquire(dir, silentLog);
    assert.unreachable('acquire succeeded');
  } catch (err) {
    assert.match((err as Error).message, /too long for its lock socket.*use a shorter DATA_DIR/);
  }
  assert.not.ok(existsSync(dir));
});

test.run();
