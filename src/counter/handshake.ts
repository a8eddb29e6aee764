/**
 * The first stage of an accepted mesh connection: nothing but a Hello is expected, within
 * HELLO_TIMEOUT_MS. The Hello says who connected, and the socket is handed, once, to the session
 * that serves it from then on: a peer (gossip) or a coordinator (sessions).
 */
import type { TimerHandle } from '../shared/clock.ts';
import { MeshSocket, type MeshSocketOptions, type Receiver } from '../protocol/mesh-socket.ts';
import { CloseCode, MessageType, ProtocolError, type Message } from '../protocol/messages.ts';
import type { Wire } from '../protocol/wire.ts';

const HELLO_TIMEOUT_MS = 5000;

export interface HandshakeTargets {
  /** A counter said hello: its Hello is passed on, it carries the peer's id and address. */
  peer(sock: MeshSocket, hello: Message): void;
  coordinator(sock: MeshSocket): void;
}

export type HandshakeOptions = MeshSocketOptions;

export class Handshake implements Receiver {
  private readonly timer: TimerHandle;
  private readonly sock: MeshSocket;

  /** Starts serving an accepted wire. */
  static accept(wire: Wire, remote: string, targets: HandshakeTargets, opts: HandshakeOptions): void {
    new Handshake(wire, remote, targets, opts);
  }

  private constructor(
    wire: Wire,
    remote: string,
    private readonly targets: HandshakeTargets,
    private readonly opts: HandshakeOptions,
  ) {
    this.sock = new MeshSocket(wire, remote, this, opts);
    this.timer = opts.clock.setTimeout(() => this.sock.close(CloseCode.ProtocolError, 'no hello'), HELLO_TIMEOUT_MS);
  }

  onMessage(msg: Message, sock: MeshSocket): void {
    this.opts.clock.clear(this.timer);
    if (msg.type !== MessageType.Hello) throw new ProtocolError('first message must be a hello');
    if (msg.hello.role === 'peer') this.targets.peer(sock, msg);
    else this.targets.coordinator(sock);
  }

  onClose(): void {
    this.opts.clock.clear(this.timer);
  }
}
