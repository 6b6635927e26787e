// Prometheus' own parser and linter of the text exposition format, through
// tools/promlint (client_golang's testutil/promlint on expfmt, plus a rule
// against unit-less histograms). Cached like tools/lincheck, in
// <cache>/bin/promlint-<content hash>/; scripts/setup.sh builds it, and this
// module builds it on first use when it is missing (go build takes seconds).
import { GoTool, runCommand } from './go-tool.ts';

/** Go is missing, the linter did not build, or the input did not parse. */
export class PromlintError extends Error {
  override name = 'PromlintError';
}

const tool = new GoTool('promlint', (message) => new PromlintError(message));

/** Where the linter for the current tools/promlint sources lives (same hash as go_tool_version in scripts/versions.sh). */
export function promlintPath(): string {
  return tool.path();
}

/** The linter's path, building it into the cache first if it is missing. */
export function ensurePromlint(): Promise<string> {
  return tool.ensure();
}

/**
 * Parses `exposition` (text format 0.0.4) and lints it. Resolves with the problems found, one
 * `metric: problem` string each (empty: clean); rejects with PromlintError when it does not parse.
 */
export async function lintExposition(exposition: string): Promise<string[]> {
  const r = await runCommand(await ensurePromlint(), [], { input: exposition });
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
