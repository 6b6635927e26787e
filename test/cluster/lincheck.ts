// Linearizability checking for key/value histories recorded by tests, through
// tools/lincheck (porcupine). The binary is cached like the control-plane
// binaries, in <cache>/bin/lincheck-<content hash>/, so an edited checker is
// rebuilt; scripts/setup.sh builds it, and this module builds it on first use
// when it is missing (go build takes seconds).
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GoTool, runCommand } from './go-tool.ts';

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

const tool = new GoTool('lincheck', (message) => new LincheckUnavailableError(message));

/** Where the checker for the current tools/lincheck sources lives (same hash as go_tool_version in scripts/versions.sh). */
export function lincheckPath(): string {
  return tool.path();
}

/** The checker's path, building it into the cache first if it is missing. */
export function ensureLincheck(): Promise<string> {
  return tool.ensure();
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
    const r = await runCommand(bin, args, { timeoutMs });
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
