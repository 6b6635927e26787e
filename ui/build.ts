// Builds the web UI: ui/src (TypeScript + preact) bundled by esbuild into
// ui/dist, with content-hashed file names (cached for good by the data API,
// src/operator/data-api/ui-assets.ts) and an index.html that loads them by
// relative URLs: the API server's proxy rewrites absolute ones in HTML to its own
// address (k8s.io/apimachinery/pkg/util/proxy), and `agentflow ui` serves the
// page at / where /apis/... would not resolve. `npm run build:ui`; scripts/setup.sh runs it
// when ui/dist is missing or older than its sources.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { UI_CONFIG_PATH } from '../src/cli/ui-proxy.ts';

const root = dirname(fileURLToPath(import.meta.url));
const out = join(root, 'dist');

const started = Date.now();
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const result = await build({
  entryPoints: [join(root, 'src/main.tsx')],
  outdir: out,
  entryNames: '[name]-[hash]',
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: ['chrome111', 'firefox115', 'safari16.4'],
  jsx: 'automatic',
  jsxImportSource: 'preact',
  minify: true,
  sourcemap: 'linked',
  legalComments: 'linked',
  define: { UI_CONFIG_PATH: JSON.stringify(UI_CONFIG_PATH) },
  metafile: true,
  logLevel: 'warning',
});
const outputs = Object.keys(result.metafile.outputs).map((p) => basename(p));
const pick = (ext: string) => {
  const file = outputs.find((f) => f.endsWith(ext));
  if (!file) throw new Error(`esbuild wrote no ${ext} file (it wrote: ${outputs.join(', ')})`);
  return file;
};
const html = readFileSync(join(root, 'index.html'), 'utf8').replace('%JS%', pick('.js')).replace('%CSS%', pick('.css'));
writeFileSync(join(out, 'index.html'), html);
const bytes = Object.values(result.metafile.outputs).reduce((n, o) => n + o.bytes, 0);
console.log(
  `ui: built ui/dist (${outputs.length + 1} files, ${Math.round(bytes / 1024)} KiB) in ${Date.now() - started} ms`,
);
