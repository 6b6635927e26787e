import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { WorkQueue } from '../../../src/operator/kube/workqueue.ts';

/** Lets pending promise callbacks run (setImmediate is not faked). */
const flush = () => new Promise<void>((resolve) => setImmediate(resolve));

/** Tracks whether a promise has settled, and with what. */
function track<T>(p: Promise<T>): { settled: boolean; value: T | undefined } {
  const t: { settled: boolean; value: T | undefined } = { settled: false, value: undefined };
  void p.then((v) => {
    t.settled = true;
    t.value = v;
  });
  return t;
}

beforeEach(() => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
});

afterEach(() => {
  vi.useRealTimers();
});

describe('WorkQueue', () => {
  it('de-duplicates a key added several times', async () => {
    const q = new WorkQueue();
    q.add('a');
    q.add('a');
    q.add('a');
    expect(q.length).toBe(1);
    expect(await q.get()).toBe('a');
    expect(q.length).toBe(0);
    const next = track(q.get());
    await flush();
    expect(next.settled).toBe(false);
    q.done('a');
    await flush();
    expect(next.settled).toBe(false);
    await q.shutDown();
    await flush();
    expect(next).toEqual({ settled: true, value: undefined });
  });

  it('hands out keys in FIFO order; re-adding a queued key does not move it', async () => {
    const q = new WorkQueue();
    for (const k of ['a', 'b', 'c', 'a', 'b']) q.add(k);
    expect(q.length).toBe(3);
    const got: (string | undefined)[] = [];
    for (let i = 0; i < 3; i++) got.push(await q.get());
    expect(got).toEqual(['a', 'b', 'c']);
  });

  it('hands a key added to an idle waiting worker directly', async () => {
    const q = new WorkQueue();
    const w = track(q.get());
    await flush();
    expect(w.settled).toBe(false);
    q.add('x');
    await flush();
    expect(w).toEqual({ settled: true, value: 'x' });
    expect(q.processingCount).toBe(1);
    expect(q.length).toBe(0);
  });

  it('does not hand a key being processed to a second worker; re-queues it after done()', async () => {
    const q = new WorkQueue();
    q.add('a');
    expect(await q.get()).toBe('a');
    const second = track(q.get());
    q.add('a');
    q.add('a');
    await flush();
    expect(second.settled).toBe(false);
    expect(q.length).toBe(0);
    expect(q.processingCount).toBe(1);
    // A different key still goes to the waiting worker.
    q.add('b');
    await flush();
    expect(second).toEqual({ settled: true, value: 'b' });
    const third = track(q.get());
    await flush();
    expect(third.settled).toBe(false);
    q.done('a');
    await flush();
    // The two adds during processing collapse into one re-run.
    expect(third).toEqual({ settled: true, value: 'a' });
    q.done('a');
    q.done('b');
    expect(q.length).toBe(0);
    expect(q.processingCount).toBe(0);
  });

  it('re-queues a key added during processing at the end of the queue when no worker waits', async () => {
    const q = new WorkQueue();
    q.add('a');
    expect(await q.get()).toBe('a');
    q.add('a');
    q.add('b');
    expect(q.length).toBe(1);
    q.done('a');
    expect(q.length).toBe(2);
    expect(await q.get()).toBe('b');
    expect(await q.get()).toBe('a');
  });

  it('addAfter makes the key available only after the delay', async () => {
    const q = new WorkQueue();
    q.addAfter('a', 30);
    expect(q.length).toBe(0);
    expect(q.delayedCount).toBe(1);
    vi.advanceTimersByTime(29);
    expect(q.length).toBe(0);
    vi.advanceTimersByTime(1);
    expect(q.length).toBe(1);
    expect(q.delayedCount).toBe(0);
    expect(await q.get()).toBe('a');
  });

  it('addAfter with a non-positive delay adds at once', () => {
    const q = new WorkQueue();
    q.addAfter('a', 0);
    q.addAfter('b', -5);
    expect(q.length).toBe(2);
    expect(q.delayedCount).toBe(0);
  });

  it('an earlier pending addAfter wins over a later one', async () => {
    const q = new WorkQueue();
    q.addAfter('a', 30);
    q.addAfter('a', 100); // dropped: the pending add is earlier
    expect(q.delayedCount).toBe(1);
    vi.advanceTimersByTime(30);
    expect(q.length).toBe(1);
    expect(await q.get()).toBe('a');
    q.done('a');
    vi.advanceTimersByTime(200);
    expect(q.length).toBe(0);
  });

  it('a later addAfter with a shorter delay replaces the pending one', async () => {
    const q = new WorkQueue();
    q.addAfter('a', 100);
    vi.advanceTimersByTime(10);
    q.addAfter('a', 30); // due at 40 < 100
    expect(q.delayedCount).toBe(1);
    vi.advanceTimersByTime(29);
    expect(q.length).toBe(0);
    vi.advanceTimersByTime(1);
    expect(q.length).toBe(1);
    expect(await q.get()).toBe('a');
    q.done('a');
    // The replaced 100 ms timer does not fire any more.
    vi.advanceTimersByTime(200);
    expect(q.length).toBe(0);
    expect(q.delayedCount).toBe(0);
  });

  it('backs off exponentially per key and forget() resets it', () => {
    const q = new WorkQueue();
    expect([q.when('a'), q.when('a'), q.when('a'), q.when('a')]).toEqual([5, 10, 20, 40]);
    expect(q.failuresOf('a')).toBe(4);
    expect(q.when('b')).toBe(5);
    q.forget('a');
    expect(q.failuresOf('a')).toBe(0);
    expect(q.when('a')).toBe(5);
    expect(q.when('b')).toBe(10);
  });

  it('caps the per-key back-off at maxDelayMs', () => {
    const q = new WorkQueue({ baseDelayMs: 5, maxDelayMs: 30 });
    expect([q.when('a'), q.when('a'), q.when('a'), q.when('a'), q.when('a')]).toEqual([5, 10, 20, 30, 30]);
  });

  it('addRateLimited adds the key after its back-off', () => {
    const q = new WorkQueue();
    q.addRateLimited('a'); // 5 ms
    vi.advanceTimersByTime(4);
    expect(q.length).toBe(0);
    vi.advanceTimersByTime(1);
    expect(q.length).toBe(1);
    expect(q.failuresOf('a')).toBe(1);
  });

  it('holds retries to the token bucket once the burst is spent', () => {
    const q = new WorkQueue({ qps: 10, burst: 2 });
    expect(q.when('a')).toBe(5);
    expect(q.when('b')).toBe(5);
    expect(q.when('c')).toBeCloseTo(100, 6);
    expect(q.when('d')).toBeCloseTo(200, 6);
    // Tokens refill at 10/s up to the burst.
    vi.advanceTimersByTime(1000);
    expect(q.when('e')).toBe(5);
    expect(q.when('f')).toBe(5);
    expect(q.when('g')).toBeCloseTo(100, 6);
  });

  it('shutDown resolves waiting get()s with undefined and waits for keys in progress', async () => {
    const q = new WorkQueue();
    q.add('a');
    expect(await q.get()).toBe('a');
    const w1 = track(q.get());
    const w2 = track(q.get());
    q.addAfter('later', 10);
    const down = track(q.shutDown());
    await flush();
    expect(w1).toEqual({ settled: true, value: undefined });
    expect(w2).toEqual({ settled: true, value: undefined });
    expect(q.isShuttingDown).toBe(true);
    expect(q.delayedCount).toBe(0);
    expect(down.settled).toBe(false);
    // Adds after shut-down are ignored; get() returns undefined at once.
    q.add('b');
    q.addAfter('c', 5);
    expect(q.length).toBe(0);
    expect(await q.get()).toBeUndefined();
    vi.advanceTimersByTime(50);
    expect(q.length).toBe(0);
    q.done('a');
    await flush();
    expect(down.settled).toBe(true);
  });

  it('shutDown resolves at once when nothing is in progress, dropping queued keys', async () => {
    const q = new WorkQueue();
    q.add('a');
    q.add('b');
    await q.shutDown();
    expect(q.length).toBe(0);
    expect(await q.get()).toBeUndefined();
  });
});
