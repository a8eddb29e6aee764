/** File helpers of the log store: exclusive durable creation, atomic replacement, error codes. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createFile, errorCode, ignoreCode, replaceFile, syncDir } from '../src/counter/storage/files.ts';
import { tempDirs } from './support/storage.ts';

const dirs = tempDirs('cm-files-');
test.after(() => dirs.removeAll());

test('createFile writes exactly the content with mode 0600, open for read and write, and never overwrites', async () => {
  const dir = dirs.make();
  const path = join(dir, 'a');
  const fh = await createFile(path, Buffer.from('hello'));
  await fh.write(Buffer.from('!'), 0, 1, 5);
  await fh.close();
  assert.is(readFileSync(path, 'utf8'), 'hello!');
  assert.is(statSync(path).mode & 0o777, 0o600);
  try {
    await createFile(path, Buffer.from('other'));
    assert.unreachable('overwrote an existing file');
  } catch (err) {
    assert.is(errorCode(err), 'EEXIST');
  }
  assert.is(readFileSync(path, 'utf8'), 'hello!');
});

test('replaceFile swaps the content in whole and leaves no temporary file', async () => {
  const dir = dirs.make();
  const path = join(dir, 'snap');
  writeFileSync(path, 'old');
  await replaceFile(path, `${path}.tmp`, Buffer.from('new content'));
  assert.is(readFileSync(path, 'utf8'), 'new content');
  assert.is(statSync(path).mode & 0o777, 0o600);
  assert.equal(readdirSync(dir), ['snap']);
});

test('replaceFile that fails at the rename keeps the old target and removes the temporary file', async () => {
  const dir = dirs.make();
  const target = join(dir, 'busy');
  mkdirSync(target);
  writeFileSync(join(target, 'inside'), 'x'); // renaming a file over a non-empty directory fails
  try {
    await replaceFile(target, `${target}.tmp`, Buffer.from('new'));
    assert.unreachable('replaced a directory');
  } catch (err) {
    assert.ok(['EISDIR', 'ENOTEMPTY', 'EEXIST'].includes(errorCode(err) ?? ''), String(err));
  }
  assert.ok(statSync(target).isDirectory());
  assert.not.ok(existsSync(`${target}.tmp`));
});

test('syncDir syncs an existing directory and rejects a missing one', async () => {
  const dir = dirs.make();
  await syncDir(dir);
  try {
    await syncDir(join(dir, 'missing'));
    assert.unreachable('synced a missing directory');
  } catch (err) {
    assert.is(errorCode(err), 'ENOENT');
  }
});

test('errorCode reads system error codes only; ignoreCode swallows one code and rethrows the rest', () => {
  assert.is(errorCode(Object.assign(new Error('x'), { code: 'ENOENT' })), 'ENOENT');
  assert.is(errorCode(new Error('no code')), undefined);
  assert.is(errorCode({ code: 42 }), undefined);
  assert.is(errorCode(null), undefined);
  const ignore = ignoreCode('ENOENT');
  ignore(Object.assign(new Error('gone'), { code: 'ENOENT' }));
  assert.throws(() => ignore(Object.assign(new Error('denied'), { code: 'EACCES' })), /denied/);
});

test.run();
