/**
 * Helpers for the storage tests (test/storage*.test.ts): temporary directories, real Yjs updates
 * to append, and a look at the log files from outside the store.
 */
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import * as Y from 'yjs';
import { LogStore, type Recovered } from '../../src/counter/storage/index.ts';

export const silentLog = pino({ level: 'silent' });

/** Temporary directories made by one test file; `removeAll` in its `test.after`. */
export function tempDirs(prefix: string): { make: () => string; removeAll: () => void } {
  const dirs: string[] = [];
  return {
    make: () => {
      const dir = mkdtempSync(join(tmpdir(), prefix));
      dirs.push(dir);
      return dir;
    },
    removeAll: () => {
      for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
    },
  };
}

export function openStore(dir: string, compactBytes = 1 << 20): Promise<{ store: LogStore; recovered: Recovered }> {
  return LogStore.open({ dir, compactBytes, log: silentLog });
}

/** A doc whose every local edit is captured as a real Yjs update. */
export function makeDoc(): { doc: Y.Doc; text: Y.Text; updates: Uint8Array[] } {
  const doc = new Y.Doc();
  const text = doc.getText('log0');
  const updates: Uint8Array[] = [];
  doc.on('update', (u: Uint8Array) => updates.push(u));
  return { doc, text, updates };
}

/** One transaction, hence one update, per item. */
export function writeItems(text: Y.Text, from: number, to: number): void {
  for (let i = from; i < to; i++) text.insert(text.length, `item-${i};`);
}

export async function appendAll(store: LogStore, updates: Uint8Array[]): Promise<void> {
  for (const u of updates) await store.append(u);
}

/**
 * A store in `dir` that took `n` items (one update each) and was closed again: where the recovery
 * tests start before they damage its files. Returns the doc's text and the updates appended.
 */
export async function closedStoreWith(dir: string, n: number): Promise<{ text: Y.Text; updates: Uint8Array[] }> {
  const { text, updates } = makeDoc();
  writeItems(text, 0, n);
  const first = await openStore(dir);
  await appendAll(first.store, updates);
  await first.store.close();
  return { text, updates };
}

/** The text a fresh doc holds after replaying what a store recovered. */
export function replay(recovered: Recovered): string {
  const doc = new Y.Doc();
  if (recovered.snapshot !== null) Y.applyUpdate(doc, recovered.snapshot);
  for (const u of recovered.updates) Y.applyUpdate(doc, u);
  return doc.getText('log0').toString();
}

export function logFiles(dir: string): string[] {
  return readdirSync(dir)
    .filter((n) => /^log-\d+\.ylog$/.test(n))
    .sort();
}

/** Bytes of every log file in `dir`, headers included. */
export function logSize(dir: string): number {
  return logFiles(dir).reduce((sum, n) => sum + statSync(join(dir, n)).size, 0);
}

/** Path of the single log file in `dir`; throws if there is not exactly one. */
export function onlyLog(dir: string): string {
  const files = logFiles(dir);
  if (files.length !== 1) throw new Error(`expected one log file in ${dir}, got ${files.join(', ') || 'none'}`);
  return join(dir, files[0] ?? '');
}

/** Byte offset of record `i` in a log holding `updates`, counting the 8-byte header and frame heads. */
export function recordOffset(updates: Uint8Array[], i: number): number {
  let off = 8;
  for (let j = 0; j < i; j++) off += 8 + (updates[j]?.length ?? 0);
  return off;
}

/** True when `p` has settled by the next turn of the event loop (it is not left waiting on anything). */
export async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  void p.then(
    () => {
      done = true;
    },
    () => {
      done = true;
    },
  );
  await new Promise((r) => setImmediate(r));
  return done;
}
