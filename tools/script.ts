/** How a tool's main module runs as a script (`npm run chaos -- ...`) but not when a test imports it. */
import { fileURLToPath } from 'node:url';

/** Runs `main` with the command-line arguments when `moduleUrl` is the script node was started with; its result is the exit code. */
export function runIfScript(moduleUrl: string, main: (argv: string[]) => Promise<number>): void {
  if (!process.argv[1] || fileURLToPath(moduleUrl) !== process.argv[1]) return;
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: Error) => {
      process.stderr.write(`${err.stack ?? err.message}\n`);
      process.exitCode = 2;
    },
  );
}
