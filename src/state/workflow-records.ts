import { fenceError } from './fence.ts';
import { decodeJson, type Fence, type StateStore, toEntry } from './store.ts';

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
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null;
const isTaskRecord = (v: unknown): v is TaskRecord =>
  isObject(v) &&
  typeof v.name === 'string' &&
  typeof v.template === 'string' &&
  typeof v.phase === 'string' &&
  Number.isInteger(v.attempt) &&
  typeof v.handler === 'string' &&
  typeof v.pool === 'string';
const isRunRecord = (v: unknown): v is RunRecord =>
  isObject(v) && typeof v.uid === 'string' && typeof v.phase === 'string' && isObject(v.expanded);

// 128 operations per etcd transaction, one of them the fence compare.
const OPS_PER_TXN = 120;

/** The engine's etcd records: one key per task instance plus one for the run. */
export class WorkflowRecords {
  private readonly store: StateStore;

  constructor(store: StateStore) {
    this.store = store;
  }

  private base(namespace: string, workflow: string): string {
    return this.store.key('runs', namespace, workflow);
  }

  /** Writes run and task records in as few fenced transactions as the 128-op limit allows. */
  async save(
    namespace: string,
    workflow: string,
    run: RunRecord | undefined,
    tasks: TaskRecord[],
    fences: Fence[] = [],
  ): Promise<void> {
    const base = this.base(namespace, workflow);
    const puts: [string, string][] = tasks.map((t) => [`${base}/tasks/${t.name}`, JSON.stringify(t)]);
    if (run) puts.push([`${base}/run`, JSON.stringify(run)]);
    for (let i = 0; i < puts.length; i += OPS_PER_TXN) {
      const chunk = puts.slice(i, i + OPS_PER_TXN);
      const res = await this.store
        .txn(fences)
        .then(...chunk.map(([k, v]) => this.store.client.put(k).value(v)))
        .commit();
      if (!res.succeeded) throw (await fenceError(this.store, fences)) ?? new Error('saving run records failed');
    }
  }

  async load(namespace: string, workflow: string): Promise<{ run?: RunRecord; tasks: TaskRecord[] }> {
    const base = this.base(namespace, workflow);
    const res = await this.store.client.getAll().prefix(`${base}/`).exec();
    const tasks: TaskRecord[] = [];
    let run: RunRecord | undefined;
    for (const kv of res.kvs) {
      const entry = toEntry(kv);
      if (entry.key === `${base}/run`) run = decodeJson(entry, isRunRecord, 'a run record');
      else tasks.push(decodeJson(entry, isTaskRecord, 'a task record'));
    }
    return { ...(run && { run }), tasks };
  }

  /** Removes everything agentflow keeps for a workflow: run records, claims, results, attempts, audit, shared state. */
  async deleteAll(namespace: string, workflow: string, fences: Fence[] = []): Promise<void> {
    const prefixes = ['runs', 'claims', 'results', 'attempts', 'audit'].map(
      (k) => `${this.store.key(k, namespace, workflow)}/`,
    );
    prefixes.push(`${this.store.key('state', 'workflow', namespace, workflow)}/`);
    await this.store.deletePrefixes(prefixes, fences);
  }
}
