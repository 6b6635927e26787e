// What a user reading the agent's log sees about each attempt: start and end
// lines with the task's identity, the handler's console and ctx.log output,
// an exec command's stderr, progress messages, and the bounds on all of them.
import { afterEach, describe, expect, it } from 'vitest';
import {
  type Handler,
  LINE_TRUNCATED_MARKER,
  MAX_LOG_BYTES_PER_ATTEMPT,
  MAX_LOG_LINE_BYTES,
  UnrecoverableError,
} from '../../../src/agent/index.ts';
import { createLogger } from '../../../src/lib/log.ts';
import { aborted, assign, gate, rig, runCleanups, until } from './agent-rig.ts';

afterEach(runCleanups);

type Line = Record<string, unknown> & { msg: string; level: string };

/** An agent whose JSON log lines are collected, as `kubectl logs` would show them. */
async function loggedRig(handlers: Record<string, Handler>) {
  const lines: Line[] = [];
  const logger = createLogger(
    { component: 'agent' },
    { level: 'info', format: 'json', write: (l) => lines.push(JSON.parse(l) as Line) },
  );
  const r = await rig(handlers, { logger });
  return { ...r, lines };
}

const of = (lines: Line[], taskId: string) => lines.filter((l) => l.taskId === taskId);

describe('attempt log lines', () => {
  it('logs the start and the success of an attempt with the workflow, task, attempt, handler and agent', async () => {
    const { agent, stream, lines } = await loggedRig({ echo: (ctx) => ctx.input });
    const a = assign('echo', { x: 1 }, { attempt: 2 });
    stream.send({ assign: a });
    await stream.result(a.taskId as string);
    const task = (a.taskId as string).split('/')[1];
    const identity = {
      workflow: 'wf',
      namespace: 'team-a',
      task,
      taskId: a.taskId,
      attempt: 2,
      handler: 'echo',
      agentId: agent.id,
    };
    const mine = of(lines, a.taskId as string);
    expect(mine.map((l) => l.msg)).toEqual(['Attempt started', 'Attempt succeeded']);
    expect(mine[0]).toMatchObject({ level: 'info', ...identity });
    expect(mine[1]).toMatchObject({ level: 'info', outcome: 'succeeded', ...identity });
    expect(mine[1]?.durationMs).toEqual(expect.any(Number));
  });

  it('logs a failure with its code, message and whether it will be retried', async () => {
    const { stream, lines } = await loggedRig({
      flaky: () => {
        throw new Error('the model timed out');
      },
      broken: () => {
        throw new UnrecoverableError('input.url is required', { code: 'BAD_INPUT' });
      },
    });
    const a = assign('flaky');
    const b = assign('broken');
    stream.send({ assign: a });
    stream.send({ assign: b });
    await stream.result(a.taskId as string);
    await stream.result(b.taskId as string);
    expect(of(lines, a.taskId as string).at(-1)).toMatchObject({
      level: 'warn',
      outcome: 'failed',
      retryable: true,
      code: 'HANDLER_ERROR',
      error: 'the model timed out',
      handler: 'flaky',
    });
    expect(of(lines, b.taskId as string).at(-1)).toMatchObject({
      outcome: 'failed',
      retryable: false,
      code: 'BAD_INPUT',
      error: 'input.url is required',
    });
  });

  it('logs a cancelled attempt with the reason, and a task for a handler it lacks as failed', async () => {
    const { stream, lines } = await loggedRig({ wait: async (ctx) => Promise.reject(await aborted(ctx)) });
    const a = assign('wait');
    stream.send({ assign: a });
    await until(() => of(lines, a.taskId as string).length === 1, 'the start line');
    stream.send({ cancel: { taskId: a.taskId, attempt: 1, reason: 'workflow deleted' } });
    await stream.result(a.taskId as string);
    expect(of(lines, a.taskId as string).at(-1)).toMatchObject({
      msg: 'Attempt cancelled',
      outcome: 'cancelled',
      reason: 'cancelled: workflow deleted',
    });
    const b = assign('typo');
    stream.send({ assign: b });
    await stream.result(b.taskId as string);
    expect(of(lines, b.taskId as string)).toEqual([
      expect.objectContaining({ outcome: 'failed', code: 'UNKNOWN_HANDLER', retryable: false, handler: 'typo' }),
    ]);
  });
});

describe('handler output', () => {
  it('logs console output of a handler, also after an await, with its task, and keeps two concurrent attempts apart', async () => {
    const gates = new Map([
      ['a', gate()],
      ['b', gate()],
    ]);
    const { stream, lines } = await loggedRig({
      chat: async (ctx) => {
        const { name } = ctx.input as { name: string };
        console.log('hello from %s', name);
        await gates.get(name)?.promise;
        await new Promise((resolve) => setTimeout(resolve, 1));
        console.warn(`still ${name}`);
        console.error(new Error(`oops ${name}`).message);
        return null;
      },
    });
    const a = assign('chat', { name: 'a' });
    const b = assign('chat', { name: 'b' });
    stream.send({ assign: a });
    stream.send({ assign: b });
    await until(() => lines.filter((l) => l.stream === 'console').length === 2, 'both first lines');
    gates.get('b')?.open(undefined);
    await stream.result(b.taskId as string);
    gates.get('a')?.open(undefined);
    await stream.result(a.taskId as string);
    for (const [t, name] of [
      [a, 'a'],
      [b, 'b'],
    ] as const) {
      const out = of(lines, t.taskId as string).filter((l) => l.stream === 'console');
      expect(out.map((l) => [l.level, l.msg])).toEqual([
        ['info', `hello from ${name}`],
        ['warn', `still ${name}`],
        ['error', `oops ${name}`],
      ]);
      expect(out[0]).toMatchObject({ workflow: 'wf', namespace: 'team-a', attempt: 1, handler: 'chat' });
    }
  });

  it('leaves console output outside any attempt alone', async () => {
    const { stream, lines } = await loggedRig({ noop: () => null });
    const a = assign('noop');
    stream.send({ assign: a });
    await stream.result(a.taskId as string);
    console.log('not a task line');
    expect(lines.some((l) => l.msg === 'not a task line')).toBe(false);
  });

  it('logs ctx.log lines with their fields and the task, never letting a field replace the task', async () => {
    const { stream, lines } = await loggedRig({
      fetch: (ctx) => {
        ctx.log('Fetched the page', { bytes: 1234, task: 'spoofed' });
        ctx.log.warn('Slow answer', { ms: 900 });
        ctx.log.with({ step: 'parse' }).info('Parsed');
        return null;
      },
    });
    const a = assign('fetch');
    stream.send({ assign: a });
    await stream.result(a.taskId as string);
    const task = (a.taskId as string).split('/')[1];
    const mine = of(lines, a.taskId as string);
    expect(mine.find((l) => l.msg === 'Fetched the page')).toMatchObject({
      level: 'info',
      bytes: 1234,
      task,
      'user.task': 'spoofed',
    });
    expect(mine.find((l) => l.msg === 'Slow answer')).toMatchObject({ level: 'warn', ms: 900, task });
    expect(mine.find((l) => l.msg === 'Parsed')).toMatchObject({ step: 'parse', task });
  });

  it('logs progress messages with the fraction and the task', async () => {
    const { stream, lines } = await loggedRig({
      work: async (ctx) => {
        ctx.progress(0.25, 'downloading');
        await new Promise((resolve) => setTimeout(resolve, 150));
        ctx.progress(0.75, 'summarising');
        await new Promise((resolve) => setTimeout(resolve, 150));
        return null;
      },
    });
    const a = assign('work');
    stream.send({ assign: a });
    await stream.result(a.taskId as string);
    const progress = of(lines, a.taskId as string).filter((l) => l.msg === 'Task progress');
    expect(progress.map((l) => [l.fraction, l.message])).toEqual([
      [0.25, 'downloading'],
      [0.75, 'summarising'],
    ]);
  });

  it('cuts a line over MAX_LOG_LINE_BYTES with a marker', async () => {
    const { stream, lines } = await loggedRig({
      loud: () => {
        console.log('é'.repeat(MAX_LOG_LINE_BYTES));
        return null;
      },
    });
    const a = assign('loud');
    stream.send({ assign: a });
    await stream.result(a.taskId as string);
    const [line] = of(lines, a.taskId as string).filter((l) => l.stream === 'console');
    expect(line?.msg.endsWith(LINE_TRUNCATED_MARKER)).toBe(true);
    const kept = (line?.msg ?? '').slice(0, -LINE_TRUNCATED_MARKER.length);
    expect(kept).toBe('é'.repeat(MAX_LOG_LINE_BYTES / 2));
  });

  it('logs at most MAX_LOG_BYTES_PER_ATTEMPT of output per attempt, then says so once and counts the rest', async () => {
    const line = 'x'.repeat(1000);
    const n = Math.ceil(MAX_LOG_BYTES_PER_ATTEMPT / line.length) + 50;
    const { stream, lines } = await loggedRig({
      flood: () => {
        for (let i = 0; i < n; i++) console.log(line);
        return null;
      },
      quiet: () => {
        console.log('a fresh budget');
        return null;
      },
    });
    const a = assign('flood');
    stream.send({ assign: a });
    await stream.result(a.taskId as string);
    const mine = of(lines, a.taskId as string);
    const out = mine.filter((l) => l.stream === 'console');
    // The budget counts each line's fields too, so a little under limit / line length lines get through.
    expect(out.length * line.length).toBeLessThanOrEqual(MAX_LOG_BYTES_PER_ATTEMPT);
    expect(out.length * line.length).toBeGreaterThan(0.9 * MAX_LOG_BYTES_PER_ATTEMPT);
    expect(mine.filter((l) => l.msg.startsWith('Log output truncated'))).toEqual([
      expect.objectContaining({ level: 'warn', limitBytes: MAX_LOG_BYTES_PER_ATTEMPT }),
    ]);
    expect(mine.at(-1)).toMatchObject({ outcome: 'succeeded', logLinesDropped: n - out.length });
    const b = assign('quiet');
    stream.send({ assign: b });
    await stream.result(b.taskId as string);
    expect(of(lines, b.taskId as string).some((l) => l.msg === 'a fresh budget')).toBe(true);
  });
});

describe('exec handler output', () => {
  it('logs every stderr line of a command that succeeds, with the task, and none of its stdout', async () => {
    const { stream, lines } = await loggedRig({
      render: {
        kind: 'exec',
        command: ['sh', '-c', 'echo "loading model" >&2; echo \'{"ok":true}\'; printf "done in 3 s" >&2'],
      } as unknown as Handler,
    });
    const a = assign('render');
    stream.send({ assign: a });
    const result = await stream.result(a.taskId as string);
    expect(JSON.parse(result.outputJson as string)).toEqual({ ok: true });
    const mine = of(lines, a.taskId as string);
    expect(mine.filter((l) => l.stream === 'stderr').map((l) => l.msg)).toEqual(['loading model', 'done in 3 s']);
    expect(mine.find((l) => l.stream === 'stderr')).toMatchObject({ level: 'info', handler: 'render', attempt: 1 });
    expect(mine.some((l) => l.msg.includes('"ok"'))).toBe(false);
    expect(mine.at(-1)).toMatchObject({ outcome: 'succeeded' });
  });

  it('logs the stderr of a failing command too, and cuts a long stderr line with the marker', async () => {
    const { stream, lines } = await loggedRig({
      fail: {
        kind: 'exec',
        command: [
          'sh',
          '-c',
          `head -c ${3 * MAX_LOG_LINE_BYTES} /dev/zero | tr '\\0' y >&2; echo >&2; echo bye >&2; exit 3`,
        ],
      } as unknown as Handler,
    });
    const a = assign('fail');
    stream.send({ assign: a });
    await stream.result(a.taskId as string);
    const mine = of(lines, a.taskId as string);
    const err = mine.filter((l) => l.stream === 'stderr').map((l) => l.msg);
    expect(err).toEqual([`${'y'.repeat(MAX_LOG_LINE_BYTES)}${LINE_TRUNCATED_MARKER}`, 'bye']);
    expect(mine.at(-1)).toMatchObject({ outcome: 'failed', code: 'EXIT_3', retryable: true });
  });
});
