// Large payloads and bad items against the real etcd (default
// --max-request-bytes 1.5 MiB, 128 ops per txn, 4 MiB gRPC receive limit):
// batches are sized to fit, big values are chunked, one bad item fails alone,
// and re-sending after a lost answer never applies twice.
import { afterAll, describe, expect, it } from 'vitest';
import {
  type Claim,
  type StateStore,
  TaskClaims,
  type TaskRecord,
  type TaskRef,
  WorkflowRecords,
} from '../../../src/state/index.ts';
import { testStore } from './helpers.ts';

const prefix = `/test-large-${Date.now()}`;
const stores: StateStore[] = [];
const open = () => {
  const s = testStore(prefix);
  stores.push(s);
  return s;
};
afterAll(() => {
  for (const s of stores) s.close();
});

const ref = (workflow: string, task: string): TaskRef => ({ namespace: 'ns', workflow, task });
/** An ~`kb` KB model answer: text that does not compress to nothing. */
const answer = (kb: number, seed: string) =>
  Array.from({ length: kb * 16 }, (_, i) => `${seed}-${i.toString(36)}-lorem ipsum dolor sit amet `)
    .join('')
    .slice(0, kb * 1024);

async function claimAll(claims: TaskClaims, store: StateStore, workflow: string, tasks: string[]): Promise<Claim[]> {
  const session = await store.session(30);
  const out = await claims.claimMany(
    tasks.map((t) => ({ ref: ref(workflow, t), attempt: 1, agentId: 'agent-a', leaseId: session.id })),
  );
  return out.map((o) => {
    if (!o.ok) throw o.error;
    return o.claim;
  });
}

describe('large payloads and bad items', () => {
  it('six 800 KB outputs committed in one call all land, chunked, and read back whole', async () => {
    const store = open();
    const claims = new TaskClaims(store);
    const names = ['a', 'b', 'c', 'd', 'e', 'f'];
    const claimed = await claimAll(claims, store, 'big', names);
    const outputs = names.map((n) => ({ text: answer(800, n) }));
    const outcomes = await claims.commitMany(
      claimed.map((claim, i) => ({ claim, result: { ok: true, output: outputs[i] } })),
    );
    expect(outcomes.map((o) => o.ok)).toEqual([true, true, true, true, true, true]);
    for (const [i, n] of names.entries()) {
      const r = await claims.result(ref('big', n));
      expect(r?.output).toEqual(outputs[i]);
      // In etcd the result refers to its chunks instead of carrying 800 KB.
      const raw = await store.get(claims.resultKey(ref('big', n)));
      expect(Buffer.byteLength(raw?.value ?? '')).toBeLessThan(2048);
      expect(JSON.parse(raw?.value ?? '{}').outputBlob).toMatchObject({ bytes: JSON.stringify(outputs[i]).length });
    }
  });

  it('one result etcd cannot take fails alone with a named reason; the rest of its batch commits', async () => {
    const store = open();
    const claims = new TaskClaims(store);
    const names = ['ok1', 'ok2', 'huge', 'ok3', 'ok4'];
    const claimed = await claimAll(claims, store, 'mixed', names);
    // A 2 MiB error message: not chunked (only outputs are), so etcd refuses any request carrying it.
    const outcomes = await claims.commitMany(
      claimed.map((claim, i) =>
        names[i] === 'huge'
          ? { claim, result: { ok: false, error: { message: 'x'.repeat(2 * 1024 * 1024), retryable: false } } }
          : { claim, result: { ok: true, output: { n: names[i] } } },
      ),
    );
    expect(outcomes.every((o) => o.ok)).toBe(true);
    const huge = outcomes[2];
    expect(huge?.ok && huge.stored?.error?.message).toMatch(
      /^the result could not be stored: result of task huge of workflow ns\/mixed is too large for one etcd request/,
    );
    for (const n of ['ok1', 'ok2', 'ok3', 'ok4']) {
      expect(await claims.result(ref('mixed', n))).toMatchObject({ ok: true, output: { n } });
    }
    expect(await claims.result(ref('mixed', 'huge'))).toMatchObject({ ok: false, error: { retryable: false } });
  });

  it('a claim naming a lease etcd does not have is refused alone; every other claim of the batch holds', async () => {
    const store = open();
    const claims = new TaskClaims(store);
    const session = await store.session(30);
    const items = Array.from({ length: 40 }, (_, i) => ({
      ref: ref('lease', `t${i}`),
      attempt: 1,
      agentId: i === 17 ? 'bogus' : 'good',
      leaseId: i === 17 ? '7587869999999999' : session.id,
    }));
    const outcomes = await claims.claimMany(items);
    const refused = outcomes.flatMap((o, i) => (o.ok ? [] : [{ i, reason: o.reason, message: o.error.message }]));
    expect(refused).toHaveLength(1);
    expect(refused[0]).toMatchObject({ i: 17, reason: 'LeaseNotFound' });
    expect(refused[0]?.message).toContain(
      'claim of task t17 of workflow ns/lease for agent bogus names a lease etcd does not have',
    );
    for (const [i, o] of outcomes.entries()) if (i !== 17) expect(o.ok).toBe(true);
  });

  it('a claim or a commit sent again after its answer was lost is reported as done, not refused and not doubled', async () => {
    const store = open();
    const claims = new TaskClaims(store);
    const session = await store.session(30);
    const item = { ref: ref('again', 't'), attempt: 1, agentId: 'agent-a', leaseId: session.id };
    const [first] = await claims.claimMany([item]);
    const [second] = await claims.claimMany([item]);
    expect(first?.ok && second?.ok && second.claim.token === first.claim.token).toBe(true);
    if (!first?.ok) throw new Error('unreachable');
    const [c1] = await claims.commitMany([{ claim: first.claim, result: { ok: true, output: 1 } }]);
    const [c2] = await claims.commitMany([{ claim: first.claim, result: { ok: true, output: 1 } }]);
    expect(c1?.ok && c2?.ok && c2.revision === c1.revision).toBe(true);
    // Written twice in all: the claim (version 1), then the result over it (version 2), once.
    const raw = await store.get(claims.resultKey(item.ref));
    expect(raw?.version).toBe(2);
    // Someone else's claim is still refused.
    const [other] = await claims.claimMany([{ ...item, attempt: 2, agentId: 'agent-b' }]);
    expect(other).toMatchObject({ ok: false, reason: 'AlreadyCommitted' });
  });

  it('run records over the 16 MiB receive limit in total save in bounded transactions and load page by page', async () => {
    const store = open();
    const records = new WorkflowRecords(store);
    // 300 records of 60 KB inline (18 MB: a page of them is over the client's 16 MiB receive limit, so
    // it is read again in halves) and two of 900 KB (blobs).
    const tasks: TaskRecord[] = Array.from({ length: 302 }, (_, i) => ({
      name: `t${i}`,
      template: 't',
      phase: 'Succeeded',
      attempt: 1,
      handler: 'work',
      pool: 'p',
      cost: 1,
      input: { i },
      output: {
        text: i < 300 ? `r${i} lorem ipsum dolor sit amet `.repeat(2400).slice(0, 60 * 1024) : answer(900, `r${i}`),
      },
    }));
    const run = { uid: 'u1', startedAt: new Date().toISOString(), phase: 'Running', expanded: {} };
    await records.save('ns', 'records', run, tasks);
    const loaded = await records.load('ns', 'records');
    expect(loaded.run).toEqual(run);
    expect(loaded.tasks).toHaveLength(302);
    const byName = new Map(loaded.tasks.map((t) => [t.name, t]));
    for (const t of tasks) expect(byName.get(t.name)).toEqual(t);
    await records.deleteAll('ns', 'records');
    expect((await store.list(`${store.key('blobs', 'ns', 'records')}/`)).entries).toHaveLength(0);
    expect((await records.load('ns', 'records')).tasks).toHaveLength(0);
  });
});
