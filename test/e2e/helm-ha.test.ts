import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { installAgentflow } from '../cluster/agentflow-install.ts';
import type { ClusterHandle } from '../cluster/cluster-handle.ts';
import { agentflowImage, etcdImage } from '../cluster/node-images.ts';
import { RealNode } from '../cluster/real-node.ts';
import { testCluster, uniqueName } from '../cluster/testing.ts';
import { until } from '../integration/operator/helpers.ts';

// The chart with its high-availability values as users install them (charts/agentflow/ci/ha-values.yaml:
// three operators, a three-member bundled etcd) on two real nodes, each member on a volume of its own.
// Then every container on the node holding one etcd member and whatever else landed there is killed
// mid-run: the other two members keep a quorum, and the run Succeeds with no task lost.

// biome-ignore lint/suspicious/noExplicitAny: raw API JSON
type Json = Record<string, any>;

let cluster: ClusterHandle;
let realNodes: RealNode[] = [];
const release = 'ha';
const namespace = uniqueName('agentflow-ha');
const work = uniqueName('ha-work');
const external = testCluster().info.external;

const releasePods = async (component: string) =>
  (
    await cluster.client.get<{ items: Json[] }>(
      `/api/v1/namespaces/${namespace}/pods?labelSelector=${encodeURIComponent(
        `app.kubernetes.io/instance=${release},app.kubernetes.io/component=${component}`,
      )}`,
    )
  ).items;

const ready = (p: Json) => p.status?.conditions?.some((c: Json) => c.type === 'Ready' && c.status === 'True') === true;

beforeAll(async () => {
  cluster = testCluster();
  if (external) return;
  const images = [await agentflowImage(), await etcdImage()];
  const group = uniqueName('ha');
  realNodes = await Promise.all(
    ['a', 'b'].map((suffix) => RealNode.start(cluster, { name: `${group}-${suffix}`, images, taint: false })),
  );
  // Members 0 and 2 on node a, member 1 on node b: their volumes decide where they run.
  for (const [i, node] of [realNodes[0], realNodes[1], realNodes[0]].entries()) {
    await node?.hostPathVolume(`${group}-etcd-${i}`, '1Gi', { namespace, name: `data-${release}-agentflow-etcd-${i}` });
  }
}, 900_000);

afterAll(async () => {
  if (!external) {
    await cluster.kubectl(['delete', 'workflows,agentpools', '--all', '-n', work, '--wait=true', '--timeout=60s']);
    await cluster.helm(['uninstall', release, '--namespace', namespace, '--wait', '--timeout', '120s']);
    await cluster.kubectl(['delete', 'namespace', work, namespace, '--wait=false']);
  }
  for (const n of realNodes) await n.stop();
  await cluster.close();
}, 300_000);

describe.skipIf(external)('helm install with the HA values on real nodes', () => {
  it('runs three operators and a three-member etcd, each member on its own volume', async () => {
    await installAgentflow(cluster, {
      release,
      namespace,
      realNodes: true,
      values: ['charts/agentflow/ci/ha-values.yaml'],
    });
    const operators = await releasePods('operator');
    expect(operators.filter(ready)).toHaveLength(3);
    const members = await until(
      'three etcd members Ready',
      () => releasePods('etcd'),
      (ps) => ps.filter(ready).length === 3,
      120_000,
    );
    expect(members.map((p) => p.metadata.name).sort()).toEqual([0, 1, 2].map((i) => `${release}-agentflow-etcd-${i}`));
    for (const i of [0, 1, 2]) {
      const claim = await cluster.client.get<Json>(
        `/api/v1/namespaces/${namespace}/persistentvolumeclaims/data-${release}-agentflow-etcd-${i}`,
      );
      expect(claim.status.phase).toBe('Bound');
    }
    await until(
      'one leader',
      () => releasePods('operator'),
      (ps) => ps.filter((p) => p.metadata.labels?.['agentflow.io/role'] === 'leader').length === 1,
      60_000,
    );
  });

  it('loses a node with one etcd member mid-run: the quorum holds and the run Succeeds', async () => {
    await cluster.client.post('/api/v1/namespaces', { metadata: { name: work } });
    for (const file of ['deploy/examples/agentpool.yaml', 'deploy/examples/workflow-research.yaml']) {
      const text = readFileSync(file, 'utf8').replace('questions: 3', 'questions: 1000');
      const r = await cluster.kubectl(['apply', '-n', work, '-f', '-'], { input: text });
      expect(r.code, r.stderr).toBe(0);
    }
    const path = `/apis/agentflow.io/v1alpha1/namespaces/${work}/workflows/research-report`;
    await until(
      'a quarter of the run done',
      () => cluster.client.get<Json>(path),
      (w) => (w.status?.progress?.succeeded ?? 0) >= 250,
      180_000,
    );
    const member1 = realNodes[1] as RealNode;
    expect((await cluster.client.get<Json>(path)).status.phase).toBe('Running');
    expect(await member1.killContainers()).toBeGreaterThan(0);
    const done = await until(
      'the run finished',
      () => cluster.client.get<Json>(path),
      (w) => ['Succeeded', 'Failed'].includes(w.status?.phase),
      240_000,
    );
    expect(done.status.phase, JSON.stringify(done.status)).toBe('Succeeded');
    expect(done.status.progress).toMatchObject({ total: 1002, succeeded: 1002, failed: 0 });
    const etcd1 = await cluster.client.get<Json>(`/api/v1/namespaces/${namespace}/pods/${release}-agentflow-etcd-1`);
    expect(etcd1.spec.nodeName).toBe(member1.name);
    expect(etcd1.status.containerStatuses?.[0]?.restartCount ?? 0).toBeGreaterThan(0);
  });
});
