/**
 * Counter ↔ counter replication: y-protocols sync over persistent WebSockets, flooding of every
 * update a counter applies, periodic anti-entropy, and membership through y-protocols awareness.
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
 * window had gathered) as a Replicate, which each peer receiving it answers with Durable once it
 * is on its disk; the counter that took the write counts those answers (PeerAcks).
 */
import * as Y from 'yjs';
import * as decoding from 'lib0/decoding';
import * as syncProtocol from 'y-protocols/sync';
import * as awarenessProtocol from 'y-protocols/awareness';
import type { Logger } from 'pino';
import type { CounterConfig } from '../shared/config.ts';
import { CloseCode, MessageType, ProtocolError, writeAwareness, writeDurable, writeHello, writeReplicate, writeSync, type Member, type Message } from '../protocol/messages.ts';
import { MeshSocket, type Receiver } from '../protocol/mesh-socket.ts';
import { Dialer } from '../protocol/dialer.ts';
import type { Transport, Wire } from '../protocol/wire.ts';
import type { Clock, TimerHandle } from '../shared/clock.ts';
import { formatAddress, isAddress } from '../shared/address.ts';
import type { GSet, Origin } from './gset.ts';
import type { GossipObserver } from './metrics.ts';
import type { PeerAcks } from './peer-acks.ts';

/** A peer whose socket has this much unsent data gets no more broadcasts; anti-entropy repairs it. */
const MAX_BUFFERED_BYTES = 64 * 1024 * 1024;

interface Peer {
  sock: MeshSocket;
  id: string | null;
  address: string | null;
  origin: Origin;
  /**
   * One entry per sync step 1 sent on this socket, oldest first: the peer answers each with one
   * step 2, in order, so the next step 2 received settles the oldest entry (read repair waits on it).
   */
  step2Waiters: ((ok: boolean) => void)[];
  /** Replicates sent on this socket whose Durable has not come, by ack id. */
  awaitingAcks: Map<number, PeerAcks>;
}

const noWaiter = (): void => {};

export interface GossipEvents {
  /** A peer's full state (sync step 2) was applied. */
  onSynced: (peerId: string | null) => void;
  onMembersChanged: () => void;
  /** A peer's update changed our state: the counter stores it, then hands it back to `enqueue`. */
  onApplied: (update: Uint8Array, origin: Origin) => void;
  /**
   * A peer's Replicate was applied (`produced`: what it changed here, maybe nothing): the counter
   * stores it as `onApplied` does, but fsynced at once, and resolves once it is on disk.
   */
  onReplicated: (produced: Uint8Array[], origin: Origin) => Promise<void>;
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
  /** Peer id → the peer ids it announced being connected to; rebuilt after awareness changes. */
  private linksOf: Map<string, ReadonlySet<string>> | null = null;
  /** Updates not yet sent, by where they came from (which decides who gets them). */
  private outbox = new Map<Origin, Uint8Array[]>();
  private outboxTimer: TimerHandle | null = null;
  private nextAckId = 1;
  private closed = false;

  constructor(
    private readonly config: Readonly<CounterConfig>,
    private readonly gset: GSet,
    private readonly log: Logger,
    private readonly events: GossipEvents,
    private readonly transport: Transport,
    private readonly clock: Clock,
  ) {
    this.configured = new Set(config.peers.map(formatAddress));
    this.awareness = new awarenessProtocol.Awareness(gset.doc);
    this.awareness.setLocalState({ id: config.id, address: config.advertiseAddress, peers: [] });
    this.awareness.on('update', this.onAwarenessUpdate);
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

  /**
   * Read repair: asks the peer for what it holds and we lack (a sync step 1 out of turn) and
   * resolves once its answer is applied, so a count taken afterwards includes the peer's items.
   * Rejects when no link to that peer is open, when the link closes, or after `timeoutMs`.
   */
  pull(peerId: string, timeoutMs: number): Promise<void> {
    let peer: Peer | undefined;
    for (const p of this.peers) if (p.id === peerId && p.sock.open) peer = p;
    if (!peer) return Promise.reject(new Error(`no open link to peer ${peerId}`));
    const { sock, step2Waiters } = peer;
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
      step2Waiters.push((ok) => settle(ok, 'the link closed'));
      sock.send(writeSync((e) => syncProtocol.writeSyncStep1(e, this.gset.doc)));
    });
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
    return { heartbeatMs: this.config.heartbeatMs, log: this.log.child({ peer: remote }), clock: this.clock };
  }

  /** A peer session on the socket `attach` gives it the receiver of (an accepted socket handed off, or a new one for a dialed wire). */
  private addPeer(dialedAddress: string | null, attach: (receiver: Receiver) => MeshSocket): Peer {
    let peer: Peer | null = null;
    // no message can arrive before attach returns: wires deliver asynchronously
    const sock = attach({ onMessage: (msg) => this.onPeerMessage(peer!, msg), onClose: () => this.onPeerClose(peer!) });
    // the step 1 sent below is the first the peer answers
    peer = { sock, id: null, address: dialedAddress, origin: { kind: 'peer', peerId: sock.remote, connection: sock }, step2Waiters: [noWaiter], awaitingAcks: new Map() };
    this.peers.add(peer);
    sock.send(writeHello({ role: 'peer', nodeId: this.config.id, address: this.config.advertiseAddress }));
    sock.send(writeSync((e) => syncProtocol.writeSyncStep1(e, this.gset.doc)));
    const states = [...this.awareness.getStates().keys()];
    sock.send(writeAwareness(awarenessProtocol.encodeAwarenessUpdate(this.awareness, states)));
    return peer;
  }

  private onPeerClose(peer: Peer): void {
    this.peers.delete(peer);
    for (const w of peer.step2Waiters.splice(0)) w(false);
    const unanswered = [...peer.awaitingAcks.values()];
    peer.awaitingAcks.clear();
    for (const acks of unanswered) acks.lost();
    this.publishLinks();
    this.log.debug({ peer: peer.id ?? peer.sock.remote }, 'peer connection closed');
    this.events.onMembersChanged();
  }

  private onPeerMessage(peer: Peer, msg: Message): void {
    switch (msg.type) {
      case MessageType.Hello: {
        if (msg.hello.role !== 'peer') throw new ProtocolError('a coordinator hello on a peer connection');
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
        peer.address ??= msg.hello.address;
        peer.origin = { kind: 'peer', peerId: peer.id, connection: peer.sock };
        this.publishLinks();
        this.events.observer?.onPeerHello(peer.id, peer.sock);
        this.log.info({ peer: peer.id, remote: peer.sock.remote }, 'peer connected');
        this.events.onMembersChanged();
        return;
      }
      case MessageType.Sync: {
        // decode and apply first; only then store and forward, outside the blame of the peer's bytes
        const { kind, reply, produced, stateVector } = this.readSync(msg.decoder, peer.origin);
        if (reply) peer.sock.send(reply);
        if (stateVector && reply && peer.id !== null) this.events.observer?.onPeerStateVector(peer.id, stateVector, reply.length);
        for (const update of produced) this.events.onApplied(update, peer.origin);
        if (kind === syncProtocol.messageYjsSyncStep2) {
          // applied (and counted) by now: a read repair waiting on this answer can count
          peer.step2Waiters.shift()?.(true);
          this.events.onSynced(peer.id);
        }
        return;
      }
      case MessageType.Replicate: {
        const produced = this.applyUpdate(msg.update, peer.origin);
        // structs waiting for an update we missed are not held yet: no acknowledgment for them (the
        // sender's wait runs out); anti-entropy brings the gap, and a retried write is answered
        const whole = this.gset.holdsAll(msg.update);
        const stored = this.events.onReplicated(produced, peer.origin);
        const { ackId } = msg;
        stored.then(
          () => {
            if (whole) peer.sock.sendNow(writeDurable(ackId));
          },
          // the storage layer logged the failure; the sender hears nothing and counts one ack fewer
          (err: Error) => this.log.debug({ peer: peer.id, err: err.message }, 'a replicated update is not on disk; not acknowledged'),
        );
        return;
      }
      case MessageType.Durable: {
        const acks = peer.awaitingAcks.get(msg.ackId);
        if (!acks) return; // answered after the write stopped waiting
        peer.awaitingAcks.delete(msg.ackId);
        if (peer.id === null) acks.lost();
        else acks.ack(peer.id);
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
  private readSync(decoder: decoding.Decoder, origin: Origin): { kind: number; reply: Uint8Array | null; produced: Uint8Array[]; stateVector?: Uint8Array } {
    try {
      const kind = decoding.readVarUint(decoder);
      switch (kind) {
        case syncProtocol.messageYjsSyncStep1: {
          const sv = decoding.readVarUint8Array(decoder);
          return { kind, reply: writeSync((e) => syncProtocol.writeSyncStep2(e, this.gset.doc, sv)), produced: [], stateVector: sv };
        }
        case syncProtocol.messageYjsSyncStep2:
        case syncProtocol.messageYjsUpdate:
          return { kind, reply: null, produced: this.applyUpdate(decoding.readVarUint8Array(decoder), origin) };
        default:
          throw new ProtocolError(`unknown sync message type ${kind}`);
      }
    } catch (err) {
      if (err instanceof ProtocolError) throw err;
      throw new ProtocolError(`malformed sync message: ${(err as Error).message}`);
    }
  }

  /** A peer's Yjs update applied here; what it changed comes back. Anything thrown is about the peer's bytes. */
  private applyUpdate(update: Uint8Array, origin: Origin): Uint8Array[] {
    try {
      return this.gset.apply(update, origin);
    } catch (err) {
      throw new ProtocolError(`malformed sync message: ${(err as Error).message}`);
    }
  }

  /**
   * Hands an update this counter applied (its own write or a peer's) to replication: it leaves
   * within GOSSIP_DELAY_MS, merged with the others of that window, to the peers that need it.
   * With `acks` (a write waiting for peers' acknowledgments, always our own) it leaves now, with
   * the window's other updates of ours, as a Replicate whose answers `acks` collects.
   */
  enqueue(update: Uint8Array, origin: Origin, acks: PeerAcks | null = null): void {
    if (this.peers.size === 0) {
      acks?.seal();
      return;
    }
    if (acks) {
      const gathered = this.outbox.get(origin) ?? [];
      this.outbox.delete(origin);
      gathered.push(update);
      this.forward(gathered, origin, acks);
      return;
    }
    if (this.config.gossipDelayMs === 0) {
      this.forward([update], origin);
      return;
    }
    const pending = this.outbox.get(origin);
    if (pending) pending.push(update);
    else this.outbox.set(origin, [update]);
    this.outboxTimer ??= this.clock.setTimeout(this.flushOutbox, this.config.gossipDelayMs);
  }

  private readonly flushOutbox = (): void => {
    this.outboxTimer = null;
    const outbox = this.outbox;
    this.outbox = new Map();
    for (const [origin, updates] of outbox) this.forward(updates, origin);
  };

  /**
   * Sends updates to every peer that needs them from us: not their sender, nor peers it reaches
   * itself. With `acks`, as a Replicate each of them answers.
   */
  private forward(updates: Uint8Array[], origin: Origin, acks: PeerAcks | null = null): void {
    const merged = updates.length === 1 ? updates[0]! : Y.mergeUpdates(updates);
    const ackId = acks ? this.takeAckId() : 0;
    const frame = acks ? writeReplicate(ackId, merged) : writeSync((e) => syncProtocol.writeUpdate(e, merged));
    // two counters that dialed each other share two sockets; one copy per peer is enough
    const sentTo = new Set<string>();
    const from = origin.kind === 'peer' ? origin.peerId : null;
    const reachedBySender = from === null ? undefined : this.announcedLinks().get(from);
    for (const p of this.peers) {
      if (p.origin === origin || p.sock.buffered > MAX_BUFFERED_BYTES) continue;
      if (p.id !== null && (p.id === from || sentTo.has(p.id) || reachedBySender?.has(p.id))) continue;
      if (p.id !== null) sentTo.add(p.id);
      if (!acks) {
        p.sock.send(frame);
        continue;
      }
      // a write is waiting: not corked until the end of the turn
      p.sock.sendNow(frame);
      const waiting = p.awaitingAcks;
      waiting.set(ackId, acks);
      acks.sentOnLink(() => waiting.delete(ackId));
    }
    acks?.seal();
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
    const frame = writeAwareness(awarenessProtocol.encodeAwarenessUpdate(this.awareness, changed));
    for (const p of this.peers) if (p.origin !== origin) p.sock.send(frame);
    if (added.length > 0 || removed.length > 0) {
      this.reconcileDialers();
      this.events.onMembersChanged();
    }
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
    const frame = writeSync((e) => syncProtocol.writeSyncStep1(e, this.gset.doc));
    for (const p of this.peers) {
      p.step2Waiters.push(noWaiter);
      p.sock.send(frame);
    }
    this.reconcileDialers();
  }
}
