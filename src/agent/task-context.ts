import type { AgentMessage } from '../gen/agentflow/v1/AgentMessage.ts';
import type { ChildTask } from '../gen/agentflow/v1/ChildTask.ts';
import { MAX_PAYLOAD_BYTES } from '../lib/proto.ts';
import type { Held } from '../state/lock.ts';
import type { Attempt } from './attempt.ts';
import type { AttemptLog } from './attempt-log.ts';
import { describe, isRecord } from './check.ts';
import { MAX_CAPACITY } from './options.ts';
import { ProgressThrottle } from './progress.ts';
import type { WorkflowState } from './remote-state.ts';
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

  return {
    taskId,
    namespace,
    workflow,
    handler: attempt.handler,
    attempt: attempt.attempt,
    input,
    ...(attempt.deadline && { deadline: attempt.deadline }),
    signal: attempt.signal,
    log: output.taskLog(),
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
    onMessage(topic, cb) {
      if (typeof cb !== 'function') throw new TypeError('onMessage: the callback must be a function');
      const off = host.subscribe(workflow, topic, cb);
      attempt.onFinish(off);
      return off;
    },
  };
}
