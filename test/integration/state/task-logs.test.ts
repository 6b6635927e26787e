import { afterAll, describe, expect, it } from 'vitest';
import { LOG_CHUNK_BYTES, LOG_RING_BYTES } from '../../../src/api/data-api.ts';
import { silentLogger } from '../../../src/lib/log.ts';
import { type Fence, FencedError, type StateStore } from '../../../src/state/index.ts';
import { followLog, readLog, TaskLogWriter } from '../../../src/state/task-logs.ts';
import { testStore } from './helpers.ts';

// Task logs in a real etcd: batched writes, the ring's bound kept across
// leaders, a stale leader refused, a follower that sees lines as they land.

const stores: StateStore[] = [];
const open = () => {
  const s = testStore();
  stores.push(s);
  return s;
};
afterAll(() => {
  for (const s of stores) s.close();
});
const ref = (task: string, attempt = 1) => ({ namespace: 'ns', workflow: 'wf', task, attempt });
const lines = (from: number, n: number, width = 100) =>
  Array.from({ length: n }, (_, i) => ({ timeMs: Date.UTC(2026, 0, 1), text: `l${from + i} ${'z'.repeat(width)}` }));
const revision = async (s: StateStore) => Number((await s.client.get(s.key('probe')).exec()).header.revision);

describe('task logs in etcd', () => {
  it('batches many attempts’ lines into few transactions and reads them back in order', async () => {
    const store = open();
    const w = new TaskLogWriter(store, () => [], silentLogger);
    const before = await revision(store);
    for (let i = 0; i < 50; i++) for (const t of ['a', 'b', 'c']) w.append(ref(t), lines(i, 1, 10), false);
    await w.flush();
    // 150 lines of three attempts: one transaction (a revision), not one write per line.
    expect((await revision(store)) - before).toBe(1);
    const a = await readLog(store, ref('a'));
    expect(a.text.trimEnd().split('\n')).toEqual(lines(0, 50, 10).map((l) => `2026-01-01T00:00:00.000Z ${l.text}`));
    expect(a).toMatchObject({ dropped: false, ended: false });
  });

  it('keeps the last LOG_RING_BYTES, also when a new leader’s writer takes over the attempt', async () => {
    const store = open();
    const first = new TaskLogWriter(store, () => [], silentLogger);
    // 300 KiB in 3 KiB appends, flushed each time: chunks pile up and the oldest go.
    for (let i = 0; i < 100; i++) {
      first.append(ref('big'), lines(i * 30, 30, 100 - 30), false);
      await first.flush();
    }
    const one = await readLog(store, ref('big'));
    expect(one.dropped).toBe(true);
    expect(Buffer.byteLength(one.text)).toBeLessThanOrEqual(LOG_RING_BYTES);
    expect(Buffer.byteLength(one.text)).toBeGreaterThan(LOG_RING_BYTES - 2 * LOG_CHUNK_BYTES);
    expect(one.text.trimEnd().split('\n').at(-1)).toContain(' l2999 ');
    // A new leader: its writer knows nothing, reads what is there, goes on after the last chunk.
    const second = new TaskLogWriter(store, () => [], silentLogger);
    second.append(ref('big'), lines(3000, 2000, 100), true);
    await second.flush();
    const two = await readLog(store, ref('big'));
    expect(two).toMatchObject({ dropped: true, ended: true });
    expect(two.lastSeq).toBeGreaterThan(one.lastSeq);
    expect(Buffer.byteLength(two.text)).toBeLessThanOrEqual(LOG_RING_BYTES);
    const kept = two.text.trimEnd().split('\n');
    expect(kept.at(-1)).toContain(' l4999 ');
    // In order, no line twice, none missing between the first kept and the last.
    const nums = kept.map((l) => Number(/ l(\d+) /.exec(l)?.[1]));
    expect(nums).toEqual(nums.map((_, i) => (nums[0] as number) + i));
    // Appends after the end are ignored.
    second.append(ref('big'), lines(9000, 1), false);
    await second.flush();
    expect((await readLog(store, ref('big'))).lastSeq).toBe(two.lastSeq);
  });

  it('flushFor waits for an attempt’s lines, also when the flush carrying them is already under way', async () => {
    const store = open();
    const w = new TaskLogWriter(store, () => [], silentLogger);
    expect(w.flushFor(ref('none'))).toBeUndefined();
    w.append(ref('racing'), lines(0, 3, 5), true);
    const underWay = w.flush(); // the timer's flush, started just before the result arrives
    const waiting = w.flushFor(ref('racing'));
    expect(waiting, 'the result must wait for the transaction under way').toBeDefined();
    await waiting;
    expect((await readLog(store, ref('racing'))).text.trimEnd().split('\n')).toHaveLength(3);
    await underWay;
    expect(w.flushFor(ref('racing'))).toBeUndefined();
  });

  it('refuses a deposed leader’s writes (FencedError) and writes nothing', async () => {
    const store = open();
    const fenceKey = store.key('fences', 'leader');
    await store.client.put(fenceKey).value('old');
    const old: Fence = { key: fenceKey, createRevision: (await store.get(fenceKey))?.createRevision ?? 0 };
    await store.client.delete().key(fenceKey);
    await store.client.put(fenceKey).value('new');
    const w = new TaskLogWriter(store, () => [old], silentLogger);
    w.append(ref('f'), lines(0, 3), true);
    await expect(w.flush()).rejects.toBeInstanceOf(FencedError);
    expect(await readLog(store, ref('f'))).toMatchObject({ text: '', ended: false, lastSeq: -1 });
  });

  it('follows an attempt: each chunk as it lands, until the end mark', async () => {
    const store = open();
    const w = new TaskLogWriter(store, () => [], silentLogger);
    w.append(ref('live'), lines(0, 2, 5), false);
    await w.flush();
    const start = await readLog(store, ref('live'));
    const got: string[] = [];
    const abort = new AbortController();
    const following = followLog(
      store,
      ref('live'),
      start,
      (t) => got.push(t),
      new Promise(() => undefined),
      abort.signal,
    );
    for (let i = 2; i < 5; i++) {
      w.append(ref('live'), lines(i, 1, 5), false);
      await w.flush();
      await expect.poll(() => got.length, { timeout: 5_000 }).toBe(i - 1);
    }
    w.append(ref('live'), lines(5, 1, 5), true);
    await w.flush();
    await following;
    expect(got.join('')).toBe(
      lines(2, 4, 5)
        .map((l) => `2026-01-01T00:00:00.000Z ${l.text}\n`)
        .join(''),
    );
  });
});
