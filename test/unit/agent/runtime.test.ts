import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import {
  type Agent,
  type AgentOptions,
  AttemptAbortedError,
  createAgent,
  type Handler,
  type TaskContext,
  UnrecoverableError,
} from '../../../src/agent/index.ts';
import type { Assign } from '../../../src/gen/agentflow/v1/Assign.ts';
import { silentLogger } from '../../../src/lib/log.ts';
import { FakeCoordination, FakeDispatcher, type FakeStream } from './fake-dispatcher.ts';

interface Gate<T = unknown> {
  promise: Promise<T>;
  open: (v: T) => void;
}

function gate<T = unknown>(): Gate<T> {
  let open: (v: T) => void = () => undefined;
  const promise = new Promise<T>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

/** Resolves with the abort reason once the attempt's signal fires. */
const aborted = (ctx: TaskContext) =>
  new Promise<AttemptAbortedError>((resolve) => {
    ctx.signal.addEventListener('abort', () => resolve(ctx.signal.reason as AttemptAbortedError), { once: true });
  });

let seq = 0;
function assign(handler: string, input: unknown = {}, extra: Partial<Assign> = {}): Assign {
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

interface Rig {
  agent: Agent;
  fake: FakeDispatcher;
  coordination: FakeCoordination;
  stream: FakeStream;
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** An agent started against a fake dispatcher, with its first stream registered. */
async function rig(handlers: Record<string, Handler>, extra: Partial<AgentOptions> = {}): Promise<Rig> {
  const fake = await FakeDispatcher.start();
  cleanups.push(() => fake.close());
  const coordination = new FakeCoordination();
  const agent = createAgent({
    dispatcher: fake.address,
    coordination,
    namespace: 'team-a',
    pool: 'writers',
    capacity: 3,
    agentId: 'pod-1-abc123',
    pod: 'pod-1',
    handlers,
    reconnect: { initialMs: 5, maxMs: 20 },
    logger: silentLogger,
    ...extra,
  });
  cleanups.push(() => agent.stop());
  await agent.start();
  const stream = await register(fake, agent);
  return { agent, fake, coordination, stream };
}

/** Takes the agent's next stream and answers its Register. */
async function register(
  fake: FakeDispatcher,
  agent: Agent,
  stillYours: (r: FakeStream) => Promise<{ taskId: string; attempt: number; token: number }[]> = async () => [],
): Promise<FakeStream> {
  const stream = await fake.nextStream();
  const connected = once(agent, 'connected');
  stream.send({ registered: { stillYours: await stillYours(stream) } });
  await connected;
  return stream;
}

/**
 * A round trip through the agent: an Assign for a handler it lacks is
 * answered at once, so once that answer is here, everything the agent wrote
 * before it is here too.
 */
async function roundTrip(stream: FakeStream): Promise<void> {
  const probe = assign('no-such-handler');
  stream.send({ assign: probe });
  await stream.result(probe.taskId as string);
  stream.send({ ack: { taskId: probe.taskId, attempt: 1, status: 'COMMITTED' } });
}

describe('agent runtime against a dispatcher', () => {
  it('sends Register first, with its capacity, handlers and lease id', async () => {
    const { agent, fake, coordination } = await rigUnregistered();
    const stream = await fake.nextStream();
    const first = await stream.feed.find(() => true, 0);
    expect(first.msg).toBe('register');
    expect(first.register).toMatchObject({
      namespace: 'team-a',
      pool: 'writers',
      agentId: agent.id,
      pod: 'pod-1',
      handlers: ['echo', 'slow'],
      capacity: 3,
      leaseId: coordination.sessions[0]?.id,
      inFlight: [],
    });
    expect(coordination.members[0]).toMatchObject({ agentId: agent.id, capacity: 3, handlers: ['echo', 'slow'] });
  });

  it('runs an assigned task and reports its output with the attempt token, then forgets it once acked', async () => {
    const seen: TaskContext[] = [];
    const { agent, stream } = await rig({
      echo: (ctx) => {
        seen.push(ctx);
        return { got: ctx.input, workflow: ctx.workflow };
      },
    });
    const a = assign('echo', { x: 1 }, { attempt: 2 });
    stream.send({ assign: a });
    const result = await stream.result(a.taskId as string);
    expect(result).toMatchObject({ taskId: a.taskId, attempt: 2, token: a.token, outcome: 'outputJson' });
    expect(JSON.parse(result.outputJson as string)).toEqual({ got: { x: 1 }, workflow: 'wf' });
    expect(seen[0]).toMatchObject({ taskId: a.taskId, namespace: 'team-a', workflow: 'wf', attempt: 2 });
    expect(agent.unacknowledged).toBe(1);
    const acked = once(agent, 'acked');
    stream.send({ ack: { taskId: a.taskId, attempt: 2, status: 'COMMITTED' } });
    await acked;
    expect(agent.unacknowledged).toBe(0);
  });

  it('re-sends an unacknowledged result after every reconnect until it is acked, and not after', async () => {
    const { agent, fake, stream } = await rig({ echo: (ctx) => ctx.input });
    const a = assign('echo', 'hello');
    stream.send({ assign: a });
    const first = await stream.result(a.taskId as string);

    stream.end();
    const s2 = await fake.nextStream();
    const reg = await s2.next('register');
    // Listed as in flight, so the dispatcher keeps the claim instead of re-queueing the task.
    expect(reg.inFlight).toEqual([{ taskId: a.taskId, attempt: 1, token: a.token, cost: 1 }]);
    s2.send({ registered: { stillYours: reg.inFlight } });
    expect(await s2.result(a.taskId as string)).toEqual(first);

    s2.end();
    const s3 = await fake.nextStream();
    await s3.next('register');
    s3.send({ registered: { stillYours: [] } });
    expect(await s3.result(a.taskId as string)).toEqual(first);
    const acked = once(agent, 'acked');
    s3.send({ ack: { taskId: a.taskId, attempt: 1, status: 'SUPERSEDED' } });
    await acked;

    s3.end();
    const s4 = await fake.nextStream();
    expect((await s4.next('register')).inFlight).toEqual([]);
    s4.send({ registered: { stillYours: [] } });
    await roundTrip(s4);
    expect(s4.messages.filter((m) => m.result?.taskId === a.taskId)).toEqual([]);
  });

  it('keeps a result made while disconnected and sends it once registered again', async () => {
    const release = gate();
    const { agent, fake, stream } = await rig({ slow: () => release.promise });
    const a = assign('slow');
    const started = once(agent, 'taskStarted');
    stream.send({ assign: a });
    await started;
    stream.end();
    const s2 = await fake.nextStream();
    const reg = await s2.next('register');
    expect(reg.inFlight.map((f) => f.taskId)).toEqual([a.taskId]);
    const finished = once(agent, 'taskFinished');
    release.open({ done: true });
    await finished;
    s2.send({ registered: { stillYours: reg.inFlight } });
    expect(JSON.parse((await s2.result(a.taskId as string)).outputJson as string)).toEqual({ done: true });
  });

  it('aborts ctx.signal on Cancel and still reports a retryable error for the slot', async () => {
    const reasons: AttemptAbortedError[] = [];
    const { stream } = await rig({
      slow: async (ctx) => {
        reasons.push(await aborted(ctx));
        throw ctx.signal.reason;
      },
    });
    const a = assign('slow');
    stream.send({ assign: a });
    stream.send({ cancel: { taskId: a.taskId, attempt: 1, reason: 'workflow deleted' } });
    const r = await stream.result(a.taskId as string);
    expect(r.error).toMatchObject({ code: 'CANCELLED', retryable: true });
    expect(r.error?.message).toContain('workflow deleted');
    expect(reasons[0]).toBeInstanceOf(AttemptAbortedError);
  });

  it('aborts an attempt at its deadline', async () => {
    const { stream } = await rig({ slow: (ctx) => aborted(ctx) });
    const a = assign('slow', {}, { deadlineUnixMs: Date.now() + 30 });
    stream.send({ assign: a });
    expect((await stream.result(a.taskId as string)).error).toMatchObject({
      code: 'DEADLINE_EXCEEDED',
      retryable: true,
    });
  });

  it('on Drain says draining at once, sends Drained only after its results are acked, then leaves', async () => {
    const release = gate();
    const started = gate();
    const { agent, coordination, stream } = await rig({
      slow: () => {
        started.open(undefined);
        return release.promise;
      },
    });
    const a = assign('slow');
    stream.send({ assign: a });
    await started.promise;
    stream.send({ drain: { timeoutSeconds: 30 } });
    expect(await stream.next('heartbeat')).toEqual({ draining: true });
    expect(agent.state).toBe('draining');

    release.open('finished');
    await stream.result(a.taskId as string);
    await roundTrip(stream);
    expect(stream.kinds()).not.toContain('drained');

    stream.send({ ack: { taskId: a.taskId, attempt: 1, status: 'COMMITTED' } });
    await stream.next('drained');
    await agent.untilStopped();
    await stream.ended;
    expect(agent.state).toBe('stopped');
    expect(coordination.sessions[0]?.closed).toBe(true);
    expect(coordination.closed).toBe(true);
  });

  it('aborts what is still running when the drain runs out of time, reporting it before Drained', async () => {
    const { agent, stream } = await rig({ slow: (ctx) => aborted(ctx) });
    const a = assign('slow');
    const started = once(agent, 'taskStarted');
    stream.send({ assign: a });
    await started;
    await agent.stop({ graceMs: 0 });
    const kinds = stream.kinds();
    const result = stream.messages.find((m) => m.result?.taskId === a.taskId)?.result;
    expect(result?.error).toMatchObject({ code: 'DRAIN_TIMEOUT', retryable: true });
    expect(kinds.indexOf('drained')).toBeGreaterThan(kinds.indexOf('result'));
  });

  it('runs every assigned attempt exactly once, all at the same time, ignoring a duplicate Assign', async () => {
    const release = gate();
    let running = 0;
    let peak = 0;
    let calls = 0;
    const { agent, stream } = await rig({
      slow: async (ctx) => {
        calls++;
        running++;
        peak = Math.max(peak, running);
        await release.promise;
        running--;
        return ctx.taskId;
      },
    });
    const tasks = [assign('slow'), assign('slow'), assign('slow')];
    let startedCount = 0;
    const allStarted = new Promise<void>((resolve) =>
      agent.on('taskStarted', () => {
        if (++startedCount === 3) resolve();
      }),
    );
    for (const t of tasks) stream.send({ assign: t });
    stream.send({ assign: tasks[0] as Assign });
    await allStarted;
    release.open(undefined);
    for (const t of tasks) await stream.result(t.taskId as string);
    await roundTrip(stream);
    const results = stream.messages.filter((m) => m.result && tasks.some((t) => t.taskId === m.result?.taskId));
    expect(results.map((m) => m.result?.taskId).sort()).toEqual(tasks.map((t) => t.taskId).sort());
    expect(calls).toBe(3);
    expect(peak).toBe(3);
  });

  it('aborts, without reporting, attempts the dispatcher does not list as still ours after a reconnect', async () => {
    const reasons = new Map<string, AttemptAbortedError>();
    const release = gate();
    const { agent, fake, stream } = await rig({
      slow: async (ctx) => {
        const r = await Promise.race([aborted(ctx), release.promise.then(() => undefined)]);
        if (r) reasons.set(ctx.taskId, r);
        return 'done';
      },
    });
    const kept = assign('slow');
    const lost = assign('slow');
    let startedCount = 0;
    const bothStarted = new Promise<void>((resolve) =>
      agent.on('taskStarted', () => {
        if (++startedCount === 2) resolve();
      }),
    );
    stream.send({ assign: kept });
    stream.send({ assign: lost });
    await bothStarted;
    stream.end();
    const lostFinished = new Promise<void>((resolve) =>
      agent.on('taskFinished', (t) => {
        if (t.taskId === lost.taskId) resolve();
      }),
    );
    const s2 = await register(fake, agent, async (s) => {
      const reg = await s.next('register');
      expect(reg.inFlight.map((f) => f.taskId).sort()).toEqual([kept.taskId, lost.taskId].sort());
      return reg.inFlight.filter((f) => f.taskId === kept.taskId);
    });
    await lostFinished;
    expect(reasons.get(lost.taskId as string)?.code).toBe('NOT_YOURS');
    release.open(undefined);
    await s2.result(kept.taskId as string);
    await roundTrip(s2);
    expect(s2.messages.some((m) => m.result?.taskId === lost.taskId)).toBe(false);
    expect(reasons.has(kept.taskId as string)).toBe(false);
  });

  it('reports failures: UnrecoverableError and unusable output are final, other throws and unknown handlers as shown', async () => {
    const { stream } = await rig({
      final: () => {
        throw new UnrecoverableError('bad input', { code: 'BAD_INPUT' });
      },
      flaky: () => {
        throw new Error('upstream timed out');
      },
      cyclic: () => {
        const o: Record<string, unknown> = {};
        o.self = o;
        return o;
      },
      nothing: () => undefined,
    });
    const cases = [
      [assign('final'), { code: 'BAD_INPUT', retryable: false, message: 'bad input' }],
      [assign('flaky'), { code: 'HANDLER_ERROR', retryable: true, message: 'upstream timed out' }],
      [assign('cyclic'), { code: 'OUTPUT_NOT_JSON', retryable: false }],
      [assign('missing'), { code: 'UNKNOWN_HANDLER', retryable: false }],
      [assign('final', undefined, { inputJson: '{not json' }), { code: 'INVALID_INPUT', retryable: false }],
    ] as const;
    for (const [a] of cases) stream.send({ assign: a });
    for (const [a, error] of cases) expect((await stream.result(a.taskId as string)).error).toMatchObject(error);
    const none = assign('nothing');
    stream.send({ assign: none });
    expect((await stream.result(none.taskId as string)).outputJson).toBe('null');
  });

  it('on losing its lease aborts every attempt unreported and re-registers under a new lease', async () => {
    const reasons: AttemptAbortedError[] = [];
    const { agent, fake, coordination, stream } = await rig({
      slow: async (ctx) => {
        reasons.push(await aborted(ctx));
        return 'too late';
      },
    });
    const a = assign('slow');
    const started = once(agent, 'taskStarted');
    stream.send({ assign: a });
    await started;
    const finished = once(agent, 'taskFinished');
    coordination.sessions[0]?.lose();
    const [summary] = await finished;
    expect(summary).toMatchObject({ taskId: a.taskId, reported: false });
    expect(reasons[0]?.code).toBe('LEASE_LOST');

    const s2 = await fake.nextStream();
    const reg = await s2.next('register');
    expect(reg.leaseId).toBe(coordination.sessions[1]?.id);
    expect(reg.leaseId).not.toBe(coordination.sessions[0]?.id);
    expect(reg.inFlight).toEqual([]);
    s2.send({ registered: { stillYours: [] } });
    await roundTrip(s2);
    expect(stream.messages.concat(s2.messages).some((m) => m.result?.taskId === a.taskId)).toBe(false);
    expect(agent.state).toBe('running');
  });

  it('drops a pending result the dispatcher refuses as UNKNOWN_TASK', async () => {
    const { agent, fake, stream } = await rig({ echo: () => 1 });
    const a = assign('echo');
    stream.send({ assign: a });
    await stream.result(a.taskId as string);
    const refused = once(agent, 'wireError');
    stream.send({ error: { code: 'UNKNOWN_TASK', message: 'no claim', taskId: a.taskId } });
    await refused;
    expect(agent.unacknowledged).toBe(0);
    stream.end();
    const s2 = await fake.nextStream();
    expect((await s2.next('register')).inFlight).toEqual([]);
    s2.send({ registered: { stillYours: [] } });
    await roundTrip(s2);
    expect(s2.messages.some((m) => m.result?.taskId === a.taskId)).toBe(false);
  });

  it('throttles progress to about ten a second without losing the latest value', async () => {
    const release = gate();
    const { stream } = await rig({
      slow: async (ctx) => {
        for (let i = 0; i <= 50; i++) ctx.progress(i / 50, `step ${i}`);
        await release.promise;
        return null;
      },
    });
    const a = assign('slow');
    stream.send({ assign: a });
    expect(await stream.next('progress')).toMatchObject({ taskId: a.taskId, token: a.token, fraction: 0 });
    expect(await stream.next('progress')).toMatchObject({ fraction: 1, message: 'step 50' });
    release.open(undefined);
    await stream.result(a.taskId as string);
    expect(stream.kinds().filter((k) => k === 'progress')).toHaveLength(2);
  });

  it('spawns children and exchanges mail under the attempt token and workflow', async () => {
    const { stream } = await rig({
      coordinator: async (ctx) => {
        const reply = new Promise<unknown>((resolve) => ctx.onMessage('answer', (p, meta) => resolve({ p, meta })));
        await ctx.spawn([{ name: 'child-a', handler: 'echo', input: { n: 1 } }]);
        await ctx.send('pod-2-def456', 'question', { q: 'why' });
        return reply;
      },
    });
    const a = assign('coordinator');
    stream.send({ assign: a });
    expect(await stream.next('spawn')).toEqual({
      parentTaskId: a.taskId,
      attempt: 1,
      token: a.token,
      children: [{ name: 'child-a', handler: 'echo', inputJson: '{"n":1}', cost: 1 }],
    });
    expect(await stream.next('mail')).toMatchObject({
      workflow: 'wf',
      toAgent: 'pod-2-def456',
      topic: 'question',
      payloadJson: '{"q":"why"}',
    });
    stream.send({
      mail: { workflow: 'wf', fromAgent: 'pod-2-def456', toAgent: '', topic: 'answer', payloadJson: '"because"' },
    });
    expect(JSON.parse((await stream.result(a.taskId as string)).outputJson as string)).toEqual({
      p: 'because',
      meta: { fromAgent: 'pod-2-def456', workflow: 'wf', topic: 'answer' },
    });
  });

  it('scopes locks to the workflow and lets one attempt at a time on this agent hold a name', async () => {
    const firstHolds = gate();
    const releaseFirst = gate();
    const order: string[] = [];
    const { coordination, stream } = await rig({
      locker: async (ctx) => {
        const { name } = ctx.input as { name: string };
        const held = await ctx.lock('db');
        order.push(`${name} holds`);
        if (name === 'first') {
          firstHolds.open(undefined);
          await releaseFirst.promise;
          order.push('first releases');
          await held.release();
        }
        return null;
      },
    });
    const first = assign('locker', { name: 'first' });
    const second = assign('locker', { name: 'second' });
    stream.send({ assign: first });
    await firstHolds.promise;
    stream.send({ assign: second });
    await roundTrip(stream);
    // One more turn of the event loop for a lock that wrongly did not wait.
    await new Promise((resolve) => setImmediate(resolve));
    expect(order).toEqual(['first holds']);
    releaseFirst.open(undefined);
    await stream.result(second.taskId as string);
    expect(order).toEqual(['first holds', 'first releases', 'second holds']);
    expect(coordination.sessions[0]?.locked).toEqual(['workflow/team-a/wf/db', 'workflow/team-a/wf/db']);
  });
});

/** Like rig, but leaves the first stream unanswered. */
async function rigUnregistered(): Promise<Omit<Rig, 'stream'>> {
  const fake = await FakeDispatcher.start();
  cleanups.push(() => fake.close());
  const coordination = new FakeCoordination();
  const agent = createAgent({
    dispatcher: fake.address,
    coordination,
    namespace: 'team-a',
    pool: 'writers',
    capacity: 3,
    pod: 'pod-1',
    handlers: { echo: () => null, slow: () => null },
    logger: silentLogger,
  });
  cleanups.push(() => agent.stop());
  await agent.start();
  return { agent, fake, coordination };
}
