import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';
import { parse as parseYaml } from 'yaml';
import { type ClusterInfo, ControlPlane, DEFAULT_CONTROLLERS } from './control-plane.ts';

declare module 'vitest' {
  export interface ProvidedContext {
    cluster: ClusterInfo;
  }
}

/**
 * Starts one real control plane for a test project (no kubelet: each test file
 * starts process kubelets with nodes of the shape it needs) and tears it down
 * afterwards. AGENTFLOW_KEEP_CLUSTER=1 keeps the directory with the logs.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const dir = mkdtempSync(join(tmpdir(), `agentflow-${project.name}-`));
  const external = process.env.AGENTFLOW_E2E_KUBECONFIG;
  if (external && project.name === 'e2e') {
    // The e2e suite against any cluster (scripts/e2e-kind.sh): its nodes run the real image.
    const cfg = parseYaml(readFileSync(external, 'utf8')) as { clusters?: { cluster?: { server?: string } }[] };
    const server = cfg.clusters?.[0]?.cluster?.server ?? '';
    project.provide('cluster', {
      kubeconfig: external,
      kubeletKubeconfig: '',
      caFile: '',
      server,
      apiPort: Number(new URL(server).port || 443),
      kubeVersion: '',
      etcdEndpoint: '',
      dir,
      pids: {},
      external: true,
    });
    console.log(`e2e against the cluster of ${external} (${server})`);
    return async () => rmSync(dir, { recursive: true, force: true });
  }
  // The e2e project's pods run on real nodes, so its cluster has a pod network (API server reachable
  // from pods, kube-proxy): one per machine, so the integration project's real nodes go without.
  // Its PersistentVolumes bind too (real nodes' hostPath volumes: the chart's bundled etcd).
  const e2e = project.name === 'e2e';
  const cp = new ControlPlane({
    dir,
    nodes: [],
    podNetwork: e2e,
    ...(e2e && { controllers: [...DEFAULT_CONTROLLERS, 'persistentvolume-binder-controller'] }),
  });
  const started = Date.now();
  try {
    project.provide('cluster', await cp.start());
  } catch (err) {
    await cp.stop().catch(() => undefined);
    throw new Error(`local control plane failed to start (logs in ${dir}): ${(err as Error).message}`);
  }
  console.log(`control plane for ${project.name} up in ${((Date.now() - started) / 1000).toFixed(1)} s at ${dir}`);
  return async () => {
    await cp.stop();
    if (!process.env.AGENTFLOW_KEEP_CLUSTER) rmSync(dir, { recursive: true, force: true });
  };
}
