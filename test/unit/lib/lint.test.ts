// The lint gate refuses floating promises (issue 13: a promise nobody awaits or
// catches turned an etcd error into an unhandled rejection that ended the leader).
// Lints probe files with the repository's own biome.json, in a directory of their own.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const biome = resolve('node_modules/.bin/biome');
const dir = mkdtempSync(join(tmpdir(), 'agentflow-lint-'));
const config = JSON.parse(readFileSync('biome.json', 'utf8')) as Record<string, unknown>;
delete config.$schema;
config.vcs = { enabled: false };
writeFileSync(join(dir, 'biome.json'), JSON.stringify(config));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function lint(name: string, source: string): { code: number | null; out: string } {
  writeFileSync(join(dir, name), source);
  const r = spawnSync(biome, ['lint', name], { cwd: dir, encoding: 'utf8' });
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

const work = 'async function work(): Promise<number> {\n  return 1;\n}\n';

describe('lint gate', () => {
  it('refuses a promise that is neither awaited, returned, voided nor caught', () => {
    const r = lint('floating.ts', `${work}export function run(): void {\n  work();\n}\n`);
    expect(r.out).toContain('lint/nursery/noFloatingPromises');
    expect(r.code).not.toBe(0);
  });

  it('accepts the same call when its failure is handled', () => {
    const r = lint('handled.ts', `${work}export function run(): void {\n  work().catch(() => undefined);\n}\n`);
    expect(r.out).not.toContain('noFloatingPromises');
    expect(r.code).toBe(0);
  });
});
