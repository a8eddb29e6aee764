/** A short chaos run in-process: kills, partitions, coordinator cuts; nothing acknowledged is lost. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { chaos } from '../tools/chaos/run.ts';
import { formatReport } from '../tools/chaos/main.ts';
import { planFaults } from '../tools/chaos/schedule.ts';

test('the fault schedule is a function of the seed', () => {
  assert.equal(planFaults(7, 3, 60_000), planFaults(7, 3, 60_000));
  assert.not.equal(planFaults(7, 3, 60_000), planFaults(8, 3, 60_000));
});

test('a 20 s chaos run loses no acknowledged item, invents none, and all counters agree', async () => {
  const report = await chaos({ counters: 3, durationS: 16, seed: 1, rate: 200, clients: 8, tenants: 5, convergenceDeadlineMs: 20_000 });
  const text = formatReport(report);
  assert.ok(report.writes.acked > 1000, `writes went through\n${text}`);
  assert.is(report.lost, 0, `no lost acknowledged item\n${text}`);
  assert.is(report.phantom, 0, `no phantom\n${text}`);
  assert.is(report.disagreeingCounters, 0, `counters agree\n${text}`);
  assert.ok(report.convergenceMs !== null, `counters converged\n${text}`);
  assert.ok(report.faults.killedCounters > 0, `counters were killed\n${text}`);
  assert.ok(report.faults.partitions > 0, `counters were partitioned\n${text}`);
  assert.equal(report.violations, [], text);
  assert.ok(report.ok, text);
  // w=one, r=one: stale reads are possible and only reported
  assert.is(report.reads.strict, false);
  assert.ok(report.reads.answered > 100, `reads were made and answered\n${text}`);
  assert.match(text, 'STALE reads (below acknowledged; reported only)');
});

test('a quorum chaos run (w=quorum, r=quorum): additionally, no read is lower than what was acknowledged before it', async () => {
  const report = await chaos({ counters: 3, durationS: 12, seed: 3, rate: 200, clients: 8, tenants: 5, convergenceDeadlineMs: 20_000, w: 'quorum', r: 'quorum' });
  const text = formatReport(report);
  assert.ok(report.reads.strict, 'w + r > counters makes stale reads violations');
  assert.ok(report.writes.acked > 1000, `writes went through\n${text}`);
  assert.ok(report.reads.answered > 100, `quorum reads were answered\n${text}`);
  assert.is(report.reads.stale, 0, `no stale read\n${text}`);
  assert.is(report.reads.aboveSent, 0, text);
  assert.is(report.lost, 0, `no lost acknowledged item\n${text}`);
  assert.is(report.phantom, 0, `no phantom\n${text}`);
  assert.is(report.disagreeingCounters, 0, `counters agree\n${text}`);
  assert.ok(report.faults.killedCounters > 0 && report.faults.partitions > 0, `faults were injected\n${text}`);
  assert.equal(report.violations, [], text);
});

test.run();
