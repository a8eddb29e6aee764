/**
 * One counter process: recovers its state from disk, replicates it with its peers, takes writes
 * from coordinators and acknowledges them only once they are fsynced.
 */
import type { FastifyInstance } from 'fastify';
import type { WebSocketServer } from 'ws';
import type { Logger } from 'pino';
import type { CounterConfig } from '../shared/config.ts';
import type { Item, Status } from '../protocol/messages.ts';
import { GSet, STORAGE, type Origin } from './gset.ts';
import { Storage } from './storage.ts';
import { Gossip } from './gossip.ts';
import { CoordinatorSessions, type CounterApi } from './sessions.ts';
import { buildCounterServer } from './server.ts';

/**
 * How long read repair waits for a peer's answer. Below the coordinator's default
 * COUNTER_TIMEOUT_MS (3 s), so a coordinator hears "could not pull" rather than nothing.
 */
const PULL_TIMEOUT_MS = 1000;

/** How long a starting counter waits for a peer's state before it serves anyway. */
const CATCH_UP_GRACE_HEARTBEATS = 2;

interface PendingAdd {
  items: Item[];
  resolve: (n: number) => void;
  reject: (err: Error) => void;
}

export class Counter implements CounterApi {
  readonly gset: GSet;
  readonly gossip: Gossip;
  readonly sessions: CoordinatorSessions;
  private app!: FastifyInstance;
  private wss!: WebSocketServer;
  private queue: PendingAdd[] = [];
  private flushScheduled = false;
  private lastAppend: Promise<void> = Promise.resolve();
  /** Some update is in memory but not on disk; the next write first rewrites the snapshot. */
  private persistDebt = false;
  private needsPeerSync = false;
  /** Briefly after start, wait for one peer's state so a restarted counter does not answer stale counts. */
  private catchingUp = false;
  private catchUpTimer: NodeJS.Timeout | null = null;
  private closing = false;
  private lastStatusKey = '';
  private snapshotBytes = 0;

  private constructor(
    readonly config: Readonly<CounterConfig>,
    private readonly storage: Storage,
    private readonly log: Logger,
  ) {
    this.gset = new GSet(log.child({ component: 'gset' }));
    this.gossip = new Gossip(config, this.gset, log.child({ component: 'gossip' }), {
      onSynced: (peer) => this.onSynced(peer),
      onMembersChanged: () => this.statusChanged(),
    });
    this.sessions = new CoordinatorSessions(this, config.heartbeatMs, log.child({ component: 'sessions' }));
  }

  /** Opens DATA_DIR (taking its lock), replays it, then listens. */
  static async start(config: Readonly<CounterConfig>, log: Logger): Promise<Counter> {
    const t0 = Date.now();
    const { storage, recovered } = await Storage.open({ dir: config.dataDir, compactBytes: config.compactBytes, log: log.child({ component: 'storage' }) });
    const counter = new Counter(config, storage, log);
    try {
      await counter.recover(recovered.snapshot, recovered.updates, recovered.damaged, recovered.tornTail);
      log.info({ items: counter.gset.size, tenants: counter.gset.tenants, ms: Date.now() - t0, clientID: counter.gset.doc.clientID }, 'state loaded');
      counter.gset.doc.on('update', counter.persist);
      const { app, wss } = buildCounterServer(counter, log);
      counter.app = app;
      counter.wss = wss;
      await app.listen({ host: config.host, port: config.port });
      counter.startCatchUp();
      counter.gossip.start();
      log.info({ id: config.id, address: app.server.address(), advertised: config.advertiseAddress, ready: counter.ready }, 'counter listening');
      return counter;
    } catch (err) {
      await counter.close();
      throw err;
    }
  }

  get id(): string {
    return this.config.id;
  }

  get address(): string {
    return this.config.advertiseAddress;
  }

  get ready(): boolean {
    return !this.closing && !this.needsPeerSync && !this.catchingUp;
  }

  notReadyReason(): string {
    if (this.closing) return 'counter is shutting down';
    if (this.needsPeerSync) return 'counter found damaged data on disk and waits to sync from a peer';
    if (this.catchingUp) return 'counter just started and is catching up from its peers';
    return '';
  }

  count(tenant: string): number {
    return this.gset.count(tenant);
  }

  digest(tenant: string): number {
    return this.gset.digest(tenant);
  }

  pull(peerId: string): Promise<void> {
    return this.gossip.pull(peerId, PULL_TIMEOUT_MS);
  }

  status(): Status {
    return { id: this.id, address: this.address, ready: this.ready, items: this.gset.size, members: this.gossip.members() };
  }

  /**
   * Applies the items and resolves once they are on this counter's disk. Adds arriving in the same
   * event-loop turn share one transaction, one Yjs update and one fsync.
   */
  add(items: Item[]): Promise<number> {
    return new Promise((resolve, reject) => {
      this.queue.push({ items, resolve, reject });
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => void this.flush());
      }
    });
  }

  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    if (this.catchUpTimer) clearTimeout(this.catchUpTimer);
    this.gossip.close();
    this.sessions.close();
    for (const c of this.wss?.clients ?? []) c.terminate();
    this.wss?.close();
    await this.app?.close();
    await this.lastAppend.catch(() => {});
    await this.storage.close();
  }

  private async flush(): Promise<void> {
    this.flushScheduled = false;
    const batch = this.queue;
    this.queue = [];
    try {
      const fresh = this.gset.add(batch.length === 1 ? batch[0]!.items : batch.flatMap((b) => b.items));
      // the latest append covers ours and every earlier one: the log is written in order
      await this.lastAppend;
      // nothing new: the items came earlier, maybe from a peer and not synced yet; an ack means on disk
      if (fresh === 0) await this.storage.sync();
      if (this.persistDebt) await this.repayDebt();
      for (const b of batch) b.resolve(b.items.length);
    } catch (err) {
      const e = new Error(`could not store the items durably: ${(err as Error).message}`);
      for (const b of batch) b.reject(e);
    }
  }

  private readonly persist = (update: Uint8Array, origin: Origin): void => {
    if (origin === STORAGE) return;
    // a peer's update is durable on that peer already: no fsync to wait for here
    const p = this.storage.append(update, origin.kind !== 'peer');
    this.lastAppend = p;
    p.then(
      () => {
        // the log may grow to the snapshot's size before compacting again: total rewrite work stays linear
        if (this.storage.logBytes > Math.max(this.config.compactBytes, this.snapshotBytes)) this.compact();
      },
      () => {
        // the storage layer logged it; the next acknowledged write rewrites the whole state
        this.persistDebt = true;
      },
    );
  };

  private async repayDebt(): Promise<void> {
    await this.storage.compact(() => this.snapshot());
    this.persistDebt = false;
    this.log.info('disk takes writes again; state rewritten to a fresh snapshot');
  }

  private snapshot(): Uint8Array {
    const state = this.gset.encodeState();
    this.snapshotBytes = state.length;
    return state;
  }

  private compact(): void {
    this.storage.compact(() => this.snapshot()).catch((err: Error) => this.log.error({ err }, 'compaction failed; will retry after the next write'));
  }

  private async recover(snapshot: Uint8Array | null, updates: Uint8Array[], damaged: string[], tornTail: boolean): Promise<void> {
    const all = snapshot ? [snapshot, ...updates] : updates;
    if (all.length > 0) this.gset.applyUpdates(all, STORAGE);
    if (damaged.length > 0) {
      this.needsPeerSync = true;
      this.log.error({ damaged }, 'damaged data moved aside; not ready until synced from a peer');
    }
    // rewrite what was read into a clean snapshot so the damaged or cut files are not needed again
    this.snapshotBytes = snapshot?.length ?? 0;
    if (damaged.length > 0 || tornTail) await this.storage.compact(() => this.snapshot());
  }

  private startCatchUp(): void {
    if (this.config.peers.length === 0) return;
    this.catchingUp = true;
    // peers that are all down must not keep a healthy counter out of service for long
    this.catchUpTimer = setTimeout(() => this.endCatchUp('no peer answered in time'), CATCH_UP_GRACE_HEARTBEATS * this.config.heartbeatMs);
    this.catchUpTimer.unref();
  }

  private endCatchUp(why: string): void {
    if (!this.catchingUp) return;
    this.catchingUp = false;
    if (this.catchUpTimer) clearTimeout(this.catchUpTimer);
    this.log.info({ why, items: this.gset.size }, 'ready');
    this.statusChanged();
  }

  private onSynced(peer: string | null): void {
    this.endCatchUp(`synced from ${peer ?? 'a peer'}`);
    if (this.needsPeerSync) {
      this.needsPeerSync = false;
      this.log.info({ peer, items: this.gset.size }, 'synced from a peer after damaged data; ready');
    }
    this.statusChanged();
  }

  private statusChanged(): void {
    const key = `${this.ready}|${this.gossip.members().length}`;
    if (key !== this.lastStatusKey) {
      this.lastStatusKey = key;
      this.sessions.pushStatus();
    }
  }
}
