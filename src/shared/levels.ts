/**
 * Consistency levels: how many replicas of a tenant must acknowledge a write (`w`) or answer a
 * read (`r`). Parsed here (settings and request parameters share the syntax); what a level costs
 * and promises is in the README (Guarantees).
 */

/** `one`, `quorum` (a majority), `all`, or a number of replicas. */
export type Level = 'one' | 'quorum' | 'all' | number;

/** Largest number accepted as a level; a request is further bounded by the replica count. */
export const MAX_LEVEL_NUMBER = 1000;

/** The level `text` names, or null when it names none. Numbers are plain decimals without sign or leading zeros. */
export function parseLevel(text: string): Level | null {
  if (text === 'one' || text === 'quorum' || text === 'all') return text;
  if (!/^[1-9]\d{0,3}$/.test(text)) return null;
  const n = Number(text);
  return n <= MAX_LEVEL_NUMBER ? n : null;
}

/**
 * How many replicas the level asks for among `replicas` (the tenant's replica count: every member
 * the coordinator knows, reachable or not). A number above `replicas` is returned as it is; the
 * caller decides whether that is a bad request or too few members.
 */
export function levelSize(level: Level, replicas: number): number {
  if (level === 'one') return 1;
  if (level === 'quorum') return Math.floor(replicas / 2) + 1;
  if (level === 'all') return replicas;
  return level;
}

/** "one, quorum, all or a number from 1 to 3", for messages. */
export function allowedLevels(replicas: number): string {
  return replicas <= 1 ? 'one, quorum, all or 1' : `one, quorum, all or a number from 1 to ${replicas}`;
}
