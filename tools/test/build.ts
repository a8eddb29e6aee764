/**
 * The product as one plain JavaScript file, for the processes a test run starts.
 *
 * A process started through tsx spends about 0.8 s of CPU in the loader (tsx and esbuild loaded
 * twice, once on the hooks thread, and a round trip per imported module) before our code runs;
 * transpiled file by file it still spends about 0.7 s, mostly Node resolving, reading and
 * compiling the few hundred files of fastify, pino, prom-client, ws and yjs one by one. The suite
 * starts a few hundred counters and coordinators on two cores. Bundled once per run with esbuild
 * (the transform tsx itself runs, here with every import followed into one file), a counter is
 * ready in about 0.4 s of CPU. Each source module keeps its own `import.meta.url` (its file in
 * the repository), so files found next to it, like the status page's assets, are the real ones.
 * The CLI tests and `counter-mesh up` still run through tsx, as users do.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { build, type Plugin } from 'esbuild';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const SRC = path.join(ROOT, 'src');

/** Puts each source module's own file URL where it says `import.meta.url` (in a bundle, that would be the bundle's). */
const ownImportMetaUrl: Plugin = {
  name: 'own-import-meta-url',
  setup(b) {
    b.onLoad({ filter: /\.ts$/ }, (args) => {
      if (!args.path.startsWith(SRC + path.sep)) return undefined;
      const source = fs.readFileSync(args.path, 'utf8');
      return { contents: source.replaceAll('import.meta.url', JSON.stringify(pathToFileURL(args.path).href)), loader: 'ts' };
    });
  },
};

/**
 * Writes the CLI (src/cli/main.ts and everything it imports, packages included) bundled into
 * `src/cli/main.js` of a new temporary folder and returns the folder. The folder links the
 * repository's node_modules for what is still required at run time (optional native add-ons).
 */
export async function buildSources(): Promise<string> {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'cm-build-'));
  try {
    fs.writeFileSync(path.join(out, 'package.json'), JSON.stringify({ type: 'module' }));
    fs.symlinkSync(fs.realpathSync(path.join(ROOT, 'node_modules')), path.join(out, 'node_modules'), 'dir');
    await build({
      entryPoints: [path.join(SRC, 'cli', 'main.ts')],
      outfile: path.join(out, 'src', 'cli', 'main.js'),
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: `node${process.versions.node}`,
      // packages written as CommonJS call require(), which an ES module has to make for itself
      banner: { js: "import { createRequire as __testBuildRequire } from 'node:module'; const require = __testBuildRequire(import.meta.url);" },
      plugins: [ownImportMetaUrl],
      logLevel: 'error',
    });
    return out;
  } catch (err) {
    fs.rmSync(out, { recursive: true, force: true });
    throw new Error(`cannot bundle src/cli/main.ts for the test run: ${(err as Error).message}`);
  }
}
