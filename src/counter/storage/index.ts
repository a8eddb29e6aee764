/**
 * Persistence of a counter: the DATA_DIR lock, and log stores (an append-only log of Yjs updates
 * plus a snapshot) that recover their directory when they open. Take the lock first, then open
 * the stores under it:
 *
 * ```ts
 * const lock = await DataDirLock.acquire(dataDir, log);
 * const { store, recovered } = await LogStore.open({ dir: dataDir, compactBytes, log });
 * // ... store.close(), then lock.close()
 * ```
 *
 * Modules: `codec.ts` (names, magics, frames), `recovery.ts` (replay, torn tails, salvage),
 * `log-store.ts` (group-commit writer, rotation, compaction and its policy), `compaction-queue.ts`
 * (the turns a counter's stores take to compact), `lock.ts` (the DATA_DIR lock), `files.ts`
 * (durable file helpers).
 */
export { CompactionQueue } from './compaction-queue.ts';
export { DataDirLock, DataDirLockedError } from './lock.ts';
export { LogStore } from './log-store.ts';
export type { Recovered } from './recovery.ts';
