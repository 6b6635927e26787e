import type { ApprovalVerdict } from '../api/approvals.ts';
import type { ApprovalTimeoutAction } from '../api/workflow.ts';
import type { ModelUsage } from '../lib/usage.ts';
import { ItemRefusedError, isolate, MAX_TXN_OPS, pack } from './batch.ts';
import { Blobs, fill, spillJson } from './blobs.ts';
import { LEGACY_CLAIMS } from './claims.ts';
import { StateError } from './errors.ts';
import { fenceError } from './fence.ts';
import { type PutOp, putBytes, putOp } from './put-op.ts';
import { decodeJson, type Fence, type StateStore } from './store.ts';

/**
 * What the workflow engine keeps per task instance in etcd (not in the
 * custom resource, which must stay small): enough for a new leader to pick
 * up a run where the old one left it.
 */
export interface TaskRecord {
  /** Instance name: the spec task's name, `name.<index>` for a forEach item, `parent~child` for a spawned child. */
  name: string;
  /** The spec task it comes from (a child: its parent's template). */
  template: string;
  index?: number;
  parent?: string;
  phase: string;
  /** Latest attempt handed out (0: never ran). */
  attempt: number;
  handler: string;
  pool: string;
  cost: number;
  /** Rendered input (kept so a retry or a new leader sends the same input). */
  input?: unknown;
  output?: unknown;
  message?: string;
  startedAt?: string;
  finishedAt?: string;
  /** Unix ms of the next attempt (Retrying). */
  retryAt?: number;
  children?: string[];
  /** Attempts made before the workflow's latest retry (the retry policy counts from here). */
  attemptBase?: number;
  /**
   * Model usage of the instance's committed results (failed attempts' included), summed per
   * model, and the attempts already counted: a result reported again (after a failover) counts once.
   */
  usage?: { attempts: number[]; models: ModelUsage[] };
  /**
   * An approval task, or a task whose handler waits in ctx.waitForApproval: what it asks (rendered),
   * and when it stops waiting (Unix ms), if it does. A handler's wait also keeps its number, its
   * timeout, onTimeout and approvers (a spec's are in the spec).
   */
  approval?: {
    message: string;
    deadline?: number;
    ordinal?: number;
    timeoutSeconds?: number;
    onTimeout?: ApprovalTimeoutAction;
    approvers?: { users?: string[]; groups?: string[] };
  };
  /** Decisions on the handler's ctx.waitForApproval calls so far (each attempt gets them). */
  verdicts?: ApprovalVerdict[];
  /** Attempts that ended waiting for approval (the retry policy does not count them). */
  parked?: number;
  /** Its memoization key, evaluated when it was queued: its output is cached under it once it succeeds. */
  memoKey?: string;
  /** Where its output came from when it was memoized (no agent ran it). */
  memo?: { workflow: string; task: string; attempt: number; createdAt: string };
}

/** Per-workflow run state: the uid guards against a re-created workflow of the same name. */
export interface RunRecord {
  uid: string;
  startedAt: string;
  finishedAt?: string;
  phase: string;
  message?: string;
  /** Templates whose forEach has been expanded, with their instance counts. */
  expanded: Record<string, number>;
  /** Why it failed (a RunFailureReason). */
  reason?: string;
  /** Hash of the spec the run runs (edits after the start are not applied). */
  specHash?: string;
  /** The WorkflowTemplate the run runs (spec.workflowTemplateRef), as it was when the run started. */
  template?: { name: string; uid: string; generation: number };
  /** Times it was retried, and when the latest retry began (the workflow deadline counts from it). */
  retries?: number;
  retriedAt?: string;
  /** What the last agentflow.io/retry request did. */
  lastRetry?: { token: string; at: string; started: boolean; tasks: number; message: string };
}

/** Result keys deleted per transaction when a workflow's records go (a bounded answer to the dispatcher's watch). */
const DELETE_PAGE = 1_000;

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null;
const isTaskRecord = (v: unknown): v is TaskRecord =>
  isObject(v) &&
  typeof v.name === 'string' &&
  typeof v.template === 'string' &&
  typeof v.phase === 'string' &&
  Number.isInteger(v.attempt) &&
  typeof v.handler === 'string' &&
  typeof v.pool === 'string';
const isSpecRecord = (v: unknown): v is { spec?: unknown; specBlob?: unknown } =>
  isObject(v) && ('spec' in v || 'specBlob' in v);
const isRunRecord = (v: unknown): v is RunRecord =>
  isObject(v) && typeof v.uid === 'string' && typeof v.phase === 'string' && isObject(v.expanded);

/** A record's input or output over this many bytes of JSON is kept as a blob (a record stays small). */
const RECORD_FIELD_INLINE = 64 * 1024;
/**
 * Records per range read when loading a run. Most records are small; a page of large ones (up to
 * ~200 KiB each) that passes the receive limit is read again in halves (StateStore.listPaged).
 */
const LOAD_PAGE = 1024;

/** The engine's etcd records: one key per task instance plus one for the run. */
export class WorkflowRecords {
  private readonly store: StateStore;

  constructor(store: StateStore) {
    this.store = store;
  }

  private base(namespace: string, workflow: string): string {
    return this.store.key('runs', namespace, workflow);
  }

  /**
   * Writes run and task records in as few fenced transactions as etcd's
   * limits (operations and bytes) allow; a large input or output is written
   * as a blob first and the record refers to it.
   */
  async save(
    namespace: string,
    workflow: string,
    run: RunRecord | undefined,
    tasks: TaskRecord[],
    fences: Fence[] = [],
    spec?: unknown,
  ): Promise<void> {
    const base = this.base(namespace, workflow);
    const blobs = new Blobs(this.store);
    // Encoded at once: a record's JSON text dies here, and only its bytes wait for the transaction.
    const puts: { key: string; op: PutOp }[] = [];
    const put = (key: string, json: string) => puts.push({ key, op: putOp(key, json) });
    if (spec !== undefined) {
      // The spec the run started with, once: a new leader resumes with it, whatever the Workflow says now.
      put(`${base}/spec`, await spillJson(blobs, namespace, workflow, { spec }, ['spec'], fences, RECORD_FIELD_INLINE));
    }
    for (const t of tasks) {
      const json = await spillJson(blobs, namespace, workflow, t, ['input', 'output'], fences, RECORD_FIELD_INLINE);
      put(`${base}/tasks/${t.name}`, json);
    }
    if (run) put(`${base}/run`, JSON.stringify(run));
    const groups = pack(puts, (p) => ({ ops: 1, bytes: putBytes(p.op) }), {
      ops: MAX_TXN_OPS - Math.max(1, fences.length),
      bytes: this.store.maxTxnBytes,
    });
    for (const group of groups) {
      const outcomes = await isolate(
        group,
        async (g) => {
          const res = await this.store.leanTxn(
            fences,
            [],
            g.map((p) => ({ put: { key: p.op.request_put.key, value: p.op.request_put.value } })),
          );
          if (!res.succeeded)
            throw (await fenceError(this.store, fences)) ?? new StateError('saving run records failed');
          return g.map(() => true);
        },
        (p) => `run record ${p.key}`,
      );
      const refused = outcomes.find((o) => o instanceof ItemRefusedError);
      if (refused) throw refused;
    }
  }

  /** Reads a run's records page by page at one revision, large fields read back from their blobs. */
  async load(namespace: string, workflow: string): Promise<{ run?: RunRecord; tasks: TaskRecord[]; spec?: unknown }> {
    const base = this.base(namespace, workflow);
    const blobs = new Blobs(this.store);
    const tasks: TaskRecord[] = [];
    let run: RunRecord | undefined;
    let spec: unknown;
    for (const entry of await this.store.listPaged(`${base}/`, LOAD_PAGE)) {
      if (entry.key === `${base}/run`) run = decodeJson(entry, isRunRecord, 'a run record');
      else if (entry.key === `${base}/spec`) {
        const s = decodeJson(entry, isSpecRecord, 'a run spec {spec}');
        spec = (await fill(blobs, namespace, workflow, s, ['spec'], entry.key)).spec;
      } else {
        const t = decodeJson(entry, isTaskRecord, 'a task record');
        tasks.push(await fill(blobs, namespace, workflow, t, ['input', 'output'], entry.key));
      }
    }
    return { ...(run && { run }), tasks, ...(spec !== undefined && { spec }) };
  }

  /** The run record alone (one read): what a finished workflow's records say, without loading its tasks. */
  async loadRun(namespace: string, workflow: string): Promise<RunRecord | undefined> {
    const entry = await this.store.get(`${this.base(namespace, workflow)}/run`);
    return entry ? decodeJson(entry, isRunRecord, 'a run record') : undefined;
  }

  /** Removes everything agentflow keeps for a workflow: run records, claims, results, attempts, task logs, audit, blobs, shared state. */
  async deleteAll(namespace: string, workflow: string, fences: Fence[] = []): Promise<void> {
    // Results first, in pages: the dispatcher watches results/ for deletes (claims share the keys),
    // and one delete of a 100,000-task prefix would be one watch answer of every key. The run
    // record goes last, with the rest, so a delete that stops half-way is taken up again.
    await this.store.deletePrefixPaged(`${this.store.key('results', namespace, workflow)}/`, DELETE_PAGE, fences);
    const prefixes = ['runs', LEGACY_CLAIMS, 'results', 'attempts', 'logs', 'audit', 'blobs'].map(
      (k) => `${this.store.key(k, namespace, workflow)}/`,
    );
    prefixes.push(`${this.store.key('state', 'workflow', namespace, workflow)}/`);
    await this.store.deletePrefixes(prefixes, fences);
  }
}
