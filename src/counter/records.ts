/**
 * How one (tenant, id) pair is written into the shared log text:
 * `char(tenant.length) tenant char(id.length) id`, lengths in UTF-16 code units (1..1024).
 * A length prefix instead of a separator lets tenants and ids hold any character.
 */
import type { Item } from '../protocol/messages.ts';

/** Longest tenant or id in code units that a record can carry (256 code points may take 512 units). */
export const MAX_FIELD_UNITS = 1024;

export function encodeRecord(tenant: string, id: string): string {
  return String.fromCharCode(tenant.length) + tenant + String.fromCharCode(id.length) + id;
}

/**
 * Calls `onRecord` for each record in `text` and returns the number of characters consumed;
 * stops early (returning a smaller number) at the first thing that is not a whole valid record.
 */
export function decodeRecords(text: string, onRecord: (tenant: string, id: string) => void): number {
  return decodeRecordSpans(text, (ts, tl, is, il) => onRecord(text.slice(ts, ts + tl), text.slice(is, is + il)));
}

/**
 * The same, giving each record as where its tenant and its id are in `text` (start, length),
 * for a reader that needs no strings of them.
 */
export function decodeRecordSpans(text: string, onRecord: (tenantStart: number, tenantLength: number, idStart: number, idLength: number) => void): number {
  let pos = 0;
  const end = text.length;
  while (pos < end) {
    const tl = text.charCodeAt(pos);
    if (tl === 0 || tl > MAX_FIELD_UNITS || pos + 1 + tl >= end) return pos;
    const il = text.charCodeAt(pos + 1 + tl);
    if (il === 0 || il > MAX_FIELD_UNITS || pos + 2 + tl + il > end) return pos;
    onRecord(pos + 1, tl, pos + 2 + tl, il);
    pos += 2 + tl + il;
  }
  return pos;
}

export function isValidItem(it: Item): boolean {
  return (
    typeof it.tenant === 'string' && typeof it.id === 'string' &&
    it.tenant.length > 0 && it.id.length > 0 &&
    it.tenant.length <= MAX_FIELD_UNITS && it.id.length <= MAX_FIELD_UNITS &&
    it.tenant.isWellFormed() && it.id.isWellFormed()
  );
}
