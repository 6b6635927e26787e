import type { TaskRef, TaskResult } from '../state/index.ts';

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
}

export type TaskEvent =
  | { type: 'committed'; ref: TaskRef; result: TaskResult; agentId: string }
  | { type: 'started'; ref: TaskRef; attempt: number; agentId: string }
  | { type: 'lost'; ref: TaskRef; attempt: number; agentId: string; reason: string }
  | { type: 'timedOut'; ref: TaskRef; attempt: number; agentId: string }
  | { type: 'progress'; ref: TaskRef; attempt: number; fraction: number; message: string }
  | {
      type: 'spawn';
      ref: TaskRef;
      attempt: number;
      children: { name: string; handler: string; input: unknown; cost: number }[];
    }
  | { type: 'orphanLost'; ref: TaskRef; attempt: number; agentId: string };

export interface PoolStats {
  connectedAgents: number;
  /** Total slots of connected, non-draining agents. */
  capacity: number;
  /** Slots in use. */
  inflight: number;
  /** Slots wanted by queued tasks. */
  queued: number;
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
