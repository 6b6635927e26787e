import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ClusterHandle } from '../../cluster/cluster-handle.ts';
import { apply, type OperatorProcess, until } from '../operator/helpers.ts';
import {
  getWorkflow,
  type Json,
  operatorWithPool,
  type PoolFixture,
  phaseIs,
  readHandlerLog,
  workflowManifest,
} from './helpers.ts';

// WorkflowTemplates end to end: a real operator process, real agents, real etcd and kube-apiserver.
// The `stamp` fixture handler returns input.num as num, so a task's output shows what its inputs
// resolved to; `hold` runs for input.ms. (No field is named n or y: kubectl reads YAML 1.1.)

let fx: PoolFixture;
let cluster: ClusterHandle;
let ns: string;
let handlerLog: string;
const WAITING_TIMEOUT = 10;

const template = (name: string, spec: Json): Json => ({
  apiVersion: 'agentflow.io/v1alpha1',
  kind: 'WorkflowTemplate',
  metadata: { name, namespace: ns },
  spec,
});
const fromTemplate = (name: string, templateName: string, extra: Json = {}) =>
  workflowManifest(ns, name, { workflowTemplateRef: { name: templateName }, ...extra });
const done = (name: string) =>
  until(`${name} finished`, () => getWorkflow(cluster, ns, name), phaseIs('Succeeded', 'Failed'), 60_000);
const condition = (w: Json, type: string): Json | undefined =>
  (w.status?.conditions as Json[] | undefined)?.find((c) => c.type === type);

const report = (num: number | string = '${{ inputs.depth }}'): Json => ({
  parameters: [
    { name: 'topic', required: true },
    { name: 'depth', type: 'integer', default: 2 },
  ],
  pool: 'agents',
  tasks: [{ name: 'write', handler: 'stamp', input: { key: '${{ inputs.topic }}', num } }],
});

beforeAll(async () => {
  fx = await operatorWithPool({
    name: 'tmpl',
    handlersModule: 'test/fixtures/agent/limit-handlers.mjs',
    operator: { waitingTimeout: WAITING_TIMEOUT, leaseTtl: 3 },
  });
  ({ cluster, ns, handlerLog } = fx);
}, 120_000);

afterAll(() => fx?.close());

describe('Workflows that run a WorkflowTemplate', () => {
  it('run its tasks with their inputs checked and defaulted, and record the template in status', async () => {
    await apply(cluster, template('report', report()));
    await apply(cluster, fromTemplate('defaults', 'report', { inputs: { topic: 'etcd' } }));
    await apply(cluster, fromTemplate('given', 'report', { inputs: { topic: 'raft', depth: 5 } }));
    const [a, b] = await Promise.all([done('defaults'), done('given')]);
    expect(a.status.phase).toBe('Succeeded');
    expect(a.status.outputs.write.num).toBe(2);
    expect(b.status.outputs.write.num).toBe(5);
    const t = await cluster.client.get<Json>(`/apis/agentflow.io/v1alpha1/namespaces/${ns}/workflowtemplates/report`);
    expect(a.status.workflowTemplate).toMatchObject({ name: 'report', uid: t.metadata.uid, generation: 1 });
    expect(a.status.workflowTemplate.spec.inputs).toEqual({ topic: 'etcd', depth: 2 });
    expect(a.status.workflowTemplate.spec.tasks.map((x: Json) => x.name)).toEqual(['write']);
    expect(condition(a, 'SpecApplied')?.status).toBe('True');
    const keys = readHandlerLog(handlerLog)
      .filter((l) => l.handler === 'stamp')
      .map((l) => l.key);
    expect(keys).toEqual(expect.arrayContaining(['etcd', 'raft']));
  });

  it('fail at once when the inputs do not fit the parameters, naming each field', async () => {
    await apply(cluster, template('strict', report()));
    await apply(cluster, fromTemplate('bad-inputs', 'strict', { inputs: { depth: 'deep', topik: 'x' } }));
    const w = await done('bad-inputs');
    expect(w.status.phase).toBe('Failed');
    expect(w.status.message).toContain('spec.inputs.topik: WorkflowTemplate "strict" has no parameter "topik"');
    expect(w.status.message).toContain(
      'spec.inputs.depth: parameter "depth" of WorkflowTemplate "strict" must be an integer',
    );
    expect(w.status.message).toContain('spec.inputs.topic: WorkflowTemplate "strict" requires parameter "topic"');
    expect(w.status.workflowTemplate).toBeUndefined();
    expect(readHandlerLog(handlerLog).filter((l) => l.key === 'x')).toEqual([]);
  });

  it("fail at once when the template's tasks are wrong for the workflow, naming the template's field", async () => {
    await apply(
      cluster,
      template('broken', {
        ...report(),
        tasks: [{ name: 'write', handler: 'stamp', input: { num: '${{ inputs.nothing.x }}' } }],
      }),
    );
    await apply(cluster, fromTemplate('bad-template', 'broken', { inputs: { topic: 'a' } }));
    const w = await done('bad-template');
    expect(w.status.phase).toBe('Failed');
    expect(w.status.message).toMatch(/^WorkflowTemplate "broken" spec\.tasks\[0\]\.input\.num: /);
  });

  it('keeps the template as it was when the run started: an edit changes later runs only', async () => {
    const versioned = (num: number): Json => ({
      pool: 'agents',
      tasks: [
        { name: 'first', handler: 'hold', input: { key: 'versioned', ms: 3000 } },
        { name: 'second', handler: 'stamp', dependsOn: ['first'], input: { num } },
      ],
    });
    await apply(cluster, template('versioned', versioned(1)));
    await apply(cluster, fromTemplate('old', 'versioned'));
    await until(
      'old running',
      () => getWorkflow(cluster, ns, 'old'),
      (w) => w.status?.phase === 'Running' && w.status?.workflowTemplate !== undefined,
      30_000,
    );
    await apply(cluster, template('versioned', versioned(2)));
    await apply(cluster, fromTemplate('new', 'versioned'));
    const [old, fresh] = await Promise.all([done('old'), done('new')]);
    expect(old.status.outputs.second.num).toBe(1);
    expect(old.status.workflowTemplate.generation).toBe(1);
    expect(fresh.status.outputs.second.num).toBe(2);
    expect(fresh.status.workflowTemplate.generation).toBe(2);
  });

  it('overrides template fields with those the workflow sets', async () => {
    await apply(
      cluster,
      template('overridable', { ...report(), retryPolicy: { maxAttempts: 1 }, pool: 'missing-pool' }),
    );
    await apply(cluster, fromTemplate('override', 'overridable', { pool: 'agents', inputs: { topic: 'o' } }));
    const w = await done('override');
    expect(w.status.phase).toBe('Succeeded');
    expect(w.status.workflowTemplate.spec.pool).toBe('agents');
    expect(w.status.workflowTemplate.spec.retryPolicy).toEqual({ maxAttempts: 1 });
  });

  it('waits for a template applied after the workflow, then runs it', async () => {
    await apply(cluster, fromTemplate('early', 'late', { inputs: { topic: 'late' } }));
    const waiting = await until(
      'early waiting',
      () => getWorkflow(cluster, ns, 'early'),
      (w) => condition(w, 'Waiting')?.status === 'True',
      30_000,
    );
    expect(waiting.status.phase).toBe('Pending');
    expect(condition(waiting, 'Waiting')?.reason).toBe('TemplateNotFound');
    expect(waiting.status.message).toContain(
      `spec.workflowTemplateRef.name: WorkflowTemplate "late" not found in namespace ${ns}`,
    );
    await apply(cluster, template('late', report(7)));
    const w = await done('early');
    expect(w.status.phase).toBe('Succeeded');
    expect(w.status.outputs.write.num).toBe(7);
  });

  it('fail with TemplateNotFound after the waiting timeout when the template never comes', async () => {
    await apply(cluster, fromTemplate('never', 'absent'));
    const w = await until(
      'never failed',
      () => getWorkflow(cluster, ns, 'never'),
      phaseIs('Failed'),
      (WAITING_TIMEOUT + 20) * 1000,
    );
    expect(w.status.message).toMatch(
      /WorkflowTemplate "absent" not found .*\(waited 10s, the operator's --waiting-timeout\)/,
    );
    const events = await cluster.kubectl([
      'get',
      'events',
      '-n',
      ns,
      '--field-selector',
      'involvedObject.name=never',
      '-o',
      'json',
    ]);
    const reasons = (JSON.parse(events.stdout).items as Json[]).map((e) => e.reason);
    expect(reasons).toContain('TemplateNotFound');
  });

  // Last: it kills the leader.
  it('a new leader resumes the run with the template it started with, even once the template is gone', async () => {
    const standby: OperatorProcess = fx.operator('op-tmpl-2');
    await standby.waitFor('Campaigning for leadership');
    await apply(
      cluster,
      template('doomed', {
        pool: 'agents',
        tasks: [
          { name: 'first', handler: 'hold', input: { key: 'doomed', ms: 4000 } },
          { name: 'second', handler: 'stamp', dependsOn: ['first'], input: { key: 'doomed-2', num: 1 } },
        ],
      }),
    );
    await apply(cluster, fromTemplate('survivor', 'doomed'));
    const running = await until(
      'survivor running with its template recorded',
      () => getWorkflow(cluster, ns, 'survivor'),
      (w) => w.status?.phase === 'Running' && w.status?.workflowTemplate !== undefined,
      30_000,
    );
    const del = await cluster.kubectl(['delete', 'awft', 'doomed', '-n', ns]);
    expect(del.code, del.stderr).toBe(0);
    (fx.operators[0] as OperatorProcess).kill('SIGKILL');
    await standby.waitFor('Operator is leading', 30_000);
    const w = await done('survivor');
    expect(w.status.phase).toBe('Succeeded');
    expect(w.status.outputs.second.num).toBe(1);
    expect(w.status.workflowTemplate).toEqual(running.status.workflowTemplate);
    // Each task ran once: the new leader adopted or resumed what the old one had started.
    const lines = readHandlerLog(handlerLog);
    expect(lines.filter((l) => l.handler === 'hold' && l.key === 'doomed' && l.event === 'start')).toHaveLength(1);
    expect(lines.filter((l) => l.handler === 'stamp' && l.key === 'doomed-2')).toHaveLength(1);
  });
});
