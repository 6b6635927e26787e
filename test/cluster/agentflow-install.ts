import type { ClusterHandle } from './cluster-handle.ts';
import { freePort } from './ports.ts';

export interface InstallOptions {
  release?: string;
  namespace?: string;
  /** Extra `--set` values. */
  set?: string[];
}

const CRDS = ['agentpools.agentflow.io', 'workflows.agentflow.io'];

/**
 * `helm upgrade --install` of charts/agentflow on the local control plane,
 * with what the process kubelet cannot provide swapped for what it can: the
 * control plane's own agentflow etcd as the "external" etcd (pods have no
 * cluster DNS, so a bundled etcd Service name would not resolve), and the
 * dispatcher on a free port that agent pods dial on loopback (no Services).
 * Everything else is the chart as users get it.
 */
export async function installAgentflow(
  cluster: ClusterHandle,
  o: InstallOptions = {},
): Promise<{ release: string; namespace: string; dispatcherPort: number }> {
  const release = o.release ?? 'agentflow';
  const namespace = o.namespace ?? 'agentflow-system';
  await adoptCrds(cluster, release, namespace);
  const port = cluster.info.external ? 7070 : await freePort();
  // On a real cluster (kind): the chart as is, with its bundled etcd and the image loaded into the nodes.
  const local = cluster.info.external
    ? ['image.pullPolicy=Never']
    : [
        'etcd.bundled.enabled=false',
        `etcd.external.endpoints[0]=${cluster.info.stateEtcdEndpoint}`,
        `dispatcher.port=${port}`,
        `agents.dispatcherAddress=127.0.0.1:${port}`,
      ];
  const r = await cluster.helm([
    'upgrade',
    '--install',
    release,
    'charts/agentflow',
    '--namespace',
    namespace,
    '--create-namespace',
    '--wait',
    '--timeout',
    '300s',
    ...[...local, ...(o.set ?? [])].flatMap((s) => ['--set', s]),
  ]);
  if (r.code !== 0) throw new Error(`helm install failed: ${r.stderr || r.stdout}`);
  return { release, namespace, dispatcherPort: port };
}

/**
 * CRDs applied earlier without Helm (kubectl apply -f deploy/crds) are
 * adopted into the release the way Helm documents: its ownership label and
 * annotations. Without them `helm install` refuses to touch them.
 */
async function adoptCrds(cluster: ClusterHandle, release: string, namespace: string): Promise<void> {
  for (const crd of CRDS) {
    const exists = await cluster.kubectl(['get', 'crd', crd, '-o', 'name']);
    if (exists.code !== 0) continue;
    await cluster.kubectl(['label', '--overwrite', 'crd', crd, 'app.kubernetes.io/managed-by=Helm']);
    await cluster.kubectl([
      'annotate',
      '--overwrite',
      'crd',
      crd,
      `meta.helm.sh/release-name=${release}`,
      `meta.helm.sh/release-namespace=${namespace}`,
    ]);
  }
}
