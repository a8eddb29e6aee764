/**
 * File helpers for the log store: creating, replacing and syncing files so that what they report
 * done is on disk. Nothing here knows the log format.
 */
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';

/** Mode of every file the store creates: the data is the tenants', not the machine's other users'. */
const FILE_MODE = 0o600;
/** Mode of a directory the store or the lock creates. */
export const DIR_MODE = 0o700;

/**
 * Create a new file holding exactly `content` and fsync it; returns it open for reading and
 * writing. Fails if `path` exists. The caller syncs the directory to make the name durable.
 */
export async function createFile(path: string, content: Uint8Array): Promise<FileHandle> {
  const fh = await open(path, 'wx+', FILE_MODE);
  try {
    await writeFully(fh, content, 0);
    await fh.sync();
    return fh;
  } catch (err) {
    await fh.close().catch(() => undefined);
    await unlink(path).catch(() => undefined);
    throw err;
  }
}

/**
 * Durably make `content` (bytes, or parts to write one after another) the file at `path`: write it to `tmpPath`, fsync, rename over `path`,
 * fsync the directory. A crash at any point leaves the old file or the new one, never a mix; on
 * failure `tmpPath` is removed (best effort) and the old file is untouched.
 */
export async function replaceFile(path: string, tmpPath: string, content: Uint8Array | readonly Uint8Array[]): Promise<void> {
  try {
    const fh = await open(tmpPath, 'w', FILE_MODE);
    try {
      if (content instanceof Uint8Array) await writeFully(fh, content, 0);
      else await writePartsFully(fh, content, 0);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmpPath, path);
  } catch (err) {
    await unlink(tmpPath).catch(() => undefined);
    throw err;
  }
  await syncDir(dirname(path));
}

/** Write all of `bytes` at `position`; a short write that makes no progress is an error. */
export async function writeFully(fh: FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < bytes.length) {
    const { bytesWritten } = await fh.write(bytes, done, bytes.length - done, position + done);
    if (bytesWritten <= 0) throw new Error(`short write at offset ${position + done}`);
    done += bytesWritten;
  }
}

/** Write the concatenation of `parts` at `position`: one writev, and the rest part by part after a short one. */
export async function writePartsFully(fh: FileHandle, parts: readonly Uint8Array[], position: number): Promise<void> {
  const { bytesWritten } = await fh.writev(parts as Uint8Array[], position);
  let skip = bytesWritten;
  let at = position;
  for (const part of parts) {
    const done = Math.min(skip, part.length);
    skip -= done;
    if (done < part.length) await writeFully(fh, part.subarray(done), at + done);
    at += part.length;
  }
}

/**
 * Creating, renaming and unlinking are only durable once the directory itself is synced.
 */
export async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** The `code` of a Node system error (`ENOENT`, `EADDRINUSE`, ...), if it has one. */
export function errorCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string' ? err.code : undefined;
}

/** A `catch` handler that swallows errors with this code and rethrows any other. */
export function ignoreCode(code: string): (err: unknown) => void {
  return (err) => {
    if (errorCode(err) !== code) throw err;
  };
}
