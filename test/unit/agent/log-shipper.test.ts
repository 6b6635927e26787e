import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  LogShipper,
  logText,
  SHIP_BYTES,
  SHIP_MAX_LINES,
  SHIP_MS,
  type TaskLogMessage,
} from '../../../src/agent/log-shipper.ts';

// What an attempt logs goes to the dispatcher batched per attempt, and its end
// (with what still waits) before its result.

afterEach(() => {
  vi.useRealTimers();
});

const attempt = (taskId: string, n = 1) => ({ taskId, attempt: n, token: 7 });

describe('LogShipper', () => {
  it('sends the lines of one attempt together after SHIP_MS, one message per attempt', () => {
    vi.useFakeTimers();
    const sent: TaskLogMessage[] = [];
    const s = new LogShipper((m) => sent.push(m));
    s.line(attempt('wf/a'), 'one');
    s.line(attempt('wf/b'), 'other');
    s.line(attempt('wf/a'), 'two');
    vi.advanceTimersByTime(SHIP_MS - 1);
    expect(sent).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(sent.map((m) => [m.taskId, m.lines.map((l) => l.text), m.end])).toEqual([
      ['wf/a', ['one', 'two'], false],
      ['wf/b', ['other'], false],
    ]);
  });

  it('sends at once when SHIP_BYTES or SHIP_MAX_LINES are waiting', () => {
    vi.useFakeTimers();
    const sent: TaskLogMessage[] = [];
    const s = new LogShipper((m) => sent.push(m));
    s.line(attempt('wf/a'), 'x'.repeat(SHIP_BYTES));
    expect(sent).toHaveLength(1);
    for (let i = 0; i < SHIP_MAX_LINES; i++) s.line(attempt('wf/b'), `l${i}`);
    expect(sent).toHaveLength(2);
    expect(sent[1]?.lines).toHaveLength(SHIP_MAX_LINES);
  });

  it('ends an attempt with what waits, marked end, under its current token; nothing for one that never logged', () => {
    vi.useFakeTimers();
    const sent: TaskLogMessage[] = [];
    const s = new LogShipper((m) => sent.push(m));
    const a = { taskId: 'wf/a', attempt: 2, token: 5 };
    s.line(a, 'last');
    a.token = 9; // reclaimed by a new leader meanwhile
    s.end(a, true);
    expect(sent).toEqual([
      { taskId: 'wf/a', attempt: 2, token: 9, lines: [expect.objectContaining({ text: 'last' })], end: true },
    ]);
    s.end(attempt('wf/quiet'), false);
    vi.advanceTimersByTime(SHIP_MS * 2);
    expect(sent).toHaveLength(1);
    // Logged earlier (already shipped): the end still goes, with no lines.
    s.end(attempt('wf/b'), true);
    expect(sent[1]).toMatchObject({ taskId: 'wf/b', lines: [], end: true });
  });

  it('drops what waits when cleared (the agent stops)', () => {
    vi.useFakeTimers();
    const sent: TaskLogMessage[] = [];
    const s = new LogShipper((m) => sent.push(m));
    s.line(attempt('wf/a'), 'never');
    s.clear();
    vi.advanceTimersByTime(SHIP_MS * 2);
    expect(sent).toEqual([]);
  });
});

describe('logText', () => {
  it.each([
    ['info', 'raw stderr', { stream: 'stderr' }, 'raw stderr'],
    ['info', 'console line', { stream: 'console' }, 'console line'],
    ['warn', 'console warning', { stream: 'console' }, 'WARN console warning'],
    ['info', 'computed', { n: 1 }, 'INFO computed {"n":1}'],
    ['error', 'failed', undefined, 'ERROR failed'],
  ] as const)('%s %s %o → %s', (level, msg, fields, text) => {
    expect(logText(level, msg, fields)).toBe(text);
  });
});
