import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ClusterHandle } from '../../cluster/cluster-handle.ts';
import { freePort } from '../../cluster/ports.ts';
import {
  lintExposition,
  PromlintError,
  parseSamples,
  type Sample,
  sumOf as sumOfPresent,
} from '../../cluster/promlint.ts';
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

/** A usage counter's sum; 0 while it has no series (none until a result reports that model). */
function sumOf(...args: Parameters<typeof sumOfPresent>): number {
  try {
    return sumOfPresent(...args);
  } catch (err) {
    if (err instanceof PromlintError) return 0;
    throw err;
  }
}

// Model usage and budgets end to end: a real operator process (leader, dispatcher, controllers),
// real agentflow-agent processes in pool pods, real etcd and kube-apiserver. Handlers report
// usage with ctx.usage; status.usage and the Prometheus counters add up to exactly what the
// committed attempts reported (failed attempts included, superseded ones not); spec.budget fails
// or suspends a run with a condition, an Event and a message naming the figure.

let cluster: ClusterHandle;
let ns: string;
let operator: OperatorProcess;
let opsPort: number;
let handlerLog: string;
const group = uniqueName('g');

const workflow = (name: string, spec: Json): Json => workflowManifest(ns, name, spec);
const getWf = (name: string) => getWorkflow(cluster, ns, name);
const condition = (w: Json, type: string) => (w.status?.conditions ?? []).find((c: Json) => c.type === type);
const events = async (name: string) =>
  (await cluster.client.get<{ items: Json[] }>(`/api/v1/namespaces/${ns}/events`)).items.filter(
    (e) => e.involvedObject.name === name,
  );

async function scrape(): Promise<Sample[]> {
  const text = await (await fetch(`http://127.0.0.1:${opsPort}/metrics`)).text();
  expect(await lintExposition(text)).toEqual([]);
  return parseSamples(text);
}
const counters = (s: Sample[], model?: string) => {
  const of = { namespace: ns, pool: 'agents', ...(model && { model }) };
  return {
    inputTokens: sumOf(s, 'agentflow_usage_tokens_total', { ...of, kind: 'input' }),
    outputTokens: sumOf(s, 'agentflow_usage_tokens_total', { ...of, kind: 'output' }),
    costUsd: Math.round(sumOf(s, 'agentflow_usage_cost_usd_total', of) * 1e9) / 1e9,
  };
};
const minus = (a: ReturnType<typeof counters>, b: ReturnType<typeof counters>) => ({
  inputTokens: a.inputTokens - b.inputTokens,
  outputTokens: a.outputTokens - b.outputTokens,
  costUsd: Math.round((a.costUsd - b.costUsd) * 1e9) / 1e9,
});

beforeAll(async () => {
  cluster = testCluster();
  await installCrds(cluster);
  ns = await createNamespace(cluster, 'usage');
  handlerLog = join(cluster.info.dir, `handlers-${ns}.jsonl`);
  await startNodes(cluster, nodes(group, [{ suffix: 'a', cpu: '8', memory: '16Gi' }]));
  operator = new OperatorProcess(cluster, {
    name: 'op-usage',
    namespace: ns,
    prefix: `/${uniqueName('usage')}`,
    election: uniqueName('usage'),
    dispatcherPort: await freePort(),
  });
  opsPort = (await operator.waitFor('Ops server listening')).port as number;
  await operator.waitFor('Operator is leading');
  await apply(
    cluster,
    fixturePool(ns, 'agents', {
      group,
      replicas: 2,
      capacity: 8,
      handlersModule: 'test/fixtures/agent/usage-handlers.mjs',
      handlerLog,
    }),
  );
  await until(
    '2 agents connected',
    () => pool(cluster, ns, 'agents'),
    (p) => p.status?.connectedAgents === 2,
    60_000,
  );
});

afterAll(async () => {
  operator?.kill('SIGTERM');
  await operator?.exited;
  await cluster.client.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  await cluster.close();
});

const call = (model: string, inputTokens: number, outputTokens: number, costUsd: number) => ({
  model,
  inputTokens,
  outputTokens,
  costUsd,
});

describe('usage', () => {
  it('sums a fan-out with retries exactly: failed attempts count, status.usage and the counters agree', async () => {
    const start = await scrape();
    const before = counters(start);
    // Item k reports its calls on every attempt; item 1 fails its first attempt (counted), item 3 its first two.
    const items = [
      { calls: [call('big', 1000, 200, 0.125)], succeedOn: 1 },
      { calls: [call('big', 300, 50, 0.0625), call('small', 40, 4, 0.001)], succeedOn: 2 },
      { calls: [call('small', 10, 1, 0.0005), call('small', 5, 1, 0.0005)], succeedOn: 1 },
      { calls: [call('big', 7, 3, 0.25)], succeedOn: 3 },
    ];
    await apply(
      cluster,
      workflow('fan', {
        pool: 'agents',
        inputs: { items },
        retryPolicy: { maxAttempts: 3, backoff: { initialSeconds: 0.2, factor: 1 } },
        tasks: [
          {
            name: 'each',
            handler: 'spend',
            forEach: 'inputs.items',
            input: { calls: '${{ item.calls }}', succeedOn: '${{ item.succeedOn }}' },
          },
        ],
      }),
    );
    const done = await until('fan Succeeded', () => getWf('fan'), phaseIs('Succeeded', 'Failed'), 60_000);
    expect(done.status.phase).toBe('Succeeded');
    // Attempts as the handler log saw them: 1 + 2 + 1 + 3.
    const ran = readHandlerLog(handlerLog).filter((l) => l.task.startsWith('fan/'));
    expect(ran).toHaveLength(7);
    // big: 1000+200 once, 300+50 twice, 7+3 three times; small: 40+4 twice, 15+2 once.
    const big = { model: 'big', inputTokens: 1000 + 600 + 21, outputTokens: 200 + 100 + 9, costUsd: 1 };
    const small = { model: 'small', inputTokens: 80 + 15, outputTokens: 8 + 2, costUsd: 0.003 };
    const total = {
      inputTokens: big.inputTokens + small.inputTokens,
      outputTokens: big.outputTokens + small.outputTokens,
      costUsd: 1.003,
    };
    expect(done.status.usage).toEqual({ ...total, byModel: [big, small] });
    expect(done.status.tasks).toEqual([expect.objectContaining({ name: 'each', usage: total })]);
    // The counters moved by exactly that (they count on commit, before the status is written).
    const after = await scrape();
    expect(minus(counters(after), before)).toEqual(total);
    const { model: _b, ...bigFigures } = big;
    const { model: _s, ...smallFigures } = small;
    expect(minus(counters(after, 'big'), counters(start, 'big'))).toEqual(bigFigures);
    expect(minus(counters(after, 'small'), counters(start, 'small'))).toEqual(smallFigures);
  });

  it("a superseded attempt's usage is not counted: a task failing for good cancels its sibling", async () => {
    const before = counters(await scrape());
    await apply(
      cluster,
      workflow('sibling', {
        pool: 'agents',
        tasks: [
          { name: 'hang', handler: 'spendThenHang', input: { calls: [call('big', 5000, 5000, 5)] } },
          { name: 'fail', handler: 'spendThenFail', input: { calls: [call('big', 10, 20, 0.5)], ms: 1500 } },
        ],
      }),
    );
    const done = await until('sibling Failed', () => getWf('sibling'), phaseIs('Failed', 'Succeeded'), 60_000);
    expect(done.status.phase).toBe('Failed');
    // The hanging attempt reported its usage, was cancelled, and its result (sent with the usage) was superseded.
    await until(
      'the sibling aborted',
      () => readHandlerLog(handlerLog),
      (l) => l.some((x) => x.task === 'sibling/hang' && x.event === 'aborted'),
      30_000,
    );
    expect(done.status.usage).toEqual({
      inputTokens: 10,
      outputTokens: 20,
      costUsd: 0.5,
      byModel: [{ model: 'big', inputTokens: 10, outputTokens: 20, costUsd: 0.5 }],
    });
    // Give the superseded result time to reach the dispatcher: it still adds nothing.
    await new Promise((r) => setTimeout(r, 1_000));
    expect(minus(counters(await scrape()), before)).toEqual({ inputTokens: 10, outputTokens: 20, costUsd: 0.5 });
    expect((await getWf('sibling')).status.usage.inputTokens).toBe(10);
  });
});

describe('budgets', () => {
  it('action Fail: the result that passes maxTokens fails the run, with the condition, an Event and the figure', async () => {
    await apply(
      cluster,
      workflow('capped', {
        pool: 'agents',
        parallelism: 1,
        budget: { maxTokens: 1000 },
        inputs: { items: [0, 1, 2, 3, 4] },
        tasks: [
          {
            name: 'each',
            handler: 'spend',
            forEach: 'inputs.items',
            input: { calls: [call('big', 300, 100, 0.01)], succeedOn: 1 },
          },
        ],
      }),
    );
    const done = await until('capped Failed', () => getWf('capped'), phaseIs('Failed', 'Succeeded'), 60_000);
    const figure = 'used 1,200 tokens of a budget of 1,000 (spec.budget.maxTokens)';
    expect(done.status.phase).toBe('Failed');
    expect(done.status.message).toBe(`the workflow exceeded its budget: ${figure}`);
    expect(condition(done, 'Failed')).toMatchObject({ status: 'True', reason: 'BudgetExceeded' });
    expect(condition(done, 'BudgetExceeded')).toMatchObject({ status: 'True', reason: 'MaxTokens', message: figure });
    expect(done.status.usage).toMatchObject({ inputTokens: 900, outputTokens: 300 });
    // Three ran (one at a time); the third took it over, and nothing started after it.
    expect(readHandlerLog(handlerLog).filter((l) => l.task.startsWith('capped/'))).toHaveLength(3);
    const ev = await until(
      'the BudgetExceeded Event',
      () => events('capped'),
      (l) => l.some((e) => e.reason === 'BudgetExceeded'),
    );
    expect(ev.find((e) => e.reason === 'BudgetExceeded')).toMatchObject({ type: 'Warning', message: figure });
    expect(ev.find((e) => e.reason === 'Failed')?.message).toContain(figure);
  });

  it('action Suspend: new tasks wait once maxCostUsd is passed, and raising the budget resumes the run', async () => {
    await apply(
      cluster,
      workflow('held', {
        pool: 'agents',
        parallelism: 1,
        budget: { maxCostUsd: 0.5, action: 'Suspend' },
        inputs: { items: [0, 1, 2, 3] },
        tasks: [
          {
            name: 'each',
            handler: 'spend',
            forEach: 'inputs.items',
            input: { calls: [call('big', 1, 1, 0.3)], succeedOn: 1 },
          },
        ],
      }),
    );
    const figure = 'used $0.60 of a budget of $0.50 (spec.budget.maxCostUsd)';
    const held = await until(
      'held Suspended',
      () => getWf('held'),
      phaseIs('Suspended', 'Succeeded', 'Failed'),
      60_000,
    );
    expect(held.status.phase).toBe('Suspended');
    expect(held.status.message).toContain(`budget exceeded: ${figure}`);
    expect(condition(held, 'BudgetExceeded')).toMatchObject({ status: 'True', reason: 'MaxCostUsd', message: figure });
    expect(condition(held, 'Suspended')).toMatchObject({ status: 'True' });
    expect(held.status.usage.costUsd).toBe(0.6);
    // Held: nothing more starts.
    await new Promise((r) => setTimeout(r, 1_500));
    expect(readHandlerLog(handlerLog).filter((l) => l.task.startsWith('held/'))).toHaveLength(2);
    expect((await getWf('held')).status.phase).toBe('Suspended');
    const ev = await until(
      'the BudgetExceeded Event',
      () => events('held'),
      (l) => l.some((e) => e.reason === 'BudgetExceeded'),
    );
    expect(ev.find((e) => e.reason === 'BudgetExceeded')).toMatchObject({ type: 'Warning', message: figure });

    const patched = await cluster.kubectl([
      'patch',
      '-n',
      ns,
      'awf/held',
      '--type=merge',
      '-p',
      '{"spec":{"budget":{"maxCostUsd":5}}}',
    ]);
    expect(patched.code).toBe(0);
    const done = await until('held Succeeded', () => getWf('held'), phaseIs('Succeeded', 'Failed'), 60_000);
    expect(done.status.phase).toBe('Succeeded');
    expect(done.status.usage.costUsd).toBe(1.2);
    expect(condition(done, 'BudgetExceeded')).toMatchObject({ status: 'False', reason: 'WithinBudget' });
    // A budget edit is applied to the started run, not reported as an ignored spec change.
    expect(condition(done, 'SpecApplied')).toMatchObject({ status: 'True' });
    expect(readHandlerLog(handlerLog).filter((l) => l.task.startsWith('held/'))).toHaveLength(4);
  });
});
