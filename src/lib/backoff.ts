/**
 * Exponential back-off with full jitter, for reconnecting streams, restarting
 * watches and retrying reconciles. Full jitter (a uniform draw in
 * [0, min(cap, base * factor^n)]) spreads out many clients that failed at
 * the same moment, such as every agent of a pool when the dispatcher restarts.
 */
export interface BackoffOptions {
  /** First delay's upper bound, in milliseconds. */
  initialMs: number;
  /** Upper bound of any delay, in milliseconds. */
  maxMs: number;
  /** Growth per attempt (default 2). */
  factor?: number;
  /** 0 = no jitter (deterministic), 1 = full jitter (default). */
  jitter?: number;
  /** Random source in [0, 1); injectable for tests. */
  random?: () => number;
}

export class Backoff {
  private attempt = 0;
  private readonly opts: Required<BackoffOptions>;

  constructor(opts: BackoffOptions) {
    if (!(opts.initialMs > 0)) throw new RangeError(`initialMs must be > 0, got ${opts.initialMs}`);
    if (!(opts.maxMs >= opts.initialMs)) {
      throw new RangeError(`maxMs (${opts.maxMs}) must be >= initialMs (${opts.initialMs})`);
    }
    const factor = opts.factor ?? 2;
    if (!(factor >= 1)) throw new RangeError(`factor must be >= 1, got ${factor}`);
    const jitter = opts.jitter ?? 1;
    if (!(jitter >= 0 && jitter <= 1)) throw new RangeError(`jitter must be within [0, 1], got ${jitter}`);
    this.opts = { initialMs: opts.initialMs, maxMs: opts.maxMs, factor, jitter, random: opts.random ?? Math.random };
  }

  /** How many delays have been handed out since the last reset. */
  get attempts(): number {
    return this.attempt;
  }

  /** The next delay in milliseconds; each call grows the ceiling. */
  next(): number {
    const { initialMs, maxMs, factor, jitter, random } = this.opts;
    const ceiling = Math.min(maxMs, initialMs * factor ** this.attempt);
    this.attempt++;
    return Math.round(ceiling * (1 - jitter * random()));
  }

  /** Call after a success: the next failure starts from the initial delay. */
  reset(): void {
    this.attempt = 0;
  }
}
