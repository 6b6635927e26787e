import { afterAll, describe, expect, it } from 'vitest';
import {
  Elections,
  FencedError,
  Locks,
  LockTimeoutError,
  SharedState,
  type StateStore,
} from '../../../src/state/index.ts';
import { testStore } from './helpers.ts';

const prefix = `/test-locks-${Date.now()}`;
const stores: StateStore[] = [];
const open = () => {
  const s = testStore(prefix);
  stores.push(s);
  return s;
};
afterAll(() => {
  for (const s of stores) s.close();
});

describe('locks', () => {
  it('5 contenders taking one lock 100 times: critical sections never overlap, tokens strictly increase', async () => {
    let inside = 0;
    let maxInside = 0;
    const tokens: number[] = [];
    const contenders = await Promise.all(
      Array.from({ length: 5 }, async () => {
        const store = open();
        return { locks: new Locks(store), session: await store.session(10) };
      }),
    );
    await Promise.all(
      contenders.map(async ({ locks, session }) => {
        for (let i = 0; i < 100; i++) {
          await locks.withLock('counter', session, async (held) => {
            inside++;
            maxInside = Math.max(maxInside, inside);
            tokens.push(held.token);
            // Yield inside the section so overlaps would show up.
            await new Promise((r) => setImmediate(r));
            inside--;
          });
        }
      }),
    );
    expect(maxInside).toBe(1);
    expect(tokens).toHaveLength(500);
    for (let i = 1; i < tokens.length; i++) expect(tokens[i]).toBeGreaterThan(tokens[i - 1] as number);
    for (const c of contenders) await c.session.close();
  });

  it('hands the lock on when the holder dies (its lease is revoked) and times out a waiter', async () => {
    const store = open();
    const locks = new Locks(store);
    const a = await store.session(10);
    const b = await store.session(10);
    const held = await locks.acquire('handover', a);
    await expect(locks.acquire('handover', b, { timeoutMs: 300 })).rejects.toBeInstanceOf(LockTimeoutError);
    const waiting = locks.acquire('handover', b);
    await a.close();
    const next = await waiting;
    expect(next.token).toBeGreaterThan(held.token);
    await next.release();
    await b.close();
  });
});

describe('elections', () => {
  it('elects one leader; when it goes the next campaigner leads, and the old leader is fenced out', async () => {
    const store = open();
    const elections = new Elections(store);
    const state = new SharedState(store, { kind: 'namespace', namespace: 'election' });
    const s1 = await store.session(10);
    const s2 = await store.session(10);
    const first = await elections.campaign('operator', s1, 'replica-1');
    let secondLeads = false;
    const second = elections.campaign('operator', s2, 'replica-2').then((h) => {
      secondLeads = true;
      return h;
    });
    await new Promise((r) => setTimeout(r, 200));
    expect(secondLeads).toBe(false);
    expect(await elections.leader('operator')).toMatchObject({ value: 'replica-1', token: first.token });
    await state.put('leader-write', 1, { fences: [first.fence] });

    await s1.close();
    const h2 = await second;
    expect(await elections.leader('operator')).toMatchObject({ value: 'replica-2', token: h2.token });
    // The deposed leader (which may not have noticed yet) cannot write.
    await expect(state.put('leader-write', 2, { fences: [first.fence] })).rejects.toBeInstanceOf(FencedError);
    await state.put('leader-write', 3, { fences: [h2.fence] });
    expect((await state.get('leader-write'))?.value).toBe(3);
    await s2.close();
  });
});
