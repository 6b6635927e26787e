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

export type AbortCode = 'CANCELLED' | 'DEADLINE_EXCEEDED' | 'DRAIN_TIMEOUT' | 'NOT_YOURS';
