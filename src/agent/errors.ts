// Errors a handler author or an operator must tell apart.

/**
 * Thrown by a handler to fail the task for good: the dispatcher records the
 * failure and does not retry it. Any other throw is retryable.
 */
export class UnrecoverableError extends Error {
  override name = 'UnrecoverableError';
  /** Machine-readable reason, sent as TaskError.code. */
  readonly code: string;

  constructor(message: string, opts: { code?: string; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.code = opts.code ?? 'UNRECOVERABLE';
  }
}

/** A retryable failure with a code, for handlers (and the built-in ones) that want to say why. */
export class RetryableError extends Error {
  override name = 'RetryableError';
  readonly code: string;

  constructor(message: string, opts: { code: string; cause?: unknown }) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.code = opts.code;
  }
}

/** Agent options or configuration that cannot work; `field` names the culprit. */
export class AgentConfigError extends Error {
  override name = 'AgentConfigError';
  readonly field: string;
  readonly problem: string;

  constructor(field: string, problem: string) {
    super(`${field}: ${problem}`);
    this.field = field;
    this.problem = problem;
  }
}

/**
 * Why an attempt's signal was aborted. The code is what the Result reports;
 * `report: false` means the attempt's claim is gone, so no Result is sent.
 */
export class AttemptAbortedError extends Error {
  override name = 'AttemptAbortedError';
  readonly code: AbortCode;
  readonly report: boolean;

  constructor(code: AbortCode, message: string) {
    super(message);
    this.code = code;
    this.report = code !== 'NOT_YOURS';
  }
}

export type AbortCode = 'CANCELLED' | 'DEADLINE_EXCEEDED' | 'DRAIN_TIMEOUT' | 'NOT_YOURS' | 'AWAITING_APPROVAL';

/**
 * A person rejected the handler's ctx.waitForApproval (or its timeout did, with onTimeout Reject).
 * Not retryable: left uncaught, it fails the task with the reviewer's words.
 */
export class ApprovalRejectedError extends Error {
  override name = 'ApprovalRejectedError';
  readonly retryable = false;
  readonly code = 'APPROVAL_REJECTED';
  readonly user: string | undefined;
  readonly timedOut: boolean;
  constructor(message: string, user: string | undefined, timedOut: boolean) {
    super(message);
    this.user = user;
    this.timedOut = timedOut;
  }
}

/**
 * Why the dispatcher refused a spawn (SpawnAck.error_code):
 * - UNKNOWN_TASK, STALE_ATTEMPT, WRONG_POOL: the parent attempt's claim is not current, or its task no
 *   longer runs, so nothing can be spawned for it;
 * - INVALID, PAYLOAD_TOO_LARGE: a child is malformed or its input too big (INVALID also stands for a
 *   code this SDK does not know; the message names it);
 * - LIMIT_EXCEEDED: over the operator's --max-spawned-children, or a child costs more slots than an
 *   agent of the pool has; the engine fails the task;
 * - CONFLICT: a child name is already taken by a different child of this task.
 */
export type SpawnRefusalCode =
  | 'UNKNOWN_TASK'
  | 'STALE_ATTEMPT'
  | 'WRONG_POOL'
  | 'INVALID'
  | 'PAYLOAD_TOO_LARGE'
  | 'LIMIT_EXCEEDED'
  | 'CONFLICT';

const SPAWN_REFUSAL_CODES: ReadonlySet<string> = new Set<SpawnRefusalCode>([
  'UNKNOWN_TASK',
  'STALE_ATTEMPT',
  'WRONG_POOL',
  'INVALID',
  'PAYLOAD_TOO_LARGE',
  'LIMIT_EXCEEDED',
  'CONFLICT',
]);

/**
 * ctx.spawn was refused by the dispatcher or the workflow engine: none of the
 * children were added. A handler that lets it propagate fails its attempt as
 * any other error does (retryable).
 */
export class SpawnRefusedError extends Error {
  override name = 'SpawnRefusedError';
  readonly code: SpawnRefusalCode;
  /** The parent task's wire id ("workflow/task") and attempt. */
  readonly taskId: string;
  readonly attempt: number;

  constructor(wireCode: string, message: string, taskId: string, attempt: number) {
    super(`spawn refused (${wireCode}): ${message}`);
    this.code = SPAWN_REFUSAL_CODES.has(wireCode) ? (wireCode as SpawnRefusalCode) : 'INVALID';
    this.taskId = taskId;
    this.attempt = attempt;
  }
}
