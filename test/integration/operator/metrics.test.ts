import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ClusterHandle } from '../../cluster/cluster-handle.ts';
import type { ProcessKubelet } from '../../cluster/kubelet/kubelet.ts';
import { freePort } from '../../cluster/ports.ts';
import { lintExposition, parseSamples, type Sample, sumOf } from '../../cluster/promlint.ts';
import { testCluster, uniqueName } from '../../cluster/testing.ts';
import { fixturePool, getWorkflow, phaseIs, readHandlerLog, workflowManifest } from '../workflow/helpers.ts';
import { apply, createNamespace, installCrds, nodes, OperatorProcess, pods, pool, until } from './helpers.ts';

// The operator's /metrics as a user scrapes it: a real operator process (leader, dispatcher,
// controllers), two real agentflow-agent processes in pool pods on a process kubelet, real etcd.
// Every scrape must pass Prometheus' own parser and promlint (tools/promlint) without a problem,
// and the task metrics move as the workflows run: tasks by outcome, attempts, queue waits,
// dispatches, agents and free slots, workflows by phase, lease expiries and re-queues.

let cluster: ClusterHandle;
let ns: string;
let operator: OperatorProcess;
let opsPort: number;
let handlerLog: string;
let kubelet: ProcessKubelet;
const group = uniqueName('g');
const AGENTS = 2;
const CAPACITY = 4;

const ofPool = () => ({ namespace: ns, pool: 'agents' });

/** One scrape, checked by Prometheus' parser and promlint, as samples. */
async function scrape(): Promise<Sample[]> {
  const res = await fetch(`http://127.0.0.1:${opsPort}/metrics`);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toBe('text/plain; version=0.0.4; charset=utf-8');
  const text = await res.text();
  expect(await lintExposition(text)).toEqual([]);
  return parseSamples(text);
}

const tasks = (s: Sample[], outcome: string) => sumOf(s, 'agentflow_tasks_total', { ...ofPool(), outcome });
const outcomes = (s: Sample[]) =>
  Object.fromEntries(['succeeded', 'failed', 'retried', 'cancelled'].map((o) => [o, tasks(s, o)]));

beforeAll(async () => {
  cluster = testCluster();
  await installCrds(cluster);
  ns = await createNamespace(cluster, 'metrics');
  handlerLog = join(cluster.info.dir, `handlers-${ns}.jsonl`);
  // The kubelet's handle, to kill -9 agent processes (the pods' nodes become Ready before the agents connect).
  kubelet = await cluster.startKubelet(nodes(group, [{ suffix: 'a', cpu: '8', memory: '16Gi' }]));
  operator = new OperatorProcess(cluster, {
    name: 'op-metrics',
    namespace: ns,
    prefix: `/${uniqueName('metrics')}`,
    election: uniqueName('metrics'),
    dispatcherPort: await freePort(),
    // Short agent leases, so killed agents' leases run out within the test.
    agentLeaseTtl: 2,
  });
  opsPort = (await operator.waitFor('Ops server listening')).port as number;
  await operator.waitFor('Operator is leading');
  await apply(
    cluster,
    fixturePool(ns, 'agents', {
      group,
      replicas: AGENTS,
      capacity: CAPACITY,
      handlersModule: 'test/fixtures/agent/workflow-handlers.mjs',
      handlerLog,
    }),
  );
  await until(
    `${AGENTS} agents connected`,
    () => pool(cluster, ns, 'agents'),
    (p) => p.status?.connectedAgents === AGENTS,
    60_000,
  );
});

afterAll(async () => {
  operator?.kill('SIGTERM');
  await operator?.exited;
  await cluster.client.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  await cluster.close();
});

describe('operator /metrics', () => {
  it('shows the leader, the agents connected and all their slots free before any task', async () => {
    const s = await scrape();
    expect(sumOf(s, 'agentflow_leader')).toBe(1);
    expect(sumOf(s, 'agentflow_agents_connected', ofPool())).toBe(AGENTS);
    expect(sumOf(s, 'agentflow_agent_slots_free', ofPool())).toBe(AGENTS * CAPACITY);
    expect(outcomes(s)).toEqual({ succeeded: 0, failed: 0, retried: 0, cancelled: 0 });
    expect(sumOf(s, 'agentflow_agent_lease_expiries_total', ofPool())).toBe(0);
    expect(sumOf(s, 'agentflow_workflows')).toBe(0);
    // The process metrics are there too, under prom-client's standard names.
    expect(sumOf(s, 'process_resident_memory_bytes')).toBeGreaterThan(10_000_000);
    expect(sumOf(s, 'nodejs_heap_size_used_bytes')).toBeGreaterThan(1_000_000);
  });

  it('counts every attempt by outcome, with its queue wait, dispatch and run time, and workflows by phase', async () => {
    const before = await scrape();
    // 1 + 6 tasks that succeed, and one that fails once (retryably) and succeeds on its second attempt.
    await apply(
      cluster,
      workflowManifest(ns, 'fan', {
        pool: 'agents',
        tasks: [
          { name: 'gen', handler: 'range', input: { count: 6 } },
          {
            name: 'each',
            handler: 'noop',
            dependsOn: ['gen'],
            forEach: 'tasks.gen.output.items',
            input: { i: '${{ item }}' },
          },
        ],
      }),
    );
    await apply(
      cluster,
      workflowManifest(ns, 'flaky', {
        pool: 'agents',
        retryPolicy: { maxAttempts: 3, backoff: { initialSeconds: 0.2, factor: 2 } },
        tasks: [{ name: 'try', handler: 'flaky', input: { succeedOn: 2 } }],
      }),
    );
    for (const name of ['fan', 'flaky']) {
      const w = await until(
        `${name} done`,
        () => getWorkflow(cluster, ns, name),
        phaseIs('Succeeded', 'Failed'),
        60_000,
      );
      expect(w.status.phase).toBe('Succeeded');
    }
    const attempts = 1 + 6 + 2;
    // agentflow_workflows is read from the leader's informer cache, which learns of the status the
    // leader wrote one watch event after the API server has it: wait for that event, not a fixed time.
    const s = await until(
      'the gauge sees both workflows Succeeded',
      () => scrape(),
      (x) => sumOf(x, 'agentflow_workflows', { phase: 'Succeeded' }) === 2,
      15_000,
    );
    expect(outcomes(s)).toEqual({ succeeded: 8, failed: 1, retried: 0, cancelled: 0 });
    const grew = (name: string, labels: Record<string, string> = {}) =>
      sumOf(s, name, labels) - sumOf(before, name, labels);
    const byPool = { pool: 'agents' };
    expect(grew('agentflow_task_queue_wait_seconds_count', byPool)).toBe(attempts);
    expect(grew('agentflow_task_attempt_duration_seconds_count', byPool)).toBe(attempts);
    expect(grew('agentflow_dispatch_duration_seconds_count')).toBe(attempts);
    // Seconds, not milliseconds: these tasks waited and ran for well under a minute each.
    expect(grew('agentflow_task_queue_wait_seconds_sum', byPool)).toBeLessThan(attempts * 60);
    expect(grew('agentflow_task_attempt_duration_seconds_sum', byPool)).toBeGreaterThan(0);
    expect(grew('agentflow_task_attempt_duration_seconds_sum', byPool)).toBeLessThan(attempts * 60);
    expect(grew('agentflow_dispatch_duration_seconds_sum')).toBeGreaterThan(0);
    expect(sumOf(s, 'agentflow_dispatch_duration_seconds_bucket', { le: '+Inf' })).toBe(
      sumOf(s, 'agentflow_dispatch_duration_seconds_count'),
    );
    // Nothing was lost or put back in line, and every slot is free again.
    expect(sumOf(s, 'agentflow_task_requeues_total', ofPool())).toBe(0);
    expect(sumOf(s, 'agentflow_agent_slots_free', ofPool())).toBe(AGENTS * CAPACITY);
    expect(sumOf(s, 'agentflow_workflows', { phase: 'Succeeded' })).toBe(2);
    expect(sumOf(s, 'agentflow_workflows', { phase: 'Running' })).toBe(0);
  });

  it('counts a cancelled attempt, and its slot is free again once the handler stopped', async () => {
    await apply(
      cluster,
      workflowManifest(ns, 'doomed', { pool: 'agents', tasks: [{ name: 'wait', handler: 'hang' }] }),
    );
    await until(
      'the handler started',
      () => readHandlerLog(handlerLog),
      (l) => l.some((x) => x.task === 'doomed/wait' && x.event === 'started'),
      30_000,
    );
    const running = await scrape();
    expect(sumOf(running, 'agentflow_agent_slots_free', ofPool())).toBe(AGENTS * CAPACITY - 1);
    expect(sumOf(running, 'agentflow_workflows', { phase: 'Running' })).toBe(1);
    const annotated = await cluster.kubectl(['annotate', '-n', ns, 'awf/doomed', 'agentflow.io/cancel=by-test']);
    expect(annotated.code).toBe(0);
    await until('doomed Cancelled', () => getWorkflow(cluster, ns, 'doomed'), phaseIs('Cancelled'), 30_000);
    const idle = await until(
      'every slot free again, and the gauge sees the Cancelled phase (one informer event after the API)',
      () => scrape(),
      (s) =>
        sumOf(s, 'agentflow_agent_slots_free', ofPool()) === AGENTS * CAPACITY &&
        sumOf(s, 'agentflow_workflows', { phase: 'Cancelled' }) === 1,
      30_000,
    );
    expect(outcomes(idle)).toEqual({ succeeded: 8, failed: 1, retried: 0, cancelled: 1 });
    expect(sumOf(idle, 'agentflow_workflows', { phase: 'Cancelled' })).toBe(1);
    expect(sumOf(idle, 'agentflow_workflows', { phase: 'Running' })).toBe(0);
    expect(sumOf(idle, 'agentflow_agents_connected', ofPool())).toBe(AGENTS);
  });

  it('counts the leases of killed agents and the attempt they lost, which runs again', async () => {
    const before = await scrape();
    await apply(
      cluster,
      workflowManifest(ns, 'orphaned', {
        pool: 'agents',
        tasks: [{ name: 'slow', handler: 'hang', input: { ms: 2000 } }],
      }),
    );
    await until(
      'the handler started',
      () => readHandlerLog(handlerLog),
      (l) => l.some((x) => x.task === 'orphaned/slow' && x.event === 'started'),
      30_000,
    );
    // kill -9 both agents (no drain): one of them held the attempt. Their containers restart.
    for (const p of await pods(cluster, ns, 'agents')) expect(kubelet.kill(ns, p.name, 'SIGKILL')).toBe(true);
    const w = await until(
      'orphaned done',
      () => getWorkflow(cluster, ns, 'orphaned'),
      phaseIs('Succeeded', 'Failed'),
      60_000,
    );
    expect(w.status.phase).toBe('Succeeded');
    const s = await until(
      'both leases counted as expired and both agents back',
      () => scrape(),
      (x) =>
        sumOf(x, 'agentflow_agent_lease_expiries_total', ofPool()) === AGENTS &&
        sumOf(x, 'agentflow_agents_connected', ofPool()) === AGENTS,
      30_000,
    );
    const grew = (outcome: string) => tasks(s, outcome) - tasks(before, outcome);
    expect(['succeeded', 'failed', 'retried', 'cancelled'].map(grew)).toEqual([1, 0, 1, 0]);
    // The lost attempt went back in line once: when its claim went with the lease, or when its
    // restarted agent registered without it, whichever came first.
    const requeues = (reason: string) => sumOf(s, 'agentflow_task_requeues_total', { ...ofPool(), reason });
    expect(requeues('lease_expired') + requeues('agent_reconnected')).toBe(1);
    expect(sumOf(s, 'agentflow_task_requeues_total', ofPool())).toBe(1);
    expect(sumOf(s, 'agentflow_agent_slots_free', ofPool())).toBe(AGENTS * CAPACITY);
  }, 120_000);
});
