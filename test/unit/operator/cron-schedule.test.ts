import { describe, expect, it } from 'vitest';
import { MAX_MISSED_SCHEDULES, SCHEDULE_PATTERN } from '../../../src/api/cron-workflow.ts';
import { dueTimes, scheduleProblem } from '../../../src/operator/cron/controller.ts';

const at = (s: string) => Date.parse(s);
const iso = (ms: number | undefined) => (ms === undefined ? undefined : new Date(ms).toISOString());

describe('dueTimes', () => {
  it('gives the latest due time, how many were due and the next one', () => {
    const d = dueTimes('* * * * *', undefined, at('2026-03-01T10:00:30Z'), at('2026-03-01T10:03:10Z'));
    expect(iso(d.latest)).toBe('2026-03-01T10:03:00.000Z');
    expect(d.missed).toBe(3);
    expect(iso(d.next)).toBe('2026-03-01T10:04:00.000Z');
  });

  it('gives none when nothing was due, and counts from after the last scheduled time, exclusive', () => {
    const d = dueTimes('*/5 * * * *', undefined, at('2026-03-01T10:05:00Z'), at('2026-03-01T10:09:59Z'));
    expect(d.latest).toBeUndefined();
    expect(d.missed).toBe(0);
    expect(iso(d.next)).toBe('2026-03-01T10:10:00.000Z');
  });

  it('reads the schedule in spec.timeZone, daylight saving time included', () => {
    const winter = dueTimes('0 9 * * *', 'Europe/Paris', at('2026-01-10T00:00:00Z'), at('2026-01-10T12:00:00Z'));
    expect(iso(winter.latest)).toBe('2026-01-10T08:00:00.000Z');
    const summer = dueTimes('0 9 * * *', 'Europe/Paris', at('2026-07-10T00:00:00Z'), at('2026-07-10T12:00:00Z'));
    expect(iso(summer.latest)).toBe('2026-07-10T07:00:00.000Z');
  });

  it('stops counting past 100 missed times and still gives the latest', () => {
    const d = dueTimes('* * * * *', undefined, at('2026-03-01T00:00:00Z'), at('2026-03-01T05:00:30Z'));
    expect(d.missed).toBe(MAX_MISSED_SCHEDULES + 1);
    expect(iso(d.latest)).toBe('2026-03-01T05:00:00.000Z');
    expect(iso(d.next)).toBe('2026-03-01T05:01:00.000Z');
  });

  it('takes descriptors, @midnight too, and six fields with seconds first', () => {
    expect(iso(dueTimes('@midnight', undefined, at('2026-03-01T10:00:00Z'), at('2026-03-03T10:00:00Z')).latest)).toBe(
      '2026-03-03T00:00:00.000Z',
    );
    expect(iso(dueTimes('@hourly', undefined, at('2026-03-01T10:00:00Z'), at('2026-03-01T12:30:00Z')).latest)).toBe(
      '2026-03-01T12:00:00.000Z',
    );
    const s = dueTimes('*/5 * * * * *', undefined, at('2026-03-01T10:00:00Z'), at('2026-03-01T10:00:12Z'));
    expect(iso(s.latest)).toBe('2026-03-01T10:00:10.000Z');
    expect(s.missed).toBe(2);
  });
});

describe('scheduleProblem', () => {
  it('accepts good schedules and time zones', () => {
    expect(scheduleProblem('*/15 * * * *', undefined)).toBeUndefined();
    expect(scheduleProblem('0 9 * * 1-5', 'America/New_York')).toBeUndefined();
    expect(scheduleProblem('@weekly', 'UTC')).toBeUndefined();
  });

  it('names the field and the problem', () => {
    expect(scheduleProblem('61 * * * *', undefined)).toMatch(
      /^spec\.schedule: "61 \* \* \* \*" is not a cron schedule: /,
    );
    expect(scheduleProblem('* * * * *', 'Mars/Olympus')).toBe(
      'spec.timeZone: "Mars/Olympus" is not an IANA time zone (e.g. "Europe/Paris", "UTC")',
    );
  });

  it('the schema pattern takes 5 or 6 fields or a descriptor, nothing else', () => {
    const re = new RegExp(SCHEDULE_PATTERN);
    for (const ok of ['* * * * *', '0 0 * * * *', '@daily', '@midnight']) expect(re.test(ok), ok).toBe(true);
    for (const bad of ['* * * *', '* * * * * * *', '@every 5m', '@reboot', '', ' * * * * *']) {
      expect(re.test(bad), bad).toBe(false);
    }
  });
});
