// The workflow's DAG as the page draws it: one node per task of spec.tasks, a
// forEach task collapsed into one group node that counts its instances by
// phase, children a handler spawned counted on their parent's node. Laid out
// left to right by dagre (@dagrejs/dagre, the maintained fork of dagre).
import dagre, { type EdgeLabel, type GraphLabel, type NodeLabel } from '@dagrejs/dagre';
import { type TaskView, type Workflow, workflowTasks } from './api.ts';
import { groupPhase } from './format.ts';

export interface DagNode {
  /** The task's name in spec.tasks. */
  id: string;
  handler: string;
  /** A forEach task: drawn as a group of its instances. */
  group: boolean;
  /** Its instances (one for a plain task once it exists; every item of a forEach). */
  instances: TaskView[];
  /** Children the instances spawned. */
  spawned: TaskView[];
  phase: string;
  /** A group's summary from the Workflow's status, when the task table is not at hand. */
  note?: string;
  x: number;
  y: number;
  width: number;
  height: number;
}

export interface DagEdge {
  from: string;
  to: string;
  points: { x: number; y: number }[];
}

export interface Dag {
  nodes: DagNode[];
  edges: DagEdge[];
  width: number;
  height: number;
}

const NODE = { width: 190, height: 64 };
const GROUP = { width: 250, height: 96 };
const MARGIN = 16;

type SpecTask = ReturnType<typeof workflowTasks>[number];
type StatusTask = NonNullable<NonNullable<Workflow['status']>['tasks']>[number];

/** The instance a summary from status.tasks stands for, while the task table is not there yet. */
function fromStatus(t: StatusTask, spec: SpecTask): TaskView {
  return {
    name: t.name,
    template: spec.name,
    phase: t.phase,
    attempt: t.attempts ?? 0,
    handler: spec.handler ?? (spec.approval ? 'approval' : ''),
    pool: spec.pool ?? '',
    attempts: [],
    ...(t.message && { message: t.message }),
  };
}

/** Which spec task an instance belongs to: its own template, or its root parent's. */
function ownerOf(t: TaskView, byName: Map<string, TaskView>): string {
  let cur = t;
  for (let i = 0; cur.parent && i < 64; i++) {
    const p = byName.get(cur.parent);
    if (!p) return cur.parent.split('~')[0]?.split('.')[0] ?? cur.template;
    cur = p;
  }
  return cur.template;
}

export interface Layout {
  boxes: Map<string, { x: number; y: number; width: number; height: number }>;
  edges: DagEdge[];
  width: number;
  height: number;
}

/** Where each task of the spec goes (depends on the spec only: computed once per generation). */
export function layoutSpec(spec: readonly SpecTask[]): Layout {
  const g = new dagre.graphlib.Graph<GraphLabel, NodeLabel, EdgeLabel>();
  g.setGraph({ rankdir: 'LR', nodesep: 28, ranksep: 64, marginx: MARGIN, marginy: MARGIN });
  g.setDefaultEdgeLabel(() => ({}));
  for (const s of spec) {
    const size = s.forEach ? GROUP : NODE;
    g.setNode(s.name, { width: size.width, height: size.height });
  }
  const names = new Set(spec.map((s) => s.name));
  for (const s of spec) for (const d of s.dependsOn ?? []) if (names.has(d)) g.setEdge(d, s.name);
  dagre.layout(g);
  const boxes = new Map(
    spec.map((s) => {
      const n = g.node(s.name);
      return [s.name, { x: (n.x ?? 0) - n.width / 2, y: (n.y ?? 0) - n.height / 2, width: n.width, height: n.height }];
    }),
  );
  const edges = g
    .edges()
    .map((e: { v: string; w: string }): DagEdge => ({ from: e.v, to: e.w, points: g.edge(e).points ?? [] }));
  const label = g.graph();
  return { boxes, edges, width: label.width ?? 0, height: label.height ?? 0 };
}

/**
 * The nodes with their instances and phases. `tasks` undefined (the task table cannot be read): from
 * the Workflow's bounded status.tasks, one summary per spec task, a group's counts in its message.
 */
export function buildDag(wf: Workflow, tasks: readonly TaskView[] | undefined, layout: Layout): Dag {
  const spec = workflowTasks(wf);
  const summaries = new Map((wf.status?.tasks ?? []).map((t) => [t.name, t]));
  const items: readonly TaskView[] =
    tasks ??
    spec.flatMap((s) => {
      const t = summaries.get(s.name);
      return t && !s.forEach ? [fromStatus(t, s)] : [];
    });
  const byName = new Map(items.map((t) => [t.name, t]));
  const own = new Map<string, TaskView[]>();
  const spawned = new Map<string, TaskView[]>();
  for (const t of items) {
    const bucket = t.parent ? spawned : own;
    const key = t.parent ? ownerOf(t, byName) : t.template;
    const list = bucket.get(key) ?? [];
    list.push(t);
    bucket.set(key, list);
  }
  const nodes = spec.map((s): DagNode => {
    const box = layout.boxes.get(s.name) ?? { x: 0, y: 0, ...(s.forEach ? GROUP : NODE) };
    const instances = (own.get(s.name) ?? []).sort((a, b) => (a.index ?? 0) - (b.index ?? 0));
    const group = s.forEach !== undefined;
    const summary = tasks ? undefined : summaries.get(s.name);
    let phase = instances[0]?.phase ?? 'Pending';
    if (group) phase = summary?.phase ?? (instances.length ? groupPhase(instances) : 'Pending');
    return {
      id: s.name,
      handler: s.handler ?? (s.approval ? 'approval' : ''),
      group,
      instances,
      spawned: spawned.get(s.name) ?? [],
      phase,
      ...(summary?.message && { note: summary.message }),
      ...box,
    };
  });
  return { nodes, edges: layout.edges, width: layout.width, height: layout.height };
}

/** An SVG path through dagre's edge points, smoothed. */
export function edgePath(points: readonly { x: number; y: number }[]): string {
  if (points.length === 0) return '';
  const [first, ...rest] = points;
  if (!first) return '';
  let d = `M${first.x},${first.y}`;
  if (rest.length === 1) return `${d} L${rest[0]?.x},${rest[0]?.y}`;
  for (let i = 0; i < rest.length - 1; i++) {
    const c = rest[i] as { x: number; y: number };
    const n = rest[i + 1] as { x: number; y: number };
    const mx = (c.x + n.x) / 2;
    const my = (c.y + n.y) / 2;
    d += ` Q${c.x},${c.y} ${i === rest.length - 2 ? `${n.x},${n.y}` : `${mx},${my}`}`;
  }
  return d;
}
