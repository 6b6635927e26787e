// The spans of workflow runs (OpenTelemetry), made by the leader's engine: one
// span per task attempt, exported when the attempt ends, and one per run,
// exported when the run finishes. Both have ids that derive from the run (see
// src/lib/tracing.ts), so a leader that takes over mid-run makes the same tree,
// and the agent's handler span (Assign.traceparent) hangs below its attempt's.
// Nothing here runs when tracing is off.
import { type Attributes, SpanKind, SpanStatusCode } from '@opentelemetry/api';
import type { TaskEvent, TaskSpec } from '../dispatcher/types.ts';
import { attemptSpanContext, runSpanContext, startSpanWithId, tracingEnabled } from '../lib/tracing.ts';
import type { WorkflowRun } from './run.ts';

const attemptKey = (ns: string, wf: string, task: string, attempt: number) => `${ns}/${wf}/${task}#${attempt}`;

interface AttemptTimes {
  queuedAt: number;
  /** When the dispatcher sent the Assign (its 'started' event); the agent's handler span starts on receipt. */
  dispatchedAt?: number;
  agentId?: string;
  handler: string;
  pool: string;
}

export class RunTraces {
  /** Attempts handed to the dispatcher and not ended yet (bounded by what is in flight). */
  private readonly attempts = new Map<string, AttemptTimes>();
  /** Runs whose span went out (a run is finished once; a retried one goes out again). */
  private readonly ended = new WeakMap<WorkflowRun, number>();

  /** An attempt went to the dispatcher: its span starts now. */
  submitted(spec: TaskSpec, now: number): void {
    if (!tracingEnabled() || spec.traceId === undefined) return;
    this.attempts.set(attemptKey(spec.ref.namespace, spec.ref.workflow, spec.ref.task, spec.attempt ?? 1), {
      queuedAt: now,
      handler: spec.handler,
      pool: spec.poolNamespace ? `${spec.poolNamespace}/${spec.pool}` : spec.pool,
    });
  }

  /** A dispatcher event of a run's attempt: the Assign sent marks the span; an end exports it. */
  event(run: WorkflowRun, e: TaskEvent, now: number): void {
    if (!tracingEnabled()) return;
    switch (e.type) {
      case 'started': {
        const a = this.attempts.get(attemptKey(e.ref.namespace, e.ref.workflow, e.ref.task, e.attempt));
        if (a) {
          a.dispatchedAt = now;
          a.agentId = e.agentId;
        }
        return;
      }
      case 'committed': {
        const r = e.result;
        const error = r.ok ? undefined : r.park ? undefined : (r.error?.message ?? 'failed');
        this.end(run, e.ref.task, r.attempt, now, error, e.agentId, r.park ? 'awaiting approval' : undefined);
        return;
      }
      case 'lost':
        this.end(run, e.ref.task, e.attempt, now, `lost: ${e.reason}`, e.agentId);
        return;
      case 'timedOut':
        this.end(run, e.ref.task, e.attempt, now, `attempt ${e.attempt} exceeded its deadline`, e.agentId);
        return;
      default:
        return;
    }
  }

  private end(
    run: WorkflowRun,
    task: string,
    attempt: number,
    now: number,
    error: string | undefined,
    agentId: string | undefined,
    note?: string,
  ): void {
    const key = attemptKey(run.namespace, run.name, task, attempt);
    const a = this.attempts.get(key);
    this.attempts.delete(key);
    const rec = run.record(task);
    // After a failover the queue time is gone with the old leader: the span starts when it started.
    const startedAt = a?.queuedAt ?? (rec?.startedAt ? Date.parse(rec.startedAt) : now);
    const attributes: Attributes = {
      'agentflow.namespace': run.namespace,
      'agentflow.workflow': run.name,
      'agentflow.task': task,
      'agentflow.attempt': attempt,
      'agentflow.handler': a?.handler ?? rec?.handler ?? '',
      'agentflow.pool': a?.pool ?? rec?.pool ?? '',
      ...((agentId ?? a?.agentId) && { 'agentflow.agent_id': (agentId ?? a?.agentId) as string }),
      ...(note && { 'agentflow.outcome': note }),
    };
    const span = startSpanWithId(
      `task ${task}`,
      attemptSpanContext(run.traceId, task, attempt),
      { kind: SpanKind.INTERNAL, startTime: startedAt, attributes },
      runSpanContext(run.traceId),
    );
    span.addEvent('queued', startedAt);
    if (a?.dispatchedAt !== undefined) span.addEvent('dispatched', a.dispatchedAt);
    span.addEvent(error === undefined ? 'committed' : 'failed', now);
    if (error !== undefined) span.setStatus({ code: SpanStatusCode.ERROR, message: error.slice(0, 1024) });
    span.end(now);
  }

  /**
   * A run loaded from etcd (after a failover, or again after it left memory): one that had
   * finished already was traced by the leader that saw it finish, so its span does not go out
   * again (a retry that finishes it again still exports it).
   */
  loaded(run: WorkflowRun): void {
    if (run.finished && run.finishedAt !== undefined) this.ended.set(run, run.finishedAt);
  }

  /** Exports the run's span once it has finished (again after a retry finishes it again). */
  changed(run: WorkflowRun): void {
    if (!tracingEnabled() || !run.finished || run.finishedAt === undefined) return;
    if (this.ended.get(run) === run.finishedAt) return;
    this.ended.set(run, run.finishedAt);
    const failed = run.phase !== 'Succeeded';
    const span = startSpanWithId(`workflow ${run.namespace}/${run.name}`, runSpanContext(run.traceId), {
      kind: SpanKind.INTERNAL,
      startTime: run.startedAt,
      attributes: {
        'agentflow.namespace': run.namespace,
        'agentflow.workflow': run.name,
        'agentflow.uid': run.uid,
        'agentflow.phase': run.phase,
        ...(run.retries > 0 && { 'agentflow.retries': run.retries }),
      },
    });
    if (failed) span.setStatus({ code: SpanStatusCode.ERROR, message: (run.message || run.phase).slice(0, 1024) });
    span.end(run.finishedAt);
  }

  /** A run left the engine: its attempts' times go too. */
  forget(namespace: string, name: string): void {
    const prefix = `${namespace}/${name}/`;
    for (const k of this.attempts.keys()) if (k.startsWith(prefix)) this.attempts.delete(k);
  }
}
