/** `host:port` addresses as COUNTERS, PEERS and ADVERTISE_ADDRESS write them. */
export interface Address {
  host: string;
  port: number;
}

export function parseAddress(text: string): Address {
  const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$/.exec(text.trim());
  const port = m ? Number(m[2]) : NaN;
  if (!m || port < 1 || port > 65535) throw new Error(`"${text}" is not host:port`);
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port };
}

/** True for a usable `host:port` (members announce theirs; a peer may lie). */
export function isAddress(text: string): boolean {
  try {
    parseAddress(text);
    return true;
  } catch {
    return false;
  }
}

export function parseAddressList(text: string): Address[] {
  return text
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map(parseAddress);
}

export function formatAddress(a: Address): string {
  return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

/** True for a loopback host name or address (the only place a counter may run without a secret). */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}
