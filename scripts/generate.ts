// Writes every generated file from its source of truth (src/api → CRD YAML,
// proto/ → src/gen types).
// `--check` writes nothing and exits 1 if a generated file is stale.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { renderChartCrdFiles, renderCrdFiles } from '../src/api/crds.ts';
import { renderProtoTypes } from './proto-types.ts';

const USAGE = `Usage: npm run generate [-- --check]

Writes every generated file from its source of truth: the CRDs in deploy/crds/ and
charts/agentflow/templates/crds/ (from src/api/*.ts) and the gRPC types in src/gen/ (from proto/).

  --check     write nothing; list the stale files and exit 1 if any
  -h, --help  this text
`;

let check: boolean;
try {
  const { values } = parseArgs({
    options: { check: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  check = values.check ?? false;
} catch (err) {
  process.stderr.write(`generate: ${(err as Error).message}\n\n${USAGE}`);
  process.exit(2);
}

const root = join(dirname(new URL(import.meta.url).pathname), '..');
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
