/**
 * The product's sources as plain JavaScript, for the processes a test run starts.
 *
 * A process started through tsx spends about 0.8 s of CPU in the loader (tsx and esbuild loaded
 * twice, once on the hooks thread, and a round trip per imported module) before our code runs:
 * about half of what a counter needs to become ready. The suite starts a few hundred of them on
 * two cores. Transpiling src/ once per run, file by file as tsx does (types stripped, nothing
 * bundled, relative `.ts` imports pointed at the `.js` files), lets test meshes start plain
 * `node main.js`. The CLI tests and `counter-mesh up` still run through tsx, as users do.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** The same output settings as tsconfig.json, for one file at a time. */
const OPTIONS: ts.CompilerOptions = {
  target: ts.ScriptTarget.ES2022,
  module: ts.ModuleKind.ESNext,
  rewriteRelativeImportExtensions: true,
  allowImportingTsExtensions: true,
  esModuleInterop: true,
};

/**
 * Writes src/ transpiled into a new temporary folder (other files, like the status page's assets,
 * copied as they are) and returns the folder; `src/cli/main.js` in it is the CLI.
 * The folder links the repository's node_modules, so imports of packages resolve as before.
 */
export function buildSources(): string {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'cm-build-'));
  fs.writeFileSync(path.join(out, 'package.json'), JSON.stringify({ type: 'module' }));
  fs.symlinkSync(fs.realpathSync(path.join(ROOT, 'node_modules')), path.join(out, 'node_modules'), 'dir');
  const walk = (rel: string) => {
    fs.mkdirSync(path.join(out, rel), { recursive: true });
    for (const entry of fs.readdirSync(path.join(ROOT, rel), { withFileTypes: true })) {
      const from = path.join(rel, entry.name);
      if (entry.isDirectory()) walk(from);
      else if (entry.name.endsWith('.ts')) {
        const source = fs.readFileSync(path.join(ROOT, from), 'utf8');
        const { outputText, diagnostics } = ts.transpileModule(source, { compilerOptions: OPTIONS, fileName: from, reportDiagnostics: true });
        if (diagnostics?.length) throw new Error(`cannot transpile ${from}: ${ts.flattenDiagnosticMessageText(diagnostics[0]!.messageText, '\n')}`);
        fs.writeFileSync(path.join(out, from.replace(/\.ts$/, '.js')), outputText);
      } else fs.copyFileSync(path.join(ROOT, from), path.join(out, from));
    }
  };
  walk('src');
  return out;
}
