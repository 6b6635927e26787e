import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Dispatcher } from '../../../src/dispatcher/index.ts';
import { type Fence, type StateStore, TaskClaims } from '../../../src/state/index.ts';
import { testCluster } from '../../cluster/testing.ts';
import { testStore } from '../state/helpers.ts';
import { RawAgent } from './raw-agent.ts';
import { type SecureDispatcherSetup, secureDispatcher } from './secure.ts';

// A dispatcher whose leadership fence no longer holds must never tell an agent to forget a result
// (Ack SUPERSEDED) that nobody committed: it ends the streams UNAVAILABLE, the agent re-sends to the
// next leader, which adopts its lease and commits the result exactly once.

const cluster = testCluster();
let sec: SecureDispatcherSetup;
let store: StateStore;
let token = '';
const agents: RawAgent[] = [];
const dispatchers: Dispatcher[] = [];

beforeAll(async () => {
  store = testStore();
  sec = await secureDispatcher(cluster, 'fence');
  await sec.pool('pool', { capacity: 2 });
  token = await sec.serviceAccount('agent', { connect: ['pool'] });
});
afterAll(async () => {
  for (const a of agents) a.close();
  for (const d of dispatchers) await d.stop(500);
  sec.close();
  store.close();
  await cluster.close();
});

async function leader(name: string): Promise<Fence> {
  const key = store.key('test-leader', name);
  const res = await store.client.put(key).value(name).exec();
  return { key, createRevision: Number(res.header.revision) };
}

async function start(fence: Fence): Promise<Dispatcher> {
  const d = new Dispatcher({
    store,
    auth: sec.auth,
    credentials: sec.credentials,
    fences: () => [fence],
    agentLeaseTtlSeconds: 10,
  });
  dispatchers.push(d);
  await d.start();
  return d;
}

const register = (leaseId: string, inFlight: { taskId: string; attempt: number; token: number; cost: number }[]) => ({
  register: {
    namespace: sec.namespace,
    pool: 'pool',
    agentId: 'a',
    pod: '',
    handlers: ['work'],
    capacity: 2,
    leaseId,
    inFlight,
    runtimeVersion: 'test',
  },
});

describe('a deposed dispatcher', () => {
  it('does not ack a result it could not commit; the next leader commits it once', async () => {
    const ref = { namespace: sec.namespace, workflow: 'wf', task: 't' };
    const claims = new TaskClaims(store);
    const oldFence = await leader('old');
    const old = await start(oldFence);
    const a = new RawAgent(old.port, { caFile: sec.caFile, tokenFile: token });
    agents.push(a);
    a.send(register('', []));
    const reg = await a.next('registered');
    old.submit({ ref, pool: 'pool', handler: 'work', input: null });
    const assign = await a.next('assign');
    // Leadership passes on: the old leader's key is gone (its lease expired while it was frozen).
    await store.client.delete().key(oldFence.key).exec();
    a.send({ result: { taskId: 'wf/t', attempt: 1, token: assign.token, outputJson: '"done"' } });
    const st = await a.closed(10_000);
    expect(st.code).toBe(14); // UNAVAILABLE: go to the new leader
    expect(st.details).toContain('no longer the leader');
    expect(a.received.filter((m) => m.msg === 'ack')).toEqual([]);
    expect(await claims.result(ref)).toBeUndefined();
    expect((await claims.current(ref))?.token).toBe(assign.token);

    const next = await start(await leader('new'));
    const b = new RawAgent(next.port, { caFile: sec.caFile, tokenFile: token });
    agents.push(b);
    b.send(register(reg.leaseId, [{ taskId: 'wf/t', attempt: 1, token: assign.token, cost: 1 }]));
    const again = await b.next('registered');
    expect(again.leaseId).toBe(reg.leaseId);
    expect(again.stillYours).toMatchObject([{ taskId: 'wf/t', attempt: 1 }]);
    b.send({ result: { taskId: 'wf/t', attempt: 1, token: assign.token, outputJson: '"done"' } });
    expect(await b.next('ack')).toMatchObject({ taskId: 'wf/t', status: 'COMMITTED' });
    expect(await claims.result(ref)).toMatchObject({ ok: true, output: 'done', attempt: 1 });
  });
});
