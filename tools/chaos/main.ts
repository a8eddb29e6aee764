/**
 * `npm run chaos`: a private mesh, writes through the coordinator while counters are SIGKILLed,
 * added, removed and leaving and links cut on a seeded schedule, then heal, converge and check per
 * shard that no acknowledged item was lost, nothing was invented, every replica serving a shard
 * agrees and every shard has REPLICATION_FACTOR in-sync replicas. Exit 0 only if so.
 */
import { chaos, type ChaosOptions, type ChaosReport } from './run.ts';
import { parseLevel } from '../../src/shared/levels.ts';
import { runIfScript } from '../script.ts';

export const CHAOS_HELP = `Usage: npm run chaos -- [options]

Starts its own mesh (fresh temporary data folders, its own loopback addresses and ports, a TCP
fault proxy in front of every counter), writes unique items through the coordinator while it
SIGKILLs and restarts counters, cuts links (reset and blackhole), adds counters, removes them
(SIGKILL, DATA_DIR deleted, DELETE /counters/:id) and lets them leave (DELETE /counters/:id while
running) on a schedule drawn from --seed, then heals everything and waits until the placement
settles and every shard's replicas agree. Prints a per-shard report; exits 1 on any lost or
phantom item, any disagreement, any shard short of REPLICATION_FACTOR in-sync replicas or any
unexpected process exit.

Options:
  --counters N     counters in the mesh (default 3)
  --duration S     seconds of writes and faults (default 60)
  --seed N         seed of the fault schedule and the workload (default 1)
  --rate N|max     items per second over all clients (default 200); max = as fast as they go
  --clients N      concurrent writers (default 8)
  --tenants N      tenants the items are spread over (default 5)
  --w LEVEL        w of every write: one, quorum, all or a number (default one)
  --r LEVEL        r of every read of the stale-read check (default one). With w + r > counters a
                   read lower than the items acknowledged before it began fails the run; otherwise
                   such stale reads are only reported
  --readers N      readers of the stale-read check, through two coordinators (default 2; 0: none)
  --env KEY=VALUE  extra setting for every process of the mesh (repeatable), e.g. --env COMPACT_BYTES=65536
  --no-resend      do not resend items with an unknown outcome after the heal (checks become bounds)
  --no-membership  no membership faults (counters added, removed, leaving): kills and cuts only
  --json           print the report as JSON instead of a table
  --help           this text
`;

class UsageError extends Error {}

interface Parsed {
  options: Omit<ChaosOptions, 'signal' | 'log'>;
  json: boolean;
  help: boolean;
}

export function parseChaosArgs(argv: readonly string[]): Parsed {
  const options: Parsed['options'] = { counters: 3, durationS: 60, seed: 1, rate: 200, clients: 8, tenants: 5, resend: true, w: 'one', r: 'one', readers: 2, membership: true };
  let json = false;
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const eq = arg.indexOf('=');
    const name = eq > 0 ? arg.slice(0, eq) : arg;
    const value = (): string => {
      const v = eq > 0 ? arg.slice(eq + 1) : argv[++i];
      if (v === undefined || v === '') throw new UsageError(`${name} needs a value`);
      return v;
    };
    const whole = (min: number, max: number): number => {
      const raw = value();
      const n = Number(raw);
      if (!/^\d+$/.test(raw) || n < min || n > max) throw new UsageError(`${name} ${raw}: expected a whole number from ${min} to ${max}`);
      return n;
    };
    switch (name) {
      case '--counters':
        options.counters = whole(1, 40);
        break;
      case '--duration': {
        const raw = value();
        const n = Number(raw);
        if (!Number.isFinite(n) || n <= 0 || n > 86_400) throw new UsageError(`--duration ${raw}: expected seconds, more than 0`);
        options.durationS = n;
        break;
      }
      case '--seed':
        options.seed = whole(0, 2 ** 32 - 1);
        break;
      case '--rate': {
        const raw = value();
        if (raw === 'max') options.rate = 'max';
        else {
          const n = Number(raw);
          if (!Number.isFinite(n) || n <= 0) throw new UsageError(`--rate ${raw}: expected items per second (more than 0) or "max"`);
          options.rate = n;
        }
        break;
      }
      case '--clients':
        options.clients = whole(1, 1000);
        break;
      case '--tenants':
        options.tenants = whole(1, 10_000);
        break;
      case '--env': {
        const raw = value();
        const at = raw.indexOf('=');
        if (at < 1) throw new UsageError(`--env ${raw}: expected KEY=VALUE`);
        options.env = { ...options.env, [raw.slice(0, at)]: raw.slice(at + 1) };
        break;
      }
      case '--w':
      case '--r': {
        const raw = value();
        if (parseLevel(raw) === null) throw new UsageError(`${name} ${raw}: expected one, quorum, all or a whole number`);
        if (name === '--w') options.w = raw;
        else options.r = raw;
        break;
      }
      case '--readers':
        options.readers = whole(0, 100);
        break;
      case '--no-resend':
        options.resend = false;
        break;
      case '--no-membership':
        options.membership = false;
        break;
      case '--json':
        json = true;
        break;
      case '--help':
      case '-h':
        help = true;
        break;
      default:
        throw new UsageError(`unknown option ${arg}; see npm run chaos -- --help`);
    }
  }
  return { options, json, help };
}

function pad(s: string | number, n: number, right = false): string {
  const v = String(s);
  return right ? v.padStart(n) : v.padEnd(n);
}

export function formatReport(r: ChaosReport): string {
  const o = r.options;
  const lines: string[] = [];
  const w = r.writes;
  const factor = r.factor ?? 0;
  const short = r.shards.filter((x) => x.replicas.filter((y) => y.inSync).length < Math.min(factor, r.finalCounters.length) || x.handingOff.length > 0 || factor === 0);
  const env = Object.entries(o.env).map(([k, v]) => `${k}=${v}`).join(' ');
  lines.push(`chaos — seed ${o.seed}, ${o.counters} counters${o.membership ? '' : ' (no membership faults)'}, ${o.durationS} s, ${o.rate === 'max' ? 'max rate' : `${o.rate} items/s`}, ${o.clients} clients, ${o.tenants} tenants, w=${o.w} r=${o.r}, ${o.readers} readers${env ? `, env ${env}` : ''}`);
  lines.push('');
  lines.push('What is checked:');
  for (const c of r.checks) lines.push(`  - ${c}`);
  lines.push('');
  lines.push(`Fault schedule (seed ${o.seed}; planned start after the writes begin${o.membership ? '; network faults name slots: at injection slot i is the i-th counter still in the mesh, the log line names it' : ''}):`);
  for (const f of r.schedule) lines.push(`  ${pad(`+${(f.atMs / 1000).toFixed(1)}s`, 8, true)}  ${pad(f.track, 8)} ${f.description}`);
  const cut = r.schedule.length - r.injected.length;
  if (cut > 0) lines.push(`  (${cut} planned fault(s) not injected: the run ended first, or skipped)`);
  for (const k of r.skipped) lines.push(`  ${k}`);
  lines.push('');
  const rows: [string, string | number][] = [
    ['write requests', w.requests],
    ['items sent', w.sent],
    ['  acknowledged (2xx, first try)', w.ackedFirstTry],
    ['  rejected (non-2xx)', `${w.rejected}${Object.keys(w.rejectedByStatus).length ? `  (requests by status: ${Object.entries(w.rejectedByStatus).map(([s, n]) => `${s}: ${n}`).join(', ')})` : ''}`],
    [`  timed out (${o.requestTimeoutMs / 1000} s)`, w.timedOut],
    ['  transport errors', w.failed],
    ['resent after the heal', o.resend ? `${w.resent} items in ${w.resendRequests} requests (acknowledged ${w.ackedOnResend})` : 'off (--no-resend)'],
    ['acknowledged in the end', w.acked],
    ['outcome unknown in the end', w.unknown],
    ['achieved rate', `${w.itemsPerSecond} items/s`],
    ['items counted (sum over tenants)', r.counted],
    ['LOST acknowledged items', r.lost],
    ['PHANTOM items (counted, never sent)', r.phantom],
    ['counters disagreeing after convergence', r.disagreeingCounters],
    ['shards short of in-sync replicas', `${short.length} of ${r.shards.length} (REPLICATION_FACTOR ${r.factor ?? 'not reported'})`],
    ['heal → convergence', r.convergenceMs === null ? 'never (deadline passed)' : `${r.convergenceMs} ms (resend took ${r.resendMs} ms)`],
    ['reads during the writes', o.readers === 0 ? 'none (--readers 0)' : `${r.reads.requests}: answered ${r.reads.answered}, rejected ${Object.entries(r.reads.rejectedByStatus).map(([s, n]) => `${s}: ${n}`).join(', ') || 0}, transport errors ${r.reads.failed}`],
    [`STALE reads (below acknowledged${r.reads.strict ? '' : '; reported only'})`, r.reads.stale],
    ['reads above the items sent', r.reads.aboveSent],
    ['unexpected process exits', r.unexpectedExits.reduce((s, u) => s + u.exits, 0)],
    [
      'faults injected',
      `${r.faults.total}: ${Object.entries(r.faults)
        .filter(([k, v]) => !['total', 'killedCounters', 'partitions', 'isolations'].includes(k) && v > 0)
        .map(([k, v]) => `${k} ${v}`)
        .join(', ')}; counters killed ${r.faults.killedCounters}, partitions ${r.faults.partitions}, coordinator cuts ${r.faults.isolations}`,
    ],
    ['membership faults', o.membership ? `counters added ${r.faults.add}, removed ${r.faults.remove}, left ${r.faults.leave}; in the mesh at the end: ${r.finalCounters.join(', ')}` : 'off (--no-membership)'],
  ];
  const width = Math.max(...rows.map(([k]) => k.length)) + 2;
  for (const [k, v] of rows) lines.push(`  ${pad(k, width)}${v}`);
  lines.push('');
  lines.push('Per shard holding tenants (replicas from GET /shards, * = in sync; counts from each serving counter):');
  lines.push(`  ${pad('shard', 6)}${pad('tenant', 12)}${pad('sent', 8, true)}${pad('acked', 8, true)}${pad('unknown', 9, true)}${pad('lost', 6, true)}${pad('phantom', 9, true)}  counted per serving replica`);
  for (const s of r.shards.filter((x) => x.tenants.length > 0)) {
    lines.push(`  ${pad(s.shard, 6)}replicas ${s.replicas.map((x) => `${x.id}${x.inSync ? '*' : ''}`).join(' ') || '-'}${s.handingOff.length ? `; handing off ${s.handingOff.join(' ')}` : ''}; serving ${s.serving.join(' ') || '-'}${s.agree ? '' : '  DISAGREE'}`);
    for (const t of r.tenants.filter((x) => x.shard === s.shard)) {
      lines.push(`  ${pad('', 6)}${pad(t.tenant, 12)}${pad(t.sent, 8, true)}${pad(t.acked, 8, true)}${pad(t.unknown, 9, true)}${pad(t.lost, 6, true)}${pad(t.phantom, 9, true)}  ${t.counted.map((x) => `${x.id}=${x.count ?? '-'}`).join(' ') || 'no serving counter'}`);
    }
  }
  const rest = r.shards.filter((x) => x.tenants.length === 0);
  const restShort = rest.filter((x) => short.includes(x));
  lines.push(`  ${rest.length} other shard(s) hold no tenant of the run; ${restShort.length === 0 ? `each has ${r.factor ?? '?'} in-sync replicas` : `short of in-sync replicas: ${restShort.map((x) => `${x.shard} (${x.replicas.map((y) => `${y.id}${y.inSync ? '*' : ''}`).join(' ')})`).join(', ')}`}`);
  for (const e of r.reads.examples) lines.push(`stale read: ${e}`);
  for (const n of r.notes) lines.push(`note: ${n}`);
  for (const u of r.unexpectedExits) lines.push(`\n${u.process} output before its unexpected exit:\n${u.tail}`);
  lines.push('');
  if (r.interrupted) lines.push('INTERRUPTED: no verdict');
  else if (r.ok) lines.push(`PASS: no acknowledged item lost, no phantom, every shard's replicas agree and are in sync${r.reads.strict && o.readers > 0 ? ', no stale read' : ''}`);
  else {
    lines.push('FAIL:');
    for (const v of r.violations) lines.push(`  - ${v}`);
  }
  return `${lines.join('\n')}\n`;
}

export async function runChaos(argv: string[]): Promise<number> {
  let parsed: Parsed;
  try {
    parsed = parseChaosArgs(argv);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`chaos: ${err.message}\n`);
    return 2;
  }
  if (parsed.help) {
    process.stdout.write(CHAOS_HELP);
    return 0;
  }
  const interrupt = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => {
    if (interrupt.signal.aborted) return;
    process.stderr.write(`\n${signal}: stopping the run and closing the mesh...\n`);
    interrupt.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const report = await chaos({ ...parsed.options, signal: interrupt.signal, log: (line) => process.stderr.write(`chaos: ${line}\n`) });
    process.stdout.write(parsed.json ? `${JSON.stringify(report, null, 2)}\n` : formatReport(report));
    if (report.interrupted) return 130;
    return report.ok ? 0 : 1;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

runIfScript(import.meta.url, runChaos);
