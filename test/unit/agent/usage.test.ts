import { afterEach, describe, expect, it } from 'vitest';
import type { TaskContext } from '../../../src/agent/index.ts';
import { MAX_USAGE_MODELS } from '../../../src/lib/usage.ts';
import { assign, rig, runCleanups } from './agent-rig.ts';

afterEach(runCleanups);

/** What ctx.usage throws for `report`, as "Name: message", or "ok". */
function attempt(ctx: TaskContext, report: unknown): string {
  try {
    ctx.usage(report as Parameters<TaskContext['usage']>[0]);
    return 'ok';
  } catch (err) {
    return `${(err as Error).name}: ${(err as Error).message}`;
  }
}

describe('ctx.usage', () => {
  it('refuses malformed reports naming the field, and sends the rest summed per model with the result', async () => {
    const seen: string[] = [];
    const { stream } = await rig({
      spend: (ctx) => {
        for (const bad of [
          undefined,
          { inputTokens: 1 },
          { model: '' },
          { model: 'm'.repeat(129) },
          { model: 'gpt', inputTokens: -1 },
          { model: 'gpt', inputTokens: 1.5 },
          { model: 'gpt', outputTokens: '3' },
          { model: 'gpt', outputTokens: 2 ** 53 },
          { model: 'gpt', costUsd: -0.01 },
          { model: 'gpt', costUsd: Number.NaN },
          { model: 'gpt', costUsd: Number.POSITIVE_INFINITY },
        ])
          seen.push(attempt(ctx, bad));
        ctx.usage({ model: 'gpt', inputTokens: 100, outputTokens: 10, costUsd: 0.1 });
        ctx.usage({ model: 'gpt', inputTokens: 1, costUsd: 0.2 });
        ctx.usage({ model: 'small', outputTokens: 5 });
        return { ok: true };
      },
    });
    const a = assign('spend');
    stream.send({ assign: a });
    const result = await stream.result(a.taskId as string);
    expect(seen).toEqual([
      'TypeError: usage: must be {model, inputTokens?, outputTokens?, costUsd?}, got undefined',
      'TypeError: usage: model: must be a string',
      'RangeError: usage: model: must be 1-128 characters, got 0',
      'RangeError: usage: model: must be 1-128 characters, got 129',
      'RangeError: usage: inputTokens: must be a non-negative safe integer, got -1',
      'RangeError: usage: inputTokens: must be a non-negative safe integer, got 1.5',
      'TypeError: usage: outputTokens: must be a number',
      'RangeError: usage: outputTokens: must be a non-negative safe integer, got 9007199254740992',
      'RangeError: usage: costUsd: must be a finite number >= 0, got -0.01',
      'RangeError: usage: costUsd: must be a finite number >= 0, got NaN',
      'RangeError: usage: costUsd: must be a finite number >= 0, got Infinity',
    ]);
    expect(result.outcome).toBe('outputJson');
    // Costs are summed as nano-dollars: 0.1 + 0.2 is 0.3 exactly, not 0.30000000000000004.
    expect(result.usage).toEqual([
      { model: 'gpt', inputTokens: 101, outputTokens: 10, costUsd: 0.3 },
      { model: 'small', inputTokens: 0, outputTokens: 5, costUsd: 0 },
    ]);
  });

  it("a failed attempt's result carries its usage; one model too many or a sum past a safe integer is refused", async () => {
    const seen: string[] = [];
    const { stream } = await rig({
      fail: (ctx) => {
        for (let i = 0; i < MAX_USAGE_MODELS; i++) ctx.usage({ model: `m${i}`, inputTokens: 1 });
        seen.push(attempt(ctx, { model: 'one-more', inputTokens: 1 }));
        seen.push(attempt(ctx, { model: 'm0', inputTokens: Number.MAX_SAFE_INTEGER }));
        throw new Error('model call failed');
      },
    });
    const a = assign('fail');
    stream.send({ assign: a });
    const result = await stream.result(a.taskId as string);
    expect(seen).toEqual([
      `RangeError: usage: at most ${MAX_USAGE_MODELS} models per attempt, and "one-more" would be one more`,
      'RangeError: usage: inputTokens: the sum for model "m0" passes the largest safe integer',
    ]);
    expect(result.outcome).toBe('error');
    expect(result.error).toMatchObject({ message: 'model call failed', retryable: true });
    expect(result.usage).toHaveLength(MAX_USAGE_MODELS);
    expect(result.usage[0]).toEqual({ model: 'm0', inputTokens: 1, outputTokens: 0, costUsd: 0 });
  });

  it('sends no usage when the handler reported none, and refuses a report after the attempt ended', async () => {
    let later: TaskContext | undefined;
    const { stream } = await rig({
      quiet: (ctx) => {
        later = ctx;
        return 1;
      },
    });
    const a = assign('quiet');
    stream.send({ assign: a });
    const result = await stream.result(a.taskId as string);
    expect(result.usage).toEqual([]);
    expect(attempt(later as TaskContext, { model: 'gpt', inputTokens: 1 })).toBe(
      `Error: usage: attempt ${a.taskId}@1 has ended`,
    );
  });
});
