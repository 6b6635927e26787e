import type { Span, SpanStatusCode } from '@opentelemetry/api';
import type { ApprovalAsk, ApprovalVerdict } from '../api/approvals.ts';
import type { Assign__Output } from '../gen/agentflow/v1/Assign.ts';
import { parseTraceparent, SPAN_STATUS_ERROR, startSpan } from '../lib/trace-context.ts';
import { toUsd, UsageTally } from '../lib/usage.ts';
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
  /** What the handler reported with ctx.usage, summed per model; it goes out with the Result. */
  readonly usage = new UsageTally();
  /** Decisions on the task's earlier ctx.waitForApproval calls (Assign.approvals), by ordinal. */
  readonly approvals: ReadonlyMap<number, ApprovalVerdict>;
  /** The wait that ended this attempt (ctx.waitForApproval with no decision yet). */
  private parked: ApprovalAsk | undefined;
  /** The handler's span (ctx.span), a child of the attempt's span (Assign.traceparent). */
  readonly span: Span;

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
    this.approvals = new Map(
      (a.approvals ?? []).map((d) => [
        d.ordinal,
        {
          ordinal: d.ordinal,
          approved: d.approved,
          ...(d.user && { user: d.user }),
          ...(d.message && { message: d.message }),
          decidedAt: new Date(Number(d.decidedAtUnixMs)).toISOString(),
          ...(d.timedOut && { timedOut: true }),
        },
      ]),
    );
    this.currentToken = a.token;
    this.cost = a.cost > 0 ? a.cost : 1;
    this.handler = a.handler;
    this.namespace = a.namespace;
    this.workflow = a.workflow;
    const parent = parseTraceparent(a.traceparent);
    this.span = startSpan(
      `handler ${a.handler}`,
      {
        attributes: {
          'agentflow.namespace': a.namespace,
          'agentflow.workflow': a.workflow,
          'agentflow.task': a.taskId,
          'agentflow.attempt': a.attempt,
          'agentflow.handler': a.handler,
        },
      },
      parent,
    );
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

  /**
   * Ends the attempt to wait for a person (ctx.waitForApproval with no decision yet): the handler's
   * signal aborts, and whatever it does next, the Result says what it waits for.
   */
  park(ask: ApprovalAsk): AttemptAbortedError {
    if (!this.over && !this.signal.aborted) {
      this.parked = ask;
      this.controller.abort(
        new AttemptAbortedError('AWAITING_APPROVAL', `waiting for approval ${ask.ordinal}: the attempt ends here`),
      );
    }
    return this.signal.reason as AttemptAbortedError;
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
    this.endSpan(outcome);
    if (this.claimGone) return undefined;
    // Whatever the handler made of it, an aborted attempt reports why it was aborted (retryable).
    if (this.parked) {
      const p = this.parked;
      return {
        awaitApproval: {
          ordinal: p.ordinal,
          message: p.message,
          timeoutSeconds: p.timeoutSeconds ?? 0,
          onTimeout: p.onTimeout ?? '',
          users: p.approvers?.users ?? [],
          groups: p.approvers?.groups ?? [],
        },
        ...this.wireUsage(),
      };
    }
    if (this.signal.aborted) {
      const r = this.signal.reason as AttemptAbortedError;
      return { error: { code: r.code, message: r.message, retryable: true }, ...this.wireUsage() };
    }
    return outcome && { ...outcome, ...this.wireUsage() };
  }

  private endSpan(outcome: Outcome | undefined): void {
    const error =
      this.signal.aborted && !this.parked
        ? (this.signal.reason as AttemptAbortedError).message
        : outcome && 'error' in outcome
          ? outcome.error.message
          : undefined;
    if (error !== undefined)
      this.span.setStatus({ code: SPAN_STATUS_ERROR as SpanStatusCode, message: error.slice(0, 1024) });
    if (this.parked) this.span.setAttribute('agentflow.awaiting_approval', this.parked.ordinal);
    this.span.end();
  }

  /** The usage for the Result (a failed attempt's too): per model, cost in dollars. */
  private wireUsage(): Pick<Outcome, 'usage'> {
    if (this.usage.size === 0) return {};
    return {
      usage: this.usage.list().map((m) => ({
        model: m.model,
        inputTokens: m.inputTokens,
        outputTokens: m.outputTokens,
        costUsd: toUsd(m.costNanos),
      })),
    };
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
