// An agent that comes back after its lease expired (a slow failover: the
// election, then its reconnect back-off) still holds results it finished
// while away; their claims went with the lease. When the new leader queues
// that same attempt again, the result is committed instead of the task being
// run a second time; a result for an attempt that is not the one queued is
// still refused.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Dispatcher, type TaskEvent } from '../../../src/dispatcher/index.ts';
import { type StateStore, TaskClaims } from '../../../src/state/index.ts';
import { testCluster } from '../../cluster/testing.ts';
import { testStore } from '../state/helpers.ts';
import { RawAgent } from './raw-agent.ts';
import { type SecureDispatcherSetup, secureDispatcher } from './secure.ts';

const cluster = testCluster();
let sec: SecureDispatcherSetup;
let store: StateStore;
let token = '';
const agents: RawAgent[] = [];
const dispatchers: Dispatcher[] = [];

beforeAll(async () => {
  store = testStore();
  sec = await secureDispatcher(cluster, 'orphan');
  await sec.pool('pool', { capacity: 4 });
  token = await sec.serviceAccount('agent', { connect: ['pool'] });
});
afterAll(async () => {
  for (const a of agents) a.close();
  for (const d of dispatchers) await d.stop(500);
  sec.close();
  store.close();
  await cluster.close();
});

async function start(): Promise<Dispatcher> {
  const d = new Dispatcher({ store, auth: sec.auth, credentials: sec.credentials, agentLeaseTtlSeconds: 2 });
  dispatchers.push(d);
  await d.start();
  return d;
}

function agent(d: Dispatcher, capacity: number, leaseId = '', agentId = 'a'): RawAgent {
  const a = new RawAgent(d.port, { caFile: sec.caFile, tokenFile: token });
  agents.push(a);
  a.send({
    register: {
      namespace: sec.namespace,
      pool: 'pool',
      agentId,
      pod: '',
      handlers: ['work'],
      capacity,
      leaseId,
      inFlight: [],
      runtimeVersion: 'test',
    },
  });
  return a;
}

describe('results whose claim went with the lease', () => {
  it('are committed when the same attempt is queued again, before or after they arrive; others refused', async () => {
    const claims = new TaskClaims(store);
    const ref = (task: string) => ({ namespace: sec.namespace, workflow: 'wf', task });
    const old = await start();
    const a = agent(old, 4);
    const reg = await a.next('registered');
    for (const t of ['early', 'late', 'stale']) old.submit({ ref: ref(t), pool: 'pool', handler: 'work', input: null });
    const tokens = new Map<string, number>();
    for (let i = 0; i < 3; i++) {
      const as = await a.next('assign');
      tokens.set(as.taskId, Number(as.token));
    }
    // The leader dies; nobody keeps the agent's lease, and its claims expire with it.
    await old.stop(500);
    a.close();
    for (const t of ['early', 'late', 'stale']) {
      for (let i = 0; (await claims.current(ref(t))) !== undefined; i++) {
        if (i > 100) throw new Error(`the claim on ${t} never expired`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }

    const next = await start();
    const events: TaskEvent[] = [];
    next.on('task', (e) => events.push(e));
    // Busy with one task of its own, so nothing queued is handed to it while the test sends its results.
    const b = agent(next, 1, reg.leaseId);
    expect((await b.next('registered')).leaseId).not.toBe(reg.leaseId);
    next.submit({ ref: ref('busy'), pool: 'pool', handler: 'work', input: null });
    expect(await b.next('assign')).toMatchObject({ taskId: 'wf/busy' });
    const result = (task: string, attempt = 1) => ({
      result: { taskId: `wf/${task}`, attempt, token: tokens.get(`wf/${task}`) ?? 0, outputJson: `"${task} done"` },
    });

    // Arrives first, then the engine queues the attempt (a new leader resuming its runs).
    b.send(result('early'));
    await new Promise((r) => setTimeout(r, 300));
    next.submit({ ref: ref('early'), pool: 'pool', handler: 'work', input: null, attempt: 1 });
    expect(await b.next('ack')).toMatchObject({ taskId: 'wf/early', status: 'COMMITTED' });
    // Queued first, then the result arrives.
    next.submit({ ref: ref('late'), pool: 'pool', handler: 'work', input: null, attempt: 1 });
    b.send(result('late'));
    expect(await b.next('ack')).toMatchObject({ taskId: 'wf/late', status: 'COMMITTED' });
    // The engine gave up on attempt 1 and queued attempt 2: attempt 1's result is not it.
    next.submit({ ref: ref('stale'), pool: 'pool', handler: 'work', input: null, attempt: 2 });
    b.send(result('stale'));
    expect(await b.next('error', 2_000)).toMatchObject({ code: 'UNKNOWN_TASK', taskId: 'wf/stale' });

    // Another agent of the pool cannot pass off a result for a queued task it never held: etcd's history
    // has no claim of its under that token. (It is kept busy so the task stays queued.)
    const c = agent(next, 1, '', 'c');
    await c.next('registered');
    expect(await c.next('assign')).toMatchObject({ taskId: 'wf/stale' });
    next.submit({ ref: ref('forged'), pool: 'pool', handler: 'work', input: null });
    c.send({ result: { taskId: 'wf/forged', attempt: 1, token: tokens.get('wf/early') ?? 0, outputJson: '"forged"' } });
    expect(await c.next('error', 2_000)).toMatchObject({ code: 'UNKNOWN_TASK', taskId: 'wf/forged' });
    expect(await claims.result(ref('forged'))).toBeUndefined();

    expect(await claims.result(ref('early'))).toMatchObject({ ok: true, output: 'early done', attempt: 1 });
    expect(await claims.result(ref('late'))).toMatchObject({ ok: true, output: 'late done', attempt: 1 });
    expect(await claims.result(ref('stale'))).toBeUndefined();
    expect(next.counters.orphansCommitted).toBe(2);
    expect(
      events
        .filter((e) => e.type === 'committed')
        .map((e) => e.ref.task)
        .sort(),
    ).toEqual(['early', 'late']);
  }, 60_000);
});
