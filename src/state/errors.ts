// Errors callers of the state layer must tell apart.

export class StateError extends Error {
  override name = 'StateError';
}

/** A compare-and-swap lost: the key changed since it was read. Retry with a fresh read. */
export class ConflictError extends StateError {
  override name = 'ConflictError';
  readonly key: string;
  readonly expectedRevision: number;
  readonly actualRevision: number;

  constructor(key: string, expectedRevision: number, actualRevision: number) {
    super(`${key}: modified concurrently (expected modRevision ${expectedRevision}, found ${actualRevision})`);
    this.key = key;
    this.expectedRevision = expectedRevision;
    this.actualRevision = actualRevision;
  }
}

/**
 * A write that depends on holding a claim, lock or leadership was refused
 * because that holder is no longer current (its lease expired, or someone
 * newer took over). Never retry it as is: the work belongs to someone else.
 */
export class FencedError extends StateError {
  override name = 'FencedError';
  readonly key: string;

  constructor(key: string, message: string) {
    super(`${key}: ${message}`);
    this.key = key;
  }
}

/** The session's lease is gone: everything bound to it has been deleted by etcd. */
export class LeaseLostError extends StateError {
  override name = 'LeaseLostError';
}

/** What was found in etcd is not what agentflow writes there (corrupt or foreign data). */
export class StateDecodeError extends StateError {
  override name = 'StateDecodeError';
  readonly key: string;

  constructor(key: string, problem: string) {
    super(`${key}: ${problem}`);
    this.key = key;
  }
}

/**
 * etcd could not be reached, or a read timed out. The call did not change
 * anything (a read, or a write that was never sent), so it is safe to retry.
 */
export class EtcdUnavailableError extends StateError {
  override name = 'EtcdUnavailableError';
  /** `unavailable`: no connection or no leader; `timeout`: a read outlived its deadline. */
  readonly kind: 'unavailable' | 'timeout';

  constructor(kind: 'unavailable' | 'timeout', message: string, options?: ErrorOptions) {
    super(message, options);
    this.kind = kind;
  }
}

/**
 * A write whose outcome is unknown: it was sent, but the answer never came
 * (timeout, connection dropped, etcd leader changed mid-proposal). It may
 * have applied or not. Never retried blindly: the caller resolves it (by
 * reading what it would have written) or reports it as unknown.
 */
export class OutcomeUnknownError extends StateError {
  override name = 'OutcomeUnknownError';
}

/**
 * etcd refused a request as too large (its --max-request-bytes), or a
 * response exceeded the client's receive limit. Nothing was applied; the
 * caller must send less (split the batch, chunk the value, page the read).
 */
export class RequestTooLargeError extends StateError {
  override name = 'RequestTooLargeError';
}
