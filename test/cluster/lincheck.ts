// Linearizability checking for key/value histories recorded by tests, through
// tools/lincheck (porcupine). The binary is cached like the control-plane
// binaries, in <cache>/bin/lincheck-<content hash>/, so an edited checker is
// rebuilt; scripts/setup.sh builds it, and this module builds it on first use
// when it is missing (go build takes seconds).
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { cacheDir, repoRoot } from './binaries.ts';

/**
 * One operation of a history, as tools/lincheck reads it (see its README).
 * Times are integer nanoseconds; record them relative to the test's start
 * (`Number(process.hrtime.bigint() - t0)`) so they stay exact below 2^53.
 * `return: null` or `output: null` marks an operation whose outcome is unknown.
 */
export type LinOp = LinGet | LinPut | LinCas;

interface LinTimes {
  /** Zero-based id of the caller; one caller's operations never overlap. */
  client: number;
  key: string;
  call: number;
  return: number | null;
}

export interface LinGet extends LinTimes {
  op: 'get';
  /** The value read; "" when the key was absent. */
  output: { value: string } | null;
}

export interface LinPut extends LinTimes {
  op: 'put';
  value: string;
  output: Record<string, never> | null;
}

export interface LinCas extends LinTimes {
  op: 'cas';
  /** The new value, written if the key held `expect`. */
  value: string;
  /**
   * The value the caller read before; "" for absent. The checker compares values where etcd compares
   * modRevision: write each value only once in a history, or a correct refusal reads as a violation.
   */
  expect: string;
  /** `ok`: whether the swap applied. */
  output: { ok: boolean } | null;
}

/** How long a check may run before it is killed: checking is NP-hard, so a pathological history must not hang a test. */
export const LINCHECK_TIMEOUT_MS = 60_000;

export class LincheckError extends Error {
  override name = 'LincheckError';
  /** The checker's exit status, when it ran to completion. */
  readonly exitCode: number | undefined;
  constructor(message: string, exitCode?: number) {
    super(message);
    this.exitCode = exitCode;
  }
}

/** Go is missing or the checker did not build. */
export class LincheckUnavailableError extends LincheckError {
  override name = 'LincheckUnavailableError';
}

/** The checker refused the history (exit 2); the message names the operation index and field. */
export class LincheckInputError extends LincheckError {
  override name = 'LincheckInputError';
}

const sourceDir = join(repoRoot, 'tools/lincheck');

/** Where the checker for the current tools/lincheck sources lives (same hash as lincheck_version in scripts/versions.sh). */
export function lincheckPath(): string {
  const hash = createHash('sha256');
  for (const f of ['go.mod', 'go.sum', 'main.go']) hash.update(readFileSync(join(sourceDir, f)));
  return join(cacheDir(), 'bin', `lincheck-${hash.digest('hex').slice(0, 16)}`, 'lincheck');
}

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

function run(command: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number }) {
  return new Promise<RunResult>((resolve, reject) => {
    const child = spawn(command, args, { cwd: opts.cwd, env: opts.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const timer = opts.timeoutMs
      ? setTimeout(() => {
          timedOut = true;
          child.kill('SIGKILL');
        }, opts.timeoutMs)
      : undefined;
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, timedOut });
    });
  });
}

async function build(path: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  // A unique temporary name, renamed into place: concurrent test workers may build at once.
  const tmp = `${path}.tmp.${process.pid}.${Math.random().toString(36).slice(2)}`;
  let result: RunResult;
  try {
    result = await run('go', ['build', '-o', tmp, '.'], {
      cwd: sourceDir,
      env: { ...process.env, GOFLAGS: '-mod=readonly -trimpath -buildvcs=false' },
    });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new LincheckUnavailableError(
        `lincheck is not built at ${path} and Go is not on PATH to build it: install Go >= 1.24 or run \`npm run setup\``,
      );
    }
    throw err;
  }
  if (result.code !== 0) {
    await rm(tmp, { force: true });
    throw new LincheckUnavailableError(`go build of tools/lincheck failed:\n${result.stderr.trim()}`);
  }
  await rename(tmp, path);
}

const building = new Map<string, Promise<void>>();

/** The checker's path, building it into the cache first if it is missing. */
export async function ensureLincheck(): Promise<string> {
  const path = lincheckPath();
  if (existsSync(path)) return path;
  let pending = building.get(path);
  if (!pending) {
    pending = build(path);
    building.set(path, pending);
    pending.catch(() => building.delete(path));
  }
  await pending;
  return path;
}

/**
 * Checks a key/value history for linearizability (per key). Resolves with the
 * verdict and the checker's output (the failing keys when not linearizable);
 * rejects with LincheckInputError when the history is malformed.
 */
export async function checkLinearizable(
  history: LinOp[],
  opts: { viz?: string; timeoutMs?: number } = {},
): Promise<{ linearizable: boolean; output: string }> {
  const bin = await ensureLincheck();
  const dir = await mkdtemp(join(tmpdir(), 'lincheck-'));
  try {
    const file = join(dir, 'history.json');
    await writeFile(file, JSON.stringify(history));
    const args = [...(opts.viz ? ['--viz', opts.viz] : []), file];
    const timeoutMs = opts.timeoutMs ?? LINCHECK_TIMEOUT_MS;
    const r = await run(bin, args, { timeoutMs });
    const output = `${r.stdout}${r.stderr}`.trim();
    if (r.timedOut)
      throw new LincheckError(`lincheck did not decide within ${timeoutMs} ms (${history.length} operations)`);
    if (r.code === 0 || r.code === 1) return { linearizable: r.code === 0, output };
    if (r.code === 2) throw new LincheckInputError(output, r.code);
    throw new LincheckError(`lincheck failed (exit ${r.code}): ${output}`, r.code ?? undefined);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
