/**
 * The fault schedule of a chaos run: a pure function of (seed, counters, duration), so the same
 * seed replays the same faults. Two independent tracks run side by side:
 *
 * - process track: SIGKILL one counter, or several at once (sometimes all), restart after a downtime;
 * - network track: partitions between counters (reset or blackhole), the coordinator cut off from
 *   some counters, or both at once (split brain), healed after a while.
 *
 * Within a track episodes never overlap; across tracks they do (a counter can be killed while
 * partitioned). Times are planned offsets from the start of the writes; an episode whose start is
 * due while the previous one of its track still runs (a restart took longer) starts right after it.
 */
import type { Cut } from '../../test/support/fault-proxy.ts';
import { int, mulberry32, ms, pick, sample, streamSeed, type Rng } from '../../test/support/prng.ts';

export type ProcessFaultKind = 'kill' | 'kill-many';
export type NetworkFaultKind = 'partition-reset' | 'partition-blackhole' | 'isolate-reset' | 'isolate-blackhole' | 'split-brain';
export type FaultKind = ProcessFaultKind | NetworkFaultKind;
export const FAULT_KINDS: readonly FaultKind[] = ['kill', 'kill-many', 'partition-reset', 'partition-blackhole', 'isolate-reset', 'isolate-blackhole', 'split-brain'];

export interface ProcessFault {
  track: 'process';
  kind: ProcessFaultKind;
  /** Planned start, ms after the writes start. */
  atMs: number;
  /** Counter indexes SIGKILLed together. */
  targets: number[];
  /** How long they stay down before they are started again. */
  downMs: number;
}

export interface NetworkFault {
  track: 'network';
  kind: NetworkFaultKind;
  atMs: number;
  /** Counter ↔ counter partition (both empty when the counters stay connected). */
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
/** No episode starts this close to the end of the run. */
const TAIL_MS = 1500;

export function planFaults(seed: number, counters: number, durationMs: number): Fault[] {
  const plan: Fault[] = [...processTrack(mulberry32(streamSeed(seed, 'process')), counters, durationMs), ...networkTrack(mulberry32(streamSeed(seed, 'network')), counters, durationMs)];
  return plan.sort((a, b) => a.atMs - b.atMs || (a.track < b.track ? -1 : 1));
}

function processTrack(rng: Rng, n: number, durationMs: number): ProcessFault[] {
  const out: ProcessFault[] = [];
  let at = ms(rng, 1500, 3000);
  while (at < durationMs - TAIL_MS) {
    const many = n >= 2 && rng() < 0.4;
    let fault: ProcessFault;
    if (!many) {
      fault = { track: 'process', kind: 'kill', atMs: at, targets: [int(rng, 0, n - 1)], downMs: ms(rng, 500, 4000) };
    } else {
      const all = n === 2 || rng() < 0.2;
      const k = all ? n : int(rng, 2, n - 1);
      fault = { track: 'process', kind: 'kill-many', atMs: at, targets: sample(rng, n, k), downMs: all ? ms(rng, 300, 1500) : ms(rng, 500, 3000) };
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
