/**
 * Loads items straight into one counter over its WebSocket, speaking the coordinator's side of
 * the protocol (Hello with role 'coordinator', then Add requests matched to Replies by id), the
 * way src/coordinator/counter-link.ts does. Much faster than HTTP for the large fills.
 */
import WebSocket from 'ws';
import { MESH_PATH } from '../../src/protocol/ws-wire.ts';
import { MessageType, ReplyStatus, readMessage, writeAdd, writeHello, type Item } from '../../src/protocol/messages.ts';
import { shardOf } from '../../src/shared/placement.ts';

export class CounterClient {
  private nextReqId = 1;
  private readonly pending = new Map<number, { resolve: (n: number) => void; reject: (e: Error) => void }>();
  private closedError: Error | null = null;

  private constructor(private readonly ws: WebSocket, readonly address: string) {
    ws.on('message', (data: Buffer) => {
      const msg = readMessage(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
      if (msg.type !== MessageType.Reply) return; // Hello, Status
      const p = this.pending.get(msg.reqId);
      if (!p) return;
      this.pending.delete(msg.reqId);
      if (msg.status === ReplyStatus.Ok) p.resolve(msg.value);
      else p.reject(new Error(`counter ${address} refused an add: ${msg.message}`));
    });
    ws.on('close', () => {
      this.closedError = new Error(`connection to counter ${address} closed`);
      for (const p of this.pending.values()) p.reject(this.closedError);
      this.pending.clear();
    });
    ws.on('error', () => {}); // 'close' follows
  }

  static async connect(address: string, secret: string): Promise<CounterClient> {
    const ws = new WebSocket(`ws://${address}${MESH_PATH}`, {
      headers: secret ? { authorization: `Bearer ${secret}` } : {},
      perMessageDeflate: false,
      maxPayload: 64 * 1024 * 1024,
    });
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    ws.binaryType = 'nodebuffer';
    ws.send(writeHello({ role: 'coordinator', nodeId: 'bench-loader', address: '' }));
    return new CounterClient(ws, address);
  }

  /** Adds the items; resolves once the counter acknowledged them (fsynced). */
  add(items: readonly Item[]): Promise<number> {
    if (this.closedError) return Promise.reject(this.closedError);
    const reqId = this.nextReqId++;
    return new Promise((resolve, reject) => {
      this.pending.set(reqId, { resolve, reject });
      this.ws.send(writeAdd(reqId, items));
    });
  }

  close(): void {
    this.ws.close();
  }
}

/**
 * Sends `batches` (a generator of item arrays) keeping `window` requests in flight; resolves with
 * the number of items acknowledged.
 */
export async function loadBatches(client: CounterClient, batches: Iterable<Item[]>, window = 16): Promise<number> {
  const it = batches[Symbol.iterator]();
  let acked = 0;
  let failure: Error | null = null;
  const lane = async (): Promise<void> => {
    for (;;) {
      if (failure) return;
      const next = it.next();
      if (next.done) return;
      try {
        acked += await client.add(next.value);
      } catch (err) {
        failure = err as Error;
      }
    }
  };
  await Promise.all(Array.from({ length: window }, lane));
  if (failure) throw failure;
  return acked;
}

/**
 * Loads items into a sharded mesh: each item goes to its shard's home replica (the first of the
 * placement its counters agree on), which refuses shards it does not serve; gossip copies it to
 * the shard's other replicas.
 */
export class ShardedLoader {
  private constructor(
    private readonly clients: Map<string, CounterClient>,
    private readonly home: string[],
    private readonly shards: number,
  ) {}

  /** Connects to every counter; `placement` is placeShards over the mesh's members (ids as in `counters`). */
  static async connect(counters: readonly { id: string; address: string }[], secret: string, placement: readonly string[][]): Promise<ShardedLoader> {
    const clients = new Map<string, CounterClient>();
    for (const c of counters) clients.set(c.id, await CounterClient.connect(c.address, secret));
    const home = placement.map((replicas, s) => {
      const id = replicas[0];
      if (id === undefined || !clients.has(id)) throw new Error(`shard ${s} is placed on ${replicas.join(', ')}, not on a counter the loader reaches`);
      return id;
    });
    return new ShardedLoader(clients, home, placement.length);
  }

  /** Sends `batches`, each split by home replica, keeping `window` batches in flight; resolves with the items acknowledged. */
  async load(batches: Iterable<Item[]>, window = 8): Promise<number> {
    const byCounter = (items: Item[]): Map<string, Item[]> => {
      const out = new Map<string, Item[]>();
      for (const item of items) {
        const id = this.home[shardOf(item.tenant, this.shards)]!;
        const list = out.get(id);
        if (list) list.push(item);
        else out.set(id, [item]);
      }
      return out;
    };
    const it = batches[Symbol.iterator]();
    let acked = 0;
    let failure: Error | null = null;
    const lane = async (): Promise<void> => {
      for (;;) {
        if (failure) return;
        const next = it.next();
        if (next.done) return;
        try {
          const parts = [...byCounter(next.value)].map(([id, items]) => this.clients.get(id)!.add(items));
          for (const n of await Promise.all(parts)) acked += n;
        } catch (err) {
          failure = err as Error;
        }
      }
    };
    await Promise.all(Array.from({ length: window }, lane));
    if (failure) throw failure;
    return acked;
  }

  close(): void {
    for (const c of this.clients.values()) c.close();
  }
}
