/**
 * Real certificates for tests, made with Debian's `openssl` CLI (.ci/run installs it when
 * missing): a CA, a node certificate it signs for every loopback address the test harness uses
 * (127.0.0.1-80 for processes, 127.0.1.1-80 for the fault proxies, and localhost), and a second,
 * unrelated CA with a node certificate of its own. EC P-256 keys: fast to make and to handshake.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export interface CertSet {
  /** PEM files: what TLS_CA, TLS_CERT and TLS_KEY point at. */
  ca: string;
  cert: string;
  key: string;
}

export interface TestCerts {
  dir: string;
  /** Signed by the mesh's CA. */
  good: CertSet;
  /** A node certificate from another CA (`ca` is that other CA). */
  other: CertSet;
  /** Makes a new node certificate from the same CA into new files (for reload tests). */
  renew(name: string): CertSet;
  close(): void;
}

function openssl(args: string[], cwd: string): void {
  try {
    execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    const e = err as Error & { stderr?: Buffer };
    throw new Error(`openssl ${args[0]} failed (is Debian's openssl installed? .ci/run installs it): ${e.stderr?.toString() ?? e.message}`);
  }
}

function sans(): string {
  const ips: string[] = [];
  for (let i = 1; i <= 80; i++) ips.push(`IP:127.0.0.${i}`, `IP:127.0.1.${i}`);
  return [...ips, 'DNS:localhost'].join(',');
}

function makeCa(dir: string, name: string): void {
  fs.writeFileSync(
    path.join(dir, `${name}.cnf`),
    ['[req]', 'distinguished_name=dn', 'x509_extensions=v3_ca', 'prompt=no', '[dn]', `CN=counter-mesh test ${name}`, '[v3_ca]', 'basicConstraints=critical,CA:TRUE', 'keyUsage=critical,keyCertSign,cRLSign', 'subjectKeyIdentifier=hash', ''].join('\n'),
  );
  openssl(['req', '-x509', '-config', `${name}.cnf`, '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.pem`, '-days', '2'], dir);
}

function makeLeaf(dir: string, ca: string, name: string): CertSet {
  fs.writeFileSync(path.join(dir, `${name}.ext`), `subjectAltName=${sans()}\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n`);
  openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=counter-mesh ${name}`], dir);
  openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-out', `${name}.pem`, '-days', '2', '-extfile', `${name}.ext`], dir);
  return { ca: path.join(dir, `${ca}.pem`), cert: path.join(dir, `${name}.pem`), key: path.join(dir, `${name}.key`) };
}

export function makeTestCerts(): TestCerts {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cm-certs-'));
  try {
    makeCa(dir, 'ca');
    makeCa(dir, 'other-ca');
    return {
      dir,
      good: makeLeaf(dir, 'ca', 'node'),
      other: makeLeaf(dir, 'other-ca', 'other-node'),
      renew: (name) => makeLeaf(dir, 'ca', name),
      close: () => fs.rmSync(dir, { recursive: true, force: true }),
    };
  } catch (err) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}
