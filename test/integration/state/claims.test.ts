import { afterAll, describe, expect, it } from 'vitest';
import { LEGACY_CLAIMS } from '../../../src/state/claims.ts';
import {
  type ChangeEvent,
  type Claim,
  COMMIT_GROUP,
  type Entry,
  FencedError,
  isClaimEntry,
  Membership,
  ResumableWatch,
  type StateStore,
  TaskClaims,
  type TaskRef,
  WorkflowRecords,
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

/** Deletes under the claims prefix from `from` on, as the dispatcher's watch gets them (keys only). */
async function deletesSeen(store: StateStore, from: number, sentinel: string): Promise<ChangeEvent[]> {
  const claims = new TaskClaims(store);
  const seen: ChangeEvent[] = [];
  let done: () => void = () => undefined;
  const reached = new Promise<void>((r) => {
    done = r;
  });
  const w = await new ResumableWatch(
    store,
    claims.claimsPrefix(),
    from,
    {
      onEvent: (e) => {
        seen.push(e);
        if (e.key.endsWith(`/${sentinel}`)) done();
      },
      onResync: () => undefined,
    },
    { onlyDeletes: true, previousValues: false },
  ).start();
  await reached;
  await w.close();
  return seen;
}

describe('one key per task: the claim, then the result', () => {
  it('a commit overwrites the claim in place (no delete for the claims watch); a result outlives the lease', async () => {
    const store = open();
    const claims = new TaskClaims(store);
    const session = await store.session(10);
    const claim = await claims.claim(ref('one-key'), 1, 'agent-a', session);
    const claimed = await store.get(claims.claimKey(ref('one-key')));
    expect(claimed).toMatchObject({ createRevision: claim.token, version: 1, lease: session.id });
    expect(claims.resultKey(ref('one-key'))).toBe(claims.claimKey(ref('one-key')));
    // While the attempt runs, the key is a claim, not a result (nor history).
    expect(await claims.result(ref('one-key'))).toBeUndefined();
    expect((await claims.history('ns', 'wf', 'one-key')).get('one-key')).toBeUndefined();
    await claims.commit(claim, { ok: true, output: 'done' });
    const committed = await store.get(claims.resultKey(ref('one-key')));
    expect(committed).toMatchObject({ createRevision: claim.token, version: 2, lease: '0' });
    expect(isClaimEntry(committed as Entry)).toBe(false);
    // The claim as it was is still in etcd's history under its token (recovery reads it there).
    expect(await claims.claimedAt(ref('one-key'), claim.token)).toMatchObject({ attempt: 1, agentId: 'agent-a' });
    // A release of the claim now must not delete the result written over it.
    expect(await claims.release(claim)).toBe(false);
    // The lease ends (the agent leaves): the result is not bound to it and stays.
    await session.close();
    expect(await claims.result(ref('one-key'))).toMatchObject({ ok: true, output: 'done', token: claim.token });
    // Nothing was deleted under the claims prefix for that commit: the first delete the watch gets
    // from the claim's revision on is the sentinel's.
    const other = await store.session(10);
    const sentinel = await claims.claim(ref('one-key-sentinel'), 1, 'agent-a', other);
    expect(await claims.release(sentinel)).toBe(true);
    const seen = await deletesSeen(store, claim.token, 'one-key-sentinel');
    expect(seen.map((e) => e.key)).toEqual(['ns/wf/one-key-sentinel']);
    await other.close();
  });

  it('a retryable failure deletes the claim (the watch sees it) and keeps the attempt as history', async () => {
    const store = open();
    const claims = new TaskClaims(store);
    const session = await store.session(10);
    const first = await claims.claim(ref('one-key-retry'), 1, 'agent-a', session);
    await claims.commit(first, { ok: false, error: { message: 'flaky', retryable: true } });
    expect(await store.get(claims.claimKey(ref('one-key-retry')))).toBeUndefined();
    const seen = await deletesSeen(store, first.token, 'one-key-retry');
    expect(seen).toHaveLength(1);
    expect(seen[0]?.modRevision).toBeGreaterThan(first.token);
    const second = await claims.claim(ref('one-key-retry'), 2, 'agent-b', session);
    // Another workflow retry of a finished failure leaves a running claim alone.
    expect(await claims.reopen('ns', 'wf', new Set(['one-key-retry']), [])).toBe(0);
    expect(await claims.current(ref('one-key-retry'))).toMatchObject({ attempt: 2, token: second.token });
    await claims.commit(second, { ok: true, output: 2 });
    const history = (await claims.history('ns', 'wf', 'one-key-retry')).get('one-key-retry');
    expect(history?.map((h) => [h.attempt, h.ok])).toEqual([
      [1, false],
      [2, true],
    ]);
    await session.close();
  });

  it('a claim of the old layout (claims/) on a lease is dropped; a current claim key is not touched', async () => {
    const store = open();
    const claims = new TaskClaims(store);
    const session = await store.session(10);
    const legacy = store.key(LEGACY_CLAIMS, 'ns', 'wf', 'legacy');
    await store.client.put(legacy).value('{"attempt":1,"agentId":"agent-a"}').lease(session.id).exec();
    const current = await claims.claim(ref('not-legacy'), 1, 'agent-a', session);
    expect(await claims.dropLegacyClaim(claims.claimKey(ref('not-legacy')))).toBe(false);
    expect(await claims.dropLegacyClaim(legacy)).toBe(true);
    expect(await store.get(legacy)).toBeUndefined();
    expect(await claims.current(ref('not-legacy'))).toMatchObject({ token: current.token });
    await session.close();
  });
});

describe('deleting a workflow with many results', () => {
  it('deletes results in pages, so the claims watch gets bounded answers, and the rest after them', async () => {
    const store = open();
    const claims = new TaskClaims(store);
    const records = new WorkflowRecords(store);
    const wf = (task: string): TaskRef => ({ namespace: 'ns', workflow: 'big-delete', task });
    const session = await store.session(10);
    const n = 2_345;
    const outs: { claim: Claim; result: { ok: true; output: string } }[] = [];
    for (let i = 0; i < n; i += 127) {
      const batch = Array.from({ length: Math.min(127, n - i) }, (_, k) => ({
        ref: wf(`t.${i + k}`),
        attempt: 1,
        agentId: 'agent-a',
        leaseId: session.id,
      }));
      for (const o of await claims.claimMany(batch))
        if (o.ok) outs.push({ claim: o.claim, result: { ok: true, output: 'x' } });
    }
    await claims.commitMany(outs);
    const from = Number((await store.client.get('/').exec()).header.revision) + 1;
    await records.deleteAll('ns', 'big-delete');
    expect((await store.list(`${store.key('results', 'ns', 'big-delete')}/`)).entries).toHaveLength(0);
    // One revision per page of 1,000 keys: 3 answers of at most 1,000 deletes, not one of 2,345.
    const sentinel = await claims.claim(ref('big-delete-sentinel'), 1, 'agent-a', session);
    await claims.release(sentinel);
    const seen = (await deletesSeen(store, from, 'big-delete-sentinel')).filter((e) =>
      e.key.startsWith('ns/big-delete/'),
    );
    expect(seen).toHaveLength(n);
    const perRevision = new Map<number, number>();
    for (const e of seen) perRevision.set(e.modRevision, (perRevision.get(e.modRevision) ?? 0) + 1);
    expect([...perRevision.values()]).toEqual([1_000, 1_000, 345]);
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
