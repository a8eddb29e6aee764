/**
 * The placement as this coordinator sees it, derived from the counters' statuses: SHARDS, the
 * replication factor, the members shards are placed on (the union of the counters' `placed`
 * lists minus the union of their `removed` lists: statuses converge, and during a change they may
 * differ), and each shard's replicas in placement order (src/shared/placement.ts).
 *
 * placeShards over 64 shards costs far more than a request may, so the placement is computed once
 * per change of its inputs, not per request; statuses arrive every heartbeat and mostly change
 * nothing.
 */
import type { Status } from '../protocol/messages.ts';
import { placeShards, shardOf } from '../shared/placement.ts';

const NONE: readonly string[] = [];

export class ShardMap {
  /** SHARDS, as the counters report it; 0 while no status carries a placement (every counter then holds every tenant). */
  shards = 0;
  /** REPLICATION_FACTOR, as the counters report it (the first status that carries one). */
  factor = 0;
  /** Member ids shards are placed on, sorted. */
  members: readonly string[] = NONE;
  /** Member ids removed for good, sorted. */
  removed: readonly string[] = NONE;
  private removedSet: ReadonlySet<string> = new Set();
  private placement: readonly (readonly string[])[] = [];
  private key = '';
  /** Each status's `serving` as a set, made once per status message (asked several times per request). */
  private readonly servingSets = new WeakMap<Status, ReadonlySet<number>>();

  /** True once some counter reports a placement: requests are then routed by shard. */
  get sharded(): boolean {
    return this.shards > 0;
  }

  /**
   * Whether the counter with this status answers for the shard. A status without `serving` comes
   * from a counter that places nothing: it holds every shard.
   */
  serves(status: Status | null, shard: number): boolean {
    if (!status) return false;
    if (status.serving === undefined) return true;
    let set = this.servingSets.get(status);
    if (!set) {
      set = new Set(status.serving);
      this.servingSets.set(status, set);
    }
    return set.has(shard);
  }

  isRemoved(id: string): boolean {
    return this.removedSet.has(id);
  }

  /** The tenant's shard; only meaningful while `sharded`. */
  shardOf(tenant: string): number {
    return shardOf(tenant, this.shards);
  }

  /** The shard's replica ids in placement order. */
  replicasOf(shard: number): readonly string[] {
    return this.placement[shard] ?? NONE;
  }

  /**
   * Re-derives the inputs from every counter's last status, and the placement when they changed.
   * Statuses without placement fields (counters of an earlier version, or none heard yet) add nothing.
   */
  update(statuses: Iterable<Status | null>): void {
    let shards = 0;
    let factor = 0;
    const placed = new Set<string>();
    const removed = new Set<string>();
    for (const s of statuses) {
      if (!s || s.shards === undefined || s.factor === undefined || s.placed === undefined) continue;
      if (shards === 0) {
        shards = s.shards;
        factor = s.factor;
      }
      for (const id of s.placed) placed.add(id);
      for (const id of s.removed ?? NONE) removed.add(id);
    }
    for (const id of removed) placed.delete(id);
    const members = [...placed].sort();
    const gone = [...removed].sort();
    const key = `${shards}\u0000${factor}\u0000${members.join('\u0001')}\u0000${gone.join('\u0001')}`;
    if (key === this.key) return;
    this.key = key;
    this.shards = shards;
    this.factor = factor;
    this.members = members;
    this.removed = gone;
    this.removedSet = removed;
    this.placement = shards > 0 && members.length > 0 ? placeShards(shards, members, factor) : [];
  }
}
