import { resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ClusterHandle } from '../../cluster/cluster-handle.ts';
import { freePort } from '../../cluster/ports.ts';
import { testCluster, uniqueName } from '../../cluster/testing.ts';
import {
  apply,
  createNamespace,
  installCrds,
  nodes,
  OperatorProcess,
  pool,
  poolManifest,
  startNodes,
  until,
} from './helpers.ts';

// Agents in pool pods prove who they are with their pod's projected token:
// whatever a pod's agent claims (another namespace, another pool), it is the
// agent of its own pod's pool or nothing. The kubelet rotates the token every
// 2 s here and a long task outlives several rotations on one stream.

// biome-ignore lint/suspicious/noExplicitAny: raw API JSON, read field by field
type Json = Record<string, any>;

let cluster: ClusterHandle;
let tenant: string;
let victim: string;
let operator: OperatorProcess;
const group = uniqueName('id');
const agentCommand = [process.execPath, resolve('src/agent/main.ts')];
const handlersEnv = { name: 'AGENTFLOW_HANDLERS_MODULE', value: resolve('test/fixtures/agent/handlers.mjs') };

function agentPool(namespace: string, name: string, env: { name: string; value: string }[] = []): Json {
  return poolManifest(namespace, name, {
    replicas: 1,
    group,
    capacity: 2,
    cpu: '10m',
    memory: '32Mi',
    command: agentCommand,
    env: [handlersEnv, { name: 'AGENTFLOW_CREDENTIAL_CHECK_MS', value: '300' }, ...env],
  });
}

const events = async (namespace: string, name: string): Promise<Json[]> =>
  (
    await cluster.client.get<{ items: Json[] }>(
      `/api/v1/namespaces/${namespace}/events?fieldSelector=involvedObject.name=${name}`,
    )
  ).items;

beforeAll(async () => {
  cluster = testCluster();
  await installCrds(cluster);
  tenant = await createNamespace(cluster, 'tenant');
  // The API server's Pod Security admission refuses any agent pod that is not "restricted".
  await cluster.client.mergePatch(`/api/v1/namespaces/${tenant}`, {
    metadata: { labels: { 'pod-security.kubernetes.io/enforce': 'restricted' } },
  });
  victim = await createNamespace(cluster, 'victim');
  await startNodes(cluster, nodes(group, [{ suffix: 'a', cpu: '16', memory: '32Gi' }]), { tokenRefreshSeconds: 2 });
  operator = new OperatorProcess(cluster, {
    name: 'op-identity',
    namespace: tenant,
    prefix: `/${uniqueName('identity')}`,
    election: uniqueName('identity'),
    dispatcherPort: await freePort(),
  });
  await operator.waitFor('Operator is leading');
});

afterAll(async () => {
  operator?.kill('SIGTERM');
  await operator?.exited;
  for (const ns of [tenant, victim]) await cluster.client.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  await cluster.close();
});

describe('agent identity from the pod', () => {
  it("a pod's agent that claims another namespace's pool, or another pool of its own namespace, is refused with a Warning Event and gets no task", async () => {
    // The victim's pool exists in its own namespace (another operator's watch; this one watches the tenant only).
    await apply(cluster, agentPool(victim, 'researchers'));
    await apply(cluster, agentPool(tenant, 'other'));
    // The attacks of issue 12, from inside a pod: the template overrides what the agent claims.
    await apply(
      cluster,
      agentPool(tenant, 'rogue', [
        { name: 'AGENTFLOW_NAMESPACE', value: victim },
        { name: 'AGENTFLOW_POOL', value: 'researchers' },
      ]),
    );
    await apply(cluster, agentPool(tenant, 'sidestep', [{ name: 'AGENTFLOW_POOL', value: 'other' }]));
    await until(
      'the honest pool connected',
      () => pool(cluster, tenant, 'other'),
      (p) => p.status?.connectedAgents === 1,
      60_000,
    );
    const rogueEvent = await until(
      'a Warning Event on the rogue pool',
      () => events(tenant, 'rogue'),
      (es) => es.some((e) => e.reason === 'AgentNamespaceMismatch'),
      30_000,
    );
    expect(rogueEvent.find((e) => e.reason === 'AgentNamespaceMismatch')).toMatchObject({
      type: 'Warning',
      message: `Refused pod rogue-0: Register.namespace: "${victim}" is not this agent's namespace; its pod is in "${tenant}"`,
    });
    const sidestep = await until(
      'a Warning Event on the sidestepping pool',
      () => events(tenant, 'sidestep'),
      (es) => es.some((e) => e.reason === 'AgentPoolMismatch'),
      30_000,
    );
    expect(sidestep.find((e) => e.reason === 'AgentPoolMismatch')?.message).toContain(
      `Register.pool: "other" is not this agent's pool; its pod belongs to AgentPool "sidestep"`,
    );
    // Work of the pool the sidestepping agent wanted runs on that pool's own agent only.
    await apply(cluster, {
      apiVersion: 'agentflow.io/v1alpha1',
      kind: 'Workflow',
      metadata: { name: 'other-work', namespace: tenant },
      spec: { pool: 'other', tasks: [{ name: 't', handler: 'echo', input: { secret: 42 } }] },
    });
    const done = await until(
      'the workflow to finish',
      () => cluster.client.get<Json>(`/apis/agentflow.io/v1alpha1/namespaces/${tenant}/workflows/other-work`),
      (w) => ['Succeeded', 'Failed'].includes(w.status?.phase),
      60_000,
    );
    expect(done.status.phase).toBe('Succeeded');
    expect((await pool(cluster, tenant, 'rogue')).status?.connectedAgents ?? 0).toBe(0);
    expect((await pool(cluster, tenant, 'sidestep')).status?.connectedAgents ?? 0).toBe(0);
    // The operator's pods passed the namespace's "restricted" admission and carry no API token.
    const podSpec = (await cluster.client.get<Json>(`/api/v1/namespaces/${tenant}/pods/other-0`)).spec;
    expect(podSpec.automountServiceAccountToken).toBe(false);
    expect(podSpec.volumes.map((v: Json) => v.name)).not.toContainEqual(expect.stringMatching(/^kube-api-access/));
    const registered = operator.lines.filter((l) => l.msg === 'Agent registered').map((l) => l.agentId);
    expect(registered).not.toContain('rogue-0');
    expect(registered).not.toContain('sidestep-0');
  }, 120_000);

  it('a task running across several token rotations finishes on the same stream', async () => {
    await apply(cluster, agentPool(tenant, 'steady'));
    await until(
      'steady connected',
      () => pool(cluster, tenant, 'steady'),
      (p) => p.status?.connectedAgents === 1,
      60_000,
    );
    const reauthsBefore = operator.lines.filter(
      (l) => l.msg === 'Agent re-authenticated' && l.agentId === 'steady-0',
    ).length;
    await apply(cluster, {
      apiVersion: 'agentflow.io/v1alpha1',
      kind: 'Workflow',
      metadata: { name: 'long', namespace: tenant },
      spec: { pool: 'steady', tasks: [{ name: 'slow', handler: 'sleepy', input: { ms: 8000 } }] },
    });
    const done = await until(
      'the long workflow to finish',
      () => cluster.client.get<Json>(`/apis/agentflow.io/v1alpha1/namespaces/${tenant}/workflows/long`),
      (w) => ['Succeeded', 'Failed'].includes(w.status?.phase),
      60_000,
    );
    expect(done.status.phase).toBe('Succeeded');
    expect(done.status.outputs?.slow ?? done.status.tasks?.[0]).toBeDefined();
    const reauths = operator.lines.filter((l) => l.msg === 'Agent re-authenticated' && l.agentId === 'steady-0');
    // Rotated every 2 s while the 8 s task ran: several fresh tokens on the open stream.
    expect(reauths.length - reauthsBefore).toBeGreaterThanOrEqual(3);
    // One registration: the stream was never dropped and re-opened.
    expect(operator.lines.filter((l) => l.msg === 'Agent registered' && l.agentId === 'steady-0')).toHaveLength(1);
  });
});
