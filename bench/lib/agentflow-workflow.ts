// agentflow's side of the workflow scenario: the operator's leader as it runs
// a Workflow, in this process. An AgentflowSystem (etcd with fsync, the
// Dispatcher fenced by a real leader election, agent processes) plus the real
// WorkflowEngine (records and audit chain in etcd) and the real
// WorkflowController (validation, finalizer, conditions, the throttled,
// bounded status, Events) reading and writing Workflows through MemoryKube,
// an in-memory stand-in for the API server (no kube-apiserver is started).
import type { AgentPool } from '../../src/api/agentpool.ts';
import type { Workflow, WorkflowSpec } from '../../src/api/workflow.ts';
import type { WorkflowTemplate } from '../../src/api/workflow-template.ts';
import { createLogger, type Logger } from '../../src/lib/log.ts';
import { AGENTPOOLS, resourcePath, WORKFLOW_TEMPLATES, WORKFLOWS } from '../../src/operator/kube/client.ts';
import { EventRecorder } from '../../src/operator/kube/events.ts';
import { WorkflowController } from '../../src/operator/workflow/controller.ts';
import { isClaimEntry } from '../../src/state/index.ts';
import { WorkflowEngine } from '../../src/workflow/engine.ts';
import type { WorkflowRun } from '../../src/workflow/run.ts';
import { AgentflowSystem, NAMESPACE, POOL } from './agentflow.ts';
import { now } from './clock.ts';
import { MemoryKube } from './memory-kube.ts';
import type { Role } from './proc.ts';
import type { Done } from './system.ts';

type Json = Record<string, unknown>;
const round = (v: number) => Math.round(v * 10) / 10;

/** Keys per read when auditing a run's keys. */
const AUDIT_PAGE = 2_000;

/** When the tasks of one run started (handler, agent clock) and were committed (the dispatcher's event), from the results. */
export class TaskTimes {
  private readonly prefix: string;
  private eachFirstStart = Number.POSITIVE_INFINITY;
  private eachLastStart = Number.NEGATIVE_INFINITY;
  private eachLastCommit = Number.NEGATIVE_INFINITY;
  private items: Done | undefined;
  private join: Done | undefined;

  constructor(name: string) {
    this.prefix = `${name}/`;
  }

  add(d: Done): void {
    if (!d.id.startsWith(this.prefix)) return;
    const task = d.id.slice(this.prefix.length);
    if (task === 'items') this.items = d;
    else if (task === 'join') this.join = d;
    else {
      this.eachFirstStart = Math.min(this.eachFirstStart, d.startedAt);
      this.eachLastStart = Math.max(this.eachLastStart, d.startedAt);
      this.eachLastCommit = Math.max(this.eachLastCommit, d.observedAt);
    }
  }

  /** Milliseconds after `t0`. */
  after(t0: number): Record<string, number> {
    const r = (v: number | undefined) => round((v ?? Number.NaN) - t0);
    return {
      itemsStarted: r(this.items?.startedAt),
      itemsCommitted: r(this.items?.observedAt),
      firstEachStarted: r(this.eachFirstStart),
      lastEachStarted: r(this.eachLastStart),
      lastEachCommitted: r(this.eachLastCommit),
      joinStarted: r(this.join?.startedAt),
      joinCommitted: r(this.join?.observedAt),
    };
  }
}

/** The operator's defaults that the controller and engine are built with here. */
export const OPERATOR_DEFAULTS = { reconcileWorkers: 2, statusIntervalMs: 2_000, flushMs: 50 };

/** A fan-out + fan-in: `items` yields 0..n-1, `each` runs once per item, `join` after all of them. */
export function fanInSpec(name: string, n: number, sentAt: number): WorkflowSpec {
  const sent = '${{ inputs.sentAt }}';
  return {
    pool: POOL,
    inputs: { sentAt },
    tasks: [
      { name: 'items', handler: 'items', input: { id: `${name}/items`, sentAt: sent, count: n } },
      {
        name: 'each',
        handler: 'task',
        dependsOn: ['items'],
        forEach: 'tasks.items.output.items',
        input: { id: `${name}/each-\${{ item }}`, sentAt: sent },
      },
      { name: 'join', handler: 'task', dependsOn: ['each'], input: { id: `${name}/join`, sentAt: sent } },
    ],
  };
}

export interface WorkflowTimes {
  /** Workflow created (kubectl apply) -> ... (ms). */
  runStartedMs: number;
  /** The run's phase became Succeeded in the engine. */
  succeededMs: number;
  /** The Succeeded status was written to the Workflow. */
  statusWrittenMs: number;
  /** The flush that saved the finished run (every record, the audit chain) returned: all of it is in etcd. */
  flushedMs: number;
  /** The later of the two above: what counts. */
  doneMs: number;
}

/** The leader (dispatcher + engine + controller) in this process; agents and etcd in their own. */
export class AgentflowWorkflowSystem {
  readonly key = 'agentflow';
  readonly label = 'agentflow (engine + controller, etcd fsync on, TLS + token auth)';
  readonly sys: AgentflowSystem;
  readonly kube = new MemoryKube();
  readonly engine: WorkflowEngine;
  readonly controller: WorkflowController;
  private readonly events: EventRecorder;
  private readonly watchers = new Set<(namespace: string, name: string) => void>();
  /** Warnings and errors the engine and the controller logged (a failed status write, a flush retried...). */
  readonly problems = { count: 0, last: [] as string[] };
  private readonly log: Logger = createLogger(
    {},
    {
      level: 'warn',
      write: (line) => {
        this.problems.count++;
        this.problems.last.push(line.slice(0, 2000));
        if (this.problems.last.length > 20) this.problems.last.shift();
      },
    },
  );

  private constructor(sys: AgentflowSystem, maxForEachItems: number) {
    this.sys = sys;
    const workflows = this.kube.informer<Workflow>(WORKFLOWS);
    const pools = this.kube.informer<AgentPool>(AGENTPOOLS);
    const templates = this.kube.informer<WorkflowTemplate>(WORKFLOW_TEMPLATES);
    this.events = new EventRecorder(this.kube, {
      component: 'agentflow-operator',
      host: 'bench',
      logger: this.log,
    });
    // The engine and the controller are wired as in src/operator/operator.ts (lead()).
    let controller: WorkflowController | undefined;
    this.engine = new WorkflowEngine({
      store: sys.store,
      dispatcher: sys.dispatcher,
      fences: sys.fences,
      logger: this.log,
      onChange: (namespace, name) => {
        controller?.changed(namespace, name);
        for (const w of this.watchers) w(namespace, name);
      },
      flushMs: OPERATOR_DEFAULTS.flushMs,
      limits: { maxForEachItems },
      poolCapacity: (namespace, pool) => pools.get(`${namespace}/${pool}`)?.spec.agent.capacity,
    });
    controller = new WorkflowController({
      client: this.kube,
      workflows,
      pools,
      templates,
      engine: this.engine,
      events: this.events,
      logger: this.log,
      workers: OPERATOR_DEFAULTS.reconcileWorkers,
      statusIntervalMs: OPERATOR_DEFAULTS.statusIntervalMs,
    });
    this.controller = controller;
  }

  /**
   * `maxForEachItems` is the operator's --max-foreach-items (default 10,000): the 100,000-task run raises it.
   */
  static async start(o: {
    processes: number;
    capacity: number;
    maxForEachItems: number;
  }): Promise<AgentflowWorkflowSystem> {
    const sys = await AgentflowSystem.start({
      processes: o.processes,
      capacity: o.capacity,
      security: 'tls+auth',
      leaderElection: true,
    });
    const s = new AgentflowWorkflowSystem(sys, o.maxForEachItems);
    await s.kube.create(resourcePath(AGENTPOOLS, { namespace: NAMESPACE }), {
      apiVersion: 'agentflow.io/v1alpha1',
      kind: 'AgentPool',
      metadata: { name: POOL, namespace: NAMESPACE },
      spec: { replicas: o.processes, agent: { capacity: o.capacity, handlers: ['task', 'items'] } },
      status: { replicas: o.processes, readyReplicas: o.processes },
    });
    s.controller.start();
    return s;
  }

  roles(): Role[] {
    return this.sys
      .roles()
      .map((r) => (r.role === 'driver + dispatcher' ? { ...r, role: 'leader: dispatcher + engine + controller' } : r));
  }

  /** The dispatcher's counters and etcd's fsyncs (AgentflowSystem), plus what etcd wrote, from its /metrics. */
  async storeCounters(): Promise<Record<string, number>> {
    const base = await this.sys.storeCounters();
    const text = await (await fetch(`${this.sys.etcd.endpoint}/metrics`)).text();
    const metric = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? Number.NaN);
    return {
      ...base,
      txns: metric('etcd_mvcc_txn_total'),
      keysPut: metric('etcd_mvcc_put_total'),
      keysDeleted: metric('etcd_mvcc_delete_total'),
      putBytes: metric('etcd_debugging_mvcc_total_put_size_in_bytes'),
      ranges: metric('etcd_mvcc_range_total'),
    };
  }

  /** Applies a Workflow of `n` fanned-out tasks and waits until it is Succeeded, in etcd and in its status. */
  async run(
    name: string,
    n: number,
    timeoutMs: number,
  ): Promise<{ times: WorkflowTimes; submittedAt: number; taskTimes: TaskTimes }> {
    const submittedAt = now();
    const taskTimes = new TaskTimes(name);
    const onDone = (d: Done) => taskTimes.add(d);
    this.sys.on('done', onDone);
    const ms = (t: number | undefined) => (t === undefined ? Number.NaN : t - submittedAt);
    let runStarted: number | undefined;
    let succeeded: number | undefined;
    let flushed: number | undefined;
    let statusWritten: number | undefined;
    let settle: ((err?: Error) => void) | undefined;
    const finished = new Promise<void>((resolve, reject) => {
      settle = (err) => (err ? reject(err) : resolve());
    });
    const check = () => {
      if (flushed !== undefined && statusWritten !== undefined) settle?.();
    };
    // From the engine's onChange for this run: it tells of a finished run once more after the flush that
    // saved it. A flush takes the dirty sets before it writes, so only that call may read "clean" as "saved";
    // and the run object is kept, because the controller may drop a clean-looking finished run from the
    // engine while that flush is still writing.
    let run: WorkflowRun | undefined;
    const onEngine = (namespace: string, changed: string) => {
      if (namespace !== NAMESPACE || changed !== name) return;
      run ??= this.engine.get(NAMESPACE, name);
      if (!run) return;
      runStarted ??= now();
      if (run.phase === 'Failed' || run.phase === 'Cancelled')
        settle?.(new Error(`agentflow: workflow ${name} ${run.phase}: ${run.message}`));
      if (run.phase === 'Succeeded') succeeded ??= now();
      if (run.finished && run.dirty.size === 0 && !run.runDirty && !run.specDirty && run.audit.length === 0)
        flushed ??= now();
      check();
    };
    const unsubscribe = this.kube.onWrite((plural, o) => {
      const wf = o as Workflow;
      if (plural !== WORKFLOWS.plural || wf.metadata.name !== name || wf.status?.phase !== 'Succeeded') return;
      statusWritten ??= now();
      check();
    });
    this.watchers.add(onEngine);
    const timer = setTimeout(() => {
      const state = run ? `phase ${run.phase}, ${JSON.stringify(run.counts())}` : 'no run';
      const wf = this.kube.object(WORKFLOWS.plural, NAMESPACE, name) as Workflow | undefined;
      const seen = JSON.stringify({ succeeded, flushed, statusWritten, statusPhase: wf?.status?.phase });
      settle?.(
        new Error(
          `agentflow: workflow ${name} not done after ${timeoutMs} ms (${state}; ${seen}; leader warnings: ${this.problems.count}, last: ${this.problems.last.slice(-3).join(' | ')})`,
        ),
      );
    }, timeoutMs);
    try {
      await this.kube.create(resourcePath(WORKFLOWS, { namespace: NAMESPACE }), {
        apiVersion: 'agentflow.io/v1alpha1',
        kind: 'Workflow',
        metadata: { name, namespace: NAMESPACE },
        spec: fanInSpec(name, n, submittedAt),
      });
      await finished;
    } finally {
      clearTimeout(timer);
      this.watchers.delete(onEngine);
      unsubscribe();
      this.sys.off('done', onDone);
    }
    const doneMs = Math.max(ms(flushed), ms(statusWritten));
    return {
      submittedAt,
      taskTimes,
      times: {
        runStartedMs: ms(runStarted),
        succeededMs: ms(succeeded),
        statusWrittenMs: ms(statusWritten),
        flushedMs: ms(flushed),
        doneMs,
      },
    };
  }

  /** The Workflow object and its status, when the tasks ran, and what etcd holds for the run. */
  async details(
    name: string,
    n: number,
    submittedAt: number,
    taskTimes: TaskTimes,
  ): Promise<{ workflow: Json; audit: Json }> {
    const wf = this.kube.object(WORKFLOWS.plural, NAMESPACE, name) as Workflow | undefined;
    const bytes = (v: unknown) => Buffer.byteLength(JSON.stringify(v ?? null));
    return {
      workflow: {
        objectBytes: bytes(wf),
        specBytes: bytes(wf?.spec),
        statusBytes: bytes(wf?.status),
        phase: wf?.status?.phase,
        progress: wf?.status?.progress,
        conditions: wf?.status?.conditions?.map((c) => `${c.type}=${c.status}`),
        statusTasks: wf?.status?.tasks,
        timelineMs: taskTimes.after(submittedAt),
      },
      audit: await this.audit(name, n),
    };
  }

  /**
   * Reads etcd: results (each written once?), claims and failed attempts left, task records (all Succeeded?),
   * the audit chain verified. Paged reads (WorkflowRecords.load pages 16 records a read: over 100,000 records
   * that takes etcd minutes, each page counting the keys after it).
   */
  private async audit(name: string, n: number): Promise<Json> {
    const store = this.sys.store;
    const under = (kind: string, sub = '') => store.listPaged(`${store.key(kind, NAMESPACE, name)}/${sub}`, AUDIT_PAGE);
    const results = await under('results');
    const done = results.filter((e) => !isClaimEntry(e));
    const records = await under('runs', 'tasks/');
    const chain = await this.engine.audit(NAMESPACE, name).verify();
    return {
      runRecordPhase: (await this.engine.runRecord(NAMESPACE, name))?.phase ?? 'missing',
      tasksExpected: n + 2,
      taskRecords: records.length,
      taskRecordsNotSucceeded: records.filter((e) => (JSON.parse(e.value) as { phase?: string }).phase !== 'Succeeded')
        .length,
      recorded: done.length,
      // The task's key is created by the claim (version 1) and written once more by the commit: version 2.
      recordedMoreThanOnce: done.filter((e) => e.version > 2).length,
      failedAttemptRecords: (await under('attempts')).length,
      claimsLeft: results.length - done.length,
      auditEntries: chain.entries,
      auditChainOk: chain.ok,
    };
  }

  /** Writes to the in-memory API so far, by resource, and the Events recorded, by reason (running totals). */
  apiTotals(): Json {
    return {
      writes: Object.fromEntries(this.kube.tally),
      eventReasons: Object.fromEntries(this.kube.eventReasons),
      leaderWarnings: this.problems,
    };
  }

  async stop(): Promise<void> {
    await this.controller.stop();
    await this.engine.stop();
    await this.events.flush();
    await this.sys.stop();
  }
}
