import type { ApprovalVerdict } from '../api/approvals.ts';
import type { TaskRef, TaskResult } from '../state/index.ts';
import type { WireErrorCode } from './task-state.ts';

/** A task ready to run, as the workflow engine hands it to the dispatcher. */
export interface TaskSpec {
  ref: TaskRef;
  pool: string;
  /**
   * Namespace of the pool when it is not the task's: an AgentPool of another namespace that shares
   * itself with the task's (its spec.sharing). Absent: the pool is in the task's namespace.
   */
  poolNamespace?: string;
  handler: string;
  /** JSON-serialisable input. */
  input: unknown;
  /** Attempt number of this run (1 for the first). */
  attempt?: number;
  /** Slots one attempt occupies (default 1). */
  cost?: number;
  /** Higher first (default 0). */
  priority?: number;
  /** Deadline of one attempt, in seconds. */
  timeoutSeconds?: number;
  /** Decisions on the task's earlier ctx.waitForApproval calls (sent in Assign.approvals). */
  approvals?: readonly ApprovalVerdict[];
  /**
   * Its concurrency key, evaluated: at most `max` attempts of tasks with this key (in the task's
   * namespace, any workflow, any pool) hold a slot at once.
   */
  concurrency?: { key: string; max: number };
  /** Rate limits of its pool (spec.rateLimits) each attempt takes a token of; `key` evaluated (absent: one bucket). */
  rateLimits?: readonly { name: string; key?: string }[];
  /**
   * The workflow run's trace, when tracing is on: each attempt's Assign carries the traceparent of
   * its span (src/lib/tracing.ts attemptSpanContext), so the agent's spans are its children.
   */
  traceId?: string;
}

/** A child task an agent asked for (SpawnTasks), checked by the dispatcher. */
export interface SpawnedChild {
  name: string;
  handler: string;
  input: unknown;
  cost: number;
}

/** A parent attempt's children, as the engine takes them (SpawnTasks without its wire fields). */
export interface SpawnRequest {
  type: 'spawn';
  ref: TaskRef;
  attempt: number;
  children: SpawnedChild[];
}

/**
 * Why a SpawnTasks added nothing (SpawnAck.error_code): the WireError codes for the parent's claim
 * and a malformed child, LIMIT_EXCEEDED (a cap of the engine), CONFLICT (a child name taken by a
 * different child) and UNAVAILABLE (not now: the agent re-sends).
 */
export type SpawnErrorCode = WireErrorCode | 'LIMIT_EXCEEDED' | 'CONFLICT' | 'UNAVAILABLE';

/** What the engine says of a spawn: durable (its children's records are in etcd), or why not. */
export type SpawnOutcome = { ok: true } | { ok: false; code: SpawnErrorCode; message: string };

export type TaskEvent =
  | { type: 'committed'; ref: TaskRef; result: TaskResult; agentId: string }
  | { type: 'started'; ref: TaskRef; attempt: number; agentId: string }
  | { type: 'lost'; ref: TaskRef; attempt: number; agentId: string; reason: string }
  | { type: 'timedOut'; ref: TaskRef; attempt: number; agentId: string }
  | { type: 'progress'; ref: TaskRef; attempt: number; fraction: number; message: string }
  | (SpawnRequest & {
      /**
       * The engine calls it once: ok after a flush that saved the children's records succeeded
       * (never before), or a refusal. The dispatcher turns it into the agent's SpawnAck.
       */
      settle(outcome: SpawnOutcome): void;
    })
  | { type: 'orphanLost'; ref: TaskRef; attempt: number; agentId: string }
  /** A concurrency key or rate limit holds the queued attempt; `message` says which and for how long. */
  | { type: 'held'; ref: TaskRef; attempt: number; message: string };

export interface PoolStats {
  connectedAgents: number;
  /** Total slots of connected, non-draining agents. */
  capacity: number;
  /** Slots in use. */
  inflight: number;
  /** Slots wanted by queued tasks. */
  queued: number;
  /** Handlers some connected, non-draining agent serves (sorted). */
  handlers: string[];
  /** Handlers of the tasks queued for the pool (sorted). */
  wanted: string[];
}

export const taskKey = (r: TaskRef) => `${r.namespace}/${r.workflow}/${r.task}`;

/** The namespace of the pool that runs the task. */
export const poolNamespaceOf = (s: Pick<TaskSpec, 'ref' | 'poolNamespace'>) => s.poolNamespace ?? s.ref.namespace;

/** The pool as metrics and messages name it: `name`, or `namespace/name` when it is another namespace's. */
export const poolLabel = (s: Pick<TaskSpec, 'ref' | 'pool' | 'poolNamespace'>) =>
  s.poolNamespace && s.poolNamespace !== s.ref.namespace ? `${s.poolNamespace}/${s.pool}` : s.pool;

/**
 * Wire task id, relative to the agent it goes to: `workflow/task` for a task of the agent's own
 * namespace (known from its registration), `namespace/workflow/task` for one of a namespace its
 * shared pool serves.
 */
export const wireTaskId = (r: TaskRef, agentNamespace: string = r.namespace) =>
  r.namespace === agentNamespace ? `${r.workflow}/${r.task}` : `${r.namespace}/${r.workflow}/${r.task}`;

/** The task a wire id names, resolved against the agent's namespace; undefined if malformed. */
export function parseWireTaskId(namespace: string, id: string): TaskRef | undefined {
  const parts = id.split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => p === '')) return undefined;
  const [a, b, c] = parts as [string, string, string | undefined];
  return c === undefined ? { namespace, workflow: a, task: b } : { namespace: a, workflow: b, task: c };
}

/**
 * Who a claim names: the agent id for a task of the agent's own namespace (as always), and
 * `agentNamespace/agentId` for another namespace's task, so that agents of the same name in two
 * namespaces (pods are `<pool>-<n>`) can never pass for each other on a shared pool's task.
 */
export const claimantId = (agentNamespace: string, agentId: string, ref: TaskRef) =>
  ref.namespace === agentNamespace ? agentId : `${agentNamespace}/${agentId}`;

/** The key of an agent's connection: agent ids are unique only within a namespace. */
export const agentKey = (namespace: string, agentId: string) => `${namespace}/${agentId}`;

/** The connection key of the agent a claim names (see claimantId). */
export const agentKeyOfClaimant = (ref: TaskRef, claimant: string) =>
  claimant.includes('/') ? claimant : agentKey(ref.namespace, claimant);
