import { describe, expect, it } from 'vitest';
import { Backoff } from '../../../src/lib/backoff.ts';

describe('Backoff', () => {
  it('grows by the factor up to the cap without jitter', () => {
    const b = new Backoff({ initialMs: 100, maxMs: 1_000, jitter: 0 });
    expect(Array.from({ length: 6 }, () => b.next())).toEqual([100, 200, 400, 800, 1_000, 1_000]);
    expect(b.attempts).toBe(6);
  });

  it('starts again from the initial delay after reset', () => {
    const b = new Backoff({ initialMs: 50, maxMs: 400, factor: 3, jitter: 0 });
    b.next();
    b.next();
    b.reset();
    expect(b.next()).toBe(50);
  });

  it('draws full jitter below the ceiling', () => {
    const draws = [0, 0.5, 0.999];
    const b = new Backoff({ initialMs: 1_000, maxMs: 1_000, random: () => draws.shift() ?? 0 });
    expect([b.next(), b.next(), b.next()]).toEqual([1_000, 500, 1]);
  });

  it('spreads many clients that fail together', () => {
    const delays = Array.from({ length: 200 }, () => new Backoff({ initialMs: 1_000, maxMs: 1_000 }).next());
    expect(new Set(delays).size).toBeGreaterThan(100);
    expect(Math.min(...delays)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...delays)).toBeLessThanOrEqual(1_000);
  });

  it.each([
    [{ initialMs: 0, maxMs: 10 }, 'initialMs must be > 0'],
    [{ initialMs: 10, maxMs: 5 }, 'maxMs (5) must be >= initialMs (10)'],
    [{ initialMs: 10, maxMs: 50, factor: 0.5 }, 'factor must be >= 1'],
    [{ initialMs: 10, maxMs: 50, jitter: 2 }, 'jitter must be within [0, 1]'],
  ])('refuses %o with a message naming the field', (opts, message) => {
    expect(() => new Backoff(opts)).toThrow(message);
  });
});
