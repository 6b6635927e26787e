import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { SharedState } from '../../../src/state/index.ts';
import { pinnedVersions } from '../../cluster/binaries.ts';
import type { ClusterHandle } from '../../cluster/cluster-handle.ts';
import { waitFor } from '../../cluster/managed-process.ts';
import { testCluster, uniqueName } from '../../cluster/testing.ts';
import { testStore } from '../state/helpers.ts';

// Proves the servers behind the harness are the real ones: the API server
// enforces RBAC, kube-controller-manager garbage-collects, kubectl and helm
// are the pinned builds, and etcd speaks the v3 API the state layer will use.

let cluster: ClusterHandle;
const ns = uniqueName('cp');
const versions = pinnedVersions();

beforeAll(async () => {
  cluster = testCluster();
  await cluster.client.post('/api/v1/namespaces', { metadata: { name: ns } });
});

afterAll(async () => {
  await cluster.client.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  await cluster.close();
});

describe('kube-controller-manager', () => {
  it('garbage-collects an object whose owner is deleted', async () => {
    const owner = await cluster.client.post<{ metadata: { uid: string } }>(`/api/v1/namespaces/${ns}/configmaps`, {
      metadata: { name: 'owner' },
      data: { role: 'owner' },
    });
    await cluster.client.post(`/api/v1/namespaces/${ns}/configmaps`, {
      metadata: {
        name: 'child',
        ownerReferences: [{ apiVersion: 'v1', kind: 'ConfigMap', name: 'owner', uid: owner.metadata.uid }],
      },
    });
    await cluster.client.delete(`/api/v1/namespaces/${ns}/configmaps/owner`, { propagationPolicy: 'Background' });
    await waitFor(
      'child to be collected',
      async () => (await cluster.client.getOrUndefined(`/api/v1/namespaces/${ns}/configmaps/child`)) === undefined,
      45_000,
      250,
    );
  });

  it('creates the default ServiceAccount in a new namespace', async () => {
    await waitFor(
      'default SA',
      async () =>
        (await cluster.client.getOrUndefined(`/api/v1/namespaces/${ns}/serviceaccounts/default`)) !== undefined,
      30_000,
    );
  });
});

describe('RBAC on the API server', () => {
  it('refuses an ordinary user what no role grants, then allows exactly what a Role grants', async () => {
    const user = uniqueName('alice');
    const kubeconfig = cluster.userKubeconfig(user, ['developers']);

    const denied = await cluster.kubectl(['get', 'pods', '-n', ns], { kubeconfig });
    expect(denied.code).not.toBe(0);
    expect(denied.stderr).toContain(`User "${user}" cannot list resource "pods"`);

    await cluster.client.post(`/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/roles`, {
      metadata: { name: 'pod-reader' },
      rules: [{ apiGroups: [''], resources: ['pods'], verbs: ['get', 'list'] }],
    });
    await cluster.client.post(`/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/rolebindings`, {
      metadata: { name: 'pod-reader' },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'pod-reader' },
      subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: user }],
    });
    await waitFor(
      'the binding to take effect',
      async () => (await cluster.kubectl(['get', 'pods', '-n', ns], { kubeconfig })).code === 0,
      10_000,
    );

    const secrets = await cluster.kubectl(['get', 'secrets', '-n', ns], { kubeconfig });
    expect(secrets.code).not.toBe(0);
    expect(secrets.stderr).toContain('cannot list resource "secrets"');
    const otherNs = await cluster.kubectl(['get', 'pods', '-n', 'default'], { kubeconfig });
    expect(otherNs.code).not.toBe(0);
    expect(otherNs.stderr).toContain('forbidden');
  });

  it('authenticates a ServiceAccount token and refuses it what RBAC does not grant', async () => {
    await cluster.client.post(`/api/v1/namespaces/${ns}/serviceaccounts`, { metadata: { name: 'robot' } });
    const token = await cluster.kubectl(['create', 'token', 'robot', '-n', ns, '--duration=10m']);
    expect(token.code).toBe(0);
    const kubeconfig = cluster.tokenKubeconfig(`robot-${ns}`, token.stdout.trim());
    const who = await cluster.kubectl(['auth', 'whoami', '-o', 'jsonpath={.status.userInfo.username}'], { kubeconfig });
    expect(who.stdout).toBe(`system:serviceaccount:${ns}:robot`);
    const denied = await cluster.kubectl(['create', 'configmap', 'x', '-n', ns], { kubeconfig });
    expect(denied.code).not.toBe(0);
    expect(denied.stderr).toContain('cannot create resource "configmaps"');
    const bogus = cluster.tokenKubeconfig('bogus', 'not-a-token');
    const unauth = await cluster.kubectl(['get', 'pods', '-n', ns], { kubeconfig: bogus });
    expect(unauth.code).not.toBe(0);
    expect(unauth.stderr).toMatch(/Unauthorized|must be logged in/);
  });
});

describe('pinned tools', () => {
  it('kubectl and the API server report the pinned Kubernetes version', async () => {
    const r = await cluster.kubectl(['version', '-o', 'json']);
    expect(r.code).toBe(0);
    const v = JSON.parse(r.stdout) as { clientVersion: { gitVersion: string }; serverVersion: { gitVersion: string } };
    expect(v.clientVersion.gitVersion).toBe(versions.KUBE_VERSION);
    expect(v.serverVersion.gitVersion).toBe(versions.KUBE_VERSION);
  });

  it('helm reports the pinned version, renders a chart against the cluster and the server accepts it', async () => {
    const v = await cluster.helm(['version', '--template', '{{.Version}}']);
    expect(v.stdout).toBe(versions.HELM_VERSION);
    const t = await cluster.helm([
      'template',
      'demo',
      'test/fixtures/charts/hello',
      '--namespace',
      ns,
      '--set',
      'greeting=hi there',
      '--validate',
    ]);
    expect(t.stderr).toBe('');
    expect(t.code).toBe(0);
    const docs = parseAllDocuments(t.stdout).map(
      (d) => d.toJS() as { kind: string; metadata: { name: string }; data: Record<string, string> },
    );
    expect(docs).toHaveLength(1);
    expect(docs[0]).toMatchObject({
      kind: 'ConfigMap',
      metadata: { name: 'demo-hello' },
      data: { greeting: 'hi there' },
    });
    // --validate rendered against the live API server, whose version helm read.
    expect(docs[0]?.data.kubeVersion).toBe(versions.KUBE_VERSION);
    const dry = await cluster.kubectl(['apply', '--dry-run=server', '-n', ns, '-f', '-'], { input: t.stdout });
    expect(dry.stdout).toContain('configmap/demo-hello created (server dry run)');
  });
});

describe('etcd for agentflow state', () => {
  it('puts, gets and watches keys through the state layer', async () => {
    // https, with a client certificate: the state etcd runs with TLS and auth (state/auth.test.ts).
    expect(cluster.info.stateEtcdEndpoint).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const store = testStore(`/smoke-${ns}`);
    try {
      const state = new SharedState(store, { kind: 'namespace', namespace: ns });
      const seen: string[] = [];
      const { revision } = await state.list();
      const watch = await state.watch(
        '',
        revision + 1,
        (e) => seen.push(`${e.key}=${JSON.stringify(e.json)}`),
        () => seen.push('resync'),
      );
      await state.put('a', 1);
      await state.put('a', 2);
      await waitFor('two watch events', () => seen.length === 2, 10_000, 20);
      expect(seen).toEqual(['a=1', 'a=2']);
      expect((await state.get('a'))?.value).toBe(2);
      await watch.close();
    } finally {
      store.close();
    }
  });
});
