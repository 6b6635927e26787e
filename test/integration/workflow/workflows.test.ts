import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { DEFAULT_MAX_FOREACH_ITEMS, DEFAULT_MAX_SPAWNED_CHILDREN } from '../../../src/api/workflow.ts';
import { AuditLog, type StateStore } from '../../../src/state/index.ts';
import type { ClusterHandle } from '../../cluster/cluster-handle.ts';
import { freePort } from '../../cluster/ports.ts';
import { testCluster, uniqueName } from '../../cluster/testing.ts';
import {
  apply,
  createNamespace,
  installCrds,
  nodes,
  OperatorProcess,
  pods,
  pool,
  startNodes,
  until,
} from '../operator/helpers.ts';
import { tamperAuditEntry, testStore } from '../state/helpers.ts';
import { fixturePool, getWorkflow, type Json, phaseIs, readHandlerLog, workflowManifest } from './helpers.ts';

// The workflow engine end to end on the local control plane: a real operator
// process (leader, dispatcher, controllers), real agentflow-agent processes
// in pool pods on a process kubelet, real etcd. Workflows run to Succeeded
// with the expected outputs, retry and fail with clear messages, suspend,
// cancel, spawn children, survive an agent's death, fan out to 2,000 tasks
// with a small object, drive the autoscaler, and leave a verifiable audit log;
// a CEL bomb, an oversized forEach and a spawn flood fail alone with their reasons.

let cluster: ClusterHandle;
let ns: string;
let operator: OperatorProcess;
let store: StateStore;
const prefix = `/${uniqueName('wf')}`;
const group = uniqueName('g');
let handlerLog: string;

function agentPool(name: string, o: { replicas: number; capacity?: number; autoscaling?: Json }): Json {
  const m = fixturePool(ns, name, {
    ...o,
    group,
    handlersModule: 'test/fixtures/agent/workflow-handlers.mjs',
    handlerLog,
  });
  if (o.autoscaling) m.spec.autoscaling = o.autoscaling;
  return m;
}

const workflow = (name: string, spec: Json): Json => workflowManifest(ns, name, spec);
const getWf = (name: string) => getWorkflow(cluster, ns, name);
const handlerLines = (): Json[] => readHandlerLog(handlerLog);

beforeAll(async () => {
  cluster = testCluster();
  await installCrds(cluster);
  ns = await createNamespace(cluster, 'wf');
  handlerLog = join(cluster.info.dir, `handlers-${ns}.jsonl`);
  await startNodes(
    cluster,
    nodes(group, [
      { suffix: 'a', cpu: '8', memory: '16Gi' },
      { suffix: 'b', cpu: '8', memory: '16Gi' },
    ]),
  );
  store = testStore(prefix);
  operator = new OperatorProcess(cluster, {
    name: 'op-wf',
    namespace: ns,
    prefix,
    election: uniqueName('wf'),
    dispatcherPort: await freePort(),
  });
  await operator.waitFor('Operator is leading');
  await apply(cluster, agentPool('agents', { replicas: 2, capacity: 16 }));
  await until(
    '2 agents connected',
    () => pool(cluster, ns, 'agents'),
    (p) => p.status?.connectedAgents === 2,
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

describe('workflows', () => {
  it('runs the research example (plan -> forEach research -> write) to Succeeded with the expected outputs and a verifiable audit log', async () => {
    const example = parseYaml(readFileSync('deploy/examples/workflow-research.yaml', 'utf8')) as Json;
    example.metadata.namespace = ns;
    example.spec.pool = 'agents';
    await apply(cluster, example);
    const done = await until(
      'research-report Succeeded',
      () => getWf('research-report'),
      phaseIs('Succeeded', 'Failed'),
      60_000,
    );
    expect(done.status.phase).toBe('Succeeded');
    expect(done.status.progress).toEqual({ total: 5, succeeded: 5, failed: 0, running: 0, queued: 0 });
    expect(done.status.progressSummary).toBe('5/5');
    const report = done.status.outputs.write;
    expect(report.title).toBe('Report: warm agent pools');
    expect(report.answered).toBe(3);
    expect(report.sections.map((s: Json) => s.heading)).toEqual([
      'warm agent pools: what it is',
      'warm agent pools: why it matters',
      'warm agent pools: how it fails',
    ]);
    expect(report.sections[0].body).toBe(
      'warm agent pools: what it is — notes (Research for a report on warm agent pools)',
    );
    expect(done.status.tasks.map((t: Json) => [t.name, t.phase])).toEqual([
      ['plan', 'Succeeded'],
      ['research', 'Succeeded'],
      ['write', 'Succeeded'],
    ]);
    expect(done.status.conditions.find((c: Json) => c.type === 'Succeeded')).toMatchObject({
      status: 'True',
      reason: 'AllTasksSucceeded',
    });
    expect(done.status.conditions.find((c: Json) => c.type === 'Failed')).toMatchObject({ status: 'False' });
    expect(done.status.conditions.some((c: Json) => c.type === 'Completed')).toBe(false);
    const get = await cluster.kubectl(['get', '-n', ns, 'awf', 'research-report', '--no-headers']);
    expect(get.stdout.trim().split(/\s+/).slice(0, 4)).toEqual(['research-report', 'Succeeded', '5/5', 'agents']);

    // Every task event is in a hash-chained log; altering one entry is detected.
    const audit = new AuditLog(store, ns, 'research-report');
    const entries = await until(
      'the audit log flushed',
      () => audit.list(),
      (l) => l.some((e) => e.type === 'WorkflowSucceeded'),
    );
    expect(
      entries
        .filter((e) => e.type === 'TaskSucceeded')
        .map((e) => e.task)
        .sort(),
    ).toEqual(['plan', 'research.0', 'research.1', 'research.2', 'write']);
    expect(await audit.verify()).toMatchObject({ ok: true });
    const victim = entries.find((e) => e.type === 'TaskSucceeded' && e.task === 'research.1');
    await tamperAuditEntry(store, audit.base, victim?.seq ?? 0, (raw) => ({ ...raw, agentId: 'someone-else' }));
    const verdict = await audit.verify();
    expect(verdict.ok).toBe(false);
    expect(verdict.ok ? [] : verdict.problems.map((p) => p.seq)).toContain(victim?.seq);
  });

  it('retries a failing task with back-off, then fails the workflow naming the task and the error', async () => {
    await apply(
      cluster,
      workflow('flaky-ok', {
        pool: 'agents',
        retryPolicy: { maxAttempts: 3, backoff: { initialSeconds: 0.3, factor: 2 } },
        tasks: [{ name: 'try', handler: 'flaky', input: { succeedOn: 2 } }],
      }),
    );
    await apply(
      cluster,
      workflow('flaky-bad', {
        pool: 'agents',
        retryPolicy: { maxAttempts: 3, backoff: { initialSeconds: 0.3, factor: 2 } },
        tasks: [
          { name: 'try', handler: 'flaky' },
          { name: 'after', handler: 'noop', dependsOn: ['try'] },
        ],
      }),
    );
    const ok = await until('flaky-ok done', () => getWf('flaky-ok'), phaseIs('Succeeded', 'Failed'), 60_000);
    expect(ok.status.phase).toBe('Succeeded');
    expect(ok.status.outputs.try).toEqual({ attempt: 2 });
    const bad = await until('flaky-bad Failed', () => getWf('flaky-bad'), phaseIs('Succeeded', 'Failed'), 60_000);
    expect(bad.status.phase).toBe('Failed');
    const failed = bad.status.conditions.find((c: Json) => c.type === 'Failed');
    expect(failed).toMatchObject({ status: 'True', reason: 'TaskFailed' });
    expect(failed.message).toBe('task try failed after 3 attempt(s): flaky failure on attempt 3');
    expect(bad.status.tasks).toEqual([
      { name: 'try', phase: 'Failed', attempts: 3, message: 'failed after 3 attempt(s): flaky failure on attempt 3' },
      { name: 'after', phase: 'Cancelled', attempts: 0 },
    ]);
    // Three attempts, spaced by the back-off (0.3 s, then 0.6 s).
    const attempts = handlerLines().filter((l) => l.handler === 'flaky' && l.task === 'flaky-bad/try');
    expect(attempts.map((l) => l.attempt)).toEqual([1, 2, 3]);
    const [first, second, third] = attempts.map((l) => l.at as number);
    expect((second ?? 0) - (first ?? 0)).toBeGreaterThanOrEqual(300);
    expect((third ?? 0) - (second ?? 0)).toBeGreaterThanOrEqual(600);
    const events = await cluster.client.get<{ items: Json[] }>(`/api/v1/namespaces/${ns}/events`);
    expect(
      events.items.some((e) => e.involvedObject.name === 'flaky-bad' && e.reason === 'Failed' && e.type === 'Warning'),
    ).toBe(true);
  });

  it('reports a dependency cycle as its path and does not run anything', async () => {
    await apply(
      cluster,
      workflow('cyclic', {
        pool: 'agents',
        tasks: [
          { name: 'a', handler: 'noop', dependsOn: ['b'] },
          { name: 'b', handler: 'noop', dependsOn: ['a'] },
        ],
      }),
    );
    const w = await until('cyclic Failed', () => getWf('cyclic'), phaseIs('Failed'));
    const failed = w.status.conditions.find((c: Json) => c.type === 'Failed');
    expect(failed.reason).toBe('InvalidSpec');
    expect(failed.message).toContain('dependency cycle: a -> b -> a');
    expect(w.status.progress).toBeUndefined();
  });

  it('suspends (nothing starts) and resumes to Succeeded', async () => {
    await apply(
      cluster,
      workflow('paused', {
        pool: 'agents',
        suspend: true,
        tasks: [
          { name: 'one', handler: 'noop', input: { i: 1 } },
          { name: 'two', handler: 'noop', dependsOn: ['one'], input: { i: '${{ tasks.one.output.i + 1 }}' } },
        ],
      }),
    );
    const suspended = await until('paused Suspended', () => getWf('paused'), phaseIs('Suspended'));
    expect(suspended.status.progress.succeeded).toBe(0);
    await new Promise((r) => setTimeout(r, 1_000));
    expect((await getWf('paused')).status.progress.succeeded).toBe(0);
    const patched = await cluster.kubectl([
      'patch',
      '-n',
      ns,
      'awf/paused',
      '--type=merge',
      '-p',
      '{"spec":{"suspend":false}}',
    ]);
    expect(patched.code).toBe(0);
    const done = await until('paused Succeeded', () => getWf('paused'), phaseIs('Succeeded'), 30_000);
    expect(done.status.outputs.two).toEqual({ i: 2 });
  });

  it('cancelling through the annotation stops the running handler', async () => {
    await apply(cluster, workflow('doomed', { pool: 'agents', tasks: [{ name: 'wait', handler: 'hang' }] }));
    await until(
      'the handler started',
      () => handlerLines(),
      (l) => l.some((x) => x.task === 'doomed/wait' && x.event === 'started'),
      30_000,
    );
    const annotated = await cluster.kubectl(['annotate', '-n', ns, 'awf/doomed', 'agentflow.io/cancel=by-test']);
    expect(annotated.code).toBe(0);
    const w = await until('doomed Cancelled', () => getWf('doomed'), phaseIs('Cancelled'), 30_000);
    // Cancelled is an end without success: Failed=True with reason Cancelled, Succeeded=False.
    expect(w.status.conditions.find((c: Json) => c.type === 'Failed')).toMatchObject({
      status: 'True',
      reason: 'Cancelled',
    });
    expect(w.status.conditions.find((c: Json) => c.type === 'Succeeded')).toMatchObject({
      status: 'False',
      reason: 'Cancelled',
    });
    const aborted = await until(
      'the handler aborted',
      () => handlerLines(),
      (l) => l.some((x) => x.task === 'doomed/wait' && x.event === 'aborted'),
      30_000,
    );
    expect(aborted.find((x) => x.task === 'doomed/wait' && x.event === 'aborted')?.reason).toContain('cancel');
  });

  it('children spawned by a task join the run; the parent completes when they do', async () => {
    await apply(
      cluster,
      workflow('parent', { pool: 'agents', tasks: [{ name: 'spawner', handler: 'fanout', input: { count: 3 } }] }),
    );
    const w = await until('parent Succeeded', () => getWf('parent'), phaseIs('Succeeded', 'Failed'), 30_000);
    expect(w.status.phase).toBe('Succeeded');
    expect(w.status.progress).toMatchObject({ total: 4, succeeded: 4 });
    expect(w.status.outputs.spawner).toEqual({ spawned: 3 });
  });

  it('a spawn sent again adds no child twice; a taken child name with another input is refused, naming it', async () => {
    await apply(cluster, workflow('respawn', { pool: 'agents', tasks: [{ name: 'p', handler: 'respawn' }] }));
    const w = await until('respawn finished', () => getWf('respawn'), phaseIs('Succeeded', 'Failed'), 30_000);
    expect(w.status.phase).toBe('Succeeded');
    expect(w.status.progress).toMatchObject({ total: 3, succeeded: 3 });
    expect(w.status.outputs.p).toEqual({
      refused: {
        name: 'SpawnRefusedError',
        code: 'CONFLICT',
        message:
          'spawn refused (CONFLICT): task p already has a child "a" with a different input: a child name stands for one child, so give a different child another name',
      },
    });
    const results = await store.client.getAll().prefix(`${prefix}/results/${ns}/respawn/`).keys();
    expect(results.map((k) => k.split('/').pop()).sort()).toEqual(['p', 'p~a', 'p~b']);
  });

  it('fans out to 2,000 tasks and the Workflow object stays small', async () => {
    await apply(
      cluster,
      workflow('wide', {
        pool: 'agents',
        tasks: [
          { name: 'gen', handler: 'range', input: { count: 2000 } },
          {
            name: 'each',
            handler: 'noop',
            dependsOn: ['gen'],
            forEach: 'tasks.gen.output.items',
            input: { i: '${{ item }}' },
          },
        ],
      }),
    );
    const w = await until('wide Succeeded', () => getWf('wide'), phaseIs('Succeeded', 'Failed'), 120_000);
    expect(w.status.phase).toBe('Succeeded');
    expect(w.status.progress).toEqual({ total: 2001, succeeded: 2001, failed: 0, running: 0, queued: 0 });
    expect(w.status.tasks[1]).toMatchObject({ name: 'each', phase: 'Succeeded' });
    const bytes = Buffer.byteLength(JSON.stringify(w));
    console.log(
      `2,000-task fan-out: Workflow object ${bytes} bytes, ${Date.parse(w.status.finishedAt) - Date.parse(w.status.startedAt)} ms`,
    );
    // The outputs of 2,000 tasks do not fit the status budget: they are summarised, not copied.
    expect(w.status.outputs.each).toMatchObject({ truncated: true });
    expect(bytes).toBeLessThan(40 * 1024);
  });

  it('a CEL bomb, an oversized forEach and a spawn flood each fail with their reason; a workflow beside them succeeds', async () => {
    const list = `[${Array.from({ length: 150 }, (_, i) => i).join(',')}]`;
    const items = 'tasks.gen.output.items';
    const fanOut = (count: number) => [
      { name: 'gen', handler: 'range', input: { count } },
      { name: 'each', handler: 'noop', dependsOn: ['gen'], forEach: items, input: { i: '${{ item }}' } },
    ];
    await Promise.all(
      [
        // Over budget by its text alone: refused by validation, nothing runs.
        workflow('bomb-static', {
          pool: 'agents',
          tasks: [
            { name: 'check', handler: 'noop', when: `size(${list}.map(a, ${list}.map(b, ${list}.map(c, a + b)))) > 0` },
          ],
        }),
        // Over budget on an agent's output: fails on the leader, in milliseconds.
        workflow('bomb-when', {
          pool: 'agents',
          tasks: [
            { name: 'gen', handler: 'range', input: { count: 300 } },
            {
              name: 'check',
              handler: 'noop',
              dependsOn: ['gen'],
              when: `${items}.all(a, ${items}.all(b, ${items}.all(c, a + b + c >= 0)))`,
            },
          ],
        }),
        workflow('too-wide', { pool: 'agents', tasks: fanOut(DEFAULT_MAX_FOREACH_ITEMS + 1) }),
        workflow('flood', {
          pool: 'agents',
          tasks: [{ name: 'spawner', handler: 'fanout', input: { count: DEFAULT_MAX_SPAWNED_CHILDREN + 1 } }],
        }),
        workflow('beside', { pool: 'agents', tasks: fanOut(3) }),
      ].map((w) => apply(cluster, w)),
    );
    const failure = async (name: string) => {
      const w = await until(`${name} Failed`, () => getWf(name), phaseIs('Succeeded', 'Failed'), 60_000);
      expect(w.status.phase).toBe('Failed');
      return w.status.conditions.find((c: Json) => c.type === 'Failed');
    };
    const beside = await until('beside done', () => getWf('beside'), phaseIs('Succeeded', 'Failed'), 60_000);
    expect(beside.status.phase).toBe('Succeeded');
    expect(beside.status.progress).toMatchObject({ total: 4, succeeded: 4 });

    const invalid = await failure('bomb-static');
    expect(invalid.reason).toBe('InvalidSpec');
    expect(invalid.message).toMatch(
      /^spec\.tasks\[0\]\.when: "size\(\[0,1,2,.*": estimated cost [\d,]+ is over the budget of 500,000 CEL cost units/,
    );
    const bomb = await failure('bomb-when');
    expect(bomb.reason).toBe('ExpressionFailed');
    expect(bomb.message).toBe(
      `task check: spec.tasks[1].when: ${items}.all(a, ${items}.all(b, ${items}.all(c, a + b + c >= 0))): exceeded the cost budget of 500,000 CEL cost units of one expression (it iterates over too much data)`,
    );
    const wide = await failure('too-wide');
    expect(wide.reason).toBe('ExpressionFailed');
    expect(wide.message).toBe(
      `task each: spec.tasks[1].forEach: ${items}: yields ${DEFAULT_MAX_FOREACH_ITEMS + 1} items, more than the ${DEFAULT_MAX_FOREACH_ITEMS} a forEach may have (the operator's --max-foreach-items)`,
    );
    expect((await getWf('too-wide')).status.progress.total).toBe(2); // gen, and each not expanded
    const flood = await failure('flood');
    expect(flood.reason).toBe('SpawnRefused');
    expect(flood.message).toBe(
      `task spawner: spawning ${DEFAULT_MAX_SPAWNED_CHILDREN + 1} more children would make ${DEFAULT_MAX_SPAWNED_CHILDREN + 1} under task spawner (descendants included), more than the ${DEFAULT_MAX_SPAWNED_CHILDREN} one task may spawn (the operator's --max-spawned-children)`,
    );
    expect((await getWf('flood')).status.tasks[0]).toMatchObject({ name: 'spawner', phase: 'Failed' });
  });

  it('an agent killed mid-workflow does not fail it: its tasks run again elsewhere', async () => {
    await apply(
      cluster,
      workflow('survivor', {
        pool: 'agents',
        tasks: [
          { name: 'gen', handler: 'range', input: { count: 8 } },
          { name: 'slow', handler: 'hang', dependsOn: ['gen'], forEach: 'tasks.gen.output.items', input: { ms: 2000 } },
        ],
      }),
    );
    await until(
      'slow tasks running',
      () => handlerLines(),
      (l) => l.filter((x) => x.task?.startsWith('survivor/slow') && x.event === 'started').length >= 8,
      30_000,
    );
    // Kill one agent pod outright (no drain): its process dies with the pod.
    const victim = (await pods(cluster, ns, 'agents'))[0];
    await cluster.client.delete(`/api/v1/namespaces/${ns}/pods/${victim?.name}`, { gracePeriodSeconds: 0 });
    const w = await until('survivor done', () => getWf('survivor'), phaseIs('Succeeded', 'Failed'), 90_000);
    expect(w.status.phase).toBe('Succeeded');
    expect(w.status.progress).toMatchObject({ total: 9, succeeded: 9, failed: 0 });
    await until(
      '2 agents connected again',
      () => pool(cluster, ns, 'agents'),
      (p) => p.status?.connectedAgents === 2,
      60_000,
    );
  }, 150_000);

  it('a pool at minReplicas 0 scales up for a workflow and back down after it', async () => {
    await apply(
      cluster,
      agentPool('elastic', {
        replicas: 0,
        capacity: 2,
        autoscaling: { minReplicas: 0, maxReplicas: 2, scaleDownDelaySeconds: 3 },
      }),
    );
    await new Promise((r) => setTimeout(r, 1_500));
    expect(await pods(cluster, ns, 'elastic')).toEqual([]);
    await apply(
      cluster,
      workflow('burst', {
        pool: 'elastic',
        tasks: [
          { name: 'gen', handler: 'range', input: { count: 6 } },
          {
            name: 'each',
            handler: 'noop',
            dependsOn: ['gen'],
            forEach: 'tasks.gen.output.items',
            input: { i: '${{ item }}' },
          },
        ],
      }),
    );
    const w = await until('burst Succeeded', () => getWf('burst'), phaseIs('Succeeded', 'Failed'), 90_000);
    expect(w.status.phase).toBe('Succeeded');
    const events = await cluster.client.get<{ items: Json[] }>(`/api/v1/namespaces/${ns}/events`);
    expect(events.items.some((e) => e.involvedObject.name === 'elastic' && e.reason === 'ScaledUp')).toBe(true);
    await until(
      'the pool back at 0 pods',
      () => pods(cluster, ns, 'elastic'),
      (ps) => ps.length === 0,
      60_000,
    );
    expect((await pool(cluster, ns, 'elastic')).spec.replicas).toBe(0);
  });
});
