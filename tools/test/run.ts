/**
 * The test step of `npm test`: every test/*.test.ts in GROUPS uvu processes side by side.
 *
 * Most of the suite's time is real processes starting and tests waiting on heartbeats, restarts
 * and convergence, which leaves a core idle much of the time when one uvu runs every file in turn.
 * The files (but for ALONE, run by themselves afterwards) are split in GROUPS groups of about the same length (longest first, each to the group
 * with less so far); each group is one uvu run, so the output keeps one `Total:`/`Passed:` pair
 * per run, which .ci/run adds up. The first group's output is shown as it comes, the next one's
 * once the first is done, and so on, so they never interleave. Exits non-zero when any run fails.
 * At the end, one line per group gives its files' seconds (from uvu's file headers), to keep
 * SECONDS current.
 *
 * Before the runs, the CLI is bundled once into plain JavaScript (tools/build.ts) and handed to the test
 * meshes through COUNTER_MESH_TEST_BUILD, so their processes start without the tsx loader.
 *
 * `npm test -- PATTERN` runs only the files whose name matches the regular expression PATTERN.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { bundleForRun } from '../build.ts';
import { runIfScript } from '../script.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const TEST_DIR = path.join(ROOT, 'test');
/** uvu's command line (its package exports no package.json to find the folder by; `uvu/run` is run/index.js in it). */
const UVU_BIN = path.join(path.dirname(createRequire(import.meta.url).resolve('uvu/run')), '..', 'bin.js');

/**
 * Seconds each long file took in its group of a full run (the end-of-run report), used only to
 * balance the groups; a file not listed counts as SHORT_FILE_S. Refresh when a file's length changes a lot.
 */
const SECONDS: Record<string, number> = {
  bench: 60,
  chaos: 61.5,
  'http-fuzz': 33.5,
  shutdown: 26.3,
  'remove-cli': 20.9,
  tls: 20.1,
  'status-page': 18.6,
  'membership-mesh': 17.5,
  'ws-fuzz': 17,
  rotation: 15.5,
  durability: 15,
  cli: 13.4,
  metrics: 11.4,
  mesh: 10.1,
  'quorum-mesh': 10,
  membership: 10,
  partition: 9.8,
  quorum: 5.9,
  'id-index': 3.5,
  'memory-mesh': 3.3,
};
const SHORT_FILE_S = 1.5;
/**
 * Files whose assertions need the machine to themselves (reads answered under faults within a
 * deadline): run after the groups, alone, as one more uvu run. Side by side with two other groups
 * on two cores, the quorum chaos run answered too few reads.
 */
const ALONE = new Set(['chaos.test.ts']);
/** uvu processes side by side. */
const GROUPS = Number(process.env.TEST_GROUPS ?? 3);

/** Splits the files in `groups` groups of about equal total seconds. */
export function balance(files: string[], groups: number): string[][] {
  const weight = (f: string) => SECONDS[f.replace(/\.test\.ts$/, '')] ?? SHORT_FILE_S;
  const out = Array.from({ length: groups }, () => ({ files: [] as string[], seconds: 0 }));
  for (const f of [...files].sort((a, b) => weight(b) - weight(a) || a.localeCompare(b))) {
    const least = out.reduce((a, b) => (b.seconds < a.seconds ? b : a));
    least.files.push(f);
    least.seconds += weight(f);
  }
  return out.map((g) => g.files.sort()).filter((g) => g.length > 0);
}

/** uvu's pattern for exactly these file names. */
function patternFor(files: string[]): string {
  return `^(${files.map((f) => f.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|')})$`;
}

/** Terminal colour codes, which uvu puts around a file's name. */
const COLOUR = new RegExp(`${String.fromCharCode(27)}\\[[0-9;]*m`, 'g');

/**
 * Seconds per file of one uvu run, from the file name uvu prints (alone on a line) as it starts
 * each file: a file lasts until the next one's name, the last until the run ends.
 */
class FileClock {
  private readonly starts: [string, number][] = [];
  private partial = '';
  private endedAt = 0;

  constructor(private readonly files: ReadonlySet<string>) {}

  see(chunk: Buffer): void {
    const lines = (this.partial + chunk.toString()).split('\n');
    this.partial = lines.pop()!;
    for (const line of lines) {
      const name = line.replace(COLOUR, '').trim();
      if (this.files.has(name)) this.starts.push([name, performance.now()]);
    }
  }

  end(): void {
    this.endedAt = performance.now();
  }

  /** "name 12.3" per file, longest first. */
  report(): string {
    const rows = this.starts.map(([name, t], i) => [name.replace(/\.test\.ts$/, ''), ((this.starts[i + 1]?.[1] ?? this.endedAt) - t) / 1000] as const);
    return rows.sort((a, b) => b[1] - a[1]).map(([n, s]) => `${n} ${s.toFixed(1)}`).join(', ');
  }
}

/** One uvu run of `files`; its output goes to `sink` as it arrives. */
function runGroup(files: string[], env: NodeJS.ProcessEnv, sink: (chunk: Buffer) => void): { child: ChildProcess; done: Promise<number>; clock: FileClock; startedAt: number } {
  const clock = new FileClock(new Set(files));
  const startedAt = performance.now();
  const child = spawn(process.execPath, [UVU_BIN, '-r', 'tsx', 'test', patternFor(files)], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const take = (chunk: Buffer) => {
    clock.see(chunk);
    sink(chunk);
  };
  child.stdout!.on('data', take);
  child.stderr!.on('data', take);
  const done = new Promise<number>((resolve) => {
    child.once('error', (err) => {
      sink(Buffer.from(`cannot start uvu: ${err.message}\n`));
      resolve(1);
    });
    child.once('close', (code, signal) => {
      clock.end();
      resolve(code ?? (signal ? 1 : 0));
    });
  });
  return { child, done, clock, startedAt };
}

export async function runTests(argv: string[]): Promise<number> {
  const only = argv[0] ? new RegExp(argv[0]) : null;
  const files = fs.readdirSync(TEST_DIR).filter((f) => f.endsWith('.test.ts') && (!only || only.test(f)));
  if (files.length === 0) {
    process.stderr.write(`no test file matches ${argv[0]}\n`);
    return 1;
  }
  if (!(Number.isInteger(GROUPS) && GROUPS >= 1)) {
    process.stderr.write(`TEST_GROUPS=${process.env.TEST_GROUPS} is not a whole number of at least 1\n`);
    return 1;
  }
  const build = await bundleForRun();
  const env = { ...process.env, COUNTER_MESH_TEST_BUILD: build };
  const groups = balance(files.filter((f) => !ALONE.has(f)), GROUPS);
  const alone = files.filter((f) => ALONE.has(f));
  const held: Buffer[][] = groups.map(() => []);
  let live = 0;
  const runs = groups.map((g, i) =>
    runGroup(g, env, (chunk) => {
      if (i === live) process.stdout.write(chunk);
      else held[i]!.push(chunk);
    }),
  );
  const stop = (signal: NodeJS.Signals) => {
    for (const r of runs) r.child.kill(signal);
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    const codes: number[] = [];
    const ended: number[] = [];
    for (const [i, r] of runs.entries()) {
      codes.push(await r.done);
      ended.push(performance.now());
      // the next group's output so far, then the rest as it comes
      live = i + 1;
      for (const chunk of held[live]?.splice(0) ?? []) process.stdout.write(chunk);
    }
    if (alone.length > 0) {
      const last = runGroup(alone, env, (chunk) => process.stdout.write(chunk));
      runs.push(last);
      codes.push(await last.done);
      ended.push(performance.now());
    }
    for (const [i, r] of runs.entries()) {
      process.stdout.write(`group ${i + 1}: ${((ended[i]! - r.startedAt) / 1000).toFixed(1)} s — ${r.clock.report()}\n`);
    }
    return codes.some((c) => c !== 0) ? 1 : 0;
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    fs.rmSync(path.dirname(build), { recursive: true, force: true });
  }
}

runIfScript(import.meta.url, runTests);
