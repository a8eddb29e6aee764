/**
 * `counter-mesh remove ID` and `counter-mesh leave ID`: take a counter out of the mesh for good
 * through a coordinator (DELETE /counters/ID). `leave` then waits, reading GET /shards and GET
 * /counters, until the counter has handed off its shards and is gone.
 */
import { parseArgs } from 'node:util';
import type { Env } from '../shared/config.ts';
import { CoordinatorClient, describeAnswer, UnreachableError, UsageError, type Answer } from './coordinator-client.ts';

const DEFAULT_LEAVE_TIMEOUT_S = 600;
const MAX_LEAVE_TIMEOUT_S = 7 * 24 * 3600;
/** How often `leave` asks the coordinator how far the handoff is. */
const POLL_MS = 500;

interface Parsed {
  id: string;
  client: CoordinatorClient;
  timeoutS: number;
}

function parse(command: 'remove' | 'leave', args: string[], env: Env): Parsed {
  let values: { coordinator?: string; timeout?: string };
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args,
      allowPositionals: true,
      strict: true,
      options: command === 'leave' ? { coordinator: { type: 'string' }, timeout: { type: 'string' } } : { coordinator: { type: 'string' } },
    }));
  } catch (err) {
    // node's own text tells how to pass a positional starting with '-': the first sentence is the point
    const first = (err as Error).message.split('. ')[0];
    throw new UsageError(`${command}: ${first}; run counter-mesh ${command} --help`);
  }
  if (positionals.length !== 1 || positionals[0] === '') {
    throw new UsageError(`${command} needs exactly one counter id (the counter's COUNTER_ID, as GET /counters lists it), got ${positionals.length}; run counter-mesh ${command} --help`);
  }
  let timeoutS = DEFAULT_LEAVE_TIMEOUT_S;
  if (values.timeout !== undefined) {
    timeoutS = Number(values.timeout);
    if (!/^\d+(\.\d+)?$/.test(values.timeout) || timeoutS <= 0 || timeoutS > MAX_LEAVE_TIMEOUT_S) {
      throw new UsageError(`--timeout ${JSON.stringify(values.timeout)} is not valid: give seconds, more than 0 and at most ${MAX_LEAVE_TIMEOUT_S}`);
    }
  }
  let base: URL;
  const raw = values.coordinator ?? defaultCoordinator(env);
  try {
    base = new URL(raw);
  } catch {
    throw new UsageError(`--coordinator ${JSON.stringify(raw)} is not a URL: use e.g. http://127.0.0.1:8080`);
  }
  const client = new CoordinatorClient(base, { apiKey: env.API_KEY ?? '', caFile: env.TLS_CA ?? '' });
  return { id: positionals[0]!, client, timeoutS };
}

/** The coordinator of `counter-mesh up` on this machine: HTTP_PORT, https when TLS_CERT is set. */
function defaultCoordinator(env: Env): string {
  return `${env.TLS_CERT ? 'https' : 'http'}://127.0.0.1:${env.HTTP_PORT || '8080'}`;
}

function removal(p: Parsed): Promise<Answer> {
  return p.client.request('DELETE', `/counters/${encodeURIComponent(p.id)}`);
}

function codeOf(a: Answer): string | undefined {
  const code = (a.body as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** `counter-mesh remove ID`: prints the coordinator's answer; 0 once the removal is accepted (202). */
export async function runRemove(args: string[], env: Env): Promise<number> {
  const p = parse('remove', args, env);
  try {
    const a = await removal(p);
    if (a.status === 202) {
      process.stdout.write(`${JSON.stringify(a.body)}\n`);
      process.stdout.write(`${p.id} is removed from the mesh; its shards move to the other counters (counter-mesh leave ${p.id} waits for that)\n`);
      return 0;
    }
    process.stderr.write(`counter-mesh: ${p.id} was not removed: ${describeAnswer(a)}\n`);
    return 1;
  } catch (err) {
    if (!(err instanceof UnreachableError)) throw err;
    process.stderr.write(`counter-mesh: ${err.message}\n`);
    return 1;
  }
}

/** Where a leaving counter is: the shards it still holds, and whether GET /counters still lists it. */
interface Progress {
  holding: number[];
  listed: boolean;
}

class RefusedError extends Error {
  override name = 'RefusedError';
}

async function progress(p: Parsed): Promise<Progress> {
  const shards = await p.client.request('GET', '/shards');
  if (shards.status !== 200) throw new RefusedError(`GET /shards answered ${describeAnswer(shards)}`);
  const counters = await p.client.request('GET', '/counters');
  if (counters.status !== 200) throw new RefusedError(`GET /counters answered ${describeAnswer(counters)}`);
  const body = shards.body as { shards?: { shard: number; replicas: { id: string }[]; handingOff: string[] }[] };
  const holding = (body.shards ?? []).filter((s) => s.replicas.some((r) => r.id === p.id) || s.handingOff.includes(p.id)).map((s) => s.shard);
  const listed = Array.isArray(counters.body) && counters.body.some((c: { id?: unknown }) => c.id === p.id);
  return { holding, listed };
}

function describe(id: string, at: Progress): string {
  if (at.holding.length > 0) return `${id} still holds ${at.holding.length} shard${at.holding.length === 1 ? '' : 's'} (${at.holding.join(', ')})`;
  return `${id} holds no shard but is still listed by GET /counters (it has not exited yet)`;
}

/**
 * `counter-mesh leave ID`: removes the counter (or finds it removed already; a 503 is asked again
 * until the timeout), then waits until it holds no shard and the coordinator no longer lists it.
 * 0 once it has left; 1 at the timeout, or when the coordinator refuses.
 */
export async function runLeave(args: string[], env: Env): Promise<number> {
  const p = parse('leave', args, env);
  const deadline = Date.now() + p.timeoutS * 1000;
  try {
    let a = await removal(p);
    // 503: no counter could take the removal just now (none ready, or none answered in time);
    // asking again is safe (a removal stored already answers 404 ALREADY_REMOVED), so wait for one
    let told = false;
    while (a.status === 503 && Date.now() + POLL_MS < deadline) {
      if (!told) process.stdout.write(`${p.id} is not removed yet: ${describeAnswer(a)}; asking again until the timeout\n`);
      told = true;
      await new Promise((r) => setTimeout(r, POLL_MS));
      a = await removal(p);
    }
    if (a.status === 202) process.stdout.write(`${p.id} is removed from the mesh; waiting for it to hand off its shards (at most ${p.timeoutS} s)\n`);
    else if (a.status === 404 && codeOf(a) === 'ALREADY_REMOVED') process.stdout.write(`${p.id} was removed already; waiting for it to hand off its shards (at most ${p.timeoutS} s)\n`);
    else {
      process.stderr.write(`counter-mesh: ${p.id} was not removed: ${describeAnswer(a)}\n`);
      return 1;
    }
  } catch (err) {
    if (!(err instanceof UnreachableError)) throw err;
    process.stderr.write(`counter-mesh: ${err.message}\n`);
    return 1;
  }
  let shown = '';
  let last = 'no answer yet';
  for (;;) {
    try {
      const at = await progress(p);
      if (at.holding.length === 0 && !at.listed) {
        process.stdout.write(`${p.id} has left the mesh\n`);
        return 0;
      }
      last = describe(p.id, at);
      if (last !== shown) process.stdout.write(`${last}\n`);
      shown = last;
    } catch (err) {
      if (err instanceof RefusedError) {
        process.stderr.write(`counter-mesh: ${err.message}\n`);
        return 1;
      }
      // a coordinator restarting is no reason to give up: the removal stands, keep asking
      if (!(err instanceof UnreachableError)) throw err;
      last = err.message;
    }
    const left = deadline - Date.now();
    if (left <= 0) {
      process.stderr.write(
        `counter-mesh: ${p.id} has not left after ${p.timeoutS} s: ${last}. It stays removed and goes on handing off its shards; ` +
          `run counter-mesh leave ${p.id} again to keep waiting, and read the counter's log if it does not move\n`,
      );
      return 1;
    }
    await new Promise((r) => setTimeout(r, Math.min(POLL_MS, left)));
  }
}
