/**
 * The command line as a user runs it: usage texts, configuration errors, and one real
 * `counter-mesh up` whose counter is SIGKILLed, restarted by `up` and caught up, then stopped.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { SETTINGS } from '../src/shared/config.ts';
import { waitFor } from '../src/shared/wait.ts';
import { freePorts } from './support/ports.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const MAIN = path.join(ROOT, 'src', 'cli', 'main.ts');
const BIN = path.join(ROOT, 'bin', 'counter-mesh.mjs');
const COMMANDS = ['up', 'coordinator', 'counter'];

/**
 * Every setting at its default, so a developer's `.env` in the repository (which the CLI reads
 * from its working directory) or exported variables cannot change what these tests run.
 */
const CLEAN_ENV: Record<string, string> = { ...(process.env as Record<string, string>), ...SETTINGS };

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function spawnCli(args: string[], env: Record<string, string> = {}, entry: string[] = ['--import', 'tsx', MAIN], cwd = ROOT): ChildProcess {
  return spawn(process.execPath, [...entry, ...args], { cwd, env: { ...CLEAN_ENV, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Runs the CLI to its end (killed after `timeoutMs`, which fails the test). */
function run(args: string[], env: Record<string, string> = {}, opts: { entry?: string[]; cwd?: string; timeoutMs?: number } = {}): Promise<Run> {
  const proc = spawnCli(args, env, opts.entry, opts.cwd);
  let stdout = '';
  let stderr = '';
  proc.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
  proc.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`counter-mesh ${args.join(' ')} did not exit within ${opts.timeoutMs ?? 20_000} ms\n${stdout}\n${stderr}`));
    }, opts.timeoutMs ?? 20_000);
    proc.once('error', reject);
    proc.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}


function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

// ---------------------------------------------------------------- usage

test('counter-mesh --help prints the usage and lists every command', async () => {
  const r = await run(['--help']);
  assert.is(r.code, 0, r.stderr);
  assert.match(r.stdout, /Usage: counter-mesh <command>/);
  for (const c of COMMANDS) assert.match(r.stdout, new RegExp(`^  ${c}\\s`, 'm'), `command ${c} listed`);
});

test('<command> --help (and -h) prints that command\'s usage and exits 0 without starting anything', async () => {
  const runs = await Promise.all(COMMANDS.flatMap((c) => [run([c, '--help']), run([c, '-h'])]));
  COMMANDS.forEach((c, i) => {
    for (const r of [runs[2 * i]!, runs[2 * i + 1]!]) {
      assert.is(r.code, 0, `${c}: ${r.stderr}`);
      assert.ok(r.stdout.startsWith(`Usage: counter-mesh ${c}`), `${c}: ${r.stdout}`);
      assert.is(r.stderr, '', `${c} --help writes nothing to stderr`);
    }
  });
});

test('the package bin runs from any directory', async () => {
  const r = await run(['coordinator', '--help'], {}, { entry: [BIN], cwd: os.tmpdir() });
  assert.is(r.code, 0, r.stderr);
  assert.ok(r.stdout.startsWith('Usage: counter-mesh coordinator'), r.stdout);
});

test('the package bin runs dist/counter-mesh.mjs only while it is newer than the sources, else the sources', async () => {
  // a copy of the package's layout: its own bin and dist, the repository's sources and packages
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cm-bin-'));
  try {
    fs.mkdirSync(path.join(dir, 'bin'));
    fs.mkdirSync(path.join(dir, 'dist'));
    fs.copyFileSync(BIN, path.join(dir, 'bin', 'counter-mesh.mjs'));
    fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(dir, 'package.json'));
    fs.symlinkSync(path.join(ROOT, 'src'), path.join(dir, 'src'), 'dir');
    fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'), 'dir');
    const bin = [path.join(dir, 'bin', 'counter-mesh.mjs')];
    const bundle = path.join(dir, 'dist', 'counter-mesh.mjs');

    const sources = await run(['--help'], {}, { entry: bin, cwd: os.tmpdir() });
    assert.is(sources.code, 0, `no build: the sources run\n${sources.stderr}`);
    assert.match(sources.stdout, /Usage: counter-mesh <command>/);

    fs.writeFileSync(bundle, "process.stdout.write('the bundle ran with ' + JSON.stringify(process.argv.slice(2)) + '\\n');\n");
    const fresh = await run(['counter', '--help'], {}, { entry: bin, cwd: os.tmpdir() });
    assert.is(fresh.code, 0, fresh.stderr);
    assert.is(fresh.stdout, 'the bundle ran with ["counter","--help"]\n');

    // older than a source file: an edit since the build is not shadowed by it
    const old = new Date('2001-01-01T00:00:00Z');
    fs.utimesSync(bundle, old, old);
    const stale = await run(['--help'], {}, { entry: bin, cwd: os.tmpdir() });
    assert.is(stale.code, 0, stale.stderr);
    assert.match(stale.stdout, /Usage: counter-mesh <command>/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('no command prints the usage and exits non-zero', async () => {
  const r = await run([]);
  assert.is(r.code, 1);
  assert.match(r.stdout, /Usage: counter-mesh <command>/);
});

test('an unknown command exits non-zero naming it', async () => {
  const [plain, withHelp] = await Promise.all([run(['frobnicate']), run(['frobnicate', '--help'])]);
  for (const r of [plain, withHelp]) {
    assert.is(r.code, 2);
    assert.match(r.stderr, /unknown command "frobnicate"/);
  }
});

// ---------------------------------------------------------------- configuration errors

test('a bad setting exits non-zero with a one-line message naming the variable', async () => {
  const cases: [string[], Record<string, string>, RegExp][] = [
    [['coordinator'], { HTTP_PORT: 'abc' }, /HTTP_PORT="abc" is not valid/],
    [['coordinator', '--http-port', 'abc'], {}, /HTTP_PORT="abc" is not valid/],
    [['coordinator'], { COUNTERS: 'foo' }, /COUNTERS="foo" is not valid/],
    [['counter'], { HEARTBEAT_MS: '0' }, /HEARTBEAT_MS="0" is not valid/],
    [['counter'], { HOST: '0.0.0.0', CLUSTER_SECRET: '' }, /CLUSTER_SECRET is empty but HOST=0\.0\.0\.0/],
    [['up'], { COUNTER_COUNT: 'foo' }, /COUNTER_COUNT="foo" is not valid/],
    [['up', '--log-level', 'loud'], {}, /LOG_LEVEL="loud" is not valid/],
    [['coordinator', '--bogus', '1'], {}, /unknown option --bogus/],
  ];
  const runs = await Promise.all(cases.map(([args, env]) => run(args, env)));
  cases.forEach(([args, env, message], i) => {
    const r = runs[i]!;
    const what = `${JSON.stringify(env)} counter-mesh ${args.join(' ')}`;
    assert.is(r.code, 2, `${what}: exit code\n${r.stdout}${r.stderr}`);
    assert.match(r.stderr, message, what);
    assert.match(r.stderr, /^counter-mesh: [^\n]+\n$/, `${what}: one line, no stack trace: ${r.stderr}`);
  });
});

// ---------------------------------------------------------------- a real `up`

interface Up {
  proc: ChildProcess;
  lines: string[];
  /** Every pid each child process name has logged, in order. */
  pids: Map<string, number[]>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

let up: Up | null = null;
let dataDir = '';

function startUp(env: Record<string, string>): Up {
  const proc = spawnCli(['up'], env);
  const lines: string[] = [];
  const pids = new Map<string, number[]>();
  const onLine = (line: string) => {
    lines.push(line);
    // child lines are `<name padded> | <pino JSON line>`
    const m = /^(\S+)\s+\| (\{.*\})$/.exec(line);
    if (!m) return;
    let pid: unknown;
    try {
      pid = (JSON.parse(m[2]!) as { pid?: unknown }).pid;
    } catch {
      return;
    }
    if (typeof pid !== 'number') return;
    const list = pids.get(m[1]!) ?? [];
    if (list.at(-1) !== pid) list.push(pid);
    pids.set(m[1]!, list);
  };
  readline.createInterface({ input: proc.stdout! }).on('line', onLine);
  readline.createInterface({ input: proc.stderr! }).on('line', (l) => onLine(`[stderr] ${l}`));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  return { proc, lines, pids, exited };
}

function tail(u: Up, n = 40): string {
  return `\n--- last lines of counter-mesh up ---\n${u.lines.slice(-n).join('\n')}`;
}

test.after(async () => {
  if (up && up.proc.exitCode === null && up.proc.signalCode === null) {
    up.proc.kill('SIGKILL');
    for (const list of up.pids.values()) for (const pid of list) if (alive(pid)) process.kill(pid, 'SIGKILL');
  }
  if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
});

test('up: serves the API, restarts a SIGKILLed counter which catches up, and stops every child on SIGTERM', async () => {
  const secret = randomBytes(16).toString('hex');
  const httpPort = await freePorts(1);
  const basePort = await freePorts(2);
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cm-cli-'));
  up = startUp({
    COUNTER_COUNT: '2',
    COUNTER_BASE_PORT: String(basePort),
    HTTP_PORT: String(httpPort),
    HOST: '127.0.0.1',
    DATA_DIR: dataDir,
    CLUSTER_SECRET: secret,
    LOG_LEVEL: 'info',
    HEARTBEAT_MS: '500',
    RECONNECT_MAX_MS: '200',
    ANTI_ENTROPY_MS: '500',
  });
  const u = up;
  const api = `http://127.0.0.1:${httpPort}`;
  const counterUrl = (i: number, p: string) => `http://127.0.0.1:${basePort + i}${p}`;
  const tenant = 'acme/eu west'; // needs percent-encoding in the URL
  const countPath = `/items/${encodeURIComponent(tenant)}/count`;
  const direct = async (i: number): Promise<number | null> => {
    const res = await fetch(counterUrl(i, countPath), { headers: { authorization: `Bearer ${secret}` } });
    return res.ok ? ((await res.json()) as { count: number }).count : null;
  };
  const post = async (body: unknown): Promise<Response> =>
    fetch(`${api}/items`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

  await waitFor(async () => (await fetch(`${api}/ready`)).ok, 20_000, `the coordinator to be ready${tail(u)}`);
  // the coordinator is ready as soon as one counter is; wait for both
  for (const i of [0, 1]) {
    await waitFor(async () => (await fetch(counterUrl(i, '/ready'), { headers: { authorization: `Bearer ${secret}` } })).ok, 20_000, `counter-${i + 1} to be ready${tail(u)}`);
  }
  // and until the coordinator has heard so from both: a counter that turns ready may become its
  // home counter, and read-your-writes does not span that switch (README, Guarantees)
  const bothReady = async () => ((await (await fetch(`${api}/counters`)).json()) as { ready: boolean }[]).filter((c) => c.ready).length === 2;
  await waitFor(bothReady, 20_000, `the coordinator to see both counters ready${tail(u)}`);

  // both body shapes; a duplicate is accepted and counted once
  let res = await post({ tenant, id: 'a' });
  assert.is(res.status, 200);
  assert.equal(await res.json(), { accepted: 1 });
  res = await post([{ tenant, id: 'b' }, { tenant, id: 'c' }, { tenant, id: 'a' }]);
  assert.is(res.status, 200);
  assert.equal(await res.json(), { accepted: 3 });
  res = await fetch(`${api}${countPath}`);
  assert.is(res.status, 200);
  assert.equal(await res.json(), { count: 3 }, 'read your writes through the coordinator');

  // the counters' own endpoints need the cluster secret
  assert.is((await fetch(counterUrl(0, countPath))).status, 401);
  await waitFor(async () => (await direct(0)) === 3 && (await direct(1)) === 3, 10_000, `both counters to count 3${tail(u)}`);

  // SIGKILL counter-1; `up` starts it again, and it catches up on what was written meanwhile
  const victim = u.pids.get('counter-1')?.at(-1);
  assert.ok(victim, `counter-1 logged its pid${tail(u)}`);
  process.kill(victim, 'SIGKILL');
  await waitFor(() => u.lines.some((l) => l.startsWith('[up] counter-1 exited (SIGKILL)')), 5_000, `up to notice${tail(u)}`);
  await waitFor(async () => {
    const r = await post([{ tenant, id: 'd' }, { tenant, id: 'e' }]);
    return r.status === 200; // a 503 is possible for a moment and safe to retry: adds are idempotent
  }, 10_000, `a write while counter-1 is down${tail(u)}`);
  await waitFor(() => (u.pids.get('counter-1')?.length ?? 0) >= 2, 15_000, `counter-1 to be restarted${tail(u)}`);
  const restarted = u.pids.get('counter-1')!.at(-1)!;
  assert.is.not(restarted, victim);
  assert.ok(alive(restarted));
  await waitFor(async () => (await direct(0)) === 5 && (await direct(1)) === 5, 15_000, `the restarted counter to catch up to 5${tail(u)}`);
  await waitFor(async () => {
    const r = await fetch(`${api}${countPath}`);
    return r.ok && ((await r.json()) as { count: number }).count === 5;
  }, 10_000, `the coordinator to count 5${tail(u)}`);

  // SIGTERM stops everything
  const children = [...u.pids.entries()];
  assert.equal(children.map(([name]) => name).sort(), ['coordinator', 'counter-1', 'counter-2'], 'every child logged its pid');
  u.proc.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const exit = await Promise.race([u.exited, new Promise<null>((r) => (timer = setTimeout(() => r(null), 15_000)))]);
  clearTimeout(timer);
  assert.ok(exit, `up did not exit within 15 s of SIGTERM${tail(u)}`);
  assert.is(exit.code, 0, `up exit code${tail(u)}`);
  for (const [name, list] of children) {
    for (const pid of list) assert.not.ok(alive(pid), `${name} (pid ${pid}) still running after up exited`);
  }
});

test.run();
