/** Ports for tests that start `counter-mesh up`, which numbers its counters from a base port. */
import net from 'node:net';

function listen(port: number): Promise<net.Server | null> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(null));
    srv.listen(port, '127.0.0.1', () => resolve(srv));
  });
}

/** `n` consecutive free ports on 127.0.0.1 (free when checked; the OS may hand them out later). */
export async function freePorts(n: number): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const first = await listen(0);
    if (!first) continue;
    const base = (first.address() as net.AddressInfo).port;
    const held = [first];
    for (let p = base + 1; p < base + n && p <= 65535; p++) {
      const s = await listen(p);
      if (!s) break;
      held.push(s);
    }
    await Promise.all(held.map((s) => new Promise((r) => s.close(r))));
    if (held.length === n) return base;
  }
  throw new Error(`no ${n} consecutive free ports`);
}
