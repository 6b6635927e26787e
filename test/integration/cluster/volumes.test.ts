import { existsSync, readFileSync, readlinkSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ClusterHandle } from '../../cluster/cluster-handle.ts';
import type { ProcessKubelet } from '../../cluster/kubelet/kubelet.ts';
import type { Container, Pod, Volume } from '../../cluster/kubelet/types.ts';
import { waitFor } from '../../cluster/managed-process.ts';
import { testCluster, uniqueName } from '../../cluster/testing.ts';

// Pods on the process kubelet must see their volumes where a real node puts
// them: ConfigMaps, Secrets, downward API fields and pod-bound projected tokens
// at their mountPath, kept fresh, in the container's own mount namespace only.

let cluster: ClusterHandle;
let kubelet: ProcessKubelet;
const ns = uniqueName('volumes');
const node = uniqueName('vnode');

function pod(
  name: string,
  containers: (Partial<Container> & { name: string })[],
  spec: Partial<Pod['spec']> = {},
): Pod {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: ns, labels: { app: name } },
    spec: {
      nodeName: node,
      restartPolicy: 'Never',
      ...spec,
      containers: containers.map((c) => ({ image: 'example.com/shell:1', ...c })),
    },
  };
}

async function create(p: Pod): Promise<Pod> {
  return cluster.client.post<Pod>(`/api/v1/namespaces/${ns}/pods`, p);
}

async function getPod(name: string): Promise<Pod | undefined> {
  return cluster.client.getOrUndefined<Pod>(`/api/v1/namespaces/${ns}/pods/${name}`);
}

async function phase(name: string, want: string, timeoutMs = 30_000): Promise<void> {
  await waitFor(`${name} ${want}`, async () => (await getPod(name))?.status?.phase === want, timeoutMs);
}

async function logs(name: string, container?: string): Promise<string> {
  const r = await cluster.kubectl(['logs', '-n', ns, name, ...(container ? ['-c', container] : [])]);
  expect(r.stderr).toBe('');
  return r.stdout;
}

async function events(name: string): Promise<{ type: string; reason: string; message: string }[]> {
  const list = await cluster.client.get<{ items: { type: string; reason: string; message: string }[] }>(
    `/api/v1/namespaces/${ns}/events?fieldSelector=involvedObject.name=${name}`,
  );
  return list.items;
}

function configMap(name: string, data: Record<string, string>): unknown {
  return { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name, namespace: ns }, data };
}

function jwtPayload(token: string): Record<string, unknown> {
  const part = token.split('.')[1] ?? '';
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8')) as Record<string, unknown>;
}

async function tokenReview(token: string, audiences: string[]) {
  return cluster.client.post<{
    status: {
      authenticated?: boolean;
      audiences?: string[];
      user?: { username: string; extra?: Record<string, string[]> };
    };
  }>('/apis/authentication.k8s.io/v1/tokenreviews', {
    apiVersion: 'authentication.k8s.io/v1',
    kind: 'TokenReview',
    spec: { token, audiences },
  });
}

const agentflowToken: Volume = {
  name: 'agentflow-token',
  projected: { sources: [{ serviceAccountToken: { audience: 'agentflow', expirationSeconds: 600, path: 'token' } }] },
};

beforeAll(async () => {
  cluster = testCluster();
  await cluster.client.post('/api/v1/namespaces', { metadata: { name: ns } });
  await waitFor(
    'default service account and root CA',
    async () =>
      (await cluster.client.getOrUndefined(`/api/v1/namespaces/${ns}/serviceaccounts/default`)) !== undefined &&
      (await cluster.client.getOrUndefined(`/api/v1/namespaces/${ns}/configmaps/kube-root-ca.crt`)) !== undefined,
    30_000,
  );
  kubelet = await cluster.startKubelet([{ name: node, capacity: { cpu: '8', memory: '8Gi', pods: '50' } }], {
    backoffBaseMs: 200,
    backoffMaxMs: 1_000,
    tokenRefreshSeconds: 2,
    volumeSyncSeconds: 1,
  });
});

afterAll(async () => {
  await cluster.client.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  await cluster.close();
});

describe('process kubelet volumes', () => {
  it('mounts a ConfigMap at its mountPath without creating it on the host', async () => {
    expect(existsSync('/etc/agent')).toBe(false);
    await cluster.client.post(
      `/api/v1/namespaces/${ns}/configmaps`,
      configMap('agent-config', { 'config.yaml': 'model: small\nslots: 2\n', other: 'x' }),
    );
    await create(
      pod(
        'reads-config',
        [
          {
            name: 'c',
            command: ['sh', '-c', 'cat /etc/agent/config.yaml; touch /etc/agent/new 2>/dev/null || echo read-only'],
            volumeMounts: [{ name: 'config', mountPath: '/etc/agent' }],
          },
        ],
        { volumes: [{ name: 'config', configMap: { name: 'agent-config' } }] },
      ),
    );
    await phase('reads-config', 'Succeeded');
    expect(await logs('reads-config')).toBe('model: small\nslots: 2\nread-only\n');
    expect(existsSync('/etc/agent')).toBe(false);
  });

  it('maps items to paths and applies defaultMode and per-item modes to a Secret', async () => {
    await cluster.client.post(`/api/v1/namespaces/${ns}/secrets`, {
      metadata: { name: 'creds' },
      stringData: { password: 's3cret', 'api-key': 'k-123', unused: 'no' },
    });
    await create(
      pod(
        'reads-secret',
        [
          {
            name: 'c',
            command: [
              'sh',
              '-c',
              'cd /var/lib/agent/creds && ls && stat -L -c "%a" password nested/key && cat password nested/key',
            ],
            volumeMounts: [{ name: 'creds', mountPath: '/var/lib/agent/creds' }],
          },
        ],
        {
          volumes: [
            {
              name: 'creds',
              secret: {
                secretName: 'creds',
                defaultMode: 0o400,
                items: [
                  { key: 'password', path: 'password' },
                  { key: 'api-key', path: 'nested/key', mode: 0o440 },
                ],
              },
            },
          ],
        },
      ),
    );
    await phase('reads-secret', 'Succeeded');
    expect(await logs('reads-secret')).toBe('nested\npassword\n400\n440\ns3cretk-123');
    expect(existsSync('/var/lib/agent')).toBe(false);
  });

  it('mounts a single key with subPath, and a downwardAPI volume', async () => {
    await create(
      pod(
        'subpath',
        [
          {
            name: 'c',
            command: ['sh', '-c', 'cat /opt/app/settings.yaml; echo; cat /etc/podinfo/name /etc/podinfo/labels'],
            volumeMounts: [
              { name: 'config', mountPath: '/opt/app/settings.yaml', subPath: 'config.yaml' },
              { name: 'info', mountPath: '/etc/podinfo' },
            ],
          },
        ],
        {
          volumes: [
            { name: 'config', configMap: { name: 'agent-config' } },
            {
              name: 'info',
              downwardAPI: {
                items: [
                  { path: 'name', fieldRef: { fieldPath: 'metadata.name' } },
                  { path: 'labels', fieldRef: { fieldPath: 'metadata.labels' } },
                ],
              },
            },
          ],
        },
      ),
    );
    await phase('subpath', 'Succeeded');
    expect(await logs('subpath')).toBe('model: small\nslots: 2\n\nsubpathapp="subpath"');
    expect(existsSync('/opt/app/settings.yaml')).toBe(false);
    expect(existsSync('/etc/podinfo')).toBe(false);
  });

  it('shares an emptyDir between two containers of a pod', async () => {
    await create(
      pod(
        'shared',
        [
          {
            name: 'writer',
            command: ['sh', '-c', 'echo "from writer" > /scratch/msg.tmp && mv /scratch/msg.tmp /scratch/msg'],
            volumeMounts: [{ name: 'scratch', mountPath: '/scratch' }],
          },
          {
            name: 'reader',
            command: ['sh', '-c', 'until [ -f /data/msg ]; do sleep 0.1; done; cat /data/msg'],
            volumeMounts: [{ name: 'scratch', mountPath: '/data' }],
          },
        ],
        { volumes: [{ name: 'scratch', emptyDir: {} }] },
      ),
    );
    await phase('shared', 'Succeeded');
    expect(await logs('shared', 'reader')).toBe('from writer\n');
    expect(existsSync('/scratch')).toBe(false);
    expect(existsSync('/data')).toBe(false);
  });

  it('mounts the default kube-api-access token, CA and namespace, and none when automount is off', async () => {
    const sa = '/var/run/secrets/kubernetes.io/serviceaccount';
    await create(
      pod('default-token', [
        { name: 'c', command: ['sh', '-c', `ls ${sa}; cat ${sa}/namespace; echo; cat ${sa}/token`] },
      ]),
    );
    await create(
      pod('no-token', [{ name: 'c', command: ['sh', '-c', `ls ${sa} 2>&1; echo "KUBECONFIG=$KUBECONFIG"`] }], {
        automountServiceAccountToken: false,
      }),
    );
    await phase('default-token', 'Succeeded');
    await phase('no-token', 'Succeeded');
    const [listing, token] = (await logs('default-token')).split(`${ns}\n`);
    expect(listing).toBe('ca.crt\nnamespace\ntoken\n');
    const review = await tokenReview(token as string, []);
    expect(review.status.authenticated).toBe(true);
    expect(review.status.user?.username).toBe(`system:serviceaccount:${ns}:default`);
    expect(review.status.user?.extra?.['authentication.kubernetes.io/pod-name']).toEqual(['default-token']);
    const none = await logs('no-token');
    expect(none).toContain('No such file or directory');
    expect(none).toContain('KUBECONFIG=\n');
  });

  it('projects a pod-bound token for audience agentflow', async () => {
    const created = await create(
      pod(
        'bound-token',
        [
          {
            name: 'c',
            command: ['cat', '/var/run/secrets/agentflow/token'],
            volumeMounts: [{ name: 'agentflow-token', mountPath: '/var/run/secrets/agentflow' }],
          },
        ],
        {
          volumes: [agentflowToken],
        },
      ),
    );
    await phase('bound-token', 'Succeeded');
    const token = await logs('bound-token');
    const claims = jwtPayload(token);
    expect(claims.aud).toEqual(['agentflow']);
    expect(claims['kubernetes.io']).toMatchObject({
      namespace: ns,
      pod: { name: 'bound-token', uid: created.metadata.uid },
      serviceaccount: { name: 'default' },
    });
    expect((claims.exp as number) - (claims.iat as number)).toBe(600);
    expect((await tokenReview(token, ['agentflow'])).status.authenticated).toBe(true);
    // A token for agentflow is no API token.
    expect((await tokenReview(token, [])).status.authenticated).not.toBe(true);
  });

  it('rotates the projected token after tokenRefreshSeconds; every version is whole and valid', async () => {
    await create(
      pod(
        'rotating',
        [
          {
            name: 'c',
            command: ['sh', '-c', 'while :; do cat /var/run/secrets/agentflow/token; echo; sleep 0.2; done'],
            volumeMounts: [{ name: 'agentflow-token', mountPath: '/var/run/secrets/agentflow' }],
          },
        ],
        { restartPolicy: 'Always', volumes: [agentflowToken] },
      ),
    );
    let seen: string[] = [];
    await waitFor(
      'a second token',
      async () => {
        seen = [...new Set(kubelet.logs(ns, 'rotating').split('\n').filter(Boolean))];
        return seen.length >= 2;
      },
      20_000,
    );
    for (const t of seen) expect(t).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+$/);
    const latest = seen[seen.length - 1] as string;
    const review = await tokenReview(latest, ['agentflow']);
    expect(review.status.authenticated).toBe(true);
    expect(review.status.audiences).toEqual(['agentflow']);
    expect(review.status.user?.extra?.['authentication.kubernetes.io/pod-name']).toEqual(['rotating']);
    await cluster.client.delete(`/api/v1/namespaces/${ns}/pods/rotating`, { gracePeriodSeconds: 0 });
  });

  it('shows a ConfigMap update in the mounted file', async () => {
    await cluster.client.post(`/api/v1/namespaces/${ns}/configmaps`, configMap('live', { level: 'info' }));
    await create(
      pod(
        'watcher',
        [
          {
            name: 'c',
            command: ['sh', '-c', 'while :; do cat /etc/live/level; echo; sleep 0.2; done'],
            volumeMounts: [{ name: 'live', mountPath: '/etc/live' }],
          },
        ],
        { restartPolicy: 'Always', volumes: [{ name: 'live', configMap: { name: 'live' } }] },
      ),
    );
    await waitFor('first value', async () => kubelet.logs(ns, 'watcher').includes('info\n'), 20_000);
    await cluster.client.mergePatch(`/api/v1/namespaces/${ns}/configmaps/live`, { data: { level: 'debug' } });
    await waitFor('updated value', async () => kubelet.logs(ns, 'watcher').includes('debug\n'), 20_000);
    const lines = kubelet.logs(ns, 'watcher').split('\n').filter(Boolean);
    expect(new Set(lines)).toEqual(new Set(['info', 'debug']));
    await cluster.client.delete(`/api/v1/namespaces/${ns}/pods/watcher`, { gracePeriodSeconds: 0 });
  });

  it('keeps a pod ContainerCreating with FailedMount until its ConfigMap exists', async () => {
    await create(
      pod(
        'waits',
        [
          {
            name: 'c',
            command: ['cat', '/etc/late/greeting'],
            volumeMounts: [{ name: 'late-config', mountPath: '/etc/late' }],
          },
        ],
        { volumes: [{ name: 'late-config', configMap: { name: 'late' } }] },
      ),
    );
    await waitFor('FailedMount', async () => (await events('waits')).some((e) => e.reason === 'FailedMount'), 20_000);
    const failed = (await events('waits')).find((e) => e.reason === 'FailedMount');
    expect(failed).toMatchObject({ type: 'Warning' });
    expect(failed?.message).toBe('MountVolume.SetUp failed for volume "late-config" : configmap "late" not found');
    const waiting = await getPod('waits');
    expect(waiting?.status?.phase).toBe('Pending');
    expect(waiting?.status?.containerStatuses?.[0]?.state.waiting?.reason).toBe('ContainerCreating');
    await cluster.client.post(`/api/v1/namespaces/${ns}/configmaps`, configMap('late', { greeting: 'hello' }));
    await phase('waits', 'Succeeded');
    expect(await logs('waits')).toBe('hello');
  });

  it('starts a pod whose missing ConfigMap is optional, with an empty volume', async () => {
    await create(
      pod(
        'optional',
        [
          {
            name: 'c',
            command: ['sh', '-c', 'ls /etc/maybe | wc -l'],
            volumeMounts: [{ name: 'maybe', mountPath: '/etc/maybe' }],
          },
        ],
        {
          volumes: [{ name: 'maybe', configMap: { name: 'absent', optional: true } }],
        },
      ),
    );
    await phase('optional', 'Succeeded');
    expect((await logs('optional')).trim()).toBe('0');
  });

  it('refuses an unsupported volume type with FailedMount naming it', async () => {
    await create(
      pod('hostpath', [{ name: 'c', command: ['true'], volumeMounts: [{ name: 'host', mountPath: '/host' }] }], {
        volumes: [{ name: 'host', hostPath: { path: '/etc' } }],
      }),
    );
    await waitFor(
      'FailedMount',
      async () => (await events('hostpath')).some((e) => e.reason === 'FailedMount'),
      20_000,
    );
    const failed = (await events('hostpath')).find((e) => e.reason === 'FailedMount');
    expect(failed?.message).toContain('volume "host"');
    expect(failed?.message).toContain('volume type hostPath is not supported');
    expect((await getPod('hostpath'))?.status?.phase).toBe('Pending');
  });

  it('tracks the real process in its own mount namespace: kill -9 restarts it, exec probes see the volume', async () => {
    await create(
      pod(
        'killable',
        [
          {
            name: 'c',
            command: ['sleep', '600'],
            volumeMounts: [{ name: 'config', mountPath: '/etc/agent' }],
            readinessProbe: { exec: { command: ['cat', '/etc/agent/config.yaml'] }, periodSeconds: 1 },
          },
        ],
        { restartPolicy: 'Always', volumes: [{ name: 'config', configMap: { name: 'agent-config' } }] },
      ),
    );
    await waitFor(
      'killable Ready',
      async () =>
        (await getPod('killable'))?.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false,
      20_000,
    );
    const pid = kubelet.pid(ns, 'killable') as number;
    expect(readlinkSync(`/proc/${pid}/exe`)).toMatch(/sleep$/);
    expect(readlinkSync(`/proc/${pid}/ns/mnt`)).not.toBe(readlinkSync('/proc/self/ns/mnt'));
    expect(kubelet.kill(ns, 'killable', 'SIGKILL')).toBe(true);
    await waitFor(
      'restarted',
      async () => (await getPod('killable'))?.status?.containerStatuses?.[0]?.restartCount === 1,
      20_000,
    );
    expect((await getPod('killable'))?.status?.containerStatuses?.[0]?.lastState.terminated?.exitCode).toBe(137);
    await cluster.client.delete(`/api/v1/namespaces/${ns}/pods/killable`, { gracePeriodSeconds: 0 });
  });

  it('leaves no mount and no volume file behind on the host', async () => {
    expect(readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(cluster.info.dir);
    for (const p of [
      '/etc/agent',
      '/etc/live',
      '/etc/late',
      '/var/lib/agent',
      '/var/run/secrets/agentflow',
      '/scratch',
    ]) {
      expect(existsSync(p)).toBe(false);
    }
  });
});
