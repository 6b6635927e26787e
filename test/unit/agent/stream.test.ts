// Streamed output (ctx.stream) on the agent's side: batched within STREAM_SHIP_MS with the
// attempt's log lines, bounded per message, ended before the result, and sent only to a dispatcher
// that keeps it (protocol 4).
import { afterEach, describe, expect, it, vi } from 'vitest';
import { LogShipper, SHIP_MS, STREAM_SHIP_MS, type TaskLogMessage } from '../../../src/agent/log-shipper.ts';
import { STREAM_MAX_CHUNK_BYTES, STREAM_MAX_CHUNKS_PER_MESSAGE } from '../../../src/api/data-api.ts';
import { PROTOCOL_STREAM, PROTOCOL_TASK_LOGS } from '../../../src/lib/wire-batch.ts';
import { assign, register, runCleanups, startAgent } from './agent-rig.ts';

afterEach(async () => {
  vi.useRealTimers();
  await runCleanups();
});

const attempt = (taskId: string) => ({ taskId, attempt: 1, token: 7 });
const texts = (m: TaskLogMessage | undefined) => m?.chunks?.map((c) => c.text);

describe('LogShipper chunks', () => {
  it('sends streamed chunks within STREAM_SHIP_MS, in order, with the lines that wait', () => {
    vi.useFakeTimers();
    const sent: TaskLogMessage[] = [];
    const s = new LogShipper((m) => sent.push(m));
    s.line(attempt('wf/a'), 'a line');
    vi.advanceTimersByTime(10);
    s.chunk(attempt('wf/a'), 'Hel');
    s.chunk(attempt('wf/a'), 'lo');
    vi.advanceTimersByTime(STREAM_SHIP_MS - 1);
    expect(sent).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(sent).toHaveLength(1);
    expect(texts(sent[0])).toEqual(['Hel', 'lo']);
    expect(sent[0]?.lines.map((l) => l.text)).toEqual(['a line']);
    // Lines alone still wait SHIP_MS; a message without chunks carries none.
    s.line(attempt('wf/a'), 'later');
    vi.advanceTimersByTime(STREAM_SHIP_MS);
    expect(sent).toHaveLength(1);
    vi.advanceTimersByTime(SHIP_MS - STREAM_SHIP_MS);
    expect(sent[1]).not.toHaveProperty('chunks');
  });

  it('sends at once when STREAM_MAX_CHUNKS_PER_MESSAGE wait, and ends an attempt with what waits', () => {
    vi.useFakeTimers();
    const sent: TaskLogMessage[] = [];
    const s = new LogShipper((m) => sent.push(m));
    for (let i = 0; i < STREAM_MAX_CHUNKS_PER_MESSAGE + 1; i++) s.chunk(attempt('wf/a'), `${i},`);
    expect(sent).toHaveLength(1);
    expect(sent[0]?.chunks).toHaveLength(STREAM_MAX_CHUNKS_PER_MESSAGE);
    s.end(attempt('wf/a'), true);
    expect(sent[1]).toMatchObject({ end: true, chunks: [{ text: `${STREAM_MAX_CHUNKS_PER_MESSAGE},` }] });
  });
});

describe('ctx.stream through the agent', () => {
  const handlers = {
    talk: async (ctx: { stream(c: string): void }) => {
      ctx.stream('one ');
      ctx.stream('two');
      return 'done';
    },
    bad: async (ctx: { stream(c: unknown): void }) =>
      [7, 'x'.repeat(STREAM_MAX_CHUNK_BYTES + 1), 'x'.repeat(STREAM_MAX_CHUNK_BYTES)].map((chunk) => {
        try {
          ctx.stream(chunk);
          return 'taken';
        } catch (err) {
          return `${(err as Error).name}: ${(err as Error).message}`;
        }
      }),
  } as never;

  it('ships the chunks (protocol 4) in a TaskLog that ends the attempt before its result', async () => {
    const { agent, fake } = await startAgent(handlers);
    const stream = await register(fake, agent, { protocol: PROTOCOL_STREAM });
    const a = assign('talk');
    stream.send({ assign: a });
    const result = await stream.result(a.taskId as string);
    expect(result.outputJson).toBe('"done"');
    const logs = stream.messages.filter((m) => m.log).map((m) => m.log);
    expect(logs.flatMap((l) => l?.chunks.map((c) => c.text))).toEqual(['one ', 'two']);
    expect(logs.at(-1)?.end).toBe(true);
    const kinds = stream.kinds();
    expect(kinds.lastIndexOf('log')).toBeLessThan(kinds.indexOf('result'));
  });

  it('sends no chunks to a dispatcher older than protocol 4 (lines and results as before)', async () => {
    const { agent, fake } = await startAgent(handlers);
    const stream = await register(fake, agent, { protocol: PROTOCOL_TASK_LOGS });
    const a = assign('talk');
    stream.send({ assign: a });
    expect((await stream.result(a.taskId as string)).outputJson).toBe('"done"');
    const logs = stream.messages.filter((m) => m.log).map((m) => m.log);
    // The attempt's end still goes (it streamed), with no chunks.
    expect(logs.map((l) => [l?.chunks.length, l?.end])).toEqual([[0, true]]);
  });

  it('refuses a chunk that is not a string, then one over STREAM_MAX_CHUNK_BYTES, naming stream: chunk', async () => {
    const { agent, fake } = await startAgent(handlers);
    const stream = await register(fake, agent, { protocol: PROTOCOL_STREAM });
    const a = assign('bad');
    stream.send({ assign: a });
    expect(JSON.parse((await stream.result(a.taskId as string)).outputJson ?? '')).toEqual([
      'TypeError: stream: chunk must be a string, got 7',
      `RangeError: stream: chunk is ${STREAM_MAX_CHUNK_BYTES + 1} bytes (UTF-8); the limit is ${STREAM_MAX_CHUNK_BYTES}`,
      'taken',
    ]);
  });
});
