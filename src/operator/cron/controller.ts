import { CronExpressionParser } from 'cron-parser';
import { API_VERSION } from '../../api/crds.ts';
import {
  CRON_WORKFLOW_LABEL,
  type CronWorkflow,
  type CronWorkflowStatus,
  DEFAULT_CONCURRENCY_POLICY,
  DEFAULT_FAILED_HISTORY,
  DEFAULT_SUCCESSFUL_HISTORY,
  MAX_MISSED_SCHEDULES,
  SCHEDULED_TIME_ANNOTATION,
} from '../../api/cron-workflow.ts';
import type { Workflow } from '../../api/workflow.ts';
import type { Logger } from '../../lib/log.ts';
import {
  CRON_WORKFLOWS,
  isAlreadyExists,
  isNotFound,
  type KubeClient,
  resourcePath,
  WORKFLOWS,
} from '../kube/client.ts';
import { type Condition, setCondition } from '../kube/conditions.ts';
import { Controller, type ControllerObserver, type ReconcileResult } from '../kube/controller.ts';
import type { EventRecorder } from '../kube/events.ts';
import { type InformerView, objectKey } from '../kube/informer.ts';

export interface CronWorkflowControllerOptions {
  client: KubeClient;
  crons: InformerView<CronWorkflow>;
  workflows: InformerView<Workflow>;
  events: EventRecorder;
  logger: Logger;
  observer?: ControllerObserver;
  /** The clock (tests). */
  now?: () => number;
}

/** Why a schedule cannot be read, naming the field; undefined: it can. */
export function scheduleProblem(schedule: string, timeZone: string | undefined): string | undefined {
  if (timeZone !== undefined && !isTimeZone(timeZone)) {
    return `spec.timeZone: "${timeZone}" is not an IANA time zone (e.g. "Europe/Paris", "UTC")`;
  }
  try {
    CronExpressionParser.parse(expression(schedule), { tz: timeZone ?? 'UTC', strict: false });
    return undefined;
  } catch (err) {
    return `spec.schedule: "${schedule}" is not a cron schedule: ${(err as Error).message}`;
  }
}

function isTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

/** @midnight is cron's name for @daily; cron-parser knows the rest. */
const expression = (schedule: string) => (schedule === '@midnight' ? '@daily' : schedule);

/**
 * The schedule times in (after, upTo]: the latest, how many there are (counting
 * stops past MAX_MISSED_SCHEDULES), and the first one after upTo.
 */
export function dueTimes(
  schedule: string,
  timeZone: string | undefined,
  after: number,
  upTo: number,
): { latest?: number; missed: number; next: number } {
  const tz = timeZone ?? 'UTC';
  const it = CronExpressionParser.parse(expression(schedule), { currentDate: new Date(after), tz, strict: false });
  let latest: number | undefined;
  let missed = 0;
  for (;;) {
    const t = it.next().getTime();
    if (t > upTo) return { ...(latest !== undefined && { latest }), missed, next: t };
    latest = t;
    missed++;
    if (missed > MAX_MISSED_SCHEDULES) {
      // As the CronJob controller: too many to go through; the latest is all that is started.
      const back = CronExpressionParser.parse(expression(schedule), {
        currentDate: new Date(upTo + 1),
        tz,
        strict: false,
      });
      const last = back.prev().getTime();
      const ahead = CronExpressionParser.parse(expression(schedule), {
        currentDate: new Date(upTo),
        tz,
        strict: false,
      });
      return { latest: last, missed, next: ahead.next().getTime() };
    }
  }
}

const FINISHED = new Set(['Succeeded', 'Failed', 'Cancelled']);
const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');

/**
 * Runs CronWorkflows as the CronJob controller runs CronJobs: at each due time
 * of the schedule (read in spec.timeZone) it creates the Workflow
 * <name>-<unix seconds of the scheduled time>, owned by the CronWorkflow, unless
 * suspended, too late for startingDeadlineSeconds, or held back by
 * concurrencyPolicy (Forbid: skipped while a run is active; Replace: the active
 * runs are deleted first). The deterministic name makes a schedule start at most
 * once, across retries and leader changes. After an outage the latest missed
 * time is started (once; more than 100 missed are reported as too many). Finished
 * runs beyond the history limits are deleted, oldest first.
 */
export class CronWorkflowController {
  readonly controller: Controller;
  private readonly o: CronWorkflowControllerOptions;
  /** The last warning announced per CronWorkflow (an Event once, not every reconcile). */
  private readonly announced = new Map<string, string>();

  constructor(o: CronWorkflowControllerOptions) {
    this.o = o;
    this.controller = new Controller({
      name: 'cronworkflow',
      reconcile: (key, log) => this.reconcile(key, log),
      workers: 1,
      logger: o.logger,
      ...(o.observer && { observer: o.observer }),
    });
    const enqueue = (c: CronWorkflow) => this.controller.enqueue(objectKey(c));
    o.crons.on({ add: enqueue, update: (_, c) => enqueue(c), delete: enqueue });
    // A run that starts, finishes or goes changes its CronWorkflow's active list and history.
    const runChanged = (w: Workflow) => {
      const owner = w.metadata.labels?.[CRON_WORKFLOW_LABEL];
      if (owner) this.controller.enqueue(`${w.metadata.namespace}/${owner}`);
    };
    o.workflows.on({ add: runChanged, update: (_, w) => runChanged(w), delete: runChanged });
  }

  start(): void {
    this.controller.start();
  }

  stop(): Promise<void> {
    return this.controller.stop();
  }

  private now(): number {
    return this.o.now?.() ?? Date.now();
  }

  private async reconcile(key: string, log: Logger): Promise<ReconcileResult | undefined> {
    const cron = this.o.crons.get(key);
    if (!cron) {
      this.announced.delete(key);
      return undefined; // its runs go with it (owner references)
    }
    if (cron.metadata.deletionTimestamp) return undefined;
    const namespace = cron.metadata.namespace as string;
    const name = cron.metadata.name as string;
    const spec = cron.spec;
    const runs = this.o.workflows.list(
      (w) =>
        w.metadata.namespace === namespace &&
        w.metadata.labels?.[CRON_WORKFLOW_LABEL] === name &&
        (w.metadata.ownerReferences ?? []).some((r) => r.uid === cron.metadata.uid),
    );
    const active = runs.filter((w) => !FINISHED.has(w.status?.phase ?? '') && !w.metadata.deletionTimestamp);
    await this.pruneHistory(cron, runs, log);
    const succeeded = runs
      .filter((w) => w.status?.phase === 'Succeeded' && w.status.finishedAt)
      .map((w) => Date.parse(w.status?.finishedAt as string));
    const status: CronWorkflowStatus = {
      active: active.map((w) => ({ name: w.metadata.name as string, uid: w.metadata.uid as string })),
      ...(cron.status?.lastScheduleTime && { lastScheduleTime: cron.status.lastScheduleTime }),
      ...(succeeded.length > 0 && { lastSuccessfulTime: iso(Math.max(...succeeded)) }),
    };
    let conditions = (cron.status?.conditions ?? []) as Condition[];
    const generation = cron.metadata.generation;

    const problem = scheduleProblem(spec.schedule, spec.timeZone);
    if (problem) {
      this.announce(cron, 'InvalidSchedule', problem);
      conditions = setCondition(conditions, {
        type: 'Scheduled',
        status: 'False',
        reason: 'InvalidSchedule',
        message: problem,
        ...(generation !== undefined && { observedGeneration: generation }),
      });
      await this.writeStatus(cron, { ...status, nextScheduleTime: null, conditions });
      return undefined; // a new generation brings it back
    }
    if (spec.suspend) {
      conditions = setCondition(conditions, {
        type: 'Scheduled',
        status: 'False',
        reason: 'Suspended',
        message: 'spec.suspend is true: no run starts',
        ...(generation !== undefined && { observedGeneration: generation }),
      });
      await this.writeStatus(cron, { ...status, nextScheduleTime: null, conditions });
      return undefined;
    }

    const now = this.now();
    const created = Date.parse(cron.metadata.creationTimestamp as string);
    let earliest = cron.status?.lastScheduleTime ? Date.parse(cron.status.lastScheduleTime) : created;
    const deadline = spec.startingDeadlineSeconds;
    // As the CronJob controller: with a deadline, what is older than it is not started. What was due
    // there is said, once (the CronJob controller says nothing).
    if (deadline !== undefined && earliest < now - deadline * 1000) {
      const skipped = dueTimes(spec.schedule, spec.timeZone, earliest, now - deadline * 1000);
      if (skipped.latest !== undefined) {
        this.announce(
          cron,
          'MissSchedule',
          `missed ${skipped.missed > MAX_MISSED_SCHEDULES ? `more than ${MAX_MISSED_SCHEDULES}` : skipped.missed} run(s), the latest scheduled for ${iso(skipped.latest)}: not started within startingDeadlineSeconds (${deadline})`,
        );
      }
      earliest = now - deadline * 1000;
    }
    const due = dueTimes(spec.schedule, spec.timeZone, earliest, now);
    const wait = { requeueAfterMs: Math.max(100, due.next - now + 100) };
    const scheduled = {
      type: 'Scheduled',
      status: 'True' as const,
      reason: 'Scheduled',
      message: `next run at ${iso(due.next)}`,
      ...(generation !== undefined && { observedGeneration: generation }),
    };
    conditions = setCondition(conditions, scheduled);
    const base = { ...status, nextScheduleTime: iso(due.next), conditions };
    if (due.latest === undefined) {
      await this.writeStatus(cron, base);
      return wait;
    }
    if (due.missed > MAX_MISSED_SCHEDULES) {
      this.announce(
        cron,
        'TooManyMissedTimes',
        `more than ${MAX_MISSED_SCHEDULES} schedules were missed since ${iso(earliest)}: starting the latest only (set startingDeadlineSeconds to bound how far back to look)`,
      );
    }
    if (deadline !== undefined && due.latest + deadline * 1000 < now) {
      this.announce(
        cron,
        'MissSchedule',
        `missed the run scheduled for ${iso(due.latest)}: more than startingDeadlineSeconds (${deadline}) ago`,
      );
      await this.writeStatus(cron, base);
      return wait;
    }
    const policy = spec.concurrencyPolicy ?? DEFAULT_CONCURRENCY_POLICY;
    const runName = `${name}-${Math.floor(due.latest / 1000)}`;
    const others = active.filter((w) => w.metadata.name !== runName);
    if (policy === 'Forbid' && others.length > 0) {
      // Not skipped for good: once the active run finishes, the schedule is started if still within
      // its deadline (the CronJob controller's behaviour); a later schedule supersedes it.
      this.announce(
        cron,
        'JobAlreadyActive',
        `run for ${iso(due.latest)} held back: concurrencyPolicy Forbid and ${others.map((w) => w.metadata.name).join(', ')} still running`,
      );
      await this.writeStatus(cron, base);
      return wait;
    }
    if (policy === 'Replace') {
      for (const w of others) {
        await this.deleteRun(namespace, w, log);
        this.o.events.record(
          cron,
          'Normal',
          'SuccessfulDelete',
          `deleted run ${w.metadata.name} (concurrencyPolicy Replace)`,
        );
      }
    }
    const run = await this.createRun(cron, runName, due.latest, log);
    const activeNow = [
      ...(policy === 'Replace' ? [] : others).map((w) => ({
        name: w.metadata.name as string,
        uid: w.metadata.uid as string,
      })),
      ...(run ? [{ name: runName, uid: run.metadata.uid as string }] : []),
    ];
    await this.writeStatus(cron, { ...base, active: activeNow, lastScheduleTime: iso(due.latest) });
    return wait;
  }

  /** Creates the run for one scheduled time (or finds it, created before); undefined: the name is taken. */
  private async createRun(cron: CronWorkflow, name: string, at: number, log: Logger): Promise<Workflow | undefined> {
    const namespace = cron.metadata.namespace as string;
    const meta = cron.spec.workflowMetadata;
    const body = {
      apiVersion: API_VERSION,
      kind: 'Workflow',
      metadata: {
        name,
        namespace,
        labels: { ...(meta?.labels ?? {}), [CRON_WORKFLOW_LABEL]: cron.metadata.name as string },
        annotations: { ...(meta?.annotations ?? {}), [SCHEDULED_TIME_ANNOTATION]: iso(at) },
        ownerReferences: [
          {
            apiVersion: API_VERSION,
            kind: 'CronWorkflow',
            name: cron.metadata.name as string,
            uid: cron.metadata.uid as string,
            controller: true,
            blockOwnerDeletion: true,
          },
        ],
      },
      spec: structuredClone(cron.spec.workflowSpec),
    };
    try {
      const created = await this.o.client.create<Workflow>(resourcePath(WORKFLOWS, { namespace }), body);
      log.info('Started a scheduled run', { run: name, scheduledFor: iso(at) });
      this.o.events.record(cron, 'Normal', 'SuccessfulCreate', `started run ${name} (scheduled for ${iso(at)})`);
      return created;
    } catch (err) {
      if (!isAlreadyExists(err)) throw err;
    }
    // Created before (by an earlier reconcile whose status write our cache had not seen yet, or by
    // a former leader): the schedule has its run. One of that name that is not ours is reported.
    try {
      const there = await this.o.client.get<Workflow>(resourcePath(WORKFLOWS, { namespace, name }));
      if ((there.metadata.ownerReferences ?? []).some((r) => r.uid === cron.metadata.uid)) return there;
      this.announce(
        cron,
        'NameTaken',
        `a Workflow named ${name} exists and is not a run of this CronWorkflow: the run for ${iso(at)} is not started`,
      );
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    return undefined;
  }

  private async deleteRun(namespace: string, w: Workflow, log: Logger): Promise<void> {
    try {
      await this.o.client.delete(resourcePath(WORKFLOWS, { namespace, name: w.metadata.name as string }), {
        apiVersion: 'v1',
        kind: 'DeleteOptions',
        propagationPolicy: 'Background',
        preconditions: { uid: w.metadata.uid },
      });
      log.info('Deleted a run', { run: w.metadata.name });
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }

  /** Deletes finished runs beyond the history limits, oldest first. */
  private async pruneHistory(cron: CronWorkflow, runs: Workflow[], log: Logger): Promise<void> {
    const namespace = cron.metadata.namespace as string;
    const finishedAt = (w: Workflow) =>
      Date.parse(w.status?.finishedAt ?? (w.metadata.creationTimestamp as string | undefined) ?? '') || 0;
    const prune = async (list: Workflow[], keep: number) => {
      const old = list.sort((a, b) => finishedAt(b) - finishedAt(a)).slice(keep);
      for (const w of old) {
        if (w.metadata.deletionTimestamp) continue;
        await this.deleteRun(namespace, w, log);
      }
    };
    const phase = (w: Workflow) => w.status?.phase;
    await prune(
      runs.filter((w) => phase(w) === 'Succeeded'),
      cron.spec.successfulJobsHistoryLimit ?? DEFAULT_SUCCESSFUL_HISTORY,
    );
    await prune(
      runs.filter((w) => phase(w) === 'Failed' || phase(w) === 'Cancelled'),
      cron.spec.failedJobsHistoryLimit ?? DEFAULT_FAILED_HISTORY,
    );
  }

  /** A Warning Event, once per distinct message. */
  private announce(cron: CronWorkflow, reason: string, message: string): void {
    const key = objectKey(cron);
    if (this.announced.get(key) === message) return;
    this.announced.set(key, message);
    this.o.events.record(cron, 'Warning', reason, message);
  }

  private async writeStatus(
    cron: CronWorkflow,
    status: Omit<CronWorkflowStatus, 'nextScheduleTime'> & { nextScheduleTime?: string | null },
  ): Promise<void> {
    const namespace = cron.metadata.namespace as string;
    const name = cron.metadata.name as string;
    const generation = cron.metadata.generation;
    try {
      await this.o.client.mergePatch(resourcePath(CRON_WORKFLOWS, { namespace, name, subresource: 'status' }), {
        status: { ...status, ...(generation !== undefined && { observedGeneration: generation }) },
      });
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }
}
