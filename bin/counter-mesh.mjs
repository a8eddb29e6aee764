#!/usr/bin/env node
// Runs dist/counter-mesh.mjs (`npm run build`: the sources bundled into plain JavaScript, which
// starts faster and holds about 38 MiB less RSS) while it is newer than every source file and the
// installed packages; otherwise the TypeScript sources directly through tsx, so an edit is never
// shadowed by an old build.
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = new URL('../', import.meta.url);
const bundle = fileURLToPath(new URL('dist/counter-mesh.mjs', root));

/** The newest modification time of a file under `dir` (0 when it is missing). */
function newest(dir) {
  let t = 0;
  let entries;
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true, recursive: true });
  } catch {
    return 0;
  }
  for (const e of entries) if (e.isFile()) t = Math.max(t, fs.statSync(`${e.parentPath ?? e.path}/${e.name}`).mtimeMs);
  return t;
}

function mtime(file) {
  try {
    return fs.statSync(file).mtimeMs;
  } catch {
    return 0;
  }
}

function bundleIsFresh() {
  const built = mtime(bundle);
  if (built === 0) return false;
  const inputs = [newest(fileURLToPath(new URL('src', root))), mtime(fileURLToPath(new URL('package.json', root))), mtime(fileURLToPath(new URL('node_modules/.package-lock.json', root)))];
  return inputs.every((t) => t <= built);
}

if (bundleIsFresh()) {
  await import(new URL('dist/counter-mesh.mjs', root).href);
} else {
  const { register } = await import('tsx/esm/api');
  register();
  await import('../src/cli/main.ts');
}
