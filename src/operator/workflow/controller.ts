import type { AgentPool } from '../../api/agentpool.ts';
import { formatProblem, type PoolInfo, validateWorkflowSpec } from '../../api/validate.ts';
import type { Workflow, WorkflowStatus } from '../../api/workflow.ts';
import type { Logger } from '../../lib/log.ts';
import type { WorkflowEngine } from '../../workflow/engine.ts';
import type { WorkflowRun } from '../../workflow/run.ts';
import { isNotFound, type KubeClient, resourcePath, WORKFLOWS } from '../kube/client.ts';
import { type Condition, setCondition } from '../kube/conditions.ts';
import { Controller, type ControllerObserver, type ReconcileResult } from '../kube/controller.ts';
import type { EventRecorder } from '../kube/events.ts';
import { type InformerView, objectKey } from '../kube/informer.ts';

export const WORKFLOW_FINALIZER = 'agentflow.io/workflow-cleanup';
export const CANCEL_ANNOTATION = 'agentflow.io/cancel';

export interface WorkflowControllerOptions {
  client: KubeClient;
  workflows: InformerView<Workflow>;
  pools: InformerView<AgentPool>;
  engine: WorkflowEngine;
  events: EventRecorder;
  logger: Logger;
  workers?: number;
  observer?: ControllerObserver;
  /** Least time between two status writes of one running workflow (default 2 s); phase changes go at once. */
  statusIntervalMs?: number;
}

interface Written {
  at: number;
  phase: string | undefined;
  version: number;
}

/**
 * Runs Workflows: validates them (a hopeless spec fails at once, never
 * retried), starts or resumes their runs in the engine, applies suspend and
 * cancel, writes a throttled, bounded status with Events on phase changes,
 * and deletes finished workflows after ttlSecondsAfterFinished (their etcd
 * records go behind a finalizer).
 */
export class WorkflowController {
  readonly controller: Controller;
  private readonly o: WorkflowControllerOptions;
  private readonly written = new Map<string, Written>();
  /** The last phase an Event was recorded for (the informer copy may lag behind our own write). */
  private readonly announced = new Map<string, string>();

  constructor(o: WorkflowControllerOptions) {
    this.o = o;
    this.controller = new Controller({
      name: 'workflow',
      reconcile: (key, log) => this.reconcile(key, log),
      workers: o.workers ?? 2,
      logger: o.logger,
      ...(o.observer && { observer: o.observer }),
    });
    const enqueue = (w: Workflow) => this.controller.enqueue(objectKey(w));
    o.workflows.on({ add: enqueue, update: (_, w) => enqueue(w), delete: enqueue });
  }

  start(): void {
    this.controller.start();
  }

  stop(): Promise<void> {
    return this.controller.stop();
  }

  /** The engine reports a change in a run. */
  changed(namespace: string, name: string): void {
    this.controller.enqueue(`${namespace}/${name}`);
  }

  private async reconcile(key: string, log: Logger): Promise<ReconcileResult | undefined> {
    const wf = this.o.workflows.get(key);
    const [namespace = '', name = ''] = key.split('/');
    if (!wf) {
      this.written.delete(key);
      this.announced.delete(key);
      return undefined;
    }
    if (wf.metadata.deletionTimestamp) {
      if (wf.metadata.finalizers?.includes(WORKFLOW_FINALIZER)) {
        await this.o.engine.deleteRecords(namespace, name);
        log.info('Cancelled the run and removed its etcd records');
        await this.patchMeta(wf, { finalizers: wf.metadata.finalizers.filter((f) => f !== WORKFLOW_FINALIZER) });
      }
      return undefined;
    }
    if (!wf.metadata.finalizers?.includes(WORKFLOW_FINALIZER)) {
      await this.patchMeta(wf, { finalizers: [...(wf.metadata.finalizers ?? []), WORKFLOW_FINALIZER] });
      return undefined;
    }

    let run = this.o.engine.get(namespace, name);
    if (!run || run.uid !== wf.metadata.uid) {
      // A finished workflow whose run is not in memory (after a failover) keeps its status as it is.
      if (isFinished(wf.status?.phase) && wf.status?.observedGeneration !== undefined) return this.ttl(wf, log);
      const problems = validateWorkflowSpec(wf.spec, { pools: this.poolInfo(namespace) });
      if (problems.length > 0) {
        const message = problems.map(formatProblem).join('; ');
        if (wf.status?.phase !== 'Failed') {
          log.info('Workflow spec is invalid', { problems: problems.length });
          this.o.events.record(wf, 'Warning', 'InvalidSpec', message);
        }
        await this.writeStatus(wf, {
          phase: 'Failed',
          conditions: this.conditions(wf, 'Failed', 'InvalidSpec', message),
        });
        return undefined; // not retried: a new generation brings it back
      }
      run = await this.o.engine.ensure({
        namespace,
        name,
        uid: wf.metadata.uid as string,
        spec: wf.spec,
      });
    }

    if (wf.metadata.annotations?.[CANCEL_ANNOTATION] !== undefined && !run.finished) {
      run.stop(`cancelled through the ${CANCEL_ANNOTATION} annotation`);
      this.o.engine.changed(run);
    }
    if (!run.finished) {
      const before = run.version;
      run.setSuspended(wf.spec.suspend === true);
      if (run.version !== before) this.o.engine.changed(run);
    }
    const wait = await this.syncStatus(wf, run, log);
    if (wait !== undefined) return { requeueAfterMs: wait };
    if (run.finished) {
      // Its final status is written: the run's records live on in etcd, not on the leader's heap.
      // Until its records are flushed it stays; a later reconcile (the status write's echo) tries again.
      const written = this.written.get(key);
      if (written?.version === run.version && written.phase === run.phase) this.o.engine.evict(namespace, name);
      return this.ttl(wf, log);
    }
    return undefined;
  }

  private poolInfo(namespace: string): Map<string, PoolInfo> {
    const out = new Map<string, PoolInfo>();
    for (const p of this.o.pools.list((p) => p.metadata.namespace === namespace)) {
      const h = p.spec.agent.handlers;
      out.set(p.metadata.name as string, {
        ...(h && h.length > 0 && { handlers: h }),
        capacity: p.spec.agent.capacity,
      });
    }
    return out;
  }

  /** Writes the run's status unless one was written too recently; the wait before the next try, if any. */
  private async syncStatus(wf: Workflow, run: WorkflowRun, log: Logger): Promise<number | undefined> {
    const key = objectKey(wf);
    const last = this.written.get(key);
    const now = Date.now();
    if (last && last.version === run.version && last.phase === run.phase) return undefined;
    const interval = this.o.statusIntervalMs ?? 2_000;
    if (last && last.phase === run.phase && now - last.at < interval) return interval - (now - last.at);
    // Snapshot what is written: the run moves on while the write is in flight, and what we
    // remember must describe the status we wrote, or a newer state would never be written.
    const version = run.version;
    const phase = run.phase;
    const message = run.message;
    const s = run.status();
    const prevPhase = wf.status?.phase;
    const conditions = this.runConditions(wf, run);
    await this.writeStatus(wf, { ...s, conditions });
    this.written.set(key, { at: now, phase, version });
    if (run.version !== version) this.controller.enqueue(key);
    if (prevPhase !== phase && this.announced.get(key) !== phase) {
      this.announced.set(key, phase);
      this.o.events.record(wf, phase === 'Failed' ? 'Warning' : 'Normal', phase, message || `Workflow is ${phase}`);
      log.info('Workflow phase changed', { from: prevPhase, to: phase, message });
    }
    return undefined;
  }

  private runConditions(wf: Workflow, run: WorkflowRun): Condition[] {
    switch (run.phase) {
      case 'Succeeded':
        return this.conditions(wf, 'Succeeded', 'AllTasksSucceeded', 'every task succeeded');
      case 'Failed':
        return this.conditions(wf, 'Failed', 'TaskFailed', run.message);
      case 'Cancelled':
        return this.conditions(wf, 'Cancelled', 'Cancelled', run.message);
      case 'Suspended':
        return this.conditions(wf, 'Suspended', 'Suspended', run.message);
      default:
        return this.conditions(wf, 'Running', 'Running', 'tasks are running');
    }
  }

  /** The Completed condition with the given outcome; Suspended only while suspended. */
  private conditions(wf: Workflow, outcome: string, reason: string, message: string): Condition[] {
    const generation = wf.metadata.generation;
    const g = generation !== undefined ? { observedGeneration: generation } : {};
    let list = (wf.status?.conditions ?? []) as Condition[];
    const done = outcome === 'Succeeded' || outcome === 'Failed' || outcome === 'Cancelled';
    list = setCondition(list, {
      type: 'Completed',
      status: done ? 'True' : 'False',
      reason: done ? reason : 'InProgress',
      message: done ? message || outcome : message,
      ...g,
    });
    list = setCondition(list, {
      type: 'Failed',
      status: outcome === 'Failed' ? 'True' : 'False',
      reason: outcome === 'Failed' ? reason : 'NoFailure',
      message: outcome === 'Failed' ? message : 'no task has failed',
      ...g,
    });
    list = setCondition(list, {
      type: 'Suspended',
      status: outcome === 'Suspended' ? 'True' : 'False',
      reason: outcome === 'Suspended' ? 'Suspended' : 'NotSuspended',
      message: outcome === 'Suspended' ? message : 'dispatching',
      ...g,
    });
    return list;
  }

  private async writeStatus(wf: Workflow, status: Partial<WorkflowStatus>): Promise<void> {
    const namespace = wf.metadata.namespace as string;
    const name = wf.metadata.name as string;
    const generation = wf.metadata.generation;
    try {
      await this.o.client.mergePatch(resourcePath(WORKFLOWS, { namespace, name, subresource: 'status' }), {
        status: { ...status, ...(generation !== undefined && { observedGeneration: generation }) },
      });
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }

  private async ttl(wf: Workflow, log: Logger): Promise<ReconcileResult | undefined> {
    const ttl = wf.spec.ttlSecondsAfterFinished;
    const finishedAt = wf.status?.finishedAt ? Date.parse(wf.status.finishedAt) : undefined;
    if (ttl === undefined || finishedAt === undefined) return undefined;
    const left = finishedAt + ttl * 1000 - Date.now();
    if (left > 0) return { requeueAfterMs: Math.min(left + 50, 3_600_000) };
    log.info('Deleting a finished workflow (ttlSecondsAfterFinished)', { ttlSeconds: ttl });
    try {
      await this.o.client.delete(
        resourcePath(WORKFLOWS, { namespace: wf.metadata.namespace, name: wf.metadata.name as string }),
        { apiVersion: 'v1', kind: 'DeleteOptions', preconditions: { uid: wf.metadata.uid } },
      );
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    return undefined;
  }

  private async patchMeta(wf: Workflow, meta: { finalizers: string[] }): Promise<void> {
    try {
      await this.o.client.mergePatch(
        resourcePath(WORKFLOWS, { namespace: wf.metadata.namespace, name: wf.metadata.name as string }),
        { metadata: { ...meta, resourceVersion: wf.metadata.resourceVersion } },
      );
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }
}

const isFinished = (phase: string | undefined) => phase === 'Succeeded' || phase === 'Failed' || phase === 'Cancelled';
