import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ClusterHandle } from '../../cluster/cluster-handle.ts';
import type { ProcessKubelet } from '../../cluster/kubelet/kubelet.ts';
import type { Pod } from '../../cluster/kubelet/types.ts';
import { waitFor } from '../../cluster/managed-process.ts';
import { testCluster, uniqueName } from '../../cluster/testing.ts';

// The process kubelet must look like a kubelet through the API: nodes with
// capacity and a fresh Ready condition, bound pods that run as real processes,
// status with phase/Ready/podIP/containerStatuses, restarts and deletion.

let cluster: ClusterHandle;
let kubelet: ProcessKubelet;
const ns = uniqueName('kubelet');
const node = uniqueName('node');

const server = `require('http').createServer((q, s) => s.end(process.env.GREETING)).listen(8080, process.env.POD_IP)`;

function podManifest(name: string, spec: Partial<Pod['spec']> & { containers: Pod['spec']['containers'] }): Pod {
  // The API server requires an image; with a command the kubelet ignores it.
  const containers = spec.containers.map((c) => ({ image: 'example.com/shell:1', ...c }));
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: ns },
    spec: { nodeName: node, ...spec, containers },
  };
}

async function getPod(name: string): Promise<Pod | undefined> {
  return cluster.client.getOrUndefined<Pod>(`/api/v1/namespaces/${ns}/pods/${name}`);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

beforeAll(async () => {
  cluster = testCluster();
  await cluster.client.post('/api/v1/namespaces', { metadata: { name: ns } });
  await waitFor(
    'default service account',
    async () => (await cluster.client.getOrUndefined(`/api/v1/namespaces/${ns}/serviceaccounts/default`)) !== undefined,
    30_000,
  );
  kubelet = await cluster.startKubelet(
    [{ name: node, capacity: { cpu: '2', memory: '4Gi', pods: '10', 'nvidia.com/gpu': '1' } }],
    { backoffBaseMs: 200, backoffMaxMs: 1_000 },
  );
});

afterAll(async () => {
  await cluster.client.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  await cluster.close();
});

describe('process kubelet', () => {
  it('registers its node with the stated capacity, Ready, and a renewed lease', async () => {
    const n = await cluster.client.get<{
      status: {
        capacity: Record<string, string>;
        allocatable: Record<string, string>;
        conditions: { type: string; status: string }[];
      };
    }>(`/api/v1/nodes/${node}`);
    expect(n.status.capacity).toMatchObject({ cpu: '2', memory: '4Gi', pods: '10', 'nvidia.com/gpu': '1' });
    expect(n.status.allocatable.cpu).toBe('2');
    expect(n.status.conditions.find((c) => c.type === 'Ready')?.status).toBe('True');
    const lease = await cluster.client.get<{ spec: { holderIdentity: string; renewTime: string } }>(
      `/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/${node}`,
    );
    expect(lease.spec.holderIdentity).toBe(node);
    expect(Date.now() - Date.parse(lease.spec.renewTime)).toBeLessThan(60_000);
  });

  it('runs a bound pod as a process and reports it Running and Ready with its pod IP', async () => {
    await cluster.client.post(
      `/api/v1/namespaces/${ns}/pods`,
      podManifest('web', {
        containers: [
          {
            name: 'web',
            image: 'example.com/web:1',
            command: ['node', '-e', server],
            env: [
              { name: 'POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
              { name: 'NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
              { name: 'GREETING', value: 'hello from $(NAME)' },
            ],
            ports: [{ name: 'http', containerPort: 8080 }],
            readinessProbe: { httpGet: { path: '/', port: 'http' }, periodSeconds: 1 },
          },
        ],
      }),
    );
    let pod: Pod | undefined;
    await waitFor(
      'pod web Ready',
      async () => {
        pod = await getPod('web');
        return pod?.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false;
      },
      30_000,
    );
    const status = pod?.status;
    expect(status?.phase).toBe('Running');
    expect(status?.podIP).toMatch(/^127\./);
    expect(status?.containerStatuses?.[0]).toMatchObject({ name: 'web', ready: true, restartCount: 0 });
    expect(status?.containerStatuses?.[0]?.state.running?.startedAt).toBeTruthy();
    // The process really runs, with the downward-API and expanded env.
    const res = await fetch(`http://${status?.podIP}:8080/`);
    expect(await res.text()).toBe('hello from web');
    expect(alive(kubelet.pid(ns, 'web') as number)).toBe(true);
  });

  it('on deletion stops the process (SIGTERM) and removes the pod', async () => {
    const pid = kubelet.pid(ns, 'web');
    expect(pid).toBeDefined();
    await cluster.client.delete(`/api/v1/namespaces/${ns}/pods/web`);
    await waitFor('pod web gone', async () => (await getPod('web')) === undefined, 30_000);
    expect(alive(pid as number)).toBe(false);
  });

  it('restarts a crashing container with back-off and counts the restarts', async () => {
    await cluster.client.post(
      `/api/v1/namespaces/${ns}/pods`,
      podManifest('crasher', {
        containers: [{ name: 'c', image: 'x', command: ['sh', '-c', 'echo boom; exit 3'] }],
      }),
    );
    let pod: Pod | undefined;
    await waitFor(
      'two restarts',
      async () => {
        pod = await getPod('crasher');
        return (pod?.status?.containerStatuses?.[0]?.restartCount ?? 0) >= 2;
      },
      30_000,
    );
    const cs = pod?.status?.containerStatuses?.[0];
    expect(cs?.lastState.terminated).toMatchObject({ exitCode: 3, reason: 'Error' });
    expect(kubelet.logs(ns, 'crasher')).toContain('boom');
    await cluster.client.delete(`/api/v1/namespaces/${ns}/pods/crasher`);
  });

  it('completes a restartPolicy Never pod as Succeeded or Failed by exit code', async () => {
    await cluster.client.post(
      `/api/v1/namespaces/${ns}/pods`,
      podManifest('ok', { restartPolicy: 'Never', containers: [{ name: 'c', command: ['true'] }] }),
    );
    await cluster.client.post(
      `/api/v1/namespaces/${ns}/pods`,
      podManifest('bad', { restartPolicy: 'Never', containers: [{ name: 'c', command: ['sh', '-c', 'exit 7'] }] }),
    );
    await waitFor('ok Succeeded', async () => (await getPod('ok'))?.status?.phase === 'Succeeded', 30_000);
    await waitFor('bad Failed', async () => (await getPod('bad'))?.status?.phase === 'Failed', 30_000);
    expect((await getPod('bad'))?.status?.containerStatuses?.[0]?.state.terminated?.exitCode).toBe(7);
  });

  it('serves container logs to kubectl through the API server', async () => {
    await cluster.client.post(
      `/api/v1/namespaces/${ns}/pods`,
      podManifest('talker', {
        restartPolicy: 'Never',
        containers: [{ name: 'c', command: ['sh', '-c', 'for i in 1 2 3; do echo line$i; done'] }],
      }),
    );
    await waitFor('talker Succeeded', async () => (await getPod('talker'))?.status?.phase === 'Succeeded', 30_000);
    const all = await cluster.kubectl(['logs', '-n', ns, 'talker']);
    expect(all.stderr).toBe('');
    expect(all.stdout).toBe('line1\nline2\nline3\n');
    const tail = await cluster.kubectl(['logs', '-n', ns, 'talker', '--tail=1']);
    expect(tail.stdout).toBe('line3\n');
    const missing = await cluster.kubectl(['logs', '-n', ns, 'talker', '-c', 'nope']);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toContain('container nope is not valid for pod talker');
  });

  it('rejects a pod that does not fit the node (kubelet admission)', async () => {
    await cluster.client.post(
      `/api/v1/namespaces/${ns}/pods`,
      podManifest('greedy', {
        containers: [
          {
            name: 'c',
            command: ['sleep', '60'],
            resources: { requests: { 'nvidia.com/gpu': '2' }, limits: { 'nvidia.com/gpu': '2' } },
          },
        ],
      }),
    );
    await waitFor('greedy Failed', async () => (await getPod('greedy'))?.status?.phase === 'Failed', 30_000);
    const st = (await getPod('greedy'))?.status;
    expect(st?.reason).toBe('OutOfnvidia.com/gpu');
    expect(st?.message).toContain('nvidia.com/gpu, requested: 2');
  });

  it('reports a missing image entry point and a missing secret as waiting reasons', async () => {
    await cluster.client.post(
      `/api/v1/namespaces/${ns}/pods`,
      podManifest('noimage', { containers: [{ name: 'c', image: 'nowhere/unknown:1' }] }),
    );
    await cluster.client.post(
      `/api/v1/namespaces/${ns}/pods`,
      podManifest('nosecret', {
        containers: [
          {
            name: 'c',
            command: ['sleep', '60'],
            env: [{ name: 'X', valueFrom: { secretKeyRef: { name: 'absent', key: 'k' } } }],
          },
        ],
      }),
    );
    await waitFor(
      'noimage waiting',
      async () => (await getPod('noimage'))?.status?.containerStatuses?.[0]?.state.waiting?.reason === 'ErrImagePull',
      30_000,
    );
    await waitFor(
      'nosecret waiting',
      async () =>
        (await getPod('nosecret'))?.status?.containerStatuses?.[0]?.state.waiting?.reason ===
        'CreateContainerConfigError',
      30_000,
    );
    expect((await getPod('nosecret'))?.status?.containerStatuses?.[0]?.state.waiting?.message).toContain(
      'secret "absent" not found',
    );
  });

  it('gives each pod a ServiceAccount token the API server accepts', async () => {
    await cluster.client.post(
      `/api/v1/namespaces/${ns}/pods`,
      podManifest('whoami', {
        restartPolicy: 'Never',
        containers: [
          {
            name: 'c',
            command: ['sh', '-c', `"$KUBECTL" auth whoami -o jsonpath='{.status.userInfo.username}'`],
            env: [{ name: 'KUBECTL', value: cluster.kubectlPath }],
          },
        ],
      }),
    );
    await waitFor('whoami Succeeded', async () => (await getPod('whoami'))?.status?.phase === 'Succeeded', 30_000);
    expect(kubelet.logs(ns, 'whoami')).toBe(`system:serviceaccount:${ns}:default`);
  });
});
