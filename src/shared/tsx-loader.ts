import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

/**
 * tsx's loader as an absolute URL for `node --import`: a bare `--import tsx` is looked up from the
 * working directory, so children would not start when the CLI runs from elsewhere.
 * (Resolved through package.json because import.meta.resolve is missing under tsx's CJS hook.)
 */
export function tsxLoaderUrl(): string {
  const pkg = createRequire(import.meta.url).resolve('tsx/package.json');
  return pathToFileURL(path.join(path.dirname(pkg), 'dist', 'loader.mjs')).href;
}
