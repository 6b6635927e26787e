import { describe, expect, it } from 'vitest';
import { BATCH_MAX_BYTES, BATCH_MAX_ITEMS, Coalescer, itemBytes } from '../../../src/lib/wire-batch.ts';

// The stream's batching: what is written in one turn goes out as few messages as possible, in the
// order it was written, and never as a batch the other side would refuse for size.

function recorder(schedule?: (fn: () => void) => void) {
  const out: [string, number[]][] = [];
  const c = new Coalescer<'a' | 'b', number>((kind, items) => out.push([kind, [...items]]), schedule);
  return { c, out };
}

describe('Coalescer', () => {
  it('writes one turn of items as one message, at the end of the turn', async () => {
    const { c, out } = recorder();
    for (let i = 0; i < 5; i++) c.add('a', i, 10);
    expect(out).toEqual([]);
    await Promise.resolve();
    expect(out).toEqual([['a', [0, 1, 2, 3, 4]]]);
    expect(c.size).toBe(0);
  });

  it('keeps order across kinds: a run of one kind is one batch', async () => {
    const { c, out } = recorder();
    c.add('a', 1, 1);
    c.add('a', 2, 1);
    c.add('b', 3, 1);
    c.add('a', 4, 1);
    await Promise.resolve();
    expect(out).toEqual([
      ['a', [1, 2]],
      ['b', [3]],
      ['a', [4]],
    ]);
  });

  it('flush() writes at once (before another message) and the scheduled flush then finds nothing', async () => {
    const { c, out } = recorder();
    c.add('a', 1, 1);
    c.flush();
    expect(out).toEqual([['a', [1]]]);
    await Promise.resolve();
    expect(out).toHaveLength(1);
    c.add('a', 2, 1);
    await Promise.resolve();
    expect(out).toEqual([
      ['a', [1]],
      ['a', [2]],
    ]);
  });

  it(`splits at ${BATCH_MAX_ITEMS} items and at ${BATCH_MAX_BYTES} bytes; an item over the bound goes alone`, () => {
    const { c, out } = recorder();
    for (let i = 0; i < BATCH_MAX_ITEMS + 3; i++) c.add('a', i, 1);
    c.flush();
    expect(out.map(([, items]) => items.length)).toEqual([BATCH_MAX_ITEMS, 3]);
    out.length = 0;
    const half = BATCH_MAX_BYTES / 2;
    c.add('a', 1, half);
    c.add('a', 2, half);
    c.add('a', 3, 1); // would pass the bound: next batch
    c.add('a', 4, BATCH_MAX_BYTES * 4); // alone
    c.add('a', 5, 1);
    c.flush();
    expect(out).toEqual([
      ['a', [1, 2]],
      ['a', [3]],
      ['a', [4]],
      ['a', [5]],
    ]);
  });

  it('clear() drops what waits (the stream is gone)', async () => {
    const { c, out } = recorder();
    c.add('b', 1, 1);
    c.clear();
    await Promise.resolve();
    expect(out).toEqual([]);
  });

  it('uses the given scheduler (the agent batches per event-loop turn with setImmediate)', async () => {
    const { c, out } = recorder(setImmediate);
    c.add('a', 1, 1);
    await Promise.resolve();
    expect(out).toEqual([]);
    c.add('a', 2, 1);
    await new Promise((r) => setImmediate(r));
    expect(out).toEqual([['a', [1, 2]]]);
  });

  it('counts a payload with its envelope', () => {
    expect(itemBytes(undefined)).toBe(128);
    expect(itemBytes('x'.repeat(1000))).toBe(1128);
  });
});
