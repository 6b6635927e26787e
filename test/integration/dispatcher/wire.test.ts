import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Dispatcher, type TaskEvent } from '../../../src/dispatcher/index.ts';
import { MAX_PAYLOAD_BYTES } from '../../../src/lib/proto.ts';
import { type StateStore, TaskClaims } from '../../../src/state/index.ts';
import { testCluster } from '../../cluster/testing.ts';
import { testStore } from '../state/helpers.ts';
import { RawAgent } from './raw-agent.ts';
import { type SecureDispatcherSetup, secureDispatcher } from './secure.ts';

// Malformed or out-of-turn wire input gets a precise refusal and changes
// nothing: no claim lost, no result committed.

let store: StateStore;
let dispatcher: Dispatcher;
const cluster = testCluster();
let sec: SecureDispatcherSetup;
let token = '';
const agents: RawAgent[] = [];
const events: TaskEvent[] = [];

const register = (agentId: string, pool = 'pool-a', capacity = 2) => ({
  register: {
    namespace: sec.namespace,
    pool,
    agentId,
    pod: `pod-${agentId}`,
    handlers: ['work'],
    capacity,
    leaseId: '',
    inFlight: [],
    runtimeVersion: 'test',
  },
});
const connect = () => {
  const a = new RawAgent(dispatcher.port, { caFile: sec.caFile, tokenFile: token });
  agents.push(a);
  return a;
};
const ref = (task: string) => ({ namespace: sec.namespace, workflow: 'wf', task });

beforeAll(async () => {
  store = testStore();
  sec = await secureDispatcher(cluster, 'wire');
  await sec.pool('pool-a', { capacity: 4 });
  await sec.pool('pool-b', { capacity: 4 });
  token = await sec.serviceAccount('agent', { connect: ['pool-a', 'pool-b'] });
  dispatcher = new Dispatcher({ store, auth: sec.auth, credentials: sec.credentials });
  dispatcher.on('task', (e) => events.push(e));
  await dispatcher.start();
});

afterAll(async () => {
  for (const a of agents) a.close();
  await dispatcher.stop(1_000);
  sec.close();
  store.close();
  await cluster.close();
});

describe('dispatcher wire input', () => {
  it('refuses a stream that does not start with Register', async () => {
    const a = connect();
    a.send({ heartbeat: { draining: false } });
    const err = await a.next('error');
    expect(err).toMatchObject({ code: 'NOT_REGISTERED', message: 'the first message on a stream must be Register' });
  });

  it.each([
    [{ capacity: 0 }, 'Register.capacity: must be 1-1024, got 0'],
    [{ pool: 'Not_A_Pool' }, 'Register.pool: "Not_A_Pool" is not a DNS-1123 label'],
    [{ leaseId: 'abc' }, 'Register.leaseId: "abc" is not an etcd lease id'],
    [
      { inFlight: Array.from({ length: 4097 }, (_, i) => ({ taskId: `wf/t${i}`, attempt: 1, token: 1, cost: 1 })) },
      'Register.inFlight: at most 4096 attempts, got 4097',
    ],
    [{ handlers: [] }, 'Register.handlers: 1-128 handler names required, got 0'],
  ])('refuses Register with %o', async (bad, message) => {
    const a = connect();
    a.send({ register: { ...register('bad').register, ...bad } });
    expect(await a.next('error')).toMatchObject({ code: 'INVALID', message });
  });

  it("a Register naming a lease etcd does not have, or another agent's, gets a lease of its own; work goes on", async () => {
    const claims = new TaskClaims(store);
    const honest = connect();
    honest.send(register('honest', 'pool-b', 2));
    const theirs = await honest.next('registered');
    // Before: one claim on a bogus lease made etcd refuse the whole claim transaction, for every pool.
    const bogus = connect();
    bogus.send({ register: { ...register('bogus', 'pool-a', 2).register, leaseId: '7587869999999999' } });
    const mine = await bogus.next('registered');
    expect(mine.leaseId).not.toBe('7587869999999999');
    const thief = connect();
    thief.send({ register: { ...register('thief', 'pool-a', 2).register, leaseId: theirs.leaseId } });
    expect((await thief.next('registered')).leaseId).not.toBe(theirs.leaseId);
    dispatcher.submit({ ref: ref('lease-a'), pool: 'pool-a', handler: 'work', input: {} });
    dispatcher.submit({ ref: ref('lease-b'), pool: 'pool-b', handler: 'work', input: {} });
    const gotB = await honest.next('assign');
    expect(gotB).toMatchObject({ taskId: 'wf/lease-b' });
    expect((await claims.current(ref('lease-b')))?.token).toBe(gotB.token);
    const a = await Promise.race([bogus.next('assign'), thief.next('assign')]);
    expect(a).toMatchObject({ taskId: 'wf/lease-a' });
    expect((await claims.current(ref('lease-a')))?.token).toBe(a.token);
    for (const x of [honest, bogus, thief]) x.close();
  });

  it('assigns within credits and refuses unknown, stale, oversized, non-JSON and wrong-pool results without changing anything', async () => {
    const claims = new TaskClaims(store);
    const a = connect();
    a.send(register('agent-a', 'pool-a', 2));
    expect(await a.next('registered')).toMatchObject({
      stillYours: [],
      agentId: 'agent.agent-a',
      namespace: sec.namespace,
      pool: 'pool-a',
      leaseTtlSeconds: 10,
    });
    for (const t of ['t1', 't2', 't3'])
      dispatcher.submit({ ref: ref(t), pool: 'pool-a', handler: 'work', input: { t } });
    const first = await a.next('assign');
    expect(await a.next('assign')).toMatchObject({ taskId: 'wf/t2' });
    // capacity 2: the third waits for a slot.
    await expect(a.next('assign', 300)).rejects.toThrow('no assign');
    expect(first).toMatchObject({
      taskId: 'wf/t1',
      namespace: sec.namespace,
      workflow: 'wf',
      attempt: 1,
      handler: 'work',
      inputJson: '{"t":"t1"}',
      cost: 1,
    });
    expect((await claims.current(ref('t1')))?.token).toBe(first.token);

    const result = (taskId: string, extra: object) => ({
      result: { taskId, attempt: 1, token: first.token, ...extra },
    });
    a.send(result('wf/nope', { outputJson: '1' }));
    expect(await a.next('error')).toMatchObject({ code: 'UNKNOWN_TASK', taskId: 'wf/nope' });
    a.send({ result: { taskId: 'wf/t1', attempt: 7, token: first.token, outputJson: '1' } });
    expect(await a.next('ack')).toMatchObject({ taskId: 'wf/t1', attempt: 7, status: 'SUPERSEDED' });
    a.send(result('wf/t1', { outputJson: `"${'x'.repeat(MAX_PAYLOAD_BYTES)}"` }));
    expect(await a.next('error')).toMatchObject({
      code: 'PAYLOAD_TOO_LARGE',
      message: `output of wf/t1 is over ${MAX_PAYLOAD_BYTES} bytes`,
    });
    a.send(result('wf/t1', { outputJson: '{oops' }));
    expect(await a.next('error')).toMatchObject({ code: 'INVALID', message: 'outputJson of wf/t1 is not JSON' });
    a.send(result('bad-id', { outputJson: '1' }));
    expect(await a.next('error')).toMatchObject({ code: 'INVALID', message: 'task id "bad-id" is not workflow/task' });

    const b = connect();
    b.send(register('agent-b', 'pool-b', 1));
    await b.next('registered');
    b.send(result('wf/t1', { outputJson: '"stolen"' }));
    expect(await b.next('error')).toMatchObject({
      code: 'WRONG_POOL',
      message: 'wf/t1 belongs to pool pool-a, not pool-b',
    });

    // Nothing changed: the claim is intact, no result exists.
    expect((await claims.current(ref('t1')))?.token).toBe(first.token);
    expect(await claims.result(ref('t1'))).toBeUndefined();

    // The real result commits, is acked, frees a slot, and t3 gets assigned.
    a.send(result('wf/t1', { outputJson: '{"ok":true}' }));
    expect(await a.next('ack')).toMatchObject({ taskId: 'wf/t1', attempt: 1, status: 'COMMITTED' });
    expect(await claims.result(ref('t1'))).toMatchObject({
      ok: true,
      output: { ok: true },
      attempt: 1,
      agentId: 'agent.agent-a',
    });
    expect(await a.next('assign')).toMatchObject({ taskId: 'wf/t3' });
    expect(events.filter((e) => e.type === 'committed').map((e) => e.type === 'committed' && e.ref.task)).toEqual([
      't1',
    ]);

    // A duplicate of an acknowledged result is harmless: acked again, still one result.
    a.send(result('wf/t1', { outputJson: '{"ok":true}' }));
    expect(await a.next('ack')).toMatchObject({ taskId: 'wf/t1', status: 'COMMITTED' });
    expect(events.filter((e) => e.type === 'committed')).toHaveLength(1);
  });
});
