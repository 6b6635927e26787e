// Prometheus' own parser and linter of the text exposition format, through
// tools/promlint (client_golang's testutil/promlint on expfmt, plus a rule
// against unit-less histograms). Cached like tools/lincheck, in
// <cache>/bin/promlint-<content hash>/; scripts/setup.sh builds it, and this
// module builds it on first use when it is missing (go build takes seconds).
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { cacheDir, repoRoot } from './binaries.ts';

/** Go is missing, the linter did not build, or the input did not parse. */
export class PromlintError extends Error {
  override name = 'PromlintError';
}

const sourceDir = join(repoRoot, 'tools/promlint');

/** Where the linter for the current tools/promlint sources lives (same hash as promlint_version in scripts/versions.sh). */
export function promlintPath(): string {
  const hash = createHash('sha256');
  for (const f of ['go.mod', 'go.sum', 'main.go']) hash.update(readFileSync(join(sourceDir, f)));
  return join(cacheDir(), 'bin', `promlint-${hash.digest('hex').slice(0, 16)}`, 'promlint');
}

function run(
  command: string,
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv; input?: string },
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: opts.cwd, env: opts.env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(opts.input ?? '');
  });
}

async function build(path: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  // A unique temporary name, renamed into place: concurrent test workers may build at once.
  const tmp = `${path}.tmp.${process.pid}.${Math.random().toString(36).slice(2)}`;
  let result: Awaited<ReturnType<typeof run>>;
  try {
    result = await run('go', ['build', '-o', tmp, '.'], {
      cwd: sourceDir,
      env: { ...process.env, GOFLAGS: '-mod=readonly -trimpath -buildvcs=false' },
    });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new PromlintError(
        `promlint is not built at ${path} and Go is not on PATH to build it: install Go >= 1.24 or run \`npm run setup\``,
      );
    }
    throw err;
  }
  if (result.code !== 0) {
    await rm(tmp, { force: true });
    throw new PromlintError(`go build of tools/promlint failed:\n${result.stderr.trim()}`);
  }
  await rename(tmp, path);
}

let building: Promise<void> | undefined;

/** The linter's path, building it into the cache first if it is missing. */
export async function ensurePromlint(): Promise<string> {
  const path = promlintPath();
  if (existsSync(path)) return path;
  building ??= build(path).finally(() => {
    building = undefined;
  });
  await building;
  return path;
}

/**
 * Parses `exposition` (text format 0.0.4) and lints it. Resolves with the problems found, one
 * `metric: problem` string each (empty: clean); rejects with PromlintError when it does not parse.
 */
export async function lintExposition(exposition: string): Promise<string[]> {
  const r = await run(await ensurePromlint(), [], { input: exposition });
  if (r.code === 0 || r.code === 1) return r.stdout.split('\n').filter(Boolean);
  throw new PromlintError(`promlint (exit ${r.code}): ${r.stderr.trim()}`);
}

/** One sample line of an exposition: `name{label="value",…} number`. */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/**
 * The sample lines of an exposition, for reading values in tests (lint it first: this reads
 * well-formed text only, without timestamps or exemplars).
 */
export function parseSamples(exposition: string): Sample[] {
  const out: Sample[] = [];
  for (const line of exposition.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m?.[1] || m[3] === undefined) throw new PromlintError(`not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      if (l[1]) labels[l[1]] = (l[2] ?? '').replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
    }
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

/** The sum of the samples named `name` whose labels include `labels`; throws when there is none. */
export function sumOf(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const hits = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  if (hits.length === 0) throw new PromlintError(`no sample ${name}${JSON.stringify(labels)} in the exposition`);
  return hits.reduce((sum, s) => sum + s.value, 0);
}
