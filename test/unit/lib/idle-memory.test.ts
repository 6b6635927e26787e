import { runInNewContext } from 'node:vm';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AgentConfigError, createAgent } from '../../../src/agent/index.ts';
import { IdleMemoryRelease, memoryReducingGc } from '../../../src/lib/idle-memory.ts';

describe('IdleMemoryRelease', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  const rig = (heapUsed = 0) => {
    const calls = { gc: 0 };
    const release = new IdleMemoryRelease({
      idleMs: 1_000,
      maxHeapBytes: 100,
      gc: () => calls.gc++,
      heapUsed: () => heapUsed,
    });
    return { release, calls };
  };

  it('releases once after a quiet spell that follows activity, and not again until there is more', () => {
    const { release, calls } = rig();
    vi.advanceTimersByTime(10_000);
    expect(calls.gc).toBe(0); // no work yet, nothing to give back
    release.activity();
    vi.advanceTimersByTime(999);
    expect(calls.gc).toBe(0);
    vi.advanceTimersByTime(1);
    expect(calls.gc).toBe(1);
    vi.advanceTimersByTime(10_000);
    expect(calls.gc).toBe(1);
    release.activity();
    vi.advanceTimersByTime(1_000);
    expect(release.counts).toEqual({ released: 2, skipped: 0 });
  });

  it('waits while work goes on and releases within two spells of the last activity', () => {
    const { release, calls } = rig();
    for (let t = 0; t < 5_000; t += 100) {
      release.activity();
      vi.advanceTimersByTime(100);
    }
    expect(calls.gc).toBe(0);
    vi.advanceTimersByTime(2_000);
    expect(calls.gc).toBe(1);
  });

  it('skips a heap over the limit: its pause would be long and the heap is the working set', () => {
    const { release, calls } = rig(101);
    release.activity();
    vi.advanceTimersByTime(1_000);
    expect(calls.gc).toBe(0);
    expect(release.counts).toEqual({ released: 0, skipped: 1 });
  });

  it('does nothing once stopped', () => {
    const { release, calls } = rig();
    release.activity();
    release.stop();
    release.activity();
    vi.advanceTimersByTime(5_000);
    expect(calls.gc).toBe(0);
  });
});

describe('memoryReducingGc', () => {
  it('gives the heap a burst grew back to the OS, without exposing gc to contexts made later', () => {
    const hadGc = typeof globalThis.gc === 'function';
    let keep: { i: number; s: string }[] = [];
    for (let i = 0; i < 2_000_000; i++) {
      keep.push({ i, s: `item-${i}` });
      if (keep.length > 50_000) keep = keep.slice(25_000);
    }
    keep = [];
    const before = process.memoryUsage().rss;
    memoryReducingGc();
    const after = process.memoryUsage().rss;
    expect(after).toBeLessThan(before - 20 * 2 ** 20);
    if (!hadGc) {
      expect(runInNewContext('typeof gc')).toBe('undefined');
      expect(globalThis.gc).toBeUndefined();
    }
  });
});

describe('createAgent releaseMemoryWhenIdle', () => {
  it('refuses a value that is not a boolean, naming the option', () => {
    const opts = {
      dispatcher: '127.0.0.1:1',
      capacity: 1,
      handlers: { echo: () => null },
      releaseMemoryWhenIdle: 'yes' as unknown as boolean,
    };
    expect(() => createAgent(opts)).toThrow(
      new AgentConfigError('AgentOptions.releaseMemoryWhenIdle', 'must be a boolean, got "yes"'),
    );
  });
});
