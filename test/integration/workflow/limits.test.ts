import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ClusterHandle } from '../../cluster/cluster-handle.ts';
import { freePort } from '../../cluster/ports.ts';
import { testCluster, uniqueName } from '../../cluster/testing.ts';
import {
  apply,
  createNamespace,
  installCrds,
  nodes,
  OperatorProcess,
  pool,
  startNodes,
  until,
} from '../operator/helpers.ts';
import { fixturePool, getWorkflow, type Json, phaseIs, readHandlerLog, workflowManifest } from './helpers.ts';

// Concurrency keys and rate limits end to end: a real operator process (leader, dispatcher,
// controllers), real agentflow-agent processes in pool pods, real etcd and kube-apiserver. The
// handlers note when they start and end; from those timestamps the test measures what ran at once
// (a key never over its max across workflows) and how often (a rate limit's rate), and reads the
// held tasks' messages from the Workflow status.

let cluster: ClusterHandle;
let ns: string;
let operator: OperatorProcess;
let handlerLog: string;
const group = uniqueName('g');
const RATE = 10;

const getWf = (name: string) => getWorkflow(cluster, ns, name);
const taskStatus = (w: Json, name: string): Json | undefined =>
  (w.status?.tasks ?? []).find((t: Json) => t.name === name);
const entries = (key: string) => readHandlerLog(handlerLog).filter((l) => l.key === key);

/** The most handlers of `key` running at once, swept over their start and end times. */
function mostAtOnce(key: string): { most: number; starts: number } {
  const events = entries(key)
    .filter((l) => l.handler === 'hold')
    .map((l) => ({ at: l.at as number, d: l.event === 'start' ? 1 : -1 }))
    // An end and a start in the same millisecond: the end first (the slot was freed by that end).
    .sort((a, b) => a.at - b.at || a.d - b.d);
  let now = 0;
  let most = 0;
  for (const e of events) {
    now += e.d;
    most = Math.max(most, now);
  }
  return { most, starts: events.filter((e) => e.d === 1).length };
}

beforeAll(async () => {
  cluster = testCluster();
  await installCrds(cluster);
  ns = await createNamespace(cluster, 'limits');
  handlerLog = join(cluster.info.dir, `handlers-${ns}.jsonl`);
  await startNodes(cluster, nodes(group, [{ suffix: 'a', cpu: '8', memory: '16Gi' }]));
  operator = new OperatorProcess(cluster, {
    name: 'op-limits',
    namespace: ns,
    prefix: `/${uniqueName('limits')}`,
    election: uniqueName('limits'),
    dispatcherPort: await freePort(),
  });
  await operator.waitFor('Operator is leading');
  const p = fixturePool(ns, 'agents', {
    group,
    replicas: 2,
    capacity: 8,
    handlersModule: 'test/fixtures/agent/limit-handlers.mjs',
    handlerLog,
  });
  p.spec.rateLimits = [{ name: 'calls', perSecond: RATE }];
  await apply(cluster, p);
  await until(
    '2 agents connected',
    () => pool(cluster, ns, 'agents'),
    (x) => x.status?.connectedAgents === 2,
    60_000,
  );
});

afterAll(async () => {
  operator?.kill('SIGTERM');
  await operator?.exited;
  await cluster.client.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  await cluster.close();
});

describe('concurrency keys', () => {
  it('a key with max 2 shared by 3 workflows never has more than 2 running, and all finish', async () => {
    const tasks = (customer: string, n: number) =>
      Array.from({ length: n }, (_, i) => ({
        name: `t${i}`,
        handler: 'hold',
        input: { key: customer, ms: 1_000 },
        concurrency: { key: "'customer-' + inputs.customer", max: 2 },
      }));
    const names = ['acme-1', 'acme-2', 'acme-3'];
    for (const name of names)
      await apply(
        cluster,
        workflowManifest(ns, name, { pool: 'agents', inputs: { customer: 'acme' }, tasks: tasks('acme', 4) }),
      );
    // Another customer's key is not held by acme's.
    await apply(
      cluster,
      workflowManifest(ns, 'globex', { pool: 'agents', inputs: { customer: 'globex' }, tasks: tasks('globex', 2) }),
    );
    // While they run, a held task says why in the Workflow status.
    const held = await until(
      'a task held by the key',
      async () => {
        const ws = await Promise.all(names.map(getWf));
        return ws.flatMap((w) => (w.status?.tasks ?? []) as Json[]).find((t) => t.phase === 'Queued' && t.message);
      },
      (t) => t !== undefined,
      30_000,
    );
    expect(held?.message).toBe('waiting on concurrency key customer-acme (2 of 2 running)');
    for (const name of [...names, 'globex'])
      await until(`${name} Succeeded`, () => getWf(name), phaseIs('Succeeded', 'Failed'), 120_000);
    for (const name of names) {
      const w = await getWf(name);
      expect(w.status.phase).toBe('Succeeded');
      // The held message is gone once the task ran.
      for (const t of w.status.tasks) expect(t.message ?? '').not.toContain('waiting on');
    }
    const acme = mostAtOnce('acme');
    const globex = mostAtOnce('globex');
    console.log(
      `concurrency: acme ran at most ${acme.most} at once (max 2) over ${acme.starts} tasks; globex ${globex.most}`,
    );
    expect(acme).toEqual({ most: 2, starts: 12 });
    expect(globex).toEqual({ most: 2, starts: 2 });
  }, 180_000);
});

describe('rate limits', () => {
  it(`a limit of ${RATE}/s holds within 10 % over 30 s, and a held task says when its next slot is`, async () => {
    const n = 30 * RATE + 1;
    await apply(
      cluster,
      workflowManifest(ns, 'calls', {
        pool: 'agents',
        inputs: { items: Array.from({ length: n }, (_, i) => i) },
        tasks: [
          {
            name: 'call',
            handler: 'tick',
            forEach: 'inputs.items',
            input: { key: 'rate' },
            rateLimits: [{ name: 'calls', key: "'acme'" }],
          },
        ],
      }),
    );
    await until(
      'the first calls ran',
      async () => entries('rate').length,
      (k) => k >= 5,
      60_000,
    );
    // A single task behind them in the same bucket: its status message says why it waits.
    await apply(
      cluster,
      workflowManifest(ns, 'one-more', {
        pool: 'agents',
        tasks: [
          { name: 'call', handler: 'tick', input: { key: 'one-more' }, rateLimits: [{ name: 'calls', key: "'acme'" }] },
        ],
      }),
    );
    const w = await until(
      'one-more held',
      () => getWf('one-more'),
      (x) => Boolean(taskStatus(x, 'call')?.message),
      30_000,
    );
    expect(taskStatus(w, 'call')?.message).toMatch(
      /^waiting on rate limit calls \(key acme\): next slot in \d+\.\d s$/,
    );
    await until('calls Succeeded', () => getWf('calls'), phaseIs('Succeeded', 'Failed'), 120_000);
    await until('one-more Succeeded', () => getWf('one-more'), phaseIs('Succeeded', 'Failed'), 60_000);
    expect((await getWf('calls')).status.phase).toBe('Succeeded');
    const starts = entries('rate')
      .map((l) => l.at as number)
      .sort((a, b) => a - b);
    expect(starts).toHaveLength(n);
    const seconds = ((starts.at(-1) as number) - (starts[0] as number)) / 1000;
    const rate = (n - 1) / seconds;
    // Over any one second, no more than the rate plus the burst (1) Assigns go out (they are paced at
    // the send, whatever the claim transactions before them did); give or take two for the agents:
    // a start is timed in the agent process, which a loaded machine can hold up 100 ms and more.
    let most = 0;
    for (let i = 0, j = 0; j < starts.length; j++) {
      while ((starts[j] as number) - (starts[i] as number) >= 1000) i++;
      most = Math.max(most, j - i + 1);
    }
    console.log(
      `rate limit: ${n} calls in ${seconds.toFixed(2)} s = ${rate.toFixed(2)}/s (limit ${RATE}/s); at most ${most} in any 1 s window`,
    );
    expect(Math.abs(rate - RATE) / RATE).toBeLessThanOrEqual(0.1);
    expect(most).toBeLessThanOrEqual(RATE + 1 + 2);
  }, 180_000);

  it('a limit the pool does not declare holds the task until the pool declares it', async () => {
    await apply(
      cluster,
      workflowManifest(ns, 'undeclared', {
        pool: 'agents',
        tasks: [
          { name: 'call', handler: 'tick', input: { key: 'undeclared' }, rateLimits: [{ name: 'search-calls' }] },
        ],
      }),
    );
    const w = await until(
      'undeclared held',
      () => getWf('undeclared'),
      (x) => Boolean(taskStatus(x, 'call')?.message),
      30_000,
    );
    expect(taskStatus(w, 'call')?.message).toBe(
      'waiting on rate limit search-calls: AgentPool agents declares no rate limit "search-calls" (spec.rateLimits)',
    );
    expect(entries('undeclared')).toEqual([]);
    const p = fixturePool(ns, 'agents', {
      group,
      replicas: 2,
      capacity: 8,
      handlersModule: 'test/fixtures/agent/limit-handlers.mjs',
      handlerLog,
    });
    p.spec.rateLimits = [
      { name: 'calls', perSecond: RATE },
      { name: 'search-calls', perMinute: 60 },
    ];
    await apply(cluster, p);
    await until('undeclared Succeeded', () => getWf('undeclared'), phaseIs('Succeeded', 'Failed'), 30_000);
    expect((await getWf('undeclared')).status.phase).toBe('Succeeded');
  }, 90_000);
});

describe('bad keys', () => {
  it.each([
    [
      'a concurrency key that is not a string',
      { concurrency: { key: 'inputs.num', max: 1 } },
      'spec.tasks[0].concurrency.key: inputs.num: must yield a string, not int',
    ],
    [
      'a rate-limit key over 253 characters',
      { rateLimits: [{ name: 'calls', key: 'inputs.long' }] },
      'spec.tasks[0].rateLimits[0].key: inputs.long: must yield a string of 1 to 253 characters, not one of 300',
    ],
  ])(
    '%s fails the task, naming the field',
    async (_what, limits, message) => {
      const name = uniqueName('bad');
      await apply(
        cluster,
        workflowManifest(ns, name, {
          pool: 'agents',
          inputs: { num: 5, long: 'x'.repeat(300) },
          tasks: [{ name: 'call', handler: 'tick', input: { key: name }, ...limits }],
        }),
      );
      const w = await until(`${name} finished`, () => getWf(name), phaseIs('Succeeded', 'Failed'), 30_000);
      expect(w.status.phase).toBe('Failed');
      expect(taskStatus(w, 'call')).toMatchObject({ phase: 'Failed', message });
      expect(entries(name)).toEqual([]);
    },
    60_000,
  );
});
