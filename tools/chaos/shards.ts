/**
 * The placement as a coordinator reports it (GET /shards), and whether it has settled: every shard
 * on REPLICATION_FACTOR replicas (fewer only when fewer counters are placed), all in sync, none
 * handing off, over exactly the counters expected.
 */
import type { Mesh } from '../../test/support/mesh.ts';

export interface ShardsView {
  shards: { shard: number; replicas: { id: string; inSync: boolean }[]; handingOff: string[] }[];
  factor: number | null;
  members: string[];
  removed: string[];
}

/** GET /shards on a coordinator, or null when it does not answer. */
export async function shardsView(mesh: Mesh, coordinator = 0): Promise<ShardsView | null> {
  try {
    const res = await mesh.call(mesh.url('/shards', coordinator), { headers: { authorization: `Bearer ${mesh.secret}` } });
    return res.ok ? ((await res.json()) as ShardsView) : null;
  } catch {
    return null;
  }
}

/** Null when the placement has settled over `members` (ids); else what has not, in words. */
export function placementSettled(view: ShardsView | null, members: readonly string[], shards: number): string | null {
  if (!view) return 'the coordinator did not answer GET /shards';
  if (view.factor === null || view.shards.length === 0) return 'the coordinator reports no placement yet';
  const want = [...members].sort().join(',');
  if ([...view.members].sort().join(',') !== want) return `members are [${view.members.join(', ')}], expected [${want}]`;
  if (view.shards.length !== shards) return `${view.shards.length} shards reported, expected ${shards}`;
  const size = Math.min(view.factor, members.length);
  const short = view.shards.filter((s) => s.replicas.length !== size || s.replicas.some((r) => !r.inSync) || s.handingOff.length > 0);
  if (short.length === 0) return null;
  const first = short[0]!;
  return `${short.length} shard(s) not settled, e.g. shard ${first.shard}: replicas ${first.replicas.map((r) => `${r.id}${r.inSync ? '' : ' (catching up)'}`).join(', ')}${first.handingOff.length ? `; handing off ${first.handingOff.join(', ')}` : ''}`;
}
