import { createHash } from 'node:crypto';
import type { AgentPool } from '../../api/agentpool.ts';
import { API_VERSION } from '../../api/crds.ts';
import type { JsonObject } from '../../api/schema-helpers.ts';
import { parsePoolRef, sharedWith } from '../../api/sharing.ts';
import { formatProblem, type PoolInfo, type Problem, validateWorkflowSpec } from '../../api/validate.ts';
import type { Workflow, WorkflowSpec, WorkflowStatus } from '../../api/workflow.ts';
import {
  CANCEL_ANNOTATION,
  RERUN_ANNOTATION,
  RERUN_OF_ANNOTATION,
  RETRY_ANNOTATION,
} from '../../api/workflow-control.ts';
import {
  resolveTemplate,
  type TemplateOrigin,
  templateField,
  type WorkflowTemplate,
} from '../../api/workflow-template.ts';
import type { Logger } from '../../lib/log.ts';
import type { WorkflowEngine } from '../../workflow/engine.ts';
import { specHash, type WorkflowRun } from '../../workflow/run.ts';
import { isAlreadyExists, isNotFound, type KubeClient, resourcePath, WORKFLOWS } from '../kube/client.ts';
import { type Condition, getCondition, setCondition } from '../kube/conditions.ts';
import { Controller, type ControllerObserver, type ReconcileResult } from '../kube/controller.ts';
import type { EventRecorder } from '../kube/events.ts';
import { type InformerView, objectKey } from '../kube/informer.ts';
import { trueSince, type WaitReason, type WorkflowOutcome, workflowConditions } from './conditions.ts';

export const WORKFLOW_FINALIZER = 'agentflow.io/workflow-cleanup';
export { CANCEL_ANNOTATION, RERUN_ANNOTATION, RERUN_OF_ANNOTATION, RETRY_ANNOTATION };
/** Default of the operator's --waiting-timeout: how long a workflow may wait for what it needs before it fails. */
export const DEFAULT_WAITING_TIMEOUT_SECONDS = 600;

/** Problems a change elsewhere (a pool created, scaled or edited) can cure: the workflow waits for them. */
const CURABLE = new Set<Problem['reason']>([
  'PoolNotFound',
  'TemplateNotFound',
  'HandlerNotServed',
  'CostOverCapacity',
]);
/** Annotations a rerun's copy does not take over: control requests and kubectl's bookkeeping. */
const NOT_COPIED = [CANCEL_ANNOTATION, RETRY_ANNOTATION, RERUN_ANNOTATION, RERUN_OF_ANNOTATION];

export interface WorkflowControllerOptions {
  client: KubeClient;
  workflows: InformerView<Workflow>;
  pools: InformerView<AgentPool>;
  templates: InformerView<WorkflowTemplate>;
  engine: WorkflowEngine;
  events: EventRecorder;
  logger: Logger;
  workers?: number;
  observer?: ControllerObserver;
  /** Least time between two status writes of one running workflow (default 2 s); phase changes go at once. */
  statusIntervalMs?: number;
  /** How long a workflow waits for a missing pool or an agent serving a handler before it fails (default 600 s). */
  waitingTimeoutMs?: number;
}

/** The spec a workflow runs, and the template it came from (spec.workflowTemplateRef). */
interface Resolved {
  spec: WorkflowSpec;
  template?: TemplateOrigin;
}

interface Written {
  at: number;
  phase: string | undefined;
  version: number;
  generation: number | undefined;
}

/**
 * Runs Workflows: validates them (a hopeless spec fails at once; a missing
 * pool or handler is waited for, up to the waiting deadline), starts or
 * resumes their runs in the engine, applies suspend, cancel, retry and rerun
 * requests, writes a throttled, bounded status with Events on phase changes,
 * and deletes finished workflows after ttlSecondsAfterFinished (their etcd
 * records go behind a finalizer).
 */
export class WorkflowController {
  readonly controller: Controller;
  private readonly o: WorkflowControllerOptions;
  private readonly written = new Map<string, Written>();
  /** The last phase an Event was recorded for (the informer copy may lag behind our own write). */
  private readonly announced = new Map<string, string>();
  /** The last Waiting reason an Event was recorded for, per workflow. */
  private readonly announcedWaiting = new Map<string, string>();
  /** Approval tasks announced (ApprovalRequested Event) per workflow. */
  private readonly announcedApprovals = new Map<string, Set<string>>();
  /** Finished workflows whose run record was read this term (see recordsBehind). */
  private readonly recordsChecked = new Set<string>();
  /** The last rerun failure an Event was recorded for, per workflow. */
  private readonly announcedRerunFailure = new Map<string, string>();

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
    // A pool that appears, changes or goes may be what a workflow of its namespace waits for
    // (one whose run has not started; a running one hears of its agents from the engine).
    // A shared pool matters to the namespaces it lists too (before and after the change).
    const poolChanged = (p: AgentPool, before?: AgentPool) => {
      const namespaces = new Set([p.metadata.namespace, ...(p.spec.sharing?.namespaces ?? []).map((n) => n.name)]);
      for (const n of before?.spec.sharing?.namespaces ?? []) namespaces.add(n.name);
      for (const w of o.workflows.list((w) => namespaces.has(w.metadata.namespace))) {
        if (w.status?.phase === undefined || w.status.phase === 'Pending') enqueue(w);
      }
    };
    o.pools.on({ add: (p) => poolChanged(p), update: (old, p) => poolChanged(p, old), delete: (p) => poolChanged(p) });
    // A template that appears or changes may be what a workflow that has not started waits for.
    const templateChanged = (t: WorkflowTemplate) => {
      const ns = t.metadata.namespace;
      for (const w of o.workflows.list(
        (w) => w.metadata.namespace === ns && w.spec.workflowTemplateRef?.name === t.metadata.name,
      )) {
        if (w.status?.phase === undefined || w.status.phase === 'Pending') enqueue(w);
      }
    };
    o.templates.on({ add: templateChanged, update: (_, t) => templateChanged(t), delete: templateChanged });
  }

  private get waitingTimeoutMs(): number {
    return this.o.waitingTimeoutMs ?? DEFAULT_WAITING_TIMEOUT_SECONDS * 1000;
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
      this.announcedWaiting.delete(key);
      this.announcedApprovals.delete(key);
      this.announcedRerunFailure.delete(key);
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
    const rerunRetry = await this.rerunIfAsked(wf, log);
    const result = await this.reconcileRun(wf, log);
    const after = minDefined(result?.requeueAfterMs, rerunRetry);
    return after === undefined ? result : { ...result, requeueAfterMs: after };
  }

  /** Runs a workflow that exists and holds the finalizer: starts, resumes, retries, controls and reports its run. */
  private async reconcileRun(wf: Workflow, log: Logger): Promise<ReconcileResult | undefined> {
    const key = objectKey(wf);
    const namespace = wf.metadata.namespace as string;
    const name = wf.metadata.name as string;
    const annotations = wf.metadata.annotations ?? {};
    const retryToken = annotations[RETRY_ANNOTATION];
    const retryAsked = retryToken !== undefined && retryToken !== wf.status?.lastRetry?.token;
    let run = this.o.engine.get(namespace, name);
    if (!run || run.uid !== wf.metadata.uid) {
      const phase = wf.status?.phase;
      let resolved: Resolved;
      if (isFinished(phase) && wf.status?.startedAt !== undefined) {
        // A finished run not in memory (evicted, or after a failover) keeps its status, unless asked
        // to retry, or unless its records say it has not finished: etcd restored from a snapshot
        // taken before it finished. Its records are the truth: it resumes from them.
        const behind = await this.recordsBehind(wf, log);
        if (!retryAsked && !behind) return this.finishedIdle(wf, log);
        const r = this.resolveSpec(wf);
        if ('problems' in r) {
          log.info('A finished run has no spec to resume with', { problem: formatProblem(r.problems[0] as Problem) });
          return this.finishedIdle(wf, log);
        }
        resolved = r;
      } else if (isFinished(phase) && wf.status?.observedGeneration === wf.metadata.generation) {
        // It failed before it started (invalid, or waited too long): a new generation brings it back.
        return this.ttl(wf, log);
      } else {
        const checked = await this.checkSpec(wf, log);
        if ('blocked' in checked) return checked.blocked;
        resolved = checked;
      }
      run = await this.o.engine.ensure({
        namespace,
        name,
        uid: wf.metadata.uid as string,
        spec: resolved.spec,
        ...(resolved.template && { source: wf.spec, template: resolved.template }),
        ...(annotations[RERUN_OF_ANNOTATION] && { rerunOf: annotations[RERUN_OF_ANNOTATION] }),
      });
    }

    if (retryToken !== undefined && retryToken !== run.lastRetry?.token) {
      if (annotations[CANCEL_ANNOTATION] !== undefined && run.phase === 'Cancelled') {
        // The cancel request that ended it would cancel the retry at once: it has been answered.
        await this.patchAnnotations(wf, { [CANCEL_ANNOTATION]: null });
        log.info('Removed the cancel annotation of a cancelled run to retry it');
        return undefined; // the update brings the workflow back
      }
      const outcome = await this.o.engine.retry(run, retryToken, specHash(wf.spec));
      if (outcome.started)
        this.o.events.record(
          wf,
          'Normal',
          'Retrying',
          `retry ${run.retries}: re-running ${outcome.tasks} failed or cancelled task(s); what succeeded is kept`,
        );
      else this.o.events.record(wf, 'Warning', 'RetryRefused', outcome.message);
    }
    if (wf.metadata.annotations?.[CANCEL_ANNOTATION] !== undefined && !run.finished) {
      run.stop(`cancelled through the ${CANCEL_ANNOTATION} annotation`);
      this.o.engine.changed(run);
    }
    if (!run.finished) {
      const before = run.version;
      // The budget first: resuming from spec.suspend must not start tasks a budget holds back.
      // A template's run falls back to the budget it started with (the template's, or the workflow's then).
      run.setBudget(wf.spec.budget ?? (wf.spec.workflowTemplateRef ? run.spec.budget : undefined));
      run.setSuspended(wf.spec.suspend === true);
      if (run.version !== before) this.o.engine.changed(run);
    }
    const waitDeadline = this.enforceWaitingDeadline(wf, run);
    const wait = await this.syncStatus(wf, run, log);
    if (wait !== undefined || waitDeadline !== undefined)
      return { requeueAfterMs: Math.min(wait ?? Number.POSITIVE_INFINITY, waitDeadline ?? Number.POSITIVE_INFINITY) };
    if (run.finished) {
      // Its final status is written: the run's records live on in etcd, not on the leader's heap.
      // Until its records are flushed it stays; a later reconcile (the status write's echo) tries again.
      const written = this.written.get(key);
      if (written?.version === run.version && written.phase === run.phase) this.o.engine.evict(namespace, name);
      return this.ttl(wf, log);
    }
    return undefined;
  }

  /**
   * Validates a workflow whose run has not started. A hopeless spec fails at
   * once (reason InvalidSpec, every problem named); one that needs what may
   * still come (a pool, a handler a pool lists, more slots per agent) waits
   * with a Waiting condition and an Event, re-evaluated whenever a pool of
   * its namespace changes, and fails with that reason after the waiting
   * deadline. Returns what to do when the run must not start.
   */
  private async checkSpec(wf: Workflow, log: Logger): Promise<{ blocked: ReconcileResult } | Resolved> {
    const namespace = wf.metadata.namespace as string;
    const resolved = this.resolveSpec(wf);
    const templateName = wf.spec.workflowTemplateRef?.name;
    const problems =
      'problems' in resolved
        ? resolved.problems
        : validateWorkflowSpec(resolved.spec, { pools: this.poolInfo(namespace) }).map((p) =>
            templateName ? templateField(templateName, p) : p,
          );
    if (problems.length === 0 && !('problems' in resolved)) return resolved;
    return { blocked: await this.blocked(wf, problems, log) };
  }

  /**
   * The spec a workflow runs: its own, or its WorkflowTemplate's resolved with
   * its inputs and overrides. A run that has started keeps the template as it
   * was then (status.workflowTemplate): after a failover or for a retry, the
   * template may have changed or gone. A missing template is waited for.
   */
  private resolveSpec(wf: Workflow): Resolved | { problems: Problem[] } {
    const ref = wf.spec.workflowTemplateRef;
    if (!ref) {
      if (!wf.spec.tasks)
        return { problems: [{ field: 'spec.tasks', reason: 'InvalidSpec', message: 'at least one task is required' }] };
      return { spec: wf.spec as WorkflowSpec };
    }
    const kept = wf.status?.workflowTemplate;
    if (kept && wf.status?.startedAt !== undefined) {
      return {
        spec: kept.spec as unknown as WorkflowSpec,
        template: { name: kept.name, uid: kept.uid, generation: kept.generation },
      };
    }
    const namespace = wf.metadata.namespace as string;
    const template = this.o.templates.get(`${namespace}/${ref.name}`);
    if (!template) {
      return {
        problems: [
          {
            field: 'spec.workflowTemplateRef.name',
            reason: 'TemplateNotFound',
            message: `WorkflowTemplate "${ref.name}" not found in namespace ${namespace}`,
          },
        ],
      };
    }
    const r = resolveTemplate(wf.spec, { name: ref.name, spec: template.spec });
    if (!r.spec) return { problems: r.problems };
    return {
      spec: r.spec,
      template: {
        name: ref.name,
        uid: template.metadata.uid as string,
        generation: template.metadata.generation ?? 0,
      },
    };
  }

  /** Fails a workflow whose problems are hopeless, or has it wait for what may still come. */
  private async blocked(wf: Workflow, problems: Problem[], log: Logger): Promise<ReconcileResult> {
    const key = objectKey(wf);
    const hard = problems.filter((p) => !CURABLE.has(p.reason));
    const conditions = (wf.status?.conditions ?? []) as Condition[];
    const generation = wf.metadata.generation;
    if (hard.length > 0) {
      const message = problems.map(formatProblem).join('; ');
      if (wf.status?.phase !== 'Failed' || wf.status.observedGeneration !== generation) {
        log.info('Workflow spec is invalid', { problems: problems.length });
        this.o.events.record(wf, 'Warning', 'InvalidSpec', message);
      }
      await this.writeStatus(wf, {
        phase: 'Failed',
        message: message.slice(0, 1024),
        conditions: workflowConditions(conditions, {
          outcome: { phase: 'Failed', reason: 'InvalidSpec', message },
          ...(generation !== undefined && { generation }),
        }),
      });
      return {}; // not retried: a new generation brings it back
    }
    const reason = (problems[0] as Problem).reason as WaitReason;
    const message = `waiting: ${problems.map(formatProblem).join('; ')}`;
    const since = trueSince(conditions, 'Waiting');
    const timeout = this.waitingTimeoutMs;
    if (since !== undefined && Date.now() - since >= timeout) {
      const why = `${message.slice('waiting: '.length)} (waited ${Math.round(timeout / 1000)}s, the operator's --waiting-timeout)`;
      log.info('Workflow waited too long for what it needs', { reason });
      this.o.events.record(wf, 'Warning', reason, why);
      await this.writeStatus(wf, {
        phase: 'Failed',
        message: why.slice(0, 1024),
        conditions: workflowConditions(conditions, {
          outcome: { phase: 'Failed', reason, message: why },
          ...(generation !== undefined && { generation }),
        }),
      });
      return {};
    }
    if (this.announcedWaiting.get(key) !== message) {
      this.announcedWaiting.set(key, message);
      log.info('Workflow waits for what it needs', { reason });
      this.o.events.record(wf, 'Warning', reason, message);
    }
    await this.writeStatus(wf, {
      phase: 'Pending',
      message: message.slice(0, 1024),
      conditions: workflowConditions(conditions, {
        outcome: { phase: 'Pending', message },
        waiting: { reason, message },
        ...(generation !== undefined && { generation }),
      }),
    });
    const left = since === undefined ? timeout : since + timeout - Date.now();
    return { requeueAfterMs: Math.max(50, left + 50) };
  }

  /** What the run's unserved work waits for, in words (undefined: nothing). */
  private runWaiting(
    wf: Workflow,
    run: WorkflowRun,
  ): { reason: Exclude<WaitReason, 'CostOverCapacity' | 'TemplateNotFound'>; message: string } | undefined {
    const list = run.waiting();
    const first = list[0];
    if (!first) return undefined;
    const namespace = wf.metadata.namespace as string;
    const pool = this.usablePool(namespace, first.pool);
    const tasks = `${first.tasks} queued task(s) of handler "${first.handler}"`;
    let reason: Exclude<WaitReason, 'CostOverCapacity' | 'TemplateNotFound'>;
    let message: string;
    if (!pool) {
      reason = 'PoolNotFound';
      message = first.pool.includes('/')
        ? `AgentPool "${first.pool}" does not exist or is not shared with namespace ${namespace}: ${tasks} wait for it`
        : `AgentPool "${first.pool}" does not exist: ${tasks} wait for it`;
    } else if (first.agents === 0) {
      reason = 'NoAgentConnected';
      const ready = pool.status?.readyReplicas ?? 0;
      message = `no agent of AgentPool "${first.pool}" is connected (${ready} agent pod(s) Ready): ${tasks} wait`;
    } else {
      reason = 'HandlerNotServed';
      const served = first.served.length > 0 ? first.served.map((h) => `"${h}"`).join(', ') : 'none';
      message = `none of the ${first.agents} connected agent(s) of AgentPool "${first.pool}" registers handler "${first.handler}" (they serve ${served}): ${tasks} wait`;
    }
    if (list.length > 1) message += `; and ${list.length - 1} more pool/handler pair(s)`;
    return { reason, message: `waiting: ${message}` };
  }

  /**
   * Fails a run whose queued work has waited for an agent longer than the
   * waiting deadline, counted from the Waiting condition's transition (so a
   * leader change does not restart the clock). Returns when to look again.
   */
  private enforceWaitingDeadline(wf: Workflow, run: WorkflowRun): number | undefined {
    if (run.finished) return undefined;
    const waiting = this.runWaiting(wf, run);
    if (!waiting) return undefined;
    const timeout = this.waitingTimeoutMs;
    const since = trueSince(wf.status?.conditions as Condition[] | undefined, 'Waiting');
    if (since === undefined) return timeout;
    const left = since + timeout - Date.now();
    if (left > 0) return left + 50;
    run.failFor(
      waiting.reason,
      `${waiting.message.slice('waiting: '.length)} (waited ${Math.round(timeout / 1000)}s, the operator's --waiting-timeout)`,
    );
    this.o.engine.changed(run);
    return undefined;
  }

  /**
   * Whether a workflow whose status says it finished has records that say it
   * has not (etcd was restored from a snapshot taken while it ran). Asked
   * once per workflow per leadership term: one read of its run record.
   */
  private async recordsBehind(wf: Workflow, log: Logger): Promise<boolean> {
    const key = objectKey(wf);
    if (this.recordsChecked.has(key)) return false;
    const namespace = wf.metadata.namespace as string;
    const name = wf.metadata.name as string;
    const rec = await this.o.engine.runRecord(namespace, name);
    this.recordsChecked.add(key);
    if (!rec || rec.uid !== wf.metadata.uid || isFinished(rec.phase)) return false;
    const message = `the Workflow says ${wf.status?.phase} but its records in etcd say ${rec.phase}: etcd holds an earlier state (restored from a snapshot?); resuming from the records: results committed before it are kept, the work after it runs again`;
    log.warn('Records behind the status; resuming the run from them', { status: wf.status?.phase, records: rec.phase });
    this.o.events.record(wf, 'Warning', 'ResumedFromRecords', message);
    await this.o.engine.note(namespace, name, {
      type: 'RecordsBehindStatus',
      detail: { statusPhase: wf.status?.phase, recordsPhase: rec.phase },
    });
    return true;
  }

  /** A finished run that is not in memory: an edit to its spec is reported, never silently ignored. */
  private async finishedIdle(wf: Workflow, log: Logger): Promise<ReconcileResult | undefined> {
    const generation = wf.metadata.generation;
    if (generation !== undefined && wf.status?.observedGeneration !== generation) {
      const message = specEditedMessage(generation, true);
      const prev = getCondition(wf.status?.conditions as Condition[] | undefined, 'SpecApplied');
      await this.writeStatus(wf, {
        conditions: setCondition((wf.status?.conditions ?? []) as Condition[], {
          type: 'SpecApplied',
          status: 'False',
          reason: 'RunFinished',
          message,
          observedGeneration: generation,
        }),
      });
      if (prev?.status !== 'False') {
        log.info('Spec edited after the run finished; not applied', { generation });
        this.o.events.record(wf, 'Warning', 'SpecChangeIgnored', message);
      }
    }
    return this.ttl(wf, log);
  }

  /**
   * Follows a rerun request: a copy of the workflow under a name derived from
   * its uid and the request's value (so a repeated or re-sent request makes
   * one copy), with the current spec, running from scratch.
   */
  private async rerunIfAsked(wf: Workflow, log: Logger): Promise<number | undefined> {
    const token = wf.metadata.annotations?.[RERUN_ANNOTATION];
    if (token === undefined || token === wf.status?.lastRerun?.token) return undefined;
    const namespace = wf.metadata.namespace as string;
    const name = rerunName(wf.metadata.name as string, wf.metadata.uid as string, token);
    const annotations = Object.fromEntries(
      Object.entries(wf.metadata.annotations ?? {}).filter(
        ([k]) => !NOT_COPIED.includes(k) && !k.startsWith('kubectl.kubernetes.io/'),
      ),
    );
    const copy = {
      apiVersion: API_VERSION,
      kind: 'Workflow',
      metadata: {
        name,
        namespace,
        ...(wf.metadata.labels && { labels: wf.metadata.labels }),
        annotations: { ...annotations, [RERUN_OF_ANNOTATION]: wf.metadata.name as string },
      },
      spec: structuredClone(wf.spec),
    };
    try {
      try {
        await this.o.client.create(resourcePath(WORKFLOWS, { namespace }), copy);
      } catch (err) {
        if (!isAlreadyExists(err)) throw err;
        // Made by an earlier try (whose status write was lost), or a workflow of that name that is no copy.
        const there = await this.o.client.get<Workflow>(resourcePath(WORKFLOWS, { namespace, name }));
        if (there.metadata.annotations?.[RERUN_OF_ANNOTATION] !== wf.metadata.name)
          throw new Error(`a Workflow named ${name} exists and is not a copy of ${wf.metadata.name}`);
      }
    } catch (err) {
      // The copy could not be made (refused by the API server, or its name taken): say so, keep
      // running this workflow as usual, and try again later rather than wedge its reconcile.
      const message = `could not create Workflow ${name} to re-run this one: ${(err as Error).message}`;
      log.warn('Rerun failed; trying again later', { as: name, error: err as Error });
      if (this.announcedRerunFailure.get(objectKey(wf)) !== message) {
        this.announcedRerunFailure.set(objectKey(wf), message);
        this.o.events.record(wf, 'Warning', 'RerunFailed', message.slice(0, 1024));
      }
      return RERUN_RETRY_MS;
    }
    this.announcedRerunFailure.delete(objectKey(wf));
    await this.writeStatus(wf, { lastRerun: { token, name } });
    log.info('Re-running the workflow from scratch under a new name', { as: name });
    this.o.events.record(wf, 'Normal', 'Rerun', `re-running from scratch as Workflow ${name}`);
    await this.o.engine.note(namespace, wf.metadata.name as string, {
      type: 'WorkflowRerun',
      detail: { token, as: name },
    });
    return undefined;
  }

  /**
   * The pools a workflow of the namespace may use, by reference: its own by name, and other
   * namespaces' pools that share themselves with it as `namespace/name`. A pool that does not
   * share itself is left out, as if it did not exist: no probing across tenants.
   */
  private poolInfo(namespace: string): Map<string, PoolInfo> {
    const out = new Map<string, PoolInfo>();
    const info = (p: AgentPool): PoolInfo => {
      const h = p.spec.agent.handlers;
      return { ...(h && h.length > 0 && { handlers: h }), capacity: p.spec.agent.capacity };
    };
    for (const p of this.o.pools.list(
      (p) => p.metadata.namespace === namespace || sharedWith(p.metadata.namespace ?? '', p.spec.sharing, namespace),
    )) {
      const own = p.metadata.namespace === namespace;
      out.set(own ? (p.metadata.name as string) : `${p.metadata.namespace}/${p.metadata.name}`, info(p));
      if (own) out.set(`${namespace}/${p.metadata.name}`, info(p)); // its own pool, named in full
    }
    return out;
  }

  /** The pool a reference of the namespace's workflow names, if it exists and serves the namespace. */
  private usablePool(namespace: string, ref: string): AgentPool | undefined {
    const id = parsePoolRef(ref, namespace);
    const pool = id && this.o.pools.get(`${id.namespace}/${id.name}`);
    return pool && sharedWith(id.namespace, pool.spec.sharing, namespace) ? pool : undefined;
  }

  /** Writes the run's status unless one was written too recently; the wait before the next try, if any. */
  private async syncStatus(wf: Workflow, run: WorkflowRun, log: Logger): Promise<number | undefined> {
    const key = objectKey(wf);
    const last = this.written.get(key);
    const now = Date.now();
    const generation = wf.metadata.generation;
    const edited = wf.status?.observedGeneration !== generation;
    if (last && last.version === run.version && last.phase === run.phase && !edited) return undefined;
    const interval = this.o.statusIntervalMs ?? 2_000;
    if (last && last.phase === run.phase && !edited && now - last.at < interval) return interval - (now - last.at);
    // Snapshot what is written: the run moves on while the write is in flight, and what we
    // remember must describe the status we wrote, or a newer state would never be written.
    const version = run.version;
    const phase = run.phase;
    const s = run.status();
    const prevPhase = wf.status?.phase;
    const prev = (wf.status?.conditions ?? []) as Condition[];
    const waiting = this.runWaiting(wf, run);
    const message = statusMessage(run, s, waiting);
    const applied = specHash(wf.spec) === run.specHash;
    const conditions = workflowConditions(prev, {
      outcome: outcomeOf(run, message),
      ...(waiting && { waiting }),
      specApplied: applied
        ? { ok: true, message: 'the run runs the current spec' }
        : {
            ok: false,
            reason: run.finished ? 'RunFinished' : 'RunStarted',
            message: specEditedMessage(generation, run.finished),
          },
      ...(generation !== undefined && { generation }),
      ...((run.hasBudget || getCondition(prev, 'BudgetExceeded')) && {
        budget: { over: run.budgetOver(), hasBudget: run.hasBudget },
      }),
    });
    const keptTemplate = wf.status?.workflowTemplate;
    const template =
      run.template && (keptTemplate?.uid !== run.template.uid || keptTemplate.generation !== run.template.generation)
        ? { workflowTemplate: { ...run.template, spec: run.spec as unknown as JsonObject } }
        : {};
    await this.writeStatus(wf, {
      ...s,
      ...template,
      message,
      ...(run.retries > 0 && { retries: run.retries }),
      ...(run.lastRetry && { lastRetry: run.lastRetry }),
      conditions,
    });
    this.written.set(key, { at: now, phase, version, generation });
    if (run.version !== version) this.controller.enqueue(key);
    if (prevPhase !== phase && this.announced.get(key) !== phase) {
      this.announced.set(key, phase);
      const failed = phase === 'Failed' || phase === 'Cancelled';
      this.o.events.record(wf, failed ? 'Warning' : 'Normal', phase, run.message || `Workflow is ${phase}`);
      log.info('Workflow phase changed', { from: prevPhase, to: phase, reason: run.reason, message: run.message });
    }
    this.announceApprovals(wf, run);
    const budget = getCondition(conditions, 'BudgetExceeded');
    if (budget?.status === 'True' && getCondition(prev, 'BudgetExceeded')?.status !== 'True') {
      log.info('Workflow over its budget', { reason: budget.reason, message: budget.message });
      this.o.events.record(wf, 'Warning', 'BudgetExceeded', budget.message);
    }
    const wasWaiting = getCondition(prev, 'Waiting');
    const announcedWaiting = this.announcedWaiting.get(key);
    if (
      waiting &&
      announcedWaiting !== waiting.reason &&
      !(wasWaiting?.status === 'True' && wasWaiting.reason === waiting.reason)
    ) {
      this.announcedWaiting.set(key, waiting.reason);
      this.o.events.record(wf, 'Warning', waiting.reason, waiting.message);
      this.tellPool(wf, run, waiting);
    } else if (!waiting) this.announcedWaiting.delete(key);
    const wasApplied = getCondition(prev, 'SpecApplied');
    if (!applied && wasApplied?.status !== 'False') {
      log.info('Spec edited after the run started; not applied', { generation });
      this.o.events.record(wf, 'Warning', 'SpecChangeIgnored', getCondition(conditions, 'SpecApplied')?.message ?? '');
    }
    return undefined;
  }

  /**
   * An Event for each approval task that starts waiting (kubectl describe and `kubectl get events`
   * show who is asked what), once per task on this leader.
   */
  private announceApprovals(wf: Workflow, run: WorkflowRun): void {
    const key = `${wf.metadata.namespace}/${wf.metadata.name}`;
    const seen = this.announcedApprovals.get(key) ?? new Set<string>();
    const now = new Set<string>();
    for (const a of run.approvals()) {
      now.add(a.task);
      if (seen.has(a.task)) continue;
      const by = a.deadline === undefined ? '' : ` (decide by ${new Date(a.deadline).toISOString()})`;
      this.o.events.record(
        wf,
        'Normal',
        'ApprovalRequested',
        `task ${a.task} waits for approval${a.message ? `: ${a.message}` : ''}${by}; agentflow approve|reject ${wf.metadata.name} ${a.task}`.slice(
          0,
          1024,
        ),
      );
    }
    if (now.size > 0) this.announcedApprovals.set(key, now);
    else this.announcedApprovals.delete(key);
  }

  /** The pool a run waits on hears of it too: its users may not watch the workflow. */
  private tellPool(wf: Workflow, run: WorkflowRun, waiting: { reason: WaitReason; message: string }): void {
    const first = run.waiting()[0];
    if (!first || waiting.reason === 'PoolNotFound') return;
    const pool = this.usablePool(wf.metadata.namespace as string, first.pool);
    if (!pool) return;
    this.o.events.record(
      pool,
      'Warning',
      waiting.reason,
      `Workflow ${pool.metadata.namespace === wf.metadata.namespace ? '' : `${wf.metadata.namespace}/`}${wf.metadata.name} ${waiting.message}`.slice(
        0,
        1024,
      ),
    );
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
    const kept = wf.spec.workflowTemplateRef ? wf.status?.workflowTemplate?.spec.ttlSecondsAfterFinished : undefined;
    const ttl = wf.spec.ttlSecondsAfterFinished ?? (typeof kept === 'number' ? kept : undefined);
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

  /** Sets (or with null, removes) annotations, conditional on the resourceVersion we read. */
  private async patchAnnotations(wf: Workflow, annotations: Record<string, string | null>): Promise<void> {
    try {
      await this.o.client.mergePatch(
        resourcePath(WORKFLOWS, { namespace: wf.metadata.namespace, name: wf.metadata.name as string }),
        { metadata: { annotations, resourceVersion: wf.metadata.resourceVersion } },
      );
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
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

/** What SpecApplied=False says: the edit is not applied, and what to do instead. */
function specEditedMessage(generation: number | undefined, finished: boolean): string {
  const when = finished
    ? 'after the run finished: a finished run does not change'
    : 'after the run started: only suspend, budget and ttlSecondsAfterFinished apply to a started run';
  return `spec was edited (generation ${generation}) ${when}. Re-run it from scratch under a new name with the new spec (annotate ${RERUN_ANNOTATION}); a retry (${RETRY_ANNOTATION}) runs only the spec the run started with, so revert the edit to retry`;
}

/** How soon a rerun whose copy could not be made is tried again. */
const RERUN_RETRY_MS = 10_000;

const minDefined = (a: number | undefined, b: number | undefined): number | undefined =>
  a === undefined ? b : b === undefined ? a : Math.min(a, b);

/** Name of a rerun's copy: the same for the same workflow and request, so a re-sent request makes one. */
export function rerunName(name: string, uid: string, token: string): string {
  const suffix = createHash('sha256').update(`${uid}/${token}`).digest('hex').slice(0, 5);
  return `${name.slice(0, 253 - 6)}-${suffix}`;
}

/** The run's outcome for its conditions. */
function outcomeOf(run: WorkflowRun, message: string): WorkflowOutcome {
  switch (run.phase) {
    case 'Succeeded':
      return { phase: 'Succeeded', message };
    case 'Failed':
    case 'Cancelled':
      return { phase: run.phase, reason: run.reason ?? (run.phase === 'Failed' ? 'TaskFailed' : 'Cancelled'), message };
    default:
      return { phase: run.phase, message };
  }
}

/** status.message: why it failed, what it waits for, or how far it got. */
function statusMessage(
  run: WorkflowRun,
  s: ReturnType<WorkflowRun['status']>,
  waiting: { message: string } | undefined,
): string {
  const c = s.progress;
  const counts = c ? `${c.succeeded}/${c.total} tasks done, ${c.running} running, ${c.queued} queued` : '';
  switch (run.phase) {
    case 'Succeeded':
      return `every task succeeded (${c?.total ?? 0} tasks)`;
    case 'Failed':
    case 'Cancelled':
      return (run.message || run.phase).slice(0, 1024);
    case 'Suspended':
      return `${run.message}; ${counts}`.slice(0, 1024);
    default: {
      const approvals = run.approvals();
      const first = approvals[0];
      const asked = first
        ? `task ${first.task} waits for approval${first.message ? `: ${first.message}` : ''}${approvals.length > 1 ? ` (and ${approvals.length - 1} more)` : ''}; `
        : '';
      return `${asked}${waiting ? `${waiting.message}; ${counts}` : counts}`.slice(0, 1024);
    }
  }
}

const isFinished = (phase: string | undefined) => phase === 'Succeeded' || phase === 'Failed' || phase === 'Cancelled';
