import type { WorkflowSpec } from '../api/workflow.ts';
import type { Dispatcher, TaskEvent } from '../dispatcher/index.ts';
import type { Logger } from '../lib/log.ts';
import { AuditLog, type Fence, type StateStore, WorkflowRecords } from '../state/index.ts';
import { type RunLimits, WorkflowRun } from './run.ts';

export interface EngineOptions {
  store: StateStore;
  dispatcher: Dispatcher;
  fences: () => Fence[];
  logger: Logger;
  /** Called when a run's status changed (the controller writes it, throttled). */
  onChange: (namespace: string, name: string) => void;
  /** How often dirty records are flushed to etcd (default 50 ms). */
  flushMs?: number;
  /** Caps on forEach lists and spawned children (default DEFAULT_RUN_LIMITS: the operator's flags). */
  limits?: Partial<RunLimits>;
  /** spec.agent.capacity of a pool, if it is known: spawned children that cost more are refused. */
  poolCapacity?: (namespace: string, pool: string) => number | undefined;
}

const key = (namespace: string, name: string) => `${namespace}/${name}`;

/**
 * Hosts the runs of the leader: routes dispatcher events to them, ticks them
 * for retries and deadlines, and persists their records and audit entries to
 * etcd in batches (fenced by leadership).
 */
export class WorkflowEngine {
  private readonly o: EngineOptions;
  private readonly records: WorkflowRecords;
  private readonly runs = new Map<string, WorkflowRun>();
  private readonly audits = new Map<string, AuditLog>();
  private readonly log: Logger;
  private flushing: Promise<void> | undefined;
  private flushTimer: NodeJS.Timeout | undefined;
  private tickTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  private readonly onTask = (e: TaskEvent) => this.onTaskEvent(e);

  constructor(o: EngineOptions) {
    this.o = o;
    this.records = new WorkflowRecords(o.store);
    this.log = o.logger.with({ component: 'workflow-engine' });
    o.dispatcher.on('task', this.onTask);
    this.tickTimer = setInterval(() => this.tick(), 250);
    this.tickTimer.unref();
  }

  get(namespace: string, name: string): WorkflowRun | undefined {
    return this.runs.get(key(namespace, name));
  }

  /** The run of a workflow, loading it from etcd (after a failover) or starting it. */
  async ensure(wf: { namespace: string; name: string; uid: string; spec: WorkflowSpec }): Promise<WorkflowRun> {
    const k = key(wf.namespace, wf.name);
    const existing = this.runs.get(k);
    if (existing && existing.uid === wf.uid) return existing;
    const loaded = await this.records.load(wf.namespace, wf.name);
    const again = this.runs.get(k);
    if (again && again.uid === wf.uid) return again;
    const dispatcher = this.o.dispatcher;
    const run = new WorkflowRun(
      wf,
      {
        submit: (spec) => {
          try {
            dispatcher.submit(spec);
          } catch (err) {
            // Already tracked (adopted from a reconnecting agent): its result will come as an event.
            this.log.debug('Task already with the dispatcher', { task: spec.ref.task, error: err as Error });
          }
        },
        cancel: (ref, reason) => void dispatcher.cancel(ref, reason),
        tracked: (ref) => dispatcher.isTracked(ref),
        now: () => Date.now(),
        poolCapacity: (pool) => this.o.poolCapacity?.(wf.namespace, pool),
      },
      loaded.run?.uid === wf.uid ? loaded : undefined,
      this.o.limits,
    );
    this.runs.set(k, run);
    if (loaded.run?.uid === wf.uid)
      this.log.info('Resumed a workflow run from etcd', { workflow: k, phase: run.phase });
    else this.log.info('Started a workflow run', { workflow: k, tasks: wf.spec.tasks.length });
    run.step();
    this.changed(run);
    return run;
  }

  /** Forgets a run (after its records were deleted). */
  forget(namespace: string, name: string): void {
    this.runs.delete(key(namespace, name));
    this.audits.delete(key(namespace, name));
  }

  async deleteRecords(namespace: string, name: string): Promise<void> {
    const run = this.runs.get(key(namespace, name));
    run?.stop('the workflow is being deleted');
    await this.flush();
    await this.records.deleteAll(namespace, name, this.o.fences());
    this.forget(namespace, name);
  }

  audit(namespace: string, name: string): AuditLog {
    const k = key(namespace, name);
    let a = this.audits.get(k);
    if (!a) {
      a = new AuditLog(this.o.store, namespace, name);
      this.audits.set(k, a);
    }
    return a;
  }

  private onTaskEvent(e: TaskEvent): void {
    const run = this.runs.get(key(e.ref.namespace, e.ref.workflow));
    if (!run) return;
    const before = run.version;
    run.onEvent(e);
    if (run.version !== before) this.changed(run);
  }

  private tick(): void {
    const now = Date.now();
    for (const run of this.runs.values()) {
      if (run.finished) continue; // nothing to wake; skip scanning its instances
      const wake = run.nextWake();
      if (wake !== undefined && wake <= now) {
        const before = run.version;
        run.tick();
        if (run.version !== before) this.changed(run);
      }
    }
  }

  /** After any change: persist soon, tell the controller. */
  changed(run: WorkflowRun): void {
    this.o.onChange(run.namespace, run.name);
    if (!this.flushTimer && !this.stopped) {
      this.flushTimer = setTimeout(() => {
        this.flushTimer = undefined;
        void this.flush().catch((err: Error) => this.log.error('Could not save run records', { error: err }));
      }, this.o.flushMs ?? 50);
    }
  }

  /** Writes dirty records and audit entries of every run (one flush at a time). */
  async flush(): Promise<void> {
    while (this.flushing) await this.flushing;
    this.flushing = this.flushOnce().finally(() => {
      this.flushing = undefined;
    });
    return this.flushing;
  }

  private async flushOnce(): Promise<void> {
    const fences = this.o.fences();
    // One run whose records cannot be saved must not hold back every other run's.
    let failed: Error | undefined;
    for (const run of this.runs.values()) {
      if (run.dirty.size === 0 && !run.runDirty && run.audit.length === 0) continue;
      const names = [...run.dirty];
      run.dirty.clear();
      const runDirty = run.runDirty;
      run.runDirty = false;
      const events = run.audit.splice(0);
      try {
        const tasks = names.map((n) => run.record(n)).filter((r) => r !== undefined);
        await this.records.save(run.namespace, run.name, runDirty ? run.runRecord() : undefined, tasks, fences);
        if (events.length > 0) await this.audit(run.namespace, run.name).append(events, fences);
      } catch (err) {
        // Keep them for the next flush.
        for (const n of names) run.dirty.add(n);
        run.runDirty ||= runDirty;
        run.audit.unshift(...events);
        failed ??= err as Error;
      }
    }
    if (failed) throw failed;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.o.dispatcher.off('task', this.onTask);
    if (this.tickTimer) clearInterval(this.tickTimer);
    if (this.flushTimer) clearTimeout(this.flushTimer);
    await this.flush().catch((err: Error) => this.log.warn('Last flush failed', { error: err }));
  }
}
