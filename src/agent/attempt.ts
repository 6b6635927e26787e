import type { Assign__Output } from '../gen/agentflow/v1/Assign.ts';
import type { AttemptLog } from './attempt-log.ts';
import { type AbortCode, AttemptAbortedError } from './errors.ts';
import { errorOutcome, type Outcome, outputOutcome } from './outcome.ts';
import type { Handler, TaskContext } from './types.ts';

// setTimeout's ceiling (about 24.8 days); a later deadline is re-armed in steps.
const MAX_TIMER_MS = 2 ** 31 - 1;

export const attemptKey = (taskId: string, attempt: number): string => `${taskId}@${attempt}`;

/**
 * One attempt of one task on this agent: its abort signal, its deadline, and
 * the cleanups (locks, mail subscriptions) that end with it.
 */
export class Attempt {
  readonly taskId: string;
  readonly attempt: number;
  /**
   * The claim's fencing token. It changes only when a new leader claims the
   * same attempt again for this agent (the old claim was lost with a lease):
   * see {@link reclaim}.
   */
  private currentToken: number;
  readonly cost: number;
  readonly handler: string;
  readonly namespace: string;
  readonly workflow: string;
  readonly deadline: Date | undefined;
  readonly startedAt = performance.now();
  private readonly controller = new AbortController();
  private readonly cleanups: (() => unknown)[] = [];
  private deadlineTimer: NodeJS.Timeout | undefined;
  private over = false;
  private claimGone = false;

  get token(): number {
    return this.currentToken;
  }

  /** The same attempt claimed again for this agent under a newer token: it carries on under that one. */
  reclaim(token: number): void {
    if (token > this.currentToken) this.currentToken = token;
  }

  constructor(a: Assign__Output) {
    this.taskId = a.taskId;
    this.attempt = a.attempt;
    this.currentToken = a.token;
    this.cost = a.cost > 0 ? a.cost : 1;
    this.handler = a.handler;
    this.namespace = a.namespace;
    this.workflow = a.workflow;
    if (a.deadlineUnixMs > 0) {
      this.deadline = new Date(a.deadlineUnixMs);
      this.armDeadline();
    }
  }

  get key(): string {
    return attemptKey(this.taskId, this.attempt);
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** The handler has settled and the cleanups ran. */
  get finished(): boolean {
    return this.over;
  }

  /** The claim is gone (lease lost, or the dispatcher says it is not ours): no Result, not in flight. */
  get disowned(): boolean {
    return this.claimGone;
  }

  abort(code: AbortCode, message: string): void {
    if (this.over) return;
    const reason = new AttemptAbortedError(code, message);
    if (!reason.report) this.claimGone = true;
    if (!this.signal.aborted) this.controller.abort(reason);
  }

  /** Runs `fn` when the attempt ends (before its Result goes out). */
  onFinish(fn: () => unknown): void {
    this.cleanups.push(fn);
  }

  /**
   * Runs the handler (its console output going to `output`, when given);
   * resolves with the Result outcome, or undefined when none may be sent.
   */
  async run(handler: Handler, ctx: TaskContext, output?: AttemptLog): Promise<Outcome | undefined> {
    let outcome: Outcome | undefined;
    if (!this.signal.aborted) {
      try {
        outcome = outputOutcome(await (output ? output.capture(() => handler(ctx)) : handler(ctx)));
      } catch (err) {
        outcome = errorOutcome(err);
      }
    }
    output?.end();
    this.over = true;
    if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
    await Promise.allSettled(this.cleanups.map(async (fn) => fn()));
    if (this.claimGone) return undefined;
    // Whatever the handler made of it, an aborted attempt reports why it was aborted (retryable).
    if (this.signal.aborted) {
      const r = this.signal.reason as AttemptAbortedError;
      return { error: { code: r.code, message: r.message, retryable: true } };
    }
    return outcome;
  }

  private armDeadline(): void {
    const at = this.deadline?.getTime() ?? 0;
    const wait = at - Date.now();
    if (wait <= 0) {
      this.abort('DEADLINE_EXCEEDED', `the task's deadline ${this.deadline?.toISOString()} passed`);
      return;
    }
    this.deadlineTimer = setTimeout(() => this.armDeadline(), Math.min(wait, MAX_TIMER_MS));
  }
}
