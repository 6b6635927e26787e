import { afterEach, describe, expect, it } from 'vitest';
import { SpawnRefusedError, type TaskContext } from '../../../src/agent/index.ts';
import { assign, register, rig, roundTrip, runCleanups } from './agent-rig.ts';

afterEach(runCleanups);

const children = [
  { name: 'c1', handler: 'echo', input: { n: 1 } },
  { name: 'c2', handler: 'echo', input: { n: 2 }, cost: 2 },
];
const wireChildren = [
  { name: 'c1', handler: 'echo', inputJson: '{"n":1}', cost: 1 },
  { name: 'c2', handler: 'echo', inputJson: '{"n":2}', cost: 2 },
];

/** A handler that spawns `children`, records how that ended, and returns it. */
function spawner() {
  const seen: { settled?: 'resolved' | 'rejected'; error?: unknown } = {};
  const handler = async (ctx: TaskContext) => {
    try {
      await ctx.spawn(children);
      seen.settled = 'resolved';
      return { spawned: true };
    } catch (err) {
      seen.settled = 'rejected';
      seen.error = err;
      const e = err as SpawnRefusedError;
      return { name: e.name, code: e.code ?? null, message: e.message, taskId: e.taskId ?? null };
    }
  };
  return { seen, handler };
}

describe('ctx.spawn', () => {
  it('resolves only when the SpawnAck for its request arrives, not when it is sent', async () => {
    const { seen, handler } = spawner();
    const { stream } = await rig({ spawner: handler });
    const a = assign('spawner');
    stream.send({ assign: a });
    const spawn = await stream.next('spawn');
    expect(spawn).toEqual({
      parentTaskId: a.taskId,
      attempt: 1,
      token: a.token,
      children: wireChildren,
      requestId: expect.any(Number),
    });
    await roundTrip(stream);
    expect(seen.settled).toBeUndefined();
    // An answer to some other request settles nothing.
    stream.send({ spawnAck: { requestId: spawn.requestId + 1000, parentTaskId: a.taskId, attempt: 1 } });
    await roundTrip(stream);
    expect(seen.settled).toBeUndefined();
    expect(stream.messages.some((m) => m.result?.taskId === a.taskId)).toBe(false);

    stream.send({ spawnAck: { requestId: spawn.requestId, parentTaskId: a.taskId, attempt: 1 } });
    const result = await stream.result(a.taskId as string);
    expect(JSON.parse(result.outputJson as string)).toEqual({ spawned: true });
    expect(seen.settled).toBe('resolved');
  });

  it('re-sends an unanswered spawn after every reconnect with the same request id, until it is acked', async () => {
    const { seen, handler } = spawner();
    const { agent, fake, stream } = await rig({ spawner: handler });
    const a = assign('spawner');
    stream.send({ assign: a });
    const first = await stream.next('spawn');

    stream.end(); // the leader went away before the children were durable
    const second = await register(fake, agent);
    expect(await second.next('spawn')).toEqual(first);
    second.end();
    const third = await register(fake, agent);
    expect(await third.next('spawn')).toEqual(first);
    expect(seen.settled).toBeUndefined();

    // The answer comes on the stream the agent has now; the result follows.
    third.send({ spawnAck: { requestId: first.requestId, parentTaskId: a.taskId, attempt: 1 } });
    await third.result(a.taskId as string);
    expect(seen.settled).toBe('resolved');
    third.send({ ack: { taskId: a.taskId, attempt: 1, status: 'COMMITTED' } });
    await roundTrip(third);

    // Acked: the next stream gets neither the spawn nor the result again.
    third.end();
    const fourth = await register(fake, agent);
    await roundTrip(fourth);
    expect(fourth.kinds()).not.toContain('spawn');
    expect(fourth.messages.some((m) => m.result?.taskId === a.taskId)).toBe(false);
  });

  it('rejects with SpawnRefusedError carrying the code and message when the dispatcher refuses', async () => {
    const { seen, handler } = spawner();
    const { stream } = await rig({ spawner: handler });
    const a = assign('spawner');
    stream.send({ assign: a });
    const spawn = await stream.next('spawn');
    stream.send({
      spawnAck: {
        requestId: spawn.requestId,
        parentTaskId: a.taskId,
        attempt: 1,
        errorCode: 'CONFLICT',
        errorMessage: 'task p already has a child "c1" with a different input',
      },
    });
    const result = await stream.result(a.taskId as string);
    expect(seen.error).toBeInstanceOf(SpawnRefusedError);
    expect(JSON.parse(result.outputJson as string)).toEqual({
      name: 'SpawnRefusedError',
      code: 'CONFLICT',
      message: 'spawn refused (CONFLICT): task p already has a child "c1" with a different input',
      taskId: a.taskId,
    });
  });

  it('sends the spawn again a while after an UNAVAILABLE answer, and resolves on the ack of that copy', async () => {
    const { seen, handler } = spawner();
    const { stream } = await rig({ spawner: handler });
    const a = assign('spawner');
    stream.send({ assign: a });
    const spawn = await stream.next('spawn');
    stream.send({
      spawnAck: {
        requestId: spawn.requestId,
        parentTaskId: a.taskId,
        attempt: 1,
        errorCode: 'UNAVAILABLE',
        errorMessage: 'the run is not loaded yet; send again',
      },
    });
    expect(await stream.next('spawn')).toEqual(spawn);
    expect(seen.settled).toBeUndefined();
    stream.send({ spawnAck: { requestId: spawn.requestId, parentTaskId: a.taskId, attempt: 1 } });
    await stream.result(a.taskId as string);
    expect(seen.settled).toBe('resolved');
  });

  it('rejects an unanswered spawn with the abort reason when its attempt is cancelled, and stops re-sending it', async () => {
    const { seen, handler } = spawner();
    const { agent, fake, stream } = await rig({ spawner: handler });
    const a = assign('spawner');
    stream.send({ assign: a });
    await stream.next('spawn');
    stream.send({ cancel: { taskId: a.taskId, attempt: 1, reason: 'workflow deleted' } });
    const result = await stream.result(a.taskId as string);
    expect(result.error).toMatchObject({ code: 'CANCELLED', retryable: true });
    expect(seen.settled).toBe('rejected');
    expect(seen.error).toMatchObject({ name: 'AttemptAbortedError', code: 'CANCELLED' });

    stream.end();
    const next = await register(fake, agent);
    await roundTrip(next);
    expect(next.kinds()).not.toContain('spawn');
  });

  it('refuses children that repeat a name before sending anything', async () => {
    const { stream } = await rig({
      twice: async (ctx) => ctx.spawn([children[0], children[0]] as typeof children),
    });
    const a = assign('twice');
    stream.send({ assign: a });
    const result = await stream.result(a.taskId as string);
    expect(result.error?.message).toBe('spawn: children[1].name: "c1" repeats children[0]');
    expect(stream.kinds()).not.toContain('spawn');
  });
});
