import { CRD_NAMES } from '../../src/api/crds.ts';
import type { ClusterHandle } from './cluster-handle.ts';
import { freePort } from './ports.ts';
import { stateEtcdOf } from './state-etcd.ts';

export interface InstallOptions {
  release?: string;
  namespace?: string;
  /** Extra `--set` values. */
  set?: string[];
  /** Values files (`-f`), before the `--set` values. */
  values?: string[];
  /**
   * The release's pods run on real nodes (real-node.ts; the cluster has a pod network): the chart
   * exactly as shipped. Otherwise, on process kubelets, the swaps described below.
   */
  realNodes?: boolean;
}

/** The Secret with the operator's etcd client certificate (etcd.external.tls.secretName). */
export const ETCD_CLIENT_SECRET = 'agentflow-etcd-client';

/**
 * `helm upgrade --install` of charts/agentflow on the local control plane,
 * with what the process kubelet cannot provide swapped for what it can: the
 * control plane's own agentflow etcd as the "external" etcd (pods have no
 * cluster DNS, so a bundled etcd Service name would not resolve), reached as
 * users reach theirs: TLS with a Secret holding the operator's client
 * certificate, whose CN is its etcd user; and the dispatcher on a free port
 * that agent pods dial on loopback (no Services), and the data API's APIService
 * pointed at the host by an ExternalName Service. Everything else is the
 * chart as users get it.
 */
export async function installAgentflow(
  cluster: ClusterHandle,
  o: InstallOptions = {},
): Promise<{ release: string; namespace: string; dispatcherPort: number; dataApiPort: number }> {
  const release = o.release ?? 'agentflow';
  const namespace = o.namespace ?? 'agentflow-system';
  await adoptCrds(cluster, release, namespace);
  const port = cluster.info.external ? 7070 : await freePort();
  const apiPort = cluster.info.external ? 8443 : await freePort();
  // On a real cluster (kind): the chart as is, with its bundled etcd and the image loaded into the nodes.
  // On real nodes of the local control plane: the chart exactly as is.
  const local = cluster.info.external
    ? ['image.pullPolicy=Never']
    : o.realNodes
      ? []
      : [
          'etcd.bundled.enabled=false',
          `etcd.external.endpoints[0]=${stateEtcdOf(cluster.info).endpoint}`,
          'etcd.external.tls.enabled=true',
          `etcd.external.tls.secretName=${ETCD_CLIENT_SECRET}`,
          `dispatcher.port=${port}`,
          `agents.dispatcherAddress=127.0.0.1:${port}`,
          // No service network: the API server dials the data API on the host (pods share its network).
          'dataApi.externalName=127.0.0.1',
          `dataApi.port=${apiPort}`,
        ];
  if (o.realNodes && !cluster.info.podNetwork) throw new Error('real nodes need a cluster with a pod network (e2e)');
  if (!cluster.info.external && !o.realNodes) await applyEtcdClientSecret(cluster, namespace);
  // Backups stay on, as by default: their claim never binds here (no storage provisioner; kind's class
  // binds at first use) and `--wait` must not wait for it (the chart makes it with a hook). The hourly
  // Job does not run within the test.
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
    ...(o.values ?? []).flatMap((f) => ['-f', f]),
    ...[...local, ...(o.set ?? [])].flatMap((s) => ['--set', s]),
  ]);
  if (r.code !== 0) throw new Error(`helm install failed: ${r.stderr || r.stdout}`);
  return { release, namespace, dispatcherPort: port, dataApiPort: apiPort };
}

/**
 * Creates (or updates) the Secret agentflow-etcd-client (ca.crt, tls.crt,
 * tls.key) with the operator's client certificate for the state etcd in
 * `namespace` (created if need be), as a user of an external etcd would; the
 * process kubelet mounts it into the operator pods like any Secret volume.
 * Both the chart (etcd.external.tls.secretName) and deploy/operator use it.
 */
export async function applyEtcdClientSecret(cluster: ClusterHandle, namespace: string): Promise<void> {
  const etcd = stateEtcdOf(cluster.info);
  const files = { 'ca.crt': etcd.caFile, 'tls.crt': etcd.operatorCert.cert, 'tls.key': etcd.operatorCert.key };
  const ns = await cluster.kubectl(['create', 'namespace', namespace, '--dry-run=client', '-o', 'yaml']);
  const nsApplied = await cluster.kubectl(['apply', '-f', '-'], { input: ns.stdout });
  if (nsApplied.code !== 0) throw new Error(`creating namespace ${namespace} failed: ${nsApplied.stderr}`);
  const secret = await cluster.kubectl([
    'create',
    'secret',
    'generic',
    ETCD_CLIENT_SECRET,
    '--namespace',
    namespace,
    ...Object.entries(files).map(([k, path]) => `--from-file=${k}=${path}`),
    '--dry-run=client',
    '-o',
    'yaml',
  ]);
  const applied = await cluster.kubectl(['apply', '-f', '-'], { input: secret.stdout });
  if (secret.code !== 0 || applied.code !== 0) {
    throw new Error(`creating Secret ${namespace}/${ETCD_CLIENT_SECRET} failed: ${secret.stderr || applied.stderr}`);
  }
}

/**
 * CRDs applied earlier without Helm (kubectl apply -f deploy/crds) are
 * adopted into the release the way Helm documents: its ownership label and
 * annotations. Without them `helm install` refuses to touch them.
 */
async function adoptCrds(cluster: ClusterHandle, release: string, namespace: string): Promise<void> {
  for (const crd of CRD_NAMES) {
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
