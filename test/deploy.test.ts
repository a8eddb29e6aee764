/**
 * Deployment files, checked offline: the Kubernetes manifests in deploy/kubernetes/ validate
 * against the Kubernetes OpenAPI schemas (kubernetes-models; no cluster needed), set only settings
 * the code reads, with values the code accepts, probe paths that answer, and grace periods longer
 * than the shutdown timeout; docker-compose.yml's stop_grace_period likewise.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import pino from 'pino';
import { parseAllDocuments, parse as parseYaml } from 'yaml';
import { Secret, Service } from 'kubernetes-models/v1';
import { Deployment, StatefulSet } from 'kubernetes-models/apps/v1';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import type { IContainer } from 'kubernetes-models/v1/Container';
import type { IPodSpec } from 'kubernetes-models/v1/PodSpec';
import { SETTINGS, coordinatorConfig, counterConfig, type Env } from '../src/shared/config.ts';
import { buildCoordinatorServer, type PoolApi } from '../src/coordinator/server.ts';
import { Counter } from '../src/counter/counter.ts';
import { freePort } from './support/mesh.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const DIR = path.join(ROOT, 'deploy', 'kubernetes');
const silent = pino({ level: 'silent' });

/** Environment variables read by Node itself, not settings of ours; each is explained where it is set. */
const RUNTIME_ENV = new Set(['NODE_OPTIONS']);

type Manifest = { apiVersion: string; kind: string; metadata: { name: string; labels?: Record<string, string> } } & Record<string, unknown>;

const MODELS: Record<string, new (data: never) => { validate(): void }> = {
  'v1/Secret': Secret,
  'v1/Service': Service,
  'apps/v1/Deployment': Deployment,
  'apps/v1/StatefulSet': StatefulSet,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
};

function readManifests(file: string): Manifest[] {
  const docs = parseAllDocuments(fs.readFileSync(path.join(DIR, file), 'utf8'));
  const out: Manifest[] = [];
  for (const doc of docs) {
    assert.equal(doc.errors.map((e) => e.message), [], `${file} parses as YAML`);
    out.push(doc.toJS() as Manifest);
  }
  return out;
}

const kustomization = parseYaml(fs.readFileSync(path.join(DIR, 'kustomization.yaml'), 'utf8')) as { resources: string[] };
const applied = kustomization.resources.flatMap(readManifests);
const [secret] = readManifests('secret.example.yaml') as (Manifest & { stringData: Record<string, string> })[];

function find<T = Manifest>(kind: string, name: string): T {
  const m = applied.find((x) => x.kind === kind && x.metadata.name === name);
  assert.ok(m, `${kind} ${name} is in the manifests`);
  return m as T;
}

interface Workload extends Manifest {
  spec: { replicas: number; serviceName?: string; selector: { matchLabels: Record<string, string> }; template: { metadata: { labels: Record<string, string> }; spec: IPodSpec }; volumeClaimTemplates?: { metadata: { name: string } }[] };
}
const statefulSet = find<Workload>('StatefulSet', 'counter');
const deployment = find<Workload>('Deployment', 'coordinator');
const counterContainer = statefulSet.spec.template.spec.containers[0]!;
const coordinatorContainer = deployment.spec.template.spec.containers[0]!;

/**
 * A container's environment as the kubelet builds it for a pod named `podName`: literal values with
 * `$(VAR)` expanded from earlier entries, the pod's name, and the example Secret's keys.
 */
function containerEnv(c: IContainer, podName: string): Env {
  const env: Env = {};
  for (const e of c.env ?? []) {
    const from = e.valueFrom;
    if (e.value !== undefined) {
      env[e.name] = e.value.replace(/\$\((\w+)\)/g, (_m, name: string) => {
        assert.ok(env[name] !== undefined, `${e.name} refers to $(${name}), which must be set above it`);
        return env[name]!;
      });
    } else if (from?.fieldRef) {
      assert.is(from.fieldRef.fieldPath, 'metadata.name', `${e.name}: only the pod name is used`);
      env[e.name] = podName;
    } else if (from?.secretKeyRef) {
      const ref = from.secretKeyRef;
      assert.is(ref.name, secret!.metadata.name, `${e.name} comes from the Secret the README tells to create`);
      assert.ok(ref.key! in secret!.stringData, `${e.name}: the Secret has a key ${ref.key}`);
      env[e.name] = secret!.stringData[ref.key!];
    } else {
      assert.unreachable(`${e.name}: no value and no supported source`);
    }
  }
  return env;
}

function probeSeconds(c: IContainer): number {
  const cmd = c.lifecycle?.preStop?.exec?.command;
  if (!cmd) return 0;
  assert.is(cmd[0], 'sleep');
  return Number(cmd[1]);
}

// ---------------------------------------------------------------- schemas

test('every manifest validates against the Kubernetes OpenAPI schemas', () => {
  assert.ok(applied.length >= 6, `found ${applied.length} manifests`);
  for (const m of [...applied, secret!]) {
    const Model = MODELS[`${m.apiVersion}/${m.kind}`];
    assert.ok(Model, `${m.apiVersion} ${m.kind} ${m.metadata.name}: a kind this test knows`);
    try {
      new Model(m as never).validate();
    } catch (err) {
      assert.unreachable(`${m.kind} ${m.metadata.name}: ${(err as Error).message}`);
    }
  }
});

test('the validator does reject a broken manifest (the check above can fail)', () => {
  const broken = structuredClone(statefulSet) as Workload;
  (broken.spec.template.spec.containers[0]!.ports![0] as { containerPort: unknown }).containerPort = 'mesh';
  assert.throws(() => new StatefulSet(broken as never).validate(), /containerPort/);
  const noSelector = structuredClone(deployment) as Partial<Workload>;
  delete (noSelector.spec as Partial<Workload['spec']>).selector;
  assert.throws(() => new Deployment(noSelector as never).validate(), /selector/);
});

test('kustomization lists every manifest file but the example Secret', () => {
  const files = fs.readdirSync(DIR).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml' && f !== 'secret.example.yaml');
  assert.equal([...kustomization.resources].sort(), files.sort());
});

// ---------------------------------------------------------------- settings

test('every environment variable the manifests set is a setting the code reads (or Node\'s own), and the code accepts the values', () => {
  for (const [c, podName] of [
    [counterContainer, 'counter-2'],
    [coordinatorContainer, 'coordinator-5d8f7c9b4-x2x7q'],
  ] as const) {
    const names = (c.env ?? []).map((e) => e.name);
    const unknown = names.filter((n) => !(n in SETTINGS) && !RUNTIME_ENV.has(n));
    assert.equal(unknown, [], `${c.name} sets unknown settings`);
    assert.is(new Set(names).size, names.length, `${c.name}: no variable set twice`);
    const env = containerEnv(c, podName);
    const config = c.name === 'counter' ? counterConfig(env) : coordinatorConfig(env);
    assert.is(config.host, '0.0.0.0');
    assert.ok(config.clusterSecret.length > 0);
    if (c.name === 'counter') {
      const cc = counterConfig(env);
      assert.is(cc.id, podName, 'COUNTER_ID is the pod name');
      assert.is(cc.advertiseAddress, `${podName}.${statefulSet.spec.serviceName}:${cc.port}`, 'each counter advertises its own DNS name');
    }
  }
});

test('counters find each other and the coordinators find the counters through the headless Service', () => {
  const service = find<Manifest & { spec: { clusterIP?: string; publishNotReadyAddresses?: boolean; selector: Record<string, string>; ports: { port: number }[] } }>('Service', statefulSet.spec.serviceName!);
  assert.is(service.spec.clusterIP, 'None', 'headless');
  assert.is(service.spec.publishNotReadyAddresses, true, 'a counter that is catching up can be found');
  const counter = counterConfig(containerEnv(counterContainer, 'counter-0'));
  assert.equal(service.spec.ports.map((p) => p.port), [counter.port]);
  assert.ok(counter.peers.length >= 1, 'PEERS names a member');
  for (const p of counter.peers) {
    const m = new RegExp(`^${statefulSet.metadata.name}-(\\d+)\\.${service.metadata.name}$`).exec(p.host);
    assert.ok(m, `peer ${p.host} is a pod of the StatefulSet`);
    assert.ok(Number(m[1]) < statefulSet.spec.replicas, `peer ${p.host} exists with ${statefulSet.spec.replicas} replicas`);
    assert.is(p.port, counter.port);
  }
  const coordinator = coordinatorConfig(containerEnv(coordinatorContainer, 'coordinator-0'));
  assert.equal(coordinator.counters, [{ host: service.metadata.name, port: counter.port }]);
});

test('selectors match pod labels; each counter has its own volume at DATA_DIR', () => {
  for (const w of [statefulSet, deployment]) {
    for (const [k, v] of Object.entries(w.spec.selector.matchLabels)) assert.is(w.spec.template.metadata.labels[k], v, `${w.kind} selector ${k}`);
  }
  for (const kind of ['Service', 'PodDisruptionBudget']) {
    for (const m of applied.filter((x) => x.kind === kind)) {
      const spec = m.spec as { selector: Record<string, string> & { matchLabels?: Record<string, string> } };
      const selector = spec.selector.matchLabels ?? spec.selector;
      const targets = [statefulSet, deployment].filter((w) => Object.entries(selector).every(([k, v]) => w.spec.template.metadata.labels[k] === v));
      assert.is(targets.length, 1, `${kind} ${m.metadata.name} selects exactly one workload's pods`);
    }
  }
  const pdb = find<Manifest & { spec: { maxUnavailable?: number } }>('PodDisruptionBudget', 'counter');
  assert.is(pdb.spec.maxUnavailable, 1);
  const dataDir = counterConfig(containerEnv(counterContainer, 'counter-0')).dataDir;
  const mount = counterContainer.volumeMounts?.find((v) => v.mountPath === dataDir);
  assert.ok(mount, 'DATA_DIR is a mounted volume');
  assert.equal(statefulSet.spec.volumeClaimTemplates?.map((t) => t.metadata.name), [mount.name], 'a PersistentVolumeClaim per counter');
});

// ---------------------------------------------------------------- probes, shutdown, security

test('probes: the coordinator\'s /ready and /health answer on the port it listens on', async () => {
  const c = coordinatorContainer;
  const config = coordinatorConfig({ ...containerEnv(c, 'coordinator-0'), LOG_LEVEL: 'silent' });
  const port = c.ports!.find((p) => p.name === c.readinessProbe?.httpGet?.port);
  assert.is(port?.containerPort, config.port, 'the readiness probe targets HTTP_PORT');
  assert.is(c.livenessProbe?.httpGet?.port, port?.name);
  const pool: PoolApi = { anyUsable: true, view: () => [], add: async () => undefined, count: async () => 0, replicas: () => [] };
  const app = buildCoordinatorServer(config, pool, silent);
  try {
    for (const probe of [c.readinessProbe!, c.livenessProbe!]) {
      const res = await app.inject({ url: probe.httpGet!.path! });
      assert.is(res.statusCode, 200, `${probe.httpGet!.path} answers 200 without API_KEY (one is set here)`);
    }
    assert.is(c.readinessProbe!.httpGet!.path, '/ready');
    assert.is(c.livenessProbe!.httpGet!.path, '/health');
  } finally {
    await app.close();
  }
});

test('probes: a counter answers its liveness path, and its readiness command exits 0 when ready and 1 with a wrong secret', async () => {
  const c = counterContainer;
  const env = containerEnv(c, 'counter-0');
  const declared = counterConfig(env);
  assert.is(c.ports!.find((p) => p.name === c.livenessProbe?.httpGet?.port)?.containerPort, declared.port);
  assert.is(c.startupProbe?.httpGet?.path, '/health');
  assert.is(c.livenessProbe?.httpGet?.path, '/health');
  const command = c.readinessProbe?.exec?.command ?? [];
  assert.is(command[0], 'node');
  assert.match(command.join(' '), `http://127.0.0.1:${declared.port}/ready`);

  // the same counter on a free loopback port, and the probe's own command pointed at it
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cm-probe-'));
  const port = await freePort();
  const config = counterConfig({ ...env, HOST: '127.0.0.1', COUNTER_PORT: String(port), DATA_DIR: dir, PEERS: '', ADVERTISE_ADDRESS: '', LOG_LEVEL: 'silent' });
  const counter = await Counter.start(config, silent);
  try {
    const health = await fetch(`http://127.0.0.1:${port}${c.livenessProbe!.httpGet!.path}`);
    assert.is(health.status, 200);
    const args = command.slice(1).map((a) => a.replace(`:${declared.port}/`, `:${port}/`));
    assert.is(await exitCode(args, { CLUSTER_SECRET: config.clusterSecret }), 0, 'ready');
    assert.is(await exitCode(args, { CLUSTER_SECRET: 'not-the-secret' }), 1, 'refused without the secret');
  } finally {
    await counter.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

function exitCode(args: string[], env: Record<string, string>): Promise<number | null> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { env: { PATH: process.env.PATH, ...env }, stdio: 'ignore' });
    child.once('error', reject);
    child.once('exit', (code) => resolve(code));
  });
}

test('termination grace periods outlast preStop plus SHUTDOWN_TIMEOUT_MS', () => {
  for (const [w, podName] of [
    [statefulSet, 'counter-0'],
    [deployment, 'coordinator-0'],
  ] as const) {
    const c = w.spec.template.spec.containers[0]!;
    const timeoutMs = (w.kind === 'StatefulSet' ? counterConfig : coordinatorConfig)(containerEnv(c, podName)).shutdownTimeoutMs;
    const needed = probeSeconds(c) + timeoutMs / 1000;
    const grace = w.spec.template.spec.terminationGracePeriodSeconds ?? 30;
    assert.ok(grace >= needed + 5, `${w.kind}: terminationGracePeriodSeconds ${grace} leaves less than 5 s past ${needed} s`);
  }
  assert.ok(probeSeconds(coordinatorContainer) > 0, 'the coordinator keeps serving while its endpoint is removed');
});

test('pods run as a non-root user with a read-only root filesystem, no privilege escalation, no capabilities, and memory limits', () => {
  for (const w of [statefulSet, deployment]) {
    const pod = w.spec.template.spec;
    assert.is(pod.securityContext?.runAsNonRoot, true, `${w.kind} runAsNonRoot`);
    // runAsNonRoot with the image's user *name* cannot be checked by the kubelet: a numeric id it must be
    assert.ok((pod.securityContext?.runAsUser ?? 0) > 0, `${w.kind} runAsUser`);
    assert.is(pod.automountServiceAccountToken, false);
    assert.is(pod.enableServiceLinks, false, `${w.kind}: Service variables could collide with settings (COUNTER_PORT)`);
    for (const c of pod.containers) {
      assert.is(c.securityContext?.readOnlyRootFilesystem, true, `${c.name} read-only root`);
      assert.is(c.securityContext?.allowPrivilegeEscalation, false);
      assert.equal(c.securityContext?.capabilities?.drop, ['ALL']);
      assert.ok(c.volumeMounts?.some((v) => v.mountPath === '/tmp'), `${c.name}: a writable /tmp (the root filesystem is read-only)`);
      assert.ok(c.resources?.requests?.memory && c.resources.limits?.memory, `${c.name}: memory request and limit`);
    }
  }
});

// ---------------------------------------------------------------- docker-compose

test('docker-compose.yml: every service gets longer than its SHUTDOWN_TIMEOUT_MS before SIGKILL', () => {
  const compose = parseYaml(fs.readFileSync(path.join(ROOT, 'docker-compose.yml'), 'utf8')) as {
    services: Record<string, { stop_grace_period?: string; environment?: Record<string, string> }>;
  };
  const services = Object.entries(compose.services);
  assert.ok(services.length >= 4);
  for (const [name, s] of services) {
    const grace = /^(\d+)s$/.exec(s.stop_grace_period ?? '');
    assert.ok(grace, `${name}: stop_grace_period in seconds (compose's default, 10 s, is not longer than the timeout)`);
    const timeoutMs = Number(s.environment?.SHUTDOWN_TIMEOUT_MS ?? SETTINGS.SHUTDOWN_TIMEOUT_MS);
    assert.ok(Number(grace[1]) * 1000 > timeoutMs, `${name}: stop_grace_period ${grace[1]} s is not longer than SHUTDOWN_TIMEOUT_MS ${timeoutMs}`);
  }
});

test.run();
