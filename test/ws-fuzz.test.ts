/**
 * Hostile peers on a counter's `/mesh` endpoint (real processes, connecting with the right
 * secret straight to the counter): garbage, truncated and malformed messages of every type,
 * mutated y-protocols sync and awareness messages, unknown types, messages in the wrong
 * direction, text frames, broken WebSocket frames (reserved opcode, RSV bits, unmasked), a frame
 * over MAX_MESSAGE_BYTES and a flood.
 *
 * Invariants: each hostile connection is closed with a close code; the counter stays up and keeps
 * taking and replicating writes; the counts of guard tenants (which the fuzzer never names) do
 * not change; each rejection is logged once with the peer's address. Seeded: SEED=<n> replays.
 *
 * Mutations of Yjs updates only touch headers, lengths and the end (truncation) of updates whose
 * text holds records of fuzz tenants, so even an update that still decodes cannot add to a guard.
 *
 * Every test runs twice: on a plain mesh, then on a TLS mesh (wss://, certificates made at test
 * time), where the same frames, raw bytes included, travel inside the TLS connection.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import WebSocket from 'ws';
import * as Y from 'yjs';
import * as encoding from 'lib0/encoding';
import * as syncProtocol from 'y-protocols/sync';
import * as awarenessProtocol from 'y-protocols/awareness';
import { Mesh, type CounterNode } from './support/mesh.ts';
import { makeTestCerts, type TestCerts } from './support/certs.ts';
import { waitFor } from '../src/shared/wait.ts';
import { encodeRecord } from '../src/counter/records.ts';
import {
  CloseCode,
  MessageType,
  ReplyStatus,
  writeAdd,
  writeAwareness,
  writeCount,
  writeTally,
  writeTallied,
  writeTallyBatch,
  writeTalliedBatch,
  writeWatch,
  writeUnwatch,
  writeCounts,
  writeHello,
  writeReply,
  writeStatus,
  writeShardSync,
} from '../src/protocol/messages.ts';
import { mulberry32 } from './support/prng.ts';

const SEED = Number(process.env.SEED ?? Math.floor(Math.random() * 2 ** 31));
console.log(`ws-fuzz: SEED=${SEED}`);
const MAX_MESSAGE_BYTES = 64 * 1024;
/** The mesh's SHARDS (the default): peer hellos must name it, and shard ids are below it. */
const SHARDS = 64;

/** A hello as a real process sends it: peers name the mesh's SHARDS. */
function hello(role: 'peer' | 'coordinator', nodeId: string, address: string): Uint8Array {
  return writeHello(role === 'peer' ? { role, nodeId, address, shards: SHARDS } : { role, nodeId, address });
}

/** A sync message about one of the mesh's shards. */
function shardSync(write: Parameters<typeof writeShardSync>[1]): Uint8Array {
  return writeShardSync(int(0, SHARDS - 1), write);
}
/** Fuzz clients connect from this loopback IP, so their lines in the counter's log are theirs. */
const CLIENT_IP = '127.0.0.60';
const CONNECTIONS = 500;
const PARALLEL = 12;

const rng = mulberry32(SEED);
const int = (min: number, max: number) => min + Math.floor(rng() * (max - min + 1));
const pick = <T>(list: readonly T[]): T => list[Math.floor(rng() * list.length)]!;
const bytes = (n: number) => Uint8Array.from({ length: n }, () => int(0, 255));
const concat = (...parts: Uint8Array[]) => Uint8Array.from(parts.flatMap((p) => [...p]));
const varUint = (n: number) => {
  const e = encoding.createEncoder();
  encoding.writeVarUint(e, n);
  return encoding.toUint8Array(e);
};

let mesh: Mesh;
let target: CounterNode;
/** Set for the TLS run: the CA the fuzz clients trust. */
let tlsCa: Buffer | null = null;
const guards = new Map<string, number>();

// ---------------------------------------------------------------- material to mutate

/** A Yjs document like a counter's, holding records of fuzz tenants only. */
function fuzzDoc(): Y.Doc {
  const doc = new Y.Doc({ gc: false });
  const text = doc.getText('log0');
  text.insert(0, [1, 2, 3].map((i) => encodeRecord(`wsfz-${i}`, `id-${int(0, 1e6)}`)).join(''));
  text.insert(text.length, encodeRecord('wsfz-4', 'x'));
  return doc;
}
const doc = fuzzDoc();
const update = Y.encodeStateAsUpdate(doc);
/** An awareness update whose state is no member (no id/address) under a random client id. */
const awarenessUpdate = (() => {
  const d = new Y.Doc();
  const aw = new awarenessProtocol.Awareness(d);
  aw.setLocalState({ fuzz: int(0, 1e9) });
  const u = awarenessProtocol.encodeAwarenessUpdate(aw, [d.clientID]);
  aw.destroy();
  return u;
})();

/** Valid frames of every type: material for truncation (a truncated frame never decodes). */
function validFrames(): Uint8Array[] {
  return [
    hello(pick(['peer', 'coordinator']), `fz-${int(0, 99)}`, '127.0.0.1:1'),
    writeAdd(int(0, 1e6), [{ tenant: 'wsfz-a', id: `x${int(0, 1e6)}` }, { tenant: 'wsfz-b', id: 'y' }]),
    writeCount(int(0, 1e6), 'wsfz-a'),
    writeTally(int(0, 1e6), 'wsfz-a', pick([[], ['c1'], ['c1', 'fz-peer']])),
    writeTallied(int(0, 1e6), int(0, 1e6), int(0, 2 ** 40)),
    writeTallyBatch(int(0, 1e6), pick([['wsfz-a'], ['wsfz-a', 'wsfz-b']])),
    writeTalliedBatch(int(0, 1e6), [{ count: int(0, 1e6), digest: int(0, 2 ** 40) }, { refused: 'no' }]),
    writeWatch(int(0, 1e6), 'wsfz-a'),
    writeUnwatch(pick([[], ['wsfz-a'], ['wsfz-a', 'wsfz-b']])),
    writeCounts([{ tenant: 'wsfz-a', count: int(0, 1e6) }]),
    writeReply(int(0, 1e6), ReplyStatus.Ok, int(0, 1e6), 'ok'),
    writeStatus({ id: 'fz', address: '127.0.0.1:1', ready: true, items: 3, members: [] }),
    writeAwareness(awarenessUpdate),
    shardSync((e) => syncProtocol.writeSyncStep1(e, doc)),
    shardSync((e) => syncProtocol.writeSyncStep2(e, doc)),
    shardSync((e) => syncProtocol.writeUpdate(e, update)),
  ];
}

function truncated(frame: Uint8Array): Uint8Array {
  return frame.subarray(0, int(0, frame.length - 1));
}

/** A Yjs update broken in its header, its length or its end. */
function brokenUpdate(): Uint8Array {
  const u = Uint8Array.from(update);
  switch (int(0, 3)) {
    case 0:
      return truncated(u);
    case 1: {
      // flip bits in the leading varints (struct counts, client, clock)
      for (let k = int(1, 3); k > 0; k--) {
        const i = int(0, Math.min(5, u.length - 1));
        u[i] = u[i]! ^ (1 << int(0, 7));
      }
      return truncated(u);
    }
    case 2:
      return concat(Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0x0f), u.subarray(1));
    default:
      return bytes(int(0, 40));
  }
}

interface Fuzz {
  kind: string;
  data: Uint8Array | string;
  /** Sent as a text frame even though it is bytes. */
  text?: boolean;
  /** Written to the TCP socket as they are, bypassing WebSocket framing. */
  raw?: boolean;
}

/** Frames a counter must refuse, whatever was sent before. */
function malformed(): Fuzz {
  switch (int(0, 15)) {
    case 15:
      // a broken WebSocket frame: a reserved opcode or RSV bit in the first byte fails at once
      return { kind: 'broken WebSocket frame', data: concat(Uint8Array.of(pick([0x83, 0x84, 0x87, 0x8b, 0x8f, 0xc2, 0xa2, 0x92])), bytes(int(1, 20))), raw: true };
    case 0:
      return { kind: 'garbage', data: bytes(int(0, 200)) };
    case 1:
      return { kind: 'unknown type', data: concat(varUint(int(9, 2 ** 28)), bytes(int(0, 20))) };
    case 2:
      return { kind: 'empty frame', data: new Uint8Array(0) };
    case 3:
      return { kind: 'truncated type varint', data: Uint8Array.of(0x80 | int(0, 127)) };
    case 4:
      return { kind: 'truncated valid message', data: truncated(pick(validFrames())) };
    case 5:
      return { kind: 'length lie in a string', data: concat(varUint(MessageType.Hello), varUint(int(5, 2 ** 30)), new TextEncoder().encode('peer')) };
    case 6:
      return { kind: 'add claiming too many items', data: concat(varUint(MessageType.Add), varUint(1), varUint(int(10, 2 ** 32 - 1)), bytes(int(0, 10))) };
    case 7:
      return { kind: 'over-long count tenant', data: writeCount(1, 'w'.repeat(int(1025, 5000))) };
    case 8:
      return { kind: 'over-long hello id', data: hello('peer', 'n'.repeat(int(1025, 3000)), '') };
    case 9:
      return { kind: 'unknown role', data: concat(varUint(MessageType.Hello), varUint(5), new TextEncoder().encode('admin'), varUint(0), varUint(0)) };
    case 10:
      return { kind: 'trailing bytes', data: concat(writeCount(1, 'wsfz-a'), bytes(int(1, 8))) };
    case 11:
      return { kind: 'unknown reply status', data: concat(varUint(MessageType.Reply), varUint(1), varUint(int(3, 1000)), varUint(0), varUint(0)) };
    case 12:
      return { kind: 'malformed status json', data: concat(varUint(MessageType.Status), (() => { const e = encoding.createEncoder(); encoding.writeVarString(e, pick(['{', '[]', 'null', '{"id":1}', '"x"'])); return encoding.toUint8Array(e); })()) };
    case 13:
      return { kind: 'text frame', data: pick(['hello', '{"type":"hello"}', '\u0002']) };
    default:
      return { kind: 'text frame, invalid UTF-8', data: Uint8Array.of(0xff, 0xfe, 0xc3), text: true };
  }
}

/** Sync and awareness messages broken inside, with a correct outer frame. */
function brokenPeerMessage(): Fuzz {
  switch (int(0, 6)) {
    case 0:
      return { kind: 'sync: unknown sync type', data: concat(varUint(MessageType.ShardSync), varUint(int(0, SHARDS - 1)), varUint(int(3, 300)), bytes(int(0, 10))) };
    case 1:
      return { kind: 'sync: broken update', data: shardSync((e) => syncProtocol.writeUpdate(e, brokenUpdate())) };
    case 2:
      return { kind: 'sync: broken step 2', data: shardSync((e) => syncProtocol.writeSyncStep2(e, doc, Y.encodeStateVector(new Y.Doc()))).map((b, i, a) => (i === a.length - 1 ? b ^ 0xff : b)) };
    case 3:
      return { kind: 'sync: update length lie', data: concat(varUint(MessageType.ShardSync), varUint(int(0, SHARDS - 1)), varUint(syncProtocol.messageYjsUpdate), varUint(update.length + int(1, 1000)), update) };
    case 4:
      return { kind: 'sync: truncated state vector', data: concat(varUint(MessageType.ShardSync), varUint(int(0, SHARDS - 1)), varUint(syncProtocol.messageYjsSyncStep1), varUint(int(3, 50)), Uint8Array.of(int(1, 127))) };
    case 5:
      return { kind: 'awareness: truncated update', data: writeAwareness(truncated(awarenessUpdate)) };
    default: {
      const e = encoding.createEncoder();
      encoding.writeVarUint(e, 1);
      encoding.writeVarUint(e, int(1, 2 ** 31));
      encoding.writeVarUint(e, int(1, 1000));
      encoding.writeVarString(e, pick(['{', '{"id":', 'undefined', '{"a":1}}']));
      return { kind: 'awareness: state not JSON', data: writeAwareness(encoding.toUint8Array(e)) };
    }
  }
}

/** Well-formed messages the counter does not take on this kind of connection. */
function wrongDirection(role: 'peer' | 'coordinator' | null): Fuzz {
  const forCoordinator = [writeReply(1, ReplyStatus.Ok, 1), writeStatus({ id: 'x', address: 'a:1', ready: true, items: 0, members: [] }), shardSync((e) => syncProtocol.writeSyncStep1(e, doc)), writeAwareness(awarenessUpdate)];
  const forPeer = [writeAdd(1, [{ tenant: 'wsfz-a', id: 'z' }]), writeCount(1, 'wsfz-a'), writeReply(1, ReplyStatus.Ok, 1), hello('coordinator', 'c', '')];
  const beforeHello = [writeCount(1, 'wsfz-a'), shardSync((e) => syncProtocol.writeSyncStep1(e, doc)), writeAwareness(awarenessUpdate), writeReply(1, 0, 0)];
  return { kind: `wrong direction (${role ?? 'before hello'})`, data: pick(role === 'coordinator' ? forCoordinator : role === 'peer' ? forPeer : beforeHello) };
}

// ---------------------------------------------------------------- connections

interface Conn {
  ws: WebSocket;
  port: number;
  closed: Promise<{ code: number; reason: string }>;
}

async function connect(): Promise<Conn> {
  const ws = new WebSocket(`${tlsCa ? 'wss' : 'ws'}://${target.host}:${target.port}/mesh`, {
    ...(tlsCa ? { ca: tlsCa } : {}),
    headers: { authorization: `Bearer ${mesh.secret}` },
    localAddress: CLIENT_IP,
    perMessageDeflate: false,
    handshakeTimeout: 5000,
  });
  ws.on('error', () => {});
  const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  const port = await new Promise<number>((resolve, reject) => {
    ws.once('upgrade', (res) => resolve(res.socket.localPort ?? 0));
    ws.once('close', () => reject(new Error('closed before the upgrade')));
  });
  await new Promise<void>((resolve, reject) => {
    if (ws.readyState === WebSocket.OPEN) return resolve();
    ws.once('open', () => resolve());
    ws.once('close', () => reject(new Error('closed before open')));
  });
  return { ws, port, closed };
}

function send(ws: WebSocket, f: Fuzz): void {
  if (ws.readyState !== WebSocket.OPEN) return;
  if (f.raw) (ws as unknown as { _socket: import('node:net').Socket })._socket.write(f.data);
  else if (typeof f.data === 'string') ws.send(f.data);
  else ws.send(f.data, { binary: !f.text });
}

async function closedWithin<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not closed within ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** Close codes a counter may use for hostile input: ours, and ws's for frame-level faults. */
const REFUSED = new Set([CloseCode.ProtocolError, 1002, 1007, 1009]);

function logLines(port: number): string[] {
  return target.process.output.filter((l) => l.includes(`${CLIENT_IP}:${port}"`) && /malformed/.test(l));
}

async function guardCounts(): Promise<void> {
  for (const c of mesh.counters) {
    for (const [tenant, n] of guards) assert.is(await mesh.counterCount(c, tenant), n, `${c.id} count of guard ${tenant}`);
  }
}

async function healthy(): Promise<void> {
  assert.ok(target.process.running, `the counter is running\n${target.process.tail()}`);
  assert.is(target.process.exits, 0, 'the counter never exited');
  const res = await mesh.call(`${mesh.scheme}://${target.host}:${target.port}/health`);
  assert.is(res.status, 200);
  assert.ok(await mesh.counterReady(target));
}

/** Defines every test on a plain mesh, or on a TLS mesh. */
function defineTests(overTls: boolean): void {
  const test = suite(overTls ? 'ws-fuzz over TLS' : 'ws-fuzz');
  let certs: TestCerts | null = null;

  test.before(async () => {
    guards.clear();
    certs = overTls ? makeTestCerts() : null;
    tlsCa = certs ? fs.readFileSync(certs.good.ca) : null;
    mesh = await Mesh.start({ counters: 2, env: { MAX_MESSAGE_BYTES: String(MAX_MESSAGE_BYTES), BODY_LIMIT: String(MAX_MESSAGE_BYTES / 2) }, tls: certs?.good });
    target = mesh.counters[0]!;
    for (const n of [17, 5, 40]) {
      const tenant = `guard-${randomBytes(6).toString('hex')}`;
      guards.set(tenant, n);
      assert.is(await mesh.post(Array.from({ length: n }, (_, i) => ({ tenant, id: `g${i}` }))), 200);
    }
    await mesh.waitConverged(guards);
  });

  test.after(async () => {
    await mesh?.close();
    certs?.close();
  });

  test('each kind of malformed input closes the connection with a close code and is logged once with the address', async () => {
    const cases: { kind: string; pre: 'none' | 'peer' | 'coordinator'; f: Fuzz }[] = [
      { kind: 'garbage before hello', pre: 'none', f: { kind: 'garbage', data: Uint8Array.of(0xde, 0xad, 0xbe, 0xef) } },
      { kind: 'unknown type', pre: 'coordinator', f: { kind: 'unknown type', data: Uint8Array.of(0x7f) } },
      { kind: 'truncated hello', pre: 'none', f: { kind: 'truncated', data: hello('peer', 'x', 'y').subarray(0, 4) } },
      { kind: 'truncated add', pre: 'coordinator', f: { kind: 'truncated', data: writeAdd(1, [{ tenant: 'wsfz', id: 'abc' }]).subarray(0, 6) } },
      { kind: 'malformed sync', pre: 'peer', f: { kind: 'sync', data: concat(varUint(MessageType.ShardSync), varUint(int(0, SHARDS - 1)), varUint(9)) } },
      { kind: 'malformed update', pre: 'peer', f: { kind: 'update', data: shardSync((e) => syncProtocol.writeUpdate(e, Uint8Array.of(1, 1, 0xff))) } },
      { kind: 'malformed awareness', pre: 'peer', f: { kind: 'awareness', data: writeAwareness(truncated(awarenessUpdate)) } },
      { kind: 'text frame', pre: 'coordinator', f: { kind: 'text', data: 'hello' } },
      { kind: 'invalid UTF-8 text frame', pre: 'none', f: { kind: 'text', data: Uint8Array.of(0xc3, 0x28), text: true } },
      { kind: 'frame over MAX_MESSAGE_BYTES', pre: 'peer', f: { kind: 'big', data: new Uint8Array(MAX_MESSAGE_BYTES + 1) } },
      { kind: 'reserved opcode', pre: 'coordinator', f: { kind: 'raw', data: Uint8Array.of(0x83, 0x80, 1, 2, 3, 4), raw: true } },
      { kind: 'unmasked client frame', pre: 'none', f: { kind: 'raw', data: Uint8Array.of(0x82, 0x01, 0x7f), raw: true } },
      { kind: 'RSV bits set', pre: 'peer', f: { kind: 'raw', data: Uint8Array.of(0xf2, 0x81, 1, 2, 3, 4, 5), raw: true } },
    ];
    const expectCode: Record<string, number> = {
      'invalid UTF-8 text frame': 1007,
      'frame over MAX_MESSAGE_BYTES': 1009,
      'reserved opcode': 1002,
      'unmasked client frame': 1002,
      'RSV bits set': 1002,
    };
    for (const c of cases) {
      const conn = await connect();
      if (c.pre !== 'none') send(conn.ws, { kind: 'hello', data: hello(c.pre, `fz-log-${conn.port}`, '127.0.0.1:1') });
      send(conn.ws, c.f);
      const { code } = await closedWithin(conn.closed, 3000, c.kind);
      assert.is(code, expectCode[c.kind] ?? CloseCode.ProtocolError, `${c.kind}: close code`);
      await waitFor(() => logLines(conn.port).length > 0, 3000, `${c.kind}: a log line naming ${CLIENT_IP}:${conn.port}\n${target.process.tail(5)}`);
      // a flood after the fault adds no second line
      for (let i = 0; i < 50; i++) send(conn.ws, { kind: 'x', data: Uint8Array.of(0xff) });
      assert.is(logLines(conn.port).length, 1, `${c.kind}: logged once\n${logLines(conn.port).join('\n')}`);
    }
    await healthy();
  });

  test('a flood of frames, valid then garbage, is answered then cut off; the counter stays responsive', async () => {
    const conn = await connect();
    let replies = 0;
    conn.ws.on('message', () => replies++);
    send(conn.ws, { kind: 'hello', data: hello('coordinator', 'flood', '') });
    for (let i = 0; i < 3000; i++) send(conn.ws, { kind: 'count', data: writeCount(i + 1, `wsfz-flood-${i % 7}`) });
    // every valid request is answered before the garbage goes: sent together, the counter's reset
    // (below) can reach us before we read its answers, and a reset discards them unread (twice in
    // CI under load: 0 answers seen, though the counter had sent them)
    await waitFor(() => replies >= 3000, 10_000, `the 3000 valid requests of the flood to be answered (${replies} so far)`);
    for (let i = 0; i < 3000; i++) send(conn.ws, malformed());
    const { code } = await closedWithin(conn.closed, 10_000, 'flood');
    // the counter closes with a code while thousands of our frames are still unread on its side:
    // our close frame queues behind them, and on a loaded machine the counter's 1 s wait for it can
    // run out, or its reset can reach us before its close frame is read; either way the connection
    // drops without a close code here (1006). The log line below shows the refusal was the counter's.
    assert.ok(REFUSED.has(code) || code === 1006, `close code ${code}`);
    await waitFor(() => logLines(conn.port).length > 0, 3000, 'the flood is logged');
    assert.is(logLines(conn.port).length, 1, `logged once\n${logLines(conn.port).join('\n')}`);
    await healthy();
    await guardCounts();
  });

  test(`random hostile connections (${CONNECTIONS}, SEED=${SEED}) are all refused; guard counts never change`, async () => {
    const kinds = new Map<string, number>();
    const codes = new Map<number, number>();
    let next = 0;
    async function one(i: number): Promise<void> {
      const conn = await connect();
      const r = rng();
      const role = r < 0.3 ? null : r < 0.65 ? 'peer' : 'coordinator';
      if (role) send(conn.ws, { kind: 'hello', data: hello(role, `fz-${SEED}-${i}`, `127.0.0.1:${int(1, 65535)}`) });
      const steps = int(0, 5);
      const sent: string[] = [];
      for (let s = 0; s < steps; s++) {
        const f = role === 'peer' && rng() < 0.6 ? brokenPeerMessage() : rng() < 0.2 ? wrongDirection(role) : malformed();
        sent.push(f.kind);
        kinds.set(f.kind, (kinds.get(f.kind) ?? 0) + 1);
        send(conn.ws, f);
      }
      // end on something that is malformed whatever came before, so every connection must be closed
      const last = pick<Fuzz>([
        { kind: 'unknown type (end)', data: Uint8Array.of(0x7f) },
        { kind: 'empty frame (end)', data: new Uint8Array(0) },
        { kind: 'text frame (end)', data: 'bye' },
        { kind: 'oversized (end)', data: bytes(MAX_MESSAGE_BYTES + int(1, 1000)) },
        { kind: 'truncated count (end)', data: writeCount(1, 'wsfz').subarray(0, 3) },
      ]);
      sent.push(last.kind);
      send(conn.ws, last);
      const { code } = await closedWithin(conn.closed, 5000, `connection ${i} after ${sent.join(', ')}`);
      assert.ok(REFUSED.has(code), `connection ${i} (${role ?? 'no hello'}: ${sent.join(', ')}) closed with ${code}`);
      codes.set(code, (codes.get(code) ?? 0) + 1);
    }
    const worker = async () => {
      while (next < CONNECTIONS) await one(next++);
    };
    await Promise.all(Array.from({ length: PARALLEL }, worker));
    console.log(`ws-fuzz: ${CONNECTIONS} connections; close codes ${JSON.stringify(Object.fromEntries(codes))}; ${kinds.size} kinds of frames`);

    await healthy();
    await guardCounts();
    // still a working counter: a new write through the coordinator is stored and replicated
    const fresh = `after-fuzz-${SEED}`;
    assert.is(await mesh.post([{ tenant: fresh, id: '1' }, { tenant: fresh, id: '2' }]), 200);
    await mesh.waitConverged(new Map([[fresh, 2], ...guards]));
    assert.not.match(target.process.output.join('\n'), /uncaught|Caught error while handling a Yjs update/i);
  });

  /**
   * KNOWN BUG, skipped until fixed outside this test's files: an awareness state whose `address`
   * is no valid URL authority ("bad host:1", "x#y") is dialed by Gossip.reconcileDialers from the
   * anti-entropy timer; `new WebSocket()` in Dialer.connect throws synchronously there, which is an
   * uncaught exception: the counter exits, and so does every counter the update was forwarded to.
   * Fix: Dialer.connect catches the throw (log, stop dialing that address), and Gossip.members()
   * keeps only states whose address passes parseAddress(). Un-skip this test with the fix.
   */
  test('an awareness state with an unusable address does not crash the counters', async () => {
    const conn = await connect();
    send(conn.ws, { kind: 'hello', data: hello('peer', 'fz-ghost', '127.0.0.1:1') });
    const state = (clock: number, address: string) => {
      const e = encoding.createEncoder();
      encoding.writeVarUint(e, 1);
      encoding.writeVarUint(e, 4242);
      encoding.writeVarUint(e, clock);
      encoding.writeVarString(e, JSON.stringify({ id: 'ghost', address }));
      return writeAwareness(encoding.toUint8Array(e));
    };
    send(conn.ws, { kind: 'awareness', data: state(1, '127.0.0.1:1') });
    await new Promise((r) => setTimeout(r, 300));
    send(conn.ws, { kind: 'awareness', data: state(2, 'bad host:1') });
    // two anti-entropy rounds (Mesh sets ANTI_ENTROPY_MS=1000): the point where the dial happens
    await new Promise((r) => setTimeout(r, 2500));
    conn.ws.terminate();
    for (const c of mesh.counters) assert.ok(c.process.running, `${c.id} survived\n${c.process.tail(12)}`);
  });

  test.run();
}

defineTests(false);
defineTests(true);
