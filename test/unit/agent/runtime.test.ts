import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import {
  AgentConfigError,
  AttemptAbortedError,
  createAgent,
  type TaskContext,
  UnrecoverableError,
} from '../../../src/agent/index.ts';
import type { Assign } from '../../../src/gen/agentflow/v1/Assign.ts';
import {
  aborted,
  agentOptions,
  assign,
  cleanups,
  gate,
  register,
  rig,
  roundTrip,
  runCleanups,
  startAgent,
  until,
} from './agent-rig.ts';
import { FakeDispatcher } from './fake-dispatcher.ts';

afterEach(runCleanups);

/** A fresh temp directory, removed after the test. */
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'agentflow-agent-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** What start() rejected with (fails the test if it resolved). */
async function startError(p: Promise<void>): Promise<unknown> {
  return p.then(
    () => {
      throw new Error('expected start() to reject');
    },
    (e: unknown) => e,
  );
}

describe('agent runtime against a dispatcher', () => {
  it('sends Register first, with its capacity, handlers, suffix and no lease yet, leaving namespace and pool to the pod', async () => {
    const { fake } = await startAgent({ echo: () => null, slow: () => null });
    const stream = await fake.nextStream();
    const first = await stream.feed.find(() => true, 0);
    expect(first.msg).toBe('register');
    expect(first.register).toMatchObject({
      namespace: '',
      pool: '',
      agentId: 'pod-1-abc123',
      pod: 'pod-1',
      handlers: ['echo', 'slow'],
      capacity: 3,
      leaseId: '',
      inFlight: [],
    });
  });

  it('names its namespace and pool in Register when it is told them (an agent outside the cluster)', async () => {
    const { fake } = await startAgent({ echo: () => null }, { namespace: 'team-b', pool: 'laptops' });
    const stream = await fake.nextStream();
    expect(await stream.next('register')).toMatchObject({ namespace: 'team-b', pool: 'laptops' });
  });

  it('heartbeats at least three times per lease TTL the dispatcher announces, whatever heartbeatMs says', async () => {
    const { agent, fake } = await startAgent({ noop: async () => null }, { heartbeatMs: 60_000 });
    const stream = await register(fake, agent, { leaseTtlSeconds: 1 });
    const t0 = Date.now();
    await stream.next('heartbeat');
    await stream.next('heartbeat');
    // Two beats well inside one 1 s TTL: the dispatcher keeps the lease of an idle agent.
    expect(Date.now() - t0).toBeLessThan(1_000);
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
    const reg = await s2.accept();
    // Listed as in flight, so the dispatcher keeps the claim instead of re-queueing the task.
    expect(reg.inFlight).toEqual([{ taskId: a.taskId, attempt: 1, token: a.token, cost: 1 }]);
    expect(await s2.result(a.taskId as string)).toEqual(first);

    s2.end();
    const s3 = await fake.nextStream();
    await s3.accept({ stillYours: [] });
    expect(await s3.result(a.taskId as string)).toEqual(first);
    const acked = once(agent, 'acked');
    s3.send({ ack: { taskId: a.taskId, attempt: 1, status: 'SUPERSEDED' } });
    await acked;

    s3.end();
    const s4 = await fake.nextStream();
    expect((await s4.accept()).inFlight).toEqual([]);
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
    s2.send({ registered: { stillYours: reg.inFlight, leaseId: reg.leaseId, agentId: 'pod-1' } });
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
    const { agent, stream } = await rig({
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
    // While the agent is away its claim on `lost` expires and the task goes to someone else.
    fake.revoke(lost.taskId as string);
    stream.end();
    const lostFinished = new Promise<void>((resolve) =>
      agent.on('taskFinished', (t) => {
        if (t.taskId === lost.taskId) resolve();
      }),
    );
    const s2 = await register(fake, agent, {
      stillYours: (reg) => {
        expect(reg.inFlight.map((f) => f.taskId).sort()).toEqual([kept.taskId, lost.taskId].sort());
        return reg.inFlight.filter((f) => fake.holds(f.taskId, f.attempt, f.token));
      },
    });
    await lostFinished;
    expect(reasons.get(lost.taskId as string)?.code).toBe('NOT_YOURS');
    release.open(undefined);
    await s2.result(kept.taskId as string);
    await roundTrip(s2);
    expect(s2.messages.some((m) => m.result?.taskId === lost.taskId)).toBe(false);
    expect(reasons.has(kept.taskId as string)).toBe(false);
  });

  it('when its lease ran out while away, aborts every running attempt unreported and carries on under the new lease', async () => {
    const reasons: AttemptAbortedError[] = [];
    const { agent, fake, stream } = await rig({
      slow: async (ctx) => {
        reasons.push(await aborted(ctx));
        return 'too late';
      },
    });
    const a = assign('slow');
    const started = once(agent, 'taskStarted');
    stream.send({ assign: a });
    await started;
    // The lease lapsed: etcd deleted the claims bound to it.
    fake.expireLease(stream.leaseId);
    fake.revoke(a.taskId as string);
    const finished = once(agent, 'taskFinished');
    stream.end();
    const s2 = await fake.nextStream();
    const reg = await s2.accept();
    expect(reg.leaseId).toBe(stream.leaseId);
    expect(s2.leaseId).not.toBe(stream.leaseId);
    const [summary] = await finished;
    expect(summary).toMatchObject({ taskId: a.taskId, reported: false });
    expect(reasons[0]?.code).toBe('NOT_YOURS');
    await roundTrip(s2);
    expect(stream.messages.concat(s2.messages).some((m) => m.result?.taskId === a.taskId)).toBe(false);
    expect(agent.state).toBe('running');

    s2.end();
    const s3 = await fake.nextStream();
    expect((await s3.accept()).leaseId).toBe(s2.leaseId);
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
    expect((await s2.accept()).inFlight).toEqual([]);
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
        await ctx.send('pod-2', 'question', { q: 'why' });
        return reply;
      },
    });
    const a = assign('coordinator');
    stream.send({ assign: a });
    const spawn = await stream.next('spawn');
    expect(spawn).toEqual({
      parentTaskId: a.taskId,
      attempt: 1,
      token: a.token,
      children: [{ name: 'child-a', handler: 'echo', inputJson: '{"n":1}', cost: 1 }],
      requestId: expect.any(Number),
    });
    stream.send({ spawnAck: { requestId: spawn.requestId, parentTaskId: a.taskId, attempt: 1 } });
    expect(await stream.next('mail')).toMatchObject({
      workflow: 'wf',
      toAgent: 'pod-2',
      topic: 'question',
      payloadJson: '{"q":"why"}',
    });
    stream.send({
      mail: { workflow: 'wf', fromAgent: 'pod-2', toAgent: '', topic: 'answer', payloadJson: '"because"' },
    });
    expect(JSON.parse((await stream.result(a.taskId as string)).outputJson as string)).toEqual({
      p: 'because',
      meta: { fromAgent: 'pod-2', workflow: 'wf', topic: 'answer' },
    });
  });
});

describe('agent identity and lease', () => {
  it('takes the agent id Registered gives it, and keeps sending its own suffix in later Registers', async () => {
    const { agent, fake, stream } = await rig({ echo: () => null });
    expect(agent.id).toBe('pod-1');
    const probe = assign('no-such-handler');
    stream.send({ assign: probe });
    expect((await stream.result(probe.taskId as string)).error?.message).toContain('agent pod-1 has no handler');

    stream.end();
    const s2 = await fake.nextStream();
    // The dispatcher derives the id from the verified identity plus this suffix; sending the derived id back
    // would make it derive another one.
    expect((await s2.next('register')).agentId).toBe('pod-1-abc123');
  });

  it('sends the lease id from Registered in the next Register after a reconnect, and adopts a new one if given', async () => {
    const { fake, stream } = await rig({ echo: () => null });
    expect(stream.leaseId).toMatch(/^[1-9][0-9]*$/);
    stream.end();
    const s2 = await fake.nextStream();
    expect((await s2.accept()).leaseId).toBe(stream.leaseId);
    expect(s2.leaseId).toBe(stream.leaseId);

    fake.expireLease(s2.leaseId);
    s2.end();
    const s3 = await fake.nextStream();
    await s3.accept();
    expect(s3.leaseId).not.toBe(s2.leaseId);
    s3.end();
    const s4 = await fake.nextStream();
    expect((await s4.next('register')).leaseId).toBe(s3.leaseId);
  });
});

describe('agent credentials', () => {
  it('opens every stream with its token as "authorization: Bearer" metadata', async () => {
    const { fake, stream } = await rig({ echo: () => null });
    expect(stream.authorization).toBe('Bearer test-token');
    stream.end();
    const s2 = await fake.nextStream();
    await s2.next('register');
    expect(s2.authorization).toBe('Bearer test-token');
  });

  it('re-reads a rotated token file and sends it as Reauth on the open stream, without reconnecting', async () => {
    const dir = await tempDir();
    const tokenFile = join(dir, 'token');
    await writeFile(tokenFile, 'token-one\n');
    const { fake, stream } = await rig({ echo: () => null }, { token: tokenFile, credentialCheckMs: 50 });
    expect(stream.authorization).toBe('Bearer token-one');

    const rotatedAt = Date.now();
    await writeFile(tokenFile, 'token-two\n');
    expect(await stream.next('reauth')).toEqual({ token: 'token-two' });
    // Several check periods at most (the timer is not exact under load), never a reconnect.
    expect(Date.now() - rotatedAt).toBeLessThan(2_000);
    await roundTrip(stream);
    expect(fake.opened).toHaveLength(1);
    expect(stream.messages.filter((m) => m.msg === 'reauth')).toHaveLength(1);

    stream.end();
    const s2 = await fake.nextStream();
    await s2.next('register');
    expect(s2.authorization).toBe('Bearer token-two');
  });

  it('refuses to start, naming token, when the token file cannot be read', async () => {
    const dir = await tempDir();
    const missing = join(dir, 'no-such-token');
    const fake = await FakeDispatcher.start();
    cleanups.push(() => fake.close());
    const agent = createAgent({ ...agentOptions(fake, { echo: () => null }), token: missing });
    const err = await startError(agent.start());
    expect(err).toBeInstanceOf(AgentConfigError);
    expect((err as AgentConfigError).field).toBe('token');
    expect((err as AgentConfigError).message).toContain(missing);
    expect(agent.state).toBe('failed');
    await agent.untilStopped();
    expect(fake.opened).toHaveLength(0);
  });

  it('refuses to start, naming token, when the token is empty', async () => {
    const fake = await FakeDispatcher.start();
    cleanups.push(() => fake.close());
    const agent = createAgent({ ...agentOptions(fake, { echo: () => null }), token: () => '  \n' });
    const err = await startError(agent.start());
    expect(err).toMatchObject({ name: 'AgentConfigError', field: 'token', problem: 'the token is empty' });
  });

  it('uses TLS unless told otherwise: without insecurePlaintext an unreadable CA file fails start, naming ca', async () => {
    const fake = await FakeDispatcher.start();
    cleanups.push(() => fake.close());
    const { insecurePlaintext: _, ...tls } = agentOptions(fake, { echo: () => null });
    const agent = createAgent({ ...tls, ca: '/nonexistent/agentflow/ca.crt' });
    const err = await startError(agent.start());
    expect(err).toMatchObject({ name: 'AgentConfigError', field: 'ca' });
    expect(fake.opened).toHaveLength(0);
  });

  it('emits refused when the dispatcher ends the stream UNAUTHENTICATED or PERMISSION_DENIED, and keeps retrying', async () => {
    const { agent, fake } = await startAgent({ echo: () => null });
    const refusals: { code: number; details: string }[] = [];
    agent.on('refused', (r) => refusals.push(r));

    const s1 = await fake.nextStream();
    await s1.next('register');
    s1.refuse(status.UNAUTHENTICATED, 'the token is not valid for audience agentflow');
    const s2 = await fake.nextStream();
    await s2.next('register');
    s2.refuse(status.PERMISSION_DENIED, 'PoolNotFound: no AgentPool writers in team-a');
    const s3 = await register(fake, agent);

    expect(refusals).toEqual([
      { code: status.UNAUTHENTICATED, details: 'the token is not valid for audience agentflow' },
      { code: status.PERMISSION_DENIED, details: 'PoolNotFound: no AgentPool writers in team-a' },
    ]);
    expect(agent.state).toBe('running');
    const a = assign('echo');
    s3.send({ assign: a });
    await s3.result(a.taskId as string);
  });

  it('keeps retrying while the token file is missing and connects with it once it is back', async () => {
    const dir = await tempDir();
    const tokenFile = join(dir, 'token');
    await writeFile(tokenFile, 'first');
    const { agent, fake, stream } = await rig({ echo: () => null }, { token: tokenFile });
    const errors: Error[] = [];
    agent.on('error', (e) => errors.push(e));
    await rm(tokenFile);
    stream.end();
    await until(() => errors.length >= 2, 'the agent to fail reading the token twice');
    expect(errors[0]).toMatchObject({ name: 'AgentConfigError', field: 'token' });
    expect(fake.opened).toHaveLength(1);
    await writeFile(tokenFile, 'second');
    const s2 = await register(fake, agent);
    expect(s2.authorization).toBe('Bearer second');
  });
});

describe('createAgent', () => {
  it.each([
    ['etcd', ['http://etcd:2379']],
    ['etcdPrefix', '/agentflow'],
    ['etcdTls', {}],
    ['leaseTtlSeconds', 10],
    ['coordination', {}],
  ])('refuses the removed option %s, naming it', async (key, value) => {
    const fake = await FakeDispatcher.start();
    cleanups.push(() => fake.close());
    const opts = { ...agentOptions(fake, { echo: () => null }), [key]: value };
    expect(() => createAgent(opts)).toThrow(new AgentConfigError(`AgentOptions.${key}`, 'unknown option'));
  });

  it.each([
    ['token', 42, 'must be a token file path or a function, got 42'],
    ['token', '  ', 'must be a token file path or a function, got "  "'],
    ['ca', 7, 'must be PEM bytes or a CA file path, got 7'],
    ['serverName', 'not a host/name', 'must be a host name, got "not a host/name"'],
    ['insecurePlaintext', 'yes', 'must be a boolean, got "yes"'],
    ['credentialCheckMs', 10, 'must be an integer >= 50, got 10'],
  ])('refuses %s = %j', async (key, value, problem) => {
    const fake = await FakeDispatcher.start();
    cleanups.push(() => fake.close());
    const opts = { ...agentOptions(fake, { echo: () => null }), [key]: value };
    expect(() => createAgent(opts)).toThrow(new AgentConfigError(`AgentOptions.${key}`, problem));
  });
});
