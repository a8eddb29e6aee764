/**
 * Consistency levels without sockets: level parsing, quorum writes (one replica takes the write
 * and counts its peers' acknowledgments), quorum reads with their reconciliation and read repair
 * (fake replicas holding real IdIndexes, so digests are the real ones), and the routes through
 * `app.inject()` with a fake pool: 400s for bad levels, 503 NOT_ENOUGH_REPLICAS with Retry-After,
 * and the `one` path untouched by default.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import pino from 'pino';
import * as encoding from 'lib0/encoding';
import { IdIndex } from '../src/counter/id-index.ts';
import { CounterRejectedError, CounterUnavailableError, TooFewAcksError, type Tally } from '../src/coordinator/counter-link.ts';
import { NotEnoughReplicasError, readQuorum, requestedReplicas, writeQuorum, type Replica } from '../src/coordinator/quorum.ts';
import { buildCoordinatorServer, type PoolApi } from '../src/coordinator/server.ts';
import { ClientError } from '../src/coordinator/errors.ts';
import { ConfigError, coordinatorConfig, type Env } from '../src/shared/config.ts';
import { levelSize, parseLevel } from '../src/shared/levels.ts';
import { mulberry32, pick, sample } from './support/prng.ts';

const SEED = Number(process.env.SEED ?? Date.now() % 100_000);
import { MAX_ACKS, MAX_TALLY_BATCH, MAX_TALLY_PEERS, MessageType, ProtocolError, ReplyStatus, readMessage, writeAdd, writeDurable, writeReplicate, writeReply, writeTallied, writeTalliedBatch, writeTally, writeTallyBatch, type Item } from '../src/protocol/messages.ts';

/**
 * A replica in memory: `down` makes it answer unavailable, `hold` keeps its adds pending until
 * released. An add asking for `acks` > 1 is stored here and copied to the linked peers that are
 * up (in link order) until enough have it, as a counter's Replicate does; fewer: TooFewAcksError.
 */
class FakeReplica implements Replica {
  index = new IdIndex();
  usable = true;
  down = false;
  rejecting = false;
  /** Peers it can pull from (by id); a pull from anyone else fails like a cut link. */
  links = new Map<string, FakeReplica>();
  readonly calls: string[] = [];
  /** The pairs held, in order: what a pull copies. */
  readonly pairs: Item[] = [];
  private held: (() => void)[] | null = null;

  constructor(readonly id: string) {}

  hold(): void {
    this.held = [];
  }
  release(): void {
    const h = this.held ?? [];
    this.held = null;
    for (const f of h) f();
  }

  async add(items: readonly Item[], acks = 1): Promise<number> {
    this.calls.push(`add ${items.length}`);
    if (this.held) await new Promise<void>((r) => this.held!.push(r));
    if (this.down) throw new CounterUnavailableError(`counter ${this.id} is not connected`);
    if (this.rejecting) throw new CounterRejectedError('item 0 is not valid');
    this.store(items);
    let counters = 1;
    for (const peer of this.links.values()) {
      if (counters >= acks) break;
      if (peer.down) continue;
      peer.store(items);
      peer.calls.push(`replicated ${items.length}`);
      counters++;
    }
    if (counters < acks) throw new TooFewAcksError(counters, `counter ${this.id} stored the items, but only ${counters - 1} peers confirmed`);
    return items.length;
  }

  async tally(tenant: string, pullFrom: readonly string[] = []): Promise<Tally> {
    this.calls.push(pullFrom.length ? `pull ${pullFrom.join(',')}` : 'tally');
    if (this.down) throw new CounterUnavailableError(`counter ${this.id} is not connected`);
    for (const id of pullFrom) {
      const peer = this.links.get(id);
      if (!peer || peer.down) throw new CounterUnavailableError(`counter ${this.id}: no open link to peer ${id}`);
      peer.copyTo(this);
    }
    return { count: this.index.count(tenant), digest: this.index.digest(tenant) };
  }

  /** Every pair this replica holds, added to `other` (a full sync, as a pull does). */
  copyTo(other: FakeReplica): void {
    other.store(this.pairs);
  }
  store(items: readonly Item[]): void {
    for (const it of items) {
      if (this.index.add(it.tenant, it.id)) this.pairs.push(it);
    }
  }
}

/** `n` replicas, each linked to every other. */
function replicas(n: number): FakeReplica[] {
  const rs = Array.from({ length: n }, (_, i) => new FakeReplica(`c${i}`));
  for (const r of rs) for (const o of rs) if (o !== r) r.links.set(o.id, o);
  return rs;
}

const items = (tenant: string, ...ids: string[]): Item[] => ids.map((id) => ({ tenant, id }));

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a rejection');
}

// ---------------------------------------------------------------- levels

test('levels: syntax and sizes (quorum is a majority of every member)', () => {
  assert.is(parseLevel('one'), 'one');
  assert.is(parseLevel('quorum'), 'quorum');
  assert.is(parseLevel('all'), 'all');
  assert.is(parseLevel('2'), 2);
  for (const bad of ['', '0', '-1', '01', '1.5', 'ONE', 'majority', ' 2', '1e3', '1001']) assert.is(parseLevel(bad), null, bad);
  assert.equal([1, 2, 3, 4, 5].map((n) => levelSize('quorum', n)), [1, 2, 2, 3, 3]);
  assert.is(levelSize('all', 5), 5);
  assert.is(levelSize('one', 5), 1);
  assert.is(levelSize(2, 5), 2);
});

test('requestedReplicas: the default when absent, a 400 naming the allowed values otherwise', () => {
  assert.is(requestedReplicas(undefined, 'w', 'quorum', 3), 2);
  assert.is(requestedReplicas('all', 'w', 'one', 3), 3);
  assert.is(requestedReplicas('3', 'r', 'one', 3), 3);
  // a configured default above the replica count is no client error: NOT_ENOUGH_REPLICAS follows
  assert.is(requestedReplicas(undefined, 'w', 5, 3), 5);
  for (const bad of ['4', '0', 'two', '', 'QUORUM']) {
    const err = (() => {
      try {
        requestedReplicas(bad, 'w', 'one', 3);
      } catch (e) {
        return e as ClientError;
      }
      throw new Error(`w=${bad} accepted`);
    })();
    assert.instance(err, ClientError);
    assert.is(err.statusCode, 400);
    assert.match(err.message, 'use one, quorum, all or a number from 1 to 3');
  }
  assert.throws(() => requestedReplicas(['1', '2'], 'r', 'one', 3), /given more than once/);
});

test('config: WRITE_QUORUM and READ_QUORUM default to one and refuse anything else than a level', () => {
  const c = coordinatorConfig({});
  assert.is(c.writeQuorum, 'one');
  assert.is(c.readQuorum, 'one');
  assert.is(coordinatorConfig({ WRITE_QUORUM: 'quorum', READ_QUORUM: '2' }).readQuorum, 2);
  assert.throws(() => coordinatorConfig({ WRITE_QUORUM: 'most' }), (e: Error) => e instanceof ConfigError && /WRITE_QUORUM="most" is not valid: use one, quorum, all/.test(e.message));
  assert.throws(() => coordinatorConfig({ READ_QUORUM: '0' }), /READ_QUORUM="0" is not valid/);
});

test('protocol: tally and tallied round-trip; too many peers and trailing bytes are protocol errors', () => {
  assert.equal(readMessage(writeTally(7, 'acme', ['c1', 'c2'])), { type: MessageType.Tally, reqId: 7, tenant: 'acme', pullFrom: ['c1', 'c2'] });
  assert.equal(readMessage(writeTally(8, 'acme')), { type: MessageType.Tally, reqId: 8, tenant: 'acme', pullFrom: [] });
  const digest = 2 ** 53 - 1;
  assert.equal(readMessage(writeTallied(9, 123456, digest)), { type: MessageType.Tallied, reqId: 9, count: 123456, digest });
  const many = Array.from({ length: MAX_TALLY_PEERS + 1 }, (_, i) => `c${i}`);
  assert.throws(() => readMessage(writeTally(1, 't', many)), (e: Error) => e instanceof ProtocolError && /names 65 peers/.test(e.message));
  const frame = writeTallied(1, 2, 3);
  assert.throws(() => readMessage(Uint8Array.from([...frame, 0])), /trailing bytes/);
});

test('protocol: tally batch and its answers round-trip; an empty or oversized batch, an unknown answer kind and trailing bytes are protocol errors', () => {
  assert.equal(readMessage(writeTallyBatch(5, ['acme', 'globex'])), { type: MessageType.TallyBatch, reqId: 5, tenants: ['acme', 'globex'] });
  const tallies = [{ count: 3, digest: 2 ** 53 - 1 }, { refused: 'counter c2 does not serve shard 7' }, { count: 0, digest: 0 }];
  assert.equal(readMessage(writeTalliedBatch(6, tallies)), { type: MessageType.TalliedBatch, reqId: 6, tallies });
  assert.throws(() => readMessage(writeTallyBatch(1, [])), (e: Error) => e instanceof ProtocolError && /tally batch of 0 tenants/.test(e.message));
  const tooMany = Array.from({ length: MAX_TALLY_BATCH + 1 }, (_, i) => `t${i}`);
  assert.throws(() => readMessage(writeTallyBatch(1, tooMany)), (e: Error) => e instanceof ProtocolError && /tally batch of 1025 tenants/.test(e.message));
  const answer = writeTalliedBatch(1, [{ count: 1, digest: 1 }]);
  // the answer's kind byte follows type, req-id and length (one byte each here)
  const badKind = Uint8Array.from(answer);
  badKind[3] = 7;
  assert.throws(() => readMessage(badKind), (e: Error) => e instanceof ProtocolError && /unknown tally answer kind 7/.test(e.message));
  assert.throws(() => readMessage(Uint8Array.from([...answer, 0])), /trailing bytes/);
});

test('protocol: an add asks for acknowledgments only when it needs more than one; replicate, durable and the short reply round-trip', () => {
  const its = items('t', 'a', 'b');
  // w=1: the frame of a plain add, byte for byte
  assert.equal(writeAdd(1, its, 1, 1500), writeAdd(1, its));
  assert.equal(readMessage(writeAdd(1, its)), { type: MessageType.Add, reqId: 1, items: its, acks: 1, ackWaitMs: 0 });
  assert.equal(readMessage(writeAdd(2, its, 3, 1500)), { type: MessageType.Add, reqId: 2, items: its, acks: 3, ackWaitMs: 1500 });
  const withAcks = (acks: number, waitMs: number) => {
    const e = encoding.createEncoder();
    encoding.writeUint8Array(e, writeAdd(3, its));
    encoding.writeVarUint(e, acks);
    encoding.writeVarUint(e, waitMs);
    return encoding.toUint8Array(e);
  };
  for (const [acks, wait, why] of [[1, 0, /asks for 1 acknowledgments/], [MAX_ACKS + 1, 0, /asks for 65/], [2, 600_001, /waits 600001 ms/]] as const) {
    assert.throws(() => readMessage(withAcks(acks, wait)), (e: Error) => e instanceof ProtocolError && why.test(e.message), `acks ${acks} wait ${wait}`);
  }
  assert.is(readMessage(withAcks(MAX_ACKS, 600_000)).type, MessageType.Add);
  assert.throws(() => readMessage(Uint8Array.from([...writeAdd(4, its, 2, 10), 0])), /trailing bytes/);
  const update = Uint8Array.from([1, 2, 3]);
  assert.equal(readMessage(writeReplicate(77, update)), { type: MessageType.Replicate, ackId: 77, update });
  assert.equal(readMessage(writeDurable(77)), { type: MessageType.Durable, ackId: 77 });
  assert.equal(readMessage(writeReply(5, ReplyStatus.TooFewAcks, 1, 'only 0 of 2 peers')), { type: MessageType.Reply, reqId: 5, status: ReplyStatus.TooFewAcks, value: 1, message: 'only 0 of 2 peers' });
  assert.throws(() => readMessage(writeReply(5, 4 as never, 1)), /unknown reply status 4/);
});

test('digest: the same ids in any order and any tenant numbering give the same digest; one id more or less changes it', () => {
  const a = new IdIndex();
  const b = new IdIndex();
  b.add('other-tenant-first', 'z'); // b numbers "t" differently from a
  const ids = Array.from({ length: 500 }, (_, i) => `id-${i}`);
  for (const id of ids) a.add('t', id);
  for (const id of [...ids].reverse()) b.add('t', id);
  assert.is(a.digest('t'), b.digest('t'));
  assert.ok(a.digest('t') < 2 ** 53);
  b.add('t', 'one-more');
  assert.is.not(a.digest('t'), b.digest('t'));
  // same count, one id swapped for another
  const c = new IdIndex();
  for (const id of ids.slice(1)) c.add('t', id);
  c.add('t', 'swapped');
  assert.is(c.count('t'), a.count('t'));
  assert.is.not(c.digest('t'), a.digest('t'));
  assert.is(new IdIndex().digest('nobody'), 0);
});

// ---------------------------------------------------------------- writes

test('writeQuorum: sent to the first usable replica alone, which answers once w replicas have the items', async () => {
  const rs = replicas(3);
  rs[0]!.hold();
  let done = false;
  const p = writeQuorum(rs, items('t', 'a'), 2).then(() => (done = true));
  await new Promise((r) => setImmediate(r));
  assert.equal(rs.map((r) => r.calls), [['add 1'], [], []], 'one add, to the first replica in placement order');
  assert.is(done, false, 'not acknowledged before that replica answers');
  rs[0]!.release();
  await p;
  assert.equal(rs.map((r) => r.index.count('t')), [1, 1, 0], 'on the replica that took it and on the peer that acknowledged');
  assert.equal(rs[1]!.calls, ['replicated 1']);
  // a first replica the coordinator cannot use is skipped without a request (its peers may still reach it)
  rs[0]!.usable = false;
  await writeQuorum(rs, items('t', 'b', 'c'), 2);
  assert.equal(rs.map((r) => r.calls), [['add 1', 'replicated 2'], ['replicated 1', 'add 2'], []]);
  assert.equal(rs.map((r) => r.index.count('t')), [3, 3, 0]);
});

test('writeQuorum: a replica that fails is replaced by the next in order; too few: NOT_ENOUGH_REPLICAS with both numbers', async () => {
  const rs = replicas(3);
  rs[0]!.down = true;
  await writeQuorum(rs, items('t', 'a'), 2);
  assert.equal(rs.map((r) => r.index.count('t')), [0, 1, 1]);

  rs[1]!.down = true;
  const err = await rejection(writeQuorum(rs, items('t', 'b'), 2));
  assert.instance(err, NotEnoughReplicasError);
  assert.is((err as NotEnoughReplicasError).answered, 1);
  assert.is((err as NotEnoughReplicasError).required, 2);
  assert.match(err.message, 'acknowledged by 1 of the 2 replicas required');
  assert.match(err.message, 'counter c2 stored the items, but only 0 peers confirmed', 'the counter says why');
  assert.is(rs[2]!.index.count('t'), 2, 'what was stored stays stored');
  assert.equal(rs.map((r) => r.calls.filter((c) => c.startsWith('add')).length), [2, 2, 1], 'a short answer is final: no other replica was asked');

  // every replica unavailable: nothing acknowledged, the last failure given
  rs[2]!.down = true;
  const none = await rejection(writeQuorum(rs, items('t', 'c'), 2));
  assert.instance(none, NotEnoughReplicasError);
  assert.is((none as NotEnoughReplicasError).answered, 0);
  assert.match(none.message, 'acknowledged by 0 of the 2 replicas required; no replica could take the write (last: counter c2 is not connected)');
});

test('writeQuorum: fewer usable replicas than w fails at once and sends nothing', async () => {
  const rs = replicas(3);
  rs[1]!.usable = false;
  rs[2]!.usable = false;
  const err = await rejection(writeQuorum(rs, items('t', 'a'), 2));
  assert.instance(err, NotEnoughReplicasError);
  assert.match(err.message, 'only 1 of the 3 counters holding the tenant are reachable and ready');
  assert.equal(rs.map((r) => r.calls.length), [0, 0, 0]);
});

test('writeQuorum: a counter refusing the items is a client error, not a failover', async () => {
  const rs = replicas(3);
  rs[0]!.rejecting = true;
  assert.instance(await rejection(writeQuorum(rs, items('t', 'a'), 2)), CounterRejectedError);
});

// ---------------------------------------------------------------- reads

test('readQuorum: replicas that agree answer at once; a down replica is replaced by the next', async () => {
  const rs = replicas(3);
  await writeQuorum(rs, items('t', 'a', 'b'), 3);
  assert.is(await readQuorum(rs, 't', 2), 2);
  assert.equal(rs.map((r) => r.calls.filter((c) => c === 'tally').length), [1, 1, 0]);
  rs[0]!.down = true;
  assert.is(await readQuorum(rs, 't', 2), 2);
  rs[1]!.down = true;
  const err = await rejection(readQuorum(rs, 't', 2));
  assert.instance(err, NotEnoughReplicasError);
  assert.match(err.message, 'answered by 1 of the 2 replicas required');
});

test('readQuorum: equal counts over different items are reconciled (x on c0+c1, y on c1+c2, read c0+c2)', async () => {
  const rs = replicas(3);
  const [c0, c1, c2] = rs as [FakeReplica, FakeReplica, FakeReplica];
  for (const r of [c0, c1]) r.store(items('t', 'x'));
  for (const r of [c1, c2]) r.store(items('t', 'y'));
  c1.down = true;
  assert.equal([c0.index.count('t'), c2.index.count('t')], [1, 1], 'the two replicas read hold one item each');
  assert.is(await readQuorum(rs, 't', 2), 2, 'both acknowledged items counted');
  assert.ok(c0.calls.includes('pull c2'), 'the replica ahead (first on a tie) pulled from the other');
  await new Promise((r) => setImmediate(r));
  assert.ok(c2.calls.includes('pull c0'), 'the other was repaired from it');
  assert.is(c2.index.count('t'), 2, 'read repair brought the replica behind up to date');
});

test('readQuorum: the replica behind is repaired at once; the answer is the largest count', async () => {
  const rs = replicas(3);
  await writeQuorum(rs, items('t', 'a', 'b', 'c'), 3);
  for (const r of rs.slice(1)) r.store(items('t', 'd'));
  assert.is(await readQuorum(rs, 't', 2), 4);
  assert.ok(rs[1]!.calls.includes('pull c0'), 'the one ahead confirmed it holds what the other has');
  await new Promise((r) => setImmediate(r));
  assert.is(rs[0]!.index.count('t'), 4, 'c0 caught up from c1');
});

test('readQuorum: replicas that disagree and cannot sync give NOT_ENOUGH_REPLICAS, never a low count', async () => {
  const rs = replicas(3);
  const [c0, c1, c2] = rs as [FakeReplica, FakeReplica, FakeReplica];
  for (const r of [c0, c1]) r.store(items('t', 'x'));
  for (const r of [c1, c2]) r.store(items('t', 'y'));
  c1.down = true;
  c0.links.clear();
  c2.links.clear();
  const err = await rejection(readQuorum(rs, 't', 2));
  assert.instance(err, NotEnoughReplicasError);
  assert.match(err.message, 'could not be reconciled');
});

test('readQuorum: two replicas asked that cannot sync, and a third that agrees with one, answer with the agreeing pair', async () => {
  const rs = replicas(3);
  const [c0, c1, c2] = rs as [FakeReplica, FakeReplica, FakeReplica];
  // c0 and c1 hold x and y (a quorum write), c2 only y; c2 is cut from both
  for (const r of [c0, c1]) r.store(items('t', 'x'));
  for (const r of rs) r.store(items('t', 'y'));
  c0.links.delete(c2.id);
  c1.links.delete(c2.id);
  c2.links.clear();
  // asked first: c2 and c0, which disagree and cannot sync; then c1, which agrees with c0
  assert.is(await readQuorum([c2, c0, c1], 't', 2), 2);
});

test(`seeded: w=quorum + r=quorum reads never fall below what was acknowledged, whatever fails (SEED=${SEED} replays)`, async () => {
  const rng = mulberry32(SEED);
  const rs = replicas(5);
  const cut = (a: FakeReplica, b: FakeReplica) => {
    a.links.delete(b.id);
    b.links.delete(a.id);
  };
  const link = (a: FakeReplica, b: FakeReplica) => {
    a.links.set(b.id, b);
    b.links.set(a.id, a);
  };
  // two coordinators with their own placement orders
  const orders = [rs, [rs[3]!, rs[1]!, rs[4]!, rs[0]!, rs[2]!]];
  const q = levelSize('quorum', rs.length);
  let sent = 0;
  let acked = 0;
  let reads = 0;
  let repaired = 0;
  for (let step = 0; step < 3000; step++) {
    const x = rng();
    if (x < 0.35) {
      sent++;
      try {
        await writeQuorum(pick(rng, orders), items('t', `i${step}`), q);
        acked++;
      } catch (err) {
        assert.instance(err, NotEnoughReplicasError, `step ${step}`);
      }
    } else if (x < 0.5) {
      // gossip: part of what one replica holds reaches another it is linked to
      const [a, b] = sample(rng, rs.length, 2).map((i) => rs[i]!) as [FakeReplica, FakeReplica];
      if (a.links.has(b.id) && !a.down && !b.down) {
        b.store(a.pairs.filter(() => rng() < 0.5));
      }
    } else if (x < 0.6) {
      const r = pick(rng, rs);
      r.down = !r.down;
      r.usable = !r.down;
    } else if (x < 0.7) {
      const [a, b] = sample(rng, rs.length, 2).map((i) => rs[i]!) as [FakeReplica, FakeReplica];
      if (a.links.has(b.id)) cut(a, b);
      else link(a, b);
    } else {
      const before = acked;
      const calls = rs.reduce((n, r) => n + r.calls.filter((c) => c.startsWith('pull')).length, 0);
      try {
        const n = await readQuorum(pick(rng, orders), 't', q);
        reads++;
        assert.ok(n >= before, `step ${step}: read ${n} < ${before} acknowledged (SEED=${SEED})`);
        assert.ok(n <= sent, `step ${step}: read ${n} > ${sent} sent (SEED=${SEED})`);
      } catch (err) {
        assert.instance(err, NotEnoughReplicasError, `step ${step}`);
      }
      await new Promise((r) => setImmediate(r));
      if (rs.reduce((n, r) => n + r.calls.filter((c) => c.startsWith('pull')).length, 0) > calls) repaired++;
    }
  }
  assert.ok(acked > 100 && reads > 100, `the run did something: ${acked} writes acknowledged, ${reads} reads answered`);
  assert.ok(repaired > 10, `replicas disagreed and were reconciled (${repaired} reads)`);
});

// ---------------------------------------------------------------- routes

class QuorumPool implements PoolApi {
  readonly rs = replicas(3);
  onePathAdds = 0;
  onePathCounts = 0;
  anyUsable = true;
  view() {
    return [];
  }
  async add(its: readonly Item[]): Promise<void> {
    this.onePathAdds++;
    await this.rs[0]!.add(its);
  }
  async count(tenant: string): Promise<number> {
    this.onePathCounts++;
    return this.rs[0]!.index.count(tenant);
  }
  replicas() {
    return this.rs;
  }
}

const silent = pino({ level: 'silent' });
function build(env: Env = {}) {
  const pool = new QuorumPool();
  const app = buildCoordinatorServer(coordinatorConfig({ LOG_LEVEL: 'silent', ...env }), pool, silent);
  return { app, pool };
}
const post = (url: string, body: unknown) => ({ method: 'POST' as const, url, headers: { 'content-type': 'application/json' }, payload: JSON.stringify(body) });

test('routes: without w and r the one path serves, exactly as before', async () => {
  const { app, pool } = build();
  assert.is((await app.inject(post('/items', { id: 'a', tenant: 't' }))).statusCode, 200);
  assert.is((await app.inject('/items/t/count')).json().count, 1);
  assert.equal([pool.onePathAdds, pool.onePathCounts], [1, 1]);
  assert.equal(pool.rs.map((r) => r.calls.length), [1, 0, 0]);
  // w=one and w=1 are the same path
  await app.inject(post('/items?w=one', { id: 'b', tenant: 't' }));
  await app.inject(post('/items?w=1', { id: 'c', tenant: 't' }));
  assert.is(pool.onePathAdds, 3);
  await app.close();
});

test('routes: w=quorum stores on two replicas, r=all reads three; defaults come from WRITE_QUORUM and READ_QUORUM', async () => {
  const { app, pool } = build();
  const res = await app.inject(post('/items?w=quorum', [{ id: 'a', tenant: 't' }, { id: 'b', tenant: 't' }]));
  assert.is(res.statusCode, 200);
  assert.equal(res.json(), { accepted: 2 });
  assert.equal(pool.rs.map((r) => r.index.count('t')), [2, 2, 0]);
  assert.is((await app.inject('/items/t/count?r=all')).json().count, 2);
  assert.is(pool.onePathAdds + pool.onePathCounts, 0);
  await app.close();

  const b = build({ WRITE_QUORUM: 'all', READ_QUORUM: 'quorum' });
  assert.is((await b.app.inject(post('/items', { id: 'a', tenant: 't' }))).statusCode, 200);
  assert.equal(b.pool.rs.map((r) => r.index.count('t')), [1, 1, 1]);
  assert.is((await b.app.inject('/items/t/count')).json().count, 1);
  assert.is(b.pool.onePathAdds + b.pool.onePathCounts, 0);
  // a request may still ask for one
  await b.app.inject(post('/items?w=one', { id: 'z', tenant: 't' }));
  assert.is(b.pool.onePathAdds, 1);
  await b.app.close();
});

test('routes: bad w and r are 400 INVALID_REQUEST naming the allowed values, and change nothing', async () => {
  const { app, pool } = build();
  for (const q of ['w=0', 'w=4', 'w=two', 'w=', 'w=QUORUM', 'w=1&w=2']) {
    const res = await app.inject(post(`/items?${q}`, { id: 'a', tenant: 't' }));
    assert.is(res.statusCode, 400, q);
    assert.is(res.json().code, 'INVALID_REQUEST', q);
    assert.match(res.json().message, /query parameter w .* is not valid: use one, quorum, all or a number from 1 to 3/, q);
  }
  for (const q of ['r=5', 'r=-1', 'r=most']) {
    const res = await app.inject(`/items/t/count?${q}`);
    assert.is(res.statusCode, 400, q);
    assert.match(res.json().message, /query parameter r .* is not valid: use one, quorum, all or a number from 1 to 3/, q);
  }
  assert.equal(pool.rs.map((r) => r.calls.length), [0, 0, 0], 'no replica was asked anything');
  assert.is(pool.onePathAdds + pool.onePathCounts, 0);
  await app.close();
});

test('routes: too few replicas up is 503 NOT_ENOUGH_REPLICAS with Retry-After and both numbers', async () => {
  const { app, pool } = build();
  pool.rs[1]!.down = true;
  pool.rs[2]!.down = true;
  const res = await app.inject(post('/items?w=2', { id: 'a', tenant: 't' }));
  assert.is(res.statusCode, 503);
  assert.is(res.headers['retry-after'], '1');
  assert.is(res.json().code, 'NOT_ENOUGH_REPLICAS');
  assert.match(res.json().message, 'acknowledged by 1 of the 2 replicas required');
  assert.match(res.json().message, 'resending the same items is safe');
  const read = await app.inject('/items/t/count?r=quorum');
  assert.is(read.statusCode, 503);
  assert.is(read.headers['retry-after'], '1');
  assert.is(read.json().code, 'NOT_ENOUGH_REPLICAS');
  assert.match(read.json().message, 'answered by 1 of the 2 replicas required');
  await app.close();
});

test.run();
