import { resolve } from 'node:path';
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
  pods,
  pool,
  poolManifest,
  startNodes,
  until,
} from './helpers.ts';

// Real agents (the agentflow-agent command) in the pool's pods, wired to the
// leader's dispatcher by the env the operator injects: the pool status counts
// connected agents and their slots, and a rollout drains each agent before
// its pod is deleted.

let cluster: ClusterHandle;
let ns: string;
let operator: OperatorProcess;
const group = uniqueName('g');
const agentCommand = [process.execPath, resolve('src/agent/main.ts')];
const handlers = { name: 'AGENTFLOW_HANDLERS_MODULE', value: resolve('test/fixtures/agent/handlers.mjs') };

beforeAll(async () => {
  cluster = testCluster();
  await installCrds(cluster);
  ns = await createNamespace(cluster, 'agents');
  await startNodes(cluster, nodes(group, [{ suffix: 'a', cpu: '16', memory: '32Gi' }]));
  operator = new OperatorProcess(cluster, {
    name: 'op-agents',
    namespace: ns,
    prefix: `/${uniqueName('agents')}`,
    election: uniqueName('agents'),
    dispatcherPort: await freePort(),
  });
  await operator.waitFor('Operator is leading');
});

afterAll(async () => {
  operator?.kill('SIGTERM');
  await operator?.exited;
  await cluster.client.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  await cluster.close();
});

describe('agent pods', () => {
  it('connect to the dispatcher, show up in the pool status, and are drained before a rollout deletes them', async () => {
    const manifest = (model: string) =>
      poolManifest(ns, 'live', {
        replicas: 2,
        group,
        capacity: 3,
        drainTimeoutSeconds: 20,
        cpu: '100m',
        command: agentCommand,
        env: [handlers, { name: 'MODEL', value: model }],
      });
    await apply(cluster, manifest('v1'));
    const connected = await until(
      'two agents connected',
      () => pool(cluster, ns, 'live'),
      (o) => o.status?.connectedAgents === 2 && o.status?.capacity === 6,
      60_000,
    );
    expect(connected.status).toMatchObject({
      replicas: 2,
      readyReplicas: 2,
      connectedAgents: 2,
      capacity: 6,
      inflight: 0,
    });
    const get = await cluster.kubectl(['get', '-n', ns, 'ap', 'live', '--no-headers']);
    expect(get.stdout.trim().split(/\s+/).slice(0, 4)).toEqual(['live', '2', '2', '6']);
    const before = await pods(cluster, ns, 'live');

    await apply(cluster, manifest('v2'));
    const after = await until(
      'two new agents connected',
      async () => ({ pods: await pods(cluster, ns, 'live'), pool: await pool(cluster, ns, 'live') }),
      (s) =>
        s.pods.length === 2 &&
        s.pods.every((p) => p.ready && !p.terminating && !before.some((b) => b.uid === p.uid)) &&
        s.pool.status?.connectedAgents === 2,
      90_000,
    );
    expect(after.pool.status.capacity).toBe(6);
    // Each old pod was drained first (its agent left the dispatcher), then deleted well inside the drain timeout.
    const drains = operator.lines.filter((l) => l.msg === 'Draining agent before deleting its pod');
    expect(drains.map((l) => l.pod).sort()).toEqual(['live-0', 'live-1']);
    expect(operator.has('Drain timed out; deleting the pod anyway')).toBe(false);
    const events = await cluster.client.get<{
      items: { reason: string; message: string; involvedObject: { name: string } }[];
    }>(`/api/v1/namespaces/${ns}/events`);
    const reasons = events.items.filter((e) => e.involvedObject.name === 'live').map((e) => e.reason);
    expect(reasons).toContain('Draining');
  });
});
