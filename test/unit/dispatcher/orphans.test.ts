import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { MAX_ORPHANS, ORPHAN_WAIT_MS, OrphanResults } from '../../../src/dispatcher/orphans.ts';

// Results held for an attempt whose claim went with its agent's lease, until the task is queued
// again: bounded in number and in time, told once of each that waited out its time, and never
// taking the place of a result a live stream still holds.

interface Orphan {
  conn: { closed: boolean };
  id: string;
}

const orphan = (id: string, closed = false): Orphan => ({ conn: { closed }, id });

function book(opts: { waitMs?: number; max?: number } = {}) {
  const expired: string[] = [];
  const b = new OrphanResults<Orphan>((o) => expired.push(o.id), opts);
  return { b, expired };
}

describe('OrphanResults', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('holds an orphan until taken, and a taken one never expires', () => {
    const { b, expired } = book({ waitMs: 1_000 });
    const o = orphan('o1');
    expect(b.park('ns/wf/t', o)).toBe(true);
    expect(b.size).toBe(1);
    expect(b.take('ns/wf/t')).toBe(o);
    expect(b.size).toBe(0);
    expect(b.take('ns/wf/t')).toBeUndefined();
    vi.advanceTimersByTime(10_000);
    expect(expired).toEqual([]);
  });

  it('tells `expired` exactly once when an orphan waits out waitMs, and forgets it', () => {
    const { b, expired } = book({ waitMs: 1_000 });
    b.park('k', orphan('o1'));
    vi.advanceTimersByTime(999);
    expect(expired).toEqual([]);
    expect(b.size).toBe(1);
    vi.advanceTimersByTime(1);
    expect(expired).toEqual(['o1']);
    expect(b.size).toBe(0);
    expect(b.take('k')).toBeUndefined();
    vi.advanceTimersByTime(60_000);
    expect(expired).toEqual(['o1']);
  });

  it('waits ORPHAN_WAIT_MS by default', () => {
    const { b, expired } = book();
    b.park('k', orphan('o1'));
    vi.advanceTimersByTime(ORPHAN_WAIT_MS - 1);
    expect(expired).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(expired).toEqual(['o1']);
  });

  it('holds up to MAX_ORPHANS by default', () => {
    vi.useRealTimers(); // ten thousand fake timers are slow; the real ones are unref'd and cleared by close()
    const { b, expired } = book();
    for (let i = 0; i < MAX_ORPHANS; i++) expect(b.park(`k${i}`, orphan(`o${i}`))).toBe(true);
    expect(b.park('one-more', orphan('x'))).toBe(false);
    expect(b.size).toBe(MAX_ORPHANS);
    b.close();
    expect(expired).toEqual([]);
  });

  it('refuses a new key once `max` are held, and takes one again when room is made', () => {
    const { b } = book({ max: 2 });
    expect(b.park('a', orphan('a'))).toBe(true);
    expect(b.park('b', orphan('b'))).toBe(true);
    expect(b.park('c', orphan('c'))).toBe(false);
    expect(b.size).toBe(2);
    expect(b.take('c')).toBeUndefined();
    b.take('a');
    expect(b.park('c', orphan('c'))).toBe(true);
    expect(b.take('c')?.id).toBe('c');
  });

  it('does not replace an orphan whose stream is still live', () => {
    const { b, expired } = book({ waitMs: 1_000 });
    const first = orphan('first');
    expect(b.park('k', first)).toBe(true);
    vi.advanceTimersByTime(500);
    expect(b.park('k', orphan('second'))).toBe(false);
    vi.advanceTimersByTime(500); // the first keeps its own deadline
    expect(expired).toEqual(['first']);
  });

  it("replaces a closed stream's orphan with a newer stream's, and only the newer one can expire", () => {
    const { b, expired } = book({ waitMs: 1_000 });
    const old = orphan('old');
    b.park('k', old);
    vi.advanceTimersByTime(600);
    old.conn.closed = true;
    const newer = orphan('newer');
    expect(b.park('k', newer)).toBe(true);
    expect(b.size).toBe(1);
    vi.advanceTimersByTime(400); // the old deadline passes: nothing is told of the replaced one
    expect(expired).toEqual([]);
    vi.advanceTimersByTime(600);
    expect(expired).toEqual(['newer']);
  });

  it('replaces a closed stream’s orphan even when the book is full', () => {
    const { b } = book({ max: 1 });
    const old = orphan('old');
    b.park('k', old);
    old.conn.closed = true;
    expect(b.park('k', orphan('newer'))).toBe(true);
    expect(b.take('k')?.id).toBe('newer');
  });

  it('drops everything on close without telling anyone, and holds nothing after', () => {
    const { b, expired } = book({ waitMs: 1_000 });
    b.park('a', orphan('a'));
    b.park('b', orphan('b'));
    b.close();
    expect(b.size).toBe(0);
    expect(b.take('a')).toBeUndefined();
    expect(b.park('c', orphan('c'))).toBe(false);
    vi.advanceTimersByTime(5_000);
    expect(expired).toEqual([]);
  });

  it('holds a key again after its orphan expired, with a fresh deadline', () => {
    const { b, expired } = book({ waitMs: 1_000 });
    b.park('k', orphan('o1'));
    vi.advanceTimersByTime(1_000);
    expect(b.park('k', orphan('o2'))).toBe(true);
    vi.advanceTimersByTime(999);
    expect(expired).toEqual(['o1']);
    vi.advanceTimersByTime(1);
    expect(expired).toEqual(['o1', 'o2']);
  });
});
