/**
 * How far a counter is behind, from what the others report: each counter's Status carries, per
 * peer id, the age of the oldest update it holds that the peer's last state vector lacked
 * (src/counter/replication-lag.ts). A counter is as far behind as the worst such report about it.
 */
import type { Status } from '../protocol/messages.ts';

/** Seconds `id` is behind, or null when no other counter reports lag (METRICS=off on all of them). */
export function lagBehind(id: string, statuses: readonly (Status | null)[]): number | null {
  let worst: number | null = null;
  for (const s of statuses) {
    if (!s?.lag || s.id === id) continue;
    const seconds = s.lag[id] ?? 0;
    worst = worst === null ? seconds : Math.max(worst, seconds);
  }
  return worst;
}
