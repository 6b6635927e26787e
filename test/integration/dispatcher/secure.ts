import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ServerCredentials } from '@grpc/grpc-js';
import { KubeConfig } from '@kubernetes/client-node';
import { silentLogger } from '../../../src/lib/log.ts';
import { KubeAgentAuth } from '../../../src/operator/agent-auth.ts';
import { DispatcherTls } from '../../../src/operator/dispatcher-tls.ts';
import { KubeClient } from '../../../src/operator/kube/client.ts';
import type { ClusterHandle } from '../../cluster/cluster-handle.ts';
import { createNamespace, installCrds } from '../operator/helpers.ts';

/**
 * What a dispatcher needs to run as the operator runs it, on the real
 * kube-apiserver: its TLS identity (DispatcherTls, managed mode, a Secret in
 * the test's namespace) and KubeAgentAuth (TokenReview, SubjectAccessReview,
 * AgentPools). Agents here are "external" agents: processes outside any pod
 * with a ServiceAccount token granted `connect` on the pool.
 */
export interface SecureDispatcherSetup {
  namespace: string;
  client: KubeClient;
  auth: KubeAgentAuth;
  tls: DispatcherTls;
  credentials: ServerCredentials;
  /** The CA bundle agents trust, as a file. */
  caFile: string;
  dir: string;
  /** Creates a pool (replicas 0: no pods, no operator needed). */
  pool(name: string, o?: { capacity?: number; handlers?: string[] }): Promise<void>;
  /** A ServiceAccount, bound to `connect` on `pools` if given; returns a token file for it. */
  serviceAccount(
    name: string,
    o?: { connect?: string[]; audience?: string; expirationSeconds?: number },
  ): Promise<string>;
  /** A fresh token (audience agentflow) of an existing ServiceAccount. */
  serviceAccountToken(name: string): Promise<string>;
  close(): void;
}

export async function secureDispatcher(
  cluster: ClusterHandle,
  prefix: string,
  o: { cacheTtlMs?: number } = {},
): Promise<SecureDispatcherSetup> {
  await installCrds(cluster);
  const namespace = await createNamespace(cluster, prefix);
  const kc = new KubeConfig();
  kc.loadFromFile(cluster.info.kubeconfig);
  const client = new KubeClient(kc, { userAgent: 'agentflow-test' });
  const tls = new DispatcherTls({
    client,
    namespace,
    mode: 'managed',
    sans: ['127.0.0.1', 'localhost'],
    logger: silentLogger,
  });
  await tls.start();
  const dir = mkdtempSync(join(tmpdir(), 'agentflow-secure-'));
  const caFile = join(dir, 'ca.crt');
  writeFileSync(caFile, tls.caBundle());
  const auth = new KubeAgentAuth({
    client,
    pod: () => undefined,
    pool: () => undefined,
    logger: silentLogger,
    ...(o.cacheTtlMs !== undefined && { cacheTtlMs: o.cacheTtlMs }),
  });
  return {
    namespace,
    client,
    auth,
    tls,
    credentials: tls.credentials,
    caFile,
    dir,
    async pool(name, p = {}) {
      await cluster.client.post(`/apis/agentflow.io/v1alpha1/namespaces/${namespace}/agentpools`, {
        apiVersion: 'agentflow.io/v1alpha1',
        kind: 'AgentPool',
        metadata: { name },
        spec: {
          replicas: 0,
          agent: { capacity: p.capacity ?? 16, ...(p.handlers && { handlers: p.handlers }) },
          template: { spec: { containers: [{ name: 'agent', image: 'ghcr.io/agentflow/agentflow:0.1.0' }] } },
        },
      });
    },
    async serviceAccount(name, s = {}) {
      await cluster.client.post(`/api/v1/namespaces/${namespace}/serviceaccounts`, { metadata: { name } });
      if (s.connect && s.connect.length > 0) {
        await cluster.client.post(`/apis/rbac.authorization.k8s.io/v1/namespaces/${namespace}/roles`, {
          metadata: { name: `${name}-connect` },
          rules: [
            { apiGroups: ['agentflow.io'], resources: ['agentpools'], resourceNames: s.connect, verbs: ['connect'] },
          ],
        });
        await cluster.client.post(`/apis/rbac.authorization.k8s.io/v1/namespaces/${namespace}/rolebindings`, {
          metadata: { name: `${name}-connect` },
          roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: `${name}-connect` },
          subjects: [{ kind: 'ServiceAccount', name, namespace }],
        });
      }
      const tr = await cluster.client.post<{ status: { token: string } }>(
        `/api/v1/namespaces/${namespace}/serviceaccounts/${name}/token`,
        {
          apiVersion: 'authentication.k8s.io/v1',
          kind: 'TokenRequest',
          spec: { audiences: [s.audience ?? 'agentflow'], expirationSeconds: s.expirationSeconds ?? 3600 },
        },
      );
      const file = join(dir, `${name}-${(s.audience ?? 'agentflow').replace(/[^a-z0-9]+/gi, '_')}.token`);
      writeFileSync(file, tr.status.token);
      return file;
    },
    async serviceAccountToken(name) {
      const tr = await cluster.client.post<{ status: { token: string } }>(
        `/api/v1/namespaces/${namespace}/serviceaccounts/${name}/token`,
        {
          apiVersion: 'authentication.k8s.io/v1',
          kind: 'TokenRequest',
          spec: { audiences: ['agentflow'], expirationSeconds: 3600 },
        },
      );
      return tr.status.token;
    },
    close() {
      tls.stop();
      client.close();
    },
  };
}
