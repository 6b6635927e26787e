import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments, parse as parseYaml, stringify } from 'yaml';
import { applyEtcdClientSecret } from '../cluster/agentflow-install.ts';
import type { ClusterHandle } from '../cluster/cluster-handle.ts';
import { localImages } from '../cluster/images.ts';
import { freePort } from '../cluster/ports.ts';
import { stateEtcdOf } from '../cluster/state-etcd.ts';
import { testCluster, uniqueName } from '../cluster/testing.ts';
import { installCrds, nodes, startNodes, until } from '../integration/operator/helpers.ts';

// The whole product as a user runs it, on the local control plane: the
// operator Deployment from deploy/operator (two replicas, leader election,
// the shipped RBAC) and the agents both run as pods of the process kubelet
// from the one image, which the kubelet maps to this checkout's `agentflow`
// command. Then the README's example pool and workflow are applied as they
// are and must reach Succeeded with the expected outputs.

// biome-ignore lint/suspicious/noExplicitAny: raw API JSON
type Json = Record<string, any>;

let cluster: ClusterHandle;
let ns: string;

async function kubectl(args: string[], input?: string): Promise<string> {
  const r = await cluster.kubectl(args, input === undefined ? {} : { input });
  if (r.code !== 0) throw new Error(`kubectl ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

// It points the shipped manifests at the control plane's own etcd: local control plane only.
const external = Boolean(process.env.AGENTFLOW_E2E_KUBECONFIG);

beforeAll(async () => {
  if (external) return;
  cluster = testCluster();
  await installCrds(cluster);
  const group = uniqueName('e2e');
  await startNodes(
    cluster,
    nodes(group, [
      { suffix: 'a', cpu: '4', memory: '8Gi' },
      { suffix: 'b', cpu: '4', memory: '8Gi' },
    ]),
    { images: localImages() },
  );

  // deploy/operator as shipped, but pointed at the test's etcd (TLS, its Secret agentflow-etcd-client
  // holding the operator's client certificate, as the manifest expects), and with the dispatcher on a
  // free port that agent pods reach directly (the process kubelet has no Services or cluster DNS).
  await applyEtcdClientSecret(cluster, 'agentflow-system');
  const port = await freePort();
  const apiPort = await freePort();
  const docs = ['namespace.yaml', 'rbac.yaml', 'deployment.yaml', 'service.yaml'].flatMap((f) =>
    parseAllDocuments(readFileSync(`deploy/operator/${f}`, 'utf8')).map((d) => d.toJS() as Json),
  );
  const deployment = docs.find((d) => d.kind === 'Deployment') as Json;
  const container = deployment.spec.template.spec.containers[0];
  container.args = container.args.map((a: string) =>
    a.startsWith('--etcd-endpoints=')
      ? `--etcd-endpoints=${stateEtcdOf(cluster.info).endpoint}`
      : a.startsWith('--agent-dispatcher=')
        ? `--agent-dispatcher=127.0.0.1:${port}`
        : a.startsWith('--dispatcher-address=')
          ? `--dispatcher-address=0.0.0.0:${port}`
          : a.startsWith('--data-api-address=')
            ? `--data-api-address=0.0.0.0:${apiPort}`
            : a,
  );
  // Agents verify the name they dial: the loopback address joins the certificate's names.
  container.args.push('--dispatcher-tls-sans=127.0.0.1');
  await kubectl(['apply', '-f', '-'], docs.map((d) => stringify(d)).join('---\n'));
  ns = uniqueName('research');
  await kubectl(['create', 'namespace', ns]);
}, 180_000);

afterAll(async () => {
  if (external) return;
  await cluster.kubectl(['delete', 'namespace', ns, '--wait=false']);
  await cluster.kubectl(['delete', 'deployment', '-n', 'agentflow-system', 'agentflow-operator']);
  await cluster.close();
});

describe.skipIf(external)('the README example on the local control plane', () => {
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
