/**
 * A counter's metrics (GET /metrics on its port, behind CLUSTER_SECRET): items, storage (fsync,
 * group commit, compaction, replay), gossip traffic and replication lag per peer, and Node's
 * process metrics.
 *
 * Hot paths only bump plain numbers or observe once per fsync round: per-peer traffic is tallied
 * by the peer's sockets into one object per peer id, and everything else is read when Prometheus
 * scrapes. With METRICS=off none of this exists.
 */
import * as Y from 'yjs';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { createRegistry, HttpMetrics, PREFIX } from '../shared/metrics.ts';
import type { MeshSocket, Traffic } from '../protocol/mesh-socket.ts';
import { ShardLags } from './replication-lag.ts';
import type { Clock } from '../shared/clock.ts';

/** What the metrics read from the counter at scrape time. */
export interface CounterSources {
  readonly ready: boolean;
  readonly items: number;
  readonly tenants: number;
  /** The document of a shard held here, if it is. */
  shardDoc(shard: number): Y.Doc | undefined;
  /** False once the peer is known not to hold the shard (see ShardLags). */
  peerHolds(peerId: string, shard: number): boolean;
}

export interface CounterReaders {
  /** Peers this counter is linked to. */
  connectedPeers(): number;
}

/** Storage's optional observer (see StorageOptions.observer). */
export interface StorageObserver {
  /** A write round ended with a fdatasync that took `seconds` and covered `appends` records. */
  synced(seconds: number, appends: number): void;
  compacted(seconds: number): void;
}

/** Gossip's optional observer (see GossipEvents). */
export interface GossipObserver {
  /** A peer's hello named it: its sockets tally into that peer's traffic from now on. */
  onPeerHello(peerId: string, sock: MeshSocket): void;
  /**
   * A peer's state vector of one shard (sync step 1) was answered.
   * @param stateVector as encoded on the wire
   * @param replyBytes bytes of the answer (a sync step 2 frame: what the peer lacks)
   */
  onPeerStateVector(peerId: string, shard: number, stateVector: Uint8Array, replyBytes: number): void;
}

/**
 * Bytes of a shard's sync step-2 frame that carries nothing: message type, the shard id (a
 * varUint: one byte below 128, two below 16384), sync type, length, and the empty update [0, 0].
 */
function emptyStep2Bytes(shard: number): number {
  return 5 + (shard < 128 ? 1 : 2);
}

export class CounterMetrics {
  readonly registry: Registry;
  readonly http: HttpMetrics;
  readonly storage: StorageObserver;
  readonly gossip: GossipObserver;
  private readonly traffic = new Map<string, Traffic>();
  private lag: ShardLags | null = null;
  private readonly itemsAccepted: Counter;
  private readonly replay: Gauge;

  /**
   * @param antiEntropyMs how often peers send their state vectors (replication lag is measured from them)
   * @param clock the counter's clock
   */
  constructor(
    private readonly antiEntropyMs: number,
    private readonly clock: Clock,
  ) {
    const registry = createRegistry();
    this.registry = registry;
    this.http = new HttpMetrics(registry);
    this.itemsAccepted = new Counter({
      name: `${PREFIX}items_accepted_total`,
      help: 'Items this counter stored durably and acknowledged to coordinators (duplicates included)',
      registers: [registry],
    });
    this.replay = new Gauge({
      name: `${PREFIX}replay_duration_seconds`,
      help: 'How long the last start took to read DATA_DIR and rebuild the state (snapshot and log replay)',
      registers: [registry],
    });
    const fsync = new Histogram({
      name: `${PREFIX}fsync_duration_seconds`,
      help: 'Duration of each fdatasync of the log (one per group-commit round)',
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers: [registry],
    });
    const groupCommit = new Histogram({
      name: `${PREFIX}group_commit_appends`,
      help: 'Log records written and covered by one fdatasync (group commit: appends that arrived during the previous sync)',
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024],
      registers: [registry],
    });
    const compaction = new Histogram({
      name: `${PREFIX}compaction_duration_seconds`,
      help: 'Duration of each compaction (new log, whole state written to a snapshot, old logs deleted)',
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [registry],
    });
    this.storage = {
      synced: (seconds, appends) => {
        fsync.observe(seconds);
        groupCommit.observe(appends);
      },
      compacted: (seconds) => compaction.observe(seconds),
    };
    this.gossip = {
      onPeerHello: (peerId, sock) => {
        let t = this.traffic.get(peerId);
        if (!t) {
          t = { bytesIn: 0, bytesOut: 0, messagesIn: 0, messagesOut: 0 };
          this.traffic.set(peerId, t);
        }
        sock.traffic = t;
      },
      onPeerStateVector: (peerId, shard, stateVector, replyBytes) => {
        this.lag?.peerStateVector(peerId, shard, Y.decodeStateVector(stateVector), Math.max(0, replyBytes - emptyStep2Bytes(shard)));
      },
    };
    const tallies = this.traffic;
    const traffic = (name: string, help: string, pick: (t: Traffic) => number) =>
      new Counter({
        name: `${PREFIX}${name}`,
        help,
        labelNames: ['peer'],
        registers: [registry],
        collect() {
          // the tallies are the totals (they only grow): the prom-client counter mirrors them
          this.reset();
          for (const [peer, t] of tallies) this.inc({ peer }, pick(t));
        },
      });
    traffic('gossip_received_bytes_total', 'Bytes of mesh messages received from each peer counter (sync, awareness, hello)', (t) => t.bytesIn);
    traffic('gossip_sent_bytes_total', 'Bytes of mesh messages sent to each peer counter', (t) => t.bytesOut);
    traffic('gossip_received_messages_total', 'Mesh messages received from each peer counter', (t) => t.messagesIn);
    traffic('gossip_sent_messages_total', 'Mesh messages sent to each peer counter', (t) => t.messagesOut);
  }

  /** Starts reading from the counter. */
  attach(counter: CounterSources, read: CounterReaders): void {
    // one missed state vector is not yet a reason to measure against now
    const lag = new ShardLags((shard) => counter.shardDoc(shard), 2 * this.antiEntropyMs + 500, this.clock, (peer, shard) => counter.peerHolds(peer, shard));
    const clock = this.clock;
    this.lag = lag;
    const registry = this.registry;
    const gauge = (name: string, help: string, value: () => number) =>
      new Gauge({
        name: `${PREFIX}${name}`,
        help,
        registers: [registry],
        collect() {
          this.set(value());
        },
      });
    gauge('items', 'Distinct items this counter holds, all tenants', () => counter.items);
    gauge('tenants', 'Tenants with at least one item', () => counter.tenants);
    gauge('ready', '1 when the counter takes requests, else 0', () => (counter.ready ? 1 : 0));
    gauge('connected_peers', 'Peer counters linked to this one', () => read.connectedPeers());
    new Gauge({
      name: `${PREFIX}replication_lag_bytes`,
      help: "Bytes of updates this counter holds that the peer lacked at its last state vector (every ANTI_ENTROPY_MS while connected)",
      labelNames: ['peer'],
      registers: [registry],
      collect() {
        for (const peer of lag.peerIds()) this.set({ peer }, lag.missingBytes(peer));
      },
    });
    new Gauge({
      name: `${PREFIX}replication_lag_seconds`,
      help: 'Age of the oldest update this counter holds that the peer lacked when its last state vector arrived (0 when it lacked nothing); once that state vector is overdue (two ANTI_ENTROPY_MS), the age now: grows while the peer is down and writes arrive',
      labelNames: ['peer'],
      registers: [registry],
      collect() {
        const now = clock.now();
        for (const peer of lag.peerIds()) this.set({ peer }, lag.lagSeconds(peer, now));
      },
    });
  }

  /** Per peer id, the lag in seconds, for the Status the coordinators get. */
  lagByPeer(): Record<string, number> | undefined {
    return this.lag?.byPeer();
  }

  replayed(seconds: number): void {
    this.replay.set(seconds);
  }

  accepted(items: number): void {
    this.itemsAccepted.inc(items);
  }

  close(): void {
    this.lag?.close();
  }
}
