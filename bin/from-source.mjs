// The package's bin entries run agentflow from its TypeScript source: nothing needs building first.
// Node strips the types itself (unflagged since 22.18 and 23.6), but only for files outside
// node_modules. Either failure would otherwise surface as a Node error code that does not say what
// to do: say it here.
import module from 'node:module';
import { fileURLToPath } from 'node:url';

/** Imports `entry` (a .ts module, relative to bin/), whose top level runs the command and exits. */
export async function runFromSource(command, entry) {
  const url = new URL(entry, import.meta.url);
  let problem;
  if (!process.features.typescript) {
    problem =
      `it runs from its TypeScript source, which needs Node >= 22.18 (or --experimental-strip-types); ` +
      `this is Node ${process.version}. "npm run setup" installs one in ~/.cache/agentflow/node/bin.`;
  } else if (fileURLToPath(url).split(/[\\/]/).includes('node_modules')) {
    problem =
      'it runs from its TypeScript source, which Node does not run inside node_modules; ' +
      'run it from a checkout of agentflow (npm install there, then npx agentflow).';
  }
  if (problem !== undefined) {
    process.stderr.write(`${command}: ${problem}\n`);
    process.exit(1);
  }
  // Node strips the types with a WebAssembly build of swc, loaded at the first .ts file and kept for the
  // life of the process: ~27 MiB of an agent's RSS (bench/lib/agent-rss.ts, 108 -> 81 MiB idle). The compile
  // cache keeps the stripped source, so a warm start never loads it. Where the cache cannot be written (a
  // read-only file system), Node reports that in the return value and runs on without it.
  module.enableCompileCache?.();
  await import(url.href);
}
