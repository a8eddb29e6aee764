// experiment (not committed): CPU of mesh processes to start and when idle
import fs from 'node:fs';
import { Mesh } from './test/support/mesh.ts';
const ticks = (pid: number) => { const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').slice(fs.readFileSync(`/proc/${pid}/stat`, 'utf8').lastIndexOf(')') + 2).split(' '); return (Number(f[11]) + Number(f[12])) / 100; };
const env = process.env.SHARDS_X ? { SHARDS: process.env.SHARDS_X } : {};
const t0 = performance.now();
const mesh = await Mesh.start({ counters: 3, env });
const t1 = performance.now();
const pids = [...mesh.counters.map((c) => c.process.proc!.pid!), mesh.coordinators[0]!.process.proc!.pid!];
const c0 = pids.map(ticks);
await new Promise((r) => setTimeout(r, 10_000));
const c1 = pids.map(ticks);
console.log(`shards ${process.env.SHARDS_X ?? 'default'}: start ${(t1 - t0).toFixed(0)} ms wall, cpu at ready ${c0.map((x) => x.toFixed(2)).join(' ')}; idle 10 s cpu ${c1.map((x, i) => (x - c0[i]!).toFixed(2)).join(' ')}`);
await mesh.close();
