/**
 * `npm run bench -- --smoke`: every figure is produced, as finite positive numbers, under the
 * documented keys. The figures' values are not checked, only that each round measured something:
 * a smoke run's throughput rounds are 500 requests (post_batch: 20 batches of 1,000 items), not a
 * duration, so they do however busy the machine is.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';

const BENCH = fileURLToPath(new URL('../tools/bench/main.ts', import.meta.url));
/** A smoke run takes 1-3 minutes on the shared 2-core machine: six meshes, each waited on until its counters serve every shard. */
const TIMEOUT_MS = 420_000;

const SHAPE: Record<string, string[]> = {
  post_single: ['rps', 'p50_ms', 'p99_ms', 'ceiling_rps', 'ratio'],
  post_batch: ['items_per_s', 'batch', 'replicated_ms'],
  get_count: ['rps', 'p50_ms', 'p99_ms', 'ceiling_rps', 'ratio'],
  post_single_tls: ['rps', 'p50_ms', 'p99_ms', 'ceiling_rps', 'ratio'],
  get_count_tls: ['rps', 'p50_ms', 'p99_ms', 'ceiling_rps', 'ratio'],
  post_single_quorum: ['rps', 'p50_ms', 'p99_ms', 'ceiling_rps', 'ratio'],
  get_count_quorum: ['rps', 'p50_ms', 'p99_ms', 'ceiling_rps', 'ratio'],
  memory: ['items', 'tenants', 'rss_bytes_per_item', 'rss_bytes_per_item_no_gc', 'heap_bytes_per_item'],
  restart: ['items', 'ms', 'ms_20m'],
  scale: ['items', 'counters', 'items_per_counter_ratio', 'pss_bytes_per_item', 'rss_bytes_per_item', 'rss_bytes_per_item_gc'],
  join: ['items', 'ms'],
  compaction: ['items', 'post_p99_ms', 'compactions'],
  catch_up: ['items', 'ms'],
  partition_heal: ['items_per_side', 'ms'],
  machine: ['cpus', 'node', 'date'],
};

function runCli(args: string[]): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const proc = spawn(process.execPath, ['--import', 'tsx', BENCH, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    proc.stdout.on('data', (d: Buffer) => (output += d.toString()));
    proc.stderr.on('data', (d: Buffer) => (output += d.toString()));
    const timer = setTimeout(() => proc.kill('SIGINT'), TIMEOUT_MS);
    proc.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

test('bench --smoke writes every figure as finite positive numbers', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cm-bench-test-'));
  const out = path.join(dir, 'bench.json');
  try {
    const { code, output } = await runCli(['--smoke', '--out', out]);
    assert.is(code, 0, `bench exited with ${code}:\n${output.slice(-3000)}`);
    const figures = JSON.parse(fs.readFileSync(out, 'utf8')) as Record<string, Record<string, unknown>>;
    assert.equal(Object.keys(figures).sort(), Object.keys(SHAPE).sort(), 'top-level keys');
    for (const [group, fields] of Object.entries(SHAPE)) {
      assert.equal(Object.keys(figures[group]!).sort(), [...fields].sort(), `keys of ${group}`);
      if (group === 'machine') continue;
      for (const f of fields) {
        const v = figures[group]![f];
        assert.ok(typeof v === 'number' && Number.isFinite(v) && v > 0, `${group}.${f} is a finite positive number (got ${String(v)})`);
      }
    }
    assert.ok(typeof figures.machine!.cpus === 'number' && figures.machine!.cpus > 0, 'machine.cpus');
    assert.match(String(figures.machine!.node), /^v\d+\./);
    assert.ok(!Number.isNaN(Date.parse(String(figures.machine!.date))), 'machine.date is a date');
    assert.is(figures.post_batch!.batch, 1000);
    assert.is(figures.memory!.tenants, 1000);
    assert.match(output, /post_single\.ratio/, 'the table is printed');
    assert.match(output, /post_single_tls\.ratio/, 'with the TLS rows');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
