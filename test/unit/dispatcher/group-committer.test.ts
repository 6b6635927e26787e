import { describe, expect, it } from 'vitest';
import { GroupCommitter } from '../../../src/dispatcher/group-committer.ts';
import { silentLogger } from '../../../src/lib/log.ts';

// The group committer alone, with a commit function standing in for etcd: what arrives during a
// commit shares the next one, a failed commit is retried whole and in order, nothing is dropped.

const tick = () => new Promise((r) => setTimeout(r, 5));

function rig(o: { failFirst?: number; maxBatch?: number } = {}) {
  const batches: number[][] = [];
  const settled: [number, string | undefined][] = [];
  let gate: (() => void) | undefined;
  let hold = false;
  let failures = o.failFirst ?? 0;
  const c = new GroupCommitter<number, string>({
    commit: async (batch) => {
      batches.push([...batch]);
      if (hold) await new Promise<void>((r) => (gate = r));
      if (failures > 0) {
        failures--;
        throw new Error('etcd unavailable');
      }
      return batch.map((n) => `ok-${n}`);
    },
    settled: (n, out) => settled.push([n, out]),
    retryMs: 5,
    logger: silentLogger,
    ...(o.maxBatch !== undefined && { maxBatch: o.maxBatch }),
  });
  return {
    c,
    batches,
    settled,
    hold: () => {
      hold = true;
    },
    release: () => {
      hold = false;
      gate?.();
    },
  };
}

const until = async (cond: () => boolean) => {
  for (let i = 0; i < 400 && !cond(); i++) await tick();
  expect(cond()).toBe(true);
};

describe('GroupCommitter', () => {
  it('puts everything that arrives during a commit into the next one', async () => {
    const r = rig();
    r.hold();
    r.c.add(1);
    await until(() => r.batches.length === 1);
    for (const n of [2, 3, 4]) r.c.add(n);
    r.release();
    await until(() => r.settled.length === 4);
    expect(r.batches).toEqual([[1], [2, 3, 4]]);
    expect(r.settled).toEqual([
      [1, 'ok-1'],
      [2, 'ok-2'],
      [3, 'ok-3'],
      [4, 'ok-4'],
    ]);
  });

  it('splits at maxBatch', async () => {
    const r = rig({ maxBatch: 2 });
    for (const n of [1, 2, 3, 4, 5]) r.c.add(n);
    await until(() => r.settled.length === 5);
    expect(r.batches).toEqual([[1, 2], [3, 4], [5]]);
  });

  it('retries a batch whose commit threw, whole and ahead of newer items, and drops nothing', async () => {
    const r = rig({ failFirst: 2 });
    r.c.add(1);
    r.c.add(2);
    await until(() => r.batches.length >= 1);
    r.c.add(3);
    await until(() => r.settled.length === 3);
    expect(r.batches.slice(0, 3)).toEqual([
      [1, 2],
      [1, 2, 3],
      [1, 2, 3],
    ]);
    expect(r.settled.map(([n]) => n)).toEqual([1, 2, 3]);
    expect(r.c.stats).toMatchObject({ failures: 2, commits: 1, items: 3 });
  });

  it("keeps settling the rest of a batch when one item's bookkeeping throws", async () => {
    const seen: number[] = [];
    const c = new GroupCommitter<number, string>({
      commit: async (b) => b.map(String),
      settled: (n) => {
        seen.push(n);
        if (n === 2) throw new Error('boom');
      },
      logger: silentLogger,
    });
    for (const n of [1, 2, 3]) c.add(n);
    await until(() => seen.length === 3);
    expect(seen).toEqual([1, 2, 3]);
  });

  it('after stop, commits nothing more (queued results stay unacknowledged for their agents to re-send)', async () => {
    const r = rig({ failFirst: 1 });
    r.c.add(1);
    await until(() => r.batches.length === 1);
    r.c.stop();
    r.c.add(2);
    await new Promise((res) => setTimeout(res, 50));
    expect(r.batches).toEqual([[1]]);
    expect(r.settled).toEqual([]);
  });
});
