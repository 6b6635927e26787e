import { createHash } from 'node:crypto';
import type { ApprovalAsk, ApprovalVerdict } from '../api/approvals.ts';
import { parsePoolRef } from '../api/sharing.ts';
import {
  type Approval,
  type ApprovalDecision,
  type ApprovalTimeoutAction,
  type Budget,
  DEFAULT_APPROVAL_ON_TIMEOUT,
  DEFAULT_MAX_FOREACH_ITEMS,
  DEFAULT_MAX_SPAWNED_CHILDREN,
  DEFAULT_PRIORITY,
  DEFAULT_RETRY,
  DEFAULT_TASK_COST,
  MAX_APPROVAL_MESSAGE,
  MAX_EXPRESSION_COST,
  MAX_LIMIT_KEY_LENGTH,
  MAX_MEMO_KEY_LENGTH,
  MAX_TASK_EXPRESSION_COST,
  type WorkflowObjectSpec,
  type WorkflowSpec,
  type WorkflowStatus,
  type WorkflowTask,
} from '../api/workflow.ts';
import type { TemplateOrigin } from '../api/workflow-template.ts';
import { isHeldMessage } from '../dispatcher/limits.ts';
import type { SpawnedChild, SpawnOutcome, SpawnRequest, TaskEvent, TaskSpec } from '../dispatcher/types.ts';
import { rfc3339 } from '../lib/time.ts';
import { runTraceId, tracingEnabled } from '../lib/tracing.ts';
import type { MemoEntry, RunRecord, TaskRecord, TaskRef } from '../state/index.ts';
import { CostBudget, type EvalContext, evalCondition, evalKey, evalList, renderInput } from './expressions.ts';
import { ACTIVE, type TaskPhase, TERMINAL } from './phases.ts';
import { RunIndex } from './run-index.ts';
import { budgetAction, budgetExceeded, countAttempt, RunUsage } from './usage.ts';

export type { TaskPhase } from './phases.ts';
export type RunPhase = 'Pending' | 'Running' | 'Succeeded' | 'Failed' | 'Cancelled' | 'Suspended';

/**
 * Why a run ended without success: the reason of its Failed condition. One
 * value per cause, so `kubectl wait` users and alerts can tell them apart.
 */
export type RunFailureReason =
  /** A task failed for good (not retryable, or out of attempts). */
  | 'TaskFailed'
  /** spec.timeoutSeconds passed. */
  | 'Timeout'
  /** Cancelled through the agentflow.io/cancel annotation. */
  | 'Cancelled'
  /** A when, forEach or input expression could not be evaluated. */
  | 'ExpressionFailed'
  /** A task spawned children beyond a limit. */
  | 'SpawnRefused'
  /** The AgentPool a task needs did not appear within the waiting deadline. */
  | 'PoolNotFound'
  /** No connected agent served a queued task's handler within the waiting deadline. */
  | 'HandlerNotServed'
  /** No agent of the pool connected within the waiting deadline. */
  | 'NoAgentConnected'
  /** The workflow is being deleted. */
  | 'Deleted'
  /** A person rejected an approval task. */
  | 'ApprovalRejected'
  /** An approval task's timeoutSeconds passed with onTimeout Reject. */
  | 'ApprovalTimeout'
  /** The usage the handlers reported passed spec.budget (action Fail). */
  | 'BudgetExceeded';

/** Who decided an approval (the user the API server authenticated). */
export interface UserRef {
  username: string;
  groups: readonly string[];
}

/** Why a decision on an approval task was refused (the data API maps each to an HTTP status). */
export type ApprovalRefusal = 'UnknownTask' | 'NotApproval' | 'NotWaiting' | 'NotApprover';
export type ApprovalOutcome = { ok: true } | { ok: false; code: ApprovalRefusal; message: string };

function waitingMessage(message: string, a: Pick<Approval, 'timeoutSeconds' | 'onTimeout'>): string {
  const limit =
    a.timeoutSeconds === undefined
      ? ''
      : ` (${a.onTimeout ?? DEFAULT_APPROVAL_ON_TIMEOUT} after ${a.timeoutSeconds}s without a decision)`;
  return `waiting for approval${message ? `: ${message}` : ''}${limit}`.slice(0, MAX_MESSAGE);
}

/**
 * Queued work no connected agent can take: its pool has no agent, or none of
 * its agents registers the handler. The workflow shows it as its Waiting
 * condition and fails after the operator's waiting deadline.
 */
export interface Unserved {
  pool: string;
  handler: string;
  /** Queued instances that need it. */
  tasks: number;
  /** Agents of the pool connected now (none of them serves the handler). */
  agents: number;
  /** Handlers those agents do serve. */
  served: readonly string[];
}

/**
 * How long queued work must stay unserved before the run reports it: agents of
 * a pool scaled from zero or rolling over connect within moments, and a
 * condition that flaps on every scale-up would be noise.
 */
export const UNSERVED_GRACE_MS = 3_000;

/** What the last retry request (agentflow.io/retry) did. */
export interface RetryRecord {
  /** The annotation's value it answered. */
  token: string;
  at: string;
  /** Whether it re-ran anything (false: refused, `message` says why). */
  started: boolean;
  /** Instances it put back to run. */
  tasks: number;
  message: string;
}

/** What a run needs from its surroundings: the dispatcher, and a clock. */
export interface RunHost {
  submit(spec: TaskSpec): void;
  cancel(ref: TaskRef, reason: string): void;
  /** Whether the dispatcher already tracks the task (adopted after a failover). */
  tracked(ref: TaskRef): boolean;
  /**
   * The dispatcher adopted the task's running attempt from its agent before this run resumed: here
   * are its concurrency key and rate limits, so the attempt counts against its key.
   */
  adopted?(spec: TaskSpec): void;
  now(): number;
  /**
   * The task slots of one agent of a pool (its spec.agent.capacity), if the pool
   * is known: a spawned child that costs more could never run.
   */
  poolCapacity?(pool: string): number | undefined;
  /**
   * A memoized task is due: the engine looks its key up in the namespace's cache and answers with
   * memoHit (a fresh entry: the task is not dispatched) or submits `spec` to the dispatcher.
   */
  lookupMemo?(spec: TaskSpec, memo: { key: string; maxAgeSeconds?: number }): void;
  /** A memoized task succeeded: its output goes into the cache under its key. */
  rememberMemo?(key: string, entry: MemoEntry): void;
}

/** The operator-wide caps on what one run may grow to (the operator's flags). */
export interface RunLimits {
  /** Most items a forEach list may yield (--max-foreach-items). */
  maxForEachItems: number;
  /** Most children one task may spawn, its descendants included (--max-spawned-children). */
  maxSpawnedChildren: number;
}

export const DEFAULT_RUN_LIMITS: RunLimits = {
  maxForEachItems: DEFAULT_MAX_FOREACH_ITEMS,
  maxSpawnedChildren: DEFAULT_MAX_SPAWNED_CHILDREN,
};

export interface AuditItem {
  type: string;
  task?: string;
  attempt?: number;
  agentId?: string;
  detail?: Record<string, unknown>;
}

/** What a run takes from the dispatcher: its task events, a spawn with or without a way to answer it. */
export type RunEvent = Exclude<TaskEvent, { type: 'spawn' }> | SpawnRequest;

interface Instance extends TaskRecord {
  phase: TaskPhase;
  /** The attempt's latest progress report (shown in the status; not saved to etcd). */
  progress?: string;
  /** Input rendered: ready to run once a slot (parallelism) is free. */
  ready?: boolean;
  /** Own result committed, children still running. */
  ownDone?: boolean;
}

/** status.outputs is capped so the object stays small; bigger outputs stay in etcd. */
export const MAX_STATUS_OUTPUT_BYTES = 16 * 1024;
const MAX_MESSAGE = 1024;

/** rfc3339 of a time in ms, remembered for its second: a burst of events formats it once, not per task. */
let isoSecond = Number.NaN;
let isoText = '';
function iso(ms: number): string {
  const second = Math.floor(ms / 1000);
  if (second !== isoSecond) {
    isoSecond = second;
    isoText = rfc3339(ms);
  }
  return isoText;
}
/** JSON with object keys sorted: the same value whatever order its keys were built in. */
function canonicalJson(v: unknown): string {
  return JSON.stringify(v ?? null, (_k, x: unknown) =>
    x !== null && typeof x === 'object' && !Array.isArray(x)
      ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : x,
  );
}

/**
 * What identifies the spec a run runs: every field but those applied live
 * (suspend, ttlSecondsAfterFinished). An edit that changes it is not applied to
 * a run that has started, and a retry under a changed spec is refused.
 */
export function specHash(spec: WorkflowSpec | WorkflowObjectSpec): string {
  const { suspend: _s, ttlSecondsAfterFinished: _t, budget: _b, ...fixed } = spec;
  return createHash('sha256').update(canonicalJson(fixed)).digest('hex').slice(0, 16);
}

const isTemplateOrigin = (v: unknown): v is TemplateOrigin =>
  typeof v === 'object' &&
  v !== null &&
  typeof (v as TemplateOrigin).name === 'string' &&
  typeof (v as TemplateOrigin).uid === 'string' &&
  Number.isInteger((v as TemplateOrigin).generation);

/** The task of the spec (or forEach item) a spawned child descends from: `a.3~c~d` -> `a.3`. */
const rootOf = (name: string): string => name.split('~', 1)[0] as string;

/**
 * One Workflow's run: the DAG state machine. Event-driven and synchronous
 * (no I/O): the engine feeds it dispatcher events and ticks, persists what
 * it marks dirty, and writes the status it summarises.
 */
export class WorkflowRun {
  readonly namespace: string;
  readonly name: string;
  readonly uid: string;
  readonly spec: WorkflowSpec;
  private readonly host: RunHost;
  private readonly templates = new Map<string, WorkflowTask>();
  private readonly order: string[];
  private readonly instances = new Map<string, Instance>();
  /** Instances per spec task whose output came from the memoization cache (status.tasks[].memoized). */
  private readonly memoHits = new Map<string, number>();
  /** Counts, ready and retry queues kept on every change (touch), so an event costs O(log n), not a scan. */
  private readonly index = new RunIndex();
  /** forEach templates already expanded, with their item counts; and templates decided (when / expansion). */
  private readonly expanded = new Map<string, number>();
  private readonly skipped = new Set<string>();
  /** Why a forEach template failed before it had instances (its status summary shows it). */
  private readonly templateFailures = new Map<string, string>();
  /** Children spawned under each task of the spec (or forEach item), descendants included. */
  private readonly spawnedUnder = new Map<string, number>();
  /** Activation stopped for this step because its expressions had cost enough (see activate). */
  private activationDeferred = false;
  /** Approval tasks waiting for a decision (phase Waiting). */
  private readonly awaiting = new Set<string>();
  private readonly limits: RunLimits;
  private suspended = false;
  /** Model usage of the committed results, per spec task and in all (status.usage). */
  private readonly usage = new RunUsage();
  /** spec.budget as it is now (applied live, like suspend). */
  private budget: Budget | undefined;
  /** Why the run holds new tasks back (spec.budget with action Suspend exceeded), if it does. */
  budgetHold: string | undefined;
  phase: RunPhase = 'Pending';
  message = '';
  /** Why it failed (phase Failed or Cancelled). */
  reason: RunFailureReason | undefined;
  startedAt: number;
  finishedAt: number | undefined;
  /** When the workflow deadline started counting: the start, or the latest retry. */
  private deadlineFrom: number;
  /** The run's trace (OpenTelemetry): the same id whichever leader runs it. */
  readonly traceId: string;
  /** The spec this run runs (see specHash). */
  readonly specHash: string;
  /** The WorkflowTemplate the spec came from, as it was when the run started. */
  readonly template?: TemplateOrigin;
  /** Times a retry re-ran it, and what the last retry request did. */
  retries = 0;
  lastRetry: RetryRecord | undefined;
  /** Queued work no agent can take, and since when (see UNSERVED_GRACE_MS). */
  private unserved: Unserved[] = [];
  private unservedSince: number | undefined;
  private unservedShown = '';
  readonly dirty = new Set<string>();
  runDirty = true;
  /** The spec is not in etcd yet (saved once, with the first flush: a new leader resumes with it). */
  specDirty: boolean;
  readonly audit: AuditItem[] = [];
  /** Bumped on every change the status shows. */
  version = 0;

  constructor(
    wf: {
      namespace: string;
      name: string;
      uid: string;
      spec: WorkflowSpec;
      rerunOf?: string;
      budget?: Budget;
      /** The spec as the Workflow writes it when it is not spec itself (a template's): what specHash hashes. */
      source?: WorkflowObjectSpec;
      template?: TemplateOrigin;
    },
    host: RunHost,
    loaded?: { run?: RunRecord; tasks: TaskRecord[]; specSaved?: boolean },
    limits: Partial<RunLimits> = {},
  ) {
    this.limits = { ...DEFAULT_RUN_LIMITS, ...limits };
    this.namespace = wf.namespace;
    this.name = wf.name;
    this.uid = wf.uid;
    this.spec = wf.spec;
    this.host = host;
    this.budget = 'budget' in wf ? wf.budget : wf.spec.budget;
    for (const t of wf.spec.tasks) this.templates.set(t.name, t);
    this.order = wf.spec.tasks.map((t) => t.name);
    this.startedAt = host.now();
    this.deadlineFrom = this.startedAt;
    const run = loaded?.run?.uid === wf.uid ? loaded.run : undefined;
    // Records written before spec hashes were kept run the spec they are given.
    this.specHash = run?.specHash ?? specHash(wf.source ?? wf.spec);
    this.traceId = runTraceId(wf.uid);
    // What etcd holds is checked, not trusted: a record without a well-formed template has none.
    const template = run ? (isTemplateOrigin(run.template) ? run.template : undefined) : wf.template;
    if (template) this.template = template;
    this.specDirty = !(run && loaded?.specSaved);
    if (run && loaded) this.restore(run, loaded.tasks);
    else {
      this.audit.push({
        type: 'WorkflowStarted',
        detail: { tasks: this.order.length, ...(wf.rerunOf && { rerunOf: wf.rerunOf }) },
      });
      for (const t of wf.spec.tasks) {
        if (!t.forEach) this.put(this.newInstance(t, t.name));
      }
    }
  }

  // ---- restore after a leader change ----

  private restore(run: RunRecord, tasks: TaskRecord[]): void {
    this.phase = run.phase as RunPhase;
    this.suspended = this.phase === 'Suspended';
    this.message = run.message ?? '';
    if (run.reason) this.reason = run.reason as RunFailureReason;
    this.startedAt = Date.parse(run.startedAt);
    this.deadlineFrom = run.retriedAt ? Date.parse(run.retriedAt) : this.startedAt;
    if (run.finishedAt) this.finishedAt = Date.parse(run.finishedAt);
    this.retries = run.retries ?? 0;
    if (run.lastRetry) this.lastRetry = run.lastRetry;
    for (const [t, n] of Object.entries(run.expanded)) {
      if (n < 0) this.skipped.add(t);
      else this.expanded.set(t, n);
    }
    for (const r of tasks) {
      const inst: Instance = { ...r, phase: r.phase as TaskPhase };
      // Work that was queued or running under the previous leader: hand it out again unless the
      // dispatcher already adopted it from a reconnecting agent. A result committed meanwhile
      // comes back from the dispatcher as "already committed" instead of running twice.
      if (ACTIVE.has(inst.phase) && !this.host.tracked(this.ref(inst.name))) {
        inst.phase = 'Pending';
        inst.ready = true;
        // Hand out the same attempt again: if its agent is alive it reconnects and the dispatcher
        // adopts the attempt under this number; if not, the attempt runs anew once its claim expires.
        inst.attempt = Math.max(0, inst.attempt - 1);
      }
      if (inst.phase === 'Pending' && inst.input !== undefined) inst.ready = true;
      this.instances.set(inst.name, inst);
      this.index.update(inst);
      if (inst.usage) this.usage.add(inst.template, inst.usage.models);
      if (inst.memo) this.memoHits.set(inst.template, (this.memoHits.get(inst.template) ?? 0) + 1);
      if (inst.phase === 'Waiting') this.awaiting.add(inst.name);
      if (inst.parent) {
        const root = rootOf(inst.name);
        this.spawnedUnder.set(root, (this.spawnedUnder.get(root) ?? 0) + 1);
      }
    }
    // Attempts the dispatcher adopted before this run resumed hold a slot of their concurrency key.
    let ctx: EvalContext | undefined;
    for (const i of this.instances.values()) {
      if (!ACTIVE.has(i.phase) || !this.host.adopted || !this.host.tracked(this.ref(i.name))) continue;
      try {
        const limits = this.limitsOf(i, () => (ctx ??= this.context()));
        if (limits.concurrency) this.host.adopted({ ...this.specOf(i), ...limits });
      } catch {
        // Its key does not evaluate: the attempt was submitted without one, and runs so.
      }
    }
    this.audit.push({ type: 'RunResumed', detail: { tasks: tasks.length } });
    // Suspended by its budget, not by spec.suspend: step() holds it again (see applyBudget).
    if (this.suspended && budgetExceeded(this.usage.totals, this.budget)) this.suspended = false;
  }

  // ---- bookkeeping ----

  private ref(task: string): TaskRef {
    return { namespace: this.namespace, workflow: this.name, task };
  }

  private newInstance(t: WorkflowTask, name: string, extra: Partial<Instance> = {}): Instance {
    return {
      name,
      template: t.name,
      phase: 'Pending',
      attempt: 0,
      // An approval task has neither: no agent runs it.
      handler: t.handler ?? '',
      pool: t.approval ? '' : ((t.pool ?? this.spec.pool) as string),
      cost: t.cost ?? DEFAULT_TASK_COST,
      ...extra,
    };
  }

  private put(i: Instance): void {
    this.instances.set(i.name, i);
    this.touch(i);
  }

  /** After every change to an instance: it is saved with the next flush, and the index follows it. */
  private touch(i: Instance): void {
    this.dirty.add(i.name);
    this.version++;
    this.index.update(i);
  }

  private setPhase(phase: RunPhase, message = '', reason?: RunFailureReason): void {
    if (this.phase === phase && this.message === message && this.reason === reason) return;
    this.phase = phase;
    this.message = message.slice(0, MAX_MESSAGE);
    this.reason = reason;
    if (phase === 'Succeeded' || phase === 'Failed' || phase === 'Cancelled') this.finishedAt = this.host.now();
    else this.finishedAt = undefined;
    this.runDirty = true;
    this.version++;
    this.audit.push({
      type: `Workflow${phase}`,
      ...((message || reason) && { detail: { ...(message && { message: this.message }), ...(reason && { reason }) } }),
    });
  }

  get finished(): boolean {
    return this.phase === 'Succeeded' || this.phase === 'Failed' || this.phase === 'Cancelled';
  }

  /** The run record for etcd. */
  runRecord(): RunRecord {
    const expanded: Record<string, number> = Object.fromEntries(this.expanded);
    for (const s of this.skipped) expanded[s] = -1;
    return {
      uid: this.uid,
      // Full precision: the workflow deadline is computed from it after a restore.
      startedAt: new Date(this.startedAt).toISOString(),
      ...(this.finishedAt !== undefined && { finishedAt: new Date(this.finishedAt).toISOString() }),
      phase: this.phase,
      ...(this.message && { message: this.message }),
      ...(this.reason && { reason: this.reason }),
      expanded,
      specHash: this.specHash,
      ...(this.template && { template: this.template }),
      ...(this.retries > 0 && { retries: this.retries, retriedAt: new Date(this.deadlineFrom).toISOString() }),
      ...(this.lastRetry && { lastRetry: this.lastRetry }),
    };
  }

  record(name: string): TaskRecord | undefined {
    const i = this.instances.get(name);
    if (!i) return undefined;
    const { ready: _r, ownDone: _o, progress: _p, ...rec } = i;
    return rec;
  }

  /** Every instance's record with its latest progress report (the data API's task table). */
  views(): (TaskRecord & { progress?: string })[] {
    return [...this.instances.values()].map(({ ready: _r, ownDone: _o, ...rec }) => rec);
  }

  // ---- control ----

  setSuspended(suspend: boolean): void {
    if (this.finished || suspend === this.suspended) return;
    this.suspended = suspend;
    if (suspend) {
      // Queued (not yet running) work goes back to waiting; running attempts finish.
      for (const i of this.instances.values()) {
        if (i.phase === 'Queued') {
          this.host.cancel(this.ref(i.name), 'workflow suspended');
          i.phase = 'Pending';
          i.ready = true;
          this.touch(i);
        }
      }
      this.setPhase('Suspended', 'spec.suspend is true: no new tasks start');
    } else {
      this.setPhase('Running');
      this.step();
    }
  }

  /** Whether the usage so far is over spec.budget as it is now, and by what figure. */
  budgetOver(): ReturnType<typeof budgetExceeded> {
    return budgetExceeded(this.usage.totals, this.budget);
  }

  /** Whether the run has a spec.budget now. */
  get hasBudget(): boolean {
    return this.budget !== undefined;
  }

  /** Applies spec.budget as it is now: raising (or removing) it resumes a run it held back. */
  setBudget(budget: Budget | undefined): void {
    if (canonicalJson(budget) === canonicalJson(this.budget)) return;
    this.budget = budget;
    this.step();
  }

  /**
   * Compares the usage so far with spec.budget: over it with action Fail, the run fails; with
   * Suspend, queued tasks go back to waiting and none starts (running ones finish) while it is over.
   */
  private applyBudget(): void {
    const over = budgetExceeded(this.usage.totals, this.budget);
    if (over && budgetAction(this.budget) === 'Fail') {
      this.budgetHold = undefined;
      this.fail(`the workflow exceeded its budget: ${over.message}`, 'BudgetExceeded');
      return;
    }
    const hold = over ? `budget exceeded: ${over.message}; raise or remove spec.budget to resume` : undefined;
    if (hold !== this.budgetHold) {
      this.budgetHold = hold;
      this.version++;
      this.audit.push(
        over
          ? { type: 'BudgetExceeded', detail: { limit: over.limit, message: over.message } }
          : { type: 'BudgetResumed' },
      );
      if (hold) {
        for (const i of this.instances.values()) {
          if (i.phase !== 'Queued') continue;
          this.host.cancel(this.ref(i.name), 'workflow over its budget');
          i.phase = 'Pending';
          i.ready = true;
          this.touch(i);
        }
      }
    }
    if (this.suspended) return;
    if (hold && (this.phase !== 'Suspended' || this.message !== hold)) this.setPhase('Suspended', hold);
    else if (!hold && this.phase === 'Suspended') this.setPhase('Running');
  }

  /** Counts a committed result's usage (once per attempt, also after the run finished). */
  private countUsage(i: Instance, r: { attempt: number; usage?: Parameters<typeof countAttempt>[2] }): void {
    const added = countAttempt(i, r.attempt, r.usage);
    if (added.length === 0) return;
    this.usage.add(i.template, added);
    this.touch(i);
  }

  /** Cancels every queued or running attempt; the run ends Cancelled (or Failed, with `as`), for `why`. */
  stop(reason: string, as: 'Cancelled' | 'Failed' = 'Cancelled', why: RunFailureReason = 'Cancelled'): void {
    if (this.finished) return;
    for (const i of this.instances.values()) {
      if (TERMINAL.has(i.phase)) continue;
      if (ACTIVE.has(i.phase)) this.host.cancel(this.ref(i.name), reason);
      this.awaiting.delete(i.name);
      i.phase = 'Cancelled';
      i.finishedAt = iso(this.host.now());
      this.touch(i);
      this.audit.push({ type: 'TaskCancelled', task: i.name, attempt: i.attempt, detail: { reason } });
    }
    this.unserved = [];
    this.unservedSince = undefined;
    this.unservedShown = '';
    this.setPhase(as, reason, why);
  }

  // ---- the DAG ----

  private templateDone(name: string): boolean {
    if (this.skipped.has(name)) return true;
    const t = this.templates.get(name);
    if (!t) return false;
    if (t.forEach) {
      // Its items are `name.0` .. `name.<n-1>`: done when n of them succeeded.
      const n = this.expanded.get(name);
      return n !== undefined && (this.index.tally(name)?.itemsSucceeded ?? 0) === n;
    }
    return this.instances.get(name)?.phase === 'Succeeded';
  }

  private outputOf(name: string): unknown {
    if (this.skipped.has(name)) return null;
    const t = this.templates.get(name);
    if (t?.forEach) {
      const n = this.expanded.get(name) ?? 0;
      return Array.from({ length: n }, (_, k) => this.instances.get(`${name}.${k}`)?.output ?? null);
    }
    return this.instances.get(name)?.output ?? null;
  }

  /** What expressions see: the inputs and the outputs of every finished task. */
  private context(): EvalContext {
    const tasks: Record<string, { output: unknown }> = {};
    for (const name of this.order) if (this.templateDone(name)) tasks[name] = { output: this.outputOf(name) };
    return { inputs: this.spec.inputs ?? {}, tasks };
  }

  private fail(message: string, why: RunFailureReason): void {
    this.stop(message, 'Failed', why);
  }

  /** Fails the run for a reason found outside it (the controller's waiting deadline). */
  failFor(why: RunFailureReason, message: string): void {
    this.fail(message, why);
  }

  /** Decides what can be decided (when, forEach, inputs) and hands ready tasks to the dispatcher. */
  step(): void {
    if (this.finished) return;
    if (this.phase === 'Pending') this.setPhase(this.suspended ? 'Suspended' : 'Running');
    this.applyBudget();
    if (this.finished) return;
    const now = this.host.now();
    if (this.spec.timeoutSeconds && now - this.deadlineFrom > this.spec.timeoutSeconds * 1000) {
      this.fail(
        `the workflow exceeded its timeout of ${this.spec.timeoutSeconds}s${this.retries > 0 ? ' (counted from its latest retry)' : ''}`,
        'Timeout',
      );
      return;
    }
    this.activate();
    if (this.finished) return;
    if (!this.suspended && !this.budgetHold) this.dispatch(now);
    if (this.order.every((n) => this.templateDone(n))) {
      this.setPhase('Succeeded');
    }
  }

  /**
   * Starts what can start: evaluates `when`, expands `forEach`, renders inputs.
   * The expressions that start one task share a budget (MAX_TASK_EXPRESSION_COST)
   * on top of each one's own; once a step has spent MAX_EXPRESSION_COST, the
   * tasks left wait for the next tick, so that one run's expressions hold the
   * leader's event loop for a bounded time.
   */
  private activate(): void {
    this.activationDeferred = false;
    let spent = 0;
    this.order.forEach((name, ti) => {
      if (this.finished || this.activationDeferred || this.skipped.has(name) || this.expanded.has(name)) return;
      const t = this.templates.get(name) as WorkflowTask;
      const single = t.forEach ? undefined : this.instances.get(name);
      if (single && (single.ready || single.phase !== 'Pending')) return;
      if (!(t.dependsOn ?? []).every((d) => this.templateDone(d))) return;
      if (spent >= MAX_EXPRESSION_COST) {
        this.activationDeferred = true;
        return;
      }
      const field = `spec.tasks[${ti}]`;
      const budget = new CostBudget(MAX_TASK_EXPRESSION_COST);
      try {
        const ctx: EvalContext = { ...this.context(), budget };
        if (t.when !== undefined && !evalCondition(t.when, ctx, `${field}.when`)) {
          this.skipped.add(name);
          this.runDirty = true;
          if (single) {
            single.phase = 'Skipped';
            single.message = `when is false: ${t.when}`.slice(0, MAX_MESSAGE);
            this.touch(single);
          }
          this.audit.push({ type: 'TaskSkipped', task: name, detail: { when: t.when } });
          return;
        }
        if (t.forEach) {
          const items = evalList(t.forEach, ctx, `${field}.forEach`, this.limits.maxForEachItems);
          // The outputs are the same for every item: reuse ctx (a fan-out over a fan-out would
          // otherwise rebuild the upstream output list once per item). Every input is rendered
          // before any instance exists, so a failing item leaves no half expansion behind.
          const inputs = items.map((item, k) =>
            renderInput(t.input ?? {}, { ...ctx, item, index: k }, `${field}.input`),
          );
          inputs.forEach((input, k) => {
            this.put(this.newInstance(t, `${name}.${k}`, { index: k, input, ready: true }));
          });
          this.expanded.set(name, items.length);
          this.runDirty = true;
          this.audit.push({ type: 'TaskExpanded', task: name, detail: { items: items.length } });
        } else if (single && t.approval) {
          this.openApproval(single, t.approval, ctx, `${field}.approval`);
        } else if (single) {
          single.input = renderInput(t.input ?? {}, ctx, `${field}.input`);
          single.ready = true;
          this.touch(single);
        }
      } catch (err) {
        const message = (err as Error).message;
        if (single) {
          single.phase = 'Failed';
          single.message = message.slice(0, MAX_MESSAGE);
          this.touch(single);
        } else this.templateFailures.set(name, message.slice(0, MAX_MESSAGE));
        this.audit.push({ type: 'TaskFailed', task: name, detail: { message } });
        this.fail(`task ${name}: ${message}`, 'ExpressionFailed');
      } finally {
        spent += budget.used;
      }
    });
  }

  private dispatch(now: number): void {
    const limit = this.spec.parallelism ?? Number.POSITIVE_INFINITY;
    // What is due (Pending and ready, or Retrying past its back-off) goes in the run's instance order.
    let ctx: EvalContext | undefined;
    const context = () => (ctx ??= this.context());
    for (let active = this.index.active; active < limit; active++) {
      const name = this.index.takeEligible(now);
      if (name === undefined) break;
      this.submit(this.instances.get(name) as Instance, context);
      if (this.finished) break;
    }
  }

  /**
   * The task's concurrency key and rate-limit keys, evaluated (spec task's own instances; spawned
   * children run without). Throws an EvaluationError naming the field.
   */
  private limitsOf(i: Instance, context: () => EvalContext): Pick<TaskSpec, 'concurrency' | 'rateLimits'> {
    const t = this.templates.get(i.template);
    if (!t || i.parent || (!t.concurrency && !t.rateLimits?.length)) return {};
    const field = `spec.tasks[${this.order.indexOf(i.template)}]`;
    const ctx: EvalContext = {
      ...context(),
      input: i.input ?? {},
      ...(i.index !== undefined && { index: i.index }),
      budget: new CostBudget(MAX_TASK_EXPRESSION_COST),
    };
    return {
      ...(t.concurrency && {
        concurrency: {
          key: evalKey(t.concurrency.key, ctx, `${field}.concurrency.key`, MAX_LIMIT_KEY_LENGTH),
          max: t.concurrency.max,
        },
      }),
      ...(t.rateLimits?.length && {
        rateLimits: t.rateLimits.map((r, k) => ({
          name: r.name,
          ...(r.key !== undefined && {
            key: evalKey(r.key, ctx, `${field}.rateLimits[${k}].key`, MAX_LIMIT_KEY_LENGTH),
          }),
        })),
      }),
    };
  }

  /**
   * The task's memoization key and age, evaluated (a spec task's own instances; spawned children
   * are not memoized): its CEL key, or its handler and rendered input. Throws an EvaluationError
   * naming the field.
   */
  private memoOf(i: Instance, context: () => EvalContext): { key: string; maxAgeSeconds?: number } | undefined {
    const t = this.templates.get(i.template);
    const m = t?.memoize;
    if (!m || i.parent || !this.host.lookupMemo) return undefined;
    let key: string;
    if (m.key !== undefined) {
      const ctx: EvalContext = {
        ...context(),
        input: i.input ?? {},
        ...(i.index !== undefined && { index: i.index }),
        budget: new CostBudget(MAX_TASK_EXPRESSION_COST),
      };
      key = evalKey(m.key, ctx, `spec.tasks[${this.order.indexOf(i.template)}].memoize.key`, MAX_MEMO_KEY_LENGTH);
    } else {
      key = `${i.handler}:${createHash('sha256')
        .update(canonicalJson(i.input ?? null))
        .digest('hex')}`;
    }
    return { key, ...(m.maxAgeSeconds !== undefined && { maxAgeSeconds: m.maxAgeSeconds }) };
  }

  private submit(i: Instance, context: () => EvalContext): void {
    let limits: Pick<TaskSpec, 'concurrency' | 'rateLimits'>;
    let memo: { key: string; maxAgeSeconds?: number } | undefined;
    try {
      limits = this.limitsOf(i, context);
      memo = this.memoOf(i, context);
    } catch (err) {
      const message = (err as Error).message;
      i.phase = 'Failed';
      i.message = message.slice(0, MAX_MESSAGE);
      this.touch(i);
      this.audit.push({ type: 'TaskFailed', task: i.name, detail: { message } });
      this.fail(`task ${i.name}: ${message}`, 'ExpressionFailed');
      return;
    }
    i.attempt++;
    i.phase = 'Queued';
    delete i.retryAt;
    if (memo) i.memoKey = memo.key;
    this.touch(i);
    if (memo && this.host.lookupMemo) this.host.lookupMemo({ ...this.specOf(i), ...limits }, memo);
    else this.host.submit({ ...this.specOf(i), ...limits });
    this.audit.push({ type: 'TaskQueued', task: i.name, attempt: i.attempt });
  }

  /** Whether the task's attempt is queued and not yet handed to the dispatcher's agents (a memo lookup may end it). */
  awaitsMemo(task: string, attempt: number): boolean {
    const i = this.instances.get(task);
    return !this.finished && i !== undefined && i.phase === 'Queued' && i.attempt === attempt;
  }

  /**
   * The cache had an output for the queued attempt's key: the task succeeds with it, no agent runs
   * it. Ignored if the attempt is no longer queued (cancelled, the run finished).
   */
  memoHit(task: string, attempt: number, entry: MemoEntry): void {
    const i = this.instances.get(task);
    if (!i || !this.awaitsMemo(task, attempt)) return;
    i.output = entry.output ?? null;
    i.memo = { workflow: entry.workflow, task: entry.task, attempt: entry.attempt, createdAt: entry.createdAt };
    i.startedAt ??= iso(this.host.now());
    this.audit.push({
      type: 'TaskMemoized',
      task: i.name,
      attempt,
      detail: {
        key: entry.key,
        from: `${entry.workflow}/${entry.task}`,
        fromAttempt: entry.attempt,
        cachedAt: entry.createdAt,
      },
    });
    this.memoHits.set(i.template, (this.memoHits.get(i.template) ?? 0) + 1);
    this.succeed(i);
    i.message =
      `memoized: output of ${entry.workflow}/${entry.task} attempt ${entry.attempt}, cached ${entry.createdAt}`.slice(
        0,
        MAX_MESSAGE,
      );
    this.step();
  }

  private specOf(i: Instance): TaskSpec {
    const timeout = this.templates.get(i.template)?.timeoutSeconds;
    const pool = parsePoolRef(i.pool, this.namespace) ?? { namespace: this.namespace, name: i.pool };
    return {
      ref: this.ref(i.name),
      pool: pool.name,
      ...(pool.namespace !== this.namespace && { poolNamespace: pool.namespace }),
      handler: i.handler,
      input: i.input ?? null,
      attempt: i.attempt,
      cost: i.cost,
      priority: this.spec.priority ?? DEFAULT_PRIORITY,
      ...(timeout !== undefined && { timeoutSeconds: timeout }),
      ...(i.verdicts?.length && { approvals: i.verdicts }),
      ...(tracingEnabled() && { traceId: this.traceId }),
    };
  }

  /** Retries whose back-off is over, and the workflow deadline. */
  tick(): void {
    if (this.finished) return;
    this.expireApprovals();
    this.step();
  }

  /** The next time tick() has something to do (ms), if any. */
  nextWake(): number | undefined {
    if (this.activationDeferred && !this.finished) return this.host.now();
    let at = this.index.nextRetryAt();
    for (const name of this.awaiting) {
      const due = this.instances.get(name)?.approval?.deadline;
      if (due !== undefined && !this.finished) at = Math.min(at ?? due, due);
    }
    if (this.spec.timeoutSeconds && !this.finished) {
      const deadline = this.deadlineFrom + this.spec.timeoutSeconds * 1000 + 1;
      at = Math.min(at ?? deadline, deadline);
    }
    return at;
  }

  // ---- dispatcher events ----

  onEvent(e: RunEvent): void {
    if (e.type === 'spawn') {
      this.requestSpawn(e);
      return;
    }
    const i = this.instances.get(e.ref.task);
    if (i && e.type === 'committed') this.countUsage(i, e.result);
    if (!i || this.finished) return;
    switch (e.type) {
      case 'started':
        if (i.phase !== 'Queued' || e.attempt !== i.attempt) return;
        i.phase = 'Running';
        delete i.progress;
        if (isHeldMessage(i.message)) delete i.message;
        i.startedAt ??= iso(this.host.now());
        this.touch(i);
        this.audit.push({ type: 'TaskStarted', task: i.name, attempt: e.attempt, agentId: e.agentId });
        return;
      case 'lost':
        // The dispatcher already queued the next attempt.
        i.attempt = e.attempt + 1;
        i.phase = 'Queued';
        this.touch(i);
        this.audit.push({
          type: 'TaskLost',
          task: i.name,
          attempt: e.attempt,
          agentId: e.agentId,
          detail: { reason: e.reason },
        });
        return;
      case 'held':
        // A concurrency key or rate limit holds the queued attempt: its message says which (saved, shown in status).
        if (i.phase !== 'Queued' || e.attempt !== i.attempt || i.message === e.message) return;
        i.message = e.message.slice(0, MAX_MESSAGE);
        this.touch(i);
        return;
      case 'orphanLost':
        this.audit.push({ type: 'TaskLost', task: i.name, attempt: e.attempt, agentId: e.agentId });
        i.phase = 'Pending';
        i.ready = true;
        this.touch(i);
        this.step();
        return;
      case 'timedOut':
        // A deadline can fire while that attempt's result is being committed: the result wins.
        if (TERMINAL.has(i.phase) || i.ownDone || e.attempt !== i.attempt) return;
        this.failedAttempt(i, e.attempt, `attempt ${e.attempt} exceeded its deadline`, true, e.agentId);
        this.step();
        return;
      case 'committed': {
        const r = e.result;
        if (TERMINAL.has(i.phase) || i.ownDone) return;
        if (r.ok) {
          if (r.attempt < i.attempt && i.phase === 'Queued') {
            // A result of an earlier attempt (committed before a failover) is as good as any.
          }
          i.output = r.output ?? null;
          i.attempt = Math.max(i.attempt, r.attempt);
          this.audit.push({ type: 'TaskSucceeded', task: i.name, attempt: r.attempt, agentId: r.agentId });
          if (i.memoKey !== undefined && !i.memo)
            this.host.rememberMemo?.(i.memoKey, {
              key: i.memoKey,
              output: i.output,
              createdAt: iso(this.host.now()),
              workflow: this.name,
              task: i.name,
              attempt: r.attempt,
              ...(r.agentId && { agentId: r.agentId }),
            });
          const pending = (i.children ?? []).filter((c) => this.instances.get(c)?.phase !== 'Succeeded');
          if (pending.length > 0) {
            i.ownDone = true;
            i.message = `waiting for ${pending.length} child task(s)`;
            this.touch(i);
          } else this.succeed(i);
        } else {
          if (r.error?.retryable && r.attempt < i.attempt) return; // a stale retryable failure
          if (r.park) {
            this.parkForApproval(i, r.attempt, r.park, r.agentId);
            this.step();
            return;
          }
          this.failedAttempt(i, r.attempt, r.error?.message ?? 'failed', r.error?.retryable ?? false, r.agentId);
        }
        this.step();
        return;
      }
      case 'progress': {
        // Shown in the task's status summary (the controller writes status at most every few
        // seconds); not saved to etcd: progress is a hint, not state to resume from.
        if (e.attempt !== i.attempt || !ACTIVE.has(i.phase)) return;
        // A negative fraction means "unknown" (docs/protocol.md): the message alone, not "0%".
        const pct =
          Number.isFinite(e.fraction) && e.fraction >= 0 ? `${Math.round(Math.min(1, e.fraction) * 100)}%` : '';
        const text = [pct, e.message].filter(Boolean).join(' ').slice(0, 256);
        if (text === i.progress) return;
        i.progress = text;
        this.version++;
        return;
      }
    }
  }

  private succeed(i: Instance): void {
    i.phase = 'Succeeded';
    i.finishedAt = iso(this.host.now());
    delete i.message;
    delete i.ownDone;
    this.touch(i);
    if (i.parent) this.childSettled(i.parent);
  }

  private childSettled(parentName: string): void {
    const parent = this.instances.get(parentName);
    if (!parent?.ownDone) return;
    const pending = (parent.children ?? []).filter((c) => this.instances.get(c)?.phase !== 'Succeeded');
    if (pending.length === 0) this.succeed(parent);
    else {
      parent.message = `waiting for ${pending.length} child task(s)`;
      this.touch(parent);
    }
  }

  private failedAttempt(i: Instance, attempt: number, message: string, retryable: boolean, agentId?: string): void {
    const t = this.templates.get(i.template);
    const policy = t?.retryPolicy ?? this.spec.retryPolicy;
    const max = policy?.maxAttempts ?? DEFAULT_RETRY.maxAttempts;
    // Attempts count from the latest retry of the workflow: a retried task gets its full policy again.
    // Attempts that ended waiting for approval were not failures: they do not count either.
    const made = attempt - (i.attemptBase ?? 0) - (i.parked ?? 0);
    if (retryable && made < max) {
      const b = policy?.backoff;
      const delay = Math.min(
        (b?.maxSeconds ?? DEFAULT_RETRY.maxSeconds) * 1000,
        (b?.initialSeconds ?? DEFAULT_RETRY.initialSeconds) * 1000 * (b?.factor ?? DEFAULT_RETRY.factor) ** (made - 1),
      );
      i.phase = 'Retrying';
      i.retryAt = this.host.now() + delay;
      i.message = `attempt ${attempt} failed: ${message}; retrying in ${(delay / 1000).toFixed(1)}s`.slice(
        0,
        MAX_MESSAGE,
      );
      this.touch(i);
      this.audit.push({
        type: 'TaskRetrying',
        task: i.name,
        attempt,
        ...(agentId && { agentId }),
        detail: { message, delayMs: delay },
      });
      return;
    }
    i.phase = 'Failed';
    i.finishedAt = iso(this.host.now());
    const why = retryable ? `failed after ${made} attempt(s)` : 'failed (not retryable)';
    i.message = `${why}: ${message}`.slice(0, MAX_MESSAGE);
    this.touch(i);
    this.audit.push({ type: 'TaskFailed', task: i.name, attempt, ...(agentId && { agentId }), detail: { message } });
    this.fail(`task ${i.name} ${why}: ${message}`, 'TaskFailed');
  }

  /**
   * Children an agent spawned for a running attempt join the run. What it returns is not yet
   * "durable": the engine answers the agent only after the records this marked dirty are saved.
   * A request may come again (the agent re-sends until answered, also to a new leader): children
   * already here under the same names, exactly as asked, are taken as they are, so nothing runs
   * twice; a name already given to a different child is refused and nothing is added.
   */
  requestSpawn(e: SpawnRequest): SpawnOutcome {
    const parent = this.instances.get(e.ref.task);
    if (!parent) {
      return { ok: false, code: 'UNKNOWN_TASK', message: `workflow ${this.name} has no task ${e.ref.task}` };
    }
    if (this.finished) {
      return {
        ok: false,
        code: 'STALE_ATTEMPT',
        message: `workflow ${this.name} is ${this.phase}: task ${parent.name} takes no children`,
      };
    }
    if (!ACTIVE.has(parent.phase) || parent.ownDone || parent.attempt !== e.attempt) {
      const state = parent.ownDone ? 'has its result in' : `is ${parent.phase}`;
      return {
        ok: false,
        code: 'STALE_ATTEMPT',
        message: `task ${parent.name} ${state} at attempt ${parent.attempt}: attempt ${e.attempt} may not spawn children`,
      };
    }
    const outcome = this.spawn(parent, e.children);
    this.step();
    return outcome;
  }

  /** Adds the children (see requestSpawn), or fails the parent when they would break a limit. */
  private spawn(parent: Instance, children: SpawnedChild[]): SpawnOutcome {
    const t = this.templates.get(parent.template);
    if (!t) return { ok: false, code: 'UNKNOWN_TASK', message: `task ${parent.name} has no template` };
    const fresh: SpawnedChild[] = [];
    for (const c of children) {
      const name = `${parent.name}~${c.name}`;
      const have = this.instances.get(name);
      if (!have) {
        fresh.push(c);
        continue;
      }
      const differs =
        have.handler !== c.handler
          ? `handler "${have.handler}", not "${c.handler}"`
          : have.cost !== c.cost
            ? `cost ${have.cost}, not ${c.cost}`
            : canonicalJson(have.input) !== canonicalJson(c.input)
              ? 'a different input'
              : undefined;
      if (differs) {
        return {
          ok: false,
          code: 'CONFLICT',
          message: `task ${parent.name} already has a child "${c.name}" with ${differs}: a child name stands for one child, so give a different child another name`,
        };
      }
    }
    const capacity = this.host.poolCapacity?.(parent.pool);
    const tooCostly = capacity === undefined ? undefined : fresh.find((c) => c.cost > capacity);
    if (tooCostly) {
      const reason = `spawned child "${tooCostly.name}" costs ${tooCostly.cost} slots, more than an agent of AgentPool "${parent.pool}" has (spec.agent.capacity ${capacity}): it could never run`;
      this.refuseSpawn(parent, reason);
      return { ok: false, code: 'LIMIT_EXCEEDED', message: reason };
    }
    const root = rootOf(parent.name);
    const total = (this.spawnedUnder.get(root) ?? 0) + fresh.length;
    if (total > this.limits.maxSpawnedChildren) {
      const reason = `spawning ${fresh.length} more children would make ${total} under task ${root} (descendants included), more than the ${this.limits.maxSpawnedChildren} one task may spawn (the operator's --max-spawned-children)`;
      this.refuseSpawn(parent, reason);
      return { ok: false, code: 'LIMIT_EXCEEDED', message: reason };
    }
    this.spawnedUnder.set(root, total);
    for (const c of fresh) {
      this.put(
        this.newInstance(t, `${parent.name}~${c.name}`, {
          parent: parent.name,
          handler: c.handler,
          cost: c.cost,
          input: c.input,
          ready: true,
        }),
      );
    }
    // Also names children that exist without being listed: records saved in more than one
    // transaction may have lost the parent's list in a crash while its children made it.
    const listed = new Set(parent.children ?? []);
    const unlisted = children.map((c) => `${parent.name}~${c.name}`).filter((n) => !listed.has(n));
    if (unlisted.length > 0) {
      parent.children = [...(parent.children ?? []), ...unlisted];
      this.touch(parent);
    }
    if (fresh.length > 0) {
      this.audit.push({ type: 'TaskSpawned', task: parent.name, detail: { children: fresh.map((c) => c.name) } });
    }
    return { ok: true };
  }

  /** Fails a task whose spawn broke a limit; its attempt, still running on its agent, is cancelled. */
  private refuseSpawn(parent: Instance, reason: string): void {
    if (ACTIVE.has(parent.phase)) this.host.cancel(this.ref(parent.name), reason);
    parent.phase = 'Failed';
    parent.finishedAt = iso(this.host.now());
    parent.message = reason.slice(0, MAX_MESSAGE);
    this.touch(parent);
    this.audit.push({ type: 'SpawnRefused', task: parent.name, attempt: parent.attempt, detail: { reason } });
    this.fail(`task ${parent.name}: ${reason}`, 'SpawnRefused');
  }

  // ---- retry ----

  /** Instances a retry runs again: the failed and the cancelled ones. */
  retryTargets(): string[] {
    const out: string[] = [];
    for (const i of this.instances.values()) if (i.phase === 'Failed' || i.phase === 'Cancelled') out.push(i.name);
    return out;
  }

  /**
   * Runs a finished run's failed and cancelled instances again (`names`, from
   * retryTargets); what succeeded or was skipped stays, and the tasks that
   * never started start as the DAG allows. Each retried task gets its retry
   * policy's attempts afresh (attempt numbers keep counting up, so every
   * attempt stays distinct in etcd and the audit), and the workflow deadline
   * counts from now. The caller has moved their failed results aside in etcd
   * first (a committed result is final: the dispatcher would hand it back).
   */
  retry(token: string, names: readonly string[]): void {
    const now = this.host.now();
    for (const n of names) {
      const i = this.instances.get(n);
      if (!i || (i.phase !== 'Failed' && i.phase !== 'Cancelled')) continue;
      i.phase = 'Pending';
      // A task whose input was never rendered (or whose rendering failed) is rendered again.
      i.ready = i.input !== undefined;
      i.attemptBase = i.attempt;
      delete i.finishedAt;
      delete i.message;
      delete i.retryAt;
      delete i.ownDone;
      delete i.progress;
      this.touch(i);
    }
    this.templateFailures.clear();
    this.retries++;
    this.deadlineFrom = now;
    const message = `re-running ${names.length} failed or cancelled task(s); what succeeded is kept`;
    this.lastRetry = { token, at: iso(now), started: true, tasks: names.length, message };
    this.audit.push({
      type: 'WorkflowRetried',
      detail: { token, retry: this.retries, tasks: names.length, names: names.slice(0, 100) },
    });
    this.suspended = false;
    this.setPhase('Running');
    this.step();
  }

  /** Answers a retry request that cannot be followed (the run is not finished, or failed for good). */
  refuseRetry(token: string, message: string): void {
    this.lastRetry = { token, at: iso(this.host.now()), started: false, tasks: 0, message };
    this.runDirty = true;
    this.version++;
    this.audit.push({ type: 'RetryRefused', detail: { token, message } });
  }

  // ---- work no agent can take ----

  /** Pool and handler of every queued instance, with counts (the engine checks them against connected agents). */
  queuedNeeds(): { pool: string; handler: string; tasks: number }[] {
    return this.index.queuedNeeds();
  }

  /** What of the queued work no connected agent can take now (empty: all of it can be taken). */
  setUnserved(list: Unserved[]): void {
    if (this.finished) return;
    if (list.length === 0) this.unservedSince = undefined;
    else this.unservedSince ??= this.host.now();
    this.unserved = list;
    const shown = this.waiting()
      .map((u) => `${u.pool}/${u.handler}/${u.agents}`)
      .join(',');
    if (shown !== this.unservedShown) {
      this.unservedShown = shown;
      this.version++;
    }
  }

  /** Queued work that has had no agent to take it for UNSERVED_GRACE_MS or more. */
  waiting(): readonly Unserved[] {
    if (this.finished || this.suspended || this.unservedSince === undefined) return [];
    return this.host.now() - this.unservedSince >= UNSERVED_GRACE_MS ? this.unserved : [];
  }

  // ---- approvals ----

  /** An approval task's dependencies are done: it waits for a person (holding no agent slot). */
  private openApproval(i: Instance, a: Approval, ctx: EvalContext, field: string): void {
    const message = a.message === undefined ? '' : String(renderInput(a.message, ctx, `${field}.message`));
    const now = this.host.now();
    i.phase = 'Waiting';
    i.startedAt ??= iso(now);
    i.approval = {
      message: message.slice(0, MAX_APPROVAL_MESSAGE),
      ...(a.timeoutSeconds !== undefined && { deadline: now + a.timeoutSeconds * 1000 }),
    };
    i.message = waitingMessage(i.approval.message, a);
    this.awaiting.add(i.name);
    this.touch(i);
    this.audit.push({
      type: 'ApprovalRequested',
      task: i.name,
      detail: {
        message: i.approval.message,
        ...(a.timeoutSeconds !== undefined && { timeoutSeconds: a.timeoutSeconds }),
      },
    });
  }

  /**
   * A person's decision on an approval task (the data API checked RBAC; this checks the spec's
   * approvers and that the task is waiting). Approve: the task succeeds with the decision as its
   * output. Reject: it fails with the reviewer's message, and so does the run.
   */
  decide(task: string, d: { decision: ApprovalDecision; user: UserRef; message?: string }): ApprovalOutcome {
    const i = this.instances.get(task);
    const t = i ? this.templates.get(i.template) : this.templates.get(task);
    // A handler's ctx.waitForApproval makes any task an approval while it waits.
    const asked = i?.phase === 'Waiting' && i.approval?.ordinal !== undefined;
    if (!t?.approval && !asked) {
      return i || t
        ? { ok: false, code: 'NotApproval', message: `task "${task}" of workflow ${this.name} is not an approval task` }
        : { ok: false, code: 'UnknownTask', message: `workflow ${this.name} has no task "${task}"` };
    }
    if (!i || i.phase !== 'Waiting') {
      const phase = i?.phase ?? 'Pending';
      const why =
        phase === 'Pending'
          ? 'its dependencies have not finished'
          : `it is ${phase}${i?.message ? ` (${i.message})` : ''}`;
      return { ok: false, code: 'NotWaiting', message: `task "${task}" is not waiting for a decision: ${why}` };
    }
    const who = asked ? i.approval?.approvers : t?.approval?.approvers;
    if (who && !(who.users ?? []).includes(d.user.username) && !d.user.groups.some((g) => who.groups?.includes(g))) {
      const listed = [
        ...(who.users?.length ? [`users ${who.users.join(', ')}`] : []),
        ...(who.groups?.length ? [`groups ${who.groups.join(', ')}`] : []),
      ].join('; ');
      return {
        ok: false,
        code: 'NotApprover',
        message: `user "${d.user.username}" is not among the approvers of task "${task}" (${listed || 'none listed'})`,
      };
    }
    this.settleApproval(i, d.decision === 'Approve', d.user.username, d.message ?? '', false);
    this.step();
    return { ok: true };
  }

  /** Approval tasks whose timeoutSeconds passed: decided by their onTimeout. */
  private expireApprovals(): void {
    const now = this.host.now();
    for (const name of [...this.awaiting]) {
      const i = this.instances.get(name) as Instance;
      const deadline = i.approval?.deadline;
      if (deadline === undefined || now < deadline || this.finished) continue;
      const a = i.approval?.ordinal !== undefined ? i.approval : this.templates.get(i.template)?.approval;
      const approve = (a?.onTimeout ?? DEFAULT_APPROVAL_ON_TIMEOUT) === 'Approve';
      this.settleApproval(i, approve, '', `no decision within ${a?.timeoutSeconds}s`, true);
    }
  }

  private settleApproval(i: Instance, approved: boolean, user: string, message: string, timedOut: boolean): void {
    const now = this.host.now();
    this.awaiting.delete(i.name);
    const text = message.slice(0, MAX_APPROVAL_MESSAGE);
    const ordinal = i.approval?.ordinal;
    if (ordinal !== undefined) {
      // A handler asked: it runs again, and its wait number `ordinal` returns this decision.
      const verdict: ApprovalVerdict = {
        ordinal,
        approved,
        ...(user && { user }),
        ...(text && { message: text }),
        decidedAt: new Date(now).toISOString(),
        ...(timedOut && { timedOut: true }),
      };
      i.verdicts = [...(i.verdicts ?? []).filter((v) => v.ordinal !== ordinal), verdict];
      delete i.approval;
      i.phase = 'Pending';
      i.ready = true;
      const how = timedOut ? 'on timeout' : `by ${user}`;
      i.message = `${approved ? 'approved' : 'rejected'} ${how}${text ? `: ${text}` : ''}; running again`.slice(
        0,
        MAX_MESSAGE,
      );
      this.touch(i);
      this.audit.push({
        type: approved ? 'TaskApproved' : 'TaskRejected',
        task: i.name,
        detail: { ordinal, ...(user ? { user } : { timedOut: true }), ...(text && { message: text }) },
      });
      return;
    }
    i.output = {
      approved,
      ...(user && { user }),
      ...(text && { message: text }),
      decidedAt: new Date(now).toISOString(),
      ...(timedOut && { timedOut: true }),
    };
    i.attempt = 1;
    this.audit.push({
      type: approved ? 'TaskApproved' : 'TaskRejected',
      task: i.name,
      detail: { ...(user ? { user } : { timedOut: true }), ...(text && { message: text }) },
    });
    if (approved) {
      this.succeed(i);
      i.message = (timedOut ? `approved on timeout: ${text}` : `approved by ${user}${text ? `: ${text}` : ''}`).slice(
        0,
        MAX_MESSAGE,
      );
      this.touch(i);
      return;
    }
    i.phase = 'Failed';
    i.finishedAt = iso(now);
    i.message = (timedOut ? `rejected on timeout: ${text}` : `rejected by ${user}${text ? `: ${text}` : ''}`).slice(
      0,
      MAX_MESSAGE,
    );
    this.touch(i);
    this.fail(`task ${i.name} was ${i.message}`, timedOut ? 'ApprovalTimeout' : 'ApprovalRejected');
  }

  /**
   * A handler's ctx.waitForApproval with no decision yet ended its attempt: the task waits for a
   * person as an approval task does, holding no slot, and runs again once decided.
   */
  private parkForApproval(i: Instance, attempt: number, ask: ApprovalAsk, agentId: string): void {
    if (attempt !== i.attempt || !ACTIVE.has(i.phase)) return;
    const now = this.host.now();
    i.phase = 'Waiting';
    i.parked = (i.parked ?? 0) + 1;
    i.approval = {
      message: ask.message,
      ordinal: ask.ordinal,
      ...(ask.timeoutSeconds !== undefined && {
        deadline: now + ask.timeoutSeconds * 1000,
        timeoutSeconds: ask.timeoutSeconds,
      }),
      ...(ask.onTimeout && { onTimeout: ask.onTimeout }),
      ...(ask.approvers && { approvers: ask.approvers }),
    };
    i.message = waitingMessage(ask.message, ask);
    this.awaiting.add(i.name);
    this.touch(i);
    this.audit.push({
      type: 'ApprovalRequested',
      task: i.name,
      attempt,
      agentId,
      detail: {
        message: ask.message,
        ordinal: ask.ordinal,
        ...(ask.timeoutSeconds !== undefined && { timeoutSeconds: ask.timeoutSeconds }),
      },
    });
  }

  /** Approval tasks waiting now, with what they ask (the CLI and UI list them). */
  approvals(): {
    task: string;
    message: string;
    deadline?: number;
    onTimeout?: ApprovalTimeoutAction;
    approvers?: { users?: string[]; groups?: string[] };
  }[] {
    return [...this.awaiting].map((name) => {
      const i = this.instances.get(name);
      const a = i?.approval;
      const spec = i?.approval?.ordinal !== undefined ? a : this.templates.get(i?.template ?? '')?.approval;
      return {
        task: name,
        message: a?.message ?? '',
        ...(a?.deadline !== undefined && {
          deadline: a.deadline,
          onTimeout: spec?.onTimeout ?? DEFAULT_APPROVAL_ON_TIMEOUT,
        }),
        ...(spec?.approvers && { approvers: spec.approvers }),
      };
    });
  }

  // ---- status ----

  counts(): { total: number; succeeded: number; failed: number; running: number; queued: number } {
    const p = this.index.phases;
    const c = {
      total: this.index.size,
      succeeded: p.Succeeded + p.Skipped,
      failed: p.Failed,
      running: p.Running,
      queued: p.Queued,
    };
    // Templates not expanded yet count once each, so the total only grows by fan-outs.
    for (const name of this.order) {
      const t = this.templates.get(name);
      if (t?.forEach && !this.expanded.has(name) && !this.skipped.has(name)) c.total++;
    }
    return c;
  }

  /** The status the Workflow shows: small whatever the number of tasks (one summary per spec task). */
  status(): Omit<WorkflowStatus, 'conditions' | 'observedGeneration'> {
    const c = this.counts();
    const tasks = this.order.map((name) => this.templateSummary(name));
    return {
      phase: this.phase,
      progress: c,
      progressSummary: `${c.succeeded}/${c.total}`,
      startedAt: iso(this.startedAt),
      ...(this.finishedAt !== undefined && { finishedAt: iso(this.finishedAt) }),
      ...(this.phase === 'Succeeded' && { outputs: this.leafOutputs() as NonNullable<WorkflowStatus['outputs']> }),
      ...(!this.usage.empty && { usage: this.usage.status() }),
      tasks,
    };
  }

  private templateSummary(name: string): NonNullable<WorkflowStatus['tasks']>[number] {
    const t = this.templates.get(name);
    if (this.skipped.has(name)) return { name, phase: 'Skipped' };
    const failure = this.templateFailures.get(name);
    const tally = this.index.tally(name);
    const count = tally?.count ?? 0;
    if (!tally || count === 0) {
      if (failure) return { name, phase: 'Failed', message: failure };
      return { name, phase: this.finished ? 'Cancelled' : 'Pending' };
    }
    const by = (p: TaskPhase) => tally.phases[p];
    const attempts = tally.maxAttempt;
    const phase: TaskPhase = by('Failed')
      ? 'Failed'
      : by('Succeeded') === count && (!t?.forEach || this.expanded.has(name))
        ? 'Succeeded'
        : by('Running')
          ? 'Running'
          : by('Waiting')
            ? 'Waiting'
            : by('Retrying')
              ? 'Retrying'
              : by('Queued')
                ? 'Queued'
                : by('Cancelled')
                  ? 'Cancelled'
                  : 'Pending';
    const failedName = this.index.firstFailing(name);
    const failed = failedName === undefined ? undefined : this.instances.get(failedName);
    let message: string | undefined;
    if (count > 1) {
      message = `${by('Succeeded')}/${count} succeeded, ${by('Running')} running, ${by('Queued')} queued, ${by('Failed')} failed`;
      if (failed?.message) message += `; ${failed.name}: ${failed.message}`;
      const movingName = this.index.firstRunning(name, (n) => Boolean(this.instances.get(n)?.progress));
      const moving = movingName === undefined ? undefined : this.instances.get(movingName);
      if (moving) message += `; ${moving.name}: ${moving.progress}`;
    } else {
      const only = tally.first === undefined ? undefined : this.instances.get(tally.first);
      message = only?.message ?? only?.progress;
    }
    const usage = this.usage.ofTemplate(name);
    const memoized = this.memoHits.get(name);
    return {
      name,
      phase,
      attempts,
      ...(message && { message: message.slice(0, MAX_MESSAGE) }),
      ...(usage && { usage }),
      ...(memoized && { memoized }),
    };
  }

  /** Outputs of the tasks nothing depends on, as long as they fit the status budget. */
  private leafOutputs(): Record<string, unknown> {
    const depended = new Set(this.spec.tasks.flatMap((t) => t.dependsOn ?? []));
    const out: Record<string, unknown> = {};
    let budget = MAX_STATUS_OUTPUT_BYTES;
    for (const name of this.order) {
      if (depended.has(name)) continue;
      const value = this.outputOf(name);
      const size = Buffer.byteLength(JSON.stringify(value) ?? 'null');
      if (size <= budget) {
        out[name] = value;
        budget -= size;
      } else {
        out[name] = {
          truncated: true,
          bytes: size,
          note: `too large for the status; kept in etcd under runs/${this.namespace}/${this.name}`,
        };
      }
    }
    return out;
  }

  /** Every instance's record, for the leader's first save. */
  allRecords(): TaskRecord[] {
    return [...this.instances.keys()].map((n) => this.record(n) as TaskRecord);
  }
}
