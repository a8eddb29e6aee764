/**
 * The coordinator's routing by shard, against fake counters: a real CounterPool and real
 * CounterLinks over an in-memory transport, each fake counter answering from a Status the test
 * sets (placement, serving and held shards) and recording every request it gets. No Yjs, no disk:
 * what is checked is where requests go. Also GET /shards, GET /counters and DELETE /counters/:id
 * through `app.inject()` on the real pool.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import pino from 'pino';
import type { FastifyInstance } from 'fastify';
import { CounterPool, coordinatorWeight, NoCounterAvailableError, type ShardsView } from '../src/coordinator/counter-pool.ts';
import { buildCoordinatorServer } from '../src/coordinator/server.ts';
import { ShardMap } from '../src/coordinator/shard-map.ts';
import { coordinatorConfig, type Env } from '../src/shared/config.ts';
import { systemClock } from '../src/shared/clock.ts';
import { placeShards, shardOf } from '../src/shared/placement.ts';
import { waitFor } from '../src/shared/wait.ts';
import { MessageType, ReplyStatus, readMessage, writeHello, writeReply, writeStatus, writeTallied, type Item, type Message, type ReplyStatusNumber, type Status } from '../src/protocol/messages.ts';
import type { DialHandlers, Transport, Wire, WireEvents } from '../src/protocol/wire.ts';

const SHARDS = 8;
const FACTOR = 3;
const COORDINATOR_ID = 'coord-a';
const silent = pino({ level: 'silent' });

/** One request as a fake counter received it, in the order all counters received them. */
interface Received {
  counter: string;
  type: 'add' | 'watch' | 'unwatch' | 'count' | 'tally' | 'remove';
  tenants?: string[];
  acks?: number;
  items?: Item[];
  tenant?: string;
  nodeId?: string;
  /** What the counter answered: ok, or why not. */
  answer: string;
}

/** One end of an in-memory connection between a CounterLink and a fake counter; frames keep their order. */
class FakeWire implements Wire {
  private events: WireEvents | null = null;
  isOpen = true;
  readonly bufferedBytes = 0;

  constructor(
    private readonly counter: FakeCounter,
    private readonly gone: () => void,
  ) {}

  get open(): boolean {
    return this.isOpen;
  }
  bind(events: WireEvents): void {
    this.events = events;
  }
  /** Coordinator → counter. */
  send(frame: Uint8Array): void {
    if (!this.isOpen) return;
    const copy = frame.slice();
    setImmediate(() => this.isOpen && this.counter.receive(this, copy));
  }
  /** Counter → coordinator. */
  deliver(frame: Uint8Array): void {
    if (!this.isOpen) return;
    setImmediate(() => this.isOpen && this.events?.message(frame, true));
  }
  ping(): void {
    setImmediate(() => this.isOpen && this.events?.heard());
  }
  cork(): void {}
  uncork(): void {}
  close(code: number, reason: string): void {
    if (!this.isOpen) return;
    this.isOpen = false;
    this.counter.wires.delete(this);
    setImmediate(() => {
      this.events?.closed(code, reason);
      this.gone();
    });
  }
  terminate(): void {
    this.close(1006, '');
  }
}

/** A counter that answers from the Status the test gives it. */
class FakeCounter {
  readonly wires = new Set<FakeWire>();
  readonly stored = new Map<string, Set<string>>();
  up = true;
  /** Answers every Add, Count, Watch and Tally as Unavailable (a failing disk, say). */
  failing = false;
  /** The answer to a Remove. */
  removeAnswer: { status: ReplyStatusNumber; message: string } = { status: ReplyStatus.Ok, message: '' };
  status: Status;

  constructor(
    readonly id: string,
    readonly address: string,
    private readonly log: Received[],
  ) {
    this.status = { id, address, ready: true, items: 0, members: [] };
  }

  /** Changes the status and pushes it to every connected coordinator (as a counter does on change). */
  set(change: Partial<Status>): void {
    this.status = { ...this.status, ...change };
    for (const w of this.wires) w.deliver(writeStatus(this.status));
  }

  /** The counter dies: connections drop, dials are refused. */
  kill(): void {
    this.up = false;
    for (const w of [...this.wires]) w.close(1006, '');
  }

  receive(wire: FakeWire, frame: Uint8Array): void {
    const msg = readMessage(frame);
    if (msg.type === MessageType.Hello) {
      wire.deliver(writeHello({ role: 'peer', nodeId: this.id, address: this.address, shards: this.status.shards }));
      wire.deliver(writeStatus(this.status));
      return;
    }
    const reply = this.answer(msg);
    if (reply) wire.deliver(reply);
  }

  /** The reply to a request, after noting it in the log. */
  private answer(msg: Message): Uint8Array | null {
    switch (msg.type) {
      case MessageType.Add: {
        const why = this.refusal(msg.items.map((it) => it.tenant));
        this.log.push({ counter: this.id, type: 'add', items: msg.items, acks: msg.acks, answer: why ?? 'ok' });
        if (why) return writeReply(msg.reqId, ReplyStatus.Unavailable, 0, why);
        for (const it of msg.items) {
          const set = this.stored.get(it.tenant) ?? new Set<string>();
          set.add(it.id);
          this.stored.set(it.tenant, set);
        }
        return writeReply(msg.reqId, ReplyStatus.Ok, msg.items.length);
      }
      case MessageType.Count:
      case MessageType.Watch: {
        const why = this.refusal([msg.tenant]);
        this.log.push({ counter: this.id, type: msg.type === MessageType.Watch ? 'watch' : 'count', tenant: msg.tenant, answer: why ?? 'ok' });
        if (why) return writeReply(msg.reqId, ReplyStatus.Unavailable, 0, why);
        return writeReply(msg.reqId, ReplyStatus.Ok, this.stored.get(msg.tenant)?.size ?? 0);
      }
      case MessageType.Tally: {
        const why = this.refusal([msg.tenant]);
        this.log.push({ counter: this.id, type: 'tally', tenant: msg.tenant, answer: why ?? 'ok' });
        if (why) return writeReply(msg.reqId, ReplyStatus.Unavailable, 0, why);
        return writeTallied(msg.reqId, this.stored.get(msg.tenant)?.size ?? 0, 0);
      }
      case MessageType.Remove:
        this.log.push({ counter: this.id, type: 'remove', nodeId: msg.nodeId, answer: this.removeAnswer.message || 'ok' });
        return writeReply(msg.reqId, this.removeAnswer.status as ReplyStatusNumber, 0, this.removeAnswer.message);
      case MessageType.Unwatch:
        this.log.push({ counter: this.id, type: 'unwatch', tenants: msg.tenants, answer: 'ok' });
        return null;
      default:
        throw new Error(`the fake counter got message type ${msg.type}`);
    }
  }

  /** Why the counter refuses a request about these tenants (the contract's message), or null. */
  private refusal(tenants: string[]): string | null {
    if (this.failing) return `counter ${this.id} is failing`;
    const { serving, shards } = this.status;
    if (serving === undefined || shards === undefined) return null;
    for (const t of tenants) {
      const s = shardOf(t, shards);
      if (!serving.includes(s)) return `counter ${this.id} does not serve shard ${s}`;
    }
    return null;
  }
}

/** Dials fake counters by address. */
class FakeTransport implements Transport {
  readonly counters = new Map<string, FakeCounter>();

  dial(address: string, handlers: DialHandlers): () => void {
    let aborted = false;
    let wire: FakeWire | null = null;
    setImmediate(() => {
      if (aborted) return;
      const c = this.counters.get(address);
      if (!c?.up) return handlers.closed();
      wire = new FakeWire(c, () => handlers.closed());
      c.wires.add(wire);
      handlers.opened(wire);
    });
    return () => {
      aborted = true;
      wire?.terminate();
    };
  }
}

interface Mesh {
  pool: CounterPool;
  counters: Map<string, FakeCounter>;
  log: Received[];
  ids: string[];
  /** Placement of the ids, as the counters compute it. */
  placement: string[][];
  close(): void;
}

/**
 * `n` fake counters c1..cn, every one placed and serving the shards placement gives it (unless
 * `placed` is false: statuses of a counter without placement), and a pool connected to all.
 */
async function mesh(n: number, opts: { placed?: boolean; env?: Env } = {}): Promise<Mesh> {
  const transport = new FakeTransport();
  const log: Received[] = [];
  const ids = Array.from({ length: n }, (_, i) => `c${i + 1}`);
  const addresses = ids.map((_, i) => `127.0.0.1:${20001 + i}`);
  const members = ids.map((id, i) => ({ id, address: addresses[i]! }));
  const placement = placeShards(SHARDS, ids, FACTOR);
  const counters = new Map<string, FakeCounter>();
  ids.forEach((id, i) => {
    const c = new FakeCounter(id, addresses[i]!, log);
    const mine = placement.flatMap((replicas, shard) => (replicas.includes(id) ? [shard] : []));
    c.status = { ...c.status, members, shards: SHARDS };
    if (opts.placed !== false) c.status = { ...c.status, factor: FACTOR, placed: ids, removed: [], serving: mine, held: mine };
    counters.set(id, c);
    transport.counters.set(addresses[i]!, c);
  });
  const config = coordinatorConfig({
    LOG_LEVEL: 'silent',
    COORDINATOR_ID,
    COUNTERS: addresses.join(','),
    HEARTBEAT_MS: '60000',
    COUNTER_TIMEOUT_MS: '2000',
    ...opts.env,
  });
  const pool = new CounterPool(config, silent, { transport, clock: systemClock });
  // real sockets keep the process alive while a request waits on the pool's (unref'd) timers; these fake ones do not
  const alive = setInterval(() => {}, 60_000);
  await pool.start();
  await waitFor(() => pool.view().filter((v) => v.ready).length === n && pool.view().every((v) => ids.includes(v.id)), 5_000, 'every fake counter linked and ready');
  return {
    pool,
    counters,
    log,
    ids,
    placement,
    close: () => {
      clearInterval(alive);
      pool.close();
    },
  };
}

/** The replica this coordinator ranks first among `ids`. */
function byWeight(ids: readonly string[]): string[] {
  return [...ids].sort((a, b) => coordinatorWeight(COORDINATOR_ID, b) - coordinatorWeight(COORDINATOR_ID, a));
}

/** A tenant whose shard satisfies `ok`, with its shard. */
function tenantWhere(ok: (shard: number) => boolean, from = 0): { tenant: string; shard: number } {
  for (let i = from; i < 100_000; i++) {
    const tenant = `tenant-${i}`;
    const shard = shardOf(tenant, SHARDS);
    if (ok(shard)) return { tenant, shard };
  }
  throw new Error('no such tenant');
}

/** Waits for the pool to see what the fake counters pushed (a status crosses one setImmediate hop). */
function seen(check: () => boolean, what: string): Promise<unknown> {
  return waitFor(check, 5_000, what);
}

const adds = (m: Mesh) => m.log.filter((r) => r.type === 'add');

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a rejection');
}

// ---------------------------------------------------------------- the placement

test('ShardMap: placed = union of placed lists minus union of removed; recomputed only when that changes', () => {
  const map = new ShardMap();
  const st = (id: string, placed: string[], removed: string[] = []): Status => ({ id, address: '', ready: true, items: 0, members: [], shards: SHARDS, factor: FACTOR, placed, removed });
  map.update([st('a', ['a', 'b', 'c']), st('b', ['a', 'b', 'c', 'd'])]);
  assert.equal(map.members, ['a', 'b', 'c', 'd']);
  assert.equal(
    Array.from({ length: SHARDS }, (_, s) => map.replicasOf(s)),
    placeShards(SHARDS, ['a', 'b', 'c', 'd'], FACTOR),
  );
  const before = map.replicasOf(0);
  map.update([st('b', ['d', 'c', 'b', 'a']), st('a', ['a', 'b', 'c'])]);
  assert.ok(map.replicasOf(0) === before, 'same inputs in another order: the placement is not computed again');
  // one counter already knows c is removed: it is out, whatever the others still list
  map.update([st('a', ['a', 'b', 'c', 'd']), st('b', ['a', 'b', 'd'], ['c'])]);
  assert.equal(map.members, ['a', 'b', 'd']);
  assert.equal(map.removed, ['c']);
  assert.ok(map.isRemoved('c'));
  assert.equal(map.replicasOf(0), placeShards(SHARDS, ['a', 'b', 'd'], FACTOR)[0]);
  // statuses without placement fields count for nothing
  const plain = new ShardMap();
  plain.update([{ id: 'a', address: '', ready: true, items: 0, members: [], shards: SHARDS }, null]);
  assert.is(plain.sharded, false);
});

// ---------------------------------------------------------------- routing

test('an item goes to its shard\'s home replica: of the shard\'s replicas, the one this coordinator ranks first', async () => {
  const m = await mesh(5);
  try {
    const homes = new Set<string>();
    for (let i = 0; i < 40; i++) {
      const tenant = `t${i}`;
      const shard = shardOf(tenant, SHARDS);
      await m.pool.add([{ tenant, id: 'x' }]);
      const home = byWeight(m.placement[shard]!)[0]!;
      assert.is(adds(m).at(-1)!.counter, home, `tenant ${tenant} (shard ${shard}, replicas ${m.placement[shard]})`);
      homes.add(home);
    }
    assert.ok(homes.size > 1, 'with more counters than the factor, tenants spread over several homes');
    assert.is(adds(m).length, 40, 'one Add per write, no failover');
    assert.is(m.pool.failovers, 0);
  } finally {
    m.close();
  }
});

test('with no more counters than the factor every tenant has the same home: today\'s single home counter', async () => {
  const m = await mesh(3);
  try {
    for (let i = 0; i < 20; i++) await m.pool.add([{ tenant: `t${i}`, id: 'x' }]);
    const home = byWeight(m.ids)[0]!;
    assert.equal([...new Set(adds(m).map((a) => a.counter))], [home]);
    // and a batch of many tenants is one Add
    await m.pool.add(Array.from({ length: 30 }, (_, i) => ({ tenant: `u${i}`, id: 'y' })));
    assert.is(adds(m).length, 21);
    assert.is(adds(m).at(-1)!.items!.length, 30);
  } finally {
    m.close();
  }
});

test('a replica that does not serve the shard (catching up) is skipped; the next by weight is home', async () => {
  const m = await mesh(5);
  try {
    const { tenant, shard } = tenantWhere(() => true);
    const [home, second] = byWeight(m.placement[shard]!);
    const c = m.counters.get(home!)!;
    c.set({ serving: c.status.serving!.filter((s) => s !== shard) }); // still held: catching up
    await seen(() => !m.pool.replicas(tenant).find((r) => r.id === home)!.usable, 'the pool sees the home stop serving the shard');
    await m.pool.add([{ tenant, id: 'a' }]);
    assert.equal(
      adds(m).map((a) => a.counter),
      [second],
    );
    assert.is(m.pool.failovers, 0, 'chosen by status, not by a refusal');
    assert.is(m.pool.replicas(tenant)[0]!.id, second, 'quorum paths put the new home first');
  } finally {
    m.close();
  }
});

test('failover goes through the shard\'s replicas in placement order, then counters handing the shard off', async () => {
  const m = await mesh(5);
  try {
    // a shard whose failover order (placement order without the home) differs from the weight order
    const { tenant, shard } = tenantWhere((s) => {
      const placed = m.placement[s]!;
      const home = byWeight(placed)[0];
      const rest = placed.filter((id) => id !== home);
      return rest.join() !== byWeight(rest).join();
    });
    const placed = m.placement[shard]!;
    const home = byWeight(placed)[0]!;
    const order = [home, ...placed.filter((id) => id !== home)];
    const outsider = m.ids.find((id) => !placed.includes(id))!;
    // the outsider still serves the shard: it is handing it off
    const o = m.counters.get(outsider)!;
    o.set({ serving: [...o.status.serving!, shard], held: [...o.status.held!, shard] });
    for (const id of placed) m.counters.get(id)!.failing = true;
    await seen(() => m.pool.shardsView().shards[shard]!.handingOff.includes(outsider), 'the pool sees the handoff');

    await m.pool.add([{ tenant, id: 'a' }]);
    assert.equal(
      adds(m).map((a) => `${a.counter} ${a.answer === 'ok' ? 'ok' : 'refused'}`),
      [...order.map((id) => `${id} refused`), `${outsider} ok`],
    );
    assert.is(m.pool.failovers, 3);
    // reads fail over the same way
    m.log.length = 0;
    assert.is(await m.pool.count(tenant), 1);
    assert.equal(
      m.log.map((r) => r.counter),
      [...order, outsider],
    );
    // and quorum paths count only the placed replicas
    assert.equal(
      m.pool.replicas(tenant).map((r) => r.id).sort(),
      [...placed].sort(),
    );
  } finally {
    m.close();
  }
});

test('a counter refusing a shard it no longer serves (its status not yet updated) is failed over', async () => {
  const m = await mesh(5);
  try {
    const { tenant, shard } = tenantWhere(() => true);
    const home = byWeight(m.placement[shard]!)[0]!;
    const next = m.placement[shard]!.find((id) => id !== home)!;
    // the counter has stopped serving the shard, but has not said so yet
    const c = m.counters.get(home!)!;
    c.status = { ...c.status, serving: c.status.serving!.filter((s) => s !== shard) };
    await m.pool.add([{ tenant, id: 'a' }]);
    assert.equal(
      adds(m).map((a) => [a.counter, a.answer]),
      [
        [home, `counter ${home} does not serve shard ${shard}`],
        [next, 'ok'],
      ],
    );
  } finally {
    m.close();
  }
});

test('a batch of many tenants: one Add per home counter, in parallel; a failing counter\'s part fails over alone', async () => {
  const m = await mesh(5);
  try {
    const items: Item[] = Array.from({ length: 60 }, (_, i) => ({ tenant: `t${i % 20}`, id: `i${i}` }));
    const homeOf = (t: string) => byWeight(m.placement[shardOf(t, SHARDS)]!)[0]!;
    const expected = new Map<string, Item[]>();
    for (const it of items) expected.set(homeOf(it.tenant), [...(expected.get(homeOf(it.tenant)) ?? []), it]);
    assert.ok(expected.size > 1, 'the batch spans several homes');

    assert.is(await m.pool.add(items), 60);
    assert.is(adds(m).length, expected.size, 'one Add per counter');
    for (const a of adds(m)) assert.equal(a.items, expected.get(a.counter), `the Add to ${a.counter} holds its tenants, in order`);

    // one home fails: only its part moves, the rest is not sent again
    m.log.length = 0;
    const failing = [...expected.keys()][0]!;
    m.counters.get(failing)!.failing = true;
    assert.is(await m.pool.add(items), 60);
    const ok = adds(m).filter((a) => a.answer === 'ok');
    assert.equal(
      adds(m).filter((a) => a.answer !== 'ok').map((a) => a.counter),
      [failing],
    );
    for (const [home, part] of expected) {
      if (home !== failing) assert.ok(ok.some((a) => a.counter === home && JSON.stringify(a.items) === JSON.stringify(part)), `${home}'s part sent as before`);
    }
    const stored = ok.flatMap((a) => a.items!).map((it) => it.id).sort();
    assert.equal(stored, items.map((it) => it.id).sort(), 'every item stored once');
    assert.ok(m.pool.failovers >= 1);
  } finally {
    m.close();
  }
});

test('a shard no counter serves: the write waits for a status that brings one, then goes there', async () => {
  const m = await mesh(3, { env: { COUNTER_TIMEOUT_MS: '5000' } });
  try {
    const { tenant, shard } = tenantWhere(() => true);
    for (const c of m.counters.values()) c.set({ serving: c.status.serving!.filter((s) => s !== shard) });
    await seen(() => m.pool.replicas(tenant).every((r) => !r.usable), 'nobody serves the shard');
    // nobody serves the shard when the write starts: it must wait (failing at once, or sending to a
    // counter that does not serve the shard, shows in the rejection or in the log below)
    const write = m.pool.add([{ tenant, id: 'a' }]);
    const back = m.counters.get(m.ids[1]!)!;
    back.set({ serving: [...back.status.serving!, shard] });
    assert.is(await write, 1);
    assert.equal(
      adds(m).map((a) => a.counter),
      [back.id],
    );
  } finally {
    m.close();
  }
});

test('a shard no counter serves: after COUNTER_TIMEOUT_MS, 503 NO_COUNTER with Retry-After, naming the shard', async () => {
  const m = await mesh(3, { env: { COUNTER_TIMEOUT_MS: '300' } });
  const app = buildCoordinatorServer(coordinatorConfig({ LOG_LEVEL: 'silent', COUNTER_TIMEOUT_MS: '300' }), m.pool, silent);
  try {
    const { tenant, shard } = tenantWhere(() => true);
    const other = tenantWhere((s) => s !== shard).tenant;
    for (const c of m.counters.values()) c.set({ serving: c.status.serving!.filter((s) => s !== shard) });
    await seen(() => m.pool.replicas(tenant).every((r) => !r.usable), 'nobody serves the shard');

    const t0 = Date.now();
    const err = await rejection(m.pool.add([{ tenant, id: 'a' }]));
    assert.instance(err, NoCounterAvailableError);
    assert.match(err.message, new RegExp(`shard ${shard}\\b`));
    assert.ok(Date.now() - t0 >= 280, `waited for statuses first (${Date.now() - t0} ms)`);

    const res = await app.inject({ method: 'POST', url: '/items', headers: { 'content-type': 'application/json' }, payload: JSON.stringify([{ tenant: other, id: 'b' }, { tenant, id: 'a' }]) });
    assert.is(res.statusCode, 503);
    assert.is(res.headers['retry-after'], '1');
    assert.is(res.json().code, 'NO_COUNTER');
    assert.match(res.json().message, new RegExp(`no counter serves shard ${shard} right now`));
    const count = await app.inject({ url: `/items/${tenant}/count` });
    assert.is(count.statusCode, 503);
    assert.match(count.json().message, new RegExp(`shard ${shard}\\b`));
  } finally {
    await app.close();
    m.close();
  }
});

test('with every counter down a write fails at once, as before shards', async () => {
  const m = await mesh(3, { env: { COUNTER_TIMEOUT_MS: '5000' } });
  try {
    for (const c of m.counters.values()) c.kill();
    await seen(() => !m.pool.anyUsable, 'every link down');
    const t0 = Date.now();
    const err = await rejection(m.pool.add([{ tenant: 't', id: 'a' }]));
    assert.instance(err, NoCounterAvailableError);
    assert.ok(Date.now() - t0 < 1000, 'no wait');
  } finally {
    m.close();
  }
});

test('watched counts come from the tenant\'s home replica, and move with it', async () => {
  const m = await mesh(5);
  try {
    const { tenant, shard } = tenantWhere(() => true);
    await m.pool.add([{ tenant, id: 'a' }]);
    const [home, second] = byWeight(m.placement[shard]!);
    assert.is(await m.pool.count(tenant), 1);
    assert.equal(
      m.log.filter((r) => r.type === 'watch').map((r) => r.counter),
      [home],
    );
    // the second read is answered from the watch: no request
    assert.is(m.pool.count(tenant), 1);
    assert.is(m.log.filter((r) => r.type === 'watch').length, 1);

    // the home stops serving the shard: its watched count is no longer used, the new home is asked
    const c = m.counters.get(home!)!;
    c.set({ serving: c.status.serving!.filter((s) => s !== shard) });
    await seen(() => m.pool.replicas(tenant)[0]!.id === second, 'the pool sees the new home');
    m.counters.get(second!)!.stored.set(tenant, new Set(['a', 'b']));
    assert.is(await m.pool.count(tenant), 2);
    assert.equal(
      m.log.filter((r) => r.type === 'watch').map((r) => r.counter),
      [home, second],
    );
    // and the old home's link let go of the count it kept: should the shard come back, it asks again
    assert.equal(
      m.log.filter((r) => r.type === 'unwatch').map((r) => [r.counter, r.tenants]),
      [[home, [tenant]]],
    );
  } finally {
    m.close();
  }
});

test('quorum replicas: the shard\'s replicas, home first, then placement order; usable means serving the shard', async () => {
  const m = await mesh(5);
  try {
    const { tenant, shard } = tenantWhere(() => true);
    const placed = m.placement[shard]!;
    const home = byWeight(placed)[0]!;
    assert.equal(
      m.pool.replicas(tenant).map((r) => r.id),
      [home, ...placed.filter((id) => id !== home)],
    );
    assert.ok(m.pool.replicas(tenant).every((r) => r.usable));
    const last = placed.filter((id) => id !== home).at(-1)!;
    m.counters.get(last)!.kill();
    await seen(() => !m.pool.replicas(tenant).find((r) => r.id === last)!.usable, 'the dead replica is not usable');
    assert.is(m.pool.replicas(tenant).length, FACTOR, 'a dead replica still counts toward the quorum size');
  } finally {
    m.close();
  }
});

test('a quorum write of many tenants: each part goes to its own replicas\' first usable one, with the acknowledgments asked', async () => {
  const m = await mesh(5);
  const app = buildCoordinatorServer(coordinatorConfig({ LOG_LEVEL: 'silent' }), m.pool, silent);
  try {
    const items: Item[] = Array.from({ length: 40 }, (_, i) => ({ tenant: `t${i % 16}`, id: `i${i}` }));
    const res = await app.inject({ method: 'POST', url: '/items?w=2', headers: { 'content-type': 'application/json' }, payload: JSON.stringify(items) });
    assert.is(res.statusCode, 200, res.body);
    assert.ok(new Set(adds(m).map((a) => a.counter)).size > 1, 'several counters took parts');
    for (const a of adds(m)) {
      assert.is(a.acks, 2);
      for (const it of a.items!) assert.is(m.pool.replicas(it.tenant)[0]!.id, a.counter, `${it.tenant} went to its home replica`);
    }
    assert.equal(
      adds(m).flatMap((a) => a.items!.map((it) => it.id)).sort(),
      items.map((it) => it.id).sort(),
      'every item sent once',
    );
  } finally {
    await app.close();
    m.close();
  }
});

test('statuses without placement: every counter is a replica of every tenant, one home for all (as before shards)', async () => {
  const m = await mesh(5, { placed: false });
  try {
    const home = byWeight(m.ids)[0]!;
    for (let i = 0; i < 10; i++) await m.pool.add([{ tenant: `t${i}`, id: 'x' }]);
    assert.equal([...new Set(adds(m).map((a) => a.counter))], [home]);
    assert.equal(
      m.pool.replicas('t0').map((r) => r.id),
      byWeight(m.ids),
    );
    assert.equal(m.pool.shardsView(), { shards: [], factor: null, members: [], removed: [] });
  } finally {
    m.close();
  }
});

// ---------------------------------------------------------------- GET /shards, GET /counters

async function withApp(m: Mesh, fn: (app: FastifyInstance) => Promise<void>, env: Env = {}): Promise<void> {
  const app = buildCoordinatorServer(coordinatorConfig({ LOG_LEVEL: 'silent', ...env }), m.pool, silent);
  try {
    await fn(app);
  } finally {
    await app.close();
    m.close();
  }
}

test('GET /shards: every shard\'s replicas in placement order with inSync, who hands it off, the factor, members and removed', async () => {
  const m = await mesh(5);
  await withApp(m, async (app) => {
    const shard = 3;
    const placed = m.placement[shard]!;
    const catching = m.counters.get(placed[1]!)!;
    catching.set({ serving: catching.status.serving!.filter((s) => s !== shard) });
    const outsider = m.counters.get(m.ids.find((id) => !placed.includes(id))!)!;
    outsider.set({ serving: [...outsider.status.serving!, shard], held: [...outsider.status.held!, shard] });
    await seen(() => m.pool.shardsView().shards[shard]!.handingOff.length === 1 && !m.pool.shardsView().shards[shard]!.replicas[1]!.inSync, 'the pool sees both statuses');

    const res = await app.inject({ url: '/shards' });
    assert.is(res.statusCode, 200);
    const body = res.json() as ShardsView;
    assert.is(body.factor, FACTOR);
    assert.equal(body.members, m.ids);
    assert.equal(body.removed, []);
    assert.is(body.shards.length, SHARDS);
    body.shards.forEach((s, i) => {
      assert.is(s.shard, i);
      assert.equal(
        s.replicas.map((r) => r.id),
        m.placement[i],
        `shard ${i} in placement order`,
      );
    });
    assert.equal(body.shards[shard], {
      shard,
      replicas: placed.map((id, i) => ({ id, inSync: i !== 1 })),
      handingOff: [outsider.id],
    });
    assert.ok(body.shards.filter((s) => s.shard !== shard).every((s) => s.replicas.every((r) => r.inSync) && s.handingOff.length === 0));

    const head = await app.inject({ method: 'HEAD', url: '/shards' });
    assert.is(head.statusCode, 200);
    const wrong = await app.inject({ method: 'POST', url: '/shards' });
    assert.is(wrong.statusCode, 405);
    assert.is(wrong.headers.allow, 'GET, HEAD');
  });
});

test('GET /counters gives each counter\'s serving and held shard counts; its items are its share', async () => {
  const m = await mesh(4);
  await withApp(m, async (app) => {
    const c1 = m.counters.get('c1')!;
    const catchingUp = Array.from({ length: SHARDS }, (_, s) => s).find((s) => !c1.status.serving!.includes(s))!;
    c1.set({ items: 42, held: [...c1.status.held!, catchingUp] });
    await seen(() => m.pool.view().find((v) => v.id === 'c1')!.items === 42, 'the pool sees the status');
    assert.is(m.pool.view().find((v) => v.id === 'c1')!.held, m.pool.view().find((v) => v.id === 'c1')!.serving! + 1);
    const res = await app.inject({ url: '/counters' });
    const rows = res.json() as { id: string; items: number; serving: number; held: number }[];
    for (const row of rows) {
      const st = m.counters.get(row.id)!.status;
      assert.is(row.serving, st.serving!.length, `${row.id} serving`);
      assert.is(row.held, st.held!.length, `${row.id} held`);
    }
    assert.is(rows.find((r) => r.id === 'c1')!.items, 42);
  });
});

// ---------------------------------------------------------------- DELETE /counters/:id

/** The statuses after `removed` was removed from the member list, as the counters would report them. */
function afterRemoval(m: Mesh, removed: string, held: (id: string) => number[] = () => []): void {
  const ids = m.ids.filter((id) => id !== removed);
  const placement = placeShards(SHARDS, ids, FACTOR);
  for (const c of m.counters.values()) {
    const mine = placement.flatMap((replicas, shard) => (replicas.includes(c.id) ? [shard] : []));
    c.set(c.id === removed ? { placed: ids, removed: [removed], serving: held(c.id), held: held(c.id) } : { placed: ids, removed: [removed], serving: mine, held: mine });
  }
}

test('DELETE /counters/:id: 202 once a counter (not the one removed) has the removal; the removed counter leaves GET /counters once it holds nothing', async () => {
  const m = await mesh(4);
  await withApp(m, async (app) => {
    const res = await app.inject({ method: 'DELETE', url: '/counters/c3' });
    assert.is(res.statusCode, 202, res.body);
    assert.equal(res.json(), { removed: 'c3' });
    const removes = m.log.filter((r) => r.type === 'remove');
    assert.is(removes.length, 1);
    assert.is(removes[0]!.nodeId, 'c3');
    assert.is.not(removes[0]!.counter, 'c3', 'asked another counter first');

    // c3 hands off shard 0 for a while, then holds nothing
    afterRemoval(m, 'c3', () => [0]);
    await seen(() => m.pool.shardsView().removed.includes('c3'), 'the removal reported');
    let shards = (await app.inject({ url: '/shards' })).json() as ShardsView;
    assert.equal(shards.removed, ['c3']);
    assert.ok(!shards.members.includes('c3'));
    assert.ok(shards.shards.every((s) => s.replicas.every((r) => r.id !== 'c3')), 'no longer placed');
    assert.equal(shards.shards[0]!.handingOff, ['c3'], 'still handing off shard 0');
    assert.ok((await app.inject({ url: '/counters' })).json().some((c: { id: string }) => c.id === 'c3'), 'listed while it holds shards');

    afterRemoval(m, 'c3');
    await seen(() => !m.pool.view().some((v) => v.id === 'c3'), 'c3 no longer listed');
    shards = (await app.inject({ url: '/shards' })).json() as ShardsView;
    assert.ok(shards.shards.every((s) => !s.handingOff.includes('c3')));

    // removing it again
    const again = await app.inject({ method: 'DELETE', url: '/counters/c3' });
    assert.is(again.statusCode, 404);
    assert.is(again.json().code, 'ALREADY_REMOVED');
  });
});

test('DELETE /counters/:id: 404 for an id no counter has as a member, 409 for the last member, 400 for an over-long id', async () => {
  const m = await mesh(3);
  await withApp(m, async (app) => {
    const unknown = await app.inject({ method: 'DELETE', url: '/counters/nope' });
    assert.is(unknown.statusCode, 404);
    assert.is(unknown.json().code, 'UNKNOWN_COUNTER');
    assert.match(unknown.json().message, /no counter has "nope" as a member; members: c1, c2, c3/);

    const long = await app.inject({ method: 'DELETE', url: `/counters/${'x'.repeat(1025)}` });
    assert.is(long.statusCode, 400);

    // the counters refuse what this coordinator thought was fine: their word counts
    for (const c of m.counters.values()) c.removeAnswer = { status: ReplyStatus.BadRequest, message: 'c2 is the last member' };
    const refused = await app.inject({ method: 'DELETE', url: '/counters/c2' });
    assert.is(refused.statusCode, 409);
    assert.is(refused.json().code, 'LAST_MEMBER');
    for (const c of m.counters.values()) c.removeAnswer = { status: ReplyStatus.BadRequest, message: 'c2 is not a member' };
    const notMember = await app.inject({ method: 'DELETE', url: '/counters/c2' });
    assert.is(notMember.statusCode, 404);
    assert.match(notMember.json().message, /c2 is not a member/);

    // a mesh down to one member
    for (const c of m.counters.values()) c.set({ placed: ['c1'], removed: ['c2', 'c3'] });
    await seen(() => m.pool.shardsView().members.length === 1, 'one member left');
    m.log.length = 0;
    const last = await app.inject({ method: 'DELETE', url: '/counters/c1' });
    assert.is(last.statusCode, 409);
    assert.is(last.json().code, 'LAST_MEMBER');
    assert.match(last.json().message, /last member/);
    assert.is(m.log.length, 0, 'refused without asking a counter');

    assert.is((await app.inject({ method: 'GET', url: '/counters/c1' })).headers.allow, 'DELETE');
  });
});

test('DELETE /counters/:id: fails over past an unavailable counter; 503 with Retry-After when none is reachable', async () => {
  const m = await mesh(3);
  await withApp(m, async (app) => {
    const [first, second] = byWeight(m.ids.filter((id) => id !== 'c3'));
    m.counters.get(first!)!.removeAnswer = { status: ReplyStatus.Unavailable, message: 'disk failing' };
    const res = await app.inject({ method: 'DELETE', url: '/counters/c3' });
    assert.is(res.statusCode, 202);
    assert.equal(
      m.log.filter((r) => r.type === 'remove').map((r) => r.counter),
      [first, second],
    );

    for (const c of m.counters.values()) c.kill();
    await seen(() => !m.pool.anyUsable, 'every counter down');
    const down = await app.inject({ method: 'DELETE', url: '/counters/c2' });
    assert.is(down.statusCode, 503);
    assert.is(down.headers['retry-after'], '1');
    assert.is(down.json().code, 'NO_COUNTER');
  });
});

test('DELETE /counters/:id and GET /shards while counters report no placement: 503, and an empty placement', async () => {
  const m = await mesh(3, { placed: false });
  await withApp(m, async (app) => {
    const res = await app.inject({ method: 'DELETE', url: '/counters/c1' });
    assert.is(res.statusCode, 503);
    assert.match(res.json().message, /member list/);
    assert.equal((await app.inject({ url: '/shards' })).json(), { shards: [], factor: null, members: [], removed: [] });
    assert.is(m.log.length, 0);
  });
});

test('DELETE /counters/:id needs API_KEY like /counters', async () => {
  const m = await mesh(3);
  await withApp(
    m,
    async (app) => {
      assert.is((await app.inject({ method: 'DELETE', url: '/counters/c3' })).statusCode, 401);
      assert.is((await app.inject({ url: '/shards' })).statusCode, 401);
      assert.is(m.log.length, 0);
      const ok = await app.inject({ method: 'DELETE', url: '/counters/c3', headers: { authorization: 'Bearer k3y' } });
      assert.is(ok.statusCode, 202);
    },
    { API_KEY: 'k3y' },
  );
});

test.run();
