// One workflow: its header, the DAG (colours follow the phases live: a watch
// on the Workflow, and the task table polled every second while it runs), and
// the pane of the selected task or group.
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { type ApiError, sleep, type TaskView, tasksOf, type Workflow, workflowTasks } from '../api.ts';
import { buildDag, type Dag, type DagNode, edgePath, layoutSpec } from '../dag.ts';
import { countsText, duration, isFinal, phaseCounts, time } from '../format.ts';
import { ErrorBox, href, Phase, useNow } from './common.tsx';
import { TaskPane } from './task.tsx';
import { Progress, useWorkflows } from './workflows.tsx';

/** How often the task table is read while the workflow runs. */
const POLL_MS = 1000;

/** The task table of a workflow: read at once, whenever the Workflow changes, and every second until it ends. */
function useTasks(
  ns: string,
  name: string,
  wf: Workflow | undefined,
): { tasks: TaskView[] | undefined; error: ApiError | undefined } {
  const [tasks, setTasks] = useState<TaskView[] | undefined>(undefined);
  const [error, setError] = useState<ApiError | undefined>(undefined);
  const rv = wf?.metadata.resourceVersion;
  const running = wf !== undefined && !isFinal(wf.status?.phase);
  const seq = useRef(0);
  const read = useRef<(signal: AbortSignal) => Promise<void>>(async () => undefined);
  read.current = async (signal: AbortSignal) => {
    const mine = ++seq.current;
    try {
      const list = await tasksOf(ns, name, signal);
      if (mine !== seq.current) return;
      setTasks(list.items);
      setError(undefined);
    } catch (err) {
      if (signal.aborted || mine !== seq.current) return;
      setError(err as ApiError);
    }
  };
  useEffect(() => {
    setTasks(undefined);
    setError(undefined);
  }, [ns, name]);
  // Once per change of the Workflow (a phase or a count moved).
  useEffect(() => {
    if (rv === undefined) return;
    const ac = new AbortController();
    void read.current(ac.signal);
    return () => ac.abort();
  }, [ns, name, rv]);
  // And every second while it runs: instances change faster than the bounded status says.
  useEffect(() => {
    if (!running) return;
    const ac = new AbortController();
    void (async () => {
      while (!ac.signal.aborted) {
        await sleep(POLL_MS, ac.signal);
        if (!ac.signal.aborted) await read.current(ac.signal);
      }
    })();
    return () => ac.abort();
  }, [ns, name, running]);
  return { tasks, error };
}

/** Progress counts from the task table (fan-out instances included, as status.progress counts them). */
function countsOf(tasks: readonly TaskView[]) {
  const n = (p: string) => tasks.filter((t) => t.phase === p).length;
  return {
    total: tasks.length,
    succeeded: n('Succeeded'),
    failed: n('Failed'),
    running: n('Running'),
    queued: n('Queued'),
  };
}

function TaskNode({ n, selected, select }: { n: DagNode; selected: string | undefined; select: (t: string) => void }) {
  const t = n.instances[0];
  return (
    <button
      type="button"
      class={`node phase-${n.phase}${selected === n.id ? ' selected' : ''}`}
      style={{ left: `${n.x}px`, top: `${n.y}px`, width: `${n.width}px`, height: `${n.height}px` }}
      data-testid="dag-node"
      data-task={n.id}
      data-phase={n.phase}
      title={`${n.id}: ${n.phase}${t?.message ? ` — ${t.message}` : ''}`}
      onClick={() => select(n.id)}
    >
      <span class="name">{n.id}</span>
      <span class="meta">
        {n.phase}
        {t && t.attempt > 1 ? ` · attempt ${t.attempt}` : ''}
        {t?.durationMs !== undefined ? ` · ${duration(t.durationMs)}` : ''}
      </span>
      <span class="meta handler">{t?.progress ?? n.handler}</span>
      {n.spawned.length > 0 && (
        <span class="meta">
          spawned {n.spawned.length}: {countsText(phaseCounts(n.spawned))}
        </span>
      )}
    </button>
  );
}

/** Instance squares a group node shows; the pane lists them all. */
const GROUP_SQUARES = 66;

function GroupNode({ n, selected, select }: { n: DagNode; selected: string | undefined; select: (t: string) => void }) {
  const counts = phaseCounts(n.instances);
  return (
    <div
      class={`node group phase-${n.phase}${selected === n.id ? ' selected' : ''}`}
      style={{ left: `${n.x}px`, top: `${n.y}px`, width: `${n.width}px`, height: `${n.height}px` }}
      data-testid="dag-node"
      data-group="true"
      data-task={n.id}
      data-phase={n.phase}
      data-count={String(n.instances.length)}
    >
      <button type="button" class="group-head" onClick={() => select(n.id)} data-testid="group-head">
        <span class="name">
          {n.id} ×{n.instances.length || '?'}
        </span>
        <span class="meta" data-testid="group-counts">
          {n.instances.length ? countsText(counts) : (n.note ?? 'not expanded yet')}
        </span>
      </button>
      <div class="squares">
        {n.instances.slice(0, GROUP_SQUARES).map((t) => (
          <button
            type="button"
            key={t.name}
            class={`square phase-${t.phase}${selected === t.name ? ' selected' : ''}`}
            title={`${t.name}: ${t.phase}`}
            data-testid="instance"
            data-task={t.name}
            data-phase={t.phase}
            onClick={() => select(t.name)}
          />
        ))}
        {n.instances.length > GROUP_SQUARES && <span class="more">+{n.instances.length - GROUP_SQUARES}</span>}
      </div>
    </div>
  );
}

function DagView({ dag, selected, select }: { dag: Dag; selected: string | undefined; select: (t: string) => void }) {
  return (
    <div class="dag" style={{ width: `${dag.width}px`, height: `${dag.height}px` }} data-testid="dag">
      <svg class="edges" width={dag.width} height={dag.height} aria-hidden="true">
        <defs>
          <marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto">
            <path d="M0,0 L10,5 L0,10 z" />
          </marker>
        </defs>
        {dag.edges.map((e) => (
          <path
            key={`${e.from}->${e.to}`}
            d={edgePath(e.points)}
            marker-end="url(#arrow)"
            data-edge={`${e.from}->${e.to}`}
          />
        ))}
      </svg>
      {dag.nodes.map((n) =>
        n.group ? (
          <GroupNode key={n.id} n={n} selected={selected} select={select} />
        ) : (
          <TaskNode key={n.id} n={n} selected={selected} select={select} />
        ),
      )}
    </div>
  );
}

export function WorkflowPage({ ns, name, task }: { ns: string; name: string; task: string | undefined }) {
  const { items, error } = useWorkflows(ns, `metadata.name=${name}`);
  const wf = items?.get(name);
  const { tasks, error: tasksError } = useTasks(ns, name, wf);
  const now = useNow(1000);
  const generation = wf?.metadata.generation;
  const layout = useMemo(() => (wf ? layoutSpec(workflowTasks(wf)) : undefined), [name, generation, wf !== undefined]);
  const dag = wf && layout ? buildDag(wf, tasks, layout) : undefined;
  const select = (t: string | undefined) => {
    location.hash = href.workflow(ns, name, t);
  };
  const st = wf?.status;
  const started = st?.startedAt ? Date.parse(st.startedAt) : undefined;
  const ended = st?.finishedAt ? Date.parse(st.finishedAt) : now;
  return (
    <section class="page workflow">
      <div class="crumbs">
        <a href={href.workflows(ns)}>Workflows</a> / <span>{name}</span>
      </div>
      {error && <ErrorBox error={error} what={{ verb: 'read', resource: 'workflows', namespace: ns }} />}
      {items && !wf && !error && (
        <div class="error" role="alert" data-testid="error">
          <strong>
            No workflow {name} in namespace {ns}.
          </strong>
        </div>
      )}
      {wf && (
        <header class="wf-head" data-testid="workflow-header" data-phase={st?.phase ?? 'Pending'}>
          <h1>{name}</h1>
          <Phase phase={st?.phase} testid="workflow-phase" />
          <Progress wf={wf} counts={tasks && countsOf(tasks)} />
          <span class="muted">
            started {time(st?.startedAt)}
            {started !== undefined && ` · ${duration(Math.max(0, ended - started))}`}
          </span>
          {st?.usage && (
            <span class="muted" data-testid="workflow-usage" title="Model usage the handlers reported (ctx.usage)">
              {(st.usage.inputTokens + st.usage.outputTokens).toLocaleString('en-US')} tokens · $
              {st.usage.costUsd.toLocaleString('en-US', { minimumFractionDigits: 2, maximumFractionDigits: 6 })}
            </span>
          )}
          {st?.message && <span class="message">{st.message}</span>}
        </header>
      )}
      {tasksError && (
        <ErrorBox error={tasksError} what={{ verb: 'read', resource: 'the tasks of workflows', namespace: ns }} />
      )}
      {dag && (
        <div class={`split${task ? ' with-pane' : ''}`}>
          <div class="dag-scroll">
            <DagView dag={dag} selected={task} select={select} />
          </div>
          {task && (
            <TaskPane
              ns={ns}
              workflow={name}
              selected={task}
              node={dag.nodes.find((n) => n.id === task && n.group)}
              summary={tasks?.find((t) => t.name === task)}
              select={select}
            />
          )}
        </div>
      )}
    </section>
  );
}
