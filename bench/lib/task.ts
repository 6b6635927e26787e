// The one task both systems run: record when the handler started, optionally
// hold the slot for a while (failover), and return the timestamps as the
// task's result, which each system persists (etcd result key / BullMQ
// returnvalue) and hands back to the driver.
import { tell } from './children.ts';
import { now, sleep } from './clock.ts';

export interface TaskInput {
  id: string;
  /** When the driver handed the task to the system (driver clock = machine clock). */
  sentAt: number;
}

export interface TaskOutput extends TaskInput {
  /** When the handler / processor was invoked. */
  startedAt: number;
  /** The agent or worker that ran it. */
  worker: string;
}

export interface HandlerOptions {
  /** Keep the slot this long (0: a no-op task). */
  holdMs: number;
  /** Print a "start" line for every invocation (failover: the driver learns who holds what). */
  reportStarts: boolean;
}

export function isTaskInput(v: unknown): v is TaskInput {
  const t = v as TaskInput;
  return typeof t === 'object' && t !== null && typeof t.id === 'string' && typeof t.sentAt === 'number';
}

export function isTaskOutput(v: unknown): v is TaskOutput {
  const t = v as TaskOutput;
  return isTaskInput(v) && typeof t.startedAt === 'number' && typeof t.worker === 'string';
}

/** The handler body; synchronous for a no-op task so neither system pays an extra await. */
export function runTask(
  input: unknown,
  worker: string,
  attempt: number,
  opts: HandlerOptions,
  signal?: AbortSignal,
): TaskOutput | Promise<TaskOutput> {
  const startedAt = now();
  if (!isTaskInput(input)) throw new Error(`task input is not {id, sentAt}: ${JSON.stringify(input)}`);
  if (opts.reportStarts) tell({ type: 'start', id: input.id, at: startedAt, attempt });
  const out: TaskOutput = { id: input.id, sentAt: input.sentAt, startedAt, worker };
  return opts.holdMs > 0 ? sleep(opts.holdMs, signal).then(() => out) : out;
}

/**
 * The list a fan-out runs over (the workflow scenario's first task, as a planner's output would be):
 * the bench task's result plus `items`, 0..count-1.
 */
export function runItems(input: unknown, worker: string): TaskOutput & { items: number[] } {
  const out = runTask(input, worker, 1, { holdMs: 0, reportStarts: false }) as TaskOutput;
  const count = (input as { count?: unknown }).count;
  if (!Number.isInteger(count) || (count as number) < 0) throw new Error(`items: input.count must be an integer >= 0`);
  return { ...out, items: Array.from({ length: count as number }, (_, i) => i) };
}
