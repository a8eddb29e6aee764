/**
 * Quorum writes and reads on the in-memory tier: real counters and coordinator pools over the
 * seeded simulated network.
 * - Reads and writes in flight together through two coordinators while counters are partitioned
 *   from each other and from a coordinator, and one crashes and restarts: every answered read
 *   lies between the items acknowledged before it started and the items sent.
 * - A w=2 write is acknowledged only once a peer of the counter that took it has it on disk: at
 *   the moment of each acknowledgment a peer's fsynced log holds the items, and after that counter
 *   dies with its log lost and the others lose their power, the others still count every one.
 * - A w=2 write asks one peer per shard (the other gets the items by gossip), and the other too
 *   once the one asked is slower than the hedge delay.
 * - Peers that cannot acknowledge: 503-worthy NotEnoughReplicasError saying how many did.
 * - Quorum reads' tallies leave a coordinator in batches, one batch in flight per counter link:
 *   reads started while one is unanswered wait and leave together, and each gets its own count;
 *   when that batch times out, the reads queued behind it ask another replica at once.
 * `SEED=n` replays a run.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import pino from 'pino';
import { idsInShard, MemoryDisk, MemoryMesh, type SimCounter } from './support/memory-mesh.ts';
import { withSeed } from './support/sim.ts';
import { NotEnoughReplicasError, readQuorum, writeQuorum } from '../src/coordinator/quorum.ts';
import { MessageType, readMessage, writeStatus, type Item } from '../src/protocol/messages.ts';
import { GSet, STORAGE } from '../src/counter/gset.ts';
import { decodeJournal } from '../src/counter/journal.ts';
import { REPLICATE_HEDGE_MS } from '../src/counter/gossip.ts';
import { rendezvousScore } from '../src/shared/placement.ts';

const silent = pino({ level: 'silent' });

/** How many items of `tenant` counter `c` would hold after a power loss now (what its shard log and journal fsynced). */
function countOnDisk(c: SimCounter, tenant: string): number {
  const gset = new GSet(silent);
  const shard = c.counter!.shardOf(tenant);
  const { snapshot, updates } = c.disk.log(shard).onDisk();
  const journaled = decodeJournal(c.disk.journalStore().onDisk()).filter((r) => r.shard === shard).map((r) => r.update);
  gset.applyUpdates([...(snapshot ? [snapshot, ...updates] : updates), ...journaled], STORAGE);
  const n = gset.count(tenant);
  gset.close();
  return n;
}

const TENANTS = ['acme', 'globex'];

/**
 * Every counter linked to both others and knowing they serve the tenants' shards (only such peers'
 * acknowledgments count), and every replica of the tenants usable from the first coordinator (a
 * w=3 write needs all that).
 */
async function fullyLinked(mesh: MemoryMesh, tenants: readonly string[]): Promise<void> {
  const seesPeersServe = (c: SimCounter) =>
    mesh.counters.every((o) => o === c || tenants.every((t) => c.counter!.servedBy(o.id, c.counter!.shardOf(t))));
  await mesh.until(
    () =>
      mesh.counters.every((c) => c.counter?.connectedPeers() === 2 && seesPeersServe(c)) &&
      tenants.every((t) => MemoryMesh.servedThrough(mesh.pools[0]!, t, 3)),
    10_000,
    'the counters linked to each other, each seeing the others serve, and usable from the coordinator',
  );
}

test('w=2, r=2 of 3: no read below what was acknowledged before it, under partitions, a crash and concurrent writes', () =>
  withSeed('quorum', async (seed, rng) => {
    const mesh = await MemoryMesh.start({ seed, counters: 3, coordinators: 2, faults: { minDelayMs: 0, maxDelayMs: 25 } });
    try {
      await mesh.until(() => mesh.pools.every((p) => p.view().filter((v) => v.ready).length === 3), 10_000, 'both coordinators see 3 ready counters');
      // count the read repairs that crossed the network: tallies naming peers to pull from
      let pulls = 0;
      const send = mesh.net.carry.bind(mesh.net);
      mesh.net.carry = (from, frame) => {
        if (frame[0] === MessageType.Tally) {
          const m = readMessage(frame);
          if (m.type === MessageType.Tally && m.pullFrom.length > 0) pulls++;
        }
        send(from, frame);
      };
      const acked = new Map(TENANTS.map((t) => [t, 0]));
      const sent = new Map(TENANTS.map((t) => [t, 0]));
      // the mesh's own books too, for its final compare()
      for (const t of TENANTS) {
        mesh.sent.set(t, new Set());
        mesh.acked.set(t, new Set());
      }
      const ops: Promise<void>[] = [];
      let answered = 0;
      // collected, not thrown: a rejection nobody awaits yet would end the process instead of failing the test
      const violations: string[] = [];
      let refused = 0;
      const [c0, c1, c2] = mesh.counters as [(typeof mesh.counters)[0], (typeof mesh.counters)[0], (typeof mesh.counters)[0]];
      for (let step = 0; step < 240; step++) {
        // faults on a fixed script, their order and gaps decided by the seed's workload around them
        if (step === 40) mesh.net.partition(c0.id, c2.id);
        if (step === 80) mesh.net.partition(c1.id, 'coordinator-1');
        if (step === 120) {
          mesh.net.heal();
          await mesh.crashCounter(1);
        }
        if (step === 160) await mesh.startCounter(1);
        if (step === 200) mesh.net.partition(c2.id, c1.id);
        const tenant = TENANTS[Math.floor(rng() * TENANTS.length)]!;
        const pool = mesh.pools[Math.floor(rng() * mesh.pools.length)]!;
        if (rng() < 0.5) {
          const items = Array.from({ length: 1 + Math.floor(rng() * 3) }, (_, i) => ({ tenant, id: `s${step}-${i}` }));
          sent.set(tenant, sent.get(tenant)! + items.length);
          for (const it of items) mesh.sent.get(tenant)!.add(it.id);
          ops.push(
            writeQuorum(pool.replicas(tenant), items, 2).then(
              () => {
                acked.set(tenant, acked.get(tenant)! + items.length);
                for (const it of items) mesh.acked.get(tenant)!.add(it.id);
              },
              (err: unknown) => {
                if (!(err instanceof NotEnoughReplicasError)) violations.push(`step ${step}: write failed with ${String(err)}`);
              },
            ),
          );
        } else {
          const before = acked.get(tenant)!;
          ops.push(
            readQuorum(pool.replicas(tenant), tenant, 2).then(
              (n) => {
                answered++;
                if (n < before) violations.push(`step ${step}: read ${n} of ${tenant} < ${before} acknowledged before it`);
                if (n > sent.get(tenant)!) violations.push(`step ${step}: read ${n} of ${tenant} > ${sent.get(tenant)} sent`);
              },
              (err: unknown) => {
                refused++;
                if (!(err instanceof NotEnoughReplicasError)) violations.push(`step ${step}: read failed with ${String(err)}`);
              },
            ),
          );
        }
        await mesh.run(Math.floor(rng() * 15));
      }
      await mesh.settle(ops, 60_000);
      assert.equal(violations, []);
      assert.ok(answered > 60, `most reads were answered (${answered}, ${refused} refused)`);
      assert.ok(pulls > 0, 'replicas disagreed and were reconciled through a pull');
      mesh.net.heal();
      // every acknowledged item on every counter, nothing never sent, all agreeing
      const holdAll = () => mesh.counters.every((c) => TENANTS.every((t) => (c.counter?.count(t) ?? 0) >= acked.get(t)!));
      await mesh.until(() => mesh.converged() && holdAll(), 20_000, 'counters converge after the heal');
      mesh.compare();
    } finally {
      await mesh.close();
    }
  }));

test('w=2: acknowledged only once a peer has the items on disk; the home counter and its log lost, the others still count them', () =>
  withSeed('quorum-durable', async (seed, rng) => {
    const mesh = await MemoryMesh.start({ seed, counters: 3, coordinators: 1, faults: { minDelayMs: 0, maxDelayMs: 15 } });
    try {
      const pool = mesh.pools[0]!;
      await fullyLinked(mesh, ['t', 'one', ...Array.from({ length: 40 }, (_, i) => `w${i}`)]);
      const home = mesh.counters.find((c) => c.id === pool.replicas('t')[0]!.id)!;
      const others = mesh.counters.filter((c) => c !== home);
      // the peers' disks are slower than the network: an acknowledgment sent before the fsync would show
      for (const c of others) c.disk.fsyncMs = 40;
      const replicates = () => mesh.net.sentByType.get(MessageType.ShardReplicate) ?? 0;
      const before = replicates();

      // the control: a w=one write is acknowledged on the home counter's disk alone
      const one: Item[] = [{ tenant: 'one', id: 'x' }];
      await mesh.settle([pool.add(one)]);
      assert.equal(others.map((c) => countOnDisk(c, 'one')), [0, 0], 'no peer had a w=one write on disk when it was acknowledged');

      // w=2 writes in flight together, one tenant each: at each acknowledgment a peer has it on disk
      const violations: string[] = [];
      const writes: Promise<void>[] = [];
      const acked: Item[][] = [];
      for (let i = 0; i < 40; i++) {
        const its = Array.from({ length: 1 + Math.floor(rng() * 3) }, (_, j) => ({ tenant: `w${i}`, id: `i${j}` }));
        writes.push(
          writeQuorum(pool.replicas(its[0]!.tenant), its, 2).then(() => {
            acked.push(its);
            const onDisk = others.map((c) => countOnDisk(c, its[0]!.tenant));
            if (!onDisk.includes(its.length)) violations.push(`w${i} acknowledged while its peers had ${onDisk.join(' and ')} of ${its.length} items on disk`);
          }),
        );
        await mesh.run(Math.floor(rng() * 4));
      }
      await mesh.settle(writes);
      assert.equal(violations, []);
      assert.is(acked.length, 40, 'every w=2 write acknowledged on a healthy mesh');
      assert.ok(replicates() - before > 0 && replicates() - before <= 2 * 40, `each write replicated once per peer at most (${replicates() - before} Replicates)`);

      // the home counter dies and its log is lost; the others lose what no fsync covered
      await mesh.crashCounter(home.index);
      home.disk = new MemoryDisk(mesh.clock, mesh.rng);
      for (const c of others) {
        await mesh.crashCounter(c.index);
        c.disk.powerLoss();
      }
      for (const c of others) await mesh.startCounter(c.index);
      const counted = () => acked.every((its) => others.every((c) => c.counter!.count(its[0]!.tenant) === its.length));
      await mesh.until(counted, 10_000, 'the surviving counters count every acknowledged item');
    } finally {
      await mesh.close();
    }
  }));

test('w=2 asks one peer per shard, and the other gets the items by gossip; a slow peer costs a write the hedge delay, not its disk', () =>
  withSeed('quorum-ask-needed', async (seed) => {
    // the product's gossip window (longer than the hedge delay: a hedged peer still has updates held back)
    const mesh = await MemoryMesh.start({ seed, counters: 3, coordinators: 1, faults: { minDelayMs: 0, maxDelayMs: 3 }, counterEnv: { GOSSIP_DELAY_MS: '50' } });
    try {
      const pool = mesh.pools[0]!;
      const tenants = Array.from({ length: 12 }, (_, i) => `a${i}`);
      await fullyLinked(mesh, tenants);
      const replicates = () => mesh.net.sentByType.get(MessageType.ShardReplicate) ?? 0;

      // one write at a time: each is one flush of one shard on its home counter
      const before = replicates();
      for (const t of tenants) {
        await mesh.settle([writeQuorum(pool.replicas(t), [{ tenant: t, id: 'x' }], 2)]);
        mesh.sent.set(t, new Set(['x']));
        mesh.acked.set(t, new Set(['x']));
      }
      assert.is(replicates() - before, tenants.length, 'one ShardReplicate per write: only the peer it needs is asked');
      await mesh.until(() => tenants.every((t) => mesh.counters.every((c) => c.counter!.count(t) === 1)), 5_000, 'the peers not asked got every item by gossip');

      // the peer a write of this tenant asks has a slow disk: after the hedge delay the other is
      // asked, with the update of the write before (held back for its gossip window), which this
      // one builds on
      const t = 'slow';
      const [home, ...others] = pool.replicas(t).map((r) => mesh.counters.find((c) => c.id === r.id)!);
      const shard = home!.counter!.shardOf(t);
      const asked = others.sort((a, b) => rendezvousScore(shard, b.id) - rendezvousScore(shard, a.id))[0]!;
      await mesh.settle([writeQuorum(pool.replicas(t), [{ tenant: t, id: 'x' }], 2)]);
      asked.disk.fsyncFloorMs = 1_000;
      const sentBefore = replicates();
      const t0 = mesh.clock.now();
      await mesh.settle([writeQuorum(pool.replicas(t), [{ tenant: t, id: 'y' }], 2)]);
      const took = mesh.clock.now() - t0;
      mesh.sent.set(t, new Set(['x', 'y']));
      mesh.acked.set(t, new Set(['x', 'y']));
      assert.is(replicates() - sentBefore, 2, 'the write asked the slow peer, then the other');
      assert.ok(took >= REPLICATE_HEDGE_MS && took < 1_000, `acknowledged after ${took} ms: past the hedge delay, before the slow disk's fsync`);
      asked.disk.fsyncFloorMs = 0;
      await mesh.until(() => mesh.converged(), 10_000, 'converged');
      mesh.compare();
    } finally {
      await mesh.close();
    }
  }));

test('w=2 with peers that cannot acknowledge: NotEnoughReplicasError saying how many did; the items stay stored; a retry succeeds', () =>
  withSeed('quorum-short', async (seed) => {
    const mesh = await MemoryMesh.start({ seed, counters: 3, coordinators: 1, faults: { minDelayMs: 0, maxDelayMs: 10 } });
    try {
      const pool = mesh.pools[0]!;
      // every replica serving the shard, or a peer may not be sent the write at all
      await fullyLinked(mesh, ['t', 'u']);
      const home = mesh.counters.find((c) => c.id === pool.replicas('t')[0]!.id)!;
      // the mesh's books, for its final compare()
      mesh.sent.set('t', new Set(['a', 'b']));
      mesh.sent.set('u', new Set(['z']));
      mesh.acked.set('t', new Set(['a', 'b']));

      // peers linked but silent: every Durable is lost on the way
      const carry = mesh.net.carry.bind(mesh.net);
      let swallowed = 0;
      mesh.net.carry = (from, frame) => {
        if (frame[0] === MessageType.Durable) swallowed++;
        else carry(from, frame);
      };
      const its = [{ tenant: 't', id: 'a' }, { tenant: 't', id: 'b' }];
      const t0 = mesh.clock.now();
      const [short] = await mesh.settle([writeQuorum(pool.replicas('t'), its, 2).catch((err: unknown) => err)]);
      assert.instance(short, NotEnoughReplicasError);
      const err = short as NotEnoughReplicasError;
      assert.equal([err.answered, err.required], [1, 2]);
      assert.match(err.message, `acknowledged by 1 of the 2 replicas required (counter ${home.id} stored the items, but only 0 of its 2 peers confirmed having them on disk within 500 ms)`);
      assert.ok(mesh.clock.now() - t0 < 1000, 'answered before the coordinator gave up on the counter (COUNTER_TIMEOUT_MS 1000)');
      // both peers did store and acknowledge it (a slow disk may answer after the write gave up)
      await mesh.until(() => swallowed === 2, 5_000, 'both peers acknowledged, their Durables lost on the way');
      assert.is(home.counter!.count('t'), 2, 'what was stored stays stored');
      assert.ok(pool.replicas('t')[0]!.usable, 'a short answer is no failure of the counter');

      // acknowledgments flow again: the same write, retried, is acknowledged (adds are idempotent)
      mesh.net.carry = carry;
      await mesh.settle([writeQuorum(pool.replicas('t'), its, 2)]);
      assert.is(home.counter!.count('t'), 2);

      // no counter linked to any other: each refuses to take the write, nothing is stored anywhere
      const [c0, c1, c2] = mesh.counters as [SimCounter, SimCounter, SimCounter];
      mesh.net.partition(c0.id, c1.id);
      mesh.net.partition(c0.id, c2.id);
      mesh.net.partition(c1.id, c2.id);
      await mesh.until(() => mesh.counters.every((c) => c.counter!.connectedPeers() === 0), 10_000, 'the counters see their links gone');
      const [none] = await mesh.settle([writeQuorum(pool.replicas('u'), [{ tenant: 'u', id: 'z' }], 2).catch((e: unknown) => e)]);
      assert.instance(none, NotEnoughReplicasError);
      assert.is((none as NotEnoughReplicasError).answered, 0);
      assert.match((none as Error).message, /acknowledged by 0 of the 2 replicas required; no replica could take the write \(last: counter counter-\d: counter counter-\d is linked to 0 peers, and 2 acknowledgments need 1\)/);
      assert.equal(mesh.counters.map((c) => c.counter!.count('u')), [0, 0, 0]);
      assert.ok(pool.replicas('u').every((r) => r.usable), 'each counter refused, none timed out');
      mesh.net.heal();
      await mesh.until(() => mesh.converged(), 10_000, 'converged after the heal');
      mesh.compare();
    } finally {
      await mesh.close();
    }
  }));

for (const older of [false, true]) {
  const how = older ? 'counters of a version before TallyBatch: one Tally frame each, corked together' : 'one TallyBatch frame per batch';
  test(`tallies: one batch in flight per link; reads started meanwhile leave together and each gets its own count (${how})`, () =>
    withSeed(older ? 'quorum-batches-older' : 'quorum-batches', async (seed) => {
      const mesh = await MemoryMesh.start({ seed, counters: 3, coordinators: 1, faults: { minDelayMs: 5, maxDelayMs: 10 } });
      try {
        const pool = mesh.pools[0]!;
        const tenants = Array.from({ length: 10 }, (_, i) => `t${i}`);
        const carry = mesh.net.carry.bind(mesh.net);
        if (older) {
          // the counters' statuses lose the field that says they answer TallyBatch
          mesh.net.carry = (from, frame) => {
            const m = frame[0] === MessageType.Status ? readMessage(frame) : null;
            if (m?.type !== MessageType.Status) return carry(from, frame);
            const { tallyBatch: _, ...status } = m.status;
            carry(from, writeStatus(status));
          };
        }
        const delivered = older ? mesh.net.carry : carry;
        await fullyLinked(mesh, tenants);
        // tenant t<i> holds i + 1 items, stored on w=3 so every replica counts them
        await mesh.settle(tenants.map((t, i) => writeQuorum(pool.replicas(t), Array.from({ length: i + 1 }, (_, k) => ({ tenant: t, id: `x${k}` })), 3)));
        // per link (coordinator > counter): when each unanswered tally frame was sent
        const outstanding = new Map<string, number[]>();
        const violations: string[] = [];
        // per link and moment: tallies and frames sent
        const batchSizes = new Map<string, number>();
        const framesAt = new Map<string, number>();
        let batchFrames = 0;
        mesh.net.carry = (from, frame) => {
          const now = mesh.clock.now();
          if (frame[0] === MessageType.Tally || frame[0] === MessageType.TallyBatch) {
            const m = readMessage(frame);
            const link = `${from.self}>${from.other}`;
            const sentAt = outstanding.get(link) ?? [];
            if (sentAt.some((t) => t < now)) violations.push(`${link}: tallies sent at ${now} while some sent at ${sentAt[0]} were unanswered`);
            sentAt.push(now);
            outstanding.set(link, sentAt);
            const key = `${link}@${now}`;
            batchSizes.set(key, (batchSizes.get(key) ?? 0) + (m.type === MessageType.TallyBatch ? m.tenants.length : 1));
            framesAt.set(key, (framesAt.get(key) ?? 0) + 1);
            if (m.type === MessageType.TallyBatch) batchFrames++;
          } else if (frame[0] === MessageType.Tallied || frame[0] === MessageType.TalliedBatch) {
            outstanding.get(`${from.other}>${from.self}`)?.shift();
          }
          delivered(from, frame);
        };
        // one read now, nine more one simulated millisecond apart while its tallies are on the wire
        const reads: Promise<number>[] = [readQuorum(pool.replicas(tenants[0]!), tenants[0]!, 2)];
        const started = new Promise<void>((resolve) => {
          for (let i = 1; i < tenants.length; i++) {
            mesh.clock.push(() => {
              reads.push(readQuorum(pool.replicas(tenants[i]!), tenants[i]!, 2));
              if (reads.length === tenants.length) resolve();
            }, i);
          }
        });
        await mesh.settle([started]);
        const counts = await mesh.settle(reads);
        assert.equal(counts, tenants.map((_, i) => i + 1), 'each read has its own tenant\'s count');
        assert.equal(violations, []);
        assert.ok(Math.max(...batchSizes.values()) >= 2, `reads started while a batch was out left together (batches: ${[...batchSizes.values()].join(',')})`);
        if (older) {
          assert.is(batchFrames, 0, 'no TallyBatch to a counter that does not announce it');
        } else {
          assert.ok(batchFrames > 0, 'batches left as TallyBatch frames');
          assert.ok([...framesAt.values()].every((n) => n === 1), `each batch is one frame (frames per batch: ${[...framesAt.values()].join(',')})`);
        }
        mesh.net.carry = carry;
      } finally {
        await mesh.close();
      }
    }));
}

test('reads queued behind a tally batch that times out fail over at once, not after a second timeout', () =>
  withSeed('quorum-failover', async (seed) => {
    const mesh = await MemoryMesh.start({ seed, counters: 3, coordinators: 1, faults: { minDelayMs: 1, maxDelayMs: 5 } });
    try {
      const pool = mesh.pools[0]!;
      await fullyLinked(mesh, ['t']);
      await mesh.settle([writeQuorum(pool.replicas('t'), [{ tenant: 't', id: 'a' }, { tenant: 't', id: 'b' }], 3)]);
      // the home replica goes silent (its link stays open): tallies to it are never answered
      const silent = pool.replicas('t')[0]!.id;
      const carry = mesh.net.carry.bind(mesh.net);
      mesh.net.carry = (from, frame) => {
        if ((frame[0] === MessageType.Tally || frame[0] === MessageType.TallyBatch) && from.other === silent) return;
        carry(from, frame);
      };
      const t0 = mesh.clock.now();
      const reads: Promise<number>[] = [readQuorum(pool.replicas('t'), 't', 2)];
      const answeredAt: number[] = [];
      // four more while the first batch waits for the silent counter
      const queued = new Promise<void>((resolve) => {
        for (let i = 1; i <= 4; i++) {
          mesh.clock.push(() => {
            reads.push(readQuorum(pool.replicas('t'), 't', 2));
            if (reads.length === 5) resolve();
          }, 10 * i);
        }
      });
      await mesh.settle([queued]);
      for (const r of reads) void r.then(() => answeredAt.push(mesh.clock.now() - t0));
      const counts = await mesh.settle(reads);
      assert.equal(counts, [2, 2, 2, 2, 2]);
      // COUNTER_TIMEOUT_MS is 1000 here: one timeout, then the third replica answers
      assert.ok(Math.max(...answeredAt) < 1500, `every read answered within one timeout and a round trip (${answeredAt.join(', ')} ms)`);
      mesh.net.carry = carry;
    } finally {
      await mesh.close();
    }
  }));

/**
 * The guarantee behind r=2 of 3, read off the counters' documents: for every shard, every two of
 * its placed replicas that serve it hold together every item acknowledged so far. Null when that
 * holds (or while the counters disagree on the members), else the first pair that misses one.
 */
function quorumGap(mesh: MemoryMesh, acked: ReadonlyMap<string, ReadonlySet<string>>, shards: number): string | null {
  const placement = mesh.placement();
  if (!placement) return null;
  for (let s = 0; s < shards; s++) {
    const servers = mesh.counters.filter((c) => placement[s]!.includes(c.id) && c.counter?.status().serving?.includes(s));
    const held = servers.map((c) => idsInShard(c.counter, s));
    for (let a = 0; a < servers.length; a++) {
      for (let b = a + 1; b < servers.length; b++) {
        for (const [tenant, ids] of acked) {
          if (mesh.counters[0]!.counter!.shardOf(tenant) !== s) continue;
          for (const id of ids) {
            if (!held[a]!.get(tenant)?.has(id) && !held[b]!.get(tenant)?.has(id)) {
              return `shard ${s}: ${servers[a]!.id} and ${servers[b]!.id} both serve it and neither holds ${tenant}/${id}, acknowledged with w=2`;
            }
          }
        }
      }
    }
  }
  return null;
}

test('a counter joins while a replica is behind: it serves a shard only once it holds what a write quorum acknowledged, so r=2 reads of the new placement miss nothing', () =>
  withSeed('quorum-join', async (seed, rng) => {
    const mesh = await MemoryMesh.start({ seed, counters: 3, coordinators: 1, faults: { minDelayMs: 0, maxDelayMs: 15 } });
    try {
      const pool = mesh.pools[0]!;
      const tenants = Array.from({ length: 16 }, (_, i) => `j${i}`);
      await fullyLinked(mesh, tenants);
      // counter-3 falls behind: cut from both peers (not from the coordinator, nor from the newcomer)
      const [c0, c1, c2] = mesh.counters as [SimCounter, SimCounter, SimCounter];
      mesh.net.partition(c2.id, c0.id);
      mesh.net.partition(c2.id, c1.id);
      const acked = new Map<string, Set<string>>();
      const violations: string[] = [];
      const ops: Promise<void>[] = [];
      let n = 0;
      const write = (): void => {
        const tenant = tenants[Math.floor(rng() * tenants.length)]!;
        const items = [{ tenant, id: `i${n++}` }];
        ops.push(
          writeQuorum(pool.replicas(tenant), items, 2).then(
            () => {
              const ids = acked.get(tenant) ?? new Set<string>();
              acked.set(tenant, ids);
              for (const it of items) ids.add(it.id);
            },
            (err: unknown) => {
              if (!(err instanceof NotEnoughReplicasError)) violations.push(`write failed with ${String(err)}`);
            },
          ),
        );
      };
      const read = (): void => {
        const tenant = tenants[Math.floor(rng() * tenants.length)]!;
        const before = acked.get(tenant)?.size ?? 0;
        ops.push(
          readQuorum(pool.replicas(tenant), tenant, 2).then(
            (count) => {
              if (count < before) violations.push(`read ${count} of ${tenant} < ${before} acknowledged before it`);
            },
            (err: unknown) => {
              if (!(err instanceof NotEnoughReplicasError)) violations.push(`read failed with ${String(err)}`);
            },
          ),
        );
      };
      for (let i = 0; i < 60; i++) {
        write();
        await mesh.run(Math.floor(rng() * 10));
      }
      await mesh.settle(ops);
      const behind = tenants.filter((t) => c2.counter!.count(t) < (acked.get(t)?.size ?? 0));
      assert.ok(behind.length > 0, 'the cut-off counter is behind the acknowledged items');

      const joined = mesh.counters[await mesh.addCounter()]!;
      const newShards = () => mesh.placement()?.flatMap((ids, s) => (ids.includes(joined.id) ? [s] : [])) ?? [];
      const servesItsShare = () => newShards().length > 0 && newShards().every((s) => joined.counter!.status().serving?.includes(s));
      let gap: string | null = null;
      const end = mesh.clock.now() + 30_000;
      while (!servesItsShare() && mesh.clock.now() < end) {
        if (rng() < 0.5) write();
        else read();
        await mesh.run(Math.floor(rng() * 10));
        gap ??= quorumGap(mesh, acked, 8);
      }
      assert.ok(servesItsShare(), `${joined.id} serves every shard placed on it within 30 simulated s`);
      await mesh.settle(ops);
      assert.is(gap, null);
      assert.equal(violations, []);
      mesh.net.heal();
      await mesh.until(() => mesh.placementProblem() === null, 30_000, 'every shard held by exactly its placed replicas after the heal');
    } finally {
      await mesh.close();
    }
  }));

test.run();
