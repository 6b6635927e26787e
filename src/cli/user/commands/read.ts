// list, get, describe, output: what a workflow is and what its tasks did.
import type { TaskView } from '../../../api/data-api.ts';
import type { Workflow } from '../../../api/workflow.ts';
import { KubeApiError } from '../../../operator/kube/client.ts';
import { CliError } from '../errors.ts';
import {
  type DataFormat,
  elapsedMs,
  formatData,
  formatDuration,
  humanAge,
  oneLine,
  shortTimestamp,
  table,
} from '../format.ts';
import type { Io } from '../io.ts';
import { type Cluster, DataApiUnavailableError, WORKFLOW_RESOURCE } from '../kube.ts';
import { summaryLines, taskError, tasksFromStatus } from '../render.ts';

export type ListFormat = DataFormat | 'name' | 'wide';

/** One row of `list`: NAME PHASE PROGRESS AGE, and with -o wide STARTED DURATION MESSAGE. */
export function workflowRow(wf: Workflow, now: number, wide: boolean): string[] {
  const s = wf.status ?? {};
  const created = wf.metadata?.creationTimestamp;
  const row = [
    wf.metadata?.name ?? '',
    s.phase ?? '',
    s.progressSummary ?? (s.progress ? `${s.progress.succeeded}/${s.progress.total}` : ''),
    created ? humanAge(now - Date.parse(created)) : '',
  ];
  if (wide) {
    const d = elapsedMs(s.startedAt, s.finishedAt, now);
    row.push(shortTimestamp(s.startedAt), d === undefined ? '' : formatDuration(d), oneLine(s.message));
  }
  return row;
}

export function workflowTable(items: readonly Workflow[], opts: { now: number; wide: boolean; namespaces: boolean }) {
  const headers = ['NAME', 'PHASE', 'PROGRESS', 'AGE', ...(opts.wide ? ['STARTED', 'DURATION', 'MESSAGE'] : [])];
  const rows = items.map((wf) => {
    const row = workflowRow(wf, opts.now, opts.wide);
    return opts.namespaces ? [wf.metadata?.namespace ?? '', ...row] : row;
  });
  return table(opts.namespaces ? ['NAMESPACE', ...headers] : headers, rows);
}

export async function list(cluster: Cluster, io: Io, o: { allNamespaces?: boolean; output?: ListFormat }) {
  const list = await cluster.listWorkflows(o.allNamespaces ? undefined : cluster.namespace);
  if (o.output === 'json' || o.output === 'yaml') {
    io.out(formatData(list, o.output));
    return 0;
  }
  if (o.output === 'name') {
    for (const wf of list.items) io.out(`${WORKFLOW_RESOURCE}/${wf.metadata?.name}\n`);
    return 0;
  }
  if (list.items.length === 0) {
    io.err(o.allNamespaces ? 'No resources found\n' : `No resources found in ${cluster.namespace} namespace.\n`);
    return 0;
  }
  io.out(workflowTable(list.items, { now: Date.now(), wide: o.output === 'wide', namespaces: !!o.allNamespaces }));
  return 0;
}

export async function get(cluster: Cluster, io: Io, name: string, o: { output?: DataFormat | 'name' }) {
  const wf = await cluster.getWorkflow(name);
  if (o.output === 'json' || o.output === 'yaml') io.out(formatData(wf, o.output));
  else if (o.output === 'name') io.out(`${WORKFLOW_RESOURCE}/${wf.metadata?.name}\n`);
  else io.out(`${summaryLines(wf, { now: Date.now(), color: io.color }).join('\n')}\n`);
  return 0;
}

/** The data API's task table, or (with a note on stderr) the bounded status.tasks when it cannot answer. */
async function tasksOf(cluster: Cluster, io: Io, wf: Workflow): Promise<TaskView[]> {
  try {
    return (await cluster.tasks(wf.metadata?.name ?? '')).items;
  } catch (err) {
    if (err instanceof DataApiUnavailableError) {
      io.err(`warning: ${err.message}; showing the Workflow's status.tasks, which has no agents or times\n`);
      return tasksFromStatus(wf);
    }
    // The Workflow exists but the operator has no run of it (yet): what its status says is all there is.
    if (err instanceof KubeApiError && err.status === 404) return tasksFromStatus(wf);
    throw err;
  }
}

export const TASK_COLUMNS = ['TASK', 'PHASE', 'ATTEMPTS', 'AGENT', 'NODE', 'START', 'DURATION', 'ERROR'] as const;

export function taskTable(tasks: readonly TaskView[], now: number): string {
  return table(
    TASK_COLUMNS,
    tasks.map((t) => {
      const d = t.startedAt ? elapsedMs(t.startedAt, t.finishedAt, now) : t.durationMs;
      return [
        t.name,
        t.phase,
        String(t.attempt),
        t.agent ?? '',
        t.node ?? '',
        shortTimestamp(t.startedAt),
        d === undefined ? '' : formatDuration(d),
        t.phase === 'Failed' || t.phase === 'Retrying' ? (taskError(t) ?? '') : '',
      ];
    }),
  );
}

export async function describe(cluster: Cluster, io: Io, name: string) {
  const wf = await cluster.getWorkflow(name);
  const tasks = await tasksOf(cluster, io, wf);
  const now = Date.now();
  const head = summaryLines(wf, { now, color: io.color }).join('\n');
  io.out(`${head}\n\nTasks:\n${tasks.length ? taskTable(tasks, now) : '  (none yet)\n'}`);
  return 0;
}

export async function output(cluster: Cluster, io: Io, name: string, task: string, o: { output?: DataFormat }) {
  const list = await cluster.tasks(name, task);
  const items = list.items;
  const one = items.length === 1 ? items[0] : items.find((t) => t.name === task);
  if (one) {
    if (one.output === undefined) {
      throw new CliError(
        `task ${one.name} of workflow ${name} has no output${one.phase === 'Succeeded' ? '' : ` (it is ${one.phase})`}`,
      );
    }
    io.out(formatData(one.output, o.output ?? 'json'));
    return 0;
  }
  if (items.length === 0) throw new CliError(`workflow ${name} has no task ${JSON.stringify(task)}`);
  // A forEach template: every instance's output, by instance name.
  io.out(formatData(Object.fromEntries(items.map((t) => [t.name, t.output ?? null])), o.output ?? 'json'));
  return 0;
}
