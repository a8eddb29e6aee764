/**
 * Consistency levels on the coordinator: `w` and `r` of a request resolved against the tenant's
 * replica count, writes stored on one replica that answers once `w` replicas (itself and its
 * peers) have the items on disk, and reads that take `r` replicas' tallies, reconcile them when
 * they disagree, and repair the replicas behind.
 *
 * Why a write goes to one replica and not to `w`: each counter writes under its own Yjs writer,
 * so the same items added on two counters would be held twice in every document, decoded and
 * fsynced twice everywhere. The replica that takes the write (the tenant's home counter, or the
 * next one in placement order while it is unavailable) sends the update to its peers at once,
 * and each answers once it is on its disk (src/protocol/PROTOCOL.md, "Replicated writes").
 *
 * Why reads compare digests and not only counts: every replica holds a subset of the true set,
 * but two replicas can hold different subsets of the same size (item x acknowledged by A and B,
 * item y by B and C, then a read of A and C while B is away: counts 1 and 1, truth 2). So a read
 * takes each replica's count with a digest of the tenant's ids; when they all agree the count is
 * exact, and when they do not, the replica with the largest count first pulls what the others
 * hold (read repair, one sync round with each) and its new count is the answer. Every item
 * acknowledged before the read is on `w` replicas, one of which is among the `r` asked when
 * w + r > replicas, so the answer includes it.
 *
 * The `one` level never comes here: the pool's home-replica path serves it as it always did.
 *
 * With shards, a tenant's replicas are its shard's (CounterPool.replicas), and a batch of several
 * tenants is split by replicas (groupByReplicas) and each part written on its own.
 */
import type { Item } from '../protocol/messages.ts';
import { allowedLevels, levelSize, parseLevel, type Level } from '../shared/levels.ts';
import { CounterUnavailableError, TooFewAcksError, type Tally } from './counter-link.ts';
import { ClientError } from './errors.ts';

/** What quorum requests need of a replica (a CounterLink; tests pass fakes). */
export interface Replica {
  readonly id: string;
  /** Reachable and ready: worth sending a request to. */
  readonly usable: boolean;
  /**
   * Resolves once `acks` replicas (this one and its peers) have the items on disk. Rejects with
   * CounterUnavailableError when this one cannot take them (nothing stored: another may), with
   * TooFewAcksError when it stored them but fewer replicas confirmed in time.
   */
  add(items: readonly Item[], acks: number): Promise<unknown>;
  /** The tenant's count and digest on the replica, after it pulled from the replicas `pullFrom`. */
  tally(tenant: string, pullFrom?: readonly string[]): Promise<Tally>;
}

/** Fewer replicas than the level requires acknowledged or answered; what was stored stays stored. */
export class NotEnoughReplicasError extends Error {
  override name = 'NotEnoughReplicasError';
  constructor(readonly answered: number, readonly required: number, message: string) {
    super(message);
  }
}

/**
 * The number of replicas a request's `w` or `r` asks for. `raw` is the query parameter (absent:
 * the configured default). A request naming a number above the replica count is a 400; a
 * configured default above it is not the client's fault and comes back as it is (the request
 * then fails with NOT_ENOUGH_REPLICAS until the mesh has that many members).
 */
export function requestedReplicas(raw: unknown, name: 'w' | 'r', fallback: Level, replicas: number): number {
  if (raw === undefined) return levelSize(fallback, replicas);
  const level = typeof raw === 'string' ? parseLevel(raw) : null;
  if (level === null || (typeof level === 'number' && level > replicas)) {
    const shown = typeof raw === 'string' ? JSON.stringify(raw.slice(0, 40)) : 'given more than once';
    throw new ClientError(400, 'INVALID_REQUEST', `query parameter ${name} ${shown} is not valid: use ${allowedLevels(replicas)} (the tenant has ${replicas} replicas)`);
  }
  return levelSize(level, replicas);
}

/** Items that share their replicas (same counters, same order, same usable ones), with those replicas. */
export interface ReplicaGroup {
  replicas: readonly Replica[];
  items: Item[];
}

/**
 * Splits a batch by the replicas of its items' tenants (`replicasOf`, asked once per tenant), so
 * each part can be written to its own replicas. Tenants whose shards have the same replicas in the
 * same state travel together: with no more counters than the replication factor, one part.
 */
export function groupByReplicas(items: readonly Item[], replicasOf: (tenant: string) => readonly Replica[]): ReplicaGroup[] {
  const byTenant = new Map<string, ReplicaGroup>();
  const byKey = new Map<string, ReplicaGroup>();
  for (const it of items) {
    let group = byTenant.get(it.tenant);
    if (!group) {
      const replicas = replicasOf(it.tenant);
      const key = replicas.map((r) => `${r.usable ? '+' : '-'}${r.id}`).join('\u0000');
      group = byKey.get(key);
      if (!group) {
        group = { replicas, items: [] };
        byKey.set(key, group);
      }
      byTenant.set(it.tenant, group);
    }
    group.items.push(it);
  }
  return [...byKey.values()];
}

function usableCount(replicas: readonly Replica[]): number {
  let n = 0;
  for (const r of replicas) if (r.usable) n++;
  return n;
}

function tooFewUsable(what: string, required: number, replicas: readonly Replica[]): NotEnoughReplicasError {
  const usable = usableCount(replicas);
  return new NotEnoughReplicasError(
    0,
    required,
    `${what} by 0 of the ${required} replicas required: only ${usable} of the ${replicas.length} counters holding the tenant are reachable and ready`,
  );
}

/**
 * Runs `request` on `needed` replicas at once, in placement order, and on the next usable replica
 * whenever one fails as unavailable. Resolves with the first `needed` results in the order they
 * came; rejects with NotEnoughReplicasError once too few remain (after the requests in flight
 * have settled, so the count of answers is exact), or at once with any other error.
 */
function fanOut<T>(
  replicas: readonly Replica[],
  needed: number,
  request: (replica: Replica) => Promise<T>,
  what: string,
): Promise<{ replica: Replica; value: T }[]> {
  return new Promise((resolve, reject) => {
    const done: { replica: Replica; value: T }[] = [];
    let next = 0;
    let inFlight = 0;
    let settled = false;
    let lastFailure = '';
    const launch = (): void => {
      while (done.length + inFlight < needed && next < replicas.length) {
        const replica = replicas[next++]!;
        if (!replica.usable) continue;
        inFlight++;
        request(replica).then(
          (value) => {
            inFlight--;
            if (settled) return;
            done.push({ replica, value });
            if (done.length >= needed) {
              settled = true;
              resolve(done);
            } else {
              launch(); // nothing may be left to launch: then this was the last hope
            }
          },
          (err: unknown) => {
            inFlight--;
            if (settled) return;
            if (!(err instanceof CounterUnavailableError)) {
              settled = true;
              reject(err);
              return;
            }
            lastFailure = err.message;
            launch();
          },
        );
      }
      if (!settled && inFlight === 0 && done.length < needed) {
        settled = true;
        const why = lastFailure ? `the others failed or timed out (last: ${lastFailure})` : 'no other replica is reachable and ready';
        reject(new NotEnoughReplicasError(done.length, needed, `${what} by ${done.length} of the ${needed} replicas required; ${why}`));
      }
    };
    launch();
  });
}

/**
 * Stores `items` on `w` replicas (`replicas` in placement order); resolves once `w` of them have
 * them on disk. Sent to the first usable replica, which replicates them to its peers and answers
 * once w − 1 of them confirmed; to the next one while a replica is unavailable.
 */
export async function writeQuorum(replicas: readonly Replica[], items: readonly Item[], w: number): Promise<void> {
  if (usableCount(replicas) < w) throw tooFewUsable('acknowledged', w, replicas);
  let lastFailure = '';
  for (const replica of replicas) {
    if (!replica.usable) continue;
    try {
      await replica.add(items, w);
      return;
    } catch (err) {
      if (err instanceof TooFewAcksError) {
        throw new NotEnoughReplicasError(err.acknowledged, w, `acknowledged by ${err.acknowledged} of the ${w} replicas required (${err.message})`);
      }
      if (!(err instanceof CounterUnavailableError)) throw err;
      lastFailure = err.message;
    }
  }
  const why = lastFailure ? `no replica could take the write (last: ${lastFailure})` : 'no replica is reachable and ready';
  throw new NotEnoughReplicasError(0, w, `acknowledged by 0 of the ${w} replicas required; ${why}`);
}

function agree(a: Tally, b: Tally): boolean {
  return a.count === b.count && a.digest === b.digest;
}

/**
 * The tenant's count from `r` replicas: exact for every item acknowledged by a write quorum `w`
 * with w + r > replicas before the read began. Replicas found behind are repaired from the one
 * ahead without the reader waiting for them.
 */
export async function readQuorum(replicas: readonly Replica[], tenant: string, r: number): Promise<number> {
  if (usableCount(replicas) < r) throw tooFewUsable('answered', r, replicas);
  const answers = await fanOut(replicas, r, (rep) => rep.tally(tenant), 'answered');
  let ahead = answers[0]!;
  for (const a of answers) if (a.value.count > ahead.value.count) ahead = a;
  const behind = answers.filter((a) => !agree(a.value, ahead.value));
  if (behind.length === 0) return ahead.value.count;
  let repaired: Tally;
  try {
    repaired = await ahead.replica.tally(tenant, behind.map((a) => a.replica.id));
  } catch (err) {
    if (!(err instanceof CounterUnavailableError)) throw err;
    // the replicas asked cannot reach each other (a partition between counters): r others that
    // hold the same set are as good a quorum
    const agreeing = await agreeingQuorum(replicas, answers, tenant, r);
    if (agreeing !== null) return agreeing;
    throw new NotEnoughReplicasError(
      answers.length - behind.length,
      r,
      `the ${r} replicas asked hold different items and could not be reconciled now (${err.message})`,
    );
  }
  // read repair: the others catch up from the one that now holds everything they were asked for
  for (const a of behind) a.replica.tally(tenant, [ahead.replica.id]).catch(() => {});
  return Math.max(repaired.count, ahead.value.count);
}

/**
 * Asks the usable replicas not asked yet, one at a time, until `r` answers hold the same set
 * (same count and digest): every item acknowledged on w replicas (w + r > replicas) is on one of
 * them, so it is in that set. Null when no `r` answers agree.
 */
async function agreeingQuorum(replicas: readonly Replica[], answers: { replica: Replica; value: Tally }[], tenant: string, r: number): Promise<number | null> {
  const all = [...answers];
  const asked = new Set(answers.map((a) => a.replica));
  for (const replica of replicas) {
    if (asked.has(replica) || !replica.usable) continue;
    asked.add(replica);
    try {
      all.push({ replica, value: await replica.tally(tenant) });
    } catch (err) {
      if (!(err instanceof CounterUnavailableError)) throw err;
      continue;
    }
    for (const a of all) {
      if (all.filter((b) => agree(a.value, b.value)).length >= r) return a.value.count;
    }
  }
  return null;
}
