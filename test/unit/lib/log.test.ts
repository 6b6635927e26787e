import { describe, expect, it } from 'vitest';
import { createLogger, type Level } from '../../../src/lib/log.ts';

/** What a line must read: the object JSON.stringify makes of {ts, level, msg, ...base, ...kv}, Errors as messages. */
function reference(line: string, level: Level, msg: string, fields: Record<string, unknown>): string {
  const ts = (JSON.parse(line) as { ts: string }).ts;
  const merged: Record<string, unknown> = { ...fields };
  for (const [k, v] of Object.entries(merged)) if (v instanceof Error) merged[k] = v.message;
  return JSON.stringify({ ts, level, msg, ...merged });
}

function capture(base: Record<string, unknown> = {}, level: Level = 'debug') {
  const lines: string[] = [];
  const log = createLogger(base, { level, format: 'json', write: (l) => lines.push(l) });
  return { log, lines };
}

describe('createLogger (JSON lines)', () => {
  const cases: { name: string; base: Record<string, unknown>; kv?: Record<string, unknown> }[] = [
    { name: 'no fields', base: {} },
    { name: 'base only', base: { agentId: 'a-1', pool: 'p' } },
    { name: 'base and line fields', base: { agentId: 'a-1' }, kv: { task: 'each.3', attempt: 2, ok: true } },
    {
      name: 'values JSON drops or converts',
      base: { gone: undefined, fn: () => 1 },
      kv: { n: null, when: new Date(0), nested: { a: [1, { b: 'x"y' }] }, err: new Error('boom: "quoted"') },
    },
    { name: 'a line field named as a base field replaces it in place', base: { a: 1, b: 2 }, kv: { a: 'again', c: 3 } },
    { name: 'a field named msg, level or ts replaces the line’s own', base: {}, kv: { msg: 'other', level: 'x' } },
    { name: 'a base field named ts', base: { ts: 'mine', k: 1 }, kv: { z: 0 } },
    { name: 'keys that need escaping', base: { 'we"ird': 1, 'new\nline': 'v' }, kv: { ü: '\u2028' } },
  ];
  for (const c of cases) {
    it(`writes what JSON.stringify would: ${c.name}`, () => {
      const { log, lines } = capture(c.base);
      log.info('Something happened', c.kv);
      log.warn('Again, with "quotes"', c.kv);
      expect(lines).toHaveLength(2);
      expect(lines[0]).toBe(reference(lines[0] ?? '', 'info', 'Something happened', { ...c.base, ...c.kv }));
      expect(lines[1]).toBe(reference(lines[1] ?? '', 'warn', 'Again, with "quotes"', { ...c.base, ...c.kv }));
      for (const l of lines) expect(() => JSON.parse(l)).not.toThrow();
    });
  }

  it('with() adds fields to every line, and chains', () => {
    const { log, lines } = capture({ agentId: 'a' });
    const attempt = log.with({ task: 't.1', attempt: 1 }).with({ handler: 'h' });
    attempt.info('Attempt started', { token: 7 });
    attempt.error('Attempt failed', { error: new Error('no') });
    log.info('Back to the agent');
    expect(lines.map((l) => JSON.parse(l) as Record<string, unknown>).map(({ ts: _t, ...rest }) => rest)).toEqual([
      { level: 'info', msg: 'Attempt started', agentId: 'a', task: 't.1', attempt: 1, handler: 'h', token: 7 },
      { level: 'error', msg: 'Attempt failed', agentId: 'a', task: 't.1', attempt: 1, handler: 'h', error: 'no' },
      { level: 'info', msg: 'Back to the agent', agentId: 'a' },
    ]);
  });

  it('stamps each line with the current time, to the millisecond', async () => {
    const { log, lines } = capture();
    const before = Date.now();
    log.info('one');
    await new Promise((r) => setTimeout(r, 15));
    log.info('two');
    const after = Date.now();
    const [one, two] = lines.map((l) => Date.parse((JSON.parse(l) as { ts: string }).ts));
    expect(one).toBeGreaterThanOrEqual(before);
    expect(two).toBeGreaterThanOrEqual((one ?? 0) + 10);
    expect(two).toBeLessThanOrEqual(after);
  });

  it('drops lines below its level and says which it would write', () => {
    const { log, lines } = capture({}, 'warn');
    log.debug('no');
    log.info('no');
    log.warn('yes');
    log.error('yes');
    expect(lines.map((l) => (JSON.parse(l) as { level: string }).level)).toEqual(['warn', 'error']);
    expect([log.enabled?.('info'), log.enabled?.('warn')]).toEqual([false, true]);
  });
});

describe('createLogger (text)', () => {
  it('writes time, level, message and key=value pairs', () => {
    const lines: string[] = [];
    const log = createLogger({ agentId: 'a' }, { format: 'text', write: (l) => lines.push(l) });
    log.warn('Slow', { ms: 12, err: new Error('late') });
    expect(lines[0]).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARN {2}Slow agentId="a" ms=12 err="late"$/);
  });
});
