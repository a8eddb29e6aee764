/**
 * Quorum writes and reads on the in-memory tier: real counters and coordinator pools over the
 * seeded simulated network, with reads and writes in flight together through two coordinators
 * while counters are partitioned from each other and from a coordinator, and one crashes and
 * restarts. Every answered read must lie between the items acknowledged before it started and
 * the items sent. `SEED=n` replays a run.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MemoryMesh } from './support/memory-mesh.ts';
import { withSeed } from './support/sim.ts';
import { NotEnoughReplicasError, readQuorum, writeQuorum } from '../src/coordinator/quorum.ts';
import { MessageType, readMessage } from '../src/protocol/messages.ts';

const TENANTS = ['acme', 'globex'];

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

test.run();
