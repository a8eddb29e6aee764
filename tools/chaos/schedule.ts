/**
 * The fault schedule of a chaos run: a pure function of (seed, counters, duration), so the same
 * seed replays the same faults. Two independent tracks run side by side:
 *
 * - process track: SIGKILL one counter, or several at once (sometimes all), restart after a downtime;
 *   and, unless membership faults are off, membership changes: a counter added (fresh DATA_DIR),
 *   removed (SIGKILLed, DATA_DIR deleted, DELETE /counters/:id) or leaving (DELETE /counters/:id
 *   while it runs; it hands off its shards and exits 0). Remove and leave are planned only while
 *   at least REPLICATION_FACTOR + 1 counters are placed, so every shard keeps a replica; they
 *   share the track with kills, so nothing is removed while another counter is down;
 * - network track: partitions between counters (reset or blackhole), the coordinator cut off from
 *   some counters, or both at once (split brain), healed after a while.
 *
 * Within a track episodes never overlap; across tracks they do (a counter can be killed while
 * partitioned). Times are planned offsets from the start of the writes; an episode whose start is
 * due while the previous one of its track still runs (a restart took longer) starts right after it.
 */
import type { Cut } from '../../test/support/fault-proxy.ts';
import { int, mulberry32, ms, pick, sample, streamSeed, type Rng } from '../../test/support/prng.ts';

export type ProcessFaultKind = 'kill' | 'kill-many' | MembershipFaultKind;
export type MembershipFaultKind = 'add' | 'remove' | 'leave';
export const MEMBERSHIP_KINDS: readonly MembershipFaultKind[] = ['add', 'remove', 'leave'];
export type NetworkFaultKind = 'partition-reset' | 'partition-blackhole' | 'isolate-reset' | 'isolate-blackhole' | 'split-brain';
export type FaultKind = ProcessFaultKind | NetworkFaultKind;
export const FAULT_KINDS: readonly FaultKind[] = ['kill', 'kill-many', 'add', 'remove', 'leave', 'partition-reset', 'partition-blackhole', 'isolate-reset', 'isolate-blackhole', 'split-brain'];

export interface ProcessFault {
  track: 'process';
  kind: ProcessFaultKind;
  /** Planned start, ms after the writes start. */
  atMs: number;
  /**
   * Counter indexes SIGKILLed together; for add the index the new counter gets, for remove and
   * leave the counter taken out. Counter i is mesh counter c<i>; added ones continue the numbering.
   */
  targets: number[];
  /** How long they stay down before they are started again (0 for membership faults). */
  downMs: number;
}

export interface NetworkFault {
  track: 'network';
  kind: NetworkFaultKind;
  atMs: number;
  /**
   * Counter ↔ counter partition (both empty when the counters stay connected). Indexes are slots:
   * at injection slot i is the i-th counter still in the mesh (counters come and go), modulo their number.
   */
  sideA: number[];
  sideB: number[];
  /** Counters the coordinator is cut from. */
  isolated: number[];
  cut: Cut;
  /** How long until the heal. */
  forMs: number;
}

export type Fault = ProcessFault | NetworkFault;

/** Time a restarted counter is given to become ready before the next process fault is planned. */
const RESTART_ALLOWANCE_MS = 2000;
/** Time planned for a membership change (a start, a handoff, a removal's wait for replication). */
const MEMBERSHIP_ALLOWANCE_MS = 4000;
/** Share of process-track episodes that are membership changes (when on). */
const MEMBERSHIP_SHARE = 0.5;
/** Counters added beyond the initial ones at most (loopback addresses are finite, CPUs more so). */
const MAX_EXTRA_COUNTERS = 3;

export interface PlanOptions {
  /** Plan membership faults (default true). */
  membership?: boolean;
  /** REPLICATION_FACTOR of the mesh (default 3): remove and leave keep at least this many counters placed. */
  factor?: number;
}
/** No episode starts this close to the end of the run. */
const TAIL_MS = 1500;

export function planFaults(seed: number, counters: number, durationMs: number, options: PlanOptions = {}): Fault[] {
  const membership = options.membership ?? true;
  const factor = options.factor ?? 3;
  const plan: Fault[] = [...processTrack(mulberry32(streamSeed(seed, 'process')), counters, durationMs, membership, factor), ...networkTrack(mulberry32(streamSeed(seed, 'network')), counters, durationMs)];
  return plan.sort((a, b) => a.atMs - b.atMs || (a.track < b.track ? -1 : 1));
}

function processTrack(rng: Rng, n: number, durationMs: number, membership: boolean, factor: number): ProcessFault[] {
  const out: ProcessFault[] = [];
  /** Counters in the mesh (by index) as the plan goes: adds append, removes and leaves take out. */
  const members = Array.from({ length: n }, (_, i) => i);
  let nextIndex = n;
  const used: Record<MembershipFaultKind, number> = { add: 0, remove: 0, leave: 0 };
  let at = ms(rng, 1500, 3000);
  while (at < durationMs - TAIL_MS) {
    const allowed = MEMBERSHIP_KINDS.filter((k) => (k === 'add' ? nextIndex < n + MAX_EXTRA_COUNTERS : members.length >= factor + 1));
    let fault: ProcessFault;
    if (membership && allowed.length > 0 && rng() < MEMBERSHIP_SHARE) {
      // the kinds done least so far first, so a short run sees each of them
      const least = Math.min(...allowed.map((k) => used[k]));
      const kind = pick(rng, allowed.filter((k) => used[k] === least));
      used[kind]++;
      let target: number;
      if (kind === 'add') {
        target = nextIndex++;
        members.push(target);
      } else {
        target = pick(rng, members);
        members.splice(members.indexOf(target), 1);
      }
      fault = { track: 'process', kind, atMs: at, targets: [target], downMs: 0 };
      out.push(fault);
      at += MEMBERSHIP_ALLOWANCE_MS + ms(rng, 1000, 4000);
      continue;
    }
    const m = members.length;
    const many = m >= 2 && rng() < 0.4;
    if (!many) {
      fault = { track: 'process', kind: 'kill', atMs: at, targets: [pick(rng, members)], downMs: ms(rng, 500, 4000) };
    } else {
      const all = m === 2 || rng() < 0.2;
      const k = all ? m : int(rng, 2, m - 1);
      fault = { track: 'process', kind: 'kill-many', atMs: at, targets: sample(rng, m, k).map((i) => members[i]!).sort((a, b) => a - b), downMs: all ? ms(rng, 300, 1500) : ms(rng, 500, 3000) };
    }
    out.push(fault);
    at += fault.downMs + RESTART_ALLOWANCE_MS + ms(rng, 1000, 4000);
  }
  return out;
}

function networkTrack(rng: Rng, n: number, durationMs: number): NetworkFault[] {
  const out: NetworkFault[] = [];
  const kinds: NetworkFaultKind[] = n >= 2 ? ['partition-reset', 'partition-blackhole', 'isolate-reset', 'isolate-blackhole', 'split-brain'] : ['isolate-reset', 'isolate-blackhole'];
  let at = ms(rng, 1000, 2500);
  while (at < durationMs - TAIL_MS) {
    const kind = pick(rng, kinds);
    const forMs = ms(rng, 1500, 6000);
    let fault: NetworkFault;
    if (kind === 'partition-reset' || kind === 'partition-blackhole' || kind === 'split-brain') {
      const order = sample(rng, n, n);
      // shuffle the sorted sample so the sides are random, not always low indexes first
      for (let i = order.length - 1; i > 0; i--) {
        const j = Math.floor(rng() * (i + 1));
        [order[i], order[j]] = [order[j]!, order[i]!];
      }
      const split = int(rng, 1, n - 1);
      const sideA = order.slice(0, split).sort((a, b) => a - b);
      const sideB = order.slice(split).sort((a, b) => a - b);
      if (kind === 'split-brain') {
        fault = { track: 'network', kind, atMs: at, sideA, sideB, isolated: sideB, cut: rng() < 0.5 ? 'reset' : 'blackhole', forMs };
      } else {
        fault = { track: 'network', kind, atMs: at, sideA, sideB, isolated: [], cut: kind === 'partition-reset' ? 'reset' : 'blackhole', forMs };
      }
    } else {
      const k = n === 1 || rng() < 0.15 ? n : int(rng, 1, n - 1);
      fault = { track: 'network', kind, atMs: at, sideA: [], sideB: [], isolated: sample(rng, n, k), cut: kind === 'isolate-reset' ? 'reset' : 'blackhole', forMs };
    }
    out.push(fault);
    at += forMs + ms(rng, 800, 3000);
  }
  return out;
}

const names = (list: number[]) => list.map((i) => `c${i}`).join(',');
const secs = (v: number) => `${(v / 1000).toFixed(1)} s`;

export function describeFault(f: Fault): string {
  switch (f.kind) {
    case 'kill':
      return `SIGKILL ${names(f.targets)}, restart after ${secs(f.downMs)}`;
    case 'kill-many':
      return `SIGKILL ${names(f.targets)} at once, restart after ${secs(f.downMs)}`;
    case 'add':
      return `add ${names(f.targets)} (fresh DATA_DIR, PEERS naming one member)`;
    case 'remove':
      return `remove ${names(f.targets)}: SIGKILL, delete its DATA_DIR, DELETE /counters/${names(f.targets)}`;
    case 'leave':
      return `${names(f.targets)} leaves: DELETE /counters/${names(f.targets)} while it runs, it exits 0 once handed off`;
    case 'partition-reset':
    case 'partition-blackhole':
      return `partition {${names(f.sideA)}} | {${names(f.sideB)}} (${f.cut}), heal after ${secs(f.forMs)}`;
    case 'isolate-reset':
    case 'isolate-blackhole':
      return `cut the coordinator from {${names(f.isolated)}} (${f.cut}), heal after ${secs(f.forMs)}`;
    case 'split-brain':
      return `partition {${names(f.sideA)}} | {${names(f.sideB)}} and cut the coordinator from {${names(f.isolated)}} (${f.cut}), heal after ${secs(f.forMs)}`;
  }
}
