// What `watch` (and `get`, `describe`) draw: a workflow's summary, its tasks as
// a tree in DAG order, and the line-per-change log for output that is not a
// terminal. Pure functions of a snapshot and the time: the tests call them.
import type { TaskView } from '../../api/data-api.ts';
import {
  DEFAULT_BUDGET_ACTION,
  DEFAULT_RETRY,
  runSpecOf,
  type Workflow,
  type WorkflowTask,
  workflowTasks,
} from '../../api/workflow.ts';
import { formatCount, formatUsd, toNanos } from '../../lib/usage.ts';
import { clockTime, elapsedMs, formatDuration, oneLine } from './format.ts';

/** One look at a workflow: the object and its task instances. */
export interface Snapshot {
  workflow: Workflow;
  tasks: TaskView[];
  /** 'api': the data API's table; 'status': the Workflow's bounded status.tasks (the data API is not available). */
  source: 'api' | 'status';
}

export const FINAL_WORKFLOW_PHASES: ReadonlySet<string> = new Set(['Succeeded', 'Failed', 'Cancelled']);
export const FINAL_TASK_PHASES: ReadonlySet<string> = new Set(['Succeeded', 'Failed', 'Skipped', 'Cancelled']);
/** Task phases in the order their counts are listed. */
const PHASE_ORDER = [
  'Running',
  'Waiting',
  'Retrying',
  'Queued',
  'Pending',
  'Succeeded',
  'Failed',
  'Cancelled',
  'Skipped',
];
/** Which instances of a large group are worth a row: trouble first, then what runs, then the rest. */
const SHOW_FIRST: Record<string, number> = {
  Failed: 0,
  Waiting: 1,
  Retrying: 1,
  Running: 2,
  Queued: 3,
  Cancelled: 4,
  Pending: 5,
  Succeeded: 6,
  Skipped: 7,
};
/** Instances (or spawned children) shown per group before the rest is summed up in one line. */
export const GROUP_LIMIT = 10;

type Style = 'green' | 'red' | 'yellow' | 'cyan' | 'magenta' | 'dim' | 'bold';
const SGR: Record<Style, [number, number]> = {
  green: [32, 39],
  red: [31, 39],
  yellow: [33, 39],
  cyan: [36, 39],
  magenta: [35, 39],
  dim: [2, 22],
  bold: [1, 22],
};
const PHASE_STYLE: Record<string, Style> = {
  Succeeded: 'green',
  Failed: 'red',
  Running: 'cyan',
  Retrying: 'yellow',
  Waiting: 'yellow',
  Suspended: 'yellow',
  Cancelled: 'magenta',
  Queued: 'dim',
  Pending: 'dim',
  Skipped: 'dim',
};

/** A piece of a line and how to paint it when the stream takes colour. */
interface Seg {
  t: string;
  s?: Style | undefined;
}

/** Segments to text, cut at `width` visible characters (so a line never wraps and the redraw stays in place). */
function paint(segs: Seg[], color: boolean, width?: number): string {
  let out = '';
  let left = width ?? Number.POSITIVE_INFINITY;
  for (const { t, s } of segs) {
    if (left <= 0) break;
    let text = t;
    if (text.length > left) text = left > 1 ? `${text.slice(0, left - 1)}…` : '…';
    left -= text.length;
    if (color && s && text) {
      const [on, off] = SGR[s];
      out += `\x1b[${on}m${text}\x1b[${off}m`;
    } else out += text;
  }
  return out.trimEnd();
}

/** Parses an instance name where only status.tasks is known: `t`, `t.<index>`, `parent~child`. */
export function instanceOf(name: string): Pick<TaskView, 'template' | 'index' | 'parent'> {
  const tilde = name.lastIndexOf('~');
  if (tilde > 0) return { template: name.slice(tilde + 1), parent: name.slice(0, tilde) };
  const m = /^(.+)\.(\d+)$/.exec(name);
  if (m) return { template: m[1] as string, index: Number(m[2]) };
  return { template: name };
}

/** Task rows from the Workflow's bounded status.tasks, for when the data API cannot be asked. */
export function tasksFromStatus(wf: Workflow): TaskView[] {
  const spec = new Map(workflowTasks(wf).map((t) => [t.name, t]));
  return (wf.status?.tasks ?? []).map((s) => {
    const where = instanceOf(s.name);
    const t = spec.get(where.template);
    return {
      name: s.name,
      ...where,
      phase: s.phase,
      attempt: s.attempts ?? 0,
      handler: t?.handler ?? '',
      pool: t?.pool ?? wf.spec?.pool ?? '',
      attempts: [],
      ...(s.message !== undefined && { message: s.message }),
    };
  });
}

/** The error of a task's latest ended attempt, else its message. */
export function taskError(t: TaskView): string | undefined {
  const last = t.attempts.at(-1);
  return oneLine(last?.error?.message ?? t.message) || undefined;
}

/** What a row says after the columns: progress while it runs, the error when it failed, else its message. */
function detailOf(t: TaskView): string {
  if (t.phase === 'Running') return oneLine(t.progress ?? t.message);
  if (t.phase === 'Failed' || t.phase === 'Retrying') return taskError(t) ?? '';
  return oneLine(t.message);
}

function taskDuration(t: TaskView, now: number): number | undefined {
  if (t.startedAt && !t.finishedAt && !FINAL_TASK_PHASES.has(t.phase)) return elapsedMs(t.startedAt, undefined, now);
  return elapsedMs(t.startedAt, t.finishedAt, now) ?? t.durationMs;
}

function maxAttempts(wf: Workflow, template: string): number {
  const spec = runSpecOf(wf);
  const t = workflowTasks(wf).find((x) => x.name === template);
  return t?.retryPolicy?.maxAttempts ?? spec.retryPolicy?.maxAttempts ?? DEFAULT_RETRY.maxAttempts;
}

function attemptCell(t: TaskView, max: number): string {
  if (t.attempt < 1) return '';
  return t.attempt > 1 || t.phase === 'Retrying' ? `#${t.attempt}/${max}` : `#${t.attempt}`;
}

/** `3 Succeeded, 1 Running`: counts by phase in PHASE_ORDER. */
export function phaseCounts(tasks: readonly TaskView[]): string {
  const counts = new Map<string, number>();
  for (const t of tasks) counts.set(t.phase, (counts.get(t.phase) ?? 0) + 1);
  const order = [...PHASE_ORDER, ...[...counts.keys()].filter((p) => !PHASE_ORDER.includes(p))];
  return order
    .filter((p) => counts.has(p))
    .map((p) => `${counts.get(p)} ${p}`)
    .join(', ');
}

/** A group's phase: the most active one while any instance is not done, else the worst outcome. */
function groupPhase(tasks: readonly TaskView[]): string {
  const phases = new Set(tasks.map((t) => t.phase));
  for (const p of [
    'Running',
    'Waiting',
    'Retrying',
    'Queued',
    'Pending',
    'Failed',
    'Cancelled',
    'Succeeded',
    'Skipped',
  ]) {
    if (phases.has(p)) return p;
  }
  return tasks[0]?.phase ?? 'Pending';
}

/** The instances of a group worth a row (at most `limit`, by SHOW_FIRST then index), in index order. */
export function pickShown(tasks: readonly TaskView[], limit: number): TaskView[] {
  if (tasks.length <= limit) return [...tasks];
  const byIndex = (a: TaskView, b: TaskView) =>
    (a.index ?? 0) - (b.index ?? 0) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
  const ranked = [...tasks].sort((a, b) => (SHOW_FIRST[a.phase] ?? 8) - (SHOW_FIRST[b.phase] ?? 8) || byIndex(a, b));
  return ranked.slice(0, limit).sort(byIndex);
}

// The tree: nodes are templates of the spec (each under the dependency deepest in the DAG, the
// others named in "(after …)"), the instances of a forEach template, and spawned children.
type Node = { kind: 'template'; t: WorkflowTask } | { kind: 'task'; task: TaskView } | { kind: 'more'; text: string };

interface Row {
  prefix: string;
  name: string;
  /** A `more` row: free text over the whole line. */
  free?: boolean;
  phase?: string;
  attempt?: string;
  agent?: string;
  duration?: string;
  detail?: string;
  /** A template with more than one dependency: `(after a, b)`, before the detail (it hangs under the deepest). */
  after?: string | undefined;
}

interface Layout {
  wf: Workflow;
  now: number;
  limit: number;
  byTemplate: Map<string, TaskView[]>;
  children: Map<string, TaskView[]>;
  dependents: Map<string, WorkflowTask[]>;
}

/** Each template's primary parent (its deepest dependency, the later in spec order on a tie). */
function dagShape(templates: readonly WorkflowTask[]): {
  roots: WorkflowTask[];
  dependents: Map<string, WorkflowTask[]>;
} {
  const byName = new Map(templates.map((t) => [t.name, t]));
  const order = new Map(templates.map((t, i) => [t.name, i]));
  const depth = new Map<string, number>();
  const depthOf = (name: string, seen: Set<string>): number => {
    const known = depth.get(name);
    if (known !== undefined) return known;
    if (seen.has(name)) return 0; // a cycle: the API server refuses them; do not loop on one
    seen.add(name);
    const deps = (byName.get(name)?.dependsOn ?? []).filter((d) => byName.has(d));
    const d = deps.length === 0 ? 0 : 1 + Math.max(...deps.map((x) => depthOf(x, seen)));
    depth.set(name, d);
    return d;
  };
  const roots: WorkflowTask[] = [];
  const dependents = new Map<string, WorkflowTask[]>();
  for (const t of templates) {
    const deps = (t.dependsOn ?? []).filter((d) => byName.has(d) && d !== t.name);
    if (deps.length === 0) {
      roots.push(t);
      continue;
    }
    let primary = deps[0] as string;
    for (const d of deps) {
      const a = depthOf(d, new Set());
      const b = depthOf(primary, new Set());
      if (a > b || (a === b && (order.get(d) ?? 0) > (order.get(primary) ?? 0))) primary = d;
    }
    const list = dependents.get(primary) ?? [];
    list.push(t);
    dependents.set(primary, list);
  }
  return { roots, dependents };
}

function more(rest: readonly TaskView[]): Node {
  return { kind: 'more', text: `… ${rest.length} more: ${phaseCounts(rest)}` };
}

/** Spawned children of an instance, grouped like forEach instances. */
function childNodes(L: Layout, instance: string): Node[] {
  const kids = L.children.get(instance) ?? [];
  const shown = pickShown(kids, L.limit);
  const nodes: Node[] = shown.map((task) => ({ kind: 'task', task }));
  if (shown.length < kids.length) {
    const set = new Set(shown);
    nodes.push(more(kids.filter((k) => !set.has(k))));
  }
  return nodes;
}

function taskRow(L: Layout, task: TaskView, prefix: string, name: string): Row {
  const d = taskDuration(task, L.now);
  return {
    prefix,
    name,
    phase: task.phase,
    attempt: attemptCell(task, maxAttempts(L.wf, task.template)),
    agent: task.agent ?? '',
    duration: d === undefined ? '' : formatDuration(d),
    detail: detailOf(task),
  };
}

function emit(L: Layout, node: Node, prefix: string, last: boolean, rows: Row[]): void {
  const here = prefix + (last ? '└─ ' : '├─ ');
  const below = prefix + (last ? '   ' : '│  ');
  let nested: Node[] = [];
  if (node.kind === 'more') {
    rows.push({ prefix: here, name: node.text, free: true });
    return;
  }
  if (node.kind === 'task') {
    rows.push(taskRow(L, node.task, here, node.task.name));
    nested = childNodes(L, node.task.name);
  } else {
    const t = node.t;
    const instances = L.byTemplate.get(t.name) ?? [];
    const after = (t.dependsOn ?? []).length > 1 ? `(after ${(t.dependsOn ?? []).join(', ')})` : undefined;
    const grouped = t.forEach !== undefined || instances.length > 1 || instances.some((i) => i.name !== t.name);
    if (!grouped) {
      const task = instances[0];
      if (task) {
        rows.push({ ...taskRow(L, task, here, t.name), after });
        nested = childNodes(L, task.name);
      } else {
        rows.push({ prefix: here, name: t.name, phase: 'Pending', detail: '', after });
      }
    } else {
      const starts = instances.map((i) => i.startedAt).filter((s): s is string => !!s);
      const done = instances.length > 0 && instances.every((i) => FINAL_TASK_PHASES.has(i.phase));
      const ends = instances.map((i) => i.finishedAt).filter((s): s is string => !!s);
      const first = starts.sort()[0];
      const d = elapsedMs(first, done ? ends.sort().at(-1) : undefined, L.now);
      rows.push({
        prefix: here,
        name: `${t.name} [${instances.length}]`,
        after,
        phase: instances.length ? groupPhase(instances) : 'Pending',
        duration: d === undefined ? '' : formatDuration(d),
        detail: instances.length ? phaseCounts(instances) : t.forEach !== undefined ? 'forEach: no items yet' : '',
      });
      const shown = pickShown(instances, L.limit);
      nested = shown.map((task) => ({ kind: 'task', task }));
      if (shown.length < instances.length) {
        const set = new Set(shown);
        nested.push(more(instances.filter((i) => !set.has(i))));
      }
    }
    nested.push(...(L.dependents.get(t.name) ?? []).map((d): Node => ({ kind: 'template', t: d })));
  }
  nested.forEach((n, i) => {
    emit(L, n, below, i === nested.length - 1, rows);
  });
}

/** The task tree's rows, before column layout. */
function treeRows(snap: Snapshot, now: number, limit: number): Row[] {
  const wf = snap.workflow;
  const templates = [...workflowTasks(wf)];
  const byTemplate = new Map<string, TaskView[]>();
  const children = new Map<string, TaskView[]>();
  for (const t of snap.tasks) {
    const map = t.parent ? children : byTemplate;
    const key = t.parent ?? t.template;
    const list = map.get(key) ?? [];
    list.push(t);
    map.set(key, list);
  }
  // Instances whose template the spec no longer names (it cannot change once started, but be safe).
  for (const name of byTemplate.keys()) {
    if (!templates.some((t) => t.name === name)) templates.push({ name, handler: '' } as WorkflowTask);
  }
  for (const list of byTemplate.values()) list.sort((a, b) => (a.index ?? 0) - (b.index ?? 0));
  const { roots, dependents } = dagShape(templates);
  const L: Layout = { wf, now, limit, byTemplate, children, dependents };
  const rows: Row[] = [];
  roots.forEach((t, i) => {
    emit(L, { kind: 'template', t }, '', i === roots.length - 1, rows);
  });
  return rows;
}

export interface RenderOptions {
  now: number;
  color?: boolean;
  /** Terminal columns: every line is cut to fit. */
  width?: number;
  /** Terminal rows: a taller view is cut, its last line saying how many rows are not shown. */
  height?: number;
  /** Rows per forEach group; default GROUP_LIMIT. */
  groupLimit?: number;
}

const phaseSeg = (phase: string, pad = 0): Seg => ({ t: phase.padEnd(pad), s: PHASE_STYLE[phase] });

/** `3/7 (2 running, 1 queued, 1 failed)`. */
export function progressText(wf: Workflow): string {
  const p = wf.status?.progress;
  if (!p) return wf.status?.progressSummary ?? '';
  const more = [
    p.running && `${p.running} running`,
    p.queued && `${p.queued} queued`,
    p.failed && `${p.failed} failed`,
  ].filter(Boolean);
  return `${p.succeeded}/${p.total}${more.length ? ` (${more.join(', ')})` : ''}`;
}

/** `12,345 tokens (10,000 in, 2,345 out), $1.25; gpt-4o 12,000 tokens $1.20, ...` (the three costliest models). */
export function usageText(wf: Workflow): string {
  const u = wf.status?.usage;
  if (!u) return '';
  const tokens = (i: number, o: number) => `${formatCount(i + o)} tokens`;
  const head = `${tokens(u.inputTokens, u.outputTokens)} (${formatCount(u.inputTokens)} in, ${formatCount(u.outputTokens)} out), ${formatUsd(toNanos(u.costUsd))}`;
  const models = (u.byModel ?? [])
    .slice(0, 3)
    .map((m) => `${m.model} ${tokens(m.inputTokens, m.outputTokens)} ${formatUsd(toNanos(m.costUsd))}`);
  const rest = (u.byModel?.length ?? 0) > 3 ? ', ...' : '';
  return models.length > 0 ? `${head}; ${models.join(', ')}${rest}` : head;
}

/** `max 10,000 tokens, max $5.00 (Suspend)`, and what passed it while it is exceeded. */
function budgetText(wf: Workflow): Seg[] | undefined {
  const b = wf.spec?.budget;
  if (!b) return undefined;
  const limits = [
    b.maxTokens !== undefined && `max ${formatCount(b.maxTokens)} tokens`,
    b.maxCostUsd !== undefined && `max ${formatUsd(toNanos(b.maxCostUsd))}`,
  ].filter(Boolean);
  const segs: Seg[] = [{ t: `${limits.join(', ')} (${b.action ?? DEFAULT_BUDGET_ACTION})` }];
  const over = wf.status?.conditions?.find((c) => c.type === 'BudgetExceeded' && c.status === 'True');
  if (over) segs.push({ t: ` exceeded: ${over.message}`, s: 'red' });
  return segs;
}

/** The workflow's summary, `Key: value` lines (get, describe and the head of watch). */
export function summaryLines(wf: Workflow, opts: RenderOptions): string[] {
  const s = wf.status ?? {};
  const phase = s.phase ?? 'Pending';
  const d = elapsedMs(s.startedAt, s.finishedAt, opts.now);
  const kv: [string, Seg[]][] = [
    ['Name', [{ t: wf.metadata?.name ?? '' }]],
    ['Namespace', [{ t: wf.metadata?.namespace ?? '' }]],
    ['Phase', [phaseSeg(phase)]],
    ['Progress', [{ t: progressText(wf) }]],
  ];
  if (d !== undefined) kv.push(['Duration', [{ t: formatDuration(d) }]]);
  if (s.message) kv.push(['Message', [{ t: oneLine(s.message) }]]);
  if (s.lastRetry) kv.push(['Last retry', [{ t: `${s.lastRetry.at}: ${oneLine(s.lastRetry.message)}` }]]);
  if (s.lastRerun) kv.push(['Re-run as', [{ t: s.lastRerun.name }]]);
  const usage = usageText(wf);
  if (usage) kv.push(['Usage', [{ t: usage }]]);
  const budget = budgetText(wf);
  if (budget) kv.push(['Budget', budget]);
  return kv.map(([k, v]) => paint([{ t: `${k}:`.padEnd(12), s: 'bold' }, ...v], opts.color ?? false, opts.width));
}

const COLUMNS = ['TASK', 'PHASE', 'ATTEMPT', 'AGENT', 'DURATION', 'MESSAGE'] as const;

/** The task tree as aligned lines under a header row, the workflow itself at the root. */
export function treeLines(snap: Snapshot, opts: RenderOptions): string[] {
  const color = opts.color ?? false;
  const rows = treeRows(snap, opts.now, opts.groupLimit ?? GROUP_LIMIT);
  const wf = snap.workflow;
  const phase = wf.status?.phase ?? 'Pending';
  const root: Row = {
    prefix: '',
    name: wf.metadata?.name ?? '',
    phase,
    duration: ((d) => (d === undefined ? '' : formatDuration(d)))(
      elapsedMs(wf.status?.startedAt, wf.status?.finishedAt, opts.now),
    ),
    detail: progressText(wf),
  };
  const all = [root, ...rows];
  const fixed = all.filter((r) => !r.free);
  const w = (f: (r: Row) => string, h: string) => Math.max(h.length, ...fixed.map((r) => f(r).length));
  const nameW = Math.min(
    w((r) => r.prefix + r.name, COLUMNS[0]),
    60,
  );
  const phaseW = w((r) => r.phase ?? '', COLUMNS[1]);
  const attemptW = w((r) => r.attempt ?? '', COLUMNS[2]);
  const agentW = Math.min(
    w((r) => r.agent ?? '', COLUMNS[3]),
    32,
  );
  const durW = w((r) => r.duration ?? '', COLUMNS[4]);
  const cell = (t: string, width: number) => {
    const cut = t.length > width ? `${t.slice(0, width - 1)}…` : t;
    return `${cut.padEnd(width)}   `;
  };
  const header = paint(
    [
      {
        t: [
          cell(COLUMNS[0], nameW),
          cell(COLUMNS[1], phaseW),
          cell(COLUMNS[2], attemptW),
          cell(COLUMNS[3], agentW),
          cell(COLUMNS[4], durW),
          COLUMNS[5],
        ].join(''),
        s: 'dim',
      },
    ],
    color,
    opts.width,
  );
  const lines = [header];
  for (const r of all) {
    if (r.free) {
      lines.push(
        paint(
          [
            { t: r.prefix, s: 'dim' },
            { t: r.name, s: 'dim' },
          ],
          color,
          opts.width,
        ),
      );
      continue;
    }
    const name = cell(r.prefix + r.name, nameW);
    lines.push(
      paint(
        [
          { t: name.slice(0, r.prefix.length), s: 'dim' },
          { t: name.slice(r.prefix.length), s: r === root ? 'bold' : undefined },
          { t: (r.phase ?? '').padEnd(phaseW), s: PHASE_STYLE[r.phase ?? ''] },
          { t: `   ${cell(r.attempt ?? '', attemptW)}${cell(r.agent ?? '', agentW)}${cell(r.duration ?? '', durW)}` },
          { t: r.after ? `${r.after}${r.detail ? '  ' : ''}` : '', s: 'dim' },
          { t: r.detail ?? '' },
        ],
        color,
        opts.width,
      ),
    );
  }
  return lines;
}

/** The whole live view: summary, a blank line, the tree; cut to the terminal's height. */
export function renderView(snap: Snapshot, opts: RenderOptions, note?: string): string[] {
  const head = summaryLines(snap.workflow, opts);
  if (note) head.push(paint([{ t: note, s: 'yellow' }], opts.color ?? false, opts.width));
  head.push('');
  const tree = treeLines(snap, opts);
  const lines = [...head, ...tree];
  if (opts.height === undefined || lines.length <= opts.height) return lines;
  const keep = Math.max(0, opts.height - head.length - 1);
  const hidden = tree.length - keep;
  return [
    ...head,
    ...tree.slice(0, keep),
    paint(
      [{ t: `… ${hidden} more rows: enlarge the terminal to see them`, s: 'dim' }],
      opts.color ?? false,
      opts.width,
    ),
  ];
}

/** What a task's line-mode entry says; a change of it is a new line. */
function lineOf(t: TaskView): string {
  const parts = [t.name, t.phase];
  if (t.attempt > 0) parts.push(`attempt ${t.attempt}`);
  if (t.agent) parts.push(`agent ${t.agent}`);
  const d = detailOf(t);
  if (d) parts.push(d);
  return parts.join(' ');
}

/**
 * The line mode of `watch` (output not a terminal): one line per change,
 * `<time> <task> <phase> [attempt N] [agent X] [message]`, and a
 * `<time> workflow/<name> <phase> <progress>` line when the workflow's phase changes.
 * A task seen Pending for the first time is no change worth a line.
 */
export class ChangeLog {
  private readonly seen = new Map<string, string>();
  private phase: string | undefined;

  lines(snap: Snapshot, now: number): string[] {
    const time = clockTime(now);
    const out: string[] = [];
    const wf = snap.workflow;
    const wfPhase = wf.status?.phase ?? 'Pending';
    if (wfPhase !== this.phase) {
      this.phase = wfPhase;
      const msg = oneLine(wf.status?.message);
      out.push(`${time} workflow/${wf.metadata?.name} ${wfPhase} ${progressText(wf)}${msg ? ` ${msg}` : ''}`.trimEnd());
    }
    for (const t of snap.tasks) {
      const line = lineOf(t);
      const before = this.seen.get(t.name);
      if (line === before) continue;
      this.seen.set(t.name, line);
      if (before === undefined && t.phase === 'Pending') continue;
      out.push(`${time} ${line}`);
    }
    return out;
  }
}

/** The tasks that made a run fail, with their errors: what `watch` prints when it ends in Failed or Cancelled. */
export function failureLines(snap: Snapshot): string[] {
  const failed = snap.tasks.filter((t) => t.phase === 'Failed');
  const lines = failed.map((t) => {
    const where = [t.attempt > 0 && `attempt ${t.attempt}`, t.agent && `agent ${t.agent}`].filter(Boolean).join(', ');
    return `task ${t.name} Failed${where ? ` (${where})` : ''}: ${taskError(t) ?? 'no error message'}`;
  });
  return lines;
}
