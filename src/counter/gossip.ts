/**
 * Counter ↔ counter replication: y-protocols sync over persistent WebSockets, one conversation
 * per shard on the same socket (each message names its shard, the way one Yjs server serves many
 * rooms over one connection), flooding of every update a counter applies, periodic anti-entropy,
 * and membership through y-protocols awareness (on a small document of its own).
 *
 * Each counter's awareness state names the peers it is connected to. An update that came from a
 * peer is forwarded only to the peers that peer is not known to be connected to: in a full mesh
 * every update then crosses each link once instead of being decoded again by every counter, and a
 * counter cut off from the writer still gets it through whoever reaches both. If that knowledge is
 * stale (a link dropped a moment ago), the reconnect handshake or anti-entropy brings the update.
 *
 * Updates are gathered for GOSSIP_DELAY_MS and leave merged, one message per peer: under load a
 * peer then wakes, decodes and stores once per window instead of once per transaction.
 *
 * A write with w ≥ 2 does not wait for the window: its update leaves at once (with whatever the
 * window had gathered) as a Replicate to the w − 1 peers it needs, which answer with Durable once
 * it is on their disk; the counter that took the write counts those answers (PeerAcks). The
 * shard's other holders get it with the window, and are asked too if those answers are late.
 */
import * as Y from 'yjs';
import * as decoding from 'lib0/decoding';
import * as map from 'lib0/map';
import * as syncProtocol from 'y-protocols/sync';
import * as awarenessProtocol from 'y-protocols/awareness';
import type { Logger } from 'pino';
import type { CounterConfig } from '../shared/config.ts';
import { CloseCode, MessageType, ProtocolError, writeAwareness, writeDurable, writeHello, writeNotHeld, writeShardReplicate, writeShardSync, type Member, type Message } from '../protocol/messages.ts';
import { MeshSocket, type Receiver } from '../protocol/mesh-socket.ts';
import { Dialer } from '../protocol/dialer.ts';
import type { Transport, Wire } from '../protocol/wire.ts';
import type { Clock, TimerHandle } from '../shared/clock.ts';
import { formatAddress, isAddress } from '../shared/address.ts';
import { rendezvousScore } from '../shared/placement.ts';
import { LOCAL, type Origin } from './gset.ts';
import type { Shard } from './shard.ts';
import type { GossipObserver } from './metrics.ts';
import type { PeerAcks } from './peer-acks.ts';
import { Membership } from './membership.ts';

/** A peer whose socket has this much unsent data gets no more broadcasts; anti-entropy repairs it. */
const MAX_BUFFERED_BYTES = 64 * 1024 * 1024;
/**
 * A write asks only as many peers as it needs acknowledgments from (see replicate); the shard's
 * other holders are asked too once this long passed without enough answers: a peer that is slow,
 * or gone but not yet timed out, costs a write this much and not its whole wait.
 */
export const REPLICATE_HEDGE_MS = 25;
/** A peer link that has not said hello after this many heartbeats is closed. */
const HELLO_WAIT_HEARTBEATS = 2;

/** One update holding all of `updates` (the update itself when there is one). */
function mergedUpdate(updates: readonly Uint8Array[]): Uint8Array {
  return updates.length === 1 ? updates[0]! : Y.mergeUpdates(updates as Uint8Array[]);
}

interface Peer {
  sock: MeshSocket;
  id: string | null;
  address: string | null;
  origin: Origin;
  /**
   * Per shard, one entry per sync step 1 sent on this socket, oldest first: the peer answers each
   * with one step 2, in order, so the next step 2 received settles the oldest entry (read repair
   * waits on it).
   */
  step2Waiters: Map<number, ((ok: boolean) => void)[]>;
  /** Shards whose answer to the first step 1 has not come yet; null once all came. */
  unsynced: Set<number> | null;
  /** ShardReplicates sent on this socket whose Durables have not all come, by ack id. */
  awaitingAcks: Map<number, { acks: PeerAcks; parts: number; shards: number[] }>;
  /** Our writes' updates it was not asked to acknowledge (see replicate): gossip brings them, by shard. */
  heldBack: Map<number, Uint8Array[]>;
  /** Per shard, the state vector of the peer's latest sync step 1: what it held then. */
  stateVectors: Map<number, Map<number, number>>;
  /** Closes the link if its hello has not come (cleared once it came, or the link closed). */
  helloTimer: TimerHandle | null;
}

/** What a member announces of its shards in its awareness state. */
export interface PeerShards {
  held: ReadonlySet<number>;
  serving: ReadonlySet<number>;
}

/** The shards a counter holds, as gossip needs them. */
export interface ShardDocs {
  /** SHARDS: shard ids are below it. */
  readonly count: number;
  get(shard: number): Shard | undefined;
  held(): Iterable<Shard>;
}

/** A shard's update to send. */
export interface ShardUpdate {
  shard: number;
  update: Uint8Array;
}

const noWaiter = (): void => {};

/** Anti-entropy rounds a shard catching up is left to the keeper's pulls (see compareStateVectors). */
const CATCHING_UP_QUIET_ROUNDS = 10;

export interface GossipEvents {
  /** A peer's full state (its answers to our first sync step 1 of every shard) was applied. */
  onSynced: (peerId: string | null) => void;
  /** A peer's member list, or the shards a member announces, changed: placement may move. */
  onPlacementInput: () => void;
  onMembersChanged: () => void;
  /** A peer's update changed a shard here: the counter stores it, then hands it back to `enqueue`. */
  onApplied: (shard: Shard, update: Uint8Array, origin: Origin) => void;
  /**
   * A peer's ShardReplicate was applied (`produced`: what it changed here, maybe nothing): the
   * counter stores it as `onApplied` does, but fsynced at once, and resolves once it is on disk.
   */
  onReplicated: (shard: Shard, produced: Uint8Array[], origin: Origin) => Promise<void>;
  /** Metrics (METRICS=on): per-peer traffic and state vectors. */
  observer?: GossipObserver | undefined;
}

export class Gossip {
  readonly awareness: awarenessProtocol.Awareness;
  private readonly peers = new Set<Peer>();
  private readonly dialers = new Map<string, Dialer>();
  private readonly configured: Set<string>;
  /** Addresses that turned out to be ourselves. */
  private readonly selfAddresses = new Set<string>();
  private readonly antiEntropy: TimerHandle;
  /** Shards catching up, since when anti-entropy saw them so (see compareStateVectors). */
  private readonly catchingUpSince = new Map<number, number>();
  /** Catch-up waiters that gave up on their answer (see syncShard). */
  private readonly timedOut = new WeakSet<(ok: boolean) => void>();
  /** Peer id → the peer ids it announced being connected to; rebuilt after awareness changes. */
  private linksOf: Map<string, ReadonlySet<string>> | null = null;
  /** Updates not yet sent, by where they came from (which decides who gets them), then by shard. */
  private outbox = new Map<Origin, Map<number, Uint8Array[]>>();
  /** The document awareness lives on: members are not a shard's business. */
  private readonly awarenessDoc = new Y.Doc();
  private outboxTimer: TimerHandle | null = null;
  private nextAckId = 1;
  private closed = false;
  /** Member id → the shards it announces (held, serving); rebuilt after awareness changes. */
  private shardsOf: Map<string, PeerShards> | null = null;

  constructor(
    private readonly config: Readonly<CounterConfig>,
    private readonly shards: ShardDocs,
    private readonly log: Logger,
    private readonly events: GossipEvents,
    private readonly membership: Membership,
    private readonly transport: Transport,
    private readonly clock: Clock,
    /** A fixed Yjs clientID for the awareness document, for seeded test runs only. */
    clientID?: number,
  ) {
    if (clientID !== undefined) this.awarenessDoc.clientID = clientID;
    this.configured = new Set(config.peers.map(formatAddress));
    this.awareness = new awarenessProtocol.Awareness(this.awarenessDoc);
    this.awareness.setLocalState({ id: config.id, address: config.advertiseAddress, peers: [], held: [], serving: [] });
    this.awareness.on('update', this.onAwarenessUpdate);
    membership.onUpdate = (update, from) => {
      const frame = Membership.updateFrame(update);
      for (const p of this.peers) if (p.origin !== from) p.sock.send(frame);
    };
    this.antiEntropy = clock.setInterval(() => this.compareStateVectors(), config.antiEntropyMs);
  }

  start(): void {
    for (const address of this.configured) this.dial(address);
  }

  /** Members known alive through awareness, ourselves included. */
  members(): Member[] {
    const out: Member[] = [];
    for (const state of this.awareness.getStates().values()) {
      const s = state as Partial<Member>;
      if (typeof s.id === 'string' && typeof s.address === 'string' && isAddress(s.address)) out.push({ id: s.id, address: s.address });
    }
    return out;
  }

  /** Announces the shards this counter holds and serves (coordinators and peers route by them). */
  announceShards(held: readonly number[], serving: readonly number[]): void {
    if (this.closed) return;
    const state = this.awareness.getLocalState() as { held?: number[]; serving?: number[] } | null;
    if (sameList(state?.held, held) && sameList(state?.serving, serving)) return;
    this.awareness.setLocalState({ ...state, held: [...held], serving: [...serving] });
  }

  /** What a member announces of its shards; null when its awareness state has not come (or expired). */
  peerShards(id: string): PeerShards | null {
    if (!this.shardsOf) {
      const map = new Map<string, PeerShards>();
      for (const state of this.awareness.getStates().values()) {
        const s = state as { id?: unknown; held?: unknown; serving?: unknown };
        if (typeof s.id !== 'string' || !Array.isArray(s.held) || !Array.isArray(s.serving)) continue;
        map.set(s.id, { held: new Set(s.held.filter(Number.isInteger)), serving: new Set(s.serving.filter(Number.isInteger)) });
      }
      this.shardsOf = map;
    }
    return this.shardsOf.get(id) ?? null;
  }

  /** Peers with an open link, by id. */
  linkedPeers(): Set<string> {
    const ids = new Set<string>();
    for (const p of this.peers) if (p.id !== null && p.sock.open) ids.add(p.id);
    return ids;
  }

  /**
   * True when the peer's latest sync step 1 of the shard showed every client at least at the
   * clock `required` gives (the handoff's last check before a shard is deleted here). Two links
   * to one peer: the later state vector of the two counts.
   */
  peerCovers(peerId: string, shardId: number, required: ReadonlyMap<number, number>): boolean {
    let theirs: Map<number, number> | undefined;
    for (const p of this.peers) {
      if (p.id !== peerId || !p.sock.open) continue;
      const sv = p.stateVectors.get(shardId);
      if (sv && (!theirs || covers(sv, theirs))) theirs = sv;
    }
    return theirs !== undefined && covers(theirs, required);
  }

  /**
   * Catch-up of one shard from one peer: a sync step 1 out of turn. Resolves true once the
   * peer's answer is applied here, false when the peer does not hold the shard, the link closed,
   * no link to it is open, or no answer came within `timeoutMs` (a later answer is applied all the same).
   */
  syncShard(peerId: string, shardId: number, timeoutMs: number): Promise<boolean> {
    const shard = this.shards.get(shardId);
    let peer: Peer | undefined;
    for (const p of this.peers) if (p.id === peerId && p.sock.open) peer = p;
    if (!peer || !shard) return Promise.resolve(false);
    const asked = peer;
    // answers settle the waiters in order; one that timed out is still queued, and if its answer
    // was lost this step 1's answer would settle it and ours would wait for good. So for each such
    // waiter another step 1 goes after ours: ours is then settled by the answer to ours or to a
    // later one (never by an older state), whichever way the earlier answers went.
    const stale = (asked.step2Waiters.get(shardId) ?? []).filter((w) => this.timedOut.has(w)).length;
    return new Promise((resolve) => {
      let settled = false;
      const settle = (ok: boolean) => {
        if (settled) return;
        settled = true;
        this.clock.clear(timer);
        resolve(ok);
      };
      const timer = this.clock.setTimeout(() => {
        this.timedOut.add(settle);
        settle(false);
      }, timeoutMs);
      this.sendStep1(asked, shard, settle);
      for (let i = 0; i < stale; i++) this.sendStep1(asked, shard);
    });
  }

  /**
   * Read repair: asks the peer for what it holds and we lack (a sync step 1 out of turn) and
   * resolves once its answer is applied, so a count taken afterwards includes the peer's items.
   * Rejects when no link to that peer is open, when the link closes, or after `timeoutMs`.
   */
  pull(peerId: string, shardId: number, timeoutMs: number): Promise<void> {
    let peer: Peer | undefined;
    for (const p of this.peers) if (p.id === peerId && p.sock.open) peer = p;
    if (!peer) return Promise.reject(new Error(`no open link to peer ${peerId}`));
    const shard = this.shards.get(shardId);
    if (!shard) return Promise.reject(new Error(`shard ${shardId} is not held here`));
    const asked = peer;
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const settle = (ok: boolean, why: string) => {
        if (settled) return;
        settled = true;
        this.clock.clear(timer);
        if (ok) resolve();
        else reject(new Error(`could not pull from peer ${peerId}: ${why}`));
      };
      const timer = this.clock.setTimeout(() => settle(false, `no answer within ${timeoutMs} ms`), timeoutMs);
      // the waiter stays queued after a timeout: it still marks which step 2 answers this step 1
      this.sendStep1(asked, shard, (ok) => settle(ok, 'the link closed'));
    });
  }

  /** Sends a shard's state vector; `waiter` is settled by the step 2 that answers it. */
  private sendStep1(peer: Peer, shard: Shard, waiter: (ok: boolean) => void = noWaiter, frame = step1Frame(shard)): void {
    let waiters = peer.step2Waiters.get(shard.id);
    if (!waiters) {
      waiters = [];
      peer.step2Waiters.set(shard.id, waiters);
    }
    waiters.push(waiter);
    peer.sock.send(frame);
  }

  /** Takes over an accepted socket whose first message was a peer Hello. */
  adopt(sock: MeshSocket, hello: Message): void {
    const peer = this.addPeer(null, (receiver) => {
      sock.handOff(receiver);
      return sock;
    });
    this.onPeerMessage(peer, hello);
  }

  close(): void {
    this.closed = true;
    this.clock.clear(this.antiEntropy);
    // the updates gathered for the next message leave now, ahead of the close frames: a counter
    // stopped for good has handed its last writes to its peers
    if (this.outboxTimer) {
      this.clock.clear(this.outboxTimer);
      this.flushOutbox();
    }
    this.awareness.off('update', this.onAwarenessUpdate);
    this.awareness.destroy();
    for (const p of this.peers) p.sock.close(CloseCode.GoingAway, 'shutting down');
    for (const d of this.dialers.values()) d.close();
  }

  private dial(address: string): void {
    if (this.closed || this.dialers.has(address) || this.selfAddresses.has(address)) return;
    const dialer = new Dialer({
      address,
      transport: this.transport,
      clock: this.clock,
      reconnectMaxMs: this.config.reconnectMaxMs,
      log: this.log,
      // we dialed a counter: the peer session is the socket's one receiver from the start
      onOpen: (wire: Wire) => this.addPeer(address, (receiver) => new MeshSocket(wire, address, receiver, this.socketOptions(address))),
    });
    this.dialers.set(address, dialer);
    dialer.start();
  }

  private socketOptions(remote: string) {
    return { heartbeatMs: this.config.heartbeatMs, log: this.log.child({ peer: remote }), clock: this.clock, maxFrameBytes: meshFrameBytes(this.config) };
  }

  /** A peer session on the socket `attach` gives it the receiver of (an accepted socket handed off, or a new one for a dialed wire). */
  private addPeer(dialedAddress: string | null, attach: (receiver: Receiver) => MeshSocket): Peer {
    let peer: Peer | null = null;
    // no message can arrive before attach returns: wires deliver asynchronously
    const sock = attach({ onMessage: (msg) => this.onPeerMessage(peer!, msg), onClose: () => this.onPeerClose(peer!) });
    peer = { sock, id: null, address: dialedAddress, origin: { kind: 'peer', peerId: sock.remote, connection: sock }, step2Waiters: new Map(), unsynced: new Set(), awaitingAcks: new Map(), heldBack: new Map(), stateVectors: new Map(), helloTimer: null };
    this.peers.add(peer);
    // a link whose hello never came is no link (its dialer would never dial again): drop it, and
    // the side that dialed dials again
    const linked = peer;
    peer.helloTimer = this.clock.setTimeout(() => {
      if (linked.id === null) linked.sock.close(CloseCode.ProtocolError, `no hello within ${HELLO_WAIT_HEARTBEATS} heartbeats`);
    }, HELLO_WAIT_HEARTBEATS * this.config.heartbeatMs);
    sock.send(writeHello({ role: 'peer', nodeId: this.config.id, address: this.config.advertiseAddress, shards: this.shards.count }));
    sock.send(this.membership.step1());
    // every shard held is asked for: a peer that lacks one answers NotHeld
    for (const shard of this.shards.held()) {
      peer.unsynced!.add(shard.id);
      this.sendStep1(peer, shard);
    }
    const states = [...this.awareness.getStates().keys()];
    sock.send(writeAwareness(awarenessProtocol.encodeAwarenessUpdate(this.awareness, states)));
    return peer;
  }

  private onPeerClose(peer: Peer): void {
    this.peers.delete(peer);
    this.clock.clear(peer.helloTimer);
    for (const waiters of peer.step2Waiters.values()) for (const w of waiters.splice(0)) w(false);
    const unanswered = [...peer.awaitingAcks.values()];
    peer.awaitingAcks.clear();
    for (const { acks } of unanswered) acks.lost();
    this.publishLinks();
    this.log.debug({ peer: peer.id ?? peer.sock.remote }, 'peer connection closed');
    this.events.onMembersChanged();
  }

  private onPeerMessage(peer: Peer, msg: Message): void {
    switch (msg.type) {
      case MessageType.Hello: {
        if (msg.hello.role !== 'peer') throw new ProtocolError('a coordinator hello on a peer connection');
        if (msg.hello.shards === undefined) throw new ProtocolError('the peer runs a version before shards (its hello names no SHARDS): upgrade it');
        if (msg.hello.shards !== this.shards.count) {
          throw new ProtocolError(`SHARDS differ: this counter has ${this.shards.count}, the peer ${msg.hello.shards}; every counter of a mesh needs the same SHARDS`);
        }
        if (msg.hello.nodeId === this.config.id) {
          // PEERS or a DNS name may include ourselves; stop dialing that address
          if (peer.address) {
            this.selfAddresses.add(peer.address);
            this.dialers.get(peer.address)?.close();
            this.dialers.delete(peer.address);
          }
          peer.sock.close(CloseCode.SelfConnection, 'connected to itself');
          return;
        }
        peer.id = msg.hello.nodeId;
        this.clock.clear(peer.helloTimer);
        peer.address ??= msg.hello.address;
        peer.origin = { kind: 'peer', peerId: peer.id, connection: peer.sock };
        this.publishLinks();
        // the first message of a peer without a hello yet was sent to its remote address
        if (peer.unsynced?.size === 0) {
          peer.unsynced = null;
          this.events.onSynced(peer.id);
        }
        this.events.observer?.onPeerHello(peer.id, peer.sock);
        this.log.info({ peer: peer.id, remote: peer.sock.remote }, 'peer connected');
        this.events.onMembersChanged();
        return;
      }
      case MessageType.ShardSync: {
        const shard = this.heldShard(msg.shard);
        if (!shard) {
          // a shard moved away (or not here yet): a step 1 gets NotHeld in place of its step 2;
          // updates are dropped, the peer's anti-entropy with the shard's holders carries them
          const kind = peekSyncKind(msg.decoder);
          if (kind === syncProtocol.messageYjsSyncStep1) peer.sock.send(writeNotHeld(msg.shard));
          return;
        }
        // decode and apply first; only then store and forward, outside the blame of the peer's bytes
        const { kind, reply, produced, stateVector } = this.readSync(shard, msg.decoder, peer.origin);
        if (reply) peer.sock.send(reply);
        if (stateVector) peer.stateVectors.set(shard.id, Y.decodeStateVector(stateVector));
        if (stateVector && reply && peer.id !== null) this.events.observer?.onPeerStateVector(peer.id, shard.id, stateVector, reply.length);
        for (const update of produced) this.events.onApplied(shard, update, peer.origin);
        // applied (and counted) by now: a read repair waiting on this answer can count
        if (kind === syncProtocol.messageYjsSyncStep2) this.answered(peer, shard.id, true);
        return;
      }
      case MessageType.NotHeld:
        this.answered(peer, msg.shard, false);
        return;
      case MessageType.MembersSync: {
        const reply = this.membership.readSync(msg.decoder, peer.origin);
        if (reply) peer.sock.send(reply);
        return;
      }
      case MessageType.ShardReplicate: {
        const shard = this.heldShard(msg.shard);
        // not held here: no Durable, so the sender does not count this counter
        if (!shard) return;
        const produced = this.applyUpdate(shard, msg.update, peer.origin);
        // structs waiting for an update we missed are not held yet: no acknowledgment for them (the
        // sender's wait runs out); anti-entropy brings the gap, and a retried write is answered
        const whole = shard.gset.holdsAll(msg.update);
        const stored = this.events.onReplicated(shard, produced, peer.origin);
        const { ackId } = msg;
        stored.then(
          () => {
            // corked: the shards of one write are synced by the same round of fsyncs, and their
            // Durables then leave together at the end of this turn instead of one write each
            if (whole) peer.sock.send(writeDurable(ackId));
          },
          // the storage layer logged the failure; the sender hears nothing and counts one ack fewer
          (err: Error) => this.log.debug({ peer: peer.id, err: err.message }, 'a replicated update is not on disk; not acknowledged'),
        );
        return;
      }
      case MessageType.Durable: {
        const waiting = peer.awaitingAcks.get(msg.ackId);
        if (!waiting) return; // answered after the write stopped waiting
        // one Durable per shard the write touched: the peer has it all once the last came
        if (--waiting.parts > 0) return;
        peer.awaitingAcks.delete(msg.ackId);
        if (peer.id === null) waiting.acks.lost();
        else waiting.acks.ack(peer.id, waiting.shards);
        return;
      }
      case MessageType.Awareness:
        try {
          awarenessProtocol.applyAwarenessUpdate(this.awareness, msg.update, peer.origin);
        } catch (err) {
          throw new ProtocolError(`malformed awareness message: ${(err as Error).message}`);
        }
        return;
      default:
        throw new ProtocolError(`message type ${msg.type} is not valid between counters`);
    }
  }

  /**
   * One y-protocols sync message: step 1 (a state vector) is answered with what the peer misses;
   * step 2 and update carry a Yjs update, applied here. Anything thrown is about the peer's bytes.
   */
  private readSync(shard: Shard, decoder: decoding.Decoder, origin: Origin): { kind: number; reply: Uint8Array | null; produced: Uint8Array[]; stateVector?: Uint8Array } {
    try {
      const kind = decoding.readVarUint(decoder);
      switch (kind) {
        case syncProtocol.messageYjsSyncStep1: {
          const sv = decoding.readVarUint8Array(decoder);
          return { kind, reply: writeShardSync(shard.id, (e) => syncProtocol.writeSyncStep2(e, shard.gset.doc, sv)), produced: [], stateVector: sv };
        }
        case syncProtocol.messageYjsSyncStep2:
        case syncProtocol.messageYjsUpdate:
          return { kind, reply: null, produced: this.applyUpdate(shard, decoding.readVarUint8Array(decoder), origin) };
        default:
          throw new ProtocolError(`unknown sync message type ${kind}`);
      }
    } catch (err) {
      if (err instanceof ProtocolError) throw err;
      throw new ProtocolError(`malformed sync message: ${(err as Error).message}`);
    }
  }

  /**
   * The shard a peer's message names, if held here; one this mesh does not have is the peer's
   * error. Shards move, so a peer may name one that is not here (yet, or any more).
   */
  private heldShard(id: number): Shard | undefined {
    if (id >= this.shards.count) throw new ProtocolError(`shard ${id} does not exist (SHARDS=${this.shards.count})`);
    return this.shards.get(id);
  }

  /** The peer answered our oldest sync step 1 of the shard: with its step 2 (`ok`), or NotHeld. */
  private answered(peer: Peer, shardId: number, ok: boolean): void {
    peer.step2Waiters.get(shardId)?.shift()?.(ok);
    if (peer.unsynced?.delete(shardId) && peer.unsynced.size === 0 && peer.id !== null) {
      peer.unsynced = null;
      this.events.onSynced(peer.id);
    }
  }

  /** False only for a peer known (from its awareness state) not to hold the shard. */
  private holds(peer: Peer, shard: number): boolean {
    if (peer.id === null) return true;
    const known = this.peerShards(peer.id);
    return known === null || known.held.has(shard);
  }

  /** A peer's Yjs update applied to a shard here; what it changed comes back. Anything thrown is about the peer's bytes. */
  private applyUpdate(shard: Shard, update: Uint8Array, origin: Origin): Uint8Array[] {
    try {
      return shard.apply(update, origin);
    } catch (err) {
      throw new ProtocolError(`malformed sync message: ${(err as Error).message}`);
    }
  }

  /**
   * Hands an update this counter applied to a shard (its own write or a peer's) to replication:
   * it leaves within GOSSIP_DELAY_MS, merged with the shard's others of that window, to the peers
   * that need it.
   */
  enqueue(shard: number, update: Uint8Array, origin: Origin): void {
    if (this.peers.size === 0) return;
    if (this.config.gossipDelayMs === 0) {
      this.forward(origin, new Map([[shard, [update]]]));
      return;
    }
    let byShard = this.outbox.get(origin);
    if (!byShard) {
      byShard = new Map();
      this.outbox.set(origin, byShard);
    }
    const pending = byShard.get(shard);
    if (pending) pending.push(update);
    else byShard.set(shard, [update]);
    this.outboxTimer ??= this.clock.setTimeout(this.flushOutbox, this.config.gossipDelayMs);
  }

  /**
   * A write waiting for peers' acknowledgments (always our own), with whatever the window had
   * gathered of ours for its shards. Each shard's update leaves now, as a ShardReplicate, to the
   * `acks.needed` peers whose acknowledgment counts for it, first in rendezvous order for the
   * shard (so the shards spread the work over the peers); the shard's other holders get it by
   * gossip in the next window, which spares them the journal fsync and the answer. If those asked
   * have not answered within REPLICATE_HEDGE_MS, or answered without enough that count, the others
   * are asked too. `acks` hears of each peer once it answered every part.
   */
  replicate(updates: readonly ShardUpdate[], acks: PeerAcks): void {
    const gathered = this.outbox.get(LOCAL);
    const merged = new Map<number, Uint8Array>();
    for (const { shard, update } of updates) {
      const list = gathered?.get(shard) ?? [];
      gathered?.delete(shard);
      list.push(update);
      merged.set(shard, mergedUpdate(list));
    }
    const links = this.linksOnePerPeer();
    const now = new Map<Peer, number[]>();
    const later = new Map<Peer, number[]>();
    const add = (to: Map<Peer, number[]>, p: Peer, shard: number) => map.setIfUndefined(to, p, (): number[] => []).push(shard);
    for (const shard of merged.keys()) {
      const holders = links.filter((p) => this.holds(p, shard));
      const counting = holders.filter((p) => p.id !== null && acks.counts(p.id, shard));
      if (counting.length <= acks.needed) {
        for (const p of holders) add(now, p, shard);
        continue;
      }
      counting.sort((a, b) => rendezvousScore(shard, b.id!) - rendezvousScore(shard, a.id!));
      const asked = new Set(counting.slice(0, acks.needed));
      for (const p of holders) add(asked.has(p) ? now : later, p, shard);
    }
    const ackId = this.takeAckId();
    const frames = new Map<number, Uint8Array>();
    const frameOf = (shard: number): Uint8Array => {
      let f = frames.get(shard);
      if (!f) {
        f = writeShardReplicate(ackId, shard, merged.get(shard)!);
        frames.set(shard, f);
      }
      return f;
    };
    // a peer's updates of the shard held back for gossip go with it: this one builds on them
    // (one writer's structs), and the peer could not apply it, nor answer, without them
    const frameFor = (p: Peer, shard: number): Uint8Array => {
      const heldBack = p.heldBack.get(shard);
      if (!heldBack) return frameOf(shard);
      p.heldBack.delete(shard);
      const update = merged.get(shard)!;
      if (!heldBack.includes(update)) heldBack.push(update);
      return writeShardReplicate(ackId, shard, mergedUpdate(heldBack));
    };
    const ask = (p: Peer, shards: readonly number[]) => {
      if (!p.sock.open) return;
      // the frames leave now, in one socket write (it costs more here than the rest of a small write)
      for (const [i, shard] of shards.entries()) {
        if (i < shards.length - 1) p.sock.send(frameFor(p, shard));
        else p.sock.sendNow(frameFor(p, shard));
      }
      // the peer has the write once it acknowledged every shard of it that it holds
      const waiting = p.awaitingAcks;
      waiting.set(ackId, { acks, parts: shards.length, shards: [...shards] });
      acks.sentOnLink(() => waiting.delete(ackId));
    };
    for (const [p, shards] of now) ask(p, shards);
    if (later.size === 0) {
      acks.seal();
      return;
    }
    for (const [p, shards] of later) {
      for (const shard of shards) map.setIfUndefined(p.heldBack, shard, (): Uint8Array[] => []).push(merged.get(shard)!);
    }
    this.outboxTimer ??= this.clock.setTimeout(this.flushOutbox, this.config.gossipDelayMs);
    acks.hedge(REPLICATE_HEDGE_MS, () => {
      for (const [p, shards] of later) ask(p, shards);
      acks.seal();
    });
  }

  /** The open links, one per peer id (two counters that dialed each other share two sockets), and those whose id is not known yet. */
  private linksOnePerPeer(): Peer[] {
    const seen = new Set<string>();
    const out: Peer[] = [];
    for (const p of this.peers) {
      if (p.sock.buffered > MAX_BUFFERED_BYTES) continue;
      if (p.id !== null) {
        if (seen.has(p.id)) continue;
        seen.add(p.id);
      }
      out.push(p);
    }
    return out;
  }

  private readonly flushOutbox = (): void => {
    this.outboxTimer = null;
    const outbox = this.outbox;
    this.outbox = new Map();
    // held-back updates first: ours gathered since build on them
    for (const p of this.peers) {
      if (p.heldBack.size === 0) continue;
      const heldBack = p.heldBack;
      p.heldBack = new Map();
      for (const [shard, updates] of heldBack) {
        const merged = mergedUpdate(updates);
        p.sock.send(writeShardSync(shard, (e) => syncProtocol.writeUpdate(e, merged)));
      }
    }
    for (const [origin, byShard] of outbox) this.forward(origin, byShard);
  };

  /**
   * Sends updates to every peer that needs them from us: not their sender, nor peers it reaches
   * itself.
   */
  private forward(origin: Origin, byShard: Map<number, Uint8Array[]>): void {
    // merged and framed on first use: a peer's update forwarded here often has no peer left to go
    // to (the sender reaches them all), and merging a window's updates costs more than the rest
    const frames: { shard: number; updates: Uint8Array[]; frame: Uint8Array | null }[] = [];
    for (const [shard, updates] of byShard) frames.push({ shard, updates, frame: null });
    const frameOf = (f: (typeof frames)[number]): Uint8Array => {
      if (f.frame) return f.frame;
      const merged = mergedUpdate(f.updates);
      f.frame = writeShardSync(f.shard, (e) => syncProtocol.writeUpdate(e, merged));
      return f.frame;
    };
    const from = origin.kind === 'peer' ? origin.peerId : null;
    const reachedBySender = from === null ? undefined : this.announcedLinks().get(from);
    for (const p of this.linksOnePerPeer()) {
      if (p.origin === origin) continue;
      if (p.id !== null && (p.id === from || reachedBySender?.has(p.id))) continue;
      // only to peers that hold the shard (or may: their state has not come yet)
      for (const f of frames) if (this.holds(p, f.shard)) p.sock.send(frameOf(f));
    }
  }

  private takeAckId(): number {
    const id = this.nextAckId++;
    if (this.nextAckId > 0x7fffffff) this.nextAckId = 1;
    return id;
  }

  private readonly onAwarenessUpdate = (
    { added, updated, removed }: { added: number[]; updated: number[]; removed: number[] },
    origin: unknown,
  ): void => {
    const changed = [...added, ...updated, ...removed];
    this.linksOf = null;
    this.shardsOf = null;
    const frame = writeAwareness(awarenessProtocol.encodeAwarenessUpdate(this.awareness, changed));
    for (const p of this.peers) if (p.origin !== origin) p.sock.send(frame);
    if (added.length > 0 || removed.length > 0) {
      this.reconcileDialers();
      this.events.onMembersChanged();
    }
    if (origin !== 'local') this.events.onPlacementInput();
  };

  /** Announces who we are connected to (by id), so peers know whom they need not forward to. */
  private publishLinks(): void {
    if (this.closed) return;
    const peers = [...this.connectedPeerIds()].sort();
    const current = (this.awareness.getLocalState() as { peers?: string[] } | null)?.peers;
    if (current && current.join('\u0000') === peers.join('\u0000')) return;
    this.awareness.setLocalStateField('peers', peers);
  }

  /** Ids of the peers linked to us (after their hello); two sockets to one peer count once. */
  private connectedPeerIds(): Set<string> {
    const ids = new Set<string>();
    for (const p of this.peers) if (p.id !== null) ids.add(p.id);
    return ids;
  }

  private announcedLinks(): Map<string, ReadonlySet<string>> {
    if (this.linksOf) return this.linksOf;
    const linksOf = new Map<string, ReadonlySet<string>>();
    for (const state of this.awareness.getStates().values()) {
      const s = state as { id?: unknown; peers?: unknown };
      if (typeof s.id === 'string' && Array.isArray(s.peers)) linksOf.set(s.id, new Set(s.peers.filter((x): x is string => typeof x === 'string')));
    }
    this.linksOf = linksOf;
    return linksOf;
  }

  /** Dial members we learned of and hold no connection to; forget learned ones that left. */
  private reconcileDialers(): void {
    const connectedIds = this.connectedPeerIds();
    const memberAddresses = new Set<string>();
    for (const m of this.members()) {
      if (m.id === this.config.id) continue;
      memberAddresses.add(m.address);
      if (!connectedIds.has(m.id)) this.dial(m.address);
    }
    for (const [address, dialer] of this.dialers) {
      if (!this.configured.has(address) && !memberAddresses.has(address) && !dialer.connected) {
        dialer.close();
        this.dialers.delete(address);
      }
    }
  }

  /** Anti-entropy: a state vector is a few bytes; the answer carries only what is missing. */
  private compareStateVectors(): void {
    if (this.peers.size === 0) return;
    const now = this.clock.now();
    for (const id of this.catchingUpSince.keys()) if (!this.shards.get(id)) this.catchingUpSince.delete(id);
    for (const shard of this.shards.held()) {
      // a shard catching up is pulled by the keeper, from as many sources as it needs and a few
      // shards at a time; asking every peer for it each round too made each send all of it (a
      // counter joining 20 M items took minutes). Only one still catching up after some rounds
      // is asked again each round, in case the keeper's pulls are stuck (answers lost on a link)
      if (!shard.serving) {
        const since = this.catchingUpSince.get(shard.id) ?? now;
        this.catchingUpSince.set(shard.id, since);
        if (now - since < CATCHING_UP_QUIET_ROUNDS * this.config.antiEntropyMs) continue;
      } else {
        this.catchingUpSince.delete(shard.id);
      }
      const frame = step1Frame(shard);
      // to every peer, not only those announcing the shard: an announcement may be lost or late,
      // and a peer that lacks the shard answers NotHeld (a few bytes)
      for (const p of this.peers) this.sendStep1(p, shard, noWaiter, frame);
    }
    const members = this.membership.step1();
    for (const p of this.peers) p.sock.send(members);
    this.reconcileDialers();
  }
}

function step1Frame(shard: Shard): Uint8Array {
  return writeShardSync(shard.id, (e) => syncProtocol.writeSyncStep1(e, shard.gset.doc));
}

/**
 * Counter-to-counter frames past this leave in parts: a shard's state (a sync step 2) can be bigger
 * than one WebSocket message may be (MAX_MESSAGE_BYTES, the same on every process).
 */
export function meshFrameBytes(config: Readonly<CounterConfig>): number {
  return config.maxMessageBytes - 1024;
}

/** The y-protocols message kind (step 1, step 2, update) without reading past it; anything else is the peer's error. */
function peekSyncKind(decoder: decoding.Decoder): number {
  let kind: number;
  try {
    kind = decoding.peekVarUint(decoder);
  } catch (err) {
    throw new ProtocolError(`malformed sync message: ${(err as Error).message}`);
  }
  if (kind !== syncProtocol.messageYjsSyncStep1 && kind !== syncProtocol.messageYjsSyncStep2 && kind !== syncProtocol.messageYjsUpdate) {
    throw new ProtocolError(`unknown sync message type ${kind}`);
  }
  return kind;
}

function sameList(a: readonly number[] | undefined, b: readonly number[]): boolean {
  return a !== undefined && a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Every client of `required` is at least at its clock in `sv`. */
function covers(sv: ReadonlyMap<number, number>, required: ReadonlyMap<number, number>): boolean {
  for (const [client, clock] of required) if ((sv.get(client) ?? 0) < clock) return false;
  return true;
}
