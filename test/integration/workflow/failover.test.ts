import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StateStore } from '../../../src/state/index.ts';
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
  poolManifest,
  startNodes,
  until,
} from '../operator/helpers.ts';
import { testStore } from '../state/helpers.ts';
import { getWorkflow, type Json, readHandlerLog } from './helpers.ts';

// The operator leader dies mid-workflow (kill -9): the standby takes over,
// resumes the run from its etcd records, the agents reconnect to the new
// dispatcher and keep their attempts, and the workflow finishes with every
// task run once. A finished workflow is deleted after ttlSecondsAfterFinished
// together with its etcd records. A leader killed right after it acknowledged
// a spawn has the children durable: after the failover each runs once.

let cluster: ClusterHandle;
let ns: string;
let store: StateStore;
const prefix = `/${uniqueName('fo')}`;
const election = uniqueName('fo');
const group = uniqueName('g');
const operators: OperatorProcess[] = [];
let dispatcherPort: number;
let handlerLog: string;

const getWf = (name: string) => getWorkflow(cluster, ns, name);
const handlerLines = (): Json[] => readHandlerLog(handlerLog);

function operator(name: string): OperatorProcess {
  // Agents usually come back within their lease (election ~3 s, then up to 5 s of reconnect back-off) and
  // the new leader adopts their attempts; one that comes back later has its finished results committed as
  // orphans (the same attempt queued again), so nothing runs twice either way: what this file checks.
  const o = new OperatorProcess(cluster, {
    name,
    namespace: ns,
    prefix,
    election,
    dispatcherPort,
    leaseTtl: 3,
  });
  operators.push(o);
  return o;
}

beforeAll(async () => {
  cluster = testCluster();
  await installCrds(cluster);
  ns = await createNamespace(cluster, 'fo');
  handlerLog = join(cluster.info.dir, `handlers-${ns}.jsonl`);
  await startNodes(cluster, nodes(group, [{ suffix: 'a', cpu: '8', memory: '16Gi' }]));
  store = testStore(prefix);
  dispatcherPort = await freePort();
  await operator('op-1').waitFor('Operator is leading');
  const m = poolManifest(ns, 'agents', {
    replicas: 2,
    group,
    capacity: 8,
    drainTimeoutSeconds: 5,
    cpu: '10m',
    memory: '32Mi',
    command: [process.execPath, resolve('src/agent/main.ts')],
    env: [
      { name: 'AGENTFLOW_HANDLERS_MODULE', value: resolve('test/fixtures/agent/workflow-handlers.mjs') },
      { name: 'HANDLER_LOG', value: handlerLog },
    ],
  });
  await apply(cluster, m);
  await until(
    '2 agents connected',
    () => pool(cluster, ns, 'agents'),
    (p) => p.status?.connectedAgents === 2,
    60_000,
  );
});

afterAll(async () => {
  for (const o of operators) o.kill('SIGKILL');
  store?.close();
  await cluster.client.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  await cluster.close();
});

describe('operator failover', () => {
  it('kill -9 of the leader mid-workflow: the standby resumes the run and every task commits once', async () => {
    const standby = operator('op-2');
    await standby.waitFor('Campaigning for leadership');
    await apply(cluster, {
      apiVersion: 'agentflow.io/v1alpha1',
      kind: 'Workflow',
      metadata: { name: 'steady', namespace: ns },
      spec: {
        pool: 'agents',
        tasks: [
          { name: 'gen', handler: 'range', input: { count: 6 } },
          { name: 'slow', handler: 'hang', dependsOn: ['gen'], forEach: 'tasks.gen.output.items', input: { ms: 3000 } },
          { name: 'after', handler: 'noop', dependsOn: ['slow'], input: { i: 7 } },
        ],
      },
    });
    await until(
      'the fan-out running',
      () => getWf('steady'),
      (w) => w.status?.progress?.running === 6,
      30_000,
    );
    // An edit while it runs is not applied (SpecApplied=False), and a new leader must not apply it either:
    // it resumes with the spec the run started with, kept in etcd.
    const edit = await cluster.kubectl([
      'patch',
      '-n',
      ns,
      'awf/steady',
      '--type=json',
      '-p',
      '[{"op":"replace","path":"/spec/tasks/2/input/i","value":99}]',
    ]);
    expect(edit.code, edit.stderr).toBe(0);
    await until(
      'the edit reported',
      () => getWf('steady'),
      (w) => w.status?.conditions?.some((c: Json) => c.type === 'SpecApplied' && c.status === 'False') === true,
      30_000,
    );
    const leader = operators[0] as OperatorProcess;
    const killedAt = Date.now();
    leader.kill('SIGKILL');
    await standby.waitFor('Operator is leading', 30_000);
    await standby.waitFor('Resumed a workflow run from etcd', 30_000);
    const w = await until(
      'steady finished',
      () => getWf('steady'),
      (x) => ['Succeeded', 'Failed'].includes(x.status?.phase),
      60_000,
    );
    console.log(`leader failover mid-workflow: finished ${Date.now() - killedAt} ms after kill -9 of the leader`);
    expect(w.status.phase).toBe('Succeeded');
    expect(w.status.progress).toEqual({ total: 8, succeeded: 8, failed: 0, running: 0, queued: 0 });
    expect(w.status.outputs.after).toEqual({ i: 7 }); // the spec it started with, not the edit
    expect(w.status.conditions.find((c: Json) => c.type === 'SpecApplied')).toMatchObject({
      status: 'False',
      reason: 'RunFinished',
    });
    // Every task has exactly one committed result, from one attempt.
    const results = await store.client.getAll().prefix(`${prefix}/results/${ns}/steady/`).strings();
    expect(
      Object.keys(results)
        .map((k) => k.split('/').pop())
        .sort(),
    ).toEqual(['after', 'gen', 'slow.0', 'slow.1', 'slow.2', 'slow.3', 'slow.4', 'slow.5']);
  });

  it('deletes a finished workflow after ttlSecondsAfterFinished, with its etcd records', async () => {
    await apply(cluster, {
      apiVersion: 'agentflow.io/v1alpha1',
      kind: 'Workflow',
      metadata: { name: 'brief', namespace: ns },
      spec: { pool: 'agents', ttlSecondsAfterFinished: 2, tasks: [{ name: 'one', handler: 'noop', input: { i: 1 } }] },
    });
    await until(
      'brief Succeeded',
      () => getWf('brief'),
      (w) => w.status?.phase === 'Succeeded',
      30_000,
    );
    expect(await store.client.getAll().prefix(`${prefix}/runs/${ns}/brief/`).keys()).not.toEqual([]);
    await until(
      'brief deleted',
      () => cluster.client.getOrUndefined<Json>(`/apis/agentflow.io/v1alpha1/namespaces/${ns}/workflows/brief`),
      (w) => w === undefined,
      30_000,
    );
    for (const kind of ['runs', 'results', 'audit', 'claims']) {
      expect(await store.client.getAll().prefix(`${prefix}/${kind}/${ns}/brief/`).keys()).toEqual([]);
    }
  });

  it('kill -9 of the leader right after it acked a spawn: the children are durable and each runs once', async () => {
    const leader = operators.find(
      (o) =>
        o.child.exitCode === null &&
        o.child.signalCode === null &&
        o.lines.some((l) => l.msg === 'Operator is leading'),
    ) as OperatorProcess;
    const standby = operator('op-3');
    await standby.waitFor('Campaigning for leadership');
    await apply(cluster, {
      apiVersion: 'agentflow.io/v1alpha1',
      kind: 'Workflow',
      metadata: { name: 'spawny', namespace: ns },
      spec: {
        pool: 'agents',
        tasks: [
          { name: 'p', handler: 'spawnThenWork', input: { count: 4, childMs: 1500, ms: 2000 } },
          { name: 'after', handler: 'noop', dependsOn: ['p'], input: { i: 9 } },
        ],
      },
    });
    // ctx.spawn has resolved: the dispatcher acked the children. Kill the leader at once, well inside
    // the time it would take to save records it had only in memory.
    const spawned = (l: Json) => l.handler === 'spawnThenWork' && l.event === 'spawned' && l.task === 'spawny/p';
    const deadline = Date.now() + 30_000;
    while (!handlerLines().some(spawned)) {
      if (Date.now() > deadline) throw new Error('timed out waiting for the spawn to resolve');
      await new Promise((r) => setTimeout(r, 5));
    }
    leader.kill('SIGKILL');
    await standby.waitFor('Operator is leading', 30_000);
    const w = await until(
      'spawny finished',
      () => getWf('spawny'),
      (x) => ['Succeeded', 'Failed'].includes(x.status?.phase),
      60_000,
    );
    expect(w.status.phase).toBe('Succeeded');
    expect(w.status.progress).toEqual({ total: 6, succeeded: 6, failed: 0, running: 0, queued: 0 });
    expect(w.status.outputs.after).toEqual({ i: 9 });
    const children = ['p~c0', 'p~c1', 'p~c2', 'p~c3'];
    const results = await store.client.getAll().prefix(`${prefix}/results/${ns}/spawny/`).strings();
    expect(
      Object.keys(results)
        .map((k) => k.split('/').pop())
        .sort(),
    ).toEqual(['after', 'p', ...children]);
    // Each child's handler started once (none lost, none re-run by the new leader); the parent ran once.
    const lines = handlerLines();
    for (const c of children) expect(lines.filter((l) => l.task === `spawny/${c}`)).toHaveLength(1);
    expect(lines.filter(spawned)).toHaveLength(1);
  });
});
