import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml, stringify } from 'yaml';
import { applyEtcdClientSecret } from '../cluster/agentflow-install.ts';
import type { ClusterHandle } from '../cluster/cluster-handle.ts';
import { agentflowImage } from '../cluster/node-images.ts';
import { RealNode } from '../cluster/real-node.ts';
import { stateEtcdOf } from '../cluster/state-etcd.ts';
import { testCluster, uniqueName } from '../cluster/testing.ts';
import { installCrds, until } from '../integration/operator/helpers.ts';

// The whole product as a user runs it, on real nodes of the local control plane: the operator
// Deployment from deploy/operator exactly as shipped (`kubectl apply -k`: two replicas, leader election, the shipped RBAC,
// the image built from the Dockerfile) and the agents as pods of the same image. Its etcd is the
// user's own, as deploy/operator expects: the control plane's agentflow etcd (TLS, auth), behind the
// Service agentflow-etcd.agentflow-system the manifest names, with the operator's client certificate
// in the Secret agentflow-etcd-client. Then the README's example pool and workflow are applied as
// they are and must reach Succeeded with the expected outputs.

// biome-ignore lint/suspicious/noExplicitAny: raw API JSON
type Json = Record<string, any>;

let cluster: ClusterHandle;
let ns: string;
let realNodes: RealNode[] = [];

async function kubectl(args: string[], input?: string): Promise<string> {
  const r = await cluster.kubectl(args, input === undefined ? {} : { input });
  if (r.code !== 0) throw new Error(`kubectl ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

// It puts the control plane's own etcd behind the manifest's etcd Service: local control plane only.
const external = Boolean(process.env.AGENTFLOW_E2E_KUBECONFIG);

beforeAll(async () => {
  if (external) return;
  cluster = testCluster();
  const images = [await agentflowImage()];
  const group = uniqueName('e2e');
  realNodes = await Promise.all(
    ['a', 'b'].map((suffix) => RealNode.start(cluster, { name: `${group}-${suffix}`, images, taint: false })),
  );
  // The user's etcd, where deploy/operator looks for it: a Service without a selector and the
  // EndpointSlice of the etcd it fronts, as for any etcd outside the cluster.
  const pod = stateEtcdOf(cluster.info).podEndpoint;
  if (!pod) throw new Error('the e2e cluster’s etcd does not serve the pod network (StateEtcd podIp)');
  await applyEtcdClientSecret(cluster, 'agentflow-system');
  await kubectl(
    ['apply', '-f', '-'],
    [
      {
        apiVersion: 'v1',
        kind: 'Service',
        metadata: { name: 'agentflow-etcd', namespace: 'agentflow-system' },
        spec: { ports: [{ name: 'client', port: 2379, targetPort: pod.port }] },
      },
      {
        apiVersion: 'discovery.k8s.io/v1',
        kind: 'EndpointSlice',
        metadata: {
          name: 'agentflow-etcd-1',
          namespace: 'agentflow-system',
          labels: { 'kubernetes.io/service-name': 'agentflow-etcd' },
        },
        addressType: 'IPv4',
        ports: [{ name: 'client', port: pod.port, protocol: 'TCP' }],
        endpoints: [{ addresses: [pod.ip] }],
      },
    ]
      .map((d) => stringify(d))
      .join('---\n'),
  );
  // As deploy/operator/kustomization.yaml tells users: the CRDs, then `kubectl apply -k`.
  await installCrds(cluster);
  await kubectl(['apply', '-k', 'deploy/operator']);
  ns = uniqueName('research');
  await kubectl(['create', 'namespace', ns]);
}, 900_000);

afterAll(async () => {
  if (external) return;
  await cluster.kubectl(['delete', 'workflows,agentpools', '--all', '-n', ns, '--wait=true', '--timeout=60s']);
  await cluster.kubectl(['delete', 'namespace', ns, '--wait=false']);
  await cluster.kubectl(['delete', '-k', 'deploy/operator', '--wait=false']);
  for (const n of realNodes) await n.stop();
  await cluster.close();
}, 300_000);

describe.skipIf(external)('the README example on real nodes, with deploy/operator as shipped', () => {
  it('the operator runs as two pods, one of them the labelled leader', async () => {
    const ready = await until(
      'two Ready operator pods, one leader',
      async () =>
        (
          await cluster.client.get<{ items: Json[] }>(
            '/api/v1/namespaces/agentflow-system/pods?labelSelector=app.kubernetes.io%2Fcomponent%3Doperator',
          )
        ).items,
      (ps) =>
        ps.length === 2 &&
        ps.every((p) => p.status?.conditions?.some((c: Json) => c.type === 'Ready' && c.status === 'True')) &&
        ps.filter((p) => p.metadata.labels?.['agentflow.io/role'] === 'leader').length === 1,
      120_000,
    );
    expect(ready).toHaveLength(2);
  });

  it('kubectl apply of the example pool and workflow reaches Succeeded with the report', async () => {
    await kubectl(['apply', '-n', ns, '-f', 'deploy/examples/']);
    const wf = await until(
      'research-report finished',
      () => cluster.client.get<Json>(`/apis/agentflow.io/v1alpha1/namespaces/${ns}/workflows/research-report`),
      (w) => ['Succeeded', 'Failed'].includes(w.status?.phase),
      180_000,
    );
    expect(wf.status.phase).toBe('Succeeded');
    expect(wf.status.progressSummary).toBe('5/5');
    const report = wf.status.outputs.write;
    expect(report.title).toBe('Report: warm agent pools');
    expect(report.answered).toBe(3);
    expect(report.sections).toHaveLength(3);
    // The pool's agents are connected to the leader's dispatcher (the status refreshes every few seconds).
    const pool = await until(
      'the pool status to count connected agents',
      () => cluster.client.get<Json>(`/apis/agentflow.io/v1alpha1/namespaces/${ns}/agentpools/researchers`),
      (p) => p.status?.connectedAgents >= 1,
      30_000,
    );
    expect(pool.status.capacity).toBe(pool.status.connectedAgents * 4);
    const example = parseYaml(readFileSync('deploy/examples/workflow-research.yaml', 'utf8')) as Json;
    expect(wf.spec.tasks.map((t: Json) => t.name)).toEqual(example.spec.tasks.map((t: Json) => t.name));
    const get = await kubectl(['get', '-n', ns, 'workflows', '--no-headers']);
    expect(get.trim().split(/\s+/).slice(0, 4)).toEqual(['research-report', 'Succeeded', '5/5', 'researchers']);
  });
});
