import { afterAll, describe, expect, it } from 'vitest';
import {
  COMMIT_GROUP,
  FencedError,
  Membership,
  type StateStore,
  TaskClaims,
  type TaskRef,
} from '../../../src/state/index.ts';
import { etcdEndpoint, fixtureEtcdEnv, JsonLinesChild, testStore } from './helpers.ts';

const prefix = `/test-claims-${Date.now()}`;
const stores: StateStore[] = [];
const open = () => {
  const s = testStore(prefix);
  stores.push(s);
  return s;
};
const children: JsonLinesChild[] = [];
afterAll(() => {
  for (const c of children) c.kill('SIGKILL');
  for (const s of stores) s.close();
});

const ref = (task: string): TaskRef => ({ namespace: 'ns', workflow: 'wf', task });
const HOLDER = 'test/fixtures/state/holder.ts';
const TTL = 2; // etcd's minimum with default election settings

function holder(task: string, attempt: number, agentId: string): JsonLinesChild {
  const c = new JsonLinesChild(
    HOLDER,
    [etcdEndpoint(), prefix, 'ns', 'pool', 'wf', task, String(attempt), agentId, String(TTL)],
    fixtureEtcdEnv(),
  );
  children.push(c);
  return c;
}

async function until<T>(what: string, f: () => Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('task claims', () => {
  it('commits a result exactly once, under the claim, and refuses a second claim or commit', async () => {
    const store = open();
    const claims = new TaskClaims(store);
    const session = await store.session(10);
    const claim = await claims.claim(ref('once'), 1, 'agent-a', session);
    await expect(claims.claim(ref('once'), 2, 'agent-b', session)).rejects.toThrow(
      'already claimed by attempt 1 of agent agent-a',
    );
    await claims.commit(claim, { ok: true, output: { answer: 42 } });
    expect(await claims.result(ref('once'))).toMatchObject({
      attempt: 1,
      agentId: 'agent-a',
      token: claim.token,
      ok: true,
      output: { answer: 42 },
    });
    expect(await claims.current(ref('once'))).toBeUndefined();
    // The same attempt committing again (its first answer lost) is told it is done; what is stored stays the first.
    const [again] = await claims.commitMany([{ claim, result: { ok: true, output: 'again' } }]);
    expect(again).toMatchObject({ ok: true, stored: { ok: true, output: { answer: 42 } } });
    expect(await claims.result(ref('once'))).toMatchObject({ output: { answer: 42 } });
    await expect(claims.claim(ref('once'), 2, 'agent-b', session)).rejects.toBeInstanceOf(FencedError);
    await session.close();
  });

  it('says why a batched claim is refused as a typed reason the dispatcher acts on', async () => {
    const store = open();
    const claims = new TaskClaims(store);
    const session = await store.session(10);
    const done = await claims.claim(ref('typed-done'), 1, 'agent-a', session);
    await claims.commit(done, { ok: true });
    await claims.claim(ref('typed-held'), 1, 'agent-a', session);
    const out = await claims.claimMany(
      ['typed-done', 'typed-held', 'typed-free'].map((t) => ({
        ref: ref(t),
        attempt: 2,
        agentId: 'agent-b',
        leaseId: session.id,
      })),
    );
    expect(out.map((o) => (o.ok ? 'ok' : o.reason))).toEqual(['AlreadyCommitted', 'AlreadyClaimed', 'ok']);
    // A fence that no longer holds refuses everything in the batch with its own reason.
    const fenced = await claims.claimMany(
      [{ ref: ref('typed-other'), attempt: 1, agentId: 'a', leaseId: session.id }],
      [{ key: store.key('no-such-leader'), createRevision: 1 }],
    );
    expect(fenced.map((o) => (o.ok ? 'ok' : o.reason))).toEqual(['Fenced']);
    await session.close();
  });

  it('refuses the commit of an attempt whose claim was released and re-claimed', async () => {
    const store = open();
    const claims = new TaskClaims(store);
    const session = await store.session(10);
    const first = await claims.claim(ref('requeued'), 1, 'agent-a', session);
    expect(await claims.release(first)).toBe(true);
    const second = await claims.claim(ref('requeued'), 2, 'agent-b', session);
    await expect(claims.commit(first, { ok: true })).rejects.toThrow(
      'superseded: attempt 1 lost the claim to attempt 2 of agent agent-b',
    );
    await claims.commit(second, { ok: true });
    expect((await claims.result(ref('requeued')))?.attempt).toBe(2);
    await session.close();
  });

  it('records a retryable failure as attempt history, so the next attempt can claim; a non-retryable one ends the task', async () => {
    const store = open();
    const claims = new TaskClaims(store);
    const session = await store.session(10);
    const first = await claims.claim(ref('flaky'), 1, 'agent-a', session);
    await claims.commit(first, { ok: false, error: { message: 'rate limited', retryable: true } });
    expect(await claims.result(ref('flaky'))).toBeUndefined();
    const history = await store.get(claims.attemptKey(ref('flaky'), 1));
    expect(JSON.parse(history?.value ?? '{}')).toMatchObject({
      attempt: 1,
      ok: false,
      error: { message: 'rate limited', retryable: true },
    });
    const second = await claims.claim(ref('flaky'), 2, 'agent-b', session);
    await claims.commit(second, { ok: false, error: { message: 'bad input', retryable: false } });
    expect(await claims.result(ref('flaky'))).toMatchObject({ attempt: 2, ok: false, error: { retryable: false } });
    await expect(claims.claim(ref('flaky'), 3, 'agent-c', session)).rejects.toThrow(
      'a result is already committed (attempt 2 by agent agent-b)',
    );
    await session.close();
  });

  it(`group-commits results ${COMMIT_GROUP} to a transaction, and a stale claim fails only itself`, async () => {
    const store = open();
    const claims = new TaskClaims(store);
    const session = await store.session(10);
    const n = COMMIT_GROUP * 2 + 10;
    const held = [];
    for (let i = 0; i < n; i++) held.push(await claims.claim(ref(`batch.${i}`), 1, 'agent-a', session));
    const stale = held[5] as (typeof held)[number];
    await claims.release(stale);
    const before = Number((await store.client.get('/').exec()).header.revision);
    const outcomes = await claims.commitMany(held.map((claim, i) => ({ claim, result: { ok: true, output: i } })));
    expect(outcomes.filter((o) => o.ok)).toHaveLength(n - 1);
    const failed = outcomes[5];
    expect(failed?.ok).toBe(false);
    expect(failed && !failed.ok && failed.error.message).toContain('no longer holds the claim');
    // 3 group transactions, 1 failed group retried item by item (64 commits + 1 refusal read path).
    const after = Number((await store.client.get('/').exec()).header.revision);
    expect(after - before).toBe(2 + COMMIT_GROUP - 1);
    expect((await claims.result(ref('batch.7')))?.output).toBe(7);
    expect(await claims.result(ref('batch.5'))).toBeUndefined();
    await session.close();
  });
});

describe('agent death (real processes)', () => {
  it('kill -9 of the holder: its claim and membership vanish after the lease TTL and the task can be claimed again', async () => {
    const store = open();
    const claims = new TaskClaims(store);
    const members = new Membership(store);
    const dead = holder('dies', 1, 'agent-dead');
    await dead.next('claimed');
    expect((await members.list('ns', 'pool')).members.map((m) => m.agentId)).toContain('agent-dead');
    const killedAt = Date.now();
    dead.kill('SIGKILL');
    await until(
      'the claim to vanish',
      async () => ((await claims.current(ref('dies'))) ? undefined : true),
      TTL * 1000 + 5_000,
    );
    const gone = Date.now() - killedAt;
    expect(gone).toBeGreaterThanOrEqual(TTL * 1000 - 500);
    expect((await members.list('ns', 'pool')).members.map((m) => m.agentId)).not.toContain('agent-dead');
    const session = await store.session(10);
    const retry = await claims.claim(ref('dies'), 2, 'agent-b', session);
    await claims.commit(retry, { ok: true });
    expect(await claims.result(ref('dies'))).toMatchObject({ attempt: 2, agentId: 'agent-b' });
    await session.close();
  });

  it('a frozen holder (SIGSTOP) that wakes after its lease expired is refused as superseded: exactly one result', async () => {
    const store = open();
    const claims = new TaskClaims(store);
    const zombie = holder('zombie', 1, 'agent-zombie');
    await zombie.next('claimed');
    zombie.kill('SIGSTOP');
    await until(
      'the frozen claim to expire',
      async () => ((await claims.current(ref('zombie'))) ? undefined : true),
      TTL * 1000 + 5_000,
    );
    const session = await store.session(10);
    const retry = await claims.claim(ref('zombie'), 2, 'agent-b', session);
    zombie.kill('SIGCONT');
    zombie.send('commit');
    const answer = await zombie.next('*');
    expect(answer).toMatchObject({ event: 'refused', name: 'FencedError' });
    expect(answer.message).toContain('superseded: attempt 1 lost the claim to attempt 2 of agent agent-b');
    await claims.commit(retry, { ok: true, output: 'from b' });
    expect(await claims.result(ref('zombie'))).toMatchObject({ attempt: 2, output: 'from b' });
    zombie.kill('SIGKILL');
    await session.close();
  });

  it('reports a malformed membership record instead of dropping it silently', async () => {
    const store = open();
    const members = new Membership(store);
    await store.client.put(`${members.prefix('ns', 'bad')}agent-x`).value('{"agentId":"agent-x","capacity":0}');
    const { members: ok, invalid } = await members.list('ns', 'bad');
    expect(ok).toEqual([]);
    expect(invalid[0]?.message).toContain('agent-x: is not an agent membership record');
  });
});
