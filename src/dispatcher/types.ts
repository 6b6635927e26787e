import type { ApprovalVerdict } from '../api/approvals.ts';
import type { TaskRef, TaskResult } from '../state/index.ts';
import type { WireErrorCode } from './task-state.ts';

/** A task ready to run, as the workflow engine hands it to the dispatcher. */
export interface TaskSpec {
  ref: TaskRef;
  pool: string;
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
/** Wire task id: workflow/task (the agent's namespace is known from its registration). */
export const wireTaskId = (r: TaskRef) => `${r.workflow}/${r.task}`;

export function parseWireTaskId(namespace: string, id: string): TaskRef | undefined {
  const slash = id.indexOf('/');
  if (slash <= 0 || slash === id.length - 1) return undefined;
  const workflow = id.slice(0, slash);
  const task = id.slice(slash + 1);
  if (task.includes('/')) return undefined;
  return { namespace, workflow, task };
}
