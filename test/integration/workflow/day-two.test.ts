import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rerunName } from '../../../src/operator/workflow/controller.ts';
import { isClaimEntry, type StateStore } from '../../../src/state/index.ts';
import type { ClusterHandle } from '../../cluster/cluster-handle.ts';
import { freePort } from '../../cluster/ports.ts';
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
import { fixturePool, getWorkflow, type Json, phaseIs, readHandlerLog, workflowManifest } from './helpers.ts';

// Day-two operation on the local control plane (real operator, agents in pool
// pods, etcd): a Workflow applied before its AgentPool waits and then runs; a
// handler no agent serves is named on the Workflow and the pool and fails the
// run after the waiting deadline; a Failed run retried re-runs only what
// failed (counted in etcd); `kubectl wait --for=condition=Succeeded` tells
// success from failure; edits to a finished run are reported; a rerun makes a
// fresh copy; progress and the latest message show in `kubectl get`.

let cluster: ClusterHandle;
let ns: string;
let operator: OperatorProcess;
let store: StateStore;
const prefix = `/${uniqueName('d2')}`;
const group = uniqueName('g');
let handlerLog: string;
const fixture = resolve('test/fixtures/agent/day-two-handlers.mjs');
/** The operator's --waiting-timeout in this file (seconds). */
const WAITING_TIMEOUT = 8;

function agentPool(name: string, o: { handlers?: string[] } = {}): Json {
  const m = fixturePool(ns, name, { group, replicas: 1, handlersModule: fixture, handlerLog });
  if (o.handlers) m.spec.agent.handlers = o.handlers;
  return m;
}

const workflow = (name: string, spec: Json): Json => workflowManifest(ns, name, spec);
const getWf = (name: string) => getWorkflow(cluster, ns, name);
const condition = (w: Json, type: string): Json | undefined => w.status?.conditions?.find((c: Json) => c.type === type);
const handlerLines = (): Json[] => readHandlerLog(handlerLog);
const runsOf = (task: string) => handlerLines().filter((l) => l.task === task);
const events = async (name: string): Promise<Json[]> =>
  (await cluster.client.get<{ items: Json[] }>(`/api/v1/namespaces/${ns}/events`)).items.filter(
    (e) => e.involvedObject.name === name,
  );
/** Waits for an Event on `name` that `match` accepts (the operator records Events without waiting). */
const eventNamed = (name: string, match: (e: Json) => boolean) =>
  until(
    `an Event on ${name}`,
    () => events(name),
    (es) => es.some(match),
    15_000,
  );
const annotate = async (what: string, kv: string) => {
  const r = await cluster.kubectl(['annotate', '-n', ns, what, kv, '--overwrite']);
  expect(r.code, r.stderr).toBe(0);
};
/** etcd's record of a task's result: {attempt, ok}, or undefined (none, or only a claim of a running attempt). */
async function result(wf: string, task: string): Promise<Json | undefined> {
  const e = await store.get(`${prefix}/results/${ns}/${wf}/${task}`);
  return e === undefined || isClaimEntry(e) ? undefined : (JSON.parse(e.value) as Json);
}

beforeAll(async () => {
  cluster = testCluster();
  await installCrds(cluster);
  ns = await createNamespace(cluster, 'd2');
  handlerLog = join(cluster.info.dir, `handlers-${ns}.jsonl`);
  await startNodes(cluster, nodes(group, [{ suffix: 'a', cpu: '8', memory: '16Gi' }]));
  store = testStore(prefix);
  operator = new OperatorProcess(cluster, {
    name: 'op-d2',
    namespace: ns,
    prefix,
    election: uniqueName('d2'),
    dispatcherPort: await freePort(),
    waitingTimeout: WAITING_TIMEOUT,
    // Exactly the shipped RBAC: a rerun's copy is created with the operator's own permissions.
    kubeconfig: await operatorKubeconfig(cluster, ns),
  });
  await operator.waitFor('Operator is leading');
  await apply(cluster, agentPool('agents'));
  await until(
    'an agent connected',
    () => pool(cluster, ns, 'agents'),
    (p) => p.status?.connectedAgents === 1,
    60_000,
  );
});

afterAll(async () => {
  operator?.kill('SIGTERM');
  await operator?.exited;
  store?.close();
  await cluster.client.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  await cluster.close();
});

describe('day-two operation', () => {
  it('waits for an AgentPool applied after the Workflow, with a condition and an Event, then runs', async () => {
    await apply(cluster, workflow('early', { pool: 'later', tasks: [{ name: 'a', handler: 'step' }] }));
    const waiting = await until(
      'early waits',
      () => getWf('early'),
      (w) => condition(w, 'Waiting')?.status === 'True',
    );
    expect(waiting.status.phase).toBe('Pending');
    expect(condition(waiting, 'Waiting')).toMatchObject({ reason: 'PoolNotFound' });
    expect(condition(waiting, 'Waiting')?.message).toContain('AgentPool "later" not found');
    expect(condition(waiting, 'Failed')).toMatchObject({ status: 'False' });
    expect(waiting.status.message).toContain('AgentPool "later" not found');
    await eventNamed('early', (e) => e.reason === 'PoolNotFound' && e.type === 'Warning');

    await apply(cluster, agentPool('later'));
    const done = await until('early Succeeded', () => getWf('early'), phaseIs('Succeeded', 'Failed'), 60_000);
    expect(done.status.phase).toBe('Succeeded');
    expect(condition(done, 'Waiting')).toMatchObject({ status: 'False' });
    expect(condition(done, 'Succeeded')).toMatchObject({ status: 'True', reason: 'AllTasksSucceeded' });
  });

  it('names a handler no connected agent serves on the Workflow and the pool, then fails after the deadline', async () => {
    const served = Object.keys(await import(fixture)).sort();
    await apply(cluster, agentPool('listed', { handlers: [...served, 'translate'] }));
    await until(
      'listed connected',
      () => pool(cluster, ns, 'listed'),
      (p) => p.status?.connectedAgents === 1,
      60_000,
    );
    const started = Date.now();
    await apply(
      cluster,
      workflow('unserved', {
        pool: 'listed',
        tasks: [
          { name: 'ok', handler: 'step' },
          { name: 'tr', handler: 'translate', dependsOn: ['ok'] },
        ],
      }),
    );
    const waiting = await until(
      'unserved waits',
      () => getWf('unserved'),
      (w) => condition(w, 'Waiting')?.status === 'True',
      30_000,
    );
    expect(waiting.status.phase).toBe('Running');
    expect(condition(waiting, 'Waiting')).toMatchObject({ reason: 'HandlerNotServed' });
    expect(condition(waiting, 'Waiting')?.message).toBe(
      `waiting: none of the 1 connected agent(s) of AgentPool "listed" registers handler "translate" (they serve ${served.map((h) => `"${h}"`).join(', ')}): 1 queued task(s) of handler "translate" wait`,
    );
    const p = await until(
      'listed flags the handler',
      () => pool(cluster, ns, 'listed'),
      // False as soon as agents connect (listed, not registered); then also named as wanted by the queued task.
      (p) => condition(p, 'HandlersServed')?.message?.includes('queued tasks wait for it') === true,
      30_000,
    );
    expect(condition(p, 'HandlersServed')).toMatchObject({ reason: 'HandlerNotRegistered' });
    expect(condition(p, 'HandlersServed')?.message).toContain(
      'no connected agent registers handler "translate" (listed in spec.agent.handlers) (queued tasks wait for it)',
    );
    const poolEvents = await until(
      'pool events',
      () => events('listed'),
      (es) => es.some((e) => e.reason === 'HandlerNotServed') && es.some((e) => e.reason === 'HandlerNotRegistered'),
      30_000,
    );
    expect(poolEvents.find((e) => e.reason === 'HandlerNotServed')?.message).toContain('Workflow unserved waiting:');
    await eventNamed('unserved', (e) => e.reason === 'HandlerNotServed' && e.type === 'Warning');

    const failed = await until('unserved Failed', () => getWf('unserved'), phaseIs('Failed', 'Succeeded'), 60_000);
    expect(failed.status.phase).toBe('Failed');
    expect(condition(failed, 'Failed')).toMatchObject({ status: 'True', reason: 'HandlerNotServed' });
    expect(condition(failed, 'Failed')?.message).toContain(
      `(waited ${WAITING_TIMEOUT}s, the operator's --waiting-timeout)`,
    );
    // The deadline counts from when the wait was first reported, not from the start.
    expect(Date.now() - started).toBeGreaterThanOrEqual(WAITING_TIMEOUT * 1000);
    expect(failed.status.tasks).toEqual([
      { name: 'ok', phase: 'Succeeded', attempts: 1 },
      expect.objectContaining({ name: 'tr', phase: 'Cancelled' }),
    ]);
  });

  it('retries a Failed run re-running only what failed, keeping every success (attempts counted in etcd)', async () => {
    const flag = join(cluster.info.dir, `gate-${ns}`);
    await apply(
      cluster,
      workflow('gated', {
        pool: 'agents',
        tasks: [
          { name: 'first', handler: 'step' },
          {
            name: 'fan',
            handler: 'gate',
            dependsOn: ['first'],
            forEach: '[0, 1, 2]',
            input: { i: '${{ item }}', unlessFile: `\${{ item == 1 ? "${flag}" : "" }}` },
          },
          { name: 'last', handler: 'step', dependsOn: ['fan'] },
        ],
      }),
    );
    const failed = await until('gated Failed', () => getWf('gated'), phaseIs('Failed', 'Succeeded'), 60_000);
    expect(failed.status.phase).toBe('Failed');
    expect(condition(failed, 'Failed')).toMatchObject({ reason: 'TaskFailed' });
    // kubectl wait tells failure from success: waiting for Succeeded on a failed run times out.
    const waitFailed = await cluster.kubectl([
      'wait',
      '-n',
      ns,
      'awf/gated',
      '--for=condition=Succeeded',
      '--timeout=2s',
    ]);
    expect(waitFailed.code).not.toBe(0);
    const waitFailure = await cluster.kubectl([
      'wait',
      '-n',
      ns,
      'awf/gated',
      '--for=condition=Failed',
      '--timeout=5s',
    ]);
    expect(waitFailure.code, waitFailure.stderr).toBe(0);
    expect(await result('gated', 'fan.1')).toMatchObject({ ok: false, attempt: 1 });
    // The MESSAGE column of -o wide is the latest message: why it failed.
    const wide = await cluster.kubectl(['get', '-n', ns, 'awf/gated', '-o', 'wide', '--no-headers']);
    expect(wide.stdout).toContain('task fan.1 failed (not retryable): gate closed:');

    // fan.0 and fan.2 race fan.1's failure: one still running then is cancelled with the run (and
    // re-run by the retry); one whose success is committed in etcd must never run again.
    // Once no claim is left, no result of this run can still be committed: the snapshot holds.
    await until(
      'no claim left',
      async () => (await store.list(`${prefix}/results/${ns}/gated/`)).entries.filter(isClaimEntry),
      (claims) => claims.length === 0,
    );
    const siblings = ['fan.0', 'fan.2'];
    const before = new Map(siblings.map((t) => [t, runsOf(`gated/${t}`).length]));
    const succeeded = new Set<string>();
    for (const t of siblings) if ((await result('gated', t))?.ok === true) succeeded.add(t);
    writeFileSync(flag, 'open');
    await annotate('awf/gated', 'agentflow.io/retry=one');
    const done = await until(
      'gated retried',
      () => getWf('gated'),
      (w) => w.status?.phase === 'Succeeded',
      60_000,
    );
    expect(done.status.retries).toBe(1);
    expect(done.status.lastRetry).toMatchObject({ token: 'one', started: true });
    expect(condition(done, 'Succeeded')).toMatchObject({ status: 'True' });
    const waitOk = await cluster.kubectl(['wait', '-n', ns, 'awf/gated', '--for=condition=Succeeded', '--timeout=5s']);
    expect(waitOk.code, waitOk.stderr).toBe(0);
    // What succeeded never ran again; the failed item ran once more (attempt 2), then what waited on it.
    expect(runsOf('gated/first')).toHaveLength(1);
    for (const t of siblings) {
      expect(runsOf(`gated/${t}`).length, t).toBe((before.get(t) ?? 0) + (succeeded.has(t) ? 0 : 1));
      expect(await result('gated', t), t).toMatchObject({ ok: true });
    }
    expect(runsOf('gated/fan.1').map((l) => l.attempt)).toEqual([1, 2]);
    expect(runsOf('gated/last').length).toBe(1);
    expect(await result('gated', 'first')).toMatchObject({ ok: true, attempt: 1 });
    expect(await result('gated', 'fan.1')).toMatchObject({ ok: true, attempt: 2 });
    // The failure is kept as attempt history.
    const history = await store.client.get(`${prefix}/attempts/${ns}/gated/fan.1/1`).string();
    expect(JSON.parse(history ?? '{}')).toMatchObject({ ok: false, attempt: 1 });
    await eventNamed('gated', (e) => e.reason === 'Retrying');

    // The same request again changes nothing; a retry of a Succeeded run is refused with a reason.
    await annotate('awf/gated', 'agentflow.io/retry=two');
    const refused = await until(
      'retry refused',
      () => getWf('gated'),
      (w) => w.status?.lastRetry?.token === 'two',
      30_000,
    );
    expect(refused.status.lastRetry).toMatchObject({
      started: false,
      message: 'the run is Succeeded: only a Failed or Cancelled run can be retried',
    });
    expect(refused.status.retries).toBe(1);
    await eventNamed('gated', (e) => e.reason === 'RetryRefused');
  });

  it('reports an edit to a finished run, refuses to retry it under the edited spec, and re-runs it under a new name', async () => {
    await apply(
      cluster,
      workflow('edited', {
        pool: 'agents',
        tasks: [{ name: 'g', handler: 'gate', input: { unlessFile: '/nonexistent/agentflow' } }],
      }),
    );
    await until('edited Failed', () => getWf('edited'), phaseIs('Failed'), 60_000);
    const patched = await cluster.kubectl([
      'patch',
      '-n',
      ns,
      'awf/edited',
      '--type=json',
      '-p',
      '[{"op":"replace","path":"/spec/tasks/0/handler","value":"step"}]',
    ]);
    expect(patched.code, patched.stderr).toBe(0);
    const reported = await until(
      'edit reported',
      () => getWf('edited'),
      (w) => condition(w, 'SpecApplied')?.status === 'False',
      30_000,
    );
    expect(reported.status.observedGeneration).toBe(reported.metadata.generation);
    expect(condition(reported, 'SpecApplied')?.message).toContain(
      'after the run finished: a finished run does not change',
    );
    await eventNamed('edited', (e) => e.reason === 'SpecChangeIgnored');

    await annotate('awf/edited', 'agentflow.io/retry=r1');
    const refused = await until(
      'retry refused',
      () => getWf('edited'),
      (w) => w.status?.lastRetry?.token === 'r1',
      30_000,
    );
    expect(refused.status.lastRetry.started).toBe(false);
    expect(refused.status.lastRetry.message).toContain('spec changed after the run started');
    expect(refused.status.phase).toBe('Failed');

    await annotate('awf/edited', 'agentflow.io/rerun=x1');
    const asked = await until(
      'rerun made',
      () => getWf('edited'),
      (w) => w.status?.lastRerun?.token === 'x1',
      30_000,
    );
    const copy = asked.status.lastRerun.name as string;
    expect(copy).toMatch(/^edited-[0-9a-f]{5}$/);
    const again = await until('copy Succeeded', () => getWf(copy), phaseIs('Succeeded', 'Failed'), 60_000);
    expect(again.status.phase).toBe('Succeeded');
    expect(again.metadata.annotations['agentflow.io/rerun-of']).toBe('edited');
    expect(again.metadata.annotations['agentflow.io/rerun']).toBeUndefined();
    expect(again.spec.tasks[0].handler).toBe('step');
  });

  it('a rerun whose name is taken by another workflow fails alone, with an Event, and retries stay possible', async () => {
    await apply(cluster, workflow('taken', { pool: 'agents', tasks: [{ name: 'a', handler: 'step' }] }));
    const done = await until('taken Succeeded', () => getWf('taken'), phaseIs('Succeeded'), 60_000);
    const squatter = rerunName('taken', done.metadata.uid, 'x');
    await apply(cluster, workflow(squatter, { pool: 'agents', tasks: [{ name: 'a', handler: 'step' }] }));
    await annotate('awf/taken', 'agentflow.io/rerun=x');
    const failed = await until(
      'RerunFailed',
      () => events('taken'),
      (es) => es.some((e) => e.reason === 'RerunFailed'),
      30_000,
    );
    expect(failed.find((e) => e.reason === 'RerunFailed')?.message).toBe(
      `could not create Workflow ${squatter} to re-run this one: a Workflow named ${squatter} exists and is not a copy of taken`,
    );
    // The workflow is not wedged: a retry request is still answered (refused: it succeeded).
    await annotate('awf/taken', 'agentflow.io/retry=y');
    const answered = await until(
      'retry answered',
      () => getWf('taken'),
      (w) => w.status?.lastRetry?.token === 'y',
    );
    expect(answered.status.lastRetry.started).toBe(false);
    expect(answered.status.lastRerun).toBeUndefined();
  });

  it('retries a Cancelled run: its cancel annotation is answered and removed, and the run finishes', async () => {
    await apply(
      cluster,
      workflow('stopped', {
        pool: 'agents',
        tasks: [
          { name: 's', handler: 'slow', input: { ms: 600_000, retryMs: 100 } },
          { name: 'after', handler: 'step', dependsOn: ['s'] },
        ],
      }),
    );
    await until(
      's started',
      async () => runsOf('stopped/s'),
      (l) => l.length === 1,
      30_000,
    );
    await annotate('awf/stopped', 'agentflow.io/cancel=now');
    const cancelled = await until('stopped Cancelled', () => getWf('stopped'), phaseIs('Cancelled'), 30_000);
    expect(condition(cancelled, 'Failed')).toMatchObject({ status: 'True', reason: 'Cancelled' });
    await annotate('awf/stopped', 'agentflow.io/retry=after-cancel');
    const done = await until('stopped retried', () => getWf('stopped'), phaseIs('Succeeded'), 60_000);
    expect(done.metadata.annotations?.['agentflow.io/cancel']).toBeUndefined();
    expect(done.status.lastRetry).toMatchObject({ token: 'after-cancel', started: true, tasks: 2 });
    expect(runsOf('stopped/s').map((l) => l.attempt)).toEqual([1, 2]);
    expect(runsOf('stopped/after')).toHaveLength(1);
  });

  it('shows a running task progress in its status summary and the MESSAGE column', async () => {
    await apply(
      cluster,
      workflow('progressing', { pool: 'agents', tasks: [{ name: 'long', handler: 'slow', input: { ms: 8_000 } }] }),
    );
    const w = await until(
      'progress shown',
      () => getWf('progressing'),
      (w) => w.status?.tasks?.[0]?.message !== undefined,
      30_000,
    );
    expect(w.status.tasks[0]).toMatchObject({ name: 'long', phase: 'Running', message: '40% reading sources' });
    expect(condition(w, 'Running')).toMatchObject({ status: 'True', reason: 'TasksRunning' });
    const wide = await cluster.kubectl(['get', '-n', ns, 'awf/progressing', '-o', 'wide', '--no-headers']);
    expect(wide.stdout).toContain('0/1 tasks done, 1 running, 0 queued');
  });
});
