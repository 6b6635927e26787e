// Writes every generated file from its source of truth (src/api → CRD YAML,
// proto/ → src/gen types).
// `--check` writes nothing and exits 1 if a generated file is stale.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { renderChartCrdFiles, renderCrdFiles } from '../src/api/crds.ts';
import { renderProtoTypes } from './proto-types.ts';

const root = join(dirname(new URL(import.meta.url).pathname), '..');
const check = process.argv.includes('--check');
const files = new Map([...renderCrdFiles(), ...renderChartCrdFiles(), ...renderProtoTypes()]);
let stale = 0;
for (const [rel, content] of files) {
  const path = join(root, rel);
  let current: string | undefined;
  try {
    current = readFileSync(path, 'utf8');
  } catch {
    current = undefined;
  }
  if (current === content) continue;
  if (check) {
    console.error(`stale: ${rel} (run npm run generate)`);
    stale++;
  } else {
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, content);
    console.log(`wrote ${rel}`);
  }
}
if (stale > 0) process.exit(1);
