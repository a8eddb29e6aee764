/**
 * murmur3's 32-bit finaliser: spreads every input bit over every output bit. The shard of a
 * tenant, rendezvous scores and the id digests all end with it (PROTOCOL.md §4 and §7).
 */
export function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
