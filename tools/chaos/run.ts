/**
 * One chaos run, returning its report: a private mesh, concurrent writers through the coordinator,
 * a seeded fault schedule (see schedule.ts), then heal, optional resend of unknown outcomes,
 * convergence, and the checks. `main.ts` parses flags and prints; tests call {@link chaos} directly.
 */
import { setMaxListeners } from 'node:events';
import fs from 'node:fs';
import { Mesh, type CounterNode, type ExitStatus } from '../../test/support/mesh.ts';
import { mulberry32, streamSeed } from '../../test/support/prng.ts';
import { FAULT_KINDS, describeFault, planFaults, type Fault, type FaultKind, type NetworkFault, type ProcessFault } from './schedule.ts';
import { levelSize, parseLevel } from '../../src/shared/levels.ts';
import { shardOf } from '../../src/shared/placement.ts';
import { waitFor } from '../../src/shared/wait.ts';
import { placementSettled, shardsView, type ShardsView } from './shards.ts';

export interface ChaosOptions {
  counters: number;
  durationS: number;
  seed: number;
  /** Items per second over all clients, or as fast as the clients go. */
  rate: number | 'max';
  clients: number;
  tenants: number;
  /**
   * Resend every item whose outcome is unknown (rejected, timed out, transport error) after the
   * heal until it is acknowledged, so the per-tenant check becomes exact. Default true.
   */
  resend?: boolean;
  /** Per-request client timeout (fetch AbortSignal). Default 5000. */
  requestTimeoutMs?: number;
  /** How long after the heal counters get to agree. Default 60000. */
  convergenceDeadlineMs?: number;
  /** Aborting it (Ctrl-C) ends the run early; the mesh is still closed, no checks are made. */
  signal?: AbortSignal;
  /** Progress lines (fault injected, healed, converged...). */
  log?: (line: string) => void;
  /** Extra environment for every process of the mesh, e.g. COMPACT_BYTES to force compactions. */
  env?: Record<string, string>;
  /** `w` of every write (one, quorum, all or a number). Default one. */
  w?: string;
  /** `r` of every read of the stale-read check. Default one. */
  r?: string;
  /** Concurrent readers of the stale-read check, alternating between two coordinators. Default 2; 0: no reads, one coordinator. */
  readers?: number;
  /** Counters added, removed and leaving on the process track (see schedule.ts). Default true. */
  membership?: boolean;
}

export interface ReadResult {
  /** Reads made during the write phase (each of one tenant's count, through either coordinator). */
  requests: number;
  answered: number;
  rejectedByStatus: Record<string, number>;
  /** Transport errors and client timeouts. */
  failed: number;
  /** Answers lower than the items of that tenant acknowledged before the read began. */
  stale: number;
  /** Answers higher than the items of that tenant sent before the read was answered: never possible. */
  aboveSent: number;
  /** w + r > counters: a stale read is a violation (otherwise it is reported only). */
  strict: boolean;
  /** A few stale reads, for the report. */
  examples: string[];
}

export interface TenantResult {
  tenant: string;
  /** The tenant's shard. */
  shard: number;
  /** Distinct items sent for this tenant. */
  sent: number;
  /** Items acknowledged (2xx), on the first try or on a resend. */
  acked: number;
  /** Sent but never acknowledged: may or may not be counted. */
  unknown: number;
  /** This tenant's count on each counter serving its shard after convergence (null: no answer). */
  counted: { id: string; count: number | null }[];
  /** Acknowledged items the counters do not count: max(0, acked − highest count). Must be 0. */
  lost: number;
  /** Counted items that were never sent: max(0, highest count − sent). Must be 0. */
  phantom: number;
}

export interface ShardResult {
  shard: number;
  /** Replicas placed for the shard as GET /shards on the coordinator gives them at the end. */
  replicas: { id: string; inSync: boolean }[];
  handingOff: string[];
  /** Counters whose GET /status lists the shard as served. */
  serving: string[];
  tenants: string[];
  sent: number;
  acked: number;
  /** The highest count of the shard's tenants summed, over the serving counters. */
  counted: number;
  lost: number;
  phantom: number;
  /** Every serving counter counts the same for every tenant of the shard. */
  agree: boolean;
}

export interface InjectedFault {
  kind: FaultKind;
  description: string;
  plannedAtMs: number;
  /** When it actually started, ms after the writes started. */
  atMs: number;
  /** When it was healed / the counters were started again. */
  endMs: number | null;
}

export interface ChaosReport {
  options: { counters: number; durationS: number; seed: number; rate: number | 'max'; clients: number; tenants: number; resend: boolean; requestTimeoutMs: number; env: Record<string, string>; w: string; r: string; readers: number; membership: boolean };
  /** The stale-read check. */
  reads: ReadResult;
  /** What is checked, in words. */
  checks: string[];
  /** The planned schedule (a function of seed, counters and duration). */
  schedule: (Fault & { description: string })[];
  /** What was actually injected, with actual times (the tail of the schedule is cut by the end of the run). */
  injected: InjectedFault[];
  faults: Record<FaultKind, number> & { killedCounters: number; partitions: number; isolations: number; total: number };
  writes: {
    /** Requests during the write phase. */
    requests: number;
    /** Requests of the resend after the heal. */
    resendRequests: number;
    /** Distinct items sent. */
    sent: number;
    ackedFirstTry: number;
    rejected: number;
    timedOut: number;
    /** Transport errors other than the timeout (connection refused or reset by the coordinator). */
    failed: number;
    /** Status codes of rejected requests, e.g. {"503": 12}. */
    rejectedByStatus: Record<string, number>;
    resent: number;
    ackedOnResend: number;
    /** Acknowledged in the end (first try or resend). */
    acked: number;
    /** Never acknowledged. */
    unknown: number;
    /** Achieved rate over the write phase, items per second. */
    itemsPerSecond: number;
  };
  /** Items counted: the sum over tenants of the (agreed) counts. */
  counted: number;
  lost: number;
  phantom: number;
  disagreeingCounters: number;
  /** Time from the heal (all links healed, all counters running) until every counter agreed on every tenant; null if they never did. */
  convergenceMs: number | null;
  /** Time the resend of unknown outcomes took (part of convergenceMs). */
  resendMs: number;
  /** Process exits nobody asked for (counters or the coordinator crashing). */
  unexpectedExits: { process: string; exits: number; tail: string }[];
  tenants: TenantResult[];
  /** Every shard at the end: in-sync replicas, and for those holding tenants the per-shard checks. */
  shards: ShardResult[];
  /** REPLICATION_FACTOR as the coordinator reports it (null: it reported no placement). */
  factor: number | null;
  /** Counters in the mesh at the end (added ones included; removed and left ones not). */
  finalCounters: string[];
  /** Membership faults planned but not done, and why. */
  skipped: string[];
  violations: string[];
  notes: string[];
  interrupted: boolean;
  ok: boolean;
  elapsedMs: number;
}

type Outcome = 'acked' | 'rejected' | 'timeout' | 'failed';

interface ItemRecord {
  id: string;
  tenant: number;
  outcome: Outcome;
  ackedOnResend: boolean;
}

const SETTLE_MS = 2000;
const RESEND_DEADLINE_MS = 30_000;
const RESEND_BATCH = 50;
/** How long a counter removed while running gets to hand off its shards and exit. */
const LEAVE_DEADLINE_MS = 60_000;

/** Resolves true after `ms`, or false as soon as `signal` aborts. */
function sleep(ms: number, signal?: AbortSignal): Promise<boolean> {
  if (signal?.aborted) return Promise.resolve(false);
  if (ms <= 0) return Promise.resolve(true);
  return new Promise((resolve) => {
    const done = (full: boolean) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      resolve(full);
    };
    const onAbort = () => done(false);
    const timer = setTimeout(() => done(true), ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms} ms`)), ms);
    }),
  ]);
}

export const tenantName = (i: number) => `tenant-${i}`;

export function checksText(resend: boolean, reads?: { w: string; r: string; readers: number; strict: boolean }): string[] {
  const readChecks = !reads || reads.readers === 0 ? [] : [
    `${reads.readers} readers read tenants' counts (r=${reads.r}) through two coordinators during the writes (w=${reads.w}); each answer is compared with the items of that tenant acknowledged before the read began: a lower answer is a stale read, ${reads.strict ? 'a violation here (w + r > counters)' : 'reported only (w + r ≤ counters promises no such thing)'}; an answer above the items sent is always a violation.`,
  ];
  return [
    'Every item has a unique id and is sent once by one client; for each item the first outcome is recorded: acknowledged (2xx), rejected (non-2xx) or timed out / transport error.',
    resend
      ? 'After the heal every item whose outcome is unknown is resent (adds are idempotent) until acknowledged; acknowledged items are never resent, so a resend cannot hide a lost item.'
      : 'Items whose outcome is unknown are not resent (--no-resend): they may or may not be counted.',
    'After the heal, per shard: GET /shards on the coordinator must show every shard on REPLICATION_FACTOR replicas, all in sync, none handing off, over exactly the counters still in the mesh; every counter serving a tenant\'s shard (GET /status) is asked directly (not through its fault proxy) for the tenant\'s count; all this must hold, with the same figures, for 2 s.',
    `Per tenant, summed per shard: lost = acknowledged − counted must be 0 (exact when every item of the tenant ended acknowledged${resend ? ', which the resend ensures' : ''}; otherwise a lower bound: an unknown-outcome item that landed can mask a loss); phantom = counted − sent must be 0; every replica serving the shard must count the same.`,
    'Membership faults: an added counter must become ready; a removed one is first cut off from the coordinators and its tenants\' counts must be the same on every replica (so what it acknowledged is on another disk: deleting the only copy is outside the fault model) before it is SIGKILLed, its DATA_DIR deleted and DELETE /counters/:id sent; a leaving one (DELETE /counters/:id while it runs) must exit 0 by itself within 60 s. Remove and leave wait for the placement to settle and are skipped while a counter is down or fewer than REPLICATION_FACTOR + 1 counters are placed.',
    ...readChecks,
    'No counter or coordinator may exit unless the schedule killed it.',
  ];
}

export async function chaos(opts: ChaosOptions): Promise<ChaosReport> {
  const started = Date.now();
  const log = opts.log ?? (() => {});
  const resend = opts.resend ?? true;
  const requestTimeoutMs = opts.requestTimeoutMs ?? 5000;
  const convergenceDeadlineMs = opts.convergenceDeadlineMs ?? 60_000;
  const durationMs = Math.round(opts.durationS * 1000);
  const membership = opts.membership ?? true;
  // the mesh's placement settings: the processes read them from the same environment
  const factor = Number(opts.env?.REPLICATION_FACTOR ?? 3);
  const shards = Number(opts.env?.SHARDS ?? 64);
  const plan = planFaults(opts.seed, opts.counters, durationMs, { membership, factor });
  const tenants = Array.from({ length: opts.tenants }, (_, i) => tenantName(i));
  const interrupted = () => opts.signal?.aborted === true;
  const w = opts.w ?? 'one';
  const r = opts.r ?? 'one';
  const readers = opts.readers ?? 2;
  const wLevel = parseLevel(w);
  const rLevel = parseLevel(r);
  if (wLevel === null || rLevel === null) throw new Error(`w=${w}, r=${r}: each must be one, quorum, all or a number`);
  const strict = levelSize(wLevel, opts.counters) + levelSize(rLevel, opts.counters) > opts.counters;

  const violations: string[] = [];
  const notes: string[] = [];
  const skipped: string[] = [];
  const injected: InjectedFault[] = [];
  const faultCounts = Object.fromEntries(FAULT_KINDS.map((k) => [k, 0])) as Record<FaultKind, number>;
  let killedCounters = 0;
  const records: ItemRecord[] = [];
  const rejectedByStatus: Record<string, number> = {};
  let requests = 0;

  log(`starting a mesh of ${opts.counters} counters and ${readers > 0 ? 'two coordinators' : 'a coordinator'}`);
  const mesh = await Mesh.start({ counters: opts.counters, coordinators: readers > 0 ? 2 : 1, env: opts.env });
  // where to watch the run from another shell (the secret is this throwaway mesh's own)
  log(`metrics: curl ${mesh.url('/metrics')}   counters: ${mesh.counters.map((c) => `http://${c.host}:${c.port}/metrics`).join(' ')} with -H 'authorization: Bearer ${mesh.secret}'`);
  const reads: ReadResult = { requests: 0, answered: 0, rejectedByStatus: {}, failed: 0, stale: 0, aboveSent: 0, strict, examples: [] };
  /** Per tenant: items sent so far (counted before the request leaves) and acknowledged so far. */
  const sentSoFar = new Array<number>(opts.tenants).fill(0);
  const ackedSoFar = new Array<number>(opts.tenants).fill(0);
  const killChildren = () => {
    for (const p of [...mesh.counters.map((c) => c.process), ...mesh.coordinators.map((c) => c.process)]) p.proc?.kill('SIGKILL');
  };
  // last resort if the process exits without reaching the finally below
  process.on('exit', killChildren);
  const kills = new Map<CounterNode, number>();
  try {
    const url = mesh.url(`/items?w=${encodeURIComponent(w)}`);
    const stop = new AbortController();
    // every writer, reader and fault track sleeps on it at once
    setMaxListeners(opts.clients + readers + 8, stop.signal);
    const onInterrupt = () => stop.abort();
    opts.signal?.addEventListener('abort', onInterrupt, { once: true });
    const t0 = Date.now();
    const at = () => Date.now() - t0;
    const sec = () => `+${(at() / 1000).toFixed(1)}s`;
    const endTimer = setTimeout(() => stop.abort(), durationMs);

    // ---- writers -------------------------------------------------------------------------------
    const post = async (body: unknown): Promise<{ outcome: Outcome; status?: number }> => {
      requests++;
      try {
        const res = await fetch(url, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(body),
          signal: AbortSignal.timeout(requestTimeoutMs),
        });
        await res.arrayBuffer();
        return res.ok ? { outcome: 'acked' } : { outcome: 'rejected', status: res.status };
      } catch (err) {
        return { outcome: (err as Error).name === 'TimeoutError' ? 'timeout' : 'failed' };
      }
    };
    // shared pacing: item k of the run is due at t0 + k / rate; at most 1 s of backlog is caught up
    let nextDue = t0;
    const perItemMs = opts.rate === 'max' ? 0 : 1000 / opts.rate;
    const writer = async (client: number) => {
      const rng = mulberry32(streamSeed(opts.seed, `client-${client}`));
      let n = 0;
      while (!stop.signal.aborted) {
        const size = rng() < 0.5 ? 1 : 2 + Math.floor(rng() * 9);
        if (perItemMs > 0) {
          const due = Math.max(nextDue, Date.now() - 1000);
          nextDue = due + size * perItemMs;
          if (!(await sleep(due - Date.now(), stop.signal))) break;
        }
        const batch: ItemRecord[] = [];
        for (let i = 0; i < size; i++) batch.push({ id: `${opts.seed}-${client}-${n++}`, tenant: Math.floor(rng() * opts.tenants), outcome: 'failed', ackedOnResend: false });
        const items = batch.map((r) => ({ id: r.id, tenant: tenants[r.tenant]! }));
        for (const it of batch) sentSoFar[it.tenant]!++;
        const { outcome, status } = await post(size === 1 && rng() < 0.5 ? items[0] : items);
        if (status !== undefined) rejectedByStatus[status] = (rejectedByStatus[status] ?? 0) + 1;
        if (outcome === 'acked') for (const it of batch) ackedSoFar[it.tenant]!++;
        for (const r of batch) {
          r.outcome = outcome;
          records.push(r);
        }
      }
    };

    // ---- readers: is any answer lower than what was acknowledged before it was asked? -----------
    const reader = async (n: number) => {
      const rng = mulberry32(streamSeed(opts.seed, `reader-${n}`));
      let k = 0;
      while (!stop.signal.aborted) {
        const t = Math.floor(rng() * opts.tenants);
        const coordinator = (n + k++) % 2;
        const before = ackedSoFar[t]!;
        reads.requests++;
        try {
          const res = await fetch(mesh.url(`/items/${tenants[t]}/count?r=${encodeURIComponent(r)}`, coordinator), { signal: AbortSignal.timeout(requestTimeoutMs) });
          const body = (await res.json()) as { count?: number };
          if (res.ok && typeof body.count === 'number') {
            reads.answered++;
            if (body.count < before) {
              reads.stale++;
              if (reads.examples.length < 5) reads.examples.push(`${sec()} ${tenants[t]} through coordinator ${coordinator}: ${body.count} < ${before} acknowledged before the read`);
            }
            if (body.count > sentSoFar[t]!) reads.aboveSent++;
          } else {
            reads.rejectedByStatus[res.status] = (reads.rejectedByStatus[res.status] ?? 0) + 1;
          }
        } catch {
          reads.failed++;
        }
        // a reader is a probe, not load: a few dozen reads a second
        if (!(await sleep(20, stop.signal))) break;
      }
    };

    // ---- faults ------------------------------------------------------------------------------
    /** Counter index of the plan → its node (added counters join as their add is done). */
    const byIndex = new Map(mesh.counters.map((c) => [c.index, c]));
    /** Counters removed or left: no longer restarted, asked or checked. */
    const gone = new Set<CounterNode>();
    const inMesh = () => mesh.counters.filter((c) => !gone.has(c));
    const restart = async (c: CounterNode) => {
      try {
        await mesh.restartCounter(c);
      } catch (err) {
        violations.push(`${c.id} did not become ready after a restart: ${(err as Error).message.split('\n')[0]}`);
      }
    };
    // a removal holds the network track off (between its episodes) while it waits for replication
    let networkEpisode: Promise<void> = Promise.resolve();
    let networkHold: Promise<void> | null = null;
    const skip = (f: ProcessFault, why: string) => {
      skipped.push(`+${(at() / 1000).toFixed(1)}s ${describeFault(f)}: skipped, ${why}`);
      log(`${sec()} ${describeFault(f)}: skipped, ${why}`);
    };
    /** Waits until the placement settled over the counters in the mesh; the problem left if it did not. */
    const settle = async (deadlineMs: number): Promise<string | null> => {
      const until = Date.now() + deadlineMs;
      let problem: string | null = 'not checked';
      // an episode begun before the writes end is carried out (as a kill's restart is)
      while (!interrupted()) {
        problem = placementSettled(await shardsView(mesh), inMesh().map((c) => c.id), shards);
        if (problem === null || Date.now() > until) break;
        await sleep(200, stop.signal);
      }
      return problem;
    };
    /** DELETE /counters/:id through the coordinator, retried while no counter can take it (503). */
    const removeThroughCoordinator = async (c: CounterNode): Promise<string | null> => {
      const until = Date.now() + 15_000;
      let last = '';
      let tried = false;
      while (Date.now() < until && !interrupted()) {
        try {
          const res = await mesh.call(mesh.url(`/counters/${encodeURIComponent(c.id)}`), { method: 'DELETE' });
          last = `${res.status} ${await res.text()}`;
          if (res.status === 202) return null;
          // an earlier try that timed out or was answered 503 may have been stored after all
          if (tried && res.status === 404 && last.includes('"ALREADY_REMOVED"')) return null;
          if (res.status !== 503) return last;
        } catch (err) {
          last = (err as Error).message;
        }
        tried = true;
        await sleep(300);
      }
      return last;
    };
    /** Null once every replica serving a tenant of `c`'s shards counts the same as `c` (each tenant in one round). */
    const replicatedFrom = async (c: CounterNode, deadlineMs: number): Promise<string | null> => {
      const mine = await mesh.counterStatus(c);
      if (!mine?.serving) return `${c.id} did not answer GET /status`;
      const others = await Promise.all(inMesh().filter((o) => o !== c).map(async (o) => ({ o, st: await mesh.counterStatus(o) })));
      const until = Date.now() + deadlineMs;
      for (const tenant of tenants) {
        const shard = shardOf(tenant, shards);
        if (!mine.serving.includes(shard)) continue;
        const peers = others.filter(({ st }) => st?.serving?.includes(shard)).map(({ o }) => o);
        if (peers.length === 0) return `no other counter serves shard ${shard} (${tenant})`;
        let last = '';
        for (;;) {
          const counts = await Promise.all([c, ...peers].map((x) => mesh.counterCount(x, tenant).catch(() => null)));
          if (counts.every((v) => v !== null && v === counts[0])) break;
          last = counts.map((v, i) => `${[c, ...peers][i]!.id} ${v ?? 'no answer'}`).join(', ');
          if (Date.now() > until || interrupted()) return `${tenant} (shard ${shard}) not on every replica: ${last}`;
          await sleep(50);
        }
      }
      return null;
    };
    const addCounter = async (f: ProcessFault, record: InjectedFault) => {
      const peer = inMesh().find((c) => c.process.running);
      if (!peer) return skip(f, 'no counter is running to name in PEERS');
      const node = await mesh.addCounterNode();
      if (node.index !== f.targets[0]) notes.push(`planned c${f.targets[0]} was added as ${node.id} (an earlier add did not happen)`);
      byIndex.set(f.targets[0]!, node);
      mesh.configureCounter(node, [peer]);
      node.process.start();
      injected.push(record);
      faultCounts.add++;
      try {
        await waitFor(() => mesh.counterReady(node), 30_000, `${node.id} ready`);
        log(`${sec()} ${node.id} added and ready`);
      } catch (err) {
        violations.push(`${node.id} (added) did not become ready: ${(err as Error).message.split('\n')[0]}`);
      }
    };
    const removeCounter = async (f: ProcessFault, victim: CounterNode, record: InjectedFault) => {
      let release = () => {};
      networkHold = new Promise((r) => {
        release = r;
      });
      try {
        await networkEpisode;
        // no new writes reach it; what it acknowledged must be on another disk before its own goes
        for (let i = 0; i < mesh.coordinators.length; i++) mesh.isolateFromCoordinator(victim, 'reset', i);
        const problem = await replicatedFrom(victim, 20_000);
        if (problem !== null) {
          victim.proxy.heal();
          return skip(f, `its items did not reach the other replicas: ${problem}`);
        }
        injected.push(record);
        kills.set(victim, (kills.get(victim) ?? 0) + 1);
        await victim.process.kill('SIGKILL');
        fs.rmSync(victim.dataDir, { recursive: true, force: true });
        victim.proxy.heal();
        gone.add(victim);
        faultCounts.remove++;
        const refused = await removeThroughCoordinator(victim);
        if (refused !== null) violations.push(`DELETE /counters/${victim.id} (killed, DATA_DIR deleted) was not accepted: ${refused}`);
        else log(`${sec()} ${victim.id} removed`);
      } finally {
        networkHold = null;
        release();
      }
    };
    const leaveCounter = async (victim: CounterNode, record: InjectedFault) => {
      const proc = victim.process.proc!;
      const exited = new Promise<ExitStatus>((r) => proc.once('exit', (code, signal) => r({ code, signal })));
      injected.push(record);
      faultCounts.leave++;
      // its exit is asked for: not an unexpected one
      kills.set(victim, (kills.get(victim) ?? 0) + 1);
      const refused = await removeThroughCoordinator(victim);
      if (refused !== null) {
        kills.set(victim, kills.get(victim)! - 1);
        violations.push(`DELETE /counters/${victim.id} (leave) was not accepted: ${refused}`);
        return;
      }
      const status = await withTimeout(exited, LEAVE_DEADLINE_MS, `${victim.id} leaving`).catch(() => null);
      if (status === null) {
        kills.set(victim, kills.get(victim)! - 1);
        violations.push(`${victim.id} was removed while running but did not exit within ${LEAVE_DEADLINE_MS / 1000} s (it should hand off its shards and exit 0)\n${victim.process.tail(10)}`);
        return;
      }
      gone.add(victim);
      if (status.code !== 0) violations.push(`${victim.id} left with exit code ${status.code}${status.signal ? ` (signal ${status.signal})` : ''}, expected 0\n${victim.process.tail(10)}`);
      else log(`${sec()} ${victim.id} left (exit 0)`);
    };
    const processTrack = async (faults: ProcessFault[]) => {
      for (const f of faults) {
        if (!(await sleep(t0 + f.atMs - Date.now(), stop.signal))) return;
        const record: InjectedFault = { kind: f.kind, description: describeFault(f), plannedAtMs: f.atMs, atMs: at(), endMs: null };
        if (f.kind === 'add') {
          log(`${sec()} ${record.description}`);
          await addCounter(f, record);
          record.endMs = at();
          continue;
        }
        if (f.kind === 'remove' || f.kind === 'leave') {
          const victim = byIndex.get(f.targets[0]!);
          if (!victim || gone.has(victim)) {
            skip(f, 'that counter is not in the mesh');
            continue;
          }
          const down = inMesh().filter((c) => !c.process.running);
          if (down.length > 0) {
            skip(f, `${down.map((c) => c.id).join(',')} is down`);
            continue;
          }
          if (inMesh().length < factor + 1) {
            skip(f, `only ${inMesh().length} counters are placed (REPLICATION_FACTOR ${factor})`);
            continue;
          }
          // every shard on its replicas, in sync, before one of them goes
          const unsettled = await settle(20_000);
          if (interrupted()) return;
          if (unsettled !== null) {
            skip(f, `the placement did not settle: ${unsettled}`);
            continue;
          }
          record.atMs = at();
          log(`${sec()} ${record.description}`);
          if (f.kind === 'remove') await removeCounter(f, victim, record);
          else await leaveCounter(victim, record);
          record.endMs = at();
          continue;
        }
        const victims = f.targets.map((i) => byIndex.get(i)).filter((c): c is CounterNode => c !== undefined && !gone.has(c) && c.process.running);
        if (victims.length === 0) continue;
        injected.push(record);
        log(`${sec()} ${record.description}`);
        for (const v of victims) kills.set(v, (kills.get(v) ?? 0) + 1);
        await Promise.all(victims.map((v) => v.process.kill('SIGKILL')));
        faultCounts[f.kind]++;
        killedCounters += victims.length;
        await sleep(f.downMs, stop.signal);
        if (interrupted()) return;
        await Promise.all(victims.map(restart));
        record.endMs = at();
        log(`${sec()} ${victims.map((v) => v.id).join(',')} ready again`);
      }
    };
    const networkTrack = async (faults: NetworkFault[]) => {
      for (const f of faults) {
        if (!(await sleep(t0 + f.atMs - Date.now(), stop.signal))) return;
        while (networkHold) await networkHold;
        if (stop.signal.aborted) return;
        let done = () => {};
        networkEpisode = new Promise((r) => {
          done = r;
        });
        try {
          // slots resolve to the counters in the mesh now
          const members = inMesh();
          const resolve = (list: number[]) => [...new Set(list.map((i) => members[i % members.length]!))];
          const sideA = resolve(f.sideA);
          // two slots can land on one counter when counters were taken out: it stays on side A
          const sideB = resolve(f.sideB).filter((c) => !sideA.includes(c));
          const isolated = resolve(f.isolated);
          const resolved: NetworkFault = { ...f, sideA: sideA.map((c) => c.index), sideB: sideB.map((c) => c.index), isolated: isolated.map((c) => c.index) };
          const record: InjectedFault = { kind: f.kind, description: describeFault(resolved), plannedAtMs: f.atMs, atMs: at(), endMs: null };
          injected.push(record);
          log(`${sec()} ${record.description}`);
          if (sideA.length > 0 && sideB.length > 0) mesh.partition(sideA, sideB, f.cut);
          for (const c of isolated) mesh.isolateFromCoordinator(c, f.cut);
          faultCounts[f.kind]++;
          await sleep(f.forMs, stop.signal);
          mesh.heal();
          record.endMs = at();
          log(`${sec()} healed`);
        } finally {
          done();
        }
      }
    };

    log(`writing for ${opts.durationS} s with ${opts.clients} clients at ${opts.rate === 'max' ? 'max rate' : `${opts.rate} items/s`}; ${plan.length} faults planned`);
    await Promise.all([
      ...Array.from({ length: opts.clients }, (_, i) => writer(i)),
      ...Array.from({ length: readers }, (_, i) => reader(i)),
      processTrack(plan.filter((f): f is ProcessFault => f.track === 'process')),
      networkTrack(plan.filter((f): f is NetworkFault => f.track === 'network')),
    ]);
    clearTimeout(endTimer);
    const writeMs = Math.max(1, at());
    const writeRequests = requests;
    opts.signal?.removeEventListener('abort', onInterrupt);

    // ---- heal ---------------------------------------------------------------------------------
    mesh.heal();
    const unexpectedExits: ChaosReport['unexpectedExits'] = [];
    // on Ctrl-C the terminal sends SIGINT to the children too: their exits are not crashes
    for (const c of interrupted() ? [] : mesh.counters) {
      const extra = c.process.exits - (kills.get(c) ?? 0);
      if (extra > 0) unexpectedExits.push({ process: c.id, exits: extra, tail: c.process.tail(20) });
    }
    for (const [i, c] of interrupted() ? [] : mesh.coordinators.entries()) {
      if (c.process.exits > 0) unexpectedExits.push({ process: `coordinator${i}`, exits: c.process.exits, tail: c.process.tail(20) });
    }
    for (const u of unexpectedExits) violations.push(`${u.process} exited ${u.exits} time(s) without being killed`);
    if (!interrupted()) await Promise.all(inMesh().filter((c) => !c.process.running).map(restart));
    const healAt = Date.now();
    log(interrupted() ? `${sec()} interrupted; closing the mesh` : `${sec()} healed everything, all counters running; writes stopped`);

    // ---- resend unknown outcomes -----------------------------------------------------------------
    let resent = 0;
    if (resend && !interrupted()) {
      let pending = records.filter((r) => r.outcome !== 'acked');
      resent = pending.length;
      while (pending.length > 0 && Date.now() - healAt < RESEND_DEADLINE_MS && !interrupted()) {
        const batch = pending.slice(0, RESEND_BATCH);
        const { outcome } = await post(batch.map((r) => ({ id: r.id, tenant: tenants[r.tenant]! })));
        if (outcome === 'acked') {
          for (const r of batch) r.ackedOnResend = true;
          pending = pending.slice(batch.length);
        } else {
          await sleep(200, opts.signal);
        }
      }
      if (pending.length > 0) notes.push(`${pending.length} items were still not acknowledged ${RESEND_DEADLINE_MS / 1000} s after the heal; their tenants are checked with bounds only`);
    }
    const resendMs = Date.now() - healAt;

    // ---- convergence -----------------------------------------------------------------------------
    // per shard: the placement settles (GET /shards) and every counter serving a tenant's shard
    // (GET /status) counts the same for it, and all that stays so for SETTLE_MS
    interface Snapshot {
      view: ShardsView | null;
      /** Per counter in the mesh: the shards it serves (null: no answer). */
      serving: Map<string, number[] | null>;
      /** Per tenant: the count on each counter serving its shard. */
      counts: { id: string; count: number | null }[][];
    }
    const snapshotNow = async (): Promise<Snapshot> => {
      const members = inMesh();
      const [view, statuses] = await Promise.all([shardsView(mesh), Promise.all(members.map((c) => withTimeout(mesh.counterStatus(c), 3000, `${c.id} status`).catch(() => null)))]);
      const serving = new Map(members.map((c, i) => [c.id, statuses[i]?.serving ?? null]));
      const counts = await Promise.all(
        tenants.map((t) => {
          const servers = members.filter((c) => serving.get(c.id)?.includes(shardOf(t, shards)));
          return Promise.all(servers.map(async (c) => ({ id: c.id, count: await withTimeout(mesh.counterCount(c, t), 3000, `${c.id} count`).catch(() => null) })));
        }),
      );
      return { view, serving, counts };
    };
    const tenantAgrees = (row: { count: number | null }[]) => row.length > 0 && row.every((x) => x.count !== null && x.count === row[0]!.count);
    const settledProblem = (snap: Snapshot) => placementSettled(snap.view, inMesh().map((c) => c.id), shards);
    const agreed = (snap: Snapshot) => settledProblem(snap) === null && snap.counts.every(tenantAgrees);
    const key = (snap: Snapshot) => JSON.stringify([snap.view, [...snap.serving], snap.counts]);
    let snap: Snapshot = { view: null, serving: new Map(), counts: tenants.map(() => []) };
    let convergenceMs: number | null = null;
    let candidate: { key: string; at: number } | null = null;
    while (!interrupted()) {
      snap = await snapshotNow();
      const now = Date.now();
      if (agreed(snap)) {
        if (candidate && key(snap) === candidate.key) {
          if (now - candidate.at >= SETTLE_MS) {
            convergenceMs = candidate.at - healAt;
            break;
          }
        } else {
          candidate = { key: key(snap), at: now };
        }
      } else {
        candidate = null;
      }
      if (now - healAt > convergenceDeadlineMs) break;
      await sleep(100, opts.signal);
    }
    if (convergenceMs !== null) log(`converged ${convergenceMs} ms after the heal`);
    else if (!interrupted()) log(`counters did not agree within ${convergenceDeadlineMs} ms of the heal`);

    // ---- checks ----------------------------------------------------------------------------------
    // interrupted: nothing was counted, so nothing can be judged
    const judged = !interrupted();
    const results: TenantResult[] = tenants.map((tenant, t) => {
      const mine = records.filter((r) => r.tenant === t);
      const acked = mine.filter((r) => r.outcome === 'acked' || r.ackedOnResend).length;
      const counted = snap.counts[t] ?? [];
      const known = counted.map((x) => x.count).filter((v): v is number => v !== null);
      const top = known.length > 0 ? Math.max(...known) : 0;
      return { tenant, shard: shardOf(tenant, shards), sent: mine.length, acked, unknown: mine.length - acked, counted, lost: judged ? Math.max(0, acked - top) : 0, phantom: judged ? Math.max(0, top - mine.length) : 0 };
    });
    const top = (r: TenantResult) => Math.max(0, ...r.counted.map((x) => x.count ?? 0));
    const shardResults: ShardResult[] = Array.from({ length: shards }, (_, s) => {
      const mine = results.filter((r) => r.shard === s);
      const placed = snap.view?.shards.find((x) => x.shard === s);
      return {
        shard: s,
        replicas: placed?.replicas ?? [],
        handingOff: placed?.handingOff ?? [],
        serving: [...snap.serving].filter(([, list]) => list?.includes(s)).map(([id]) => id),
        tenants: mine.map((r) => r.tenant),
        sent: mine.reduce((n, r) => n + r.sent, 0),
        acked: mine.reduce((n, r) => n + r.acked, 0),
        counted: mine.reduce((n, r) => n + top(r), 0),
        lost: mine.reduce((n, r) => n + r.lost, 0),
        phantom: mine.reduce((n, r) => n + r.phantom, 0),
        agree: mine.every((r) => tenantAgrees(r.counted)),
      };
    });
    const factorAtEnd = snap.view?.factor ?? null;
    const disagreeing = new Set<string>();
    for (const r of results) for (const x of r.counted) if (x.count === null || x.count !== top(r)) disagreeing.add(x.id);
    if (judged) {
      for (const r of results) {
        if (r.lost > 0) violations.push(`${r.tenant} (shard ${r.shard}): ${r.lost} acknowledged item(s) lost — acknowledged ${r.acked}, counted ${top(r)}, sent ${r.sent}`);
        if (r.phantom > 0) violations.push(`${r.tenant} (shard ${r.shard}): ${r.phantom} phantom item(s) — counted ${top(r)} but only ${r.sent} sent`);
        if (r.counted.length === 0) violations.push(`${r.tenant} (shard ${r.shard}): no counter serves its shard after ${convergenceDeadlineMs / 1000} s`);
        else if (!tenantAgrees(r.counted)) violations.push(`${r.tenant} (shard ${r.shard}): its replicas disagree after ${convergenceDeadlineMs / 1000} s: ${r.counted.map((x) => `${x.id} ${x.count ?? 'no answer'}`).join(', ')}`);
      }
      const unsettled = settledProblem(snap);
      if (unsettled !== null) violations.push(`placement not settled ${convergenceDeadlineMs / 1000} s after the heal (every shard needs REPLICATION_FACTOR in-sync replicas): ${unsettled}`);
    }
    if (!interrupted() && strict && reads.stale > 0) violations.push(`${reads.stale} stale read(s) with w=${w} and r=${r} (w + r > ${opts.counters} counters): ${reads.examples.join('; ')}`);
    if (!interrupted() && reads.aboveSent > 0) violations.push(`${reads.aboveSent} read(s) counted more items than were sent`);
    const internal = Object.entries(rejectedByStatus).filter(([s]) => Number(s) >= 500 && s !== '503');
    if (internal.length > 0) notes.push(`unexpected server errors from the coordinator: ${internal.map(([s, n]) => `${n}× ${s}`).join(', ')}`);

    const acked = results.reduce((s, r) => s + r.acked, 0);
    const count = (o: Outcome) => records.filter((r) => r.outcome === o).length;
    const partitions = faultCounts['partition-reset'] + faultCounts['partition-blackhole'] + faultCounts['split-brain'];
    const isolations = faultCounts['isolate-reset'] + faultCounts['isolate-blackhole'] + faultCounts['split-brain'];
    return {
      options: { counters: opts.counters, durationS: opts.durationS, seed: opts.seed, rate: opts.rate, clients: opts.clients, tenants: opts.tenants, resend, requestTimeoutMs, env: opts.env ?? {}, w, r, readers, membership },
      checks: checksText(resend, { w, r, readers, strict }),
      reads,
      schedule: plan.map((f) => ({ ...f, description: describeFault(f) })),
      injected,
      faults: { ...faultCounts, killedCounters, partitions, isolations, total: injected.length },
      writes: {
        requests: writeRequests,
        resendRequests: requests - writeRequests,
        sent: records.length,
        ackedFirstTry: count('acked'),
        rejected: count('rejected'),
        timedOut: count('timeout'),
        failed: count('failed'),
        rejectedByStatus,
        resent,
        ackedOnResend: records.filter((r) => r.ackedOnResend).length,
        acked,
        unknown: records.length - acked,
        itemsPerSecond: Math.round((records.length / writeMs) * 1000),
      },
      counted: results.reduce<number>((s, r) => s + top(r), 0),
      lost: results.reduce((s, r) => s + r.lost, 0),
      phantom: results.reduce((s, r) => s + r.phantom, 0),
      disagreeingCounters: judged ? disagreeing.size : 0,
      convergenceMs,
      resendMs,
      unexpectedExits,
      tenants: results,
      shards: shardResults,
      factor: factorAtEnd,
      finalCounters: inMesh().map((c) => c.id),
      skipped,
      violations,
      notes,
      interrupted: interrupted(),
      ok: violations.length === 0 && !interrupted(),
      elapsedMs: Date.now() - started,
    };
  } finally {
    process.off('exit', killChildren);
    await mesh.close();
  }
}
