// An agent started against a FakeDispatcher, and small helpers the agent
// runtime tests share. Each test file runs `cleanups` in its afterEach.
import { once } from 'node:events';
import {
  type Agent,
  type AgentOptions,
  type AttemptAbortedError,
  createAgent,
  type Handler,
  type TaskContext,
} from '../../../src/agent/index.ts';
import type { Assign } from '../../../src/gen/agentflow/v1/Assign.ts';
import { silentLogger } from '../../../src/lib/log.ts';
import { type AcceptOptions, FakeDispatcher, type FakeStream } from './fake-dispatcher.ts';

export interface Gate<T = unknown> {
  promise: Promise<T>;
  open: (v: T) => void;
}

export function gate<T = unknown>(): Gate<T> {
  let open: (v: T) => void = () => undefined;
  const promise = new Promise<T>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

/** Resolves with the abort reason once the attempt's signal fires. */
export const aborted = (ctx: TaskContext) =>
  new Promise<AttemptAbortedError>((resolve) => {
    ctx.signal.addEventListener('abort', () => resolve(ctx.signal.reason as AttemptAbortedError), { once: true });
  });

let seq = 0;
export function assign(handler: string, input: unknown = {}, extra: Partial<Assign> = {}): Assign {
  seq++;
  return {
    taskId: `wf/task-${seq}`,
    namespace: 'team-a',
    workflow: 'wf',
    attempt: 1,
    handler,
    inputJson: JSON.stringify(input),
    token: 500 + seq,
    cost: 1,
    ...extra,
  };
}

export const cleanups: (() => Promise<void> | void)[] = [];

export async function runCleanups(): Promise<void> {
  for (const c of cleanups.splice(0).reverse()) await c();
}

export interface Rig {
  agent: Agent;
  fake: FakeDispatcher;
  stream: FakeStream;
}

/** The options every test agent gets: plaintext to the fake, a fixed token, a pod agent's identity. */
export function agentOptions(fake: FakeDispatcher, handlers: Record<string, Handler>): AgentOptions {
  return {
    dispatcher: fake.address,
    insecurePlaintext: true,
    token: () => 'test-token',
    capacity: 3,
    agentId: 'pod-1-abc123',
    pod: 'pod-1',
    handlers,
    reconnect: { initialMs: 5, maxMs: 20 },
    logger: silentLogger,
  };
}

/** An agent started against a fresh fake dispatcher, not yet connected. */
export async function startAgent(
  handlers: Record<string, Handler>,
  extra: Partial<AgentOptions> = {},
): Promise<{ agent: Agent; fake: FakeDispatcher }> {
  const fake = await FakeDispatcher.start();
  cleanups.push(() => fake.close());
  const agent = createAgent({ ...agentOptions(fake, handlers), ...extra });
  cleanups.push(() => agent.stop());
  await agent.start();
  return { agent, fake };
}

/** An agent started against a fake dispatcher, with its first stream registered. */
export async function rig(handlers: Record<string, Handler>, extra: Partial<AgentOptions> = {}): Promise<Rig> {
  const { agent, fake } = await startAgent(handlers, extra);
  const stream = await register(fake, agent);
  return { agent, fake, stream };
}

/** Takes the agent's next stream, answers its Register and waits until the agent says it is connected. */
export async function register(fake: FakeDispatcher, agent: Agent, opts: AcceptOptions = {}): Promise<FakeStream> {
  const stream = await fake.nextStream();
  const connected = once(agent, 'connected');
  await stream.accept(opts);
  await connected;
  return stream;
}

/**
 * A round trip through the agent: an Assign for a handler it lacks is
 * answered at once, so once that answer is here, everything the agent wrote
 * before it is here too.
 */
export async function roundTrip(stream: FakeStream): Promise<void> {
  const probe = assign('no-such-handler');
  stream.send({ assign: probe });
  await stream.result(probe.taskId as string);
  stream.send({ ack: { taskId: probe.taskId, attempt: 1, status: 'COMMITTED' } });
}

/** Waits until `cond` holds, checking every few milliseconds (for state the agent exposes only by polling). */
export async function until(cond: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
