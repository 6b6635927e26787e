import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LOG_CUT_MARKER, LOG_MAX_LINE_CHARS, LOG_MAX_LINES_PER_MESSAGE } from '../../../src/api/data-api.ts';
import { Dispatcher, type TaskEvent } from '../../../src/dispatcher/index.ts';
import { MAX_PAYLOAD_BYTES } from '../../../src/lib/proto.ts';
import { PROTOCOL_VERSION } from '../../../src/lib/wire-batch.ts';
import { type StateStore, TaskClaims } from '../../../src/state/index.ts';
import { readLog } from '../../../src/state/task-logs.ts';
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
  await sec.pool('pool-v2', { capacity: 4 });
  await sec.pool('pool-v1', { capacity: 4 });
  await sec.pool('pool-log', { capacity: 4 });
  token = await sec.serviceAccount('agent', { connect: ['pool-a', 'pool-b', 'pool-v2', 'pool-v1', 'pool-log'] });
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
    expect(await a.next('error')).toMatchObject({
      code: 'INVALID',
      message: 'task id "bad-id" is not workflow/task or namespace/workflow/task',
    });

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

  it('protocol 2: Assigns and Acks arrive batched, a ResultBatch is taken item by item, an old agent gets single messages', async () => {
    const claims = new TaskClaims(store);
    const v2 = connect();
    v2.send({ register: { ...register('batcher', 'pool-v2', 4).register, protocol: 2 } });
    expect(await v2.next('registered')).toMatchObject({ protocol: PROTOCOL_VERSION });
    const tasks = ['b1', 'b2', 'b3', 'b4'];
    for (const t of tasks) dispatcher.submit({ ref: ref(t), pool: 'pool-v2', handler: 'work', input: { t } });
    // Submitted in one turn: claimed in one transaction and assigned in one message.
    const batch = await v2.next('assigns');
    expect(batch.assigns.map((x) => x.taskId)).toEqual(tasks.map((t) => `wf/${t}`));
    expect(batch.assigns[2]).toMatchObject({ attempt: 1, handler: 'work', inputJson: '{"t":"b3"}', cost: 1 });
    type Assigned = (typeof batch.assigns)[number];
    const [one, two, three, four] = batch.assigns as [Assigned, Assigned, Assigned, Assigned];
    const r = (a: Assigned, extra: object) => ({ taskId: a.taskId, attempt: a.attempt, token: a.token, ...extra });
    // One bad item refuses only itself; the rest of the batch commits, and its Acks come back batched.
    v2.send({
      results: {
        results: [
          r(one, { outputJson: '1' }),
          r(two, { outputJson: '{oops' }),
          r(three, { error: { message: 'boom', retryable: false, code: 'X' } }),
          { ...r(four, { outputJson: '4' }), token: 1 },
        ],
      },
    });
    expect(await v2.next('error')).toMatchObject({ code: 'INVALID', taskId: 'wf/b2' });
    const acks: { taskId: string; status: string }[] = [];
    while (acks.length < 3) {
      const m = v2.received.find((x) => x.msg === 'acks' || x.msg === 'ack');
      if (m?.msg === 'ack') acks.push(await v2.next('ack'));
      else if (m?.msg === 'acks') acks.push(...(await v2.next('acks')).acks);
      else await v2.next('acks', 5_000).then((b) => acks.push(...b.acks));
    }
    expect(acks.map((a) => `${a.taskId} ${a.status}`).sort()).toEqual([
      'wf/b1 COMMITTED',
      'wf/b3 COMMITTED',
      'wf/b4 SUPERSEDED',
    ]);
    expect(await claims.result(ref('b1'))).toMatchObject({ ok: true, output: 1 });
    expect(await claims.result(ref('b3'))).toMatchObject({ ok: false, error: { message: 'boom' } });
    expect(await claims.result(ref('b2'))).toBeUndefined();
    expect((await claims.current(ref('b4')))?.token).toBe(four.token);

    // An agent without protocol 2 (any older SDK) never sees a batch.
    const v1 = connect();
    v1.send(register('single', 'pool-v1', 4));
    expect((await v1.next('registered')).protocol).toBe(PROTOCOL_VERSION);
    for (const t of ['s1', 's2', 's3']) dispatcher.submit({ ref: ref(t), pool: 'pool-v1', handler: 'work', input: {} });
    const singles = [await v1.next('assign'), await v1.next('assign'), await v1.next('assign')];
    expect(singles.map((a) => a.taskId)).toEqual(['wf/s1', 'wf/s2', 'wf/s3']);
    for (const a of singles) v1.send({ result: r(a, { outputJson: '0' }) });
    for (let i = 0; i < 3; i++) expect(await v1.next('ack')).toMatchObject({ status: 'COMMITTED' });
    expect(v1.received.some((m) => m.msg === 'assigns' || m.msg === 'acks')).toBe(false);
  });

  it('protocol 3: keeps an attempt’s TaskLog lines bounded, written before its result; ignores lines for work the agent does not hold', async () => {
    const a = connect();
    a.send({ register: { ...register('logger', 'pool-log', 2).register, protocol: PROTOCOL_VERSION } });
    await a.next('registered');
    dispatcher.submit({ ref: ref('l1'), pool: 'pool-log', handler: 'work', input: {} });
    const assign = await a.next('assign');
    const at = { taskId: assign.taskId, attempt: assign.attempt, token: assign.token };
    const now = Date.now();
    // A hostile agent: more lines than one message may carry, one enormous line, times from nowhere.
    const lines = Array.from({ length: LOG_MAX_LINES_PER_MESSAGE + 500 }, (_, i) => ({
      timeMs: now,
      text: `line ${i}`,
    }));
    lines[1] = { timeMs: now, text: 'y'.repeat(LOG_MAX_LINE_CHARS * 4) };
    lines[2] = { timeMs: 42, text: 'from 1970' };
    a.send({ log: { ...at, lines, end: false } });
    // Lines for a task it holds no claim on, and for a stale attempt: dropped, no error, nothing kept.
    a.send({ log: { taskId: 'wf/not-mine', attempt: 1, token: 1, lines: [{ timeMs: now, text: 'x' }], end: true } });
    a.send({ log: { ...at, attempt: 7, lines: [{ timeMs: now, text: 'stale' }], end: true } });
    a.send({ log: { ...at, lines: [{ timeMs: now, text: 'last words' }], end: true } });
    // The result straight after: by the time it is acknowledged, the whole log is in etcd.
    a.send({ result: { ...at, outputJson: '{}' } });
    expect(await a.next('ack')).toMatchObject({ taskId: assign.taskId, status: 'COMMITTED' });
    const stored = await readLog(store, { ...ref('l1'), attempt: assign.attempt });
    expect(stored.ended).toBe(true);
    const kept = stored.text.trimEnd().split('\n');
    expect(kept).toHaveLength(LOG_MAX_LINES_PER_MESSAGE + 1);
    expect(kept[0]).toMatch(/^\S+Z line 0$/);
    expect(kept[1]?.endsWith(LOG_CUT_MARKER)).toBe(true);
    expect(kept[1]?.length).toBeLessThan(LOG_MAX_LINE_CHARS + 64);
    expect(kept[2]?.startsWith('1970')).toBe(false);
    expect(kept.at(-2)).toMatch(/ line 1023$/);
    expect(kept.at(-1)).toMatch(/ last words$/);
    expect(stored.text).not.toContain('stale');
    expect((await readLog(store, { ...ref('not-mine'), attempt: 1 })).text).toBe('');
    expect(a.count('error')).toBe(0);
  });
});
