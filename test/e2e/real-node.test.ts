import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VERSION_LINE } from '../../src/lib/version.ts';
import type { ClusterHandle } from '../cluster/cluster-handle.ts';
import { waitFor } from '../cluster/managed-process.ts';
import { agentflowImage, type NodeImage } from '../cluster/node-images.ts';
import { REAL_NODE_TAINT, RealNode } from '../cluster/real-node.ts';
import { testCluster, uniqueName } from '../cluster/testing.ts';

// The project's image, built from its Dockerfile (on a base made from Debian's packages: no
// registry here), run by a real node's containerd as the chart runs it: by its tag, pulled
// IfNotPresent, as the image's own non-root user, with a read-only root filesystem and no
// capabilities. Nothing of the checkout is mapped in.

interface Pod {
  status: {
    phase?: string;
    containerStatuses?: { name: string; state?: { terminated?: { exitCode: number; reason?: string } } }[];
  };
}

let cluster: ClusterHandle;
let node: RealNode;
let image: NodeImage;
let ns: string;

beforeAll(async () => {
  cluster = testCluster();
  image = await agentflowImage();
  node = await RealNode.start(cluster, { name: uniqueName('real'), images: [image] });
  ns = uniqueName('image');
  await cluster.client.post('/api/v1/namespaces', { metadata: { name: ns } });
}, 900_000);

afterAll(async () => {
  await node?.stop();
  await cluster?.client.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  await cluster?.close();
});

/** The chart's container securityContext (charts/agentflow/values.yaml: operator.securityContext). */
const restricted = {
  runAsNonRoot: true,
  readOnlyRootFilesystem: true,
  allowPrivilegeEscalation: false,
  capabilities: { drop: ['ALL'] },
};

describe('the Dockerfile’s image on a real node', () => {
  it('runs as the chart runs it: its entrypoint, its non-root user, a read-only root filesystem', async () => {
    await cluster.client.post(`/api/v1/namespaces/${ns}/pods`, {
      metadata: { name: 'image' },
      spec: {
        nodeSelector: { 'kubernetes.io/hostname': node.name },
        tolerations: [{ ...REAL_NODE_TAINT, operator: 'Equal' }],
        automountServiceAccountToken: false,
        restartPolicy: 'Never',
        containers: [
          // The image's ENTRYPOINT, as the chart's operator and agent containers use it.
          {
            name: 'version',
            image: image.ref,
            imagePullPolicy: 'IfNotPresent',
            args: ['--version'],
            securityContext: restricted,
          },
          {
            name: 'inside',
            image: image.ref,
            imagePullPolicy: 'IfNotPresent',
            command: [
              'sh',
              '-c',
              'echo "uid=$(id -u) cwd=$(pwd)"; ls /app/dist/cli/main.js /app/ui/dist/index.html; ' +
                'if touch /app/x 2>/dev/null; then echo writable; else echo read-only; fi',
            ],
            securityContext: restricted,
          },
        ],
      },
    });
    let pod: Pod | undefined;
    await waitFor(
      'the image’s pod to finish',
      async () => {
        pod = (await cluster.client.get(`/api/v1/namespaces/${ns}/pods/image`)) as Pod;
        return pod.status.phase === 'Succeeded' || pod.status.phase === 'Failed';
      },
      120_000,
      250,
    ).catch((err: Error) => {
      throw new Error(`${err.message}\npod: ${JSON.stringify(pod?.status)}\nkubelet:\n${node.logTail('kubelet', 40)}`);
    });
    const logs = async (c: string) => (await cluster.kubectl(['logs', '-n', ns, 'image', '-c', c])).stdout;
    expect(pod?.status.phase, `version: ${await logs('version')}\ninside: ${await logs('inside')}`).toBe('Succeeded');
    expect(await logs('version')).toBe(VERSION_LINE);
    expect(await logs('inside')).toBe(
      'uid=65532 cwd=/app\n/app/dist/cli/main.js\n/app/ui/dist/index.html\nread-only\n',
    );
  });
});
