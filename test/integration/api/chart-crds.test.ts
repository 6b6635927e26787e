import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments, parse as parseYaml } from 'yaml';
import { pinnedVersions } from '../../cluster/binaries.ts';
import type { ClusterHandle } from '../../cluster/cluster-handle.ts';
import { testCluster } from '../../cluster/testing.ts';

// The chart carries the same CRDs as deploy/crds, switchable and kept on
// uninstall as cert-manager's chart does.

let cluster: ClusterHandle;
// helm assumes an old Kubernetes without a cluster; the chart requires >= 1.30.
const kubeVersion = ['--kube-version', pinnedVersions().KUBE_VERSION as string];
beforeAll(() => {
  cluster = testCluster();
});
afterAll(async () => {
  await cluster.close();
});

type Doc = { kind: string; metadata: { name: string; annotations?: Record<string, string> } };
async function render(...set: string[]): Promise<Doc[]> {
  const r = await cluster.helm([
    'template',
    'af',
    'charts/agentflow',
    ...kubeVersion,
    ...set.flatMap((s) => ['--set', s]),
  ]);
  expect(r.stderr).toBe('');
  return parseAllDocuments(r.stdout)
    .map((d) => d.toJS() as Doc)
    .filter(Boolean);
}

describe('chart CRDs', () => {
  it('pass helm lint', async () => {
    const r = await cluster.helm(['lint', 'charts/agentflow', ...kubeVersion]);
    expect(r.stdout).toContain('1 chart(s) linted, 0 chart(s) failed');
  });

  it('render every CRD, kept on uninstall by default', async () => {
    const crds = (await render()).filter((d) => d.kind === 'CustomResourceDefinition');
    expect(crds.map((d) => d.metadata.name).sort()).toEqual([
      'agentpools.agentflow.io',
      'cronworkflows.agentflow.io',
      'workflows.agentflow.io',
      'workflowtemplates.agentflow.io',
    ]);
    for (const d of crds) expect(d.metadata.annotations?.['helm.sh/resource-policy']).toBe('keep');
    // Helm's rendering (brace escaping included) gives exactly the CRDs of deploy/crds.
    for (const d of crds) {
      const file = parseYaml(readFileSync(`deploy/crds/agentflow.io_${d.metadata.name.split('.')[0]}.yaml`, 'utf8'));
      expect((d as unknown as { spec: unknown }).spec).toEqual(file.spec);
    }
  });

  it('drop the keep annotation with crds.keep=false and the CRDs with crds.enabled=false', async () => {
    const crds = (await render('crds.keep=false')).filter((d) => d.kind === 'CustomResourceDefinition');
    expect(crds).toHaveLength(4);
    for (const d of crds) expect(d.metadata.annotations).toBeUndefined();
    expect((await render('crds.enabled=false')).filter((d) => d.kind === 'CustomResourceDefinition')).toEqual([]);
  });

  it('are accepted by the API server (server-side dry run)', async () => {
    const t = await cluster.helm(['template', 'af', 'charts/agentflow', ...kubeVersion]);
    // Server-side apply: the same answer whether another test file created the CRDs already or not.
    const r = await cluster.kubectl(['apply', '--server-side', '--force-conflicts', '--dry-run=server', '-f', '-'], {
      input: t.stdout,
    });
    expect(r.stderr).toBe('');
    expect(r.stdout).toContain(
      'customresourcedefinition.apiextensions.k8s.io/agentpools.agentflow.io serverside-applied (server dry run)',
    );
    expect(r.stdout).toContain(
      'customresourcedefinition.apiextensions.k8s.io/workflows.agentflow.io serverside-applied (server dry run)',
    );
    expect(r.stdout).toContain(
      'customresourcedefinition.apiextensions.k8s.io/workflowtemplates.agentflow.io serverside-applied (server dry run)',
    );
    expect(r.stdout).toContain(
      'customresourcedefinition.apiextensions.k8s.io/cronworkflows.agentflow.io serverside-applied (server dry run)',
    );
  });
});
