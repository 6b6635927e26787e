import { describe, expect, it } from 'vitest';
import { formatQuantity, parseQuantity, QuantityError } from '../../../src/lib/quantity.ts';

describe('parseQuantity', () => {
  it.each<[string | number, bigint]>([
    ['500m', 500n],
    ['1.5Gi', 1_610_612_736_000n],
    ['2k', 2_000_000n],
    ['100Mi', 104_857_600_000n],
    ['1e3', 1_000_000n],
    ['1.5E-3', 2n], // 1.5 milli, rounded up
    ['0.1', 100n],
    ['.5', 500n],
    ['0.5', 500n],
    ['5.', 5_000n],
    ['1n', 1n], // below a milli-unit: rounded up
    ['1000000n', 1n], // exactly 1m
    ['1000001n', 2n],
    ['1u', 1n],
    ['1500u', 2n],
    ['2000u', 2n],
    ['8Ei', 9_223_372_036_854_775_808_000n], // 2^63 * 1000, beyond int64 and Number
    ['-1', -1_000n],
    ['-1n', -1n], // rounded away from zero, like Kubernetes
    ['+2', 2_000n],
    ['0', 0n],
    ['1Ki', 1_024_000n],
    ['3M', 3_000_000_000n],
    ['1E', 1_000_000_000_000_000_000_000n],
    ['2e+2', 200_000n],
    ['1e-400', 1n],
    ['0e999999', 0n],
    [4, 4_000n],
    [0.25, 250n],
    [1e21, 1_000_000_000_000_000_000_000_000n],
  ])('parses %j as %s milli-units', (input, milli) => {
    expect(parseQuantity(input)).toBe(milli);
  });

  it.each<[string | number, string]>([
    ['1.5 Gi', 'invalid quantity "1.5 Gi": must not contain whitespace'],
    ['abc', 'invalid quantity "abc": expected an optionally signed decimal number'],
    ['1Kb', 'invalid quantity "1Kb": unknown suffix "Kb"'],
    ['', 'invalid quantity "": empty string'],
    ['--1', 'invalid quantity "--1": expected an optionally signed decimal number'],
    ['.', 'invalid quantity ".": expected an optionally signed decimal number'],
    ['1e', 'invalid quantity "1e": unknown suffix "e"'],
    ['1e1.5', 'invalid quantity "1e1.5": unknown suffix "e1.5"'],
    ['1constructor', 'invalid quantity "1constructor": unknown suffix "constructor"'],
    ['1e400', 'invalid quantity "1e400": exponent out of range'],
    [Number.NaN, 'invalid quantity "NaN": not a finite number'],
  ])('rejects %j', (input, message) => {
    let caught: unknown;
    try {
      parseQuantity(input);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(QuantityError);
    expect((caught as QuantityError).message).toContain(message);
    expect((caught as QuantityError).input).toBe(String(input));
  });
});

describe('formatQuantity', () => {
  it.each<[bigint, 'cpu' | 'memory' | 'count', string]>([
    [1_500n, 'cpu', '1500m'],
    [2_000n, 'cpu', '2'],
    [100n, 'cpu', '100m'],
    [0n, 'cpu', '0'],
    [-500n, 'cpu', '-500m'],
    [1_610_612_736_000n, 'memory', '1.5Gi'],
    [536_870_912_000n, 'memory', '512Mi'],
    [1_073_741_824_000n, 'memory', '1Gi'],
    [100_000n, 'memory', '100'],
    [1_000_000_000_000n, 'memory', '953.6Mi'], // 1G, truncated to one decimal
    [9_223_372_036_854_775_808_000n, 'memory', '8Ei'],
    [3_000n, 'count', '3'],
    [1_500n, 'count', '1.5'],
    [1n, 'count', '0.001'],
  ])('formats %s as %s → %s', (milli, kind, text) => {
    expect(formatQuantity(milli, kind)).toBe(text);
  });

  it('round-trips what it prints exactly', () => {
    for (const q of ['1500m', '2', '512Mi', '1.5Gi', '8Ei']) {
      const kind = q.endsWith('i') ? 'memory' : 'cpu';
      expect(formatQuantity(parseQuantity(q), kind)).toBe(q);
    }
  });
});
