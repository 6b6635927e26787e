import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ClusterHandle } from '../../cluster/cluster-handle.ts';
import { waitFor } from '../../cluster/managed-process.ts';
import { busyboxWebPod, REAL_NODE_TAINT, RealNode } from '../../cluster/real-node.ts';
import { testCluster, uniqueName } from '../../cluster/testing.ts';

// A real node (test/cluster/real-node.ts: the kubelet built from the control plane's module, its own
// containerd, runc, CNI bridge) joined to the local control plane: the scheduler places a pod on it,
// containerd runs the image's process in the pod's own namespaces, the host reaches it at its pod
// IP, the API server reaches the kubelet for logs and exec, and deleting the pod or the node leaves
// nothing behind on the machine.

interface Pod {
  metadata: { name: string; uid: string };
  spec: { nodeName?: string };
  status: { phase?: string; podIP?: string; conditions?: { type: string; status: string }[] };
}

let cluster: ClusterHandle;
let node: RealNode;
let ns: string;

beforeAll(async () => {
  cluster = testCluster();
  node = await RealNode.start(cluster, { name: uniqueName('real') });
  ns = uniqueName('real-node');
  await cluster.client.post('/api/v1/namespaces', { metadata: { name: ns } });
}, 180_000);

afterAll(async () => {
  await node?.stop();
  await cluster?.client.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  await cluster?.close();
});

const pods = () => `/api/v1/namespaces/${ns}/pods`;

function webPod(name: string, onNode: string) {
  return busyboxWebPod({
    name,
    node: onNode,
    setup:
      'echo "started as $(/bin/busybox id -u) on $(/bin/busybox hostname)"; /bin/busybox mkdir -p /www; ' +
      'echo "hello from $(/bin/busybox hostname)" > /www/index.html',
  });
}

async function ready(name: string): Promise<Pod> {
  let pod: Pod | undefined;
  await waitFor(
    `pod ${name} Ready on ${node.name}`,
    async () => {
      pod = (await cluster.client.get(`${pods()}/${name}`)) as Pod;
      return pod.status.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false;
    },
    45_000,
    250,
  ).catch((err: Error) => {
    throw new Error(
      `${err.message}\npod: ${JSON.stringify(pod?.status)}\nkubelet:\n${node.logTail('kubelet', 60)}\ncontainerd:\n${node.logTail('containerd', 30)}`,
    );
  });
  return pod as Pod;
}

describe('a real node', () => {
  it('registers Ready, with its address, the taint that keeps other tests off it, and the kubelet version', async () => {
    const n = (await cluster.client.get(`/api/v1/nodes/${node.name}`)) as {
      spec: { taints?: { key: string; effect: string }[] };
      status: {
        addresses: { type: string; address: string }[];
        nodeInfo: { kubeletVersion: string; containerRuntimeVersion: string };
      };
    };
    expect(n.status.addresses).toContainEqual({ type: 'InternalIP', address: node.nodeIp });
    expect(n.spec.taints).toContainEqual(expect.objectContaining({ key: REAL_NODE_TAINT.key, effect: 'NoSchedule' }));
    expect(n.status.nodeInfo.kubeletVersion).toBe(cluster.info.kubeVersion);
    expect(n.status.nodeInfo.containerRuntimeVersion).toMatch(/^containerd:\/\/1\./);
  });

  it('runs a scheduled pod in its own namespaces: Ready by its probe, reachable at its pod IP, logs and exec through the API server', async () => {
    await cluster.client.post(pods(), webPod('web', node.name));
    const pod = await ready('web');
    expect(pod.spec.nodeName).toBe(node.name);
    const ip = pod.status.podIP as string;
    expect(ip.startsWith(node.podCidr.replace(/0\/24$/, ''))).toBe(true);
    // From the host to the pod's own network namespace, over the node's bridge.
    const res = await fetch(`http://${ip}:8080/`);
    expect(await res.text()).toBe('hello from web\n'); // its own UTS namespace: the pod's name
    const logs = (await cluster.kubectl(['logs', '-n', ns, 'web'])).stdout;
    expect(logs).toContain('started as 0 on web');
    const exec = await cluster.kubectl(['exec', '-n', ns, 'web', '--', '/bin/busybox', 'cat', '/www/index.html']);
    expect(exec.stderr).toBe('');
    expect(exec.stdout).toBe('hello from web\n');
  });

  it('a deleted pod leaves no container, sandbox or address behind', async () => {
    await cluster.client.post(pods(), webPod('short', node.name));
    const pod = await ready('short');
    const ip = pod.status.podIP as string;
    const ipam = join(node.dir, 'cni/ipam', `agentflow-${node.name}`);
    expect(existsSync(join(ipam, ip))).toBe(true); // host-local's allocation
    const tasks = async () => (await node.ctr(['tasks', 'ls', '--quiet'])).split('\n').filter(Boolean).length;
    const before = await tasks(); // web's and short's: a sandbox and a container each
    await cluster.client.delete(`${pods()}/short`);
    await waitFor(
      'pod short gone from the API',
      async () =>
        !(await cluster.client.get(`${pods()}/short`).then(
          () => true,
          () => false,
        )),
      30_000,
    );
    await waitFor('its address released', () => !existsSync(join(ipam, ip)), 30_000);
    await waitFor(
      'its sandbox and container stopped in containerd',
      async () => (await tasks()) === before - 2,
      60_000,
    );
    await expect(fetch(`http://${ip}:8080/`, { signal: AbortSignal.timeout(2_000) })).rejects.toThrow();
  });

  it('stopping the node removes its links, mounts and processes', async () => {
    await node.stop();
    const links = readdirSync('/sys/class/net');
    expect(links).not.toContain(`afb${node.nodeIp.split('.')[2]}`);
    expect(readFileSync('/proc/self/mounts', 'utf8')).not.toContain(node.dir);
    const shims = readdirSync('/proc')
      .filter((p) => /^\d+$/.test(p))
      .filter((p) => {
        try {
          return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(node.socket);
        } catch {
          return false;
        }
      });
    expect(shims).toEqual([]);
  });
});
