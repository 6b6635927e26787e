// state get|put|delete|list|watch: the shared state agents read and write (ctx.state), scoped to a
// workflow (--workflow), a pool (--pool) or the namespace (neither), through the data API: reads
// take `get` on that Workflow or AgentPool, writes `update` (the namespace's: on agentpools).
import { createInterface } from 'node:readline';
import type { StateEvent, StateItem } from '../../../api/data-api.ts';
import { UsageError } from '../errors.ts';
import { type DataFormat, formatData, table } from '../format.ts';
import type { Io } from '../io.ts';
import type { CliStateScope, Cluster } from '../kube.ts';

export interface ScopeFlags {
  workflow?: string;
  pool?: string;
}

export function scopeOf(f: ScopeFlags): CliStateScope {
  if (f.workflow !== undefined && f.pool !== undefined) {
    throw new UsageError("--workflow and --pool: give one of them (or neither, for the namespace's state)");
  }
  if (f.workflow !== undefined) return { kind: 'workflow', name: f.workflow };
  if (f.pool !== undefined) return { kind: 'pool', name: f.pool };
  return { kind: 'namespace' };
}

/** A value from the command line: JSON when it parses as JSON, else the text itself (as a JSON string). */
export function parseValue(raw: string): unknown {
  try {
    return JSON.parse(raw);
  } catch {
    return raw;
  }
}

const show = (v: unknown) => (typeof v === 'string' ? v : JSON.stringify(v));

export async function stateGet(c: Cluster, io: Io, scope: CliStateScope, key: string, o: { output?: DataFormat }) {
  const item = await c.stateGet(scope, key);
  io.out(o.output ? formatData(item, o.output) : `${JSON.stringify(item.value, null, 2)}\n`);
  return 0;
}

export async function statePut(
  c: Cluster,
  io: Io,
  scope: CliStateScope,
  key: string,
  raw: string,
  o: { expectedRevision?: number },
) {
  const item: StateItem = await c.statePut(scope, key, parseValue(raw), o.expectedRevision);
  io.out(`state "${key}" written (revision ${item.modRevision}, version ${item.version})\n`);
  return 0;
}

export async function stateDelete(
  c: Cluster,
  io: Io,
  scope: CliStateScope,
  key: string,
  o: { expectedRevision?: number },
) {
  await c.stateDelete(scope, key, o.expectedRevision);
  io.out(`state "${key}" deleted\n`);
  return 0;
}

export async function stateList(c: Cluster, io: Io, scope: CliStateScope, o: { prefix?: string; output?: DataFormat }) {
  const list = await c.stateList(scope, o.prefix);
  if (o.output) io.out(formatData(list, o.output));
  else if (list.items.length === 0) io.err(`No state${o.prefix ? ` under "${o.prefix}"` : ''}.\n`);
  else
    io.out(
      table(
        ['KEY', 'REVISION', 'VERSION', 'VALUE'],
        list.items.map((i) => [i.key, String(i.modRevision), String(i.version), show(i.value)]),
      ),
    );
  return 0;
}

/**
 * Prints what is there now, then each change as it happens (`PUT key value` / `DELETE key`, or -o json
 * lines) until interrupted: as `kubectl get -w`, the changes follow from the revision the listing read,
 * so none falls between the two.
 */
export async function stateWatch(
  c: Cluster,
  io: Io,
  scope: CliStateScope,
  q: { key?: string; prefix?: string; output?: 'json' },
  signal?: AbortSignal,
) {
  const print = (e: StateEvent) =>
    io.out(
      q.output === 'json'
        ? `${JSON.stringify(e)}\n`
        : e.type === 'PUT'
          ? `PUT ${e.key} ${show(e.value)}\n`
          : `DELETE ${e.key}\n`,
    );
  const now = await c.stateList(scope, q.key ?? q.prefix);
  for (const i of now.items) {
    if (q.key === undefined || i.key === q.key)
      print({ type: 'PUT', key: i.key, value: i.value, modRevision: i.modRevision });
  }
  const res = await c.stateWatch(scope, { ...q, resourceVersion: now.metadata.revision }, signal);
  const lines = createInterface({ input: res, crlfDelay: Number.POSITIVE_INFINITY });
  try {
    for await (const line of lines) {
      if (!line.trim()) continue;
      print(JSON.parse(line) as StateEvent);
    }
  } catch (err) {
    if (!signal?.aborted) throw err;
  }
  return 0;
}

export async function auditVerify(c: Cluster, io: Io, workflow: string, o: { output?: DataFormat }) {
  const v = await c.audit(workflow);
  if (o.output) io.out(formatData(v, o.output));
  else if (v.ok)
    io.out(`audit log of workflow ${workflow}: ${v.entries} entries, chain intact (head ${v.head?.slice(0, 12)})\n`);
  else {
    io.out(`audit log of workflow ${workflow}: ${v.entries} entries, ${v.problems.length} problems\n`);
    for (const p of v.problems) io.out(`  entry ${p.seq}: ${p.problem}\n`);
  }
  return v.ok ? 0 : 1;
}
