// What the data API answers from, in the leader: the engine's runs in memory
// (live phases and progress), etcd's records for runs it does not hold (a
// finished run, after a failover), the dispatcher's connected agents and the
// informers' Workflows, AgentPools and Pods.

import { randomBytes } from 'node:crypto';
import type { V1Pod } from '@kubernetes/client-node';
import type { AgentPool } from '../../api/agentpool.ts';
import {
  type AgentList,
  type ApprovalList,
  type ApprovalRequest,
  type AttemptView,
  type AuditVerification,
  DATA_API_VERSION,
  LOG_DROPPED_LINE,
  LOG_FLUSH_MS,
  type LogQuery,
  type MemoList,
  type PendingApproval,
  type SignalList,
  type SignalView,
  STREAM_DROPPED_LINE,
  type TaskView,
  type WorkflowTaskList,
} from '../../api/data-api.ts';
import {
  CONSUMED_PREFIX,
  type ConsumedValue,
  MAX_SIGNALS_PER_WORKFLOW,
  SIGNAL_PREFIX,
  type SignalValue,
  signalKey,
} from '../../api/signals.ts';
import { DEFAULT_APPROVAL_ON_TIMEOUT, type Workflow } from '../../api/workflow.ts';
import type { Dispatcher } from '../../dispatcher/index.ts';
import {
  AuditLog,
  type Fence,
  MemoCache,
  SharedState,
  type StateStore,
  TaskClaims,
  type TaskRecord,
  type TaskResult,
  WorkflowRecords,
} from '../../state/index.ts';
import type { JsonValue } from '../../state/shared-state.ts';
import { followLog, readLog } from '../../state/task-logs.ts';
import type { WorkflowEngine } from '../../workflow/engine.ts';
import type { InformerView } from '../kube/informer.ts';
import type { UserInfo } from './request-header.ts';
import type { DataSource, DecideOutcome, MemoOutcome, SignalOutcome } from './server.ts';
import type { StateScope } from './state-routes.ts';

const FINISHED_RUN = new Set(['Succeeded', 'Failed', 'Cancelled']);
const FINAL = new Set(['Succeeded', 'Failed', 'Skipped', 'Cancelled']);
/** How often a follower checks whether the attempt it follows is still running (it may end without an end mark). */
const FOLLOW_CHECK_MS = 1_000;

export interface LeaderViews {
  store: StateStore;
  /** The leadership fence every write on a user's behalf carries. */
  fences: () => Fence[];
  engine: WorkflowEngine;
  dispatcher: Dispatcher;
  workflows: InformerView<Workflow>;
  pools: InformerView<AgentPool>;
  pods: InformerView<V1Pod>;
  /**
   * The memo cache the engine writes, when it has one: eviction counts entries in an index the
   * instance keeps of its own writes, so a clear should go through the same instance to keep it true.
   */
  memo?: MemoCache;
}

function attemptView(r: TaskResult): AttemptView {
  return {
    attempt: r.attempt,
    agent: r.agentId,
    ok: r.ok,
    ...(r.error && { error: r.error }),
    finishedAt: r.committedAt,
  };
}

export class LeaderDataSource implements DataSource {
  private readonly v: LeaderViews;
  private readonly records: WorkflowRecords;
  private readonly claims: TaskClaims;
  private readonly memo: MemoCache;

  constructor(v: LeaderViews) {
    this.v = v;
    this.records = new WorkflowRecords(v.store);
    this.claims = new TaskClaims(v.store);
    this.memo = v.memo ?? new MemoCache(v.store);
  }

  private nodeOf(namespace: string, pod: string | undefined): string | undefined {
    if (!pod) return undefined;
    return this.v.pods.get(`${namespace}/${pod}`)?.spec?.nodeName;
  }

  private async runView(namespace: string, workflow: string, task?: string) {
    const run = this.v.engine.get(namespace, workflow);
    if (run) {
      const views = run.views();
      return {
        phase: run.phase as string,
        startedAt: new Date(run.startedAt).toISOString(),
        ...(run.finishedAt !== undefined && { finishedAt: new Date(run.finishedAt).toISOString() }),
        tasks: task === undefined ? views : views.filter((t) => t.name === task),
        spec: run.spec,
      };
    }
    const wf = this.v.workflows.get(`${namespace}/${workflow}`);
    if (!wf) return undefined;
    const loaded = await this.records.load(namespace, workflow);
    return {
      phase: loaded.run?.phase ?? wf.status?.phase ?? 'Pending',
      ...(loaded.run?.startedAt && { startedAt: loaded.run.startedAt }),
      ...(loaded.run?.finishedAt && { finishedAt: loaded.run.finishedAt }),
      tasks: (task === undefined ? loaded.tasks : loaded.tasks.filter((t) => t.name === task)) as (TaskRecord & {
        progress?: string;
      })[],
      spec: (loaded.spec ?? wf.spec) as Workflow['spec'],
    };
  }

  async tasks(namespace: string, workflow: string, task?: string): Promise<WorkflowTaskList | undefined> {
    if (!this.v.workflows.get(`${namespace}/${workflow}`) && !this.v.engine.get(namespace, workflow)) return undefined;
    const r = await this.runView(namespace, workflow, task);
    if (!r) return undefined;
    const history = await this.claims.history(namespace, workflow, task);
    const deps = new Map((r.spec?.tasks ?? []).map((t) => [t.name, t.dependsOn ?? []]));
    const now = Date.now();
    // Connected agents by id, once per answer (not per row: a table can have 10,000 rows).
    const connected = new Map(this.v.dispatcher.agents().map((a) => [a.agentId, a]));
    const items = r.tasks.map((t): TaskView => {
      const attempts = (history.get(t.name) ?? []).map(attemptView);
      const running = this.v.dispatcher.assignedAgent({ namespace, workflow, task: t.name });
      const agent = running ?? attempts[attempts.length - 1]?.agent;
      const placed = agent ? connected.get(agent) : undefined;
      const started = t.startedAt ? Date.parse(t.startedAt) : undefined;
      const ended = t.finishedAt ? Date.parse(t.finishedAt) : FINAL.has(t.phase) ? undefined : now;
      const node = this.nodeOf(placed?.namespace ?? namespace, placed?.pod ?? agent);
      return {
        name: t.name,
        template: t.template,
        ...(t.index !== undefined && { index: t.index }),
        ...(t.parent && { parent: t.parent }),
        phase: t.phase,
        attempt: t.attempt,
        handler: t.handler,
        pool: t.pool,
        ...(t.startedAt && { startedAt: t.startedAt }),
        ...(t.finishedAt && { finishedAt: t.finishedAt }),
        ...(started !== undefined && ended !== undefined && { durationMs: Math.max(0, ended - started) }),
        ...(t.message && { message: t.message }),
        ...(t.progress && { progress: t.progress }),
        ...(t.approval && {
          approval: {
            message: t.approval.message,
            ...(t.approval.deadline !== undefined && { deadline: new Date(t.approval.deadline).toISOString() }),
          },
        }),
        ...(agent && { agent }),
        ...(node && { node }),
        attempts,
        ...(!t.parent && { dependsOn: deps.get(t.template) ?? [] }),
        ...(task !== undefined && { input: t.input ?? null, output: t.output ?? null }),
      };
    });
    return {
      apiVersion: DATA_API_VERSION,
      kind: 'WorkflowTaskList',
      metadata: {
        namespace,
        name: workflow,
        phase: r.phase,
        ...(r.startedAt && { startedAt: r.startedAt }),
        ...(r.finishedAt && { finishedAt: r.finishedAt }),
      },
      items,
    };
  }

  agents(namespace: string, pool: string): AgentList | undefined {
    if (!this.v.pools.get(`${namespace}/${pool}`)) return undefined;
    const items = this.v.dispatcher
      .agents()
      .filter((a) => a.namespace === namespace && a.pool === pool)
      .map((a) => {
        const node = this.nodeOf(a.namespace, a.pod);
        return {
          name: a.pod || a.agentId,
          ...(node && { node }),
          capacity: a.capacity,
          inFlight: a.used,
          free: a.draining ? 0 : Math.max(0, a.capacity - a.used),
          draining: a.draining,
          handlers: a.handlers,
        };
      })
      .sort((x, y) => x.name.localeCompare(y.name));
    return { apiVersion: DATA_API_VERSION, kind: 'AgentList', metadata: { namespace, pool }, items };
  }

  fences(): Fence[] {
    return this.v.fences();
  }

  approvals(namespace: string, workflow: string): ApprovalList | undefined {
    if (!this.v.workflows.get(`${namespace}/${workflow}`)) return undefined;
    const run = this.v.engine.get(namespace, workflow);
    const items = (run?.approvals() ?? []).map(
      (a): PendingApproval => ({
        task: a.task,
        message: a.message,
        ...(a.deadline !== undefined && {
          deadline: new Date(a.deadline).toISOString(),
          onTimeout: a.onTimeout ?? DEFAULT_APPROVAL_ON_TIMEOUT,
        }),
        ...(a.approvers && { approvers: a.approvers }),
      }),
    );
    return { apiVersion: DATA_API_VERSION, kind: 'ApprovalList', metadata: { namespace, name: workflow }, items };
  }

  async decide(namespace: string, workflow: string, req: ApprovalRequest, user: UserInfo): Promise<DecideOutcome> {
    const wf = this.v.workflows.get(`${namespace}/${workflow}`);
    if (!wf) return { ok: false, code: 'NoWorkflow', message: `workflows.agentflow.io "${workflow}" not found` };
    const phase = wf.status?.phase;
    if (!this.v.engine.get(namespace, workflow) && FINISHED_RUN.has(phase ?? '')) {
      return { ok: false, code: 'NotWaiting', message: `workflow ${workflow} is ${phase}: it waits for no decision` };
    }
    return this.v.engine.decide(namespace, workflow, req.task, {
      decision: req.decision,
      user: { username: user.username, groups: user.groups },
      ...(req.message !== undefined && { message: req.message }),
    });
  }

  async sendSignal(
    namespace: string,
    workflow: string,
    sig: { name: string; data: unknown },
    user: UserInfo,
  ): Promise<SignalOutcome> {
    const wf = this.v.workflows.get(`${namespace}/${workflow}`);
    if (!wf) return { ok: false, code: 'NoWorkflow', message: `workflows.agentflow.io "${workflow}" not found` };
    const run = this.v.engine.get(namespace, workflow);
    const phase = run?.phase ?? wf.status?.phase;
    if (run?.finished || (!run && FINISHED_RUN.has(phase ?? ''))) {
      return { ok: false, code: 'Finished', message: `workflow ${workflow} is ${phase}: no handler can take a signal` };
    }
    const state = new SharedState(this.v.store, { kind: 'workflow', namespace, workflow });
    // Counted, not listed: 10,000 signals of 64 KiB would be 640 MB to read per send.
    const held = await state.count(SIGNAL_PREFIX);
    if (held >= MAX_SIGNALS_PER_WORKFLOW) {
      return {
        ok: false,
        code: 'TooMany',
        message: `workflow ${workflow} holds ${held} signals, the most one workflow may (${MAX_SIGNALS_PER_WORKFLOW})`,
      };
    }
    const id = `${Date.now().toString(36)}-${randomBytes(6).toString('hex')}`;
    const value: SignalValue = { data: sig.data as JsonValue, sentBy: user.username, sentAt: new Date().toISOString() };
    const revision = await state.put(signalKey(sig.name, id), value as unknown as JsonValue, {
      fences: this.v.fences(),
    });
    await this.v.engine.note(namespace, workflow, {
      type: 'SignalSent',
      detail: { name: sig.name, id, user: user.username },
    });
    return { ok: true, id, revision };
  }

  async signals(namespace: string, workflow: string): Promise<SignalList | undefined> {
    if (!this.v.workflows.get(`${namespace}/${workflow}`)) return undefined;
    const state = new SharedState(this.v.store, { kind: 'workflow', namespace, workflow });
    const [sent, taken] = await Promise.all([state.list(SIGNAL_PREFIX), state.list(CONSUMED_PREFIX)]);
    const takenBy = new Map(
      taken.items.map((c) => [c.key.slice(CONSUMED_PREFIX.length), (c.value as unknown as ConsumedValue).task]),
    );
    const items = sent.items
      .sort((a, b) => a.createRevision - b.createRevision)
      .map((kv): SignalView => {
        const rest = kv.key.slice(SIGNAL_PREFIX.length);
        const slash = rest.lastIndexOf('/');
        const v = kv.value as unknown as SignalValue;
        const by = takenBy.get(rest);
        return {
          name: rest.slice(0, slash),
          id: rest.slice(slash + 1),
          sentBy: v.sentBy,
          sentAt: v.sentAt,
          ...(by && { takenBy: by }),
          data: v.data,
        };
      });
    return {
      apiVersion: DATA_API_VERSION,
      kind: 'SignalList',
      metadata: { namespace, name: workflow, revision: Math.max(sent.revision, taken.revision) },
      items,
    };
  }

  async memoList(namespace: string): Promise<MemoList> {
    const items = (await this.memo.list(namespace)).map((m) => ({
      key: m.key,
      workflow: m.workflow,
      task: m.task,
      attempt: m.attempt,
      ...(m.agentId !== undefined && { agentId: m.agentId }),
      createdAt: m.createdAt,
      bytes: m.bytes,
    }));
    return { apiVersion: DATA_API_VERSION, kind: 'MemoList', metadata: { namespace }, items };
  }

  async memoEntry(namespace: string, key: string): Promise<MemoOutcome> {
    // Any age: what a task with a shorter maxAgeSeconds would no longer take is still there to see.
    const e = await this.memo.get(namespace, key);
    if (!e) {
      return {
        ok: false,
        code: 'NoMemoEntry',
        message: `no memoized output for key ${JSON.stringify(key.slice(0, 128))} in namespace "${namespace}"`,
      };
    }
    return {
      ok: true,
      entry: {
        apiVersion: DATA_API_VERSION,
        kind: 'MemoEntry',
        metadata: { namespace },
        key: e.key,
        workflow: e.workflow,
        task: e.task,
        attempt: e.attempt,
        ...(e.agentId !== undefined && { agentId: e.agentId }),
        createdAt: e.createdAt,
        output: e.output,
      },
    };
  }

  clearMemo(namespace: string, key?: string): Promise<number> {
    return this.memo.clear(namespace, key, this.v.fences());
  }

  sharedState(scope: StateScope): SharedState | undefined {
    if (scope.kind === 'workflow' && !this.v.workflows.get(`${scope.namespace}/${scope.workflow}`)) return undefined;
    if (scope.kind === 'pool' && !this.v.pools.get(`${scope.namespace}/${scope.pool}`)) return undefined;
    return new SharedState(this.v.store, scope);
  }

  async audit(namespace: string, workflow: string): Promise<AuditVerification | undefined> {
    if (!this.v.workflows.get(`${namespace}/${workflow}`) && !this.v.engine.get(namespace, workflow)) return undefined;
    const r = await new AuditLog(this.v.store, namespace, workflow).verify();
    return {
      apiVersion: DATA_API_VERSION,
      kind: 'AuditVerification',
      metadata: { namespace, name: workflow },
      ok: r.ok,
      entries: r.entries,
      ...(r.ok && { head: r.head }),
      problems: r.ok ? [] : r.problems,
    };
  }

  /** The task's attempt and whether it is over, from the engine or etcd. */
  private async attemptState(
    namespace: string,
    workflow: string,
    task: string,
  ): Promise<{ attempt: number; final: boolean } | undefined> {
    const r = await this.runView(namespace, workflow, task);
    const t = r?.tasks[0];
    if (!t) return undefined;
    return { attempt: t.attempt, final: FINAL.has(t.phase) || r.finishedAt !== undefined };
  }

  async logs(
    namespace: string,
    workflow: string,
    q: LogQuery,
    write: (text: string) => void,
    signal: AbortSignal,
  ): Promise<'ok' | 'no-workflow' | 'no-task'> {
    if (!this.v.workflows.get(`${namespace}/${workflow}`) && !this.v.engine.get(namespace, workflow)) {
      return 'no-workflow';
    }
    const state = await this.attemptState(namespace, workflow, q.task);
    if (!state || state.attempt === 0) return 'no-task';
    const attempt = q.attempt ?? state.attempt;
    if (attempt > state.attempt) return 'no-task';
    const ref = { namespace, workflow, task: q.task, attempt };
    const kind = q.stream ? 'stream' : 'lines';
    write(''); // found: the answer starts now
    const emit = (text: string) => {
      if (!text) return;
      // Streamed output is the text as streamed: no line times to strip.
      write(q.timestamps || q.stream ? text : text.replace(/^\S+ /gm, ''));
    };
    const stored = await readLog(this.v.store, ref, kind);
    if (stored.dropped) write(q.stream ? STREAM_DROPPED_LINE : `${LOG_DROPPED_LINE}\n`);
    emit(stored.text);
    if (!q.follow || stored.ended) return 'ok';
    // Over already (an attempt that logged nothing, or whose end mark never came): nothing more will.
    const over = () => state.final || attempt < state.attempt;
    if (over()) return 'ok';
    let timer: NodeJS.Timeout | undefined;
    const ended = new Promise<void>((resolve) => {
      const check = async () => {
        try {
          const now = await this.attemptState(namespace, workflow, q.task);
          if (!now || now.final || now.attempt > attempt) {
            // Lines flushed just before the end are on their way: give them one flush interval.
            timer = setTimeout(resolve, 2 * LOG_FLUSH_MS);
            return;
          }
        } catch {
          // etcd busy: look again next time
        }
        if (!signal.aborted) timer = setTimeout(() => void check(), FOLLOW_CHECK_MS);
      };
      timer = setTimeout(() => void check(), FOLLOW_CHECK_MS);
    });
    try {
      await followLog(this.v.store, ref, stored, emit, ended, signal, kind);
    } finally {
      clearTimeout(timer);
    }
    return 'ok';
  }
}
