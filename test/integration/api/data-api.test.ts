import { readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import {
  type AgentList,
  DATA_APISERVICE,
  dataPath,
  LOG_DROPPED_LINE,
  type WorkflowTaskList,
} from '../../../src/api/data-api.ts';
import type { ClusterHandle } from '../../cluster/cluster-handle.ts';
import { freePort } from '../../cluster/ports.ts';
import { RestClient } from '../../cluster/rest.ts';
import { testCluster, uniqueName } from '../../cluster/testing.ts';
import {
  apply,
  createNamespace,
  installCrds,
  nodes,
  OperatorProcess,
  operatorKubeconfig,
  pool,
  startNodes,
  until,
} from '../operator/helpers.ts';
import { fixturePool, getWorkflow, type Json, phaseIs, workflowManifest } from '../workflow/helpers.ts';

// The data API end to end: a real operator leader serves data.agentflow.io, a real kube-apiserver
// proxies to it through the shipped APIService (its caBundle filled in by the operator), users reach
// it with their own credentials, and the Workflow's RBAC decides what each sees. Task tables come
// from the engine and etcd, logs from what real agents logged.

let cluster: ClusterHandle;
let ns: string;
let operator: OperatorProcess;
let apiPort: number;
/** A user who may read workflows in ns, one who may not, and one who may read them elsewhere only. */
let alice: RestClient;
let bob: RestClient;
let aliceKubeconfig: string;
let bobKubeconfig: string;
const group = uniqueName('g');
const fixture = resolve('test/fixtures/agent/data-api-handlers.mjs');

const shipped = () =>
  readFileSync('deploy/operator/data-api.yaml', 'utf8')
    .split(/^---$/m)
    .map((d) => parseYaml(d) as Json)
    .filter(Boolean);

async function applyOrThrow(obj: Json): Promise<void> {
  const r = await cluster.kubectl(['apply', '-f', '-'], { input: JSON.stringify(obj) });
  if (r.code !== 0) throw new Error(`applying ${obj.kind} ${obj.metadata?.name} failed: ${r.stderr}`);
}

const tasksOf = (c: RestClient, wf: string, task?: string) =>
  c.get<WorkflowTaskList>(`${dataPath(ns, 'tasks', wf)}${task ? `?task=${task}` : ''}`);
const logOf = (c: RestClient, wf: string, q: string) => c.get<string>(`${dataPath(ns, 'logs', wf)}?${q}`);

async function runToEnd(name: string, spec: Json): Promise<Json> {
  await apply(cluster, workflowManifest(ns, name, spec));
  return until(`${name} ends`, () => getWorkflow(cluster, ns, name), phaseIs('Succeeded', 'Failed'), 60_000);
}

beforeAll(async () => {
  cluster = testCluster();
  await installCrds(cluster);
  ns = await createNamespace(cluster, 'dapi');
  await startNodes(cluster, nodes(group, [{ suffix: 'a', cpu: '8', memory: '16Gi' }]));
  apiPort = await freePort();
  // The shipped APIService, Service and ClusterRole for users; the Service is an ExternalName one
  // here (this control plane has no service network: the API server dials the host itself).
  for (const doc of shipped()) {
    if (doc.kind === 'Service') {
      await applyOrThrow({
        apiVersion: 'v1',
        kind: 'Service',
        metadata: { name: doc.metadata.name, namespace: ns },
        spec: { type: 'ExternalName', externalName: '127.0.0.1' },
      });
    } else if (doc.kind === 'APIService') {
      await applyOrThrow({
        ...doc,
        spec: { ...doc.spec, service: { ...doc.spec.service, namespace: ns, port: apiPort } },
      });
    } else await applyOrThrow(doc);
  }
  operator = new OperatorProcess(cluster, {
    name: 'op-dapi',
    namespace: ns,
    prefix: `/${uniqueName('dapi')}`,
    election: uniqueName('dapi'),
    dispatcherPort: await freePort(),
    dataApiPort: apiPort,
    kubeconfig: await operatorKubeconfig(cluster, ns),
  });
  await operator.waitFor('Operator is leading');
  await apply(cluster, fixturePool(ns, 'agents', { group, replicas: 1, handlersModule: fixture, handlerLog: '' }));
  await until(
    'an agent connected',
    () => pool(cluster, ns, 'agents'),
    (p) => p.status?.connectedAgents === 1,
    60_000,
  );
  await until(
    'the APIService is Available',
    () => cluster.client.get<Json>(`/apis/apiregistration.k8s.io/v1/apiservices/${DATA_APISERVICE}`),
    (s) => s.status?.conditions?.some((c: Json) => c.type === 'Available' && c.status === 'True'),
    60_000,
  );

  aliceKubeconfig = cluster.userKubeconfig('alice');
  bobKubeconfig = cluster.userKubeconfig('bob');
  alice = RestClient.fromKubeconfig(aliceKubeconfig);
  bob = RestClient.fromKubeconfig(bobKubeconfig);
  await cluster.client.post(`/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/roles`, {
    metadata: { name: 'workflow-reader' },
    rules: [{ apiGroups: ['agentflow.io'], resources: ['workflows', 'agentpools'], verbs: ['get', 'list', 'watch'] }],
  });
  await cluster.client.post(`/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/rolebindings`, {
    metadata: { name: 'alice-reads' },
    roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'workflow-reader' },
    subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: 'alice' }],
  });
}, 180_000);

afterAll(async () => {
  alice?.close();
  bob?.close();
  operator?.kill('SIGTERM');
  await operator?.exited;
  await cluster.client.delete(`/apis/apiregistration.k8s.io/v1/apiservices/${DATA_APISERVICE}`).catch(() => undefined);
  await cluster.client.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  await cluster.close();
});

describe('the data API through the API server', () => {
  it('fills in the APIService caBundle and is discoverable with kubectl', async () => {
    const svc = await cluster.client.get<Json>(`/apis/apiregistration.k8s.io/v1/apiservices/${DATA_APISERVICE}`);
    expect(Buffer.from(svc.spec.caBundle, 'base64').toString()).toContain('BEGIN CERTIFICATE');
    const r = await cluster.kubectl(['api-resources', '--api-group=data.agentflow.io', '-o', 'name'], {
      kubeconfig: aliceKubeconfig,
    });
    // Subresources are not listed as resources; the group itself is served (no discovery error).
    expect(r.code, r.stderr).toBe(0);
    const raw = await cluster.kubectl(['get', '--raw', '/apis/data.agentflow.io/v1alpha1'], {
      kubeconfig: aliceKubeconfig,
    });
    expect(raw.code, raw.stderr).toBe(0);
    expect(JSON.parse(raw.stdout).resources.map((x: Json) => x.name)).toEqual([
      'workflows/tasks',
      'workflows/log',
      'agentpools/agents',
    ]);
  });

  it('lists every task with its phase, attempts, agent and node, and one task with its input and output', async () => {
    const done = await runToEnd('fan', {
      pool: 'agents',
      retryPolicy: { maxAttempts: 2, backoff: { initialSeconds: 1 } },
      tasks: [
        { name: 'first', handler: 'say', input: { num: 1 } },
        { name: 'again', handler: 'flaky', dependsOn: ['first'] },
        { name: 'each', handler: 'say', dependsOn: ['first'], forEach: '[1, 2, 3]', input: { num: '${{ item }}' } },
      ],
    });
    expect(done.status.phase).toBe('Succeeded');
    const list = await tasksOf(alice, 'fan');
    expect(list).toMatchObject({
      kind: 'WorkflowTaskList',
      metadata: { namespace: ns, name: 'fan', phase: 'Succeeded' },
    });
    const byName = new Map(list.items.map((t) => [t.name, t]));
    expect([...byName.keys()].sort()).toEqual(['again', 'each.0', 'each.1', 'each.2', 'first']);
    const agentPod = (await cluster.client.get<Json>(`/api/v1/namespaces/${ns}/pods`)).items[0];
    for (const t of list.items) {
      expect(t.phase, t.name).toBe('Succeeded');
      expect(t.agent, t.name).toBe(agentPod.metadata.name);
      expect(t.node, t.name).toBe(agentPod.spec.nodeName);
      expect(t.durationMs, t.name).toBeGreaterThanOrEqual(0);
      expect(t.input, 'the list leaves inputs out').toBeUndefined();
    }
    expect(byName.get('again')?.dependsOn).toEqual(['first']);
    const again = byName.get('again');
    expect(again?.attempt).toBe(2);
    expect(again?.attempts.map((a) => [a.attempt, a.ok])).toEqual([
      [1, false],
      [2, true],
    ]);
    expect(again?.attempts[0]?.error?.message).toContain('the first attempt always fails');
    const one = await tasksOf(alice, 'fan', 'each.2');
    expect(one.items).toHaveLength(1);
    expect(one.items[0]).toMatchObject({ name: 'each.2', input: { num: 3 }, output: { doubled: 6 } });
  });

  it('returns what a task attempt logged, each attempt apart, with timestamps on request', async () => {
    const log = await logOf(alice, 'fan', 'task=first');
    expect(log).toBe('say begins n=1\nINFO say computed {"n":1}\n');
    expect(await logOf(alice, 'fan', 'task=again&attempt=1')).toBe('flaky attempt 1\n');
    expect(await logOf(alice, 'fan', 'task=again')).toBe('flaky attempt 2\n');
    const stamped = await logOf(alice, 'fan', 'task=first&timestamps=true');
    expect(stamped).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z say begins n=1\n/);
  });

  it('follows a running task attempt live until it ends', async () => {
    const stopFile = join(cluster.info.dir, `stop-${ns}`);
    await apply(
      cluster,
      workflowManifest(ns, 'tail', { pool: 'agents', tasks: [{ name: 't', handler: 'ticker', input: { stopFile } }] }),
    );
    await until(
      't runs',
      () => tasksOf(alice, 'tail'),
      (l) => l.items[0]?.phase === 'Running',
      30_000,
    );
    let text = '';
    const seen: { at: number; text: string }[] = [];
    const followed = alice.stream(`${dataPath(ns, 'logs', 'tail')}?task=t&follow=true`, (chunk) => {
      text += chunk;
      seen.push({ at: Date.now(), text: chunk });
    });
    // Lines arrive while the task runs: the answer is still open and more come.
    await until(
      'tick lines stream in',
      async () => text,
      (t) => (t.match(/tick \d+/g) ?? []).length >= 5,
      15_000,
    );
    expect(text).not.toContain('ticker done');
    writeFileSync(stopFile, '');
    const status = await followed;
    expect(status).toBe(200);
    expect(text.trimEnd().split('\n').at(-1)).toBe('ticker done');
    expect(seen.length, 'delivered in several chunks, not at the end').toBeGreaterThan(2);
    const lines = text.trimEnd().split('\n');
    expect(lines.slice(0, -1)).toEqual(lines.slice(0, -1).map((_, i) => `tick ${i}`));
  });

  it('keeps the last part of a flood, saying that earlier lines were dropped', async () => {
    const done = await runToEnd('flood', {
      pool: 'agents',
      tasks: [{ name: 'f', handler: 'flood', input: { lines: 3000, bytes: 200 } }],
    });
    expect(done.status.phase).toBe('Succeeded');
    const log = await logOf(alice, 'flood', 'task=f');
    const lines = log.trimEnd().split('\n');
    expect(lines[0]).toBe(LOG_DROPPED_LINE);
    expect(lines.at(-1)).toMatch(/^flood 002999 x+$/);
    expect(Buffer.byteLength(log)).toBeLessThanOrEqual(256 * 1024 + 1024);
    expect(Buffer.byteLength(log)).toBeGreaterThan(200 * 1024);
  });

  it('lists a pool’s agents with slots and work in flight', async () => {
    const list = await alice.get<AgentList>(dataPath(ns, 'agents', 'agents'));
    expect(list.kind).toBe('AgentList');
    expect(list.items).toHaveLength(1);
    expect(list.items[0]).toMatchObject({ capacity: 8, inFlight: 0, free: 8, draining: false });
    expect(list.items[0]?.handlers).toEqual(['flaky', 'flood', 'gate', 'once', 'say', 'ticker']);
  });

  it('refuses a user without RBAC on the workflow with 403 naming the user and the resource', async () => {
    const r = await cluster.kubectl(['get', '--raw', dataPath(ns, 'tasks', 'fan')], { kubeconfig: bobKubeconfig });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('Forbidden');
    expect(r.stderr).toContain('User "bob" cannot get resource "workflows" in API group "agentflow.io"');
    for (const path of [
      dataPath(ns, 'tasks', 'fan'),
      `${dataPath(ns, 'logs', 'fan')}?task=first`,
      dataPath(ns, 'agents', 'agents'),
    ]) {
      const err = await bob.get(path).then(
        () => undefined,
        (e: { status: number }) => e,
      );
      expect(err?.status, path).toBe(403);
    }
  });

  it('answers a clear 404 or 400 for what does not exist or is malformed', async () => {
    const status = (p: Promise<unknown>) =>
      p.then(
        () => ({ status: 200, message: '' }),
        (e: { status: number; message: string }) => e,
      );
    const missing = await status(tasksOf(alice, 'nope'));
    expect(missing.status).toBe(404);
    expect(missing.message).toContain('workflows.agentflow.io "nope" not found');
    const noTask = await status(tasksOf(alice, 'fan', 'ghost'));
    expect(noTask).toMatchObject({ status: 404 });
    expect(noTask.message).toContain('has no task "ghost"');
    const noParam = await status(logOf(alice, 'fan', ''));
    expect(noParam.status).toBe(400);
    expect(noParam.message).toContain('query parameter task: required');
    const badAttempt = await status(logOf(alice, 'fan', 'task=first&attempt=zero'));
    expect(badAttempt.status).toBe(400);
    expect(badAttempt.message).toContain('query parameter attempt');
    const noPool = await status(alice.get(dataPath(ns, 'agents', 'nopool')));
    expect(noPool.status).toBe(404);
  });

  it('refuses a caller that skips the API server (no front-proxy certificate)', async () => {
    const { request } = await import('node:https');
    const code = await new Promise<number>((resolve, reject) => {
      const req = request(
        {
          host: '127.0.0.1',
          port: apiPort,
          path: dataPath(ns, 'tasks', 'fan'),
          rejectUnauthorized: false,
          headers: { 'X-Remote-User': 'system:admin', 'X-Remote-Group': 'system:masters' },
        },
        (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        },
      );
      req.on('error', reject);
      req.end();
    });
    expect(code).toBe(401);
  });
});
