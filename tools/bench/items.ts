/**
 * The benchmark's items: 1,000 tenants, fresh 16-character ids (unique within and across runs),
 * tenants taken round robin so that every tenant's count is known without keeping the items.
 */
import { randomBytes } from 'node:crypto';
import type { Item } from '../../src/protocol/messages.ts';

export const TENANTS = 1000;
export const TENANT_NAMES = Array.from({ length: TENANTS }, (_, i) => `tenant-${String(i).padStart(4, '0')}`);
/** 5 random hex chars + 11 base-36 digits: 16-char ids, unique within and across runs. */
const RUN_PREFIX = randomBytes(3).toString('hex').slice(0, 5);
let idSeq = 0;

export function nextId(): string {
  return RUN_PREFIX + (idSeq++).toString(36).padStart(11, '0');
}

export function randomTenant(): string {
  return TENANT_NAMES[Math.floor(Math.random() * TENANTS)]!;
}

/** `n` fresh items in batches, tenants round robin (item k goes to tenant k % 1000). */
export function* fill(n: number, batch: number): Generator<Item[]> {
  for (let k = 0; k < n; k += batch) {
    const size = Math.min(batch, n - k);
    const items: Item[] = new Array(size);
    for (let j = 0; j < size; j++) items[j] = { tenant: TENANT_NAMES[(k + j) % TENANTS]!, id: nextId() };
    yield items;
  }
}

/** How many of `n` round-robin items went to tenant number `t`. */
export function roundRobinCount(n: number, t: number): number {
  return t < n ? Math.floor((n - 1 - t) / TENANTS) + 1 : 0;
}
