/**
 * Summarizes a V8 .cpuprofile (written by `node --cpu-prof`): self time per function and per
 * package, as a share of the process's busy (non-idle) time.
 *
 * Also runnable on its own: `npx tsx examples/bench/profile.ts FILE.cpuprofile [top]`.
 */
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';

interface CpuProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: CpuProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileRow {
  name: string;
  ms: number;
  /** Share of busy time (everything but "(idle)"). */
  share: number;
}

export interface ProfileSummary {
  totalMs: number;
  busyMs: number;
  idleMs: number;
  functions: ProfileRow[];
  packages: ProfileRow[];
}

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

function where(url: string): string {
  if (!url) return '';
  let u = url.startsWith('file://') ? fileURLToPath(url) : url;
  const nm = u.lastIndexOf('node_modules/');
  if (nm >= 0) return u.slice(nm + 'node_modules/'.length);
  if (u.startsWith(ROOT)) u = u.slice(ROOT.length);
  return u;
}

/** The package (or project folder, or "node:internal") a function belongs to. */
function packageOf(url: string, name: string): string {
  if (!url) return name.startsWith('(') ? name : '(native)';
  const w = where(url);
  if (url.startsWith('node:')) return 'node (built-in JS)';
  if (url.includes('node_modules/')) {
    const parts = w.split('/');
    return parts[0]!.startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]!;
  }
  const parts = w.split('/');
  return parts.length > 2 ? parts.slice(0, 2).join('/') : w;
}

/**
 * @param window only samples taken between these times, in ms after the profile started (the
 *   process start, with --cpu-prof), e.g. to leave module loading out.
 */
export function summarizeProfile(file: string, top = 15, window?: { fromMs: number; toMs: number }): ProfileSummary {
  const profile = JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map<number, CpuProfileNode>();
  for (const n of profile.nodes) byId.set(n.id, n);
  const selfUs = new Map<number, number>();
  // timeDeltas[i] is the time since the previous sample; charge sample i with the interval that follows it
  let at = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    at += profile.timeDeltas[i] ?? 0;
    if (window && (at < window.fromMs * 1000 || at > window.toMs * 1000)) continue;
    const id = profile.samples[i]!;
    const dt = profile.timeDeltas[i + 1] ?? 0;
    selfUs.set(id, (selfUs.get(id) ?? 0) + Math.max(0, dt));
  }
  const fn = new Map<string, number>();
  const pkg = new Map<string, number>();
  let idle = 0;
  let total = 0;
  for (const [id, us] of selfUs) {
    const node = byId.get(id)!;
    const { functionName, url, lineNumber } = node.callFrame;
    total += us;
    if (functionName === '(idle)') {
      idle += us;
      continue;
    }
    const name = `${functionName || '(anonymous)'}${url ? ` ${where(url)}:${lineNumber + 1}` : ''}`;
    fn.set(name, (fn.get(name) ?? 0) + us);
    const p = packageOf(url, functionName);
    pkg.set(p, (pkg.get(p) ?? 0) + us);
  }
  const busy = total - idle;
  const rows = (m: Map<string, number>) =>
    [...m]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([name, us]) => ({ name, ms: us / 1000, share: busy > 0 ? us / busy : 0 }));
  return { totalMs: total / 1000, busyMs: busy / 1000, idleMs: idle / 1000, functions: rows(fn), packages: rows(pkg) };
}

export function formatProfile(title: string, s: ProfileSummary): string {
  const lines = [
    `${title}: ${(s.busyMs / 1000).toFixed(1)} s busy of ${(s.totalMs / 1000).toFixed(1)} s profiled (${((100 * s.busyMs) / Math.max(1, s.totalMs)).toFixed(0)}% busy)`,
    '  top self time by function (share of busy time):',
    ...s.functions.map((r) => `    ${(100 * r.share).toFixed(1).padStart(5)}%  ${r.ms.toFixed(0).padStart(7)} ms  ${r.name}`),
    '  by package:',
    ...s.packages.map((r) => `    ${(100 * r.share).toFixed(1).padStart(5)}%  ${r.ms.toFixed(0).padStart(7)} ms  ${r.name}`),
  ];
  return lines.join('\n');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const file = process.argv[2];
  if (!file) {
    process.stderr.write('usage: tsx examples/bench/profile.ts FILE.cpuprofile [top]\n');
    process.exit(1);
  }
  process.stdout.write(`${formatProfile(file, summarizeProfile(file, Number(process.argv[3] ?? 25)))}\n`);
}
