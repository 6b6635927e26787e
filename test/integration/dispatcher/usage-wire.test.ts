import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Dispatcher, type TaskEvent } from '../../../src/dispatcher/index.ts';
import { DispatcherMetrics } from '../../../src/dispatcher/metrics.ts';
import { Registry } from '../../../src/lib/metrics.ts';
import { MAX_USAGE_MODELS } from '../../../src/lib/usage.ts';
import { type StateStore, TaskClaims } from '../../../src/state/index.ts';
import { PromlintError, parseSamples, sumOf as sumOfPresent } from '../../cluster/promlint.ts';
import { testCluster } from '../../cluster/testing.ts';
import { testStore } from '../state/helpers.ts';
import { RawAgent } from './raw-agent.ts';
import { type SecureDispatcherSetup, secureDispatcher } from './secure.ts';

/** A usage counter's sum; 0 while it has no series (none until a result reports that model). */
function sumOf(...args: Parameters<typeof sumOfPresent>): number {
  try {
    return sumOfPresent(...args);
  } catch (err) {
    if (err instanceof PromlintError) return 0;
    throw err;
  }
}

// Model usage on the wire, against a real dispatcher and etcd: a Result with malformed usage is
// refused (INVALID, naming the field) and changes nothing; a good one is committed with its
// result, usage and all, in etcd, and counted once in the usage counters; a superseded result's
// usage is neither stored nor counted.

let store: StateStore;
let dispatcher: Dispatcher;
const cluster = testCluster();
let sec: SecureDispatcherSetup;
let token = '';
const agents: RawAgent[] = [];
const events: TaskEvent[] = [];
const registry = new Registry();

const connect = () => {
  const a = new RawAgent(dispatcher.port, { caFile: sec.caFile, tokenFile: token });
  agents.push(a);
  return a;
};
const ref = (task: string) => ({ namespace: sec.namespace, workflow: 'wf', task });

beforeAll(async () => {
  store = testStore();
  sec = await secureDispatcher(cluster, 'usage');
  await sec.pool('pool-u', { capacity: 4 });
  token = await sec.serviceAccount('agent', { connect: ['pool-u'] });
  dispatcher = new Dispatcher({
    store,
    auth: sec.auth,
    credentials: sec.credentials,
    metrics: new DispatcherMetrics(registry),
  });
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

const counters = async () => {
  const s = parseSamples(await registry.metrics());
  const of = { namespace: sec.namespace, pool: 'pool-u' };
  return {
    input: sumOf(s, 'agentflow_usage_tokens_total', { ...of, kind: 'input' }),
    output: sumOf(s, 'agentflow_usage_tokens_total', { ...of, kind: 'output' }),
    cost: sumOf(s, 'agentflow_usage_cost_usd_total', of),
    gpt: sumOf(s, 'agentflow_usage_tokens_total', { ...of, model: 'gpt-x' }),
  };
};

describe('usage on the wire', () => {
  it('refuses malformed usage naming the field, commits good usage with the result once, and drops a superseded attempt', async () => {
    const claims = new TaskClaims(store);
    const a = connect();
    a.send({
      register: {
        namespace: sec.namespace,
        pool: 'pool-u',
        agentId: 'u1',
        pod: 'pod-u1',
        handlers: ['work'],
        capacity: 2,
        leaseId: '',
        inFlight: [],
        runtimeVersion: 'test',
      },
    });
    await a.next('registered');
    dispatcher.submit({ ref: ref('t1'), pool: 'pool-u', handler: 'work', input: {} });
    const assign = await a.next('assign');
    const result = (usage: object[]) => ({
      result: { taskId: 'wf/t1', attempt: 1, token: assign.token, outputJson: '{"ok":true}', usage },
    });
    const good = { model: 'gpt-x', inputTokens: 100, outputTokens: 20, costUsd: 0.25 };
    const cases: [object[], string][] = [
      [[{ ...good, model: '' }], 'Result.usage[0].model: must be 1-128 characters, got 0 (task wf/t1)'],
      [
        [good, { ...good, model: 'm'.repeat(129) }],
        'Result.usage[1].model: must be 1-128 characters, got 129 (task wf/t1)',
      ],
      [[{ ...good, costUsd: -1 }], 'Result.usage[0].costUsd: must be a finite number >= 0, got -1 (task wf/t1)'],
      [
        [{ ...good, costUsd: Number.POSITIVE_INFINITY }],
        'Result.usage[0].costUsd: must be a finite number >= 0, got Infinity (task wf/t1)',
      ],
      [
        [{ ...good, costUsd: Number.NaN }],
        'Result.usage[0].costUsd: must be a finite number >= 0, got NaN (task wf/t1)',
      ],
      [
        Array.from({ length: MAX_USAGE_MODELS + 1 }, (_, i) => ({ ...good, model: `m${i}` })),
        `Result.usage of wf/t1: at most ${MAX_USAGE_MODELS} models, got ${MAX_USAGE_MODELS + 1}`,
      ],
      [
        [
          { ...good, inputTokens: Number.MAX_SAFE_INTEGER },
          { ...good, inputTokens: 10 },
        ],
        'Result.usage[1].inputTokens: the sum for model "gpt-x" passes the largest safe integer (task wf/t1)',
      ],
    ];
    for (const [usage, message] of cases) {
      a.send(result(usage));
      expect(await a.next('error')).toMatchObject({ code: 'INVALID', message, taskId: 'wf/t1' });
    }
    // Nothing changed: the claim holds, no result, nothing counted.
    expect((await claims.current(ref('t1')))?.token).toBe(assign.token);
    expect(await claims.result(ref('t1'))).toBeUndefined();
    expect(await counters()).toEqual({ input: 0, output: 0, cost: 0, gpt: 0 });

    // Good usage (a model named twice is summed) commits with the result, in one transaction.
    a.send(
      result([good, { ...good, inputTokens: 1, outputTokens: 2, costUsd: 0.5 }, { model: 'small', inputTokens: 7 }]),
    );
    expect(await a.next('ack')).toMatchObject({ taskId: 'wf/t1', status: 'COMMITTED' });
    const stored = await claims.result(ref('t1'));
    expect(stored?.usage).toEqual([
      { model: 'gpt-x', inputTokens: 101, outputTokens: 22, costNanos: 750_000_000 },
      { model: 'small', inputTokens: 7, outputTokens: 0, costNanos: 0 },
    ]);
    const committed = events.find((e) => e.type === 'committed' && e.ref.task === 't1');
    expect(committed?.type === 'committed' && committed.result.usage).toEqual(stored?.usage);
    expect(await counters()).toEqual({ input: 108, output: 22, cost: 0.75, gpt: 123 });

    // The same result again is acked, but neither stored twice nor counted twice.
    a.send(result([good]));
    expect(await a.next('ack')).toMatchObject({ taskId: 'wf/t1', status: 'COMMITTED' });
    expect(await counters()).toEqual({ input: 108, output: 22, cost: 0.75, gpt: 123 });

    // A cancelled attempt's result is superseded: its usage goes nowhere.
    dispatcher.submit({ ref: ref('t2'), pool: 'pool-u', handler: 'work', input: {} });
    const second = await a.next('assign');
    await dispatcher.cancel(ref('t2'), 'test');
    await a.next('cancel');
    a.send({
      result: {
        taskId: 'wf/t2',
        attempt: 1,
        token: second.token,
        error: { message: 'cancelled', retryable: true, code: 'CANCELLED' },
        usage: [good],
      },
    });
    expect(await a.next('ack')).toMatchObject({ taskId: 'wf/t2', status: 'SUPERSEDED' });
    expect(await claims.result(ref('t2'))).toBeUndefined();
    expect((await claims.history(sec.namespace, 'wf', 't2')).get('t2')).toBeUndefined();
    expect(await counters()).toEqual({ input: 108, output: 22, cost: 0.75, gpt: 123 });
  });
});
