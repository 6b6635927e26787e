import { execFile } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { join, resolve } from 'node:path';
import { type Browser, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import {
  type AgentList,
  type AuditVerification,
  DATA_APISERVICE,
  dataNamespaceMemoPath,
  dataNamespaceStatePath,
  dataPath,
  LOG_DROPPED_LINE,
  type MemoCleared,
  type MemoEntryView,
  type MemoList,
  type StateItem,
  type StateList,
  type WorkflowTaskList,
} from '../../../src/api/data-api.ts';
import { runUiProxy, type UiProxy } from '../../../src/cli/ui-proxy.ts';
import { UI_PATH } from '../../../src/operator/data-api/ui-assets.ts';
import { AuditLog, MemoCache, type StateStore } from '../../../src/state/index.ts';
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
import { testStore } from '../state/helpers.ts';
import { fixturePool, getWorkflow, type Json, phaseIs, workflowManifest } from '../workflow/helpers.ts';

// The data API and the web UI end to end (one file: both need the one APIService a cluster can have): a real operator leader serves data.agentflow.io, a real kube-apiserver
// proxies to it through the shipped APIService (its caBundle filled in by the operator), users reach
// it with their own credentials, and the Workflow's RBAC decides what each sees. Task tables come
// from the engine and etcd, logs from what real agents logged.

let cluster: ClusterHandle;
let ns: string;
let operator: OperatorProcess;
/** How the operator was started: a test restarts it (a leader change) with the same. */
let operatorOptions: ConstructorParameters<typeof OperatorProcess>[1];
let apiPort: number;
const prefix = `/${uniqueName('dapi')}`;
let store: StateStore;
/** A user who may read workflows in ns, one who may not, and one who may read them elsewhere only. */
let alice: RestClient;
let bob: RestClient;
let aliceKubeconfig: string;
let bobKubeconfig: string;
const group = uniqueName('g');
const fixture = resolve('test/fixtures/agent/data-api-handlers.mjs');
// The web UI's part: a pool named as the example's, whose plan and write wait for the test to open their gate.
const uiFixture = resolve('test/fixtures/agent/ui-handlers.mjs');
let browser: Browser;
let gates: string;
const proxies: UiProxy[] = [];

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

const example = parseYaml(readFileSync('deploy/examples/workflow-research.yaml', 'utf8')) as Json;
const WF = example.metadata.name as string;
const SCREENSHOT = 'test-results/ui-workflow.png';
/** How long the page may take to show a change (the watch, or the task table read every second). */
const SHOWN_MS = 15_000;

const phaseOf = async (wf: string, task: string) =>
  (await tasksOf(alice, wf)).items.find((t) => t.name === task)?.phase;

async function proxyFor(kubeconfig: string): Promise<UiProxy> {
  const p = await runUiProxy({ kubeconfig, namespace: ns, out: () => undefined });
  proxies.push(p);
  return p;
}

async function newPage(): Promise<Page> {
  const context = await browser.newContext({ viewport: { width: 1500, height: 860 } });
  return context.newPage();
}

/** A DAG node (or a group's instance) in a given phase, once the page shows it. */
const node = (page: Page, task: string, phase: string) =>
  page.locator(`[data-testid="dag-node"][data-task="${task}"][data-phase="${phase}"]`);

/** The agent pod of a pool (two pools share the namespace). */
const podOf = async (poolName: string): Promise<Json> =>
  (
    await cluster.client.get<{ items: Json[] }>(
      `/api/v1/namespaces/${ns}/pods?labelSelector=${encodeURIComponent(`agentflow.io/pool=${poolName}`)}`,
    )
  ).items[0] as Json;

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
  operatorOptions = {
    name: 'op-dapi',
    namespace: ns,
    prefix,
    election: uniqueName('dapi'),
    dispatcherPort: await freePort(),
    dataApiPort: apiPort,
    kubeconfig: await operatorKubeconfig(cluster, ns),
  };
  operator = new OperatorProcess(cluster, operatorOptions);
  await operator.waitFor('Operator is leading');
  await apply(cluster, fixturePool(ns, 'agents', { group, replicas: 1, handlersModule: fixture, handlerLog: '' }));
  await until(
    'an agent connected',
    () => pool(cluster, ns, 'agents'),
    (p) => p.status?.connectedAgents === 1,
    60_000,
  );
  gates = join(cluster.info.dir, `ui-gates-${ns}`);
  mkdirSync(gates, { recursive: true });
  const researchers = fixturePool(ns, example.spec.pool, {
    group,
    replicas: 1,
    handlersModule: uiFixture,
    handlerLog: '',
  });
  researchers.spec.template.spec.containers[0].env.push({ name: 'UI_GATES', value: gates });
  await apply(cluster, researchers);
  await until(
    'a researcher connected',
    () => pool(cluster, ns, example.spec.pool),
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
  store = testStore(prefix);
  mkdirSync('test-results', { recursive: true });
  browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: ['--no-sandbox'] });
}, 180_000);

afterAll(async () => {
  await browser?.close();
  store?.close();
  await Promise.all(proxies.map((p) => p.close()));
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
      'workflows/audit',
      'workflows/state',
      'agentpools/state',
      'workflows/approval',
      'workflows/signal',
      'state',
      'memo',
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
    const agentPod = await podOf('agents');
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
    expect(list.items[0]?.handlers).toEqual([
      'flaky',
      'flood',
      'forge',
      'gate',
      'listen',
      'once',
      'publish',
      'say',
      'streamer',
      'ticker',
    ]);
  });

  it('verifies a workflow’s audit chain', async () => {
    const v = await alice.get<AuditVerification>(dataPath(ns, 'audit', 'fan'));
    expect(v).toMatchObject({ kind: 'AuditVerification', ok: true, problems: [] });
    expect(v.entries).toBeGreaterThan(5);
  });

  it('reads shared state with get, writes it with update on the Workflow; CAS, watch, bad keys', async () => {
    const state = dataPath(ns, 'workflowState', 'fan');
    expect(await alice.get<StateList>(state)).toMatchObject({ kind: 'StateList', items: [] });
    // alice may only read: a write is refused before anything is written.
    const refused = await alice.put(`${state}?key=plan`, { a: 1 }).then(
      () => undefined,
      (e: { status: number; message: string }) => e,
    );
    expect(refused?.status).toBe(403);
    expect(refused?.message).toContain('cannot update resource "workflows"');
    // erin may update workflows.
    const erin = RestClient.fromKubeconfig(cluster.userKubeconfig('erin'));
    try {
      await cluster.client.post(`/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/roles`, {
        metadata: { name: 'workflow-writer' },
        rules: [{ apiGroups: ['agentflow.io'], resources: ['workflows', 'agentpools'], verbs: ['get', 'update'] }],
      });
      await cluster.client.post(`/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/rolebindings`, {
        metadata: { name: 'erin-writes' },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'workflow-writer' },
        subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: 'erin' }],
      });
      // A watcher sees the writes as they happen: from the revision of its listing on (as a Kubernetes
      // watch from a list's resourceVersion), so a write made before its request arrives is not missed.
      const listed = await alice.get<StateList>(state);
      const events: string[] = [];
      const abort = new AbortController();
      const watching = alice
        .stream(
          `${state}?watch=true&prefix=plan&resourceVersion=${listed.metadata.revision}`,
          (t) => events.push(t),
          abort.signal,
        )
        .catch(() => 0);
      const put = await erin.put<StateItem>(`${state}?key=plan`, { steps: ['a', 'b'] });
      expect(put).toMatchObject({ key: 'plan', value: { steps: ['a', 'b'] }, version: 1 });
      expect(await alice.get<StateItem>(`${state}?key=plan`)).toMatchObject({ value: { steps: ['a', 'b'] } });
      // Compare-and-swap: a stale revision is a 409 that says what it found.
      const stale = await erin.put(`${state}?key=plan&expectedRevision=1`, { steps: [] }).then(
        () => undefined,
        (e: { status: number; message: string }) => e,
      );
      expect(stale?.status).toBe(409);
      const cas = await erin.put<StateItem>(`${state}?key=plan&expectedRevision=${put.modRevision}`, { steps: ['c'] });
      expect(cas.version).toBe(2);
      await until(
        'the watcher saw both writes',
        async () => events.join(''),
        (t) => t.split('\n').filter(Boolean).length >= 2,
        10_000,
      );
      const seen = events
        .join('')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Json);
      expect(seen.map((e) => [e.type, e.key, e.value])).toEqual([
        ['PUT', 'plan', { steps: ['a', 'b'] }],
        ['PUT', 'plan', { steps: ['c'] }],
      ]);
      abort.abort();
      await watching;
      // Keys that read like a way out of the scope, and bodies that are no JSON, are refused by name.
      const badKey = await erin.put(`${state}?key=../other`, 1).then(
        () => undefined,
        (e: { status: number; message: string }) => e,
      );
      expect(badKey?.status).toBe(400);
      expect(badKey?.message).toContain('invalid state key "../other"');
      expect(await erin.delete(`${state}?key=plan`)).toMatchObject({ deleted: true });
      expect((await alice.get<StateList>(state)).items).toEqual([]);
      // The namespace's state: pool RBAC decides.
      await erin.put(`${dataNamespaceStatePath(ns)}?key=shared`, 'hello');
      expect((await alice.get<StateList>(dataNamespaceStatePath(ns))).items.map((i) => [i.key, i.value])).toEqual([
        ['shared', 'hello'],
      ]);
      // A DELETE of the namespace's state is one of a collection path to the API server (deletecollection).
      expect(await erin.delete(`${dataNamespaceStatePath(ns)}?key=shared`)).toMatchObject({ deleted: true });
      expect((await alice.get<StateList>(dataNamespaceStatePath(ns))).items).toEqual([]);
      await erin.put(`${dataNamespaceStatePath(ns)}?key=shared`, 'hello');
      const bobReads = await bob.get(dataNamespaceStatePath(ns)).then(
        () => undefined,
        (e: { status: number }) => e,
      );
      expect(bobReads?.status).toBe(403);
    } finally {
      erin.close();
    }
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

// The web UI in a real headless Chromium (Debian's package, driven by playwright-core): the leader
// serves its files behind the same APIService, `agentflow ui`'s proxy (runUiProxy) adds a user's
// kubeconfig credentials. The example workflow runs on agents whose plan and write tasks wait for
// the test to open their gate, so the page is watched while tasks change phase.
describe('approvals and signals', () => {
  /** alice may approve and signal in ns; carol may too, but is in no task's approvers list. */
  let carol: RestClient;
  let carolKubeconfig: string;
  beforeAll(async () => {
    carolKubeconfig = cluster.userKubeconfig('carol');
    carol = RestClient.fromKubeconfig(carolKubeconfig);
    for (const [user, role] of [
      ['alice', 'agentflow-approver'],
      ['alice', 'agentflow-signaler'],
      ['carol', 'agentflow-approver'],
    ] as const) {
      await cluster.client.post(`/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/rolebindings`, {
        metadata: { name: `${user}-${role}` },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: role },
        subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: user }],
      });
    }
  });
  afterAll(() => carol?.close());

  const approvalPath = (wf: string) => dataPath(ns, 'approval', wf);
  const decide = (c: RestClient, wf: string, body: Json) => c.post<Json>(approvalPath(wf), body);
  const signal = (c: RestClient, wf: string, name: string, data: unknown) =>
    c.post<Json>(dataPath(ns, 'signal', wf), { name, data });
  const refusal = (p: Promise<unknown>) =>
    p.then(
      () => ({ status: 200, message: '' }),
      (e: { status: number; message: string }) => e,
    );
  /** One task's row; undefined until the run has the task (the API answers 404 until then). */
  const taskOf = async (wf: string, task: string) =>
    (
      await tasksOf(alice, wf, task).catch((e: { status?: number }) => {
        if (e.status === 404) return { items: [] };
        throw e;
      })
    ).items[0];
  const eventsOf = async (wf: string) =>
    (
      await cluster.client.get<{ items: Json[] }>(
        `/api/v1/namespaces/${ns}/events?fieldSelector=${encodeURIComponent(`involvedObject.name=${wf}`)}`,
      )
    ).items;
  const cliRun = (kubeconfig: string, args: string[]) =>
    new Promise<{ code: number | null; stdout: string; stderr: string }>((res) => {
      execFile(
        process.execPath,
        [resolve('bin/agentflow.mjs'), '-n', ns, ...args],
        { env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', KUBECONFIG: kubeconfig } },
        (err, stdout, stderr) => res({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
      );
    });

  it('holds the workflow at an approval task, holding no agent slot, until `agentflow approve`; then runs on', async () => {
    const wf = 'release';
    await apply(
      cluster,
      workflowManifest(ns, wf, {
        pool: 'agents',
        tasks: [
          { name: 'draft', handler: 'say', input: { num: 21 } },
          {
            name: 'review',
            dependsOn: ['draft'],
            approval: { message: 'publish ${{ tasks.draft.output.doubled }} copies?' },
          },
          { name: 'publish', handler: 'once', dependsOn: ['review'] },
        ],
      }),
    );
    await until(
      'review waits',
      () => taskOf(wf, 'review'),
      (t) => t?.phase === 'Waiting',
      30_000,
    );
    const pending = await alice.get<Json>(approvalPath(wf));
    expect(pending.items).toEqual([{ task: 'review', message: 'publish 42 copies?' }]);
    // Waiting holds nothing: no slot of the pool's agent is taken, and the next task has not started.
    const agents = await alice.get<AgentList>(dataPath(ns, 'agents', 'agents'));
    expect(agents.items.map((a) => a.inFlight)).toEqual([0]);
    expect((await taskOf(wf, 'publish'))?.phase).toBe('Pending');
    const held = await until(
      'the status says what it waits for',
      () => getWorkflow(cluster, ns, wf),
      (w) => String(w.status?.message).includes('task review waits for approval: publish 42 copies?'),
      15_000,
    );
    expect(held.status.phase).toBe('Running');
    await until(
      'an ApprovalRequested Event',
      () => eventsOf(wf),
      (list) => list.some((e) => e.reason === 'ApprovalRequested' && String(e.message).includes('agentflow approve')),
      15_000,
    );

    const approved = await cliRun(aliceKubeconfig, ['approve', wf, 'review', '-m', 'LGTM']);
    expect(approved.stderr).toBe('');
    expect(approved.stdout).toBe(`task review of workflow ${wf} approved by alice\n`);
    expect(approved.code).toBe(0);
    const done = await until(`${wf} ends`, () => getWorkflow(cluster, ns, wf), phaseIs('Succeeded', 'Failed'), 30_000);
    expect(done.status.phase).toBe('Succeeded');
    const review = await taskOf(wf, 'review');
    expect(review).toMatchObject({ phase: 'Succeeded', message: 'approved by alice: LGTM' });
    expect(review?.output).toMatchObject({ approved: true, user: 'alice', message: 'LGTM' });
    const verified = await alice.get<AuditVerification>(dataPath(ns, 'audit', wf));
    expect(verified.ok).toBe(true);
    const entries = await until(
      'the audit log flushed',
      () => new AuditLog(store, ns, wf).list(),
      (l) => l.some((e) => e.type === 'WorkflowSucceeded'),
    );
    const types = entries.map((e) => e.type);
    expect(types).toContain('ApprovalRequested');
    const entry = entries.find((e) => e.type === 'TaskApproved');
    expect(entry).toMatchObject({ task: 'review', detail: { user: 'alice', message: 'LGTM' } });
    // The decision came before the next task was queued.
    expect(types.indexOf('TaskApproved')).toBeLessThan(
      entries.findIndex((e) => e.type === 'TaskQueued' && e.task === 'publish'),
    );
    // Decided once: a second decision is refused, naming the task's phase.
    const again = await refusal(decide(alice, wf, { task: 'review', decision: 'Reject' }));
    expect(again.status).toBe(409);
  });

  it('fails the task and the run with the reviewer’s message on reject', async () => {
    const wf = 'rejected';
    await apply(
      cluster,
      workflowManifest(ns, wf, {
        pool: 'agents',
        tasks: [
          { name: 'review', approval: { message: 'ship it?' } },
          { name: 'ship', handler: 'once', dependsOn: ['review'] },
        ],
      }),
    );
    await until(
      'review waits',
      () => taskOf(wf, 'review'),
      (t) => t?.phase === 'Waiting',
      30_000,
    );
    const r = await decide(alice, wf, { task: 'review', decision: 'Reject', message: 'too risky this week' });
    expect(r).toMatchObject({ kind: 'ApprovalResult', decision: 'Reject', user: 'alice' });
    const done = await until(`${wf} ends`, () => getWorkflow(cluster, ns, wf), phaseIs('Succeeded', 'Failed'), 30_000);
    expect(done.status.phase).toBe('Failed');
    const failed = done.status.conditions.find((c: Json) => c.type === 'Failed');
    expect(failed).toMatchObject({ status: 'True', reason: 'ApprovalRejected' });
    expect(failed.message).toContain('rejected by alice: too risky this week');
    expect(await taskOf(wf, 'review')).toMatchObject({
      phase: 'Failed',
      message: 'rejected by alice: too risky this week',
    });
    expect((await taskOf(wf, 'ship'))?.phase).toBe('Cancelled');
  });

  it('decides on timeout as the spec says: Reject fails the run, Approve lets it go on', async () => {
    for (const [wf, onTimeout] of [
      ['timeout-reject', 'Reject'],
      ['timeout-approve', 'Approve'],
    ] as const) {
      await apply(
        cluster,
        workflowManifest(ns, wf, {
          pool: 'agents',
          tasks: [
            { name: 'review', approval: { message: 'anyone?', timeoutSeconds: 2, onTimeout } },
            { name: 'after', handler: 'once', dependsOn: ['review'] },
          ],
        }),
      );
    }
    const rejected = await until(
      'timeout-reject ends',
      () => getWorkflow(cluster, ns, 'timeout-reject'),
      phaseIs('Succeeded', 'Failed'),
      30_000,
    );
    expect(rejected.status.phase).toBe('Failed');
    expect(rejected.status.conditions.find((c: Json) => c.type === 'Failed')).toMatchObject({
      reason: 'ApprovalTimeout',
    });
    expect((await taskOf('timeout-reject', 'review'))?.message).toBe('rejected on timeout: no decision within 2s');
    const approved = await until(
      'timeout-approve ends',
      () => getWorkflow(cluster, ns, 'timeout-approve'),
      phaseIs('Succeeded', 'Failed'),
      30_000,
    );
    expect(approved.status.phase).toBe('Succeeded');
    const review = await taskOf('timeout-approve', 'review');
    expect(review?.output).toMatchObject({ approved: true, timedOut: true });
    // It waited its 2 s, not less.
    const started = Date.parse(String(review?.startedAt));
    const finished = Date.parse(String(review?.finishedAt));
    expect(finished - started).toBeGreaterThanOrEqual(1_000);
  });

  it('lets only users with update on workflows/approval, and in the approvers list, decide', async () => {
    const wf = 'guarded';
    await apply(
      cluster,
      workflowManifest(ns, wf, {
        pool: 'agents',
        tasks: [{ name: 'review', approval: { approvers: { users: ['alice'], groups: ['release-managers'] } } }],
      }),
    );
    await until(
      'review waits',
      () => taskOf(wf, 'review'),
      (t) => t?.phase === 'Waiting',
      30_000,
    );
    const noRbac = await refusal(decide(bob, wf, { task: 'review', decision: 'Approve' }));
    expect(noRbac.status).toBe(403);
    expect(noRbac.message).toContain(
      'User "bob" cannot update resource "workflows/approval" in API group "agentflow.io"',
    );
    const notListed = await refusal(decide(carol, wf, { task: 'review', decision: 'Approve' }));
    expect(notListed.status).toBe(403);
    expect(notListed.message).toContain(
      'user "carol" is not among the approvers of task "review" (users alice; groups release-managers)',
    );
    const byCli = await cliRun(bobKubeconfig, ['approve', wf, 'review']);
    expect(byCli.code).toBe(1);
    expect(byCli.stderr).toContain('cannot update resource "workflows/approval"');
    // Bad bodies name the field; unknown tasks and tasks that are not approvals are told apart.
    const badDecision = await refusal(decide(alice, wf, { task: 'review', decision: 'Maybe' }));
    expect(badDecision).toMatchObject({ status: 400 });
    expect(badDecision.message).toContain('body.decision: must be one of Approve, Reject, got "Maybe"');
    const extra = await refusal(decide(alice, wf, { task: 'review', decision: 'Approve', by: 'root' }));
    expect(extra.message).toContain('body: unknown field(s) by');
    const ghost = await refusal(decide(alice, wf, { task: 'ghost', decision: 'Approve' }));
    expect(ghost).toMatchObject({ status: 404 });
    const notApproval = await refusal(decide(alice, 'release', { task: 'draft', decision: 'Approve' }));
    expect(notApproval.status).toBe(409); // release has finished: it waits for no decision
    expect((await taskOf(wf, 'review'))?.phase).toBe('Waiting');
    await decide(alice, wf, { task: 'review', decision: 'Approve' });
    const done = await until(`${wf} ends`, () => getWorkflow(cluster, ns, wf), phaseIs('Succeeded', 'Failed'), 30_000);
    expect(done.status.phase).toBe('Succeeded');
  });

  it('decides in the web UI: the pane of a waiting task asks, approves, and a user without RBAC is told why', async () => {
    const wf = 'ui-review';
    await apply(
      cluster,
      workflowManifest(ns, wf, {
        pool: 'agents',
        tasks: [
          { name: 'review', approval: { message: 'deploy to production?' } },
          { name: 'deploy', handler: 'once', dependsOn: ['review'] },
        ],
      }),
    );
    await until(
      'review waits',
      () => taskOf(wf, 'review'),
      (t) => t?.phase === 'Waiting',
      30_000,
    );
    const openPane = async (kubeconfig: string) => {
      const proxy = await proxyFor(kubeconfig);
      const page = await newPage();
      await page.goto(proxy.url);
      await page.locator(`[data-testid="workflow-row"][data-workflow="${wf}"] [data-testid="workflow-link"]`).click();
      await node(page, 'review', 'Waiting').waitFor({ timeout: SHOWN_MS });
      await page.locator('[data-testid="dag-node"][data-task="review"]').click();
      const box = page.locator('[data-testid="task-pane"][data-task="review"] [data-testid="approval"]');
      await box.waitFor({ timeout: SHOWN_MS });
      return { page, box };
    };
    // carol may read but is no approver here: bind her the reader role, then watch her refusal.
    await cluster.client.post(`/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/rolebindings`, {
      metadata: { name: 'carol-reads' },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'workflow-reader' },
      subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: 'carol' }],
    });
    await cluster.client.delete(
      `/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/rolebindings/carol-agentflow-approver`,
    );
    const asCarol = await openPane(carolKubeconfig);
    await asCarol.box.locator('[data-testid="approve"]').click();
    const refused = asCarol.box.locator('[data-testid="error"]');
    await refused.waitFor({ timeout: SHOWN_MS });
    expect(await refused.getAttribute('data-status')).toBe('403');
    expect(await refused.textContent()).toContain('workflows/approval');
    expect((await taskOf(wf, 'review'))?.phase).toBe('Waiting');

    const asAlice = await openPane(aliceKubeconfig);
    expect(await asAlice.box.locator('[data-testid="approval-message"]').textContent()).toBe('deploy to production?');
    await asAlice.box.locator('[data-testid="approval-why"]').fill('checked the canary');
    await asAlice.box.locator('[data-testid="approve"]').click();
    // The box goes once the task moves on (it may go before the answer shows): the decision stays in its message.
    await asAlice.page
      .locator('[data-testid="task-pane"][data-task="review"] [data-testid="task-message"]')
      .filter({ hasText: 'approved by alice: checked the canary' })
      .waitFor({ timeout: SHOWN_MS });
    await node(asAlice.page, 'review', 'Succeeded').waitFor({ timeout: SHOWN_MS });
    await node(asAlice.page, 'deploy', 'Succeeded').waitFor({ timeout: SHOWN_MS });
    expect(await taskOf(wf, 'review')).toMatchObject({ message: 'approved by alice: checked the canary' });
    await asAlice.page.screenshot({ path: 'test-results/ui-approval.png' });
    // The proxy forwards that one write and no other.
    const other = await asAlice.page.evaluate(
      async (path) => {
        const r = await fetch(path, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json', 'X-Agentflow-UI': 'decide' },
          body: '{}',
        });
        return r.status;
      },
      dataPath(ns, 'signal', wf),
    );
    expect(other).toBe(403);
    const noHeader = await asAlice.page.evaluate(
      async (path) => {
        const r = await fetch(path, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: '{"task":"review","decision":"Approve"}',
        });
        return r.status;
      },
      dataPath(ns, 'approval', wf),
    );
    expect(noHeader).toBe(403);
  });

  it('holds a handler’s ctx.waitForApproval without a slot, then runs it again with the decision', async () => {
    const wf = 'asks';
    await apply(
      cluster,
      workflowManifest(ns, wf, {
        pool: 'agents',
        retryPolicy: { maxAttempts: 1 },
        tasks: [
          { name: 'accept', handler: 'publish', input: { key: 'accept' } },
          { name: 'decline', handler: 'publish', input: { key: 'decline' } },
        ],
      }),
    );
    for (const task of ['accept', 'decline']) {
      await until(
        `${task} waits`,
        () => taskOf(wf, task),
        (t) => t?.phase === 'Waiting',
        30_000,
      );
    }
    const pending = await alice.get<Json>(approvalPath(wf));
    expect(pending.items.map((a: Json) => [a.task, a.message]).sort()).toEqual([
      ['accept', 'publish accept?'],
      ['decline', 'publish decline?'],
    ]);
    const agents = await alice.get<AgentList>(dataPath(ns, 'agents', 'agents'));
    expect(
      agents.items.map((a) => a.inFlight),
      'a waiting handler holds no slot',
    ).toEqual([0]);
    expect((await taskOf(wf, 'accept'))?.attempts.map((a) => a.ok)).toEqual([false]);

    await decide(alice, wf, { task: 'accept', decision: 'Approve', message: 'go' });
    await until(
      'accept ran again',
      () => taskOf(wf, 'accept'),
      (t) => t?.phase === 'Succeeded',
      30_000,
    );
    // Then the other: a rejected wait fails its task, and so the run.
    await decide(alice, wf, { task: 'decline', decision: 'Reject', message: 'wrong audience' });
    const done = await until(`${wf} ends`, () => getWorkflow(cluster, ns, wf), phaseIs('Succeeded', 'Failed'), 30_000);
    // The approved one ran again (maxAttempts 1: the wait was not counted as a failure) and got the decision.
    const accepted = await taskOf(wf, 'accept');
    expect(accepted?.attempt).toBe(2);
    expect(accepted?.output).toMatchObject({
      runs: 2,
      decision: { ordinal: 0, approved: true, user: 'alice', message: 'go' },
    });
    // The rejected one ran again too, and its wait threw ApprovalRejectedError: failed, not retried.
    expect(done.status.phase).toBe('Failed');
    const declined = await taskOf(wf, 'decline');
    expect(declined?.phase).toBe('Failed');
    expect(declined?.message).toContain('rejected by alice: wrong audience');
    expect(declined?.attempt).toBe(2);
  });

  it('streams a handler’s ctx.stream output to a follower of log?stream=true while it runs, in order', async () => {
    const wf = 'tokens';
    await apply(
      cluster,
      workflowManifest(ns, wf, {
        pool: 'agents',
        tasks: [{ name: 'gen', handler: 'streamer', input: { chunks: 40, gapMs: 25 } }],
      }),
    );
    await until(
      'gen runs',
      () => taskOf(wf, 'gen'),
      (t) => t?.phase === 'Running',
      30_000,
    );
    let text = '';
    const lags: number[] = [];
    const followed = alice.stream(`${dataPath(ns, 'logs', wf)}?task=gen&follow=true&stream=true`, (chunk) => {
      text += chunk;
      for (const m of chunk.matchAll(/<\d+@(\d+)>/g)) lags.push(Date.now() - Number(m[1]));
    });
    await until(
      'chunks stream in',
      async () => text,
      (t) => (t.match(/</g) ?? []).length >= 5,
      15_000,
    );
    expect((await taskOf(wf, 'gen'))?.phase, 'live: the handler still runs').toBe('Running');
    expect(await followed).toBe(200);
    const ids = [...text.matchAll(/<(\d+)@/g)].map((m) => Number(m[1]));
    expect(ids).toEqual(Array.from({ length: 40 }, (_, i) => i));
    expect(text).toMatch(/^(<\d+@\d+>)+$/); // exactly as streamed: nothing added between chunks
    const live = lags.slice(ids.length - lags.length).sort((a, b) => a - b);
    const p50 = live[Math.floor(live.length / 2)] ?? 0;
    console.log(`stream through the API server: ${lags.length} chunks, lag p50 ${p50} ms, max ${live.at(-1)} ms`);
  });

  it('keeps a waiting approval (its deadline too) and a sent signal across a leader change', async () => {
    const wf = 'handover';
    await apply(
      cluster,
      workflowManifest(ns, wf, {
        pool: 'agents',
        tasks: [
          { name: 'gate', approval: { message: 'go on?', timeoutSeconds: 600 } },
          { name: 'listen', handler: 'listen', dependsOn: ['gate'], input: { signal: 'handover', count: 1 } },
        ],
      }),
    );
    await until(
      'gate waits',
      () => taskOf(wf, 'gate'),
      (t) => t?.phase === 'Waiting',
      30_000,
    );
    const before = (await alice.get<Json>(approvalPath(wf))).items;
    await signal(alice, wf, 'handover', { sent: 'before the leader changed' });
    // The leader goes; a new operator process leads and serves the data API from etcd's records.
    operator.kill('SIGTERM');
    await operator.exited;
    operator = new OperatorProcess(cluster, { ...operatorOptions, name: 'op-dapi-2' });
    await operator.waitFor('Operator is leading', 60_000);
    const after = await until(
      'the new leader lists the approval again',
      () => alice.get<Json>(approvalPath(wf)).catch(() => ({ items: [] })),
      (l) => l.items.length === 1,
      60_000,
    );
    expect(after.items).toEqual(before);
    await until(
      'the new leader takes the decision',
      () => refusal(decide(alice, wf, { task: 'gate', decision: 'Approve' })),
      (r) => r.status === 200,
      60_000,
    );
    const done = await until(`${wf} ends`, () => getWorkflow(cluster, ns, wf), phaseIs('Succeeded', 'Failed'), 60_000);
    expect(done.status.phase).toBe('Succeeded');
    expect((await taskOf(wf, 'listen'))?.output).toMatchObject({
      got: [{ data: { sent: 'before the leader changed' }, sentBy: 'alice' }],
    });
  });

  it('delivers each signal once, sent before or after the handler waits; a retry gets its signal back', async () => {
    const wf = 'signals';
    await apply(
      cluster,
      workflowManifest(ns, wf, {
        pool: 'agents',
        retryPolicy: { maxAttempts: 2, backoff: { initialSeconds: 0.2 } },
        tasks: [
          // The gate holds the listener back so the first signal is surely sent before it waits.
          { name: 'gate', approval: {} },
          {
            name: 'listen',
            handler: 'listen',
            dependsOn: ['gate'],
            input: { signal: 'feedback', count: 2, failFirst: true },
          },
          {
            name: 'late',
            handler: 'listen',
            dependsOn: ['listen'],
            input: { signal: 'feedback', count: 1, timeoutMs: 1500 },
          },
          { name: 'forge', handler: 'forge', dependsOn: ['gate'] },
        ],
      }),
    );
    await until(
      'gate waits',
      () => taskOf(wf, 'gate'),
      (t) => t?.phase === 'Waiting',
      30_000,
    );
    const sent = await cliRun(aliceKubeconfig, ['signal', wf, 'feedback', '--data', '{"n": 1}']);
    expect(sent.stderr).toBe('');
    expect(sent.stdout).toMatch(new RegExp(`^signal feedback sent to workflow ${wf} \\(id [0-9a-z-]+\\)\n$`));
    await decide(alice, wf, { task: 'gate', decision: 'Approve' });
    // Attempt 1 takes signal 1 and fails; attempt 2 takes it again, then waits for the second.
    await until(
      'listen waits for its second signal',
      () => taskOf(wf, 'listen'),
      (t) => t?.attempt === 2 && String(t?.progress).includes('waiting for signal 1'),
      30_000,
    );
    await signal(alice, wf, 'feedback', { n: 2 });
    const done = await until(`${wf} ends`, () => getWorkflow(cluster, ns, wf), phaseIs('Succeeded', 'Failed'), 30_000);
    expect(done.status.phase).toBe('Succeeded');
    const listen = (await taskOf(wf, 'listen'))?.output as Json;
    expect(listen.attempt).toBe(2);
    expect(listen.got.map((g: Json) => g.data)).toEqual([{ n: 1 }, { n: 2 }]);
    expect(listen.got.map((g: Json) => g.sentBy)).toEqual(['alice', 'alice']);
    // Each signal went to one task only: the later listener found none left.
    expect((await taskOf(wf, 'late'))?.output).toEqual({ attempt: 1, got: ['timeout'] });
    // An agent cannot write a signal itself.
    const forge = (await taskOf(wf, 'forge'))?.output as Json;
    expect(forge.refused).toBe('StatePermissionError');
    expect(forge.message).toContain('only agentflow writes');
    const list = await alice.get<Json>(dataPath(ns, 'signal', wf));
    expect(list.items.map((x: Json) => [x.name, x.data, x.takenBy])).toEqual([
      ['feedback', { n: 1 }, 'listen'],
      ['feedback', { n: 2 }, 'listen'],
    ]);
    const entries = await until(
      'the audit log flushed',
      () => new AuditLog(store, ns, wf).list(),
      (l) => l.some((e) => e.type === 'WorkflowSucceeded'),
    );
    expect(entries.filter((e) => e.type === 'SignalSent').map((e) => e.detail?.user)).toEqual(['alice', 'alice']);
    // Users (here one who may update the workflow) cannot forge one through the state API either,
    // nor signal a finished workflow.
    const put = await refusal(
      cluster.client.request('PUT', `${dataPath(ns, 'workflowState', wf)}?key=agentflow:signal/feedback/x`, 1),
    );
    expect(put.status).toBe(400);
    expect(put.message).toContain('only agentflow writes');
    const finished = await refusal(signal(alice, wf, 'feedback', null));
    expect(finished.status).toBe(409);
    const badName = await refusal(signal(alice, 'release', 'no spaces', null));
    expect(badName.status).toBe(400);
    expect(badName.message).toContain('body.name: "no spaces" is not a signal name');
    const noRbac = await refusal(signal(bob, wf, 'feedback', null));
    expect(noRbac.message).toContain('cannot update resource "workflows/signal"');
  });
});

// The namespace's memoization cache through the API server: entries seeded into the operator's etcd
// prefix as the engine writes them, read with `list workflows`, cleared only with `delete workflows`
// (the shipped ClusterRole lets the API server pass `list` and `deletecollection` on memo first).
describe('memo cache', () => {
  const memoPath = () => dataNamespaceMemoPath(ns);
  const LONG_KEY = `summarize:${'https://example.com/'.repeat(5)}`;
  let frank: RestClient;
  const refusal = (p: Promise<unknown>) =>
    p.then(
      () => ({ status: 200, message: '' }),
      (e: { status: number; message: string }) => e,
    );
  const cli = (kubeconfig: string, args: string[]) =>
    new Promise<{ code: number | null; stdout: string; stderr: string }>((res) => {
      execFile(
        process.execPath,
        [resolve('bin/agentflow.mjs'), '-n', ns, ...args],
        { env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', KUBECONFIG: kubeconfig } },
        (err, stdout, stderr) => res({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
      );
    });

  beforeAll(async () => {
    // frank may list and delete workflows: what clearing takes.
    await cluster.client.post(`/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/roles`, {
      metadata: { name: 'workflow-deleter' },
      rules: [{ apiGroups: ['agentflow.io'], resources: ['workflows'], verbs: ['get', 'list', 'delete'] }],
    });
    await cluster.client.post(`/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/rolebindings`, {
      metadata: { name: 'frank-deletes' },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'workflow-deleter' },
      subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: 'frank' }],
    });
    frank = RestClient.fromKubeconfig(cluster.userKubeconfig('frank'));
    const memo = new MemoCache(store);
    const now = Date.now();
    for (const [i, key] of ['summary-a', 'summary-b', LONG_KEY].entries()) {
      await memo.put(ns, {
        key,
        output: { summary: `text ${i}` },
        createdAt: new Date(now - (3 - i) * 1000).toISOString(),
        workflow: 'report',
        task: 'summarize',
        attempt: i + 1,
        agentId: 'agent-0',
      });
    }
  });
  afterAll(() => frank?.close());

  it('lists the memo entries newest first without outputs, and one by key with its output', async () => {
    const list = await alice.get<MemoList>(memoPath());
    expect(list).toMatchObject({ kind: 'MemoList', metadata: { namespace: ns } });
    expect(list.items.map((i) => [i.key, i.workflow, i.task, i.attempt, i.agentId])).toEqual([
      [LONG_KEY, 'report', 'summarize', 3, 'agent-0'],
      ['summary-b', 'report', 'summarize', 2, 'agent-0'],
      ['summary-a', 'report', 'summarize', 1, 'agent-0'],
    ]);
    for (const i of list.items) {
      expect(i).not.toHaveProperty('output');
      expect(i.bytes).toBeGreaterThan(50);
    }
    const one = await alice.get<MemoEntryView>(`${memoPath()}?key=${encodeURIComponent(LONG_KEY)}`);
    expect(one).toMatchObject({ kind: 'MemoEntry', key: LONG_KEY, attempt: 3, output: { summary: 'text 2' } });
    const missing = await refusal(alice.get(`${memoPath()}?key=nothing-here`));
    expect(missing.status).toBe(404);
    expect(missing.message).toContain(`no memoized output for key "nothing-here" in namespace "${ns}"`);
    const tooLong = await refusal(alice.get(`${memoPath()}?key=${'k'.repeat(1025)}`));
    expect(tooLong.status).toBe(400);
    expect(tooLong.message).toContain('query parameter key: 1025 characters, more than a memoization key has (1024)');
    // bob may not list workflows in ns: he sees none of its memo entries.
    const bobReads = await refusal(bob.get(memoPath()));
    expect(bobReads.status).toBe(403);
    expect(bobReads.message).toContain('User "bob" cannot list resource "workflows" in API group "agentflow.io"');
    // The CLI's table, with the long key cut to 48 characters.
    const table = await cli(aliceKubeconfig, ['cache', 'list']);
    expect(table.code, table.stderr).toBe(0);
    const rows = table.stdout.trimEnd().split('\n');
    expect(rows[0]?.split(/ +/)).toEqual(['KEY', 'WORKFLOW', 'TASK', 'ATTEMPT', 'AGE', 'SIZE']);
    expect(rows.slice(1).map((r) => r.split(/ {3,}/).slice(0, 4))).toEqual([
      [`${LONG_KEY.slice(0, 47)}…`, 'report', 'summarize', '3'],
      ['summary-b', 'report', 'summarize', '2'],
      ['summary-a', 'report', 'summarize', '1'],
    ]);
  });

  it('refuses clearing memo entries to a user with list only; clears one by key, then all, with delete', async () => {
    const byAlice = await refusal(alice.delete(`${memoPath()}?key=summary-a`));
    expect(byAlice.status).toBe(403);
    expect(byAlice.message).toContain('User "alice" cannot delete resource "workflows" in API group "agentflow.io"');
    const byCli = await cli(aliceKubeconfig, ['cache', 'clear', '--all']);
    expect(byCli.code).toBe(1);
    expect(byCli.stderr).toContain('Error from server (Forbidden)');
    expect((await alice.get<MemoList>(memoPath())).items).toHaveLength(3);

    expect(await frank.delete(`${memoPath()}?key=summary-a`)).toEqual({
      apiVersion: 'data.agentflow.io/v1alpha1',
      kind: 'MemoCleared',
      metadata: { namespace: ns },
      key: 'summary-a',
      deleted: 1,
    });
    expect((await alice.get<MemoList>(memoPath())).items.map((i) => i.key)).toEqual([LONG_KEY, 'summary-b']);
    expect(await new MemoCache(store).get(ns, 'summary-a')).toBeUndefined();
    expect(await frank.delete<MemoCleared>(memoPath())).toMatchObject({ kind: 'MemoCleared', deleted: 2 });
    expect((await alice.get<MemoList>(memoPath())).items).toEqual([]);
    expect(await new MemoCache(store).list(ns)).toEqual([]);
  });
});

describe('the web UI', () => {
  it('is served by the operator through the API server to any authenticated user', async () => {
    const page = await cluster.kubectl(['get', '--raw', `${UI_PATH}/`], { kubeconfig: bobKubeconfig });
    expect(page.code, page.stderr).toBe(0);
    expect(page.stdout).toContain('<div id="app"></div>');
    const script = /src="([^"]+\.js)"/.exec(page.stdout)?.[1] ?? '';
    // Relative, so the API server's proxy leaves it alone (it rewrites absolute links in HTML to its own address).
    expect(script).toMatch(/^main-[A-Z0-9]{8}\.js$/);
    const js = await cluster.kubectl(['get', '--raw', `${UI_PATH}/${script}`], { kubeconfig: bobKubeconfig });
    expect(js.code, js.stderr).toBe(0);
    expect(js.stdout.length).toBeGreaterThan(10_000);
  });

  it('refuses a request to the proxy without its token with 401', async () => {
    const proxy = await proxyFor(aliceKubeconfig);
    const { port } = proxy;
    const get = (path: string, headers: Record<string, string> = {}) =>
      new Promise<{ status: number; cookie: string | undefined }>((ok, fail) => {
        const req = request({ host: '127.0.0.1', port, path, headers }, (res) => {
          res.resume();
          ok({ status: res.statusCode ?? 0, cookie: res.headers['set-cookie']?.[0] });
        });
        req.on('error', fail);
        req.end();
      });
    expect((await get('/')).status).toBe(401);
    expect((await get(`/apis/agentflow.io/v1alpha1/namespaces/${ns}/workflows`)).status).toBe(401);
    expect((await get('/?token=guessed')).status).toBe(401);
    const granted = await get(new URL(proxy.url).pathname + new URL(proxy.url).search);
    expect(granted.status).toBe(303);
    const cookie = granted.cookie?.split(';')[0] ?? '';
    expect((await get(`/apis/agentflow.io/v1alpha1/namespaces/${ns}/workflows`, { Cookie: cookie })).status).toBe(200);
  });

  it('shows the example workflow live: the DAG changes phase, a task shows its output and log', async () => {
    const t0 = Date.now();
    await apply(cluster, { ...example, metadata: { ...example.metadata, namespace: ns } });
    await until(
      'plan runs',
      () => phaseOf(WF, 'plan'),
      (p) => p === 'Running',
      30_000,
    );

    const proxy = await proxyFor(aliceKubeconfig);
    const page = await newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(proxy.url);
    // The list, with the running workflow.
    const row = page.locator(`[data-testid="workflow-row"][data-workflow="${WF}"]`);
    await row.waitFor({ timeout: SHOWN_MS });
    expect(await row.getAttribute('data-phase')).toBe('Running');
    expect(new URL(page.url()).search, 'the token left the address bar').toBe('');
    await page.screenshot({ path: 'test-results/ui-list.png' });
    await page.evaluate(() => {
      (globalThis as unknown as { sameDocument: boolean }).sameDocument = true;
    });

    // The DAG: plan runs, research is a group not expanded yet, write waits.
    await row.locator('[data-testid="workflow-link"]').click();
    await node(page, 'plan', 'Running').waitFor({ timeout: SHOWN_MS });
    await node(page, 'write', 'Pending').waitFor({ timeout: SHOWN_MS });
    const research = page.locator('[data-testid="dag-node"][data-task="research"]');
    expect(await research.getAttribute('data-group')).toBe('true');
    expect(await page.locator('[data-edge="plan->research"]').count()).toBe(1);
    expect(await page.locator('[data-edge="research->write"]').count()).toBe(1);

    // plan's pane: its log followed live.
    await page.locator('[data-testid="dag-node"][data-task="plan"]').click();
    const pane = page.locator('[data-testid="task-pane"][data-task="plan"]');
    const log = pane.locator('[data-testid="task-log"]');
    await log.filter({ hasText: 'plan: waiting for the gate' }).waitFor({ timeout: SHOWN_MS });
    await pane.locator('[data-testid="log-following"]').waitFor({ timeout: SHOWN_MS });
    expect(await pane.locator('[data-testid="task-input"]').textContent()).toContain('warm agent pools');

    // Open plan's gate: without a reload, plan turns Succeeded, research fans out and succeeds, write runs.
    writeFileSync(join(gates, `${WF}.plan`), '');
    const opened = Date.now();
    await node(page, 'plan', 'Succeeded').waitFor({ timeout: SHOWN_MS });
    const shownAfterMs = Date.now() - opened;
    await log.filter({ hasText: 'plan: gate opened' }).waitFor({ timeout: SHOWN_MS });
    expect(await log.textContent()).toContain('INFO planned {"questions":3}');
    await pane
      .locator('[data-testid="task-output"]')
      .filter({ hasText: 'warm agent pools: why it matters' })
      .waitFor({ timeout: SHOWN_MS });
    const attempt = pane.locator('[data-testid="attempt-row"][data-attempt="1"]');
    await attempt.waitFor({ timeout: SHOWN_MS });
    expect(await attempt.getAttribute('data-ok')).toBe('true');
    const agentPod = await podOf(example.spec.pool);
    expect(await pane.locator('[data-testid="task-agent"]').textContent()).toBe(agentPod.metadata.name);
    expect(await pane.locator('[data-testid="task-node"]').textContent()).toBe(agentPod.spec.nodeName);
    expect(await attempt.textContent()).toContain(agentPod.metadata.name);

    await node(page, 'research', 'Succeeded').waitFor({ timeout: SHOWN_MS });
    expect(await research.getAttribute('data-count')).toBe('3');
    expect(await research.locator('[data-testid="group-counts"]').textContent()).toBe('3 Succeeded');
    await node(page, 'write', 'Running').waitFor({ timeout: SHOWN_MS });

    // One instance of the group: its own output and log.
    await research.locator('[data-testid="instance"][data-task="research.1"]').click();
    const one = page.locator('[data-testid="task-pane"][data-task="research.1"]');
    await one
      .locator('[data-testid="task-output"]')
      .filter({ hasText: '"question": "warm agent pools: why it matters"' })
      .waitFor({ timeout: SHOWN_MS });
    await one
      .locator('[data-testid="task-log"]')
      .filter({ hasText: 'researching: warm agent pools: why it matters' })
      .waitFor({ timeout: SHOWN_MS });

    // write runs, its log followed.
    await page.locator('[data-testid="dag-node"][data-task="write"]').click();
    const writePane = page.locator('[data-testid="task-pane"][data-task="write"]');
    await writePane.locator('[data-testid="task-log"]').filter({ hasText: 'write: waiting for the gate' }).waitFor({
      timeout: SHOWN_MS,
    });
    await writePane.locator('[data-testid="log-following"]').waitFor({ timeout: SHOWN_MS });
    // The screenshot: write running, plan's pane with its output, attempt and log.
    await page.locator('[data-testid="dag-node"][data-task="plan"]').click();
    await log.filter({ hasText: 'plan: gate opened' }).waitFor({ timeout: SHOWN_MS });
    await attempt.waitFor({ timeout: SHOWN_MS });
    await page.screenshot({ path: SCREENSHOT });

    writeFileSync(join(gates, `${WF}.write`), '');
    await node(page, 'write', 'Succeeded').waitFor({ timeout: SHOWN_MS });
    await page.locator('[data-testid="dag-node"][data-task="write"]').click();
    await page.locator('[data-testid="workflow-header"][data-phase="Succeeded"]').waitFor({ timeout: SHOWN_MS });
    await writePane.locator('[data-testid="task-log"]').filter({ hasText: 'write: gate opened' }).waitFor({
      timeout: SHOWN_MS,
    });
    await writePane.locator('[data-testid="task-output"]').filter({ hasText: 'Report: warm agent pools' }).waitFor({
      timeout: SHOWN_MS,
    });
    expect(await page.evaluate(() => (globalThis as unknown as { sameDocument?: boolean }).sameDocument)).toBe(true);

    // Back on the list, the workflow has Succeeded there too.
    await page.locator('[data-testid="nav-workflows"]').click();
    await page
      .locator(`[data-testid="workflow-row"][data-workflow="${WF}"][data-phase="Succeeded"]`)
      .waitFor({ timeout: SHOWN_MS });
    expect(errors).toEqual([]);
    console.log(
      `ui: plan's Succeeded shown ${shownAfterMs} ms after its gate opened; the run took ${Date.now() - t0} ms`,
    );
    await page.context().close();
  }, 120_000);

  it('shows a pool with its agents, slots and work in flight', async () => {
    // A second run of the example, held in plan: one slot of the agent is in use.
    const held = `${WF}-held`;
    await apply(cluster, { ...example, metadata: { name: held, namespace: ns } });
    await until(
      'plan runs',
      () => phaseOf(held, 'plan'),
      (p) => p === 'Running',
      30_000,
    );
    const proxy = await proxyFor(aliceKubeconfig);
    const page = await newPage();
    await page.goto(proxy.url);
    await page.locator('[data-testid="nav-pools"]').click();
    const card = page.locator(`[data-testid="pool"][data-pool="${example.spec.pool}"]`);
    const busy = card.locator('[data-testid="agent-row"][data-inflight="1"]');
    await busy.waitFor({ timeout: SHOWN_MS });
    expect(await card.locator('[data-testid="pool-in-use"]').textContent()).toBe('1');
    expect((await busy.locator('td').allTextContents()).slice(2, 5)).toEqual(['8', '1', '7']);
    // The run ends: the slot is free again, without a reload.
    writeFileSync(join(gates, `${held}.plan`), '');
    writeFileSync(join(gates, `${held}.write`), '');
    const agent = card.locator('[data-testid="agent-row"][data-inflight="0"]');
    await agent.waitFor({ timeout: SHOWN_MS });
    expect(await agent.count()).toBe(1);
    const agentPod = await podOf(example.spec.pool);
    expect(await agent.getAttribute('data-agent')).toBe(agentPod.metadata.name);
    expect(await agent.getAttribute('data-draining')).toBe('false');
    const cells = await agent.locator('td').allTextContents();
    // Agent, node, slots, in flight, free, draining, handlers.
    expect(cells).toEqual([
      agentPod.metadata.name,
      agentPod.spec.nodeName,
      '8',
      '0',
      '8',
      'no',
      'plan, research, write',
    ]);
    await page.screenshot({ path: 'test-results/ui-pools.png' });
    await page.context().close();
  });

  it('shows a user without RBAC no workflow, and says why', async () => {
    const proxy = await proxyFor(bobKubeconfig);
    const page = await newPage();
    await page.goto(proxy.url);
    const error = page.locator('[data-testid="error"]');
    await error.waitFor({ timeout: SHOWN_MS });
    expect(await error.getAttribute('data-status')).toBe('403');
    expect(await error.textContent()).toContain(`You cannot read workflows in namespace ${ns}.`);
    expect(await error.textContent()).toContain('User "bob" cannot list resource "workflows"');
    expect(await page.locator('[data-testid="workflow-row"]').count()).toBe(0);
    await page.screenshot({ path: 'test-results/ui-forbidden.png' });
    // Nor by its address: no DAG, the same refusal.
    await page.goto(`${new URL(proxy.url).origin}/#/ns/${ns}/workflows/${WF}`);
    await page.locator('[data-testid="error"][data-status="403"]').waitFor({ timeout: SHOWN_MS });
    expect(await page.locator('[data-testid="dag-node"]').count()).toBe(0);
    expect(await page.locator('[data-testid="workflow-header"]').count()).toBe(0);
    await page.context().close();
  });
});
