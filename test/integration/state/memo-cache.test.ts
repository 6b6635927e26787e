import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import {
  type Fence,
  FencedError,
  MAX_MEMO_BYTES,
  MAX_MEMO_ENTRIES,
  MAX_MEMO_OUTPUT_BYTES,
  MemoCache,
  type MemoEntry,
  MemoTooLargeError,
  StateDecodeError,
  type StateStore,
} from '../../../src/state/index.ts';
import { memoHash } from '../../../src/state/memo-cache.ts';
import { testStore } from './helpers.ts';

// Memoized outputs in a real etcd: hits, misses and ages; the per-namespace bounds by count and bytes
// (oldest by createdAt first, also for a new leader that reads the index from etcd); fences; and an
// entry that is not what the cache wrote.

const stores: StateStore[] = [];
const open = (prefix?: string) => {
  const s = testStore(prefix);
  stores.push(s);
  return s;
};
afterAll(async () => {
  // Some cases write tens of MiB: leave the shared etcd as small as we found it.
  for (const s of stores) await s.client.delete().prefix(`${s.prefix}/memo/`);
  for (const s of stores) s.close();
});

const T0 = Date.UTC(2026, 0, 1);
const at = (seconds: number) => new Date(T0 + seconds * 1000).toISOString();
const entry = (key: string, createdAtSeconds: number, output: unknown = { for: key }): MemoEntry => ({
  key,
  output,
  createdAt: at(createdAtSeconds),
  workflow: 'wf',
  task: 'summarize',
  attempt: 1,
  agentId: 'agent-a',
});
const keysOf = async (memo: MemoCache, ns: string) => new Set((await memo.list(ns)).map((s) => s.key));

/** Runs `fn` over `items` with `width` calls in flight. */
async function inParallel<T>(items: T[], width: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < items.length) {
        const item = items[next++] as T;
        await fn(item);
      }
    }),
  );
}

/** A fence of a leader that was deposed (its key deleted and created again by the next), and the current one. */
async function fences(store: StateStore, name: string): Promise<{ stale: Fence; current: Fence }> {
  const key = store.key('fences', name);
  await store.client.put(key).value('old leader');
  const stale = { key, createRevision: (await store.get(key))?.createRevision ?? 0 };
  await store.client.delete().key(key);
  await store.client.put(key).value('new leader');
  const current = { key, createRevision: (await store.get(key))?.createRevision ?? 0 };
  expect(current.createRevision).not.toBe(stale.createRevision);
  return { stale, current };
}

/**
 * Fills `ns` with `entries`: the first put alone (it reads the namespace's index), the rest `width` at a
 * time. Puts in parallel from the very first have a case of their own.
 */
async function fill(memo: MemoCache, ns: string, entries: MemoEntry[], width = 16): Promise<void> {
  const [first, ...rest] = entries;
  if (first) await memo.put(ns, first);
  await inParallel(rest, width, (e) => memo.put(ns, e));
}

describe('memo cache in etcd', () => {
  it('returns what was put; another key or namespace misses; maxAgeSeconds tells fresh from stale', async () => {
    const memo = new MemoCache(open());
    const e = entry('summarize:{"doc":1}', 0, { summary: 'short', tokens: [1, 2, 3] });
    await memo.put('team-a', e);
    expect(await memo.get('team-a', e.key)).toEqual(e);
    expect(await memo.get('team-a', 'summarize:{"doc":2}')).toBeUndefined();
    expect(await memo.get('team-b', e.key)).toBeUndefined();
    // Created at T0: 59 s later it is within 60 s, 61 s later it is not.
    expect(await memo.get('team-a', e.key, 60, T0 + 59_000)).toEqual(e);
    expect(await memo.get('team-a', e.key, 60, T0 + 61_000)).toBeUndefined();
  });

  it('a put of the same key replaces the entry: one listed, the newer output, counted once toward the bound', async () => {
    const memo = new MemoCache(open());
    await memo.put('ns', entry('k', 0, 'first'));
    await memo.put('ns', entry('k', 10, 'second'));
    const listed = await memo.list('ns');
    expect(listed).toHaveLength(1);
    expect(listed[0]).toMatchObject({
      key: 'k',
      createdAt: at(10),
      bytes: Buffer.byteLength(JSON.stringify(entry('k', 10, 'second'))),
    });
    expect(listed[0]).not.toHaveProperty('output');
    expect((await memo.get('ns', 'k'))?.output).toBe('second');
    // 90 replacements of a ~200 KiB entry (18 MB written, more than MAX_MEMO_BYTES) hold one entry's
    // bytes: the oldest entry of the namespace, a small one, stays.
    await memo.put('ns', entry('small', -100));
    const big = 'x'.repeat(200 * 1024);
    for (let i = 0; i < 90; i++) await memo.put('ns', entry('big', 100 + i, big));
    expect(await keysOf(memo, 'ns')).toEqual(new Set(['k', 'small', 'big']));
    expect((await memo.get('ns', 'big'))?.createdAt).toBe(at(189));
  });

  it('keeps an output just under MAX_MEMO_OUTPUT_BYTES', async () => {
    const memo = new MemoCache(open());
    // A string's JSON is its characters and two quotes.
    const under = 'x'.repeat(MAX_MEMO_OUTPUT_BYTES - 3);
    expect(Buffer.byteLength(JSON.stringify(under))).toBe(MAX_MEMO_OUTPUT_BYTES - 1);
    await memo.put('ns', entry('under', 0, under));
    expect((await memo.get('ns', 'under'))?.output).toBe(under);
  });

  it('refuses an output over MAX_MEMO_OUTPUT_BYTES (bytes, not characters) with MemoTooLargeError and writes nothing', async () => {
    const memo = new MemoCache(open());
    await memo.put('ns', entry('small', 0));
    const over = 'x'.repeat(MAX_MEMO_OUTPUT_BYTES - 1);
    expect(Buffer.byteLength(JSON.stringify(over))).toBe(MAX_MEMO_OUTPUT_BYTES + 1);
    await expect(memo.put('ns', entry('over', 1, over))).rejects.toBeInstanceOf(MemoTooLargeError);
    // Half as many characters as the bound, each two bytes in UTF-8.
    const wide = 'é'.repeat(MAX_MEMO_OUTPUT_BYTES / 2);
    await expect(memo.put('ns', entry('wide', 2, wide))).rejects.toBeInstanceOf(MemoTooLargeError);
    // Nor does a refused replacement touch the entry already there.
    await expect(memo.put('ns', entry('small', 3, over))).rejects.toBeInstanceOf(MemoTooLargeError);
    expect(await memo.get('ns', 'over')).toBeUndefined();
    expect(await memo.get('ns', 'wide')).toBeUndefined();
    expect(await memo.get('ns', 'small')).toEqual(entry('small', 0));
    expect(await keysOf(memo, 'ns')).toEqual(new Set(['small']));
  });

  it(`evicts by count: ${MAX_MEMO_ENTRIES + 5} puts leave ${MAX_MEMO_ENTRIES}, without the 5 oldest by createdAt`, async () => {
    const memo = new MemoCache(open());
    const n = MAX_MEMO_ENTRIES + 5;
    // createdAt is a permutation of the write order: the first written are among the newest, the
    // oldest are written in between, so evicting in write order would take the wrong ones.
    const age = (i: number) => (i * 389 + 1000) % n;
    const written = Array.from({ length: n }, (_, i) => entry(`k${i}`, age(i)));
    const oldest = written.filter((_, i) => age(i) < 5).map((e) => e.key);
    expect(oldest).toHaveLength(5);
    expect(oldest.filter((k) => ['k0', 'k1', 'k2', 'k3', 'k4'].includes(k))).toEqual([]);
    const started = performance.now();
    await fill(memo, 'ns', written);
    const ms = performance.now() - started;
    const listed = await memo.list('ns');
    expect(listed).toHaveLength(MAX_MEMO_ENTRIES);
    expect(new Set(listed.map((s) => s.key))).toEqual(
      new Set(written.filter((e) => !oldest.includes(e.key)).map((e) => e.key)),
    );
    // Newest first.
    expect(listed.map((s) => s.createdAt)).toEqual(
      listed
        .map((s) => s.createdAt)
        .sort()
        .reverse(),
    );
    console.log(`memo-cache: ${n} puts in ${Math.round(ms)} ms`);
  });

  it('evicts by bytes: ~200 KiB entries keep the namespace within MAX_MEMO_BYTES, the oldest gone', async () => {
    const memo = new MemoCache(open());
    const n = 90;
    const big = 'x'.repeat(200 * 1024);
    const age = (i: number) => (i * 7 + 3) % n;
    // Keys of one length: every entry has the same size.
    const written = Array.from({ length: n }, (_, i) => entry(`big${String(i).padStart(3, '0')}`, age(i), big));
    const size = Buffer.byteLength(JSON.stringify(written[0]));
    const fits = Math.floor(MAX_MEMO_BYTES / size);
    expect(fits).toBeLessThan(n);
    await fill(memo, 'ns', written, 4);
    const listed = await memo.list('ns');
    expect(listed.reduce((sum, s) => sum + s.bytes, 0)).toBeLessThanOrEqual(MAX_MEMO_BYTES);
    // As many as fit, no fewer, and the newest of them.
    expect(listed).toHaveLength(fits);
    expect(new Set(listed.map((s) => s.key))).toEqual(
      new Set(written.filter((_, i) => age(i) >= n - fits).map((e) => e.key)),
    );
  });

  it('a new leader’s MemoCache reads what is there from etcd and evicts the oldest of it', async () => {
    const prefix = `/test-memo-${randomBytes(4).toString('hex')}`;
    const first = new MemoCache(open(prefix));
    await fill(
      first,
      'ns',
      Array.from({ length: MAX_MEMO_ENTRIES }, (_, i) => entry(`k${i}`, 10 + i)),
    );
    const second = new MemoCache(open(prefix));
    for (let i = 0; i < 3; i++) await second.put('ns', entry(`new${i}`, 5000 + i));
    // Older than anything there: kept by nobody.
    await second.put('ns', entry('ancient', 0));
    const kept = await keysOf(second, 'ns');
    expect(kept.size).toBe(MAX_MEMO_ENTRIES);
    for (const k of ['k0', 'k1', 'k2', 'ancient']) expect(kept.has(k)).toBe(false);
    for (const k of ['k3', 'new0', 'new1', 'new2']) expect(kept.has(k)).toBe(true);
  });

  it('a new leader’s first puts, all at once on a full namespace, keep it at the bound', async () => {
    const prefix = `/test-memo-${randomBytes(4).toString('hex')}`;
    const first = new MemoCache(open(prefix));
    const old = Array.from({ length: MAX_MEMO_ENTRIES }, (_, i) => entry(`k${i}`, 10 + i));
    await fill(first, 'ns', old);
    // Tasks finishing together on a leader that has not read the namespace yet.
    const second = new MemoCache(open(prefix));
    const newer = Array.from({ length: 20 }, (_, i) => entry(`new${i}`, 5000 + i));
    await Promise.all(newer.map((e) => second.put('ns', e)));
    const expected = new Set([...old.slice(20), ...newer].map((e) => e.key));
    expect(await keysOf(second, 'ns')).toEqual(expected);
    // And what it knows afterwards is what is there: one more put evicts exactly one.
    await second.put('ns', entry('later', 9000));
    expected.delete('k20');
    expected.add('later');
    expect(await keysOf(second, 'ns')).toEqual(expected);
  });

  it('a fresh MemoCache’s first puts in parallel, ~200 KiB each, keep the namespace within MAX_MEMO_BYTES', async () => {
    const store = open();
    const memo = new MemoCache(store);
    const big = 'x'.repeat(200 * 1024);
    const written = Array.from({ length: 90 }, (_, i) => entry(`big${String(i).padStart(3, '0')}`, i, big));
    // Tasks finishing together on a leader that has not read the namespace yet: no put goes first.
    await inParallel(written, 4, (e) => memo.put('ns', e));
    const listed = await memo.list('ns');
    expect(listed.reduce((sum, s) => sum + s.bytes, 0)).toBeLessThanOrEqual(MAX_MEMO_BYTES);
    const fits = Math.floor(MAX_MEMO_BYTES / Buffer.byteLength(JSON.stringify(written[0])));
    expect(new Set(listed.map((s) => s.key))).toEqual(new Set(written.slice(-fits).map((e) => e.key)));
  });

  it('namespaces are separate: filling one evicts nothing of another; clear(ns) and clear(ns, key)', async () => {
    const memo = new MemoCache(open());
    // team-a's entries are older than all of team-b's: a bound shared across namespaces would take them first.
    for (const [i, k] of ['a1', 'a2', 'a3'].entries()) await memo.put('team-a', entry(k, i));
    await memo.put('team', entry('t', 0));
    await fill(
      memo,
      'team-b',
      Array.from({ length: MAX_MEMO_ENTRIES + 1 }, (_, i) => entry(`b${i}`, 100 + i)),
    );
    expect(await keysOf(memo, 'team-a')).toEqual(new Set(['a1', 'a2', 'a3']));
    expect(await memo.list('team-b')).toHaveLength(MAX_MEMO_ENTRIES);
    expect(await memo.clear('team-b')).toBe(MAX_MEMO_ENTRIES);
    expect(await memo.list('team-b')).toEqual([]);
    // A namespace whose name begins another's is still another namespace.
    expect(await memo.clear('team')).toBe(1);
    expect(await keysOf(memo, 'team-a')).toEqual(new Set(['a1', 'a2', 'a3']));
    expect(await memo.clear('team-a', 'a2')).toBe(1);
    expect(await memo.clear('team-a', 'a2')).toBe(0);
    expect(await memo.clear('team-a', 'never-put')).toBe(0);
    expect(await keysOf(memo, 'team-a')).toEqual(new Set(['a1', 'a3']));
    expect(await memo.get('team-a', 'a2')).toBeUndefined();
  });

  it('a put or clear under a fence that no longer holds throws FencedError and changes nothing', async () => {
    const store = open();
    const memo = new MemoCache(store);
    const { stale, current } = await fences(store, 'leader');
    await memo.put('ns', entry('kept', 0, 'by the current leader'), [current]);
    await expect(memo.put('ns', entry('late', 1), [stale])).rejects.toBeInstanceOf(FencedError);
    await expect(memo.put('ns', entry('kept', 2, 'by the deposed leader'), [stale])).rejects.toBeInstanceOf(
      FencedError,
    );
    await expect(memo.clear('ns', 'kept', [stale])).rejects.toBeInstanceOf(FencedError);
    await expect(memo.clear('ns', undefined, [stale])).rejects.toBeInstanceOf(FencedError);
    expect(await memo.get('ns', 'late')).toBeUndefined();
    expect(await memo.get('ns', 'kept')).toEqual(entry('kept', 0, 'by the current leader'));
    expect(await keysOf(memo, 'ns')).toEqual(new Set(['kept']));
    // The current leader's fence lets the same clear through.
    expect(await memo.clear('ns', 'kept', [current])).toBe(1);
  });

  it('an entry that is not what the cache wrote: get names what it expected, eviction takes it first', async () => {
    const store = open();
    const memo = new MemoCache(store);
    const garbled = store.key('memo', 'ns', memoHash('garbled'));
    const half = store.key('memo', 'ns', memoHash('half'));
    await store.client.put(garbled).value('{"key": "garbled", "output": ');
    await store.client.put(half).value(JSON.stringify({ key: 'half', output: 1 }));
    await expect(memo.get('ns', 'garbled')).rejects.toBeInstanceOf(StateDecodeError);
    await expect(memo.get('ns', 'garbled')).rejects.toThrow(
      /is not JSON .*expected a memoized output \{key, output, createdAt, workflow, task, attempt\}/,
    );
    await expect(memo.get('ns', 'half')).rejects.toThrow(
      /is not a memoized output \{key, output, createdAt, workflow, task, attempt\}/,
    );
    // MAX_MEMO_ENTRIES good ones, all readable: the two unreadable ones go, every good one stays.
    const good = Array.from({ length: MAX_MEMO_ENTRIES }, (_, i) => entry(`k${i}`, i));
    await fill(memo, 'ns', good);
    expect(await store.get(garbled)).toBeUndefined();
    expect(await store.get(half)).toBeUndefined();
    expect(await keysOf(memo, 'ns')).toEqual(new Set(good.map((e) => e.key)));
  });
});
