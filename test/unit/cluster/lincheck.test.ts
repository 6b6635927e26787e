import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { checkLinearizable, ensureLincheck, LincheckInputError, type LinOp } from '../../cluster/lincheck.ts';

// The robustness tests trust this checker's verdict, so each linearizable
// history here is paired with the smallest change that breaks it (and the
// reverse): a checker that always said yes, or always no, fails this file.

const get = (client: number, value: string | null, call: number, ret: number | null, key = 'k'): LinOp => ({
  client,
  op: 'get',
  key,
  call,
  return: ret,
  output: value === null ? null : { value },
});
const put = (client: number, value: string, call: number, ret: number | null, acked = ret !== null): LinOp => ({
  client,
  op: 'put',
  key: 'k',
  value,
  call,
  return: ret,
  output: acked ? {} : null,
});
const cas = (client: number, expect: string, value: string, ok: boolean | null, call: number, ret: number): LinOp => ({
  client,
  op: 'cas',
  key: 'k',
  value,
  expect,
  call,
  return: ret,
  output: ok === null ? null : { ok },
});

async function verdict(history: LinOp[]): Promise<boolean> {
  const r = await checkLinearizable(history);
  expect(r.output).toBe(r.linearizable ? 'linearizable' : `not linearizable: key "k" (${history.length} operations)`);
  return r.linearizable;
}

beforeAll(async () => {
  await ensureLincheck(); // builds tools/lincheck into the cache on a fresh machine (seconds)
}, 120_000);

describe('checkLinearizable: histories that are linearizable', () => {
  it('a sequential history of puts, a successful cas and reads of the latest value', async () => {
    const ok = [
      put(0, 'a', 0, 1),
      get(0, 'a', 2, 3),
      put(0, 'b', 4, 5),
      cas(0, 'b', 'c', true, 6, 7),
      get(0, 'c', 8, 9),
    ];
    expect(await verdict(ok)).toBe(true);
    expect(await verdict([...ok.slice(0, 4), get(0, 'b', 8, 9)])).toBe(false);
  });

  it('reads overlapping a put may see the old or the new value, new first', async () => {
    // C0 |------ put(1) ------|;  C1 |- get -> 1 -|;  C2 starts later, returns earlier, reads absent.
    const overlapping = [put(0, '1', 0, 100), get(1, '1', 10, 30), get(2, '', 20, 25)];
    expect(await verdict(overlapping)).toBe(true);
    // Once a read of the new value has returned, a later read may not see the old one.
    expect(await verdict([put(0, '1', 0, 100), get(1, '1', 10, 30), get(2, '', 40, 50)])).toBe(false);
  });

  it('a cas that failed because another put landed first', async () => {
    const history = (putCall: number) => [
      put(0, 'a', 0, 1),
      get(0, 'a', 2, 3),
      put(1, 'b', putCall, putCall + 4),
      cas(0, 'a', 'c', false, 5, 9),
      get(0, 'b', putCall + 5, putCall + 6),
    ];
    expect(await verdict(history(4))).toBe(true); // put b overlaps the cas
    expect(await verdict(history(12))).toBe(false); // put b starts after: nothing could have made the cas fail
  });

  it('an indeterminate put that is observed later', async () => {
    const history = (putCall: number) => [
      put(0, 'a', 0, 1),
      put(1, 'b', putCall, null),
      get(0, 'b', 5, 6),
      get(0, 'b', 7, 8),
    ];
    expect(await verdict(history(2))).toBe(true);
    // An unknown outcome still has a call time: b cannot be read before anyone started writing it.
    expect(await verdict(history(9))).toBe(false);
  });

  it('an indeterminate put that is never observed', async () => {
    const history = [put(0, 'a', 0, 1), put(1, 'b', 2, 3, false), get(0, 'a', 5, 6), get(0, 'a', 10, 11)];
    expect(await verdict(history)).toBe(true);
    // The same put acknowledged: it must be visible to reads that start after it returned.
    expect(await verdict([put(0, 'a', 0, 1), put(1, 'b', 2, 3), get(0, 'a', 5, 6), get(0, 'a', 10, 11)])).toBe(false);
  });

  it('an indeterminate get constrains nothing', async () => {
    expect(await verdict([put(0, 'a', 0, 1), get(1, null, 2, null)])).toBe(true);
    expect(await verdict([put(0, 'a', 0, 1), get(1, '', 2, 3)])).toBe(false);
  });
});

describe('checkLinearizable: histories that are not linearizable', () => {
  it('a get returning a value never written', async () => {
    expect(await verdict([put(0, 'a', 0, 1), get(1, 'zz', 2, 3)])).toBe(false);
    expect(await verdict([put(0, 'a', 0, 1), get(1, 'a', 2, 3)])).toBe(true);
  });

  it('a stale read after a completed put', async () => {
    expect(await verdict([put(0, 'a', 0, 1), put(0, 'b', 2, 3), get(1, 'a', 4, 5)])).toBe(false);
    // The same read started before the put returned may linearize before it.
    expect(await verdict([put(0, 'a', 0, 1), put(0, 'b', 2, 5), get(1, 'a', 4, 6)])).toBe(true);
  });

  it('an acknowledged put applied twice: A, then B, then A again with no second write of A', async () => {
    const history = (secondWrite: LinOp[]) => [
      put(0, 'A', 0, 1),
      put(0, 'B', 2, 3),
      get(1, 'B', 4, 5),
      ...secondWrite,
      get(1, 'A', 8, 9),
    ];
    expect(await verdict(history([]))).toBe(false);
    expect(await verdict(history([put(0, 'A', 6, 7)]))).toBe(true);
  });

  it('a cas reported failed whose value is later read although no one else wrote it', async () => {
    const history = (ok: boolean) => [put(0, 'a', 0, 1), cas(0, 'a', 'c', ok, 2, 3), get(1, 'c', 4, 5)];
    expect(await verdict(history(false))).toBe(false);
    expect(await verdict(history(true))).toBe(true);
    // A concurrent put of d makes the failure plausible, and then the read sees d, not c.
    const raced = (read: string) => [
      put(0, 'a', 0, 1),
      put(1, 'd', 2, 10),
      cas(0, 'a', 'c', false, 3, 6),
      get(0, read, 11, 12),
    ];
    expect(await verdict(raced('d'))).toBe(true);
    expect(await verdict(raced('c'))).toBe(false);
  });

  it('names only the keys that fail and writes a visualization', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lincheck-viz-'));
    try {
      const viz = join(dir, 'history.html');
      const r = await checkLinearizable(
        [
          { client: 0, op: 'put', key: 'good', value: 'x', call: 0, return: 1, output: {} },
          get(1, 'x', 2, 3, 'good'),
          { client: 0, op: 'put', key: 'bad', value: 'y', call: 0, return: 1, output: {} },
          get(1, 'never', 2, 3, 'bad'),
        ],
        { viz },
      );
      expect(r).toEqual({
        linearizable: false,
        output: `not linearizable: key "bad" (2 operations)\nvisualization: ${viz}`,
      });
      const html = await readFile(viz, 'utf8');
      expect(html).toContain('<title>Porcupine');
      expect(html).toContain(String.raw`get(\"bad\") -\u003e \"never\"`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('checkLinearizable: malformed histories', () => {
  const bad = (ops: unknown[]) => checkLinearizable(ops as LinOp[]);

  it('refuses a non-integer time, naming the operation index and field (exit 2)', async () => {
    const err = await bad([put(0, 'a', 0, 1), { ...get(0, 'a', 2, 3), call: 'soon' }]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LincheckInputError);
    expect((err as LincheckInputError).exitCode).toBe(2);
    expect((err as Error).message).toBe('lincheck: operation 1: field "call": must be an integer (ns), got "soon"');
  });

  it('refuses a missing output and a misspelt field rather than treating them as unknown outcomes', async () => {
    const { output: _, ...noOutput } = get(0, 'a', 2, 3);
    await expect(bad([noOutput])).rejects.toThrow('operation 0: field "output": missing (must be an object or null)');
    await expect(bad([{ ...get(0, 'a', 2, 3), ouptut: null }])).rejects.toThrow(
      'operation 0: field "ouptut": unknown field',
    );
    await expect(bad([{ ...cas(0, 'a', 'b', true, 0, 1), output: { ok: 'yes' } }])).rejects.toThrow(
      'operation 0: output: field "ok": must be true or false, got "yes"',
    );
  });
});
