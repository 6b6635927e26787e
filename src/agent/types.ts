import type { Span } from '@opentelemetry/api';
import type { ApprovalVerdict } from '../api/approvals.ts';
import type { Held } from '../state/lock.ts';
import type { TaskLog } from './attempt-log.ts';
import type { WorkflowState } from './remote-state.ts';
import type { Signal } from './signals.ts';

/** A child task for the workflow engine, spawned by a running attempt. */
export interface ChildSpec {
  /** DNS-1123 label, unique among the parent's children. */
  name: string;
  handler: string;
  input: unknown;
  /** Slots the child occupies on its agent (default 1). */
  cost?: number;
}

/** Model usage one call (or batch of calls) of a handler incurred, for ctx.usage. */
export interface UsageReport {
  /** The model, 1-128 characters (e.g. "gpt-4o-mini"). */
  model: string;
  /** Non-negative safe integers; default 0. */
  inputTokens?: number;
  outputTokens?: number;
  /** US dollars, finite and >= 0; default 0. */
  costUsd?: number;
}

export interface MailMeta {
  fromAgent: string;
  workflow: string;
  topic: string;
}

/** Everything a handler gets for one attempt of one task. */
export interface TaskContext {
  /** The task's wire id: "workflow/task", or "namespace/workflow/task" for a task of another namespace (on a pool it shares itself with). */
  readonly taskId: string;
  readonly namespace: string;
  readonly workflow: string;
  readonly handler: string;
  /** 1 for the first attempt; retries count up. */
  readonly attempt: number;
  /** The task input as parsed JSON; untrusted, so validate it. */
  readonly input: unknown;
  readonly deadline?: Date;
  /**
   * Aborted when the dispatcher cancels the attempt, at the deadline, when a
   * drain runs out of time, and when a reconnect finds the attempt given to
   * someone else. `signal.reason` is an AttemptAbortedError saying which.
   */
  readonly signal: AbortSignal;
  /**
   * The attempt's OpenTelemetry span (`handler <name>`), a child of the attempt's span in the
   * workflow run's trace: add events and attributes to it, or start child spans with
   * `trace.setSpan(context.active(), ctx.span)`. It records only when the agent exports traces
   * (OTEL_EXPORTER_OTLP_ENDPOINT set); otherwise it is a no-op that still carries the trace context,
   * which `http` handlers send as the traceparent header and `exec` handlers get as TRACEPARENT.
   */
  readonly span: Span;
  /**
   * The attempt's logger: `ctx.log('Fetched', { bytes })` logs an info line,
   * `ctx.log.warn(...)` and the other levels too. Its lines, like console
   * output while the handler runs, carry the workflow, namespace, task,
   * attempt, handler and agent id, and are bounded (see TaskLog).
   */
  readonly log: TaskLog;
  /**
   * Streams a piece of output (e.g. model tokens) to whoever follows the task:
   * `agentflow logs --stream NAME TASK -f`, the web UI's task pane and the data
   * API (`log?stream=true`) show it exactly as streamed, within about 100 ms,
   * kept apart from the log lines (the last 1 MiB per attempt). The handler's
   * return value stays the task's output. At most STREAM_MAX_CHUNK_BYTES
   * (64 KiB) per call (RangeError past it); once the attempt is over, dropped.
   */
  stream(chunk: string): void;
  /**
   * Shared state of the task's workflow, kept in etcd by the dispatcher
   * (optimistic concurrency via cas on modRevision). A StateUnavailableError
   * means the outcome of a write is unknown: read before writing again.
   */
  readonly state: WorkflowState;
  /**
   * Reports progress: fraction in 0..1 (negative = unknown). Best effort and
   * throttled to about ten messages a second; the latest value always goes out.
   */
  progress(fraction: number, message?: string): void;
  /**
   * Records model usage: summed per model for the attempt (at most 64 models) and sent with its
   * Result, failed or not; the workflow's status.usage, the Prometheus counters and spec.budget
   * count it once the result is committed. Usage of an attempt that ends without a result (its
   * agent died, or it was cancelled or superseded) is not counted. Throws a TypeError or
   * RangeError naming the field (`usage: inputTokens: ...`) for a malformed report, and an Error
   * once the attempt has ended.
   */
  usage(report: UsageReport): void;
  /**
   * A lock scoped to the task's workflow, held with the agent's lease. Pass
   * `held.fence` to fenced writes. Released when the attempt ends at the latest.
   */
  lock(name: string, opts?: { timeoutMs?: number }): Promise<Held>;
  /**
   * Asks the workflow engine for child tasks (named `<task>~<name>` in the run).
   * Resolves only once the dispatcher acknowledges that the children are
   * durable in etcd; until then the request is re-sent after every reconnect,
   * also to a new leader, and a copy never adds a child twice. Await it before
   * returning: the children then survive any crash, and the task succeeds only
   * when they all have. Rejects with SpawnRefusedError when refused (nothing
   * was added: the attempt is no longer current, a child is invalid, a limit
   * would be exceeded, or a name is taken by a different child), with the
   * attempt's abort reason (an AttemptAbortedError) when the attempt is
   * cancelled or times out first, and with an Error if the handler returned
   * before it settled.
   */
  spawn(children: ChildSpec[]): Promise<void>;
  /** Mails another agent working on the same workflow. */
  send(toAgent: string, topic: string, payload: unknown): Promise<void>;
  /** Receives mail on `topic` for this workflow until the attempt ends; returns an unsubscribe function. */
  onMessage(topic: string, cb: (payload: unknown, meta: MailMeta) => void): () => void;
  /**
   * The next signal `name` sent to the workflow (`agentflow signal WORKFLOW NAME --data JSON`) for this
   * task: one sent before the wait is there when it comes, each signal is taken by one task only,
   * and a retry of this task that waits again in the same order gets the same signals back first.
   * Rejects with SignalTimeoutError after `timeoutMs`, and with the attempt's abort reason when it ends.
   */
  waitForSignal<T = unknown>(name: string, opts?: { timeoutMs?: number }): Promise<Signal<T>>;
  /**
   * Asks a person (`agentflow approve|reject WORKFLOW TASK`, or the UI) and holds no slot while
   * waiting: with no decision yet the attempt ends here, its signal aborting (do not swallow the
   * rejection), and the task runs again from the start once decided; then this call, the same in
   * the order of the handler's waits, resolves with the decision at once. So code before it runs
   * again: keep it idempotent (ctx.state helps). Rejects with ApprovalRejectedError (not retryable)
   * on a reject, or a timeout with onTimeout Reject (the default).
   */
  waitForApproval(opts?: {
    message?: string;
    timeoutSeconds?: number;
    onTimeout?: 'Reject' | 'Approve';
    approvers?: { users?: string[]; groups?: string[] };
  }): Promise<ApprovalVerdict>;
  /** Calls `cb` with each signal `name` this task takes until the attempt ends; returns a function that stops it. */
  onSignal<T = unknown>(name: string, cb: (signal: Signal<T>) => unknown): () => void;
}

/**
 * Runs one attempt. What it writes with console.log/info/debug/warn/error while
 * it runs (awaited code included) is logged as the agent's lines with the
 * task's fields, within MAX_LOG_LINE_BYTES per line and
 * MAX_LOG_BYTES_PER_ATTEMPT per attempt. The returned value (JSON-serialisable, at most 4 MiB of
 * JSON; `undefined` counts as null) is the task's output. Throwing
 * UnrecoverableError fails the task for good; any other throw is retried.
 */
export type Handler = (ctx: TaskContext) => unknown;

/**
 * Runs a command: the input as JSON on stdin, the output as JSON on stdout.
 * Every line the command writes to stderr is logged (stream: "stderr") with
 * the task's fields, whether it succeeds or fails, within the same bounds as
 * a handler's console output.
 *
 * The command gets a minimal environment, never the agent's own (its token,
 * its AGENTFLOW_* settings, KUBECONFIG...): PATH (the agent's, or a standard
 * default), HOME (a fresh private directory per attempt, removed when the
 * attempt ends), LANG and TZ when the agent has them, the task's identity
 * (AGENTFLOW_TASK_ID, AGENTFLOW_WORKFLOW, AGENTFLOW_NAMESPACE,
 * AGENTFLOW_ATTEMPT), then `inheritEnv` and `env`.
 */
export interface ExecHandlerSpec {
  kind: 'exec';
  command: string[];
  /** Variables set for the command; they may replace PATH or HOME, not the task identity. */
  env?: Record<string, string>;
  /**
   * Names of the agent's own variables to pass through as they are (those it
   * does not have are left out). Opt-in, so nothing reaches the command by
   * accident; a name may not also be in `env` or be a task identity variable.
   */
  inheritEnv?: string[];
  /** Working directory (default: the agent's). */
  cwd?: string;
}

/**
 * POSTs {taskId, workflow, namespace, attempt, input} and takes the JSON
 * response as output. Redirects are not followed (a 3xx fails the task), and
 * a response over the output limit (4 MiB) fails it too.
 */
export interface HttpHandlerSpec {
  kind: 'http';
  /** An http:// or https:// URL without credentials (put those in `headers`). */
  url: string;
  headers?: Record<string, string>;
  /** For the whole exchange, the response body included (default 30). */
  timeoutSeconds?: number;
}

export type HandlerSpec = ExecHandlerSpec | HttpHandlerSpec;
