import { parsePoolRef } from '../api/sharing.ts';
import type { WorkflowObjectSpec, WorkflowSpec } from '../api/workflow.ts';
import type { TemplateOrigin } from '../api/workflow-template.ts';
import type { Dispatcher, TaskEvent } from '../dispatcher/index.ts';
import type { SpawnOutcome, TaskSpec } from '../dispatcher/types.ts';
import type { Logger } from '../lib/log.ts';
import {
  AUDIT_BATCH,
  AuditLog,
  type Fence,
  MAX_TXN_OPS,
  MemoCache,
  type MemoEntry,
  MemoTooLargeError,
  type RunRecord,
  type StateStore,
  TaskClaims,
  type TaskRecord,
  WorkflowRecords,
} from '../state/index.ts';
import { type ApprovalOutcome, type AuditItem, type RunLimits, type Unserved, WorkflowRun } from './run.ts';
import { RunTraces } from './run-traces.ts';

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

/** How often queued work is checked against the agents connected (see WorkflowRun.setUnserved). */
const UNSERVED_CHECK_MS = 1_000;

/** What a retry request came to. */
export type RetryOutcome = { started: true; tasks: number } | { started: false; message: string };

const key = (namespace: string, name: string) => `${namespace}/${name}`;

/** After a failed flush, the next try comes this much later (records stay dirty until one succeeds). */
const FLUSH_RETRY_MS = 1_000;

/**
 * Task records per save call in a flush: two full transactions (one op of each goes to the
 * leadership fence). A flush of a 10,000-task fan-out then holds a few hundred encoded
 * records at a time, not all of them, and several calls share etcd's fsyncs.
 */
const RECORDS_PER_SAVE = 2 * (MAX_TXN_OPS - 1);
/** Save calls of one run's flush in flight at once. */
const SAVES_IN_FLIGHT = 4;

/** Answers to spawns, each waiting for a flush of its run to succeed. */
type SaveWaiter = (outcome: SpawnOutcome) => void;

/**
 * Hosts the runs of the leader: routes dispatcher events to them, ticks them
 * for retries and deadlines, and persists their records and audit entries to
 * etcd in batches (fenced by leadership).
 */
export class WorkflowEngine {
  private readonly o: EngineOptions;
  private readonly records: WorkflowRecords;
  private readonly claims: TaskClaims;
  private readonly memo: MemoCache;
  /** The spans of runs and attempts (OpenTelemetry; nothing when tracing is off). */
  private readonly traces = new RunTraces();
  private lastUnservedCheck = 0;
  private readonly runs = new Map<string, WorkflowRun>();
  private readonly audits = new Map<string, AuditLog>();
  private readonly log: Logger;
  private flushing: Promise<void> | undefined;
  private flushTimer: NodeJS.Timeout | undefined;
  private tickTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  /** Per run: spawns to answer once a flush that began after them has saved the run. */
  private readonly saveWaiters = new Map<WorkflowRun, SaveWaiter[]>();
  /** Runs whose records a flush has taken and is writing. */
  private readonly saving = new Set<WorkflowRun>();
  private readonly onTask = (e: TaskEvent) => this.onTaskEvent(e);

  constructor(o: EngineOptions) {
    this.o = o;
    this.records = new WorkflowRecords(o.store);
    this.claims = new TaskClaims(o.store);
    this.memo = new MemoCache(o.store);
    this.log = o.logger.with({ component: 'workflow-engine' });
    o.dispatcher.on('task', this.onTask);
    this.tickTimer = setInterval(() => this.tick(), 250);
    this.tickTimer.unref();
  }

  /** The memoization cache the runs read and write (one per process: it keeps an index for eviction). */
  get memoCache(): MemoCache {
    return this.memo;
  }

  get(namespace: string, name: string): WorkflowRun | undefined {
    return this.runs.get(key(namespace, name));
  }

  /** The run of a workflow, loading it from etcd (after a failover) or starting it. */
  async ensure(wf: {
    namespace: string;
    name: string;
    uid: string;
    /** The spec to run: the Workflow's own, or the one its WorkflowTemplate resolved to. */
    spec: WorkflowSpec;
    /** The Workflow's spec when spec came from a template (the run's spec hash is of it). */
    source?: WorkflowObjectSpec;
    template?: TemplateOrigin;
    rerunOf?: string;
  }): Promise<WorkflowRun> {
    const k = key(wf.namespace, wf.name);
    const existing = this.runs.get(k);
    if (existing && existing.uid === wf.uid) return existing;
    const loaded = await this.records.load(wf.namespace, wf.name);
    const again = this.runs.get(k);
    if (again && again.uid === wf.uid) return again;
    const dispatcher = this.o.dispatcher;
    // A resumed run runs the spec it started with (saved with its first flush), not the Workflow's
    // spec now, which may have been edited since (the controller reports that as SpecApplied=False).
    const resumed = loaded.run?.uid === wf.uid;
    const spec = resumed && loaded.spec !== undefined ? (loaded.spec as WorkflowSpec) : wf.spec;
    const submit = (spec: TaskSpec) => {
      this.traces.submitted(spec, Date.now());
      try {
        dispatcher.submit(spec);
      } catch (err) {
        // Already tracked (adopted from a reconnecting agent): its result will come as an event.
        this.log.debug('Task already with the dispatcher', { task: spec.ref.task, error: err as Error });
      }
    };
    const run: WorkflowRun = new WorkflowRun(
      // spec.budget applies live (like suspend): the Workflow's budget now, not the saved spec's.
      { ...wf, spec, budget: wf.spec.budget },
      {
        submit,
        lookupMemo: (spec, memo) => this.lookupMemo(run, spec, memo, submit),
        rememberMemo: (_key, entry) => this.rememberMemo(run, entry),
        cancel: (ref, reason) => void dispatcher.cancel(ref, reason),
        tracked: (ref) => dispatcher.isTracked(ref),
        adopted: (spec) => dispatcher.adoptedLimits(spec),
        now: () => Date.now(),
        poolCapacity: (pool) => this.o.poolCapacity?.(wf.namespace, pool),
      },
      resumed ? { ...loaded, specSaved: loaded.spec !== undefined } : undefined,
      this.o.limits,
    );
    const replaced = this.runs.get(k);
    if (replaced) this.refuseWaiters(replaced, `workflow ${k} was replaced by a new one of the same name`);
    this.runs.set(k, run);
    if (resumed) {
      this.traces.loaded(run);
      this.log.info('Resumed a workflow run from etcd', { workflow: k, phase: run.phase });
    } else this.log.info('Started a workflow run', { workflow: k, tasks: spec.tasks.length });
    run.step();
    this.changed(run);
    return run;
  }

  /**
   * Follows a retry request (the agentflow.io/retry annotation's value
   * `token`): a Failed or Cancelled run runs its failed and cancelled tasks
   * again, keeping every result that succeeded. Their committed failures are
   * moved aside in etcd first (fenced by leadership), then the run goes back
   * to Running. A request already answered (the same token, also by a leader
   * before a failover) changes nothing; one that cannot be followed is
   * refused, and the run remembers why. `currentSpecHash` is the hash of the
   * Workflow's spec now: a run whose spec was edited after it started is not
   * retried (it would have to choose between a spec it never ran and one its
   * user no longer wants).
   */
  async retry(run: WorkflowRun, token: string, currentSpecHash: string): Promise<RetryOutcome> {
    if (run.lastRetry?.token === token) {
      return run.lastRetry.started
        ? { started: true, tasks: run.lastRetry.tasks }
        : { started: false, message: run.lastRetry.message };
    }
    let refusal: string | undefined;
    if (run.phase !== 'Failed' && run.phase !== 'Cancelled')
      refusal = `the run is ${run.phase}: only a Failed or Cancelled run can be retried`;
    else if (run.reason === 'Deleted') refusal = 'the workflow is being deleted';
    else if (currentSpecHash !== run.specHash)
      refusal =
        'spec changed after the run started, and a retry re-runs tasks with the spec the run started with: re-run it from scratch instead (annotate agentflow.io/rerun) or revert the edit';
    if (refusal) {
      run.refuseRetry(token, refusal);
      this.changed(run);
      return { started: false, message: refusal };
    }
    const names = run.retryTargets();
    // Save everything the run has first: its records must show the failures before they move.
    await this.flush();
    await this.claims.reopen(run.namespace, run.name, new Set(names), this.o.fences());
    // The run may have been replaced or deleted while we waited for etcd.
    if (this.runs.get(key(run.namespace, run.name)) !== run) return { started: false, message: 'the run went away' };
    if (run.lastRetry?.token === token) return { started: true, tasks: run.lastRetry.tasks };
    run.retry(token, names);
    this.log.info('Retrying a workflow run', { workflow: key(run.namespace, run.name), tasks: names.length });
    this.changed(run);
    return { started: true, tasks: names.length };
  }

  /**
   * A person's decision on an approval task, answered once it is durable (the flush that saved the
   * task's record and its audit entry succeeded). NotLoaded: this leader has no run for the
   * workflow in memory (not loaded yet after a failover, or the workflow is unknown or evicted);
   * NotWaiting for a run that has finished.
   */
  async decide(
    namespace: string,
    name: string,
    task: string,
    d: Parameters<WorkflowRun['decide']>[1],
  ): Promise<ApprovalOutcome | { ok: false; code: 'NotLoaded'; message: string }> {
    const run = this.runs.get(key(namespace, name));
    if (!run) {
      return {
        ok: false,
        code: 'NotLoaded',
        message: `the run of workflow ${namespace}/${name} is not loaded (it may be finished, or a new leader is loading it)`,
      };
    }
    // Finished and not yet evicted: as final as an evicted one (the data API answers those 409 too).
    if (run.finished)
      return { ok: false, code: 'NotWaiting', message: `workflow ${name} is ${run.phase}: it waits for no decision` };
    const before = run.version;
    const outcome = run.decide(task, d);
    if (!outcome.ok) return outcome;
    if (run.version !== before) this.changed(run);
    const saved = await new Promise<SpawnOutcome>((resolve) => {
      const waiting = this.saveWaiters.get(run);
      if (waiting) waiting.push(resolve);
      else this.saveWaiters.set(run, [resolve]);
      this.scheduleFlush(this.o.flushMs ?? 50);
    });
    if (!saved.ok) return { ok: false, code: 'NotLoaded', message: saved.message };
    return { ok: true };
  }

  /**
   * Drops a finished run from memory once everything it holds is in etcd
   * (records and audit flushed, no spawn waiting for an answer): a finished
   * workflow's inputs and outputs need not stay on the leader's heap until
   * it is deleted. Its records stay in etcd; `ensure` would load them again.
   * Returns whether it was dropped.
   */
  evict(namespace: string, name: string): boolean {
    const k = key(namespace, name);
    const run = this.runs.get(k);
    if (!run?.finished) return false;
    if (run.dirty.size > 0 || run.runDirty || run.specDirty || run.audit.length > 0) return false;
    if ((this.saveWaiters.get(run)?.length ?? 0) > 0) return false;
    // A flush took its records and is writing them: they look clean, but if that flush fails they
    // come back dirty on this run, which must still be here for the next flush to retry them.
    if (this.saving.has(run)) return false;
    this.runs.delete(k);
    this.audits.delete(k);
    this.saveWaiters.delete(run);
    this.traces.forget(namespace, name);
    this.log.debug('Dropped a finished run from memory', { workflow: k, phase: run.phase });
    return true;
  }

  /** Runs held in memory (finished ones leave once their final status is written). */
  get size(): number {
    return this.runs.size;
  }

  /** Forgets a run (after its records were deleted). */
  forget(namespace: string, name: string): void {
    const run = this.runs.get(key(namespace, name));
    this.runs.delete(key(namespace, name));
    this.audits.delete(key(namespace, name));
    this.traces.forget(namespace, name);
    if (run) this.refuseWaiters(run, `workflow ${namespace}/${name} was deleted`);
  }

  /** Answers the spawns still waiting on a run that is going away: its children will not run. */
  private refuseWaiters(run: WorkflowRun, message: string): void {
    const waiting = this.saveWaiters.get(run);
    this.saveWaiters.delete(run);
    for (const settle of waiting ?? []) settle({ ok: false, code: 'UNKNOWN_TASK', message });
  }

  async deleteRecords(namespace: string, name: string): Promise<void> {
    const run = this.runs.get(key(namespace, name));
    run?.stop('the workflow is being deleted', 'Cancelled', 'Deleted');
    await this.flush();
    await this.records.deleteAll(namespace, name, this.o.fences());
    this.forget(namespace, name);
  }

  /** The run record in etcd of a workflow (undefined: none). */
  runRecord(namespace: string, name: string): Promise<RunRecord | undefined> {
    return this.records.loadRun(namespace, name);
  }

  /** Adds an entry to a workflow's audit chain: with its run's next flush, or at once if the run is not in memory. */
  async note(namespace: string, name: string, item: AuditItem): Promise<void> {
    const run = this.runs.get(key(namespace, name));
    if (run) {
      run.audit.push(item);
      this.scheduleFlush(this.o.flushMs ?? 50);
      return;
    }
    await this.audit(namespace, name).append([item], this.o.fences());
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
    if (e.type === 'spawn') {
      this.onSpawn(run, e);
      return;
    }
    if (!run) return;
    // Taken before the run hears of it: an event that ends the run ends its attempt's span no later
    // than the run's own (the run reads the clock again for finishedAt, which may be a tick later).
    const now = Date.now();
    const before = run.version;
    run.onEvent(e);
    this.traces.event(run, e, now);
    if (run.version !== before) this.changed(run);
  }

  /**
   * A spawn is answered "durable" only after a flush that began once the children were in the run
   * has saved it: a leader that dies before then has acked nothing, and the agent re-sends the spawn
   * to the next one (which takes the copy without adding the children twice).
   */
  private onSpawn(run: WorkflowRun | undefined, e: Extract<TaskEvent, { type: 'spawn' }>): void {
    if (!run) {
      // A new leader gets re-sent spawns as soon as agents reconnect, maybe before it loaded the run.
      e.settle({
        ok: false,
        code: 'UNAVAILABLE',
        message: `the run of workflow ${e.ref.namespace}/${e.ref.workflow} is not loaded yet; send again`,
      });
      return;
    }
    const before = run.version;
    const outcome = run.requestSpawn(e);
    if (run.version !== before) this.changed(run);
    if (!outcome.ok) {
      e.settle(outcome);
      return;
    }
    const waiting = this.saveWaiters.get(run);
    if (waiting) waiting.push(e.settle);
    else this.saveWaiters.set(run, [e.settle]);
    // A copy of a spawn whose children are saved already changes nothing: a flush must still come.
    this.scheduleFlush(this.o.flushMs ?? 50);
  }

  private tick(): void {
    const now = Date.now();
    if (now - this.lastUnservedCheck >= UNSERVED_CHECK_MS) {
      this.lastUnservedCheck = now;
      this.checkUnserved();
    }
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

  /**
   * Tells each running run which of its queued work no connected agent can
   * take (no agent of the pool, or none that registers the handler): it shows
   * as the workflow's Waiting condition, and the controller fails the run once
   * it has waited past the operator's deadline.
   */
  checkUnserved(): void {
    for (const run of this.runs.values()) {
      if (run.finished) continue;
      const unserved: Unserved[] = [];
      for (const need of run.queuedNeeds()) {
        const pool = parsePoolRef(need.pool, run.namespace);
        if (!pool) continue; // (the schema admits no other)
        const stats = this.o.dispatcher.poolStats(pool.namespace, pool.name);
        if (stats.handlers.includes(need.handler)) continue;
        unserved.push({ ...need, agents: stats.connectedAgents, served: stats.handlers });
      }
      const before = run.version;
      run.setUnserved(unserved);
      if (run.version !== before) this.o.onChange(run.namespace, run.name);
    }
  }

  /**
   * A memoized task is due: a fresh cache entry for its key ends it without dispatch (memoHit); no
   * entry, or a cache etcd cannot read now, dispatches it as usual. Either way only while the attempt
   * is still queued in the same run (it may have been cancelled while etcd answered).
   */
  private lookupMemo(
    run: WorkflowRun,
    spec: TaskSpec,
    memo: { key: string; maxAgeSeconds?: number },
    submit: (spec: TaskSpec) => void,
  ): void {
    const attempt = spec.attempt ?? 1;
    const still = () => this.runs.get(key(run.namespace, run.name)) === run && run.awaitsMemo(spec.ref.task, attempt);
    this.memo.get(run.namespace, memo.key, memo.maxAgeSeconds).then(
      (entry) => {
        if (!still()) return;
        if (!entry) {
          submit(spec);
          return;
        }
        run.memoHit(spec.ref.task, attempt, entry);
        this.changed(run);
      },
      (err: Error) => {
        this.log.warn('Reading the memoization cache failed; running the task instead', {
          workflow: key(run.namespace, run.name),
          task: spec.ref.task,
          err,
        });
        if (still()) submit(spec);
      },
    );
  }

  /** A memoized task's output goes into its namespace's cache (best effort: the task has succeeded). */
  private rememberMemo(run: WorkflowRun, entry: MemoEntry): void {
    this.memo.put(run.namespace, entry, this.o.fences()).catch((err: Error) => {
      const fields = { workflow: key(run.namespace, run.name), task: entry.task, err };
      if (err instanceof MemoTooLargeError) this.log.info('Output not memoized', fields);
      else this.log.warn('Could not memoize an output', fields);
    });
  }

  /** After any change: persist soon, tell the controller. */
  changed(run: WorkflowRun): void {
    this.traces.changed(run);
    this.o.onChange(run.namespace, run.name);
    this.scheduleFlush(this.o.flushMs ?? 50);
  }

  private scheduleFlush(ms: number): void {
    if (this.flushTimer || this.stopped) return;
    this.flushTimer = setTimeout(() => {
      this.flushTimer = undefined;
      this.flush().catch((err: Error) => {
        // What failed stays dirty (and its spawns unanswered): try again without waiting for a change.
        this.log.error('Could not save run records; retrying', { error: err, retryInMs: FLUSH_RETRY_MS });
        this.scheduleFlush(FLUSH_RETRY_MS);
      });
    }, ms);
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
      // Taken now: a spawn that arrives during this flush may not be in what it writes.
      const waiting = this.saveWaiters.get(run);
      this.saveWaiters.delete(run);
      if (run.dirty.size === 0 && !run.runDirty && !run.specDirty && run.audit.length === 0) {
        // Clean, and flushes run one at a time: everything the run holds was saved by an earlier one.
        for (const settle of waiting ?? []) settle({ ok: true });
        continue;
      }
      try {
        await this.flushRun(run, fences);
      } catch (err) {
        if (waiting) this.saveWaiters.set(run, [...waiting, ...(this.saveWaiters.get(run) ?? [])]);
        failed ??= err as Error;
        continue;
      }
      for (const settle of waiting ?? []) settle({ ok: true });
      // A finished run is now wholly in etcd: let the controller drop it from memory.
      if (run.finished) this.o.onChange(run.namespace, run.name);
    }
    if (failed) throw failed;
  }

  /**
   * Saves what one run marked dirty and appends its audit entries. Everything is taken from the
   * run at once, before the first write (the run moves on meanwhile; what changes is dirty again
   * for the next flush). Task records go in chunks, a few at once, and the audit chain alongside:
   * they are different keys, and etcd commits concurrent transactions with one fsync. The run
   * record (and the spec, on the first flush) comes last, once every task record is saved: a run
   * record that counts a fan-out's instances must never be in etcd without them. What fails is
   * kept for the next flush: its records dirty again, its audit entries not yet appended.
   */
  private async flushRun(run: WorkflowRun, fences: Fence[]): Promise<void> {
    this.saving.add(run);
    try {
      await this.flushTaken(run, fences);
    } finally {
      this.saving.delete(run);
    }
  }

  private async flushTaken(run: WorkflowRun, fences: Fence[]): Promise<void> {
    const names = [...run.dirty];
    run.dirty.clear();
    const runDirty = run.runDirty;
    run.runDirty = false;
    const specDirty = run.specDirty;
    run.specDirty = false;
    const events = run.audit.splice(0);
    const tasks = names.map((n) => run.record(n)).filter((r) => r !== undefined);
    const runRecord = runDirty ? run.runRecord() : undefined;
    const [saved, appended] = await Promise.allSettled([
      this.saveRecords(run, tasks, runRecord, specDirty ? run.spec : undefined, fences),
      this.appendAudit(run, events, fences),
    ]);
    let failed: unknown;
    if (saved.status === 'rejected') {
      failed = saved.reason;
      for (const n of names) run.dirty.add(n);
      run.runDirty ||= runDirty;
      run.specDirty ||= specDirty;
    }
    if (appended.status === 'rejected') failed ??= appended.reason;
    if (failed !== undefined) throw failed;
  }

  private async saveRecords(
    run: WorkflowRun,
    tasks: TaskRecord[],
    runRecord: RunRecord | undefined,
    spec: unknown,
    fences: Fence[],
  ): Promise<void> {
    let next = 0;
    const saveChunks = async (): Promise<void> => {
      while (next < tasks.length) {
        const chunk = tasks.slice(next, next + RECORDS_PER_SAVE);
        next += chunk.length;
        await this.records.save(run.namespace, run.name, undefined, chunk, fences);
      }
    };
    const lanes = Math.min(SAVES_IN_FLIGHT, Math.ceil(tasks.length / RECORDS_PER_SAVE));
    // Every lane runs to its end (or its first failure) before this settles: no write is left in flight.
    const outcomes = await Promise.allSettled(Array.from({ length: lanes }, saveChunks));
    const refused = outcomes.find((o) => o.status === 'rejected');
    if (refused) throw refused.reason;
    if (runRecord || spec !== undefined) await this.records.save(run.namespace, run.name, runRecord, [], fences, spec);
  }

  /**
   * Appends a transaction's worth (AUDIT_BATCH) per call: when one fails, the events of the calls
   * that returned are in the chain and only the rest are put back, so a flush that is tried again
   * does not record them twice.
   */
  private async appendAudit(run: WorkflowRun, events: AuditItem[], fences: Fence[]): Promise<void> {
    const log = this.audit(run.namespace, run.name);
    for (let k = 0; k < events.length; k += AUDIT_BATCH) {
      try {
        await log.append(events.slice(k, k + AUDIT_BATCH), fences, { returnEntries: false });
      } catch (err) {
        // Back in front of what came meanwhile, in order (a loop: a spread of a big fan-out's events
        // would exceed the engine's argument limit).
        const later = run.audit.splice(0);
        for (let j = k; j < events.length; j++) run.audit.push(events[j] as AuditItem);
        for (const e of later) run.audit.push(e);
        throw err;
      }
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.o.dispatcher.off('task', this.onTask);
    if (this.tickTimer) clearInterval(this.tickTimer);
    if (this.flushTimer) clearTimeout(this.flushTimer);
    await this.flush().catch((err: Error) => this.log.warn('Last flush failed', { error: err }));
    // Spawns not saved by now stay unanswered: their agents send them again to the next leader.
    this.saveWaiters.clear();
  }
}
