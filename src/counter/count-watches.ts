/**
 * Count watches: the tenants each coordinator session asked to be kept informed of (Watch), and
 * the pushes of their new counts (Counts).
 *
 * A coordinator answers a read of a watched tenant from the count it was pushed, without a round
 * trip. That count is as fresh as an answer to Count would be: every change is pushed once per
 * event-loop turn at the latest, and before the reply to an Add on the same connection (see
 * `flushBefore`), so a write acknowledged to a coordinator is in its watched counts by then.
 */
import { writeCounts, type TenantCount } from '../protocol/messages.ts';
import type { MeshSocket } from '../protocol/mesh-socket.ts';
import type { Clock } from '../shared/clock.ts';

/** Most tenants one session may watch; a Watch past it is answered but not watched. */
export const MAX_WATCHED_PER_SESSION = 65_536;

interface Watcher {
  sock: MeshSocket;
  tenants: Set<string>;
  /** Watched tenants whose count changed since the last push. */
  dirty: Set<string>;
}

export class CountWatches {
  private readonly byTenant = new Map<string, Set<Watcher>>();
  private readonly bySock = new Map<MeshSocket, Watcher>();
  private readonly pending = new Set<Watcher>();
  private flushScheduled = false;

  constructor(
    private readonly count: (tenant: string) => number,
    private readonly clock: Clock,
  ) {}

  /** Starts pushing the tenant's count to this session; false when the session watches too many. */
  watch(sock: MeshSocket, tenant: string): boolean {
    let w = this.bySock.get(sock);
    if (!w) {
      w = { sock, tenants: new Set(), dirty: new Set() };
      this.bySock.set(sock, w);
    }
    if (w.tenants.has(tenant)) return true;
    if (w.tenants.size >= MAX_WATCHED_PER_SESSION) return false;
    w.tenants.add(tenant);
    let set = this.byTenant.get(tenant);
    if (!set) {
      set = new Set();
      this.byTenant.set(tenant, set);
    }
    set.add(w);
    return true;
  }

  unwatch(sock: MeshSocket, tenants: readonly string[]): void {
    const w = this.bySock.get(sock);
    if (!w) return;
    for (const t of tenants) {
      if (!w.tenants.delete(t)) continue;
      w.dirty.delete(t);
      const set = this.byTenant.get(t);
      set?.delete(w);
      if (set?.size === 0) this.byTenant.delete(t);
    }
  }

  /** The session ended: its watches go with it. */
  drop(sock: MeshSocket): void {
    const w = this.bySock.get(sock);
    if (!w) return;
    this.unwatch(sock, [...w.tenants]);
    this.bySock.delete(sock);
    this.pending.delete(w);
  }

  /** The tenant's count grew (called once per new item, so it stays cheap when nobody watches). */
  readonly counted = (tenant: string): void => {
    const set = this.byTenant.get(tenant);
    if (!set) return;
    for (const w of set) {
      w.dirty.add(tenant);
      this.pending.add(w);
    }
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      this.clock.setImmediate(() => this.flushAll());
    }
  };

  /** Pushes what changed for this session now: called before an Add's reply goes out on it. */
  flushBefore(sock: MeshSocket): void {
    const w = this.bySock.get(sock);
    if (w && w.dirty.size > 0) this.push(w);
  }

  private flushAll(): void {
    this.flushScheduled = false;
    for (const w of this.pending) this.push(w);
  }

  private push(w: Watcher): void {
    this.pending.delete(w);
    const counts: TenantCount[] = [];
    for (const tenant of w.dirty) counts.push({ tenant, count: this.count(tenant) });
    w.dirty.clear();
    if (counts.length > 0 && w.sock.open) w.sock.send(writeCounts(counts));
  }
}
