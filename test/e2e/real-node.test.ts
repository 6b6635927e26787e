import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VERSION_LINE } from '../../src/lib/version.ts';
import type { ClusterHandle } from '../cluster/cluster-handle.ts';
import { waitFor } from '../cluster/managed-process.ts';
import { agentflowImage, busyboxImage, type NodeImage } from '../cluster/node-images.ts';
import { firewalled } from '../cluster/pod-network.ts';
import { busyboxWebPod, REAL_NODE_TAINT, RealNode } from '../cluster/real-node.ts';
import { testCluster, uniqueName } from '../cluster/testing.ts';
import { dial, probeCommand, probeGate } from './dial.ts';

// The project's image, built from its Dockerfile (on a base made from Debian's packages: no
// registry here), run by a real node's containerd as the chart runs it: by its tag, pulled
// IfNotPresent, as the image's own non-root user, with a read-only root filesystem and no
// capabilities. Nothing of the checkout is mapped in. And the cluster's pod network
// (pod-network.ts): Services through kube-proxy, their names through CoreDNS, the API server
// through the kubernetes Service, NetworkPolicies through kube-router's firewall.

const run = promisify(execFile);

interface Pod {
  status: {
    phase?: string;
    containerStatuses?: { name: string; state?: { terminated?: { exitCode: number; reason?: string } } }[];
  };
}

/** On kind (scripts/e2e-kind.sh): skipped, it is about this machine's real nodes. */
const external = testCluster().info.external;

let cluster: ClusterHandle;
let node: RealNode;
let image: NodeImage;
let ns: string;

beforeAll(async () => {
  cluster = testCluster();
  if (external) return;
  image = await agentflowImage();
  node = await RealNode.start(cluster, { name: uniqueName('real'), images: [image, await busyboxImage()] });
  ns = uniqueName('image');
  await cluster.client.post('/api/v1/namespaces', { metadata: { name: ns } });
}, 900_000);

afterAll(async () => {
  await node?.stop();
  if (ns) await cluster.client.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  await cluster?.close();
});

const onNode = () => ({
  nodeSelector: { 'kubernetes.io/hostname': node.name },
  tolerations: [{ ...REAL_NODE_TAINT, operator: 'Equal' }],
});

/** Waits for a pod to end; its phase, with the kubelet's log if it never does. */
async function finished(name: string): Promise<Pod> {
  let pod: Pod | undefined;
  await waitFor(
    `pod ${name} to finish`,
    async () => {
      pod = (await cluster.client.get(`/api/v1/namespaces/${ns}/pods/${name}`)) as Pod;
      return pod.status.phase === 'Succeeded' || pod.status.phase === 'Failed';
    },
    120_000,
    250,
  ).catch((err: Error) => {
    throw new Error(`${err.message}\npod: ${JSON.stringify(pod?.status)}\nkubelet:\n${node.logTail('kubelet', 40)}`);
  });
  return pod as Pod;
}

async function logs(pod: string, container?: string): Promise<string> {
  const r = await cluster.kubectl(['logs', '-n', ns, pod, ...(container ? ['-c', container] : [])]);
  if (r.code !== 0) throw new Error(`kubectl logs ${pod} failed: ${r.stderr}`);
  return r.stdout;
}

/** The chart's container securityContext (charts/agentflow/values.yaml: operator.securityContext). */
const restricted = {
  runAsNonRoot: true,
  readOnlyRootFilesystem: true,
  allowPrivilegeEscalation: false,
  capabilities: { drop: ['ALL'] },
};

describe.skipIf(external)('the Dockerfile’s image on a real node', () => {
  it('runs as the chart runs it: its entrypoint, its non-root user, a read-only root filesystem', async () => {
    await cluster.client.post(`/api/v1/namespaces/${ns}/pods`, {
      metadata: { name: 'image' },
      spec: {
        ...onNode(),
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
    const pod = await finished('image');
    const [version, inside] = [await logs('image', 'version'), await logs('image', 'inside')];
    expect(pod.status.phase, `version: ${version}\ninside: ${inside}`).toBe('Succeeded');
    expect(version).toBe(VERSION_LINE);
    expect(inside).toBe('uid=65532 cwd=/app\n/app/dist/cli/main.js\n/app/ui/dist/index.html\nread-only\n');
  });

  it('reaches a ClusterIP Service’s pod through kube-proxy from the host, and by its DNS name from another pod', async () => {
    await cluster.client.post(
      `/api/v1/namespaces/${ns}/pods`,
      busyboxWebPod({
        name: 'web',
        node: node.name,
        labels: { app: 'web' },
        setup: 'mkdir -p /www; echo "web says hi" > /www/index.html',
      }),
    );
    const svc = (await cluster.client.post(`/api/v1/namespaces/${ns}/services`, {
      metadata: { name: 'web' },
      spec: { selector: { app: 'web' }, ports: [{ port: 80, targetPort: 8080 }] },
    })) as { spec: { clusterIP: string } };
    const ip = svc.spec.clusterIP;
    // kube-proxy's rules for it, once the pod is Ready (an endpoint) and kube-proxy has synced. Until
    // then a connection to the address hangs (it goes nowhere: pod-network.ts routes the Service CIDR
    // to the pod network's bridge), so wait for the rule, then connect once.
    const natRules = async () =>
      (await run('iptables-save', ['-t', 'nat'])).stdout.split('\n').filter((l) => l.includes(`${ns}/web`));
    await waitFor(
      `kube-proxy's DNAT rule for ${ns}/web`,
      async () => (await natRules()).some((l) => l.includes('-j DNAT')),
      60_000,
      250,
    ).catch(async (err: Error) => {
      const web = await cluster.client.get(`/api/v1/namespaces/${ns}/pods/web`);
      throw new Error(
        `${err.message}\nweb: ${JSON.stringify(web)}\nkube-proxy's log: ${cluster.info.podNetwork?.logDir}/kube-proxy.log`,
      );
    });
    // From the host.
    const res = await fetch(`http://${ip}/`, { signal: AbortSignal.timeout(10_000) });
    expect(await res.text()).toBe('web says hi\n');
    await cluster.client.post(`/api/v1/namespaces/${ns}/pods`, {
      metadata: { name: 'client' },
      spec: {
        ...onNode(),
        automountServiceAccountToken: false,
        restartPolicy: 'Never',
        containers: [
          {
            // Node's fetch: busybox's wget is static glibc, whose resolver crashes without NSS.
            name: 'client',
            image: image.ref,
            imagePullPolicy: 'IfNotPresent',
            // By its name: the Service's short name through the pod's DNS search path (CoreDNS).
            command: [
              'node',
              '-e',
              "require('dns').promises.lookup('web').then(({ address }) => fetch('http://web/')" +
                '.then((r) => r.text()).then((t) => process.stdout.write(`${address}\\n${t}`)))',
            ],
            securityContext: restricted,
          },
        ],
      },
    });
    const client = await finished('client');
    expect(client.status.phase, await logs('client')).toBe('Succeeded');
    expect(await logs('client')).toBe(`${ip}\nweb says hi\n`);
  });

  it('reaches the API server through the kubernetes Service, as its ServiceAccount', async () => {
    // What in-cluster clients (the operator, @kubernetes/client-node) do: the Service's address
    // from the environment, the token and CA the kubelet projects into the pod.
    const script = [
      "const sa = '/var/run/secrets/kubernetes.io/serviceaccount';",
      "const token = require('fs').readFileSync(sa + '/token', 'utf8');",
      'const url = `https://${process.env.KUBERNETES_SERVICE_HOST}:${process.env.KUBERNETES_SERVICE_PORT}`;',
      "fetch(url + '/apis/authentication.k8s.io/v1/selfsubjectreviews', { method: 'POST',",
      "  headers: { authorization: 'Bearer ' + token, 'content-type': 'application/json' },",
      "  body: JSON.stringify({ apiVersion: 'authentication.k8s.io/v1', kind: 'SelfSubjectReview' }) })",
      '  .then((r) => r.json()).then((r) => console.log(r.status.userInfo.username));',
    ].join('\n');
    await cluster.client.post(`/api/v1/namespaces/${ns}/pods`, {
      metadata: { name: 'whoami' },
      spec: {
        ...onNode(),
        restartPolicy: 'Never',
        containers: [
          {
            name: 'whoami',
            image: image.ref,
            imagePullPolicy: 'IfNotPresent',
            command: ['node', '-e', script],
            env: [{ name: 'NODE_EXTRA_CA_CERTS', value: '/var/run/secrets/kubernetes.io/serviceaccount/ca.crt' }],
            securityContext: restricted,
          },
        ],
      },
    });
    const pod = await finished('whoami');
    expect(pod.status.phase, await logs('whoami')).toBe('Succeeded');
    expect(await logs('whoami')).toBe(`system:serviceaccount:${ns}:default\n`);
  });

  it('holds a NetworkPolicy between two pods on one node: only the pods it names get in', async () => {
    await cluster.client.post(
      `/api/v1/namespaces/${ns}/pods`,
      busyboxWebPod({
        name: 'guarded',
        node: node.name,
        labels: { app: 'guarded' },
        setup: 'mkdir -p /www; echo guarded > /www/index.html',
      }),
    );
    await cluster.client.post(`/apis/networking.k8s.io/v1/namespaces/${ns}/networkpolicies`, {
      metadata: { name: 'guarded' },
      spec: {
        podSelector: { matchLabels: { app: 'guarded' } },
        policyTypes: ['Ingress'],
        ingress: [{ from: [{ podSelector: { matchLabels: { role: 'friend' } } }], ports: [{ port: 8080 }] }],
      },
    });
    let ip = '';
    await waitFor(
      'guarded Ready',
      async () => {
        const pod = (await cluster.client.get(`/api/v1/namespaces/${ns}/pods/guarded`)) as Pod & {
          status: { podIP?: string; conditions?: { type: string; status: string }[] };
        };
        ip = pod.status.podIP ?? '';
        return pod.status.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false;
      },
      60_000,
      250,
    );
    await waitFor(`kube-router's rules for ${ns}/guarded`, () => firewalled(ns, 'guarded'), 60_000, 250);
    // The machine itself (the kubelet's probes) always gets in; so it listens.
    expect(await dial(ip, 8080)).toBe('open');
    // Each probe dials once kube-router has its address (in the policy's set, if it is a friend).
    const rules = (pod: string) =>
      waitFor(`kube-router's rules for ${ns}/${pod}`, () => firewalled(ns, pod), 60_000, 250);
    const gate = await probeGate(rules);
    const probe = async (name: string, labels: Record<string, string>) => {
      await cluster.client.post(`/api/v1/namespaces/${ns}/pods`, {
        metadata: { name, labels },
        spec: {
          ...onNode(),
          automountServiceAccountToken: false,
          restartPolicy: 'Never',
          containers: [
            {
              name: 'probe',
              image: image.ref,
              imagePullPolicy: 'IfNotPresent',
              command: probeCommand({ guarded: { host: ip, port: 8080 } }, gate),
              securityContext: restricted,
            },
          ],
        },
      });
      const pod = await finished(name);
      expect(pod.status.phase, `${await logs(name)} ${gate.refused.get(name) ?? ''}`).toBe('Succeeded');
      return JSON.parse(await logs(name));
    };
    try {
      expect(await probe('friend', { role: 'friend' })).toEqual({ guarded: 'open' });
      expect(await probe('stranger', { role: 'stranger' })).toEqual({ guarded: 'blocked' });
    } finally {
      await gate.close();
    }
  });
});
