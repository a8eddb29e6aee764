/**
 * Watched counts: a coordinator reads a tenant once, the counter then pushes the tenant's count as
 * it changes, and later reads are answered from it without a round trip. Checked in the in-memory
 * tier (seeded delays that reorder across connections; `SEED=n` replays) and on the wire format.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MemoryMesh } from './support/memory-mesh.ts';
import { withSeed } from './support/sim.ts';
import { MessageType, ProtocolError, readMessage, writeCounts, writeUnwatch, writeWatch, type Message } from '../src/protocol/messages.ts';
import { CountWatches, MAX_WATCHED_PER_SESSION } from '../src/counter/count-watches.ts';
import type { MeshSocket } from '../src/protocol/mesh-socket.ts';
import { SimClock } from './support/sim.ts';
import { mulberry32 } from './support/prng.ts';

/** A session's socket that keeps what was sent to it. */
function fakeSession(): { sock: MeshSocket; sent: Message[] } {
  const sent: Message[] = [];
  const sock = { open: true, send: (frame: Uint8Array) => sent.push(readMessage(frame)) } as unknown as MeshSocket;
  return { sock, sent };
}

test('CountWatches pushes a watched tenant once per turn with its current count, before an acknowledgment when asked, and stops on unwatch and close', () => {
  const clock = new SimClock(mulberry32(1));
  const counts = new Map<string, number>([['acme', 0]]);
  const watches = new CountWatches((t) => counts.get(t) ?? 0, clock);
  const a = fakeSession();
  const b = fakeSession();
  assert.ok(watches.watch(a.sock, 'acme'));
  assert.ok(watches.watch(b.sock, 'acme'));
  for (let i = 1; i <= 3; i++) {
    counts.set('acme', i);
    watches.counted('acme');
  }
  watches.counted('nobody-watches');
  // an acknowledgment about to go out on `a` takes the change with it, synchronously
  watches.flushBefore(a.sock);
  assert.equal(a.sent, [{ type: MessageType.Counts, counts: [{ tenant: 'acme', count: 3 }] }]);
  assert.equal(b.sent, [], 'the other session waits for the end of the turn');
  clock.step(0);
  assert.equal(b.sent, [{ type: MessageType.Counts, counts: [{ tenant: 'acme', count: 3 }] }], 'three changes, one push');
  assert.is(a.sent.length, 1, 'nothing pushed twice');
  watches.unwatch(a.sock, ['acme']);
  watches.drop(b.sock);
  counts.set('acme', 4);
  watches.counted('acme');
  clock.step(0);
  assert.is(a.sent.length + b.sent.length, 2, 'no pushes after unwatch and close');
});

test('CountWatches refuses watches past the per-session limit', () => {
  const watches = new CountWatches(() => 0, new SimClock(mulberry32(1)));
  const { sock } = fakeSession();
  for (let i = 0; i < MAX_WATCHED_PER_SESSION; i++) assert.ok(watches.watch(sock, `t${i}`) || assert.unreachable(`watch ${i} refused`));
  assert.not.ok(watches.watch(sock, 'one-more'));
  assert.ok(watches.watch(sock, 't0'), 'a tenant already watched stays watched');
});

test('watch, counts and unwatch frames decode to what was encoded; a lying length is refused', () => {
  assert.equal(readMessage(writeWatch(7, 'acme')), { type: MessageType.Watch, reqId: 7, tenant: 'acme' });
  assert.equal(readMessage(writeCounts([{ tenant: 'acme', count: 3 }, { tenant: 'b', count: 2 ** 40 }])), {
    type: MessageType.Counts,
    counts: [{ tenant: 'acme', count: 3 }, { tenant: 'b', count: 2 ** 40 }],
  });
  assert.equal(readMessage(writeUnwatch(['acme', 'b'])), { type: MessageType.Unwatch, tenants: ['acme', 'b'] });
  const lying = Uint8Array.of(MessageType.Counts, 0xff, 0x7f);
  assert.throws(() => readMessage(lying), (e: Error) => e instanceof ProtocolError && /claims 16383 entries/.test(e.message));
});

test("a coordinator's reads answer from the pushed count: its own acknowledged writes at once, other coordinators' writes once they reach its home counter", () =>
  withSeed('watch-read-your-writes', async (seed, rng) => {
    const mesh = await MemoryMesh.start({ seed, counters: 3, coordinators: 2, faults: { minDelayMs: 0, maxDelayMs: 20 } });
    try {
      const [reader, other] = mesh.pools;
      const tenant = 'acme';
      // every replica serving the tenant's shard: one that starts serving later becomes the home
      // of some coordinators then (a documented exception to read-your-writes, not this test's)
      await mesh.until(() => mesh.pools.every((p) => MemoryMesh.servedThrough(p, tenant, 3)), 10_000, 'both coordinators see 3 counters serving the tenant');
      const first = reader!.count(tenant);
      assert.ok(first instanceof Promise, 'the first read asks the counter');
      assert.is((await mesh.settle([first as Promise<number>]))[0], 0);
      const acked = new Set<string>();
      for (let r = 0; r < 25; r++) {
        const batch = Array.from({ length: 1 + Math.floor(rng() * 4) }, (_, i) => ({ tenant, id: `w${r}-${i}-${Math.floor(rng() * 30)}` }));
        // a write through the other coordinator lands on its home counter and travels by gossip
        if (rng() < 0.5) void mesh.write(1, [{ tenant, id: `o${r}` }]);
        // read the moment the acknowledgment arrives: no later delivery may have helped
        const acknowledged = mesh.write(0, batch).then((ok) => {
          assert.ok(ok, `write ${r} acknowledged`);
          for (const it of batch) acked.add(it.id);
          return reader!.count(tenant);
        });
        const [seen] = await mesh.settle([acknowledged]);
        assert.type(seen, 'number', `read ${r} is answered from the pushed count`);
        assert.ok((seen as number) >= acked.size, `read ${r}: ${seen as number} counts every item this coordinator had acknowledged (${acked.size})`);
        await mesh.run(Math.floor(rng() * 15));
      }
      await mesh.until(() => mesh.converged(), 5_000, 'counters converge');
      const truth = mesh.counters[0]!.counter!.count(tenant);
      await mesh.until(() => reader!.count(tenant) === truth, 1_000, `the pushed count reaches ${truth}`);
      assert.is(other!.candidates().length, 3);
      mesh.compare();
    } finally {
      await mesh.close();
    }
  }));

test('the pushed counts of a counter that crashed are dropped: reads fail over to a counter that answers', () =>
  withSeed('watch-crash', async (seed) => {
    const mesh = await MemoryMesh.start({ seed, counters: 3, coordinators: 1, faults: { minDelayMs: 0, maxDelayMs: 10 } });
    try {
      const pool = mesh.pools[0]!;
      const tenant = 'globex';
      // every replica serving: the tenant's home is then the coordinator's first candidate
      await mesh.until(() => MemoryMesh.servedThrough(pool, tenant, 3), 10_000, 'the coordinator sees 3 counters serving the tenant');
      await mesh.settle([mesh.write(0, [{ tenant, id: 'a' }, { tenant, id: 'b' }])]);
      // with w=one an item is on its home counter only until gossip; here every counter has it first
      await mesh.until(() => mesh.converged(), 5_000, 'every counter holds both items');
      await mesh.settle([Promise.resolve(pool.count(tenant))]);
      const home = pool.candidates()[0]!;
      assert.is(home.knownCount(tenant), 2, 'the home link keeps the count it was pushed');
      const homeIndex = mesh.counters.findIndex((c) => c.id === home.id);
      await mesh.crashCounter(homeIndex);
      await mesh.until(() => home.knownCount(tenant) === undefined, 10_000, 'the crashed counter’s pushed count is dropped');
      const [count] = await mesh.settle([Promise.resolve(pool.count(tenant))]);
      assert.is(count, 2, 'the read is answered by a surviving counter');
      assert.is.not(pool.candidates()[0]!.id, home.id);
    } finally {
      await mesh.close();
    }
  }));

test.run();
