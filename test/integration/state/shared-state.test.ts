import { afterAll, describe, expect, it } from 'vitest';
import {
  ConflictError,
  FencedError,
  Locks,
  MAX_VALUE_BYTES,
  ResumableWatch,
  SharedState,
  StateDecodeError,
  type StateStore,
  type Versioned,
} from '../../../src/state/index.ts';
import { testStore } from './helpers.ts';

const stores: StateStore[] = [];
const open = () => {
  const s = testStore(prefix);
  stores.push(s);
  return s;
};
const prefix = `/test-shared-${Date.now()}`;
afterAll(() => {
  for (const s of stores) s.close();
});

const scope = { kind: 'workflow', namespace: 'team-a', workflow: 'wf1' } as const;

describe('shared state', () => {
  // 250 each, not 500: with eight writers on one key each increment is retried about three times, and
  // 500 took 58.8 s of its 60 s on a clean-clone CI run; half as many prove exactly-once the same way.
  it('8 agents incrementing one counter 250 times each with CAS end at exactly 2000', async () => {
    const agents = Array.from({ length: 8 }, () => new SharedState(open(), scope));
    let conflicts = 0;
    await Promise.all(
      agents.map(async (state) => {
        for (let i = 0; i < 250; i++) {
          for (;;) {
            const cur = await state.get<number>('counter');
            try {
              await state.cas('counter', (cur?.value ?? 0) + 1, cur?.modRevision ?? 0);
              break;
            } catch (err) {
              if (!(err instanceof ConflictError)) throw err;
              conflicts++;
            }
          }
        }
      }),
    );
    expect((await agents[0]?.get('counter'))?.value).toBe(2000);
    expect((await agents[0]?.get('counter'))?.version).toBe(2000); // every increment applied exactly once
    console.log(`CAS counter: 2000 increments, ${conflicts} conflicts retried`);
  });

  it('cas refuses a stale revision and create-only on an existing key, naming both revisions', async () => {
    const state = new SharedState(open(), scope);
    const r1 = await state.cas('doc', { v: 1 }, 0);
    await expect(state.cas('doc', { v: 9 }, 0)).rejects.toThrow(
      `modified concurrently (expected modRevision 0, found ${r1})`,
    );
    const r2 = await state.cas('doc', { v: 2 }, r1);
    const stale = state.cas('doc', { v: 3 }, r1);
    await expect(stale).rejects.toBeInstanceOf(ConflictError);
    await expect(stale).rejects.toMatchObject({ expectedRevision: r1, actualRevision: r2 });
    expect((await state.get('doc'))?.value).toEqual({ v: 2 });
    await expect(state.delete('doc', r1)).rejects.toBeInstanceOf(ConflictError);
    expect(await state.delete('doc', r2)).toBe(true);
    expect(await state.get('doc')).toBeUndefined();
  });

  it('keeps scopes apart and lists by prefix', async () => {
    const s = open();
    const wf = new SharedState(s, scope);
    const other = new SharedState(s, { kind: 'workflow', namespace: 'team-a', workflow: 'wf2' });
    const pool = new SharedState(s, { kind: 'pool', namespace: 'team-a', pool: 'wf1' });
    await wf.put('notes/a', 'A');
    await wf.put('notes/b', 'B');
    await wf.put('other', 1);
    await other.put('notes/a', 'not mine');
    await pool.put('notes/a', 'pool');
    const { items } = await wf.list('notes/');
    expect(items.map((i) => [i.key, i.value])).toEqual([
      ['notes/a', 'A'],
      ['notes/b', 'B'],
    ]);
    // Counted within the scope and the prefix only ("notes/" is no prefix of "notes-x").
    await wf.put('notes-x', 'beside');
    expect([await wf.count('notes/'), await other.count('notes/'), await pool.count('notes/')]).toEqual([2, 1, 1]);
    await expect(wf.count('../x')).rejects.toThrow(RangeError);
  });

  it('returns the history of a key, newest first', async () => {
    const state = new SharedState(open(), scope);
    for (const v of ['draft', 'review', 'final']) await state.put('status', v);
    const h = await state.history('status');
    expect(h.map((x) => x.value)).toEqual(['final', 'review', 'draft']);
    expect(h[0]?.modRevision).toBeGreaterThan(h[1]?.modRevision ?? 0);
  });

  it('refuses bad keys, oversized values, and reports foreign data with its key', async () => {
    const s = open();
    const state = new SharedState(s, scope);
    await expect(state.put('a//b', 1)).rejects.toThrow('invalid state key "a//b"');
    await expect(state.put('big', 'x'.repeat(MAX_VALUE_BYTES))).rejects.toThrow(
      `value for "big" is ${MAX_VALUE_BYTES + 2} bytes of JSON; the limit is ${MAX_VALUE_BYTES}`,
    );
    await s.client.put(`${state.base}garbage`).value('{not json');
    const bad = state.get('garbage');
    await expect(bad).rejects.toBeInstanceOf(StateDecodeError);
    await expect(bad).rejects.toThrow(`${state.base}garbage: holds non-JSON data: {not json`);
  });

  it('refuses a fenced write once the lock that fenced it has a newer holder', async () => {
    const s = open();
    const locks = new Locks(s);
    const state = new SharedState(s, scope);
    const first = await s.session(5);
    const held = await locks.acquire('doc-lock', first);
    await state.put('fenced', 'by first', { fences: [held.fence] });
    await first.close(); // lease gone: the lock passes on
    const second = await s.session(5);
    const next = await locks.acquire('doc-lock', second);
    expect(next.token).toBeGreaterThan(held.token);
    await expect(state.put('fenced', 'late write', { fences: [held.fence] })).rejects.toBeInstanceOf(FencedError);
    await expect(state.cas('fenced', 'late cas', 0, { fences: [held.fence] })).rejects.toThrow('no longer held');
    expect((await state.get('fenced'))?.value).toBe('by first');
    await next.release();
    await second.close();
  });
});

describe('watch', () => {
  it('sees every change after revision R in order, and keeps going across a compaction', async () => {
    const s = open();
    const state = new SharedState(s, { kind: 'namespace', namespace: 'watched' });
    const r0 = await state.put('k/seed', 0);
    const seen: string[] = [];
    const w = await state.watch(
      'k/',
      r0 + 1,
      (e) => seen.push(`${e.type}:${e.key}=${JSON.stringify(e.json)}`),
      () => seen.push('resync'),
    );
    await state.put('k/a', 1);
    await state.put('k/b', 2);
    await state.delete('k/a');
    const rc = await state.put('k/c', 3);
    await s.compact(rc);
    await state.put('k/d', 4);
    await waitUntil(() => seen.length >= 5);
    expect(seen).toEqual(['put:k/a=1', 'put:k/b=2', 'delete:k/a=1', 'put:k/c=3', 'put:k/d=4']);
    await w.close();
  });

  it('sees every key of a revision that changes many at once (a transaction, a lease expiring)', async () => {
    const s = open();
    const state = new SharedState(s, { kind: 'namespace', namespace: 'multi' });
    const r0 = await state.put('seed', 0);
    const seen: string[] = [];
    const w = await state.watch(
      'm/',
      r0 + 1,
      (e) => seen.push(`${e.type}:${e.key}`),
      () => seen.push('resync'),
    );
    const base = `${s.prefix}/state/namespace/multi/m/`;
    // Three keys in one transaction: one revision.
    await s.client
      .if(`${base}a`, 'Create', '==', 0)
      .then(...['a', 'b', 'c'].map((k) => s.client.put(`${base}${k}`).value('1')))
      .commit();
    // Three keys bound to one lease, deleted together when it is revoked: one revision again.
    const session = await s.session(5);
    for (const k of ['x', 'y', 'z']) await s.client.put(`${base}${k}`).value('1').lease(session.id).exec();
    await session.close();
    await waitUntil(() => seen.length >= 9);
    expect(seen).toEqual([
      'put:m/a',
      'put:m/b',
      'put:m/c',
      'put:m/x',
      'put:m/y',
      'put:m/z',
      'delete:m/x',
      'delete:m/y',
      'delete:m/z',
    ]);
    await w.close();
  });

  it('with onlyDeletes, etcd sends only deletions (the dispatcher watches claims vanish, not appear)', async () => {
    const s = open();
    const base = `${s.prefix}/only-deletes/`;
    const { revision } = await s.list(base);
    const seen: string[] = [];
    const w = await new ResumableWatch(
      s,
      base,
      revision + 1,
      { onEvent: (e) => seen.push(`${e.type}:${e.key}`), onResync: () => seen.push('resync') },
      { onlyDeletes: true },
    ).start();
    await s.client.put(`${base}a`).value('1');
    await s.client.put(`${base}b`).value('1');
    await s.client.delete().key(`${base}a`);
    await s.client.put(`${base}c`).value('1');
    await s.client.delete().key(`${base}b`);
    await waitUntil(() => seen.length >= 2);
    await new Promise((r) => setTimeout(r, 200));
    expect(seen).toEqual(['delete:a', 'delete:b']);
    await w.close();
  });

  it('started from a compacted revision, resyncs with the current state and then sees later changes in order', async () => {
    const s = open();
    const state = new SharedState(s, { kind: 'namespace', namespace: 'compacted' });
    const r1 = await state.put('x', 'old');
    await state.put('x', 'new');
    const r3 = await state.put('y', 'y1');
    await s.compact(r3);
    const events: string[] = [];
    let snapshot: Versioned[] = [];
    const w = await state.watch(
      '',
      r1 + 1,
      (e) => events.push(`${e.type}:${e.key}=${JSON.stringify(e.json)}`),
      (items) => {
        snapshot = items;
        events.push('resync');
      },
    );
    await waitUntil(() => events.includes('resync'));
    expect(snapshot.map((i) => [i.key, i.value])).toEqual([
      ['x', 'new'],
      ['y', 'y1'],
    ]);
    await state.put('z', 'z1');
    await state.delete('x');
    await waitUntil(() => events.length >= 3);
    expect(events).toEqual(['resync', 'put:z="z1"', 'delete:x="new"']);
    await w.close();
  });
});

async function waitUntil(cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}
