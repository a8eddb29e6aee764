/**
 * Shards inside one counter: DATA_DIR's layout (mesh.json, one log store per shard), the refusal
 * of a DATA_DIR made with another SHARDS, the move of a DATA_DIR written before shards into
 * shards, and the shard-framed messages between counters.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import * as Y from 'yjs';
import * as syncProtocol from 'y-protocols/sync';
import { Counter } from '../src/counter/counter.ts';
import { GSet, LOCAL } from '../src/counter/gset.ts';
import { DataDirFormatError, ShardDirs } from '../src/counter/storage/shard-dirs.ts';
import { counterConfig } from '../src/shared/config.ts';
import { shardOf } from '../src/shared/placement.ts';
import { MessageType, ProtocolError, readMessage, writeHello, writeShardReplicate, writeShardSync } from '../src/protocol/messages.ts';
import { openStore, tempDirs } from './support/storage.ts';

const silent = pino({ level: 'silent' });
const dirs = tempDirs('cm-shards-');
test.after(() => dirs.removeAll());

function config(dir: string, extra: Record<string, string> = {}) {
  return counterConfig({ LOG_LEVEL: 'silent', HOST: '127.0.0.1', COUNTER_PORT: '0', COUNTER_ID: 'solo', DATA_DIR: dir, METRICS: 'off', ...extra });
}

test('a new DATA_DIR records its SHARDS; another SHARDS is refused naming both values, and nothing is changed', async () => {
  const dir = dirs.make();
  const made = await ShardDirs.open(dir, 64);
  assert.is(made.legacy, false);
  assert.equal(JSON.parse(readFileSync(join(dir, 'mesh.json'), 'utf8')), { format: 2, shards: 64 });
  const before = readFileSync(join(dir, 'mesh.json'), 'utf8');
  try {
    await ShardDirs.open(dir, 32);
    assert.unreachable('opened with another SHARDS');
  } catch (err) {
    assert.instance(err, DataDirFormatError);
    assert.match((err as Error).message, 'SHARDS=64');
    assert.match((err as Error).message, 'SHARDS=32');
  }
  assert.is(readFileSync(join(dir, 'mesh.json'), 'utf8'), before, 'mesh.json unchanged');
  // the counter refuses to start on it, and releases its lock (a second try gets the same answer)
  for (let i = 0; i < 2; i++) {
    const err = await Counter.start(config(dir, { SHARDS: '16' }), silent).then(
      () => null,
      (e: Error) => e,
    );
    assert.ok(err, 'the counter refused to start');
    assert.match(err!.message, /SHARDS=64 but this counter runs with SHARDS=16/);
  }
});

test('a damaged mesh.json is refused with what to do', async () => {
  const dir = dirs.make();
  await ShardDirs.open(dir, 8);
  const fs = await import('node:fs');
  fs.writeFileSync(join(dir, 'mesh.json'), '{"format": 2, "sha');
  await ShardDirs.open(dir, 8).then(
    () => assert.unreachable('opened a damaged mesh.json'),
    (err: Error) => assert.match(err.message, /damaged mesh\.json.*restore it, or give this counter an empty DATA_DIR/),
  );
});

test('each shard is its own log store under shards/<id>, and a tenant lives in the shard shardOf names', async () => {
  const dir = dirs.make();
  const counter = await Counter.start(config(dir, { SHARDS: '8' }), silent);
  try {
    const items = Array.from({ length: 200 }, (_, i) => ({ tenant: `t${i % 20}`, id: `i${i}` }));
    assert.is(await counter.add(items), 1);
    for (let t = 0; t < 20; t++) {
      assert.is(counter.count(`t${t}`), 10);
      assert.is(counter.shardOf(`t${t}`), shardOf(`t${t}`, 8));
    }
    assert.is(counter.items, 200);
  } finally {
    await counter.close();
  }
  assert.equal(readdirSync(join(dir, 'shards')).map(Number).sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6, 7]);
  // each shard's log holds its own tenants' items and no other's
  for (let s = 0; s < 8; s++) {
    const { store, recovered } = await openStore(join(dir, 'shards', String(s)));
    await store.close();
    const g = new GSet(silent);
    g.applyUpdates(recovered.snapshot ? [recovered.snapshot, ...recovered.updates] : recovered.updates, LOCAL);
    for (let t = 0; t < 20; t++) assert.is(g.count(`t${t}`), shardOf(`t${t}`, 8) === s ? 10 : 0, `shard ${s} holds t${t} only if it is its shard`);
    g.close();
  }
  // and a restart reads them all back
  const again = await Counter.start(config(dir, { SHARDS: '8' }), silent);
  try {
    for (let t = 0; t < 20; t++) assert.is(again.count(`t${t}`), 10);
  } finally {
    await again.close();
  }
});

test('a DATA_DIR written before shards is moved into shards on first start, then its old files are gone', async () => {
  const dir = dirs.make();
  // the old format: one log store at the top of DATA_DIR, one GSet document
  const old = new GSet(silent);
  const updates: Uint8Array[] = [];
  for (let b = 0; b < 5; b++) {
    const u = old.add(Array.from({ length: 100 }, (_, i) => ({ tenant: `old${i % 7}`, id: `b${b}-${i}` })));
    if (u) updates.push(u);
  }
  const expected = new Map<string, number>();
  for (let t = 0; t < 7; t++) expected.set(`old${t}`, old.count(`old${t}`));
  old.close();
  const { store } = await openStore(dir);
  for (const u of updates) await store.append(u);
  await store.compact(() => updates[0]!); // a snapshot and logs after it, as a running counter leaves them
  for (const u of updates.slice(1)) await store.append(u);
  await store.close();
  assert.ok(existsSync(join(dir, 'snapshot.ydoc')));

  const counter = await Counter.start(config(dir, { SHARDS: '4' }), silent);
  try {
    for (const [tenant, n] of expected) assert.is(counter.count(tenant), n, `${tenant} after the move`);
  } finally {
    await counter.close();
  }
  const top = readdirSync(dir);
  assert.not.ok(top.some((f) => f === 'snapshot.ydoc' || /^log-\d+\.ylog$/.test(f)), `old files deleted: ${top.join(', ')}`);
  // a second start finds only shards, with the same counts
  const again = await Counter.start(config(dir, { SHARDS: '4' }), silent);
  try {
    for (const [tenant, n] of expected) assert.is(again.count(tenant), n, `${tenant} after a restart`);
  } finally {
    await again.close();
  }
});

test('shard messages round trip; a hello names SHARDS; shard ids past the protocol bound are refused', () => {
  const sync = readMessage(writeShardSync(37, (e) => syncProtocol.writeSyncStep1(e, new Y.Doc())));
  assert.is(sync.type, MessageType.ShardSync);
  if (sync.type === MessageType.ShardSync) assert.is(sync.shard, 37);
  const rep = readMessage(writeShardReplicate(9, 300, Uint8Array.of(0, 0)));
  assert.equal(rep, { type: MessageType.ShardReplicate, ackId: 9, shard: 300, update: Uint8Array.of(0, 0) });
  const hello = readMessage(writeHello({ role: 'peer', nodeId: 'a', address: 'h:1', shards: 64 }));
  assert.equal(hello, { type: MessageType.Hello, hello: { role: 'peer', nodeId: 'a', address: 'h:1', shards: 64 } });
  const coordinator = readMessage(writeHello({ role: 'coordinator', nodeId: 'c', address: '' }));
  assert.equal(coordinator, { type: MessageType.Hello, hello: { role: 'coordinator', nodeId: 'c', address: '' } });
  const refused = (frame: Uint8Array, why: RegExp) => assert.throws(() => readMessage(frame), (err: Error) => err instanceof ProtocolError && why.test(err.message));
  refused(writeShardReplicate(1, 4096, Uint8Array.of(0, 0)), /shard 4096 does not exist/);
  refused(writeHello({ role: 'peer', nodeId: 'a', address: 'h:1', shards: 0 }), /names 0 shards/);
  refused(writeHello({ role: 'peer', nodeId: 'a', address: 'h:1', shards: 5000 }), /names 5000 shards/);
});

test.run();
