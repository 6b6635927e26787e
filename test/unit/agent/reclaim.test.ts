// A new leader may claim the very same attempt (same task, same attempt
// number) again for the agent that is running it, under a newer token, when
// the old claim went with an expired lease. The agent must carry on under the
// new token: ignoring the Assign as a duplicate left the task running forever
// (found by the chaos suite's frozen-leader case).
import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import type { Assign } from '../../../src/gen/agentflow/v1/Assign.ts';
import { assign, gate, rig, roundTrip, runCleanups } from './agent-rig.ts';

afterEach(runCleanups);

describe('an attempt claimed again under a new token', () => {
  it('a running attempt carries on and reports its result and its state requests under the new token', async () => {
    const release = gate();
    const { agent, stream } = await rig({
      slow: async (ctx) => {
        await release.promise;
        await ctx.state.get('k').catch(() => undefined);
        return 'done';
      },
    });
    const a = assign('slow');
    const started = once(agent, 'taskStarted');
    stream.send({ assign: a });
    await started;
    const newer: Assign = { ...a, token: Number(a.token) + 1000 };
    stream.send({ assign: newer });
    await roundTrip(stream);
    release.open(undefined);
    const r = await stream.result(a.taskId as string);
    expect(Number(r.token)).toBe(Number(newer.token));
    const state = stream.messages.find((m) => m.state?.taskId === a.taskId);
    expect(Number(state?.state?.token)).toBe(Number(newer.token));
    // One run, not two.
    expect(stream.messages.filter((m) => m.result?.taskId === a.taskId)).toHaveLength(1);
  });

  it('a finished, unacknowledged result goes out again under the new token instead of the work being redone', async () => {
    let calls = 0;
    const { stream } = await rig({
      quick: async () => {
        calls++;
        return 'out';
      },
    });
    const a = assign('quick');
    stream.send({ assign: a });
    const first = await stream.result(a.taskId as string);
    expect(Number(first.token)).toBe(Number(a.token));
    const newer: Assign = { ...a, token: Number(a.token) + 7 };
    stream.send({ assign: newer });
    await roundTrip(stream);
    const resent = stream.messages.filter((m) => m.result?.taskId === a.taskId).map((m) => Number(m.result?.token));
    expect(resent).toEqual([Number(a.token), Number(newer.token)]);
    expect(calls).toBe(1);
  });

  it('an Assign with the same or an older token is still a duplicate and ignored', async () => {
    let calls = 0;
    const release = gate();
    const { agent, stream } = await rig({
      slow: async () => {
        calls++;
        await release.promise;
        return 'x';
      },
    });
    const a = assign('slow');
    const started = once(agent, 'taskStarted');
    stream.send({ assign: a });
    await started;
    stream.send({ assign: { ...a } });
    stream.send({ assign: { ...a, token: Number(a.token) - 1 } });
    await roundTrip(stream);
    release.open(undefined);
    const r = await stream.result(a.taskId as string);
    expect(Number(r.token)).toBe(Number(a.token));
    expect(calls).toBe(1);
  });
});
