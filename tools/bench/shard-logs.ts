/**
 * How far each shard's log on disk is from its next compaction, read from a counter's DATA_DIR
 * (README "Durability": shards/<id>/snapshot.ydoc and log-*.ylog). A shard compacts once its log
 * holds more than max(COMPACT_BYTES / SHARDS (at least 64 KiB), its snapshot) bytes of frames: the
 * rule of src/counter/storage/log-store.ts, read here from outside the process.
 */
import fs from 'node:fs';
import path from 'node:path';
import { FRAME_HEAD_BYTES, HEADER_BYTES, SNAPSHOT_NAME, logSeq } from '../../src/counter/storage/codec.ts';

const MIN_SHARD_COMPACT_BYTES = 64 * 1024;

/** Bytes still to append to each shard's log (by shard id) before it compacts; shards not held are absent. */
export function bytesToCompaction(dataDir: string, compactBytes: number, shards: number): Map<number, number> {
  const perShard = Math.max(MIN_SHARD_COMPACT_BYTES, Math.floor(compactBytes / shards));
  const out = new Map<number, number>();
  const root = path.join(dataDir, 'shards');
  for (const name of fs.existsSync(root) ? fs.readdirSync(root) : []) {
    const shard = Number(name);
    if (!Number.isInteger(shard)) continue;
    const dir = path.join(root, name);
    let logBytes = 0;
    let snapshotBytes = 0;
    for (const f of fs.readdirSync(dir)) {
      let size: number;
      try {
        size = fs.statSync(path.join(dir, f)).size;
      } catch {
        continue; // removed by a compaction meanwhile
      }
      if (logSeq(f) !== null) logBytes += Math.max(0, size - HEADER_BYTES);
      else if (f === SNAPSHOT_NAME) snapshotBytes = Math.max(0, size - HEADER_BYTES - FRAME_HEAD_BYTES);
    }
    out.set(shard, Math.max(perShard, snapshotBytes) - logBytes);
  }
  return out;
}
