// agentflow/agent: the SDK agent pods run (see also main.ts, the agentflow-agent command).
import { IdleMemoryRelease } from '../lib/idle-memory.ts';
import { Agent } from './agent.ts';
import type { AgentOptions } from './options.ts';

export type { ApprovalVerdict } from '../api/approvals.ts';
export { IDLE_RELEASE_AFTER_MS, IDLE_RELEASE_MAX_HEAP_BYTES } from '../lib/idle-memory.ts';
export { ConflictError, FencedError } from '../state/errors.ts';
export { Agent, type AgentEvents, type AgentState, RUNTIME_VERSION, type TaskSummary } from './agent.ts';
export {
  LINE_TRUNCATED_MARKER,
  MAX_LOG_BYTES_PER_ATTEMPT,
  MAX_LOG_LINE_BYTES,
  type TaskLog,
} from './attempt-log.ts';
export { execHandler } from './builtin/exec.ts';
export { httpHandler } from './builtin/http.ts';
export {
  AgentConfigError,
  ApprovalRejectedError,
  AttemptAbortedError,
  RetryableError,
  type SpawnRefusalCode,
  SpawnRefusedError,
  UnrecoverableError,
} from './errors.ts';
export { type AgentOptions, DEFAULT_CA_FILE, DEFAULT_TOKEN_FILE } from './options.ts';
export {
  LockTimeoutError,
  StateOutcomeUnknownError,
  StatePermissionError,
  StateUnavailableError,
  type WorkflowState,
} from './remote-state.ts';
export { type Signal, SignalTimeoutError } from './signals.ts';
export type {
  ChildSpec,
  ExecHandlerSpec,
  Handler,
  HandlerSpec,
  HttpHandlerSpec,
  MailMeta,
  TaskContext,
} from './types.ts';

/**
 * Creates an agent; options are checked here (an AgentConfigError names the
 * bad field). Nothing connects until `start()`.
 *
 * @example
 * ```ts
 * import { createAgent, UnrecoverableError } from 'agentflow/agent';
 *
 * const agent = createAgent({
 *   dispatcher: 'agentflow-dispatcher.agentflow-system:7070', // TLS; CA from DEFAULT_CA_FILE
 *   // token: DEFAULT_TOKEN_FILE, the pod's projected ServiceAccount token (audience agentflow);
 *   // namespace and pool come from the pod it is bound to.
 *   capacity: 4,
 *   installSignalHandlers: true, // SIGTERM drains, then the agent stops
 *   handlers: {
 *     async summarise(ctx) {
 *       const { url } = ctx.input as { url?: string };
 *       if (typeof url !== 'string') throw new UnrecoverableError('input.url is required');
 *       ctx.progress(0.1, 'fetching');
 *       const page = await fetch(url, { signal: ctx.signal }); // aborted on cancel, deadline, drain timeout
 *       const text = await page.text();
 *       const lock = await ctx.lock('summary-budget');
 *       try {
 *         const spent = await ctx.state.get<number>('tokens');
 *         await ctx.state.put('tokens', (spent?.value ?? 0) + text.length, { fences: [lock.fence] });
 *       } finally {
 *         await lock.release();
 *       }
 *       return { words: text.split(/\s+/).length }; // the task output (JSON, <= 4 MiB)
 *     },
 *     // Built-ins: a command (input on stdin, output on stdout) or an HTTP endpoint.
 *     render: { kind: 'exec', command: ['python3', 'render.py'] },
 *     classify: { kind: 'http', url: 'http://classifier:8080/run', timeoutSeconds: 30 },
 *   },
 * });
 * agent.on('taskFinished', (t) => console.log(t.taskId, t.error?.message ?? 'ok'));
 * await agent.start();
 * await agent.untilStopped();
 * ```
 */
export function createAgent(opts: AgentOptions): Agent {
  const agent = new Agent(opts);
  if (opts.releaseMemoryWhenIdle !== false) releaseMemoryWhenIdle(agent);
  return agent;
}

// One per process, fed by every agent in it: a host of 1,000 agents (the bench's scale scenario) pays one GC per
// quiet spell, not one per agent.
let processRelease: IdleMemoryRelease | undefined;

/**
 * Task starts and ends are the agent's work, and connecting is start-up's (loading modules, the proto, TLS): a
 * quiet spell after either gives back the heap they grew.
 */
function releaseMemoryWhenIdle(agent: Agent): void {
  processRelease ??= new IdleMemoryRelease();
  agent.on('connected', processRelease.activity);
  agent.on('taskStarted', processRelease.activity);
  agent.on('taskFinished', processRelease.activity);
}
