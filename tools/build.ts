/**
 * The product as one plain JavaScript file: `npm run build` writes dist/counter-mesh.mjs, which
 * bin/counter-mesh.mjs runs (and `counter-mesh up` spawns) while it is newer than every source;
 * the test runner and the benchmark write their own copy to a temporary folder.
 *
 * Why: a process started through tsx spends about 0.8 s of CPU in the loader (tsx and esbuild
 * loaded twice, once on the hooks thread, and a round trip per imported module) and holds about
 * 38 MiB more RSS for as long as it runs (measured: an empty counter, 109 MiB under tsx, 71 MiB
 * bundled); transpiled file by file it still spends about 0.7 s resolving, reading and compiling
 * the few hundred files of fastify, pino, prom-client, ws and yjs. Bundled with esbuild (the
 * transform tsx itself runs, here with every import followed into one file), a counter is ready
 * in about 0.4 s of CPU. Each source module's `import.meta.url` stays its own file in src/ (as a
 * path relative to the bundle), so files found next to it, like the status page's assets, are
 * the real ones.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build, type Plugin } from 'esbuild';
import { runIfScript } from './script.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SRC = path.join(ROOT, 'src');
/** What `npm run build` writes; bin/counter-mesh.mjs looks for it there. */
export const DIST_BUNDLE = path.join(ROOT, 'dist', 'counter-mesh.mjs');

/** Puts, where a source module says `import.meta.url`, its own file's URL, relative to the bundle at `outfile`. */
function ownImportMetaUrl(outfile: string): Plugin {
  return {
    name: 'own-import-meta-url',
    setup(b) {
      b.onLoad({ filter: /\.ts$/ }, (args) => {
        if (!args.path.startsWith(SRC + path.sep)) return undefined;
        const rel = path.relative(path.dirname(outfile), args.path).split(path.sep).join('/');
        const own = `new URL(${JSON.stringify(rel)}, import.meta.url).href`;
        const source = fs.readFileSync(args.path, 'utf8');
        return { contents: source.replaceAll('import.meta.url', own), loader: 'ts' };
      });
    },
  };
}

/** Bundles src/cli/main.ts and everything it imports, packages included, into `outfile`. */
export async function bundleCli(outfile: string): Promise<void> {
  try {
    await build({
      entryPoints: [path.join(SRC, 'cli', 'main.ts')],
      outfile,
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: `node${process.versions.node}`,
      // packages written as CommonJS call require(), which an ES module has to make for itself
      banner: { js: "import { createRequire as __bundleRequire } from 'node:module'; const require = __bundleRequire(import.meta.url);" },
      plugins: [ownImportMetaUrl(outfile)],
      logLevel: 'error',
    });
  } catch (err) {
    throw new Error(`cannot bundle src/cli/main.ts into ${outfile}: ${(err as Error).message}`);
  }
}

/**
 * A bundle in a new temporary folder, for one test or benchmark run: the file's path. The folder
 * links the repository's node_modules for what is still required at run time (optional native
 * add-ons); remove it with `fs.rmSync(path.dirname(file), { recursive: true })`.
 */
export async function bundleForRun(): Promise<string> {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'cm-build-'));
  try {
    fs.writeFileSync(path.join(out, 'package.json'), JSON.stringify({ type: 'module' }));
    fs.symlinkSync(fs.realpathSync(path.join(ROOT, 'node_modules')), path.join(out, 'node_modules'), 'dir');
    const file = path.join(out, 'counter-mesh.mjs');
    await bundleCli(file);
    return file;
  } catch (err) {
    fs.rmSync(out, { recursive: true, force: true });
    throw err;
  }
}

async function main(): Promise<number> {
  const t0 = performance.now();
  await bundleCli(DIST_BUNDLE);
  const kib = Math.round(fs.statSync(DIST_BUNDLE).size / 1024);
  process.stdout.write(`${path.relative(process.cwd(), DIST_BUNDLE)}: ${kib.toLocaleString('en-US')} KiB in ${Math.round(performance.now() - t0)} ms\n`);
  return 0;
}

runIfScript(import.meta.url, main);
