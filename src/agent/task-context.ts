import { type ApprovalAsk, approvalAskProblem } from '../api/approvals.ts';
import { STREAM_MAX_CHUNK_BYTES } from '../api/data-api.ts';
import type { AgentMessage } from '../gen/agentflow/v1/AgentMessage.ts';
import type { ChildTask } from '../gen/agentflow/v1/ChildTask.ts';
import { MAX_PAYLOAD_BYTES } from '../lib/proto.ts';
import { toNanos, usageProblem } from '../lib/usage.ts';
import type { Held } from '../state/lock.ts';
import type { Attempt } from './attempt.ts';
import type { AttemptLog } from './attempt-log.ts';
import { describe, isRecord } from './check.ts';
import { ApprovalRejectedError } from './errors.ts';
import { MAX_CAPACITY } from './options.ts';
import { ProgressThrottle } from './progress.ts';
import type { WorkflowState } from './remote-state.ts';
import { type Signal, SignalReader } from './signals.ts';
import type { ChildSpec, MailMeta, TaskContext } from './types.ts';

export type MailListener = (payload: unknown, meta: MailMeta) => void;

/** What a task context needs from the agent that runs it. */
export interface TaskHost {
  progress(attempt: Attempt, fraction: number, message: string): void;
  /** Sends once a registered stream exists; rejects if `signal` aborts first or the agent stops. */
  sendRegistered(msg: AgentMessage, signal: AbortSignal): Promise<void>;
  /** Resolves once the dispatcher acks the children as durable (re-sending until it answers). */
  spawn(attempt: Attempt, children: ChildTask[]): Promise<void>;
  state(attempt: Attempt): WorkflowState;
  lock(attempt: Attempt, name: string, opts: { timeoutMs?: number; signal: AbortSignal }): Promise<Held>;
  subscribe(workflow: string, topic: string, cb: MailListener): () => void;
  /** Whether the connected dispatcher takes a parked attempt (protocol >= 5): ctx.waitForApproval needs it. */
  approvalsSupported(): boolean;
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const MAX_PROGRESS_MESSAGE = 1024;
// A progress report repeating the last logged message is logged at most this often (the dispatcher gets them all).
const PROGRESS_LOG_INTERVAL_MS = 1_000;

/** JSON text of a payload the wire can carry, or a TypeError/RangeError naming `field`. */
function payloadJson(field: string, value: unknown): string {
  let json: string | undefined;
  try {
    json = JSON.stringify(value === undefined ? null : value);
  } catch (err) {
    throw new TypeError(`${field}: not JSON-serialisable: ${(err as Error).message}`);
  }
  if (json === undefined) throw new TypeError(`${field}: not JSON-serialisable (got a ${typeof value})`);
  const bytes = Buffer.byteLength(json);
  if (bytes > MAX_PAYLOAD_BYTES)
    throw new RangeError(`${field}: ${bytes} bytes of JSON; the limit is ${MAX_PAYLOAD_BYTES}`);
  return json;
}

function childTask(i: number, c: ChildSpec): ChildTask {
  const f = `spawn: children[${i}]`;
  if (!isRecord(c)) throw new TypeError(`${f}: must be {name, handler, input, cost?}, got ${describe(c)}`);
  if (typeof c.name !== 'string' || !DNS_LABEL.test(c.name)) {
    throw new TypeError(`${f}.name: must be a DNS-1123 label, got ${describe(c.name)}`);
  }
  if (typeof c.handler !== 'string' || c.handler === '') {
    throw new TypeError(`${f}.handler: must be a handler name, got ${describe(c.handler)}`);
  }
  const cost = c.cost ?? 1;
  if (!Number.isInteger(cost) || cost < 1 || cost > MAX_CAPACITY) {
    throw new RangeError(`${f}.cost: must be an integer 1-${MAX_CAPACITY}, got ${describe(c.cost)}`);
  }
  return { name: c.name, handler: c.handler, inputJson: payloadJson(`${f}.input`, c.input), cost };
}

/** Logs the progress reports that go out: each new message, and a repeated one at most once per interval. */
function progressLogger(output: AttemptLog): (fraction: number, message: string) => void {
  let lastMessage: string | undefined;
  let lastAt = Number.NEGATIVE_INFINITY;
  return (fraction, message) => {
    const now = performance.now();
    if (message === lastMessage && now - lastAt < PROGRESS_LOG_INTERVAL_MS) return;
    lastMessage = message;
    lastAt = now;
    output.write('info', 'Task progress', { fraction, message });
  };
}

export function createTaskContext(attempt: Attempt, input: unknown, host: TaskHost, output: AttemptLog): TaskContext {
  const logProgress = progressLogger(output);
  const throttle = new ProgressThrottle((fraction, message) => {
    host.progress(attempt, fraction, message);
    logProgress(fraction, message);
  });
  attempt.onFinish(() => throttle.stop());
  const held = new Set<Held>();
  attempt.onFinish(() => Promise.allSettled([...held].map((h) => h.release())));
  let state: WorkflowState | undefined;
  const { taskId, namespace, workflow } = attempt;
  let approvalWaits = 0;
  const signals = new SignalReader({
    task: taskId.slice(taskId.lastIndexOf('/') + 1),
    attempt: attempt.attempt,
    signal: attempt.signal,
    state: () => {
      state ??= host.state(attempt);
      return state;
    },
  });

  return {
    taskId,
    namespace,
    workflow,
    handler: attempt.handler,
    attempt: attempt.attempt,
    input,
    ...(attempt.deadline && { deadline: attempt.deadline }),
    signal: attempt.signal,
    span: attempt.span,
    log: output.taskLog(),
    stream(chunk) {
      if (typeof chunk !== 'string') throw new TypeError(`stream: chunk must be a string, got ${describe(chunk)}`);
      // Bytes <= 3 per UTF-16 unit: only a long chunk needs the exact count.
      const bytes = chunk.length * 3 > STREAM_MAX_CHUNK_BYTES ? Buffer.byteLength(chunk) : 0;
      if (bytes > STREAM_MAX_CHUNK_BYTES)
        throw new RangeError(`stream: chunk is ${bytes} bytes (UTF-8); the limit is ${STREAM_MAX_CHUNK_BYTES}`);
      output.stream(chunk);
    },
    get state(): WorkflowState {
      state ??= host.state(attempt);
      return state;
    },
    progress(fraction, message = '') {
      if (typeof fraction !== 'number' || Number.isNaN(fraction)) {
        throw new RangeError(
          `progress: fraction must be a number in 0..1 (negative = unknown), got ${describe(fraction)}`,
        );
      }
      throttle.report(Math.min(fraction, 1), String(message).slice(0, MAX_PROGRESS_MESSAGE));
    },
    usage(report) {
      if (!isRecord(report))
        throw new TypeError(`usage: must be {model, inputTokens?, outputTokens?, costUsd?}, got ${describe(report)}`);
      if (attempt.finished) throw new Error(`usage: attempt ${attempt.key} has ended`);
      const problem = usageProblem('usage', report);
      // "usage.inputTokens: ..." reads as "usage: inputTokens: ..." in the SDK's messages.
      if (problem) {
        const message = problem.message.replace(/^usage\./, 'usage: ');
        throw problem.kind === 'type' ? new TypeError(message) : new RangeError(message);
      }
      const added = attempt.usage.add({
        model: report.model as string,
        inputTokens: (report.inputTokens as number | undefined) ?? 0,
        outputTokens: (report.outputTokens as number | undefined) ?? 0,
        costNanos: toNanos((report.costUsd as number | undefined) ?? 0),
      });
      if (!added.ok) throw new RangeError(`usage: ${added.message}`);
    },
    async lock(name, opts = {}) {
      if (typeof name !== 'string' || name === '')
        throw new TypeError(`lock: name must be a non-empty string, got ${describe(name)}`);
      if (attempt.finished) throw new Error(`lock: attempt ${attempt.key} has ended`);
      const h = await host.lock(attempt, name, {
        signal: attempt.signal,
        ...(opts.timeoutMs !== undefined && { timeoutMs: opts.timeoutMs }),
      });
      const tracked: Held = {
        ...h,
        release: async () => {
          held.delete(tracked);
          await h.release();
        },
      };
      held.add(tracked);
      return tracked;
    },
    async spawn(children) {
      if (!Array.isArray(children) || children.length === 0) {
        throw new TypeError(`spawn: children must be a non-empty array, got ${describe(children)}`);
      }
      const wire = children.map((c, i) => childTask(i, c));
      const first = new Map<string, number>();
      wire.forEach((c, i) => {
        const j = first.get(c.name as string);
        if (j !== undefined) throw new TypeError(`spawn: children[${i}].name: "${c.name}" repeats children[${j}]`);
        first.set(c.name as string, i);
      });
      await host.spawn(attempt, wire);
    },
    async send(toAgent, topic, payload) {
      if (typeof toAgent !== 'string' || toAgent === '')
        throw new TypeError(`send: toAgent must be an agent id, got ${describe(toAgent)}`);
      if (typeof topic !== 'string' || topic === '')
        throw new TypeError(`send: topic must be a non-empty string, got ${describe(topic)}`);
      const payloadJsonText = payloadJson('send: payload', payload);
      await host.sendRegistered({ mail: { workflow, toAgent, topic, payloadJson: payloadJsonText } }, attempt.signal);
    },
    waitForApproval(opts = {}) {
      if (!isRecord(opts)) throw new TypeError(`waitForApproval: options must be an object, got ${describe(opts)}`);
      const ordinal = approvalWaits++;
      const ask: ApprovalAsk = {
        ordinal,
        message: opts.message === undefined ? '' : String(opts.message),
        ...(opts.timeoutSeconds !== undefined && { timeoutSeconds: opts.timeoutSeconds }),
        ...(opts.onTimeout !== undefined && { onTimeout: opts.onTimeout }),
        ...(opts.approvers !== undefined && { approvers: opts.approvers }),
      };
      const problem = approvalAskProblem('waitForApproval', ask);
      if (problem) return Promise.reject(new RangeError(problem));
      const known = attempt.approvals.get(ordinal);
      if (known) {
        if (known.approved) return Promise.resolve(known);
        const who = known.timedOut ? 'on timeout' : `by ${known.user ?? 'someone'}`;
        return Promise.reject(
          new ApprovalRejectedError(
            `rejected ${who}${known.message ? `: ${known.message}` : ''}`,
            known.user,
            known.timedOut === true,
          ),
        );
      }
      if (!host.approvalsSupported()) {
        return Promise.reject(
          new Error('waitForApproval: the dispatcher is older than protocol 5 and cannot hold a task for approval'),
        );
      }
      // No decision yet: the attempt ends here (its slot is free); the task runs again once decided.
      return Promise.reject(attempt.park(ask));
    },
    waitForSignal(name, opts) {
      return signals.wait(name, opts) as never;
    },
    onSignal(name, cb) {
      return signals.on(name, cb as (s: Signal) => unknown, (err) =>
        output.write('warn', 'onSignal: a signal could not be taken or its callback threw', {
          signal: name,
          error: err.message,
        }),
      );
    },
    onMessage(topic, cb) {
      if (typeof cb !== 'function') throw new TypeError('onMessage: the callback must be a function');
      const off = host.subscribe(workflow, topic, cb);
      attempt.onFinish(off);
      return off;
    },
  };
}
