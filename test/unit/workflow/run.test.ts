import { describe, expect, it } from 'vitest';
import {
  DEFAULT_MAX_FOREACH_ITEMS,
  DEFAULT_MAX_SPAWNED_CHILDREN,
  MAX_EXPRESSION_COST,
  type WorkflowSpec,
} from '../../../src/api/workflow.ts';
import type { TaskEvent, TaskSpec } from '../../../src/dispatcher/types.ts';
import type { RunRecord, TaskRecord, TaskRef } from '../../../src/state/index.ts';
import {
  DEFAULT_RUN_LIMITS,
  MAX_STATUS_OUTPUT_BYTES,
  type RunHost,
  type RunLimits,
  specHash,
  UNSERVED_GRACE_MS,
  WorkflowRun,
} from '../../../src/workflow/run.ts';

const NS = 'team-a';
const WF = 'report';
const UID = 'uid-1';
/** A whole second, so ISO timestamps (which drop milliseconds) round-trip exactly. */
const T0 = Date.UTC(2025, 0, 1, 12, 0, 0);
const isoAt = (ms: number) => new Date(ms).toISOString().replace(/\.\d+Z$/, 'Z');

/** The dispatcher and the clock, recorded and controlled by the test. */
class FakeHost implements RunHost {
  time = T0;
  readonly submits: TaskSpec[] = [];
  readonly cancels: { task: string; reason: string }[] = [];
  readonly trackedAsked: string[] = [];
  isTracked: (ref: TaskRef) => boolean = () => false;
  /** spec.agent.capacity by pool; a pool not listed is unknown. */
  readonly capacities = new Map<string, number>();

  submit(spec: TaskSpec): void {
    this.submits.push(spec);
  }
  cancel(ref: TaskRef, reason: string): void {
    expect(ref.namespace).toBe(NS);
    expect(ref.workflow).toBe(WF);
    this.cancels.push({ task: ref.task, reason });
  }
  tracked(ref: TaskRef): boolean {
    this.trackedAsked.push(ref.task);
    return this.isTracked(ref);
  }
  now(): number {
    return this.time;
  }
  poolCapacity(pool: string): number | undefined {
    return this.capacities.get(pool);
  }
  advance(ms: number): void {
    this.time += ms;
  }
  /** Submissions as `task#attempt`, in order. */
  submitted(): string[] {
    return this.submits.map((s) => `${s.ref.task}#${s.attempt}`);
  }
  lastSubmit(): TaskSpec {
    const s = this.submits.at(-1);
    if (!s) throw new Error('nothing was submitted');
    return s;
  }
}

const ref = (task: string): TaskRef => ({ namespace: NS, workflow: WF, task });

function newRun(
  spec: WorkflowSpec,
  host: FakeHost = new FakeHost(),
  loaded?: { run?: RunRecord; tasks: TaskRecord[] },
  uid = UID,
  limits?: Partial<RunLimits>,
): { run: WorkflowRun; host: FakeHost } {
  const run = new WorkflowRun({ namespace: NS, name: WF, uid, spec }, host, loaded, limits);
  return { run, host };
}

function rec(run: WorkflowRun, task: string): TaskRecord {
  const r = run.record(task);
  if (!r) throw new Error(`no record for ${task}`);
  return r;
}

const phaseOf = (run: WorkflowRun, task: string) => run.record(task)?.phase;
const attemptOf = (run: WorkflowRun, task: string) => rec(run, task).attempt;

function started(run: WorkflowRun, task: string, attempt = attemptOf(run, task), agentId = 'agent-1'): void {
  run.onEvent({ type: 'started', ref: ref(task), attempt, agentId });
}

function committed(
  run: WorkflowRun,
  task: string,
  result: { ok: boolean; output?: unknown; error?: { message: string; retryable: boolean } },
  attempt = attemptOf(run, task),
  agentId = 'agent-1',
): void {
  const event: TaskEvent = {
    type: 'committed',
    ref: ref(task),
    agentId,
    result: { attempt, agentId, token: 100 + attempt, committedAt: isoAt(T0), ...result },
  };
  run.onEvent(event);
}

const succeed = (run: WorkflowRun, task: string, output: unknown, attempt?: number) =>
  committed(run, task, { ok: true, output }, attempt);
const failAttempt = (run: WorkflowRun, task: string, message: string, retryable: boolean, attempt?: number) =>
  committed(run, task, { ok: false, error: { message, retryable } }, attempt);

/** Starts and succeeds a task in one go. */
function runTask(run: WorkflowRun, task: string, output: unknown): void {
  started(run, task);
  succeed(run, task, output);
}

describe('WorkflowRun: a linear DAG', () => {
  const spec: WorkflowSpec = {
    pool: 'default-pool',
    priority: 5,
    inputs: { topic: 'warm pools' },
    tasks: [
      { name: 'a', handler: 'plan', cost: 2, timeoutSeconds: 30, input: { topic: '${{ inputs.topic }}', n: 3 } },
      {
        name: 'b',
        handler: 'write',
        pool: 'gpu-pool',
        dependsOn: ['a'],
        input: {
          value: '${{ tasks.a.output.value }}',
          whole: '${{ tasks.a.output }}',
          text: 'got ${{ tasks.a.output.value }} on ${{ inputs.topic }}',
        },
      },
    ],
  };

  it('submits only the root first, with pool, priority, cost, timeout and rendered input', () => {
    const { run, host } = newRun(spec);
    expect(run.phase).toBe('Pending');
    expect(host.submits).toEqual([]);
    run.step();
    expect(run.phase).toBe('Running');
    expect(host.submits).toStrictEqual([
      {
        ref: ref('a'),
        pool: 'default-pool',
        handler: 'plan',
        input: { topic: 'warm pools', n: 3 },
        attempt: 1,
        cost: 2,
        priority: 5,
        timeoutSeconds: 30,
      },
    ]);
    expect(phaseOf(run, 'a')).toBe('Queued');
    expect(phaseOf(run, 'b')).toBe('Pending');
    expect(rec(run, 'b').input).toBeUndefined();
    // A second step hands nothing out twice.
    run.step();
    expect(host.submits).toHaveLength(1);
  });

  it('runs the dependent with the output of its dependency, then succeeds with the leaf outputs', () => {
    const { run, host } = newRun(spec);
    run.step();
    host.advance(2000);
    started(run, 'a');
    expect(phaseOf(run, 'a')).toBe('Running');
    expect(rec(run, 'a').startedAt).toBe(isoAt(T0 + 2000));
    expect(run.counts()).toEqual({ total: 2, succeeded: 0, failed: 0, running: 1, queued: 0 });
    expect(run.status().progressSummary).toBe('0/2');

    host.advance(3000);
    succeed(run, 'a', { value: 42, note: 'x' });
    expect(phaseOf(run, 'a')).toBe('Succeeded');
    expect(rec(run, 'a').finishedAt).toBe(isoAt(T0 + 5000));
    expect(rec(run, 'a').output).toEqual({ value: 42, note: 'x' });
    expect(host.submits).toHaveLength(2);
    expect(host.submits[1]).toStrictEqual({
      ref: ref('b'),
      pool: 'gpu-pool',
      handler: 'write',
      input: { value: 42, whole: { value: 42, note: 'x' }, text: 'got 42 on warm pools' },
      attempt: 1,
      cost: 1,
      priority: 5,
    });
    expect(run.counts()).toEqual({ total: 2, succeeded: 1, failed: 0, running: 0, queued: 1 });
    expect(run.status().progressSummary).toBe('1/2');
    expect(run.phase).toBe('Running');
    expect(run.finished).toBe(false);

    runTask(run, 'b', { report: 'done' });
    expect(run.phase).toBe('Succeeded');
    expect(run.finished).toBe(true);
    expect(run.finishedAt).toBe(T0 + 5000);
    const status = run.status();
    expect(status).toEqual({
      phase: 'Succeeded',
      progress: { total: 2, succeeded: 2, failed: 0, running: 0, queued: 0 },
      progressSummary: '2/2',
      startedAt: isoAt(T0),
      finishedAt: isoAt(T0 + 5000),
      outputs: { b: { report: 'done' } },
      tasks: [
        { name: 'a', phase: 'Succeeded', attempts: 1 },
        { name: 'b', phase: 'Succeeded', attempts: 1 },
      ],
    });
    expect(host.submits).toHaveLength(2);
    expect(host.cancels).toEqual([]);
  });

  it('defaults priority to 0, cost to 1 and omits timeoutSeconds; the task pool wins over spec.pool', () => {
    const { run, host } = newRun({
      pool: 'p',
      tasks: [
        { name: 'x', handler: 'h' },
        { name: 'y', handler: 'h', pool: 'other' },
      ],
    });
    run.step();
    expect(host.submits).toStrictEqual([
      { ref: ref('x'), pool: 'p', handler: 'h', input: {}, attempt: 1, cost: 1, priority: 0 },
      { ref: ref('y'), pool: 'other', handler: 'h', input: {}, attempt: 1, cost: 1, priority: 0 },
    ]);
  });

  it('has no status outputs before it succeeds', () => {
    const { run } = newRun(spec);
    run.step();
    const status = run.status();
    expect(status.outputs).toBeUndefined();
    expect(status.finishedAt).toBeUndefined();
    expect(status.phase).toBe('Running');
    expect(status.tasks).toEqual([
      { name: 'a', phase: 'Queued', attempts: 1 },
      { name: 'b', phase: 'Pending', attempts: 0 },
    ]);
  });

  it('ignores a started event of another attempt or of a task not queued', () => {
    const { run, host } = newRun(spec);
    run.step();
    const v = run.version;
    started(run, 'a', 2);
    expect(phaseOf(run, 'a')).toBe('Queued');
    expect(run.version).toBe(v);
    started(run, 'a', 1);
    expect(phaseOf(run, 'a')).toBe('Running');
    started(run, 'a', 1, 'agent-2'); // a duplicate
    expect(run.audit.filter((x) => x.type === 'TaskStarted')).toEqual([
      { type: 'TaskStarted', task: 'a', attempt: 1, agentId: 'agent-1' },
    ]);
    run.onEvent({ type: 'started', ref: ref('nope'), attempt: 1, agentId: 'agent-1' });
    expect(host.submits).toHaveLength(1);
  });

  it('shows progress events in the status only: no phase change, nothing to save', () => {
    const { run } = newRun(spec);
    run.step();
    started(run, 'a');
    const v = run.version;
    run.dirty.clear();
    run.onEvent({ type: 'progress', ref: ref('a'), attempt: 1, fraction: 0.5, message: 'halfway' });
    expect(run.version).toBe(v + 1);
    expect(run.dirty.size).toBe(0);
    expect(phaseOf(run, 'a')).toBe('Running');
    run.onEvent({ type: 'progress', ref: ref('a'), attempt: 1, fraction: 0.5, message: 'halfway' });
    expect(run.version).toBe(v + 1); // the same report again changes nothing
  });

  it('shows a progress of unknown fraction (negative, as the protocol says) as its message alone', () => {
    const { run } = newRun(spec);
    run.step();
    started(run, 'a');
    run.onEvent({ type: 'progress', ref: ref('a'), attempt: 1, fraction: -1, message: 'waiting for the model' });
    expect(run.views().find((t) => t.name === 'a')?.progress).toBe('waiting for the model');
    run.onEvent({ type: 'progress', ref: ref('a'), attempt: 1, fraction: 1.5, message: 'done' });
    expect(run.views().find((t) => t.name === 'a')?.progress).toBe('100% done');
  });
});

describe('WorkflowRun: forEach', () => {
  const spec: WorkflowSpec = {
    pool: 'p',
    inputs: { topic: 'pools' },
    tasks: [
      { name: 'plan', handler: 'plan' },
      {
        name: 'research',
        handler: 'research',
        dependsOn: ['plan'],
        forEach: 'tasks.plan.output.questions',
        input: { question: '${{ item }}', i: '${{ index }}', ctx: '${{ inputs.topic }}: ${{ item }}' },
        timeoutSeconds: 120,
      },
      { name: 'write', handler: 'write', dependsOn: ['research'], input: { findings: '${{ tasks.research.output }}' } },
    ],
  };

  it('expands one instance per item with item-rendered inputs, and hands the ordered outputs on', () => {
    const { run, host } = newRun(spec);
    run.step();
    expect(run.counts()).toEqual({ total: 3, succeeded: 0, failed: 0, running: 0, queued: 1 });
    expect(run.record('research')).toBeUndefined();
    runTask(run, 'plan', { questions: ['q0', 'q1', 'q2'] });
    expect(host.submits.slice(1)).toStrictEqual(
      [0, 1, 2].map((k) => ({
        ref: ref(`research.${k}`),
        pool: 'p',
        handler: 'research',
        input: { question: `q${k}`, i: k, ctx: `pools: q${k}` },
        attempt: 1,
        cost: 1,
        priority: 0,
        timeoutSeconds: 120,
      })),
    );
    expect(rec(run, 'research.1')).toMatchObject({ name: 'research.1', template: 'research', index: 1 });
    expect(run.runRecord().expanded).toEqual({ research: 3 });
    expect(run.audit).toContainEqual({ type: 'TaskExpanded', task: 'research', detail: { items: 3 } });
    expect(run.counts()).toEqual({ total: 5, succeeded: 1, failed: 0, running: 0, queued: 3 });

    // Out of order: the list follows the item order, not the completion order.
    runTask(run, 'research.2', { a: 2 });
    runTask(run, 'research.0', { a: 0 });
    expect(host.submits).toHaveLength(4);
    expect(run.status().tasks?.[1]).toEqual({
      name: 'research',
      phase: 'Queued',
      attempts: 1,
      message: '2/3 succeeded, 0 running, 1 queued, 0 failed',
    });
    runTask(run, 'research.1', { a: 1 });
    expect(host.submits).toHaveLength(5);
    expect(host.lastSubmit().ref.task).toBe('write');
    expect(host.lastSubmit().input).toEqual({ findings: [{ a: 0 }, { a: 1 }, { a: 2 }] });
    runTask(run, 'write', 'report');
    expect(run.phase).toBe('Succeeded');
    const status = run.status();
    expect(status.outputs).toEqual({ write: 'report' });
    expect(status.progressSummary).toBe('5/5');
    expect(status.tasks?.[1]).toEqual({
      name: 'research',
      phase: 'Succeeded',
      attempts: 1,
      message: '3/3 succeeded, 0 running, 0 queued, 0 failed',
    });
  });

  it('with zero items is done at once with [] and the dependent runs in the same step', () => {
    const { run, host } = newRun(spec);
    run.step();
    runTask(run, 'plan', { questions: [] });
    expect(run.runRecord().expanded).toEqual({ research: 0 });
    expect(host.submitted()).toEqual(['plan#1', 'write#1']);
    expect(host.lastSubmit().input).toEqual({ findings: [] });
    expect(run.status().tasks?.[1]).toEqual({ name: 'research', phase: 'Pending' });
    runTask(run, 'write', null);
    expect(run.phase).toBe('Succeeded');
    expect(run.counts()).toEqual({ total: 2, succeeded: 2, failed: 0, running: 0, queued: 0 });
  });

  it('a leaf forEach with no items succeeds the workflow with an empty list output', () => {
    const { run, host } = newRun({
      pool: 'p',
      inputs: { xs: [] },
      tasks: [{ name: 'f', handler: 'h', forEach: 'inputs.xs' }],
    });
    run.step();
    expect(host.submits).toEqual([]);
    expect(run.phase).toBe('Succeeded');
    expect(run.status().outputs).toEqual({ f: [] });
  });

  it('a leaf forEach reports the list of its instance outputs', () => {
    const { run } = newRun({
      pool: 'p',
      inputs: { xs: [10, 20] },
      tasks: [{ name: 'f', handler: 'h', forEach: 'inputs.xs', input: { x: '${{ item * 2 }}' } }],
    });
    run.step();
    expect(rec(run, 'f.0').input).toEqual({ x: 20 });
    expect(rec(run, 'f.1').input).toEqual({ x: 40 });
    runTask(run, 'f.1', 'b');
    runTask(run, 'f.0', 'a');
    expect(run.phase).toBe('Succeeded');
    expect(run.status().outputs).toEqual({ f: ['a', 'b'] });
  });

  it('fails the workflow when forEach does not yield a list', () => {
    const { run, host } = newRun({
      pool: 'p',
      inputs: { xs: 3 },
      tasks: [{ name: 'f', handler: 'h', forEach: 'inputs.xs' }],
    });
    run.step();
    expect(run.phase).toBe('Failed');
    expect(run.message).toBe('task f: spec.tasks[0].forEach: inputs.xs: must yield a list, not int');
    expect(host.submits).toEqual([]);
  });
});

describe('WorkflowRun: when', () => {
  const spec = (when: string): WorkflowSpec => ({
    pool: 'p',
    inputs: { flag: false, n: 3 },
    tasks: [
      { name: 'a', handler: 'h' },
      { name: 'b', handler: 'h', dependsOn: ['a'], when, input: { fromA: '${{ tasks.a.output }}' } },
      { name: 'c', handler: 'h', dependsOn: ['b'], input: { fromB: '${{ tasks.b.output }}' } },
    ],
  });

  it('skips the task when false; dependents still run and read null', () => {
    const { run, host } = newRun(spec('inputs.flag'));
    run.step();
    runTask(run, 'a', 'A');
    expect(phaseOf(run, 'b')).toBe('Skipped');
    expect(rec(run, 'b').message).toBe('when is false: inputs.flag');
    expect(rec(run, 'b').attempt).toBe(0);
    expect(host.submitted()).toEqual(['a#1', 'c#1']);
    expect(host.lastSubmit().input).toEqual({ fromB: null });
    expect(run.runRecord().expanded).toEqual({ b: -1 });
    expect(run.audit).toContainEqual({ type: 'TaskSkipped', task: 'b', detail: { when: 'inputs.flag' } });
    expect(run.counts()).toEqual({ total: 3, succeeded: 2, failed: 0, running: 0, queued: 1 });
    runTask(run, 'c', 'C');
    expect(run.phase).toBe('Succeeded');
    expect(run.status().tasks).toEqual([
      { name: 'a', phase: 'Succeeded', attempts: 1 },
      { name: 'b', phase: 'Skipped' },
      { name: 'c', phase: 'Succeeded', attempts: 1 },
    ]);
  });

  it('runs the task when true, seeing its dependencies', () => {
    const { run, host } = newRun(spec('tasks.a.output == "go"'));
    run.step();
    runTask(run, 'a', 'go');
    expect(phaseOf(run, 'b')).toBe('Queued');
    expect(host.submitted()).toEqual(['a#1', 'b#1']);
    expect(host.lastSubmit().input).toEqual({ fromA: 'go' });
  });

  it('a skipped forEach template is done with a null output', () => {
    const { run, host } = newRun({
      pool: 'p',
      inputs: { xs: [1, 2] },
      tasks: [
        { name: 'f', handler: 'h', forEach: 'inputs.xs', when: 'false' },
        { name: 'g', handler: 'h', dependsOn: ['f'], input: { v: '${{ tasks.f.output }}' } },
      ],
    });
    run.step();
    expect(host.submitted()).toEqual(['g#1']);
    expect(host.lastSubmit().input).toEqual({ v: null });
    expect(run.status().tasks?.[0]).toEqual({ name: 'f', phase: 'Skipped' });
  });

  it('fails the workflow, naming the field, when the condition is not a bool', () => {
    const { run, host } = newRun(spec('inputs.n'));
    run.step();
    runTask(run, 'a', 'A');
    expect(run.phase).toBe('Failed');
    expect(run.message).toBe('task b: spec.tasks[1].when: inputs.n: must yield a bool, not int');
    expect(phaseOf(run, 'b')).toBe('Failed');
    expect(rec(run, 'b').message).toBe('spec.tasks[1].when: inputs.n: must yield a bool, not int');
    expect(phaseOf(run, 'c')).toBe('Cancelled');
    expect(host.submitted()).toEqual(['a#1']);
    expect(host.cancels).toEqual([]);
    expect(run.status().tasks?.[1]).toEqual({
      name: 'b',
      phase: 'Failed',
      attempts: 0,
      message: 'spec.tasks[1].when: inputs.n: must yield a bool, not int',
    });
  });

  it('fails the workflow when an input expression cannot be evaluated', () => {
    const { run } = newRun({ pool: 'p', tasks: [{ name: 'a', handler: 'h', input: { x: '${{ inputs.missing }}' } }] });
    run.step();
    expect(run.phase).toBe('Failed');
    expect(run.message.startsWith('task a: spec.tasks[0].input.x: inputs.missing: ')).toBe(true);
    expect(phaseOf(run, 'a')).toBe('Failed');
  });
});

describe('WorkflowRun: parallelism', () => {
  it('never has more than `parallelism` attempts queued or running; each completion submits the next', () => {
    const names = ['t0', 't1', 't2', 't3', 't4'];
    const { run, host } = newRun({ pool: 'p', parallelism: 2, tasks: names.map((name) => ({ name, handler: 'h' })) });
    const active = () => {
      const c = run.counts();
      return c.running + c.queued;
    };
    run.step();
    expect(host.submitted()).toEqual(['t0#1', 't1#1']);
    expect(active()).toBe(2);
    started(run, 't0');
    started(run, 't1');
    run.step();
    expect(host.submits).toHaveLength(2);

    succeed(run, 't1', 1);
    expect(host.submitted()).toEqual(['t0#1', 't1#1', 't2#1']);
    expect(active()).toBe(2);
    succeed(run, 't0', 0);
    expect(host.submitted()).toEqual(['t0#1', 't1#1', 't2#1', 't3#1']);
    expect(active()).toBe(2);
    runTask(run, 't3', 3);
    expect(host.submitted()).toEqual(['t0#1', 't1#1', 't2#1', 't3#1', 't4#1']);
    expect(active()).toBe(2);
    runTask(run, 't2', 2);
    expect(active()).toBe(1);
    expect(host.submits).toHaveLength(5);
    runTask(run, 't4', 4);
    expect(active()).toBe(0);
    expect(run.phase).toBe('Succeeded');
    expect(run.status().outputs).toEqual({ t0: 0, t1: 1, t2: 2, t3: 3, t4: 4 });
  });

  it('applies to forEach instances and to retries', () => {
    const { run, host } = newRun({
      pool: 'p',
      parallelism: 1,
      inputs: { xs: ['a', 'b'] },
      tasks: [{ name: 'f', handler: 'h', forEach: 'inputs.xs' }],
    });
    run.step();
    expect(host.submitted()).toEqual(['f.0#1']);
    failAttempt(run, 'f.0', 'flaky', true);
    // The retrying instance leaves the slot; the other one takes it.
    expect(host.submitted()).toEqual(['f.0#1', 'f.1#1']);
    host.advance(1000);
    run.tick();
    expect(host.submits).toHaveLength(2);
    runTask(run, 'f.1', 'B');
    expect(host.submitted()).toEqual(['f.0#1', 'f.1#1', 'f.0#2']);
  });
});

describe('WorkflowRun: retries', () => {
  it('backs off initialSeconds * factor^(attempt-1), capped at maxSeconds, then fails after maxAttempts', () => {
    const { run, host } = newRun({
      pool: 'p',
      retryPolicy: { maxAttempts: 5, backoff: { initialSeconds: 2, factor: 3, maxSeconds: 10 } },
      tasks: [
        { name: 'a', handler: 'h' },
        { name: 'b', handler: 'h' },
        { name: 'c', handler: 'h', dependsOn: ['b'] },
      ],
    });
    run.step();
    started(run, 'b');
    const delays = [2000, 6000, 10_000, 10_000];
    for (const [n, delay] of delays.entries()) {
      const attempt = n + 1;
      started(run, 'a');
      failAttempt(run, 'a', 'boom', true);
      expect(phaseOf(run, 'a')).toBe('Retrying');
      expect(rec(run, 'a').retryAt).toBe(host.time + delay);
      expect(rec(run, 'a').message).toBe(`attempt ${attempt} failed: boom; retrying in ${(delay / 1000).toFixed(1)}s`);
      expect(run.nextWake()).toBe(host.time + delay);
      host.advance(delay - 1);
      run.tick();
      expect(phaseOf(run, 'a')).toBe('Retrying');
      expect(host.submits.filter((s) => s.ref.task === 'a')).toHaveLength(attempt);
      host.advance(1);
      run.tick();
      expect(phaseOf(run, 'a')).toBe('Queued');
      expect(rec(run, 'a').retryAt).toBeUndefined();
      expect(host.lastSubmit()).toMatchObject({ ref: ref('a'), attempt: attempt + 1, input: {} });
      expect(run.nextWake()).toBeUndefined();
    }
    started(run, 'a');
    failAttempt(run, 'a', 'boom', true);
    expect(phaseOf(run, 'a')).toBe('Failed');
    expect(rec(run, 'a').message).toBe('failed after 5 attempt(s): boom');
    expect(run.phase).toBe('Failed');
    expect(run.message).toBe('task a failed after 5 attempt(s): boom');
    expect(run.finishedAt).toBe(host.time);
    expect(host.cancels).toEqual([{ task: 'b', reason: 'task a failed after 5 attempt(s): boom' }]);
    expect(phaseOf(run, 'b')).toBe('Cancelled');
    expect(phaseOf(run, 'c')).toBe('Cancelled');
    expect(rec(run, 'c').finishedAt).toBe(isoAt(host.time));
    expect(run.nextWake()).toBeUndefined();
    expect(run.counts()).toEqual({ total: 3, succeeded: 0, failed: 1, running: 0, queued: 0 });
    expect(run.status().tasks).toEqual([
      { name: 'a', phase: 'Failed', attempts: 5, message: 'failed after 5 attempt(s): boom' },
      { name: 'b', phase: 'Cancelled', attempts: 1 },
      { name: 'c', phase: 'Cancelled', attempts: 0 },
    ]);
    // Nothing more happens once finished.
    const n = host.submits.length;
    run.tick();
    succeed(run, 'b', 'late');
    expect(phaseOf(run, 'b')).toBe('Cancelled');
    expect(host.submits).toHaveLength(n);
  });

  it('uses the defaults: 3 attempts, 1s doubling', () => {
    const { run, host } = newRun({ pool: 'p', tasks: [{ name: 'a', handler: 'h' }] });
    run.step();
    failAttempt(run, 'a', 'x', true);
    expect(rec(run, 'a').retryAt).toBe(T0 + 1000);
    host.advance(1000);
    run.tick();
    failAttempt(run, 'a', 'y', true);
    expect(rec(run, 'a').retryAt).toBe(T0 + 1000 + 2000);
    host.advance(2000);
    run.tick();
    expect(attemptOf(run, 'a')).toBe(3);
    failAttempt(run, 'a', 'z', true);
    expect(run.phase).toBe('Failed');
    expect(run.message).toBe('task a failed after 3 attempt(s): z');
  });

  it("a task's retryPolicy overrides the workflow's", () => {
    const { run, host } = newRun({
      pool: 'p',
      retryPolicy: { maxAttempts: 10, backoff: { initialSeconds: 60 } },
      tasks: [
        { name: 'a', handler: 'h', retryPolicy: { maxAttempts: 2, backoff: { initialSeconds: 0.5 } } },
        { name: 'b', handler: 'h' },
      ],
    });
    run.step();
    failAttempt(run, 'a', 'x', true);
    failAttempt(run, 'b', 'x', true);
    expect(rec(run, 'a').retryAt).toBe(T0 + 500);
    expect(rec(run, 'a').message).toBe('attempt 1 failed: x; retrying in 0.5s');
    expect(rec(run, 'b').retryAt).toBe(T0 + 60_000);
    expect(run.nextWake()).toBe(T0 + 500);
    host.advance(500);
    run.tick();
    expect(host.submitted()).toEqual(['a#1', 'b#1', 'a#2']);
    expect(run.nextWake()).toBe(T0 + 60_000);
    failAttempt(run, 'a', 'again', true);
    expect(run.phase).toBe('Failed');
    expect(run.message).toBe('task a failed after 2 attempt(s): again');
    // Retrying tasks are not with the dispatcher: cancelled without a cancel call.
    expect(host.cancels).toEqual([]);
    expect(phaseOf(run, 'b')).toBe('Cancelled');
  });

  it('fails at once on a non-retryable error', () => {
    const { run, host } = newRun({
      pool: 'p',
      retryPolicy: { maxAttempts: 5 },
      tasks: [
        { name: 'a', handler: 'h' },
        { name: 'b', handler: 'h' },
      ],
    });
    run.step();
    started(run, 'a');
    started(run, 'b');
    failAttempt(run, 'a', 'bad input', false);
    expect(phaseOf(run, 'a')).toBe('Failed');
    expect(rec(run, 'a').message).toBe('failed (not retryable): bad input');
    expect(run.phase).toBe('Failed');
    expect(run.message).toBe('task a failed (not retryable): bad input');
    expect(host.cancels).toEqual([{ task: 'b', reason: 'task a failed (not retryable): bad input' }]);
    expect(run.status().phase).toBe('Failed');
    expect(run.status().outputs).toBeUndefined();
  });

  it('treats a failure with no error as non-retryable "failed"', () => {
    const { run } = newRun({ pool: 'p', tasks: [{ name: 'a', handler: 'h' }] });
    run.step();
    committed(run, 'a', { ok: false });
    expect(run.message).toBe('task a failed (not retryable): failed');
  });

  it('counts a timedOut event as a retryable failure', () => {
    const { run, host } = newRun({ pool: 'p', tasks: [{ name: 'a', handler: 'h', timeoutSeconds: 5 }] });
    run.step();
    started(run, 'a');
    run.onEvent({ type: 'timedOut', ref: ref('a'), attempt: 1, agentId: 'agent-9' });
    expect(phaseOf(run, 'a')).toBe('Retrying');
    expect(rec(run, 'a').message).toBe('attempt 1 failed: attempt 1 exceeded its deadline; retrying in 1.0s');
    expect(run.audit.at(-1)).toEqual({
      type: 'TaskRetrying',
      task: 'a',
      attempt: 1,
      agentId: 'agent-9',
      detail: { message: 'attempt 1 exceeded its deadline', delayMs: 1000 },
    });
    host.advance(1000);
    run.tick();
    expect(host.submitted()).toEqual(['a#1', 'a#2']);
    expect(host.lastSubmit().timeoutSeconds).toBe(5);
    started(run, 'a');
    run.onEvent({ type: 'timedOut', ref: ref('a'), attempt: 2, agentId: 'agent-9' });
    host.advance(2000);
    run.tick();
    run.onEvent({ type: 'timedOut', ref: ref('a'), attempt: 3, agentId: 'agent-9' });
    expect(run.phase).toBe('Failed');
    expect(run.message).toBe('task a failed after 3 attempt(s): attempt 3 exceeded its deadline');
  });

  it('ignores a timedOut event for a task whose result was already committed', () => {
    // The dispatcher's deadline can fire while the attempt's result is being committed:
    // committed(ok) then timedOut for the same attempt. The success must stand.
    const { run, host } = newRun({
      pool: 'p',
      retryPolicy: { maxAttempts: 1 },
      tasks: [
        { name: 'a', handler: 'h', timeoutSeconds: 5 },
        { name: 'b', handler: 'h', dependsOn: ['a'] },
      ],
    });
    run.step();
    runTask(run, 'a', 'A');
    expect(phaseOf(run, 'a')).toBe('Succeeded');
    run.onEvent({ type: 'timedOut', ref: ref('a'), attempt: 1, agentId: 'agent-1' });
    expect(phaseOf(run, 'a')).toBe('Succeeded');
    expect(run.phase).toBe('Running');
    expect(host.submitted()).toEqual(['a#1', 'b#1']);
    expect(host.cancels).toEqual([]);
  });
});

describe('WorkflowRun: lost attempts', () => {
  const spec: WorkflowSpec = { pool: 'p', tasks: [{ name: 'a', handler: 'h' }] };

  it('lost: the dispatcher re-queued the task: next attempt, Queued, no new submit', () => {
    const { run, host } = newRun(spec);
    run.step();
    started(run, 'a');
    run.onEvent({ type: 'lost', ref: ref('a'), attempt: 1, agentId: 'agent-1', reason: 'the agent lease expired' });
    expect(phaseOf(run, 'a')).toBe('Queued');
    expect(attemptOf(run, 'a')).toBe(2);
    expect(host.submits).toHaveLength(1);
    expect(run.audit.at(-1)).toEqual({
      type: 'TaskLost',
      task: 'a',
      attempt: 1,
      agentId: 'agent-1',
      detail: { reason: 'the agent lease expired' },
    });
    started(run, 'a', 1); // the lost attempt: ignored
    expect(phaseOf(run, 'a')).toBe('Queued');
    started(run, 'a', 2, 'agent-2');
    expect(phaseOf(run, 'a')).toBe('Running');
    succeed(run, 'a', 'ok', 2);
    expect(run.phase).toBe('Succeeded');
    expect(run.status().tasks).toEqual([{ name: 'a', phase: 'Succeeded', attempts: 2 }]);
  });

  it('orphanLost: an adopted attempt is gone, so the run resubmits the next attempt', () => {
    const { run, host } = newRun(spec);
    run.step();
    started(run, 'a');
    run.onEvent({ type: 'orphanLost', ref: ref('a'), attempt: 1, agentId: 'agent-1' });
    expect(host.submitted()).toEqual(['a#1', 'a#2']);
    expect(phaseOf(run, 'a')).toBe('Queued');
    expect(run.audit.filter((x) => x.type === 'TaskLost')).toEqual([
      { type: 'TaskLost', task: 'a', attempt: 1, agentId: 'agent-1' },
    ]);
  });
});

describe('WorkflowRun: stale events', () => {
  function retried() {
    const { run, host } = newRun({ pool: 'p', tasks: [{ name: 'a', handler: 'h' }] });
    run.step();
    started(run, 'a');
    failAttempt(run, 'a', 'flaky', true, 1);
    host.advance(1000);
    run.tick();
    expect(attemptOf(run, 'a')).toBe(2);
    expect(phaseOf(run, 'a')).toBe('Queued');
    return { run, host };
  }

  it('ignores a retryable failure of an older attempt', () => {
    const { run, host } = retried();
    const v = run.version;
    failAttempt(run, 'a', 'old news', true, 1);
    expect(phaseOf(run, 'a')).toBe('Queued');
    expect(rec(run, 'a').retryAt).toBeUndefined();
    expect(run.version).toBe(v);
    expect(host.submits).toHaveLength(2);
  });

  it('accepts a final ok result of an older attempt', () => {
    const { run, host } = retried();
    succeed(run, 'a', { from: 'attempt 1' }, 1);
    expect(phaseOf(run, 'a')).toBe('Succeeded');
    expect(attemptOf(run, 'a')).toBe(2);
    expect(rec(run, 'a').output).toEqual({ from: 'attempt 1' });
    expect(run.phase).toBe('Succeeded');
    expect(run.audit).toContainEqual({ type: 'TaskSucceeded', task: 'a', attempt: 1, agentId: 'agent-1' });
    // A later result of the current attempt changes nothing.
    succeed(run, 'a', 'second', 2);
    expect(rec(run, 'a').output).toEqual({ from: 'attempt 1' });
    expect(host.submits).toHaveLength(2);
  });

  it('accepts a non-retryable failure of an older attempt (it is final)', () => {
    const { run } = retried();
    failAttempt(run, 'a', 'fatal', false, 1);
    expect(phaseOf(run, 'a')).toBe('Failed');
    expect(run.message).toBe('task a failed (not retryable): fatal');
  });

  it('ignores events for unknown tasks', () => {
    const { run, host } = retried();
    const v = run.version;
    succeed(run, 'zzz', 1, 1);
    run.onEvent({ type: 'orphanLost', ref: ref('zzz'), attempt: 1, agentId: 'x' });
    expect(run.version).toBe(v);
    expect(host.submits).toHaveLength(2);
  });
});

describe('WorkflowRun: spawned children', () => {
  const spec: WorkflowSpec = {
    pool: 'p',
    tasks: [
      { name: 'p', handler: 'plan', pool: 'planners' },
      { name: 'q', handler: 'next', dependsOn: ['p'], input: { v: '${{ tasks.p.output }}' } },
    ],
  };
  const children = [
    { name: 'c1', handler: 'child', input: { n: 1 }, cost: 2 },
    { name: 'c2', handler: 'child', input: { n: 2 }, cost: 1 },
  ];
  const spawn = (run: WorkflowRun, attempt = 1) => run.onEvent({ type: 'spawn', ref: ref('p'), attempt, children });

  it('submits children as parent~child and keeps the parent Running until they all succeed', () => {
    const { run, host } = newRun(spec);
    run.step();
    started(run, 'p');
    spawn(run);
    expect(host.submits.slice(1)).toStrictEqual([
      { ref: ref('p~c1'), pool: 'planners', handler: 'child', input: { n: 1 }, attempt: 1, cost: 2, priority: 0 },
      { ref: ref('p~c2'), pool: 'planners', handler: 'child', input: { n: 2 }, attempt: 1, cost: 1, priority: 0 },
    ]);
    expect(rec(run, 'p').children).toEqual(['p~c1', 'p~c2']);
    expect(rec(run, 'p~c1')).toMatchObject({ template: 'p', parent: 'p', phase: 'Queued', handler: 'child' });
    expect(run.audit.at(-3)).toEqual({ type: 'TaskSpawned', task: 'p', detail: { children: ['c1', 'c2'] } });

    succeed(run, 'p', 'P');
    expect(phaseOf(run, 'p')).toBe('Running');
    expect(rec(run, 'p').message).toBe('waiting for 2 child task(s)');
    expect(rec(run, 'p').output).toBe('P');
    expect(host.submits).toHaveLength(3);
    // Its own result is in: another commit is ignored.
    succeed(run, 'p', 'other');
    expect(rec(run, 'p').output).toBe('P');

    runTask(run, 'p~c2', 'C2');
    expect(phaseOf(run, 'p')).toBe('Running');
    expect(rec(run, 'p').message).toBe('waiting for 1 child task(s)');
    expect(run.status().tasks?.[0]).toEqual({
      name: 'p',
      phase: 'Running',
      attempts: 1,
      message: '1/3 succeeded, 1 running, 1 queued, 0 failed',
    });
    runTask(run, 'p~c1', 'C1');
    expect(phaseOf(run, 'p')).toBe('Succeeded');
    expect(rec(run, 'p').message).toBeUndefined();
    expect(host.lastSubmit()).toMatchObject({ ref: ref('q'), input: { v: 'P' } });
    runTask(run, 'q', 'Q');
    expect(run.phase).toBe('Succeeded');
    expect(run.status().progressSummary).toBe('4/4');
  });

  it('succeeds the parent at once when its children finished before its own result', () => {
    const { run } = newRun(spec);
    run.step();
    started(run, 'p');
    spawn(run);
    runTask(run, 'p~c1', 1);
    runTask(run, 'p~c2', 2);
    expect(phaseOf(run, 'p')).toBe('Running');
    succeed(run, 'p', 'P');
    expect(phaseOf(run, 'p')).toBe('Succeeded');
    expect(phaseOf(run, 'q')).toBe('Queued');
  });

  it('does not duplicate children when a retried parent spawns them again', () => {
    const { run, host } = newRun(spec);
    run.step();
    started(run, 'p');
    spawn(run, 1);
    failAttempt(run, 'p', 'flaky', true);
    host.advance(1000);
    run.tick();
    started(run, 'p');
    spawn(run, 2);
    expect(host.submitted()).toEqual(['p#1', 'p~c1#1', 'p~c2#1', 'p#2']);
    expect(rec(run, 'p').children).toEqual(['p~c1', 'p~c2']);
    expect(run.counts().total).toBe(4);
  });

  it('fails the workflow when a child fails', () => {
    const { run, host } = newRun(spec);
    run.step();
    started(run, 'p');
    spawn(run);
    started(run, 'p~c2');
    failAttempt(run, 'p~c1', 'nope', false);
    expect(run.phase).toBe('Failed');
    expect(run.message).toBe('task p~c1 failed (not retryable): nope');
    expect(host.cancels).toEqual([
      { task: 'p', reason: 'task p~c1 failed (not retryable): nope' },
      { task: 'p~c2', reason: 'task p~c1 failed (not retryable): nope' },
    ]);
    expect(phaseOf(run, 'p')).toBe('Cancelled');
    expect(phaseOf(run, 'q')).toBe('Cancelled');
  });

  it('retries a child under its parent template policy', () => {
    const { run, host } = newRun({
      pool: 'p',
      tasks: [{ name: 'p', handler: 'plan', retryPolicy: { maxAttempts: 2, backoff: { initialSeconds: 4 } } }],
    });
    run.step();
    run.onEvent({
      type: 'spawn',
      ref: ref('p'),
      attempt: 1,
      children: [{ name: 'c1', handler: 'child', input: null, cost: 1 }],
    });
    failAttempt(run, 'p~c1', 'flaky', true);
    expect(rec(run, 'p~c1').retryAt).toBe(T0 + 4000);
    host.advance(4000);
    run.tick();
    expect(host.submitted()).toEqual(['p#1', 'p~c1#1', 'p~c1#2']);
    failAttempt(run, 'p~c1', 'flaky', true);
    expect(run.message).toBe('task p~c1 failed after 2 attempt(s): flaky');
  });
});

describe('WorkflowRun: suspend', () => {
  const spec: WorkflowSpec = {
    pool: 'p',
    tasks: [
      { name: 'a', handler: 'h' },
      { name: 'b', handler: 'h' },
      { name: 'c', handler: 'h' },
      { name: 'd', handler: 'h', dependsOn: ['a'] },
    ],
  };

  it('cancels queued work back to Pending, starts nothing while suspended, and resumes', () => {
    const { run, host } = newRun(spec);
    run.step();
    started(run, 'a');
    run.setSuspended(true);
    expect(run.phase).toBe('Suspended');
    expect(run.message).toBe('spec.suspend is true: no new tasks start');
    expect(host.cancels).toEqual([
      { task: 'b', reason: 'workflow suspended' },
      { task: 'c', reason: 'workflow suspended' },
    ]);
    expect(phaseOf(run, 'a')).toBe('Running');
    expect(phaseOf(run, 'b')).toBe('Pending');
    expect(phaseOf(run, 'c')).toBe('Pending');
    // Running work finishes; nothing new starts.
    succeed(run, 'a', 'A');
    expect(phaseOf(run, 'a')).toBe('Succeeded');
    expect(phaseOf(run, 'd')).toBe('Pending');
    run.tick();
    expect(host.submits).toHaveLength(3);
    run.setSuspended(true); // no change
    expect(host.cancels).toHaveLength(2);

    run.setSuspended(false);
    expect(run.phase).toBe('Running');
    expect(run.message).toBe('');
    expect(host.submitted()).toEqual(['a#1', 'b#1', 'c#1', 'b#2', 'c#2', 'd#1']);
    expect(host.submits.at(-1)?.input).toEqual({});
    expect(run.audit.filter((x) => x.type.startsWith('Workflow')).map((x) => x.type)).toEqual([
      'WorkflowStarted',
      'WorkflowRunning',
      'WorkflowSuspended',
      'WorkflowRunning',
    ]);
  });

  it('suspended before the first step submits nothing until resumed', () => {
    const { run, host } = newRun(spec);
    run.setSuspended(true);
    run.step();
    expect(run.phase).toBe('Suspended');
    expect(host.submits).toEqual([]);
    run.setSuspended(false);
    expect(host.submitted()).toEqual(['a#1', 'b#1', 'c#1']);
  });

  it('ignores suspension once finished', () => {
    const { run, host } = newRun({ pool: 'p', tasks: [{ name: 'a', handler: 'h' }] });
    run.step();
    runTask(run, 'a', 1);
    run.setSuspended(true);
    expect(run.phase).toBe('Succeeded');
    expect(host.cancels).toEqual([]);
  });
});

describe('WorkflowRun: workflow timeout and stop', () => {
  it('fails the run after timeoutSeconds and cancels active tasks', () => {
    const { run, host } = newRun({
      pool: 'p',
      timeoutSeconds: 60,
      tasks: [
        { name: 'a', handler: 'h' },
        { name: 'b', handler: 'h', dependsOn: ['a'] },
      ],
    });
    run.step();
    started(run, 'a');
    expect(run.nextWake()).toBe(T0 + 60_001);
    host.advance(60_000);
    run.tick();
    expect(run.phase).toBe('Running');
    host.advance(1);
    run.tick();
    expect(run.phase).toBe('Failed');
    expect(run.message).toBe('the workflow exceeded its timeout of 60s');
    expect(run.reason).toBe('Timeout');
    expect(run.finishedAt).toBe(T0 + 60_001);
    expect(host.cancels).toEqual([{ task: 'a', reason: 'the workflow exceeded its timeout of 60s' }]);
    expect(phaseOf(run, 'a')).toBe('Cancelled');
    expect(phaseOf(run, 'b')).toBe('Cancelled');
    expect(run.nextWake()).toBeUndefined();
    expect(run.status().finishedAt).toBe(isoAt(T0 + 60_001));
  });

  it('nextWake is the earlier of a retry and the deadline', () => {
    const { run, host } = newRun({ pool: 'p', timeoutSeconds: 2, tasks: [{ name: 'a', handler: 'h' }] });
    run.step();
    expect(run.nextWake()).toBe(T0 + 2001);
    failAttempt(run, 'a', 'x', true);
    expect(run.nextWake()).toBe(T0 + 1000);
    host.advance(1000);
    run.tick();
    expect(run.nextWake()).toBe(T0 + 2001);
  });

  it("stop('reason') cancels the run and its active tasks", () => {
    const { run, host } = newRun({
      pool: 'p',
      inputs: { xs: [1] },
      tasks: [
        { name: 'a', handler: 'h' },
        { name: 'b', handler: 'h' },
        { name: 'c', handler: 'h', dependsOn: ['a'] },
        { name: 'f', handler: 'h', dependsOn: ['a'], forEach: 'inputs.xs' },
      ],
    });
    run.step();
    started(run, 'a');
    host.advance(5000);
    run.stop('user asked');
    expect(run.phase).toBe('Cancelled');
    expect(run.message).toBe('user asked');
    expect(run.finished).toBe(true);
    expect(run.finishedAt).toBe(T0 + 5000);
    expect(host.cancels).toEqual([
      { task: 'a', reason: 'user asked' },
      { task: 'b', reason: 'user asked' },
    ]);
    expect(run.allRecords().map((r) => [r.name, r.phase])).toEqual([
      ['a', 'Cancelled'],
      ['b', 'Cancelled'],
      ['c', 'Cancelled'],
    ]);
    expect(run.audit.filter((x) => x.type === 'TaskCancelled')).toEqual([
      { type: 'TaskCancelled', task: 'a', attempt: 1, detail: { reason: 'user asked' } },
      { type: 'TaskCancelled', task: 'b', attempt: 1, detail: { reason: 'user asked' } },
      { type: 'TaskCancelled', task: 'c', attempt: 0, detail: { reason: 'user asked' } },
    ]);
    expect(run.audit.at(-1)).toEqual({
      type: 'WorkflowCancelled',
      detail: { message: 'user asked', reason: 'Cancelled' },
    });
    expect(run.status().tasks?.map((t) => t.phase)).toEqual(['Cancelled', 'Cancelled', 'Cancelled', 'Cancelled']);
    // The run record keeps milliseconds (a restored deadline is computed from it).
    expect(run.runRecord()).toEqual({
      uid: UID,
      startedAt: new Date(T0).toISOString(),
      finishedAt: new Date(T0 + 5000).toISOString(),
      phase: 'Cancelled',
      message: 'user asked',
      reason: 'Cancelled',
      expanded: {},
      specHash: specHash(run.spec),
    });
    // Stopping again, or stepping, does nothing.
    run.stop('again', 'Failed');
    run.step();
    expect(run.phase).toBe('Cancelled');
    expect(host.cancels).toHaveLength(2);
  });
});

describe('WorkflowRun: status', () => {
  it('summarises a fan-out with counts and the first failing instance', () => {
    const { run, host } = newRun({
      pool: 'p',
      inputs: { xs: [1, 2, 3, 4] },
      tasks: [{ name: 'f', handler: 'h', forEach: 'inputs.xs' }],
    });
    expect(run.status().tasks).toEqual([{ name: 'f', phase: 'Pending' }]);
    expect(run.counts()).toEqual({ total: 1, succeeded: 0, failed: 0, running: 0, queued: 0 });
    run.step();
    runTask(run, 'f.0', 0);
    started(run, 'f.1');
    failAttempt(run, 'f.2', 'flaky', true);
    host.advance(1000);
    const status = run.status();
    expect(status.tasks).toEqual([
      {
        name: 'f',
        phase: 'Running',
        attempts: 1,
        message: '1/4 succeeded, 1 running, 1 queued, 0 failed; f.2: attempt 1 failed: flaky; retrying in 1.0s',
      },
    ]);
    expect(status.progress).toEqual({ total: 4, succeeded: 1, failed: 0, running: 1, queued: 1 });
    expect(status.progressSummary).toBe('1/4');
    run.tick();
    started(run, 'f.2');
    expect(run.status().tasks?.[0]?.attempts).toBe(2);
  });

  it('reports Retrying for a single task waiting for its next attempt', () => {
    const { run } = newRun({ pool: 'p', tasks: [{ name: 'a', handler: 'h' }] });
    run.step();
    failAttempt(run, 'a', 'flaky', true);
    expect(run.status().tasks).toEqual([
      { name: 'a', phase: 'Retrying', attempts: 1, message: 'attempt 1 failed: flaky; retrying in 1.0s' },
    ]);
  });

  it('replaces outputs larger than the budget with a truncation marker', () => {
    const big = 'x'.repeat(MAX_STATUS_OUTPUT_BYTES);
    const half = 'y'.repeat(MAX_STATUS_OUTPUT_BYTES / 2);
    const { run } = newRun({
      pool: 'p',
      tasks: [
        { name: 'small', handler: 'h' },
        { name: 'big', handler: 'h' },
        { name: 'half1', handler: 'h' },
        { name: 'half2', handler: 'h' },
        { name: 'mid', handler: 'h', dependsOn: [] },
        { name: 'inner', handler: 'h' },
        { name: 'leaf', handler: 'h', dependsOn: ['inner'] },
      ],
    });
    run.step();
    runTask(run, 'small', { ok: 1 });
    runTask(run, 'big', big);
    runTask(run, 'half1', half);
    runTask(run, 'half2', half);
    runTask(run, 'mid', null);
    runTask(run, 'inner', big);
    runTask(run, 'leaf', 'L');
    expect(run.phase).toBe('Succeeded');
    const note = `too large for the status; kept in etcd under runs/${NS}/${WF}`;
    const bytes = (v: unknown) => Buffer.byteLength(JSON.stringify(v));
    expect(run.status().outputs).toEqual({
      small: { ok: 1 },
      big: { truncated: true, bytes: MAX_STATUS_OUTPUT_BYTES + 2, note },
      half1: half,
      // The budget is shared: the second half no longer fits.
      half2: { truncated: true, bytes: bytes(half), note },
      mid: null,
      leaf: 'L',
    });
    // The record keeps the full output.
    expect(rec(run, 'big').output).toBe(big);
  });
});

describe('WorkflowRun: restore after a leader change', () => {
  const spec: WorkflowSpec = {
    pool: 'p',
    inputs: { xs: ['u', 'v'] },
    tasks: [
      { name: 'a', handler: 'h', input: { k: 1 } },
      { name: 'b', handler: 'h', dependsOn: ['a'], input: { a: '${{ tasks.a.output }}' } },
      { name: 'c', handler: 'h' },
      { name: 'f', handler: 'h', forEach: 'inputs.xs', input: { x: '${{ item }}' } },
      { name: 'g', handler: 'h', dependsOn: ['c'] },
    ],
  };

  /** a Succeeded, b Queued, c Running, f.0 Succeeded, f.1 Retrying, g Pending. */
  function progressed() {
    const { run, host } = newRun(spec);
    run.step();
    runTask(run, 'a', 'A');
    started(run, 'c');
    runTask(run, 'f.0', 'F0');
    failAttempt(run, 'f.1', 'flaky', true);
    host.advance(500);
    expect(run.allRecords().map((r) => [r.name, r.phase, r.attempt])).toEqual([
      ['a', 'Succeeded', 1],
      ['b', 'Queued', 1],
      ['c', 'Running', 1],
      ['g', 'Pending', 0],
      ['f.0', 'Succeeded', 1],
      ['f.1', 'Retrying', 1],
    ]);
    return { run, host, loaded: { run: run.runRecord(), tasks: run.allRecords() } };
  }

  it('keeps the records free of in-memory flags', () => {
    const { loaded } = progressed();
    expect(loaded.run).toEqual({
      uid: UID,
      startedAt: new Date(T0).toISOString(),
      phase: 'Running',
      expanded: { f: 2 },
      specHash: expect.stringMatching(/^[0-9a-f]{16}$/),
    });
    expect(loaded.tasks.find((t) => t.name === 'b')).toStrictEqual({
      name: 'b',
      template: 'b',
      phase: 'Queued',
      attempt: 1,
      handler: 'h',
      pool: 'p',
      cost: 1,
      input: { a: 'A' },
    });
    expect(loaded.tasks.find((t) => t.name === 'f.1')).toStrictEqual({
      name: 'f.1',
      template: 'f',
      index: 1,
      phase: 'Retrying',
      attempt: 1,
      handler: 'h',
      pool: 'p',
      cost: 1,
      input: { x: 'v' },
      retryAt: T0 + 1000,
      message: 'attempt 1 failed: flaky; retrying in 1.0s',
    });
  });

  it('resubmits queued and running tasks the dispatcher does not track, under the same attempt number', () => {
    const { loaded } = progressed();
    const host = new FakeHost();
    host.time = T0 + 700;
    const { run } = newRun(spec, host, loaded);
    expect(run.phase).toBe('Running');
    expect(run.startedAt).toBe(T0);
    expect(run.audit).toEqual([{ type: 'RunResumed', detail: { tasks: 6 } }]);
    expect(host.trackedAsked).toEqual(['b', 'c']);
    run.step();
    // The same attempt: a surviving agent re-reports it and the dispatcher adopts it under that number.
    expect(host.submits.map((s) => [s.ref.task, s.attempt, s.input])).toEqual([
      ['b', 1, { a: 'A' }],
      ['c', 1, {}],
    ]);
    // The retry keeps its back-off.
    expect(run.nextWake()).toBe(T0 + 1000);
    host.time = T0 + 1000;
    run.tick();
    expect(host.submitted()).toEqual(['b#1', 'c#1', 'f.1#2']);
    expect(host.lastSubmit().input).toEqual({ x: 'v' });
    // The rest of the DAG carries on from the restored outputs.
    runTask(run, 'c', 'C');
    expect(host.submitted()).toEqual(['b#1', 'c#1', 'f.1#2', 'g#1']);
    runTask(run, 'b', 'B');
    runTask(run, 'f.1', 'F1');
    runTask(run, 'g', 'G');
    expect(run.phase).toBe('Succeeded');
    expect(run.status().outputs).toEqual({ b: 'B', f: ['F0', 'F1'], g: 'G' });
  });

  it('leaves tasks the dispatcher already tracks alone', () => {
    const { loaded } = progressed();
    const host = new FakeHost();
    host.isTracked = () => true;
    const { run } = newRun(spec, host, loaded);
    run.step();
    expect(host.submits).toEqual([]);
    expect(phaseOf(run, 'b')).toBe('Queued');
    expect(phaseOf(run, 'c')).toBe('Running');
    expect(attemptOf(run, 'c')).toBe(1);
    started(run, 'b', 1);
    succeed(run, 'b', 'B', 1);
    expect(phaseOf(run, 'b')).toBe('Succeeded');
  });

  it('restores skipped templates and a finished run', () => {
    const skipSpec: WorkflowSpec = {
      pool: 'p',
      tasks: [
        { name: 'a', handler: 'h', when: 'false' },
        { name: 'b', handler: 'h', dependsOn: ['a'] },
      ],
    };
    const first = newRun(skipSpec);
    first.run.step();
    expect(first.run.runRecord().expanded).toEqual({ a: -1 });
    const host = new FakeHost();
    const { run } = newRun(skipSpec, host, { run: first.run.runRecord(), tasks: first.run.allRecords() });
    run.step();
    expect(host.submitted()).toEqual(['b#1']);
    expect(run.status().tasks?.[0]).toEqual({ name: 'a', phase: 'Skipped' });

    runTask(run, 'b', 'B');
    expect(run.phase).toBe('Succeeded');
    const again = newRun(skipSpec, new FakeHost(), { run: run.runRecord(), tasks: run.allRecords() });
    expect(again.run.phase).toBe('Succeeded');
    expect(again.run.finished).toBe(true);
    expect(again.run.finishedAt).toBe(T0);
    again.run.step();
    expect(again.host.submits).toEqual([]);
  });

  it('starts fresh when the loaded run belongs to another uid', () => {
    const { loaded } = progressed();
    const host = new FakeHost();
    const { run } = newRun(spec, host, loaded, 'uid-2');
    expect(run.phase).toBe('Pending');
    expect(run.audit).toEqual([{ type: 'WorkflowStarted', detail: { tasks: 5 } }]);
    expect(host.trackedAsked).toEqual([]);
    run.step();
    expect(host.submitted()).toEqual(['a#1', 'c#1', 'f.0#1', 'f.1#1']);
    expect(run.runRecord().uid).toBe('uid-2');
  });

  it('a run restored while Suspended goes back to Running when resumed', () => {
    const { run: first } = newRun(spec);
    first.step();
    first.setSuspended(true);
    expect(first.phase).toBe('Suspended');
    const host = new FakeHost();
    const { run } = newRun(spec, host, { run: first.runRecord(), tasks: first.allRecords() });
    expect(run.phase).toBe('Suspended');
    run.setSuspended(false);
    run.step();
    expect(run.phase).toBe('Running');
    expect(host.submitted()).toEqual(['a#2', 'c#2', 'f.0#2', 'f.1#2']);
  });
});

describe('WorkflowRun: bookkeeping and audit', () => {
  it('marks changed records dirty and bumps the version', () => {
    const { run } = newRun({
      pool: 'p',
      tasks: [
        { name: 'a', handler: 'h' },
        { name: 'b', handler: 'h', dependsOn: ['a'] },
      ],
    });
    expect([...run.dirty]).toEqual(['a', 'b']);
    expect(run.runDirty).toBe(true);
    run.dirty.clear();
    run.runDirty = false;
    const v0 = run.version;
    run.step();
    expect([...run.dirty]).toEqual(['a']);
    expect(run.runDirty).toBe(true); // Pending -> Running
    expect(run.version).toBeGreaterThan(v0);
    run.dirty.clear();
    run.runDirty = false;
    const v1 = run.version;
    run.step();
    expect(run.version).toBe(v1);
    expect(run.dirty.size).toBe(0);
    runTask(run, 'a', 1);
    expect([...run.dirty].sort()).toEqual(['a', 'b']);
    expect(run.runDirty).toBe(false);
    expect(run.record('nope')).toBeUndefined();
  });

  it('records a simple run in order', () => {
    const { run, host } = newRun({
      pool: 'p',
      tasks: [
        { name: 'a', handler: 'h' },
        { name: 'b', handler: 'h', dependsOn: ['a'] },
      ],
    });
    run.step();
    started(run, 'a', 1, 'agent-1');
    failAttempt(run, 'a', 'flaky', true);
    host.advance(1000);
    run.tick();
    started(run, 'a', 2, 'agent-2');
    committed(run, 'a', { ok: true, output: 'A' }, 2, 'agent-2');
    started(run, 'b', 1, 'agent-1');
    succeed(run, 'b', 'B');
    expect(run.audit).toEqual([
      { type: 'WorkflowStarted', detail: { tasks: 2 } },
      { type: 'WorkflowRunning' },
      { type: 'TaskQueued', task: 'a', attempt: 1 },
      { type: 'TaskStarted', task: 'a', attempt: 1, agentId: 'agent-1' },
      { type: 'TaskRetrying', task: 'a', attempt: 1, agentId: 'agent-1', detail: { message: 'flaky', delayMs: 1000 } },
      { type: 'TaskQueued', task: 'a', attempt: 2 },
      { type: 'TaskStarted', task: 'a', attempt: 2, agentId: 'agent-2' },
      { type: 'TaskSucceeded', task: 'a', attempt: 2, agentId: 'agent-2' },
      { type: 'TaskQueued', task: 'b', attempt: 1 },
      { type: 'TaskStarted', task: 'b', attempt: 1, agentId: 'agent-1' },
      { type: 'TaskSucceeded', task: 'b', attempt: 1, agentId: 'agent-1' },
      { type: 'WorkflowSucceeded' },
    ]);
  });

  it('records a failing run in order', () => {
    const { run } = newRun({
      pool: 'p',
      tasks: [
        { name: 'a', handler: 'h' },
        { name: 'b', handler: 'h' },
        { name: 'c', handler: 'h', dependsOn: ['a'] },
      ],
    });
    run.step();
    started(run, 'a');
    failAttempt(run, 'a', 'broken', false);
    const reason = 'task a failed (not retryable): broken';
    expect(run.audit.slice(2)).toEqual([
      { type: 'TaskQueued', task: 'a', attempt: 1 },
      { type: 'TaskQueued', task: 'b', attempt: 1 },
      { type: 'TaskStarted', task: 'a', attempt: 1, agentId: 'agent-1' },
      { type: 'TaskFailed', task: 'a', attempt: 1, agentId: 'agent-1', detail: { message: 'broken' } },
      { type: 'TaskCancelled', task: 'b', attempt: 1, detail: { reason } },
      { type: 'TaskCancelled', task: 'c', attempt: 0, detail: { reason } },
      { type: 'WorkflowFailed', detail: { message: reason, reason: 'TaskFailed' } },
    ]);
  });
});

describe('WorkflowRun: bounded work', () => {
  const range = (n: number) => Array.from({ length: n }, (_, i) => i);
  const fanOut: WorkflowSpec = {
    pool: 'p',
    tasks: [
      { name: 'gen', handler: 'range' },
      {
        name: 'each',
        handler: 'h',
        dependsOn: ['gen'],
        forEach: 'tasks.gen.output.items',
        input: { i: '${{ item }}' },
      },
    ],
  };

  it('has the documented defaults', () => {
    expect(DEFAULT_RUN_LIMITS).toEqual({
      maxForEachItems: DEFAULT_MAX_FOREACH_ITEMS,
      maxSpawnedChildren: DEFAULT_MAX_SPAWNED_CHILDREN,
    });
    expect(DEFAULT_MAX_FOREACH_ITEMS).toBe(10_000);
    expect(DEFAULT_MAX_SPAWNED_CHILDREN).toBe(1_000);
  });

  it('fails a task whose forEach yields more items than the cap, naming the task, the length and the cap', () => {
    const { run, host } = newRun(fanOut, undefined, undefined, UID, { maxForEachItems: 3 });
    run.step();
    runTask(run, 'gen', { items: range(5) });
    const reason =
      "task each: spec.tasks[1].forEach: tasks.gen.output.items: yields 5 items, more than the 3 a forEach may have (the operator's --max-foreach-items)";
    expect(run.phase).toBe('Failed');
    expect(run.message).toBe(reason);
    expect(host.submitted()).toEqual(['gen#1']); // not one instance
    expect(run.status().tasks?.[1]).toEqual({
      name: 'each',
      phase: 'Failed',
      message: reason.slice('task each: '.length),
    });
    expect(run.audit).toContainEqual({ type: 'TaskFailed', task: 'each', detail: { message: reason.slice(11) } });
  });

  it('expands a forEach list exactly at the cap', () => {
    const { run, host } = newRun(fanOut, undefined, undefined, UID, { maxForEachItems: 3 });
    run.step();
    runTask(run, 'gen', { items: range(3) });
    expect(host.submitted()).toEqual(['gen#1', 'each.0#1', 'each.1#1', 'each.2#1']);
  });

  it('fails a task whose when spends the cost budget on an agent output, and only that workflow', () => {
    const spec: WorkflowSpec = {
      pool: 'p',
      tasks: [
        { name: 'gen', handler: 'range' },
        {
          name: 'check',
          handler: 'h',
          dependsOn: ['gen'],
          when: 'tasks.gen.output.all(a, tasks.gen.output.all(b, tasks.gen.output.all(c, a + b + c >= 0)))',
        },
      ],
    };
    const { run, host } = newRun(spec);
    const beside = newRun(fanOut);
    run.step();
    beside.run.step();
    runTask(run, 'gen', range(300));
    expect(run.phase).toBe('Failed');
    expect(run.message).toMatch(
      /^task check: spec\.tasks\[1\]\.when: tasks\.gen\.output\.all\(.*\): exceeded the cost budget of 500,000 CEL cost units of one expression/,
    );
    expect(rec(run, 'check')).toMatchObject({ phase: 'Failed', message: run.message.slice('task check: '.length) });
    expect(host.submitted()).toEqual(['gen#1']);
    // Another run goes on as usual.
    runTask(beside.run, 'gen', { items: range(2) });
    runTask(beside.run, 'each.0', 0);
    runTask(beside.run, 'each.1', 1);
    expect(beside.run.phase).toBe('Succeeded');
  });

  it('fails a fan-out whose inputs together spend the task budget, though each is within its own', () => {
    const spec: WorkflowSpec = {
      pool: 'p',
      tasks: [
        { name: 'gen', handler: 'range' },
        {
          name: 'each',
          handler: 'h',
          dependsOn: ['gen'],
          forEach: 'tasks.gen.output',
          // ~16 units per element of 1,000: ~16,000 per item, 16 million for the 1,000 items.
          input: { rank: '${{ tasks.gen.output.filter(x, x < item).size() }}' },
        },
      ],
    };
    const { run, host } = newRun(spec);
    run.step();
    runTask(run, 'gen', range(1000));
    expect(run.phase).toBe('Failed');
    expect(run.message).toMatch(
      /^task each: spec\.tasks\[1\]\.input\.rank: tasks\.gen\.output\.filter\(x, x < item\)\.size\(\): the expressions that start this task exceeded their cost budget of 5,000,000 CEL cost units, together \(forEach item \d+\)$/,
    );
    expect(host.submitted()).toEqual(['gen#1']);
    // No half expansion: the task shows the reason, not items cancelled.
    expect(run.status().tasks?.[1]).toEqual({ name: 'each', phase: 'Failed', message: run.message.slice(11) });
    expect(run.record('each.0')).toBeUndefined();
  });

  it('leaves the tasks after a costly step for the next tick', () => {
    // Each when costs ~450,000 units (300 × 300 elements visited, 5 units each): under one
    // expression's budget; after two, the step has spent more than that and stops.
    const when = 'inputs.xs.all(a, inputs.xs.all(b, true))';
    const spec: WorkflowSpec = {
      pool: 'p',
      inputs: { xs: range(300) },
      tasks: ['a', 'b', 'c'].map((name) => ({ name, handler: 'h', when })),
    };
    const { run, host } = newRun(spec);
    run.step();
    expect(host.submitted()).toEqual(['a#1', 'b#1']);
    expect(run.nextWake()).toBe(host.now());
    run.tick();
    expect(host.submitted()).toEqual(['a#1', 'b#1', 'c#1']);
    expect(run.nextWake()).toBeUndefined();
    expect(MAX_EXPRESSION_COST).toBeLessThan(2 * 450_000);
  });

  describe('spawned children', () => {
    const spec: WorkflowSpec = {
      pool: 'p',
      tasks: [
        { name: 'p', handler: 'plan', pool: 'planners' },
        { name: 'q', handler: 'next', dependsOn: ['p'] },
      ],
    };
    const kids = (names: string[], cost = 1) => names.map((name) => ({ name, handler: 'child', input: null, cost }));
    const spawn = (run: WorkflowRun, task: string, names: string[], cost = 1) =>
      run.onEvent({ type: 'spawn', ref: ref(task), attempt: attemptOf(run, task), children: kids(names, cost) });

    it('fails the parent when it spawns more than the cap, naming the count and the cap', () => {
      const { run, host } = newRun(spec, undefined, undefined, UID, { maxSpawnedChildren: 3 });
      run.step();
      started(run, 'p');
      spawn(run, 'p', ['c1', 'c2']);
      expect(host.submitted()).toEqual(['p#1', 'p~c1#1', 'p~c2#1']);
      spawn(run, 'p', ['c3', 'c4']);
      const reason =
        "spawning 2 more children would make 4 under task p (descendants included), more than the 3 one task may spawn (the operator's --max-spawned-children)";
      expect(run.phase).toBe('Failed');
      expect(run.message).toBe(`task p: ${reason}`);
      expect(rec(run, 'p')).toMatchObject({ phase: 'Failed', message: reason });
      expect(host.submitted()).toEqual(['p#1', 'p~c1#1', 'p~c2#1']);
      // The parent's attempt is cancelled on its agent, and the children it had with the run.
      expect(host.cancels.map((c) => c.task)).toEqual(['p', 'p~c1', 'p~c2']);
      expect(host.cancels[0]?.reason).toBe(reason);
      expect(run.audit).toContainEqual({ type: 'SpawnRefused', task: 'p', attempt: 1, detail: { reason } });
    });

    it('counts the children of children against the task of the spec', () => {
      const { run } = newRun(spec, undefined, undefined, UID, { maxSpawnedChildren: 3 });
      run.step();
      started(run, 'p');
      spawn(run, 'p', ['c1']);
      started(run, 'p~c1');
      spawn(run, 'p~c1', ['g1', 'g2']);
      expect(run.phase).toBe('Running');
      started(run, 'p~c1~g1');
      spawn(run, 'p~c1~g1', ['x']);
      expect(run.phase).toBe('Failed');
      expect(run.message).toBe(
        "task p~c1~g1: spawning 1 more children would make 4 under task p (descendants included), more than the 3 one task may spawn (the operator's --max-spawned-children)",
      );
    });

    it('keeps the count across a leader change', () => {
      const first = newRun(spec, undefined, undefined, UID, { maxSpawnedChildren: 3 });
      first.run.step();
      started(first.run, 'p');
      spawn(first.run, 'p', ['c1', 'c2', 'c3']);
      const loaded = { run: first.run.runRecord(), tasks: first.run.allRecords() };
      const host = new FakeHost();
      host.isTracked = () => true;
      const { run } = newRun(spec, host, loaded, UID, { maxSpawnedChildren: 3 });
      run.step();
      spawn(run, 'p', ['c1', 'c2', 'c3']); // the same children again: nothing new
      expect(run.phase).toBe('Running');
      spawn(run, 'p', ['c4']);
      expect(run.phase).toBe('Failed');
      expect(run.message).toContain('would make 4 under task p');
    });

    it('refuses a child that costs more slots than an agent of the pool has', () => {
      const { run, host } = newRun(spec);
      host.capacities.set('planners', 4);
      run.step();
      started(run, 'p');
      spawn(run, 'p', ['fits'], 4);
      expect(host.submitted()).toEqual(['p#1', 'p~fits#1']);
      spawn(run, 'p', ['big'], 8);
      const reason =
        'spawned child "big" costs 8 slots, more than an agent of AgentPool "planners" has (spec.agent.capacity 4): it could never run';
      expect(run.message).toBe(`task p: ${reason}`);
      expect(rec(run, 'p')).toMatchObject({ phase: 'Failed', message: reason });
      expect(host.submitted()).toEqual(['p#1', 'p~fits#1']);
    });

    it('takes any cost when the pool is unknown (the dispatcher queues it)', () => {
      const { run, host } = newRun(spec);
      run.step();
      started(run, 'p');
      spawn(run, 'p', ['big'], 64);
      expect(host.lastSubmit()).toMatchObject({ ref: ref('p~big'), cost: 64 });
    });
  });
});

describe('WorkflowRun: failure reasons, retry, waiting and progress', () => {
  const chain: WorkflowSpec = {
    pool: 'p',
    retryPolicy: { maxAttempts: 2, backoff: { initialSeconds: 1 } },
    tasks: [
      { name: 'a', handler: 'h' },
      { name: 'fan', handler: 'h', dependsOn: ['a'], forEach: '[0, 1, 2]', input: { i: '${{ item }}' } },
      { name: 'z', handler: 'h', dependsOn: ['fan'] },
    ],
  };

  /** Runs `chain` until fan.1 fails for good (not retryable) and the run is Failed. */
  function failedChain(): { run: WorkflowRun; host: FakeHost } {
    const { run, host } = newRun(chain);
    run.step();
    runTask(run, 'a', 'A');
    runTask(run, 'fan.0', 0);
    started(run, 'fan.1');
    failAttempt(run, 'fan.1', 'boom', false);
    return { run, host };
  }

  it('names why a run failed: TaskFailed, ExpressionFailed, Cancelled', () => {
    const { run } = failedChain();
    expect(run.phase).toBe('Failed');
    expect(run.reason).toBe('TaskFailed');
    expect(run.runRecord()).toMatchObject({ phase: 'Failed', reason: 'TaskFailed' });
    const bad = newRun({ pool: 'p', tasks: [{ name: 'a', handler: 'h', input: { x: '${{ inputs.nope }}' } }] }).run;
    bad.step();
    expect(bad.reason).toBe('ExpressionFailed');
    const cancelled = newRun({ pool: 'p', tasks: [{ name: 'a', handler: 'h' }] }).run;
    cancelled.step();
    cancelled.stop('by hand');
    expect([cancelled.phase, cancelled.reason]).toEqual(['Cancelled', 'Cancelled']);
  });

  it('retry re-runs only the failed and cancelled instances, keeps successes, and counts attempts afresh', () => {
    const { run, host } = failedChain();
    expect(phaseOf(run, 'fan.2')).toBe('Cancelled');
    const targets = run.retryTargets().sort();
    expect(targets).toEqual(['fan.1', 'fan.2', 'z']);
    host.submits.length = 0;
    host.advance(5_000);
    run.retry('t1', targets);
    expect(run.phase).toBe('Running');
    expect(run.reason).toBeUndefined();
    expect(run.finishedAt).toBeUndefined();
    expect(run.retries).toBe(1);
    expect(run.lastRetry).toMatchObject({ token: 't1', started: true, tasks: 3 });
    // The failed item runs as attempt 2; the cancelled one that had been queued runs again too.
    expect(host.submitted().sort()).toEqual(['fan.1#2', 'fan.2#2']);
    expect(phaseOf(run, 'a')).toBe('Succeeded');
    expect(phaseOf(run, 'fan.0')).toBe('Succeeded');
    // maxAttempts 2 counts from the retry: attempt 2 failing retryably is retried once more.
    started(run, 'fan.1');
    failAttempt(run, 'fan.1', 'again', true);
    expect(phaseOf(run, 'fan.1')).toBe('Retrying');
    runTask(run, 'fan.2', 2);
    host.advance(1_000);
    run.tick();
    expect(host.lastSubmit().attempt).toBe(3);
    runTask(run, 'fan.1', 1);
    runTask(run, 'z', 'Z');
    expect(run.phase).toBe('Succeeded');
    const record = run.runRecord();
    expect(record).toMatchObject({ retries: 1, lastRetry: { token: 't1', started: true } });
    // Restored by a new leader, the run keeps its retry count and answered token.
    const again = newRun(chain, new FakeHost(), { run: record, tasks: run.allRecords() }).run;
    expect(again.retries).toBe(1);
    expect(again.lastRetry?.token).toBe('t1');
    expect(rec(again, 'fan.1').attemptBase).toBe(1);
  });

  it('a retried run gets its workflow timeout afresh', () => {
    const { run, host } = newRun({ pool: 'p', timeoutSeconds: 10, tasks: [{ name: 'a', handler: 'h' }] });
    run.step();
    host.advance(10_001);
    run.tick();
    expect(run.reason).toBe('Timeout');
    host.advance(60_000);
    run.retry('t', run.retryTargets());
    expect(run.phase).toBe('Running');
    host.advance(9_000);
    run.tick();
    expect(run.phase).toBe('Running');
    host.advance(1_002);
    run.tick();
    expect(run.message).toBe('the workflow exceeded its timeout of 10s (counted from its latest retry)');
  });

  it('refuseRetry records why without changing the run', () => {
    const { run } = newRun({ pool: 'p', tasks: [{ name: 'a', handler: 'h' }] });
    run.step();
    const v = run.version;
    run.refuseRetry('x', 'the run is Running: only a Failed or Cancelled run can be retried');
    expect(run.phase).toBe('Running');
    expect(run.version).toBeGreaterThan(v);
    expect(run.lastRetry).toMatchObject({ token: 'x', started: false, tasks: 0 });
    expect(run.audit.at(-1)).toMatchObject({ type: 'RetryRefused' });
  });

  it('reports unserved queued work only after the grace period, and forgets it once served', () => {
    const { run, host } = newRun({ pool: 'p', tasks: [{ name: 'a', handler: 'h' }] });
    run.step();
    expect(run.queuedNeeds()).toEqual([{ pool: 'p', handler: 'h', tasks: 1 }]);
    const unserved = [{ pool: 'p', handler: 'h', tasks: 1, agents: 2, served: ['x'] }];
    run.setUnserved(unserved);
    expect(run.waiting()).toEqual([]);
    const v = run.version;
    host.advance(UNSERVED_GRACE_MS);
    run.setUnserved(unserved);
    expect(run.waiting()).toEqual(unserved);
    expect(run.version).toBe(v + 1);
    run.setUnserved(unserved);
    expect(run.version).toBe(v + 1); // nothing new to show
    run.setUnserved([]);
    expect(run.waiting()).toEqual([]);
    expect(run.version).toBe(v + 2);
    run.setSuspended(true);
    run.setUnserved(unserved);
    host.advance(UNSERVED_GRACE_MS);
    run.setUnserved(unserved);
    expect(run.waiting()).toEqual([]); // a suspended run waits for nobody
  });

  it('shows the latest progress of a running attempt in its task summary, without saving it', () => {
    const { run } = newRun({ pool: 'p', tasks: [{ name: 'a', handler: 'h' }] });
    run.step();
    started(run, 'a');
    run.onEvent({ type: 'progress', ref: ref('a'), attempt: 1, fraction: 0.25, message: 'fetching' });
    expect(run.status().tasks?.[0]).toMatchObject({ name: 'a', phase: 'Running', message: '25% fetching' });
    expect(rec(run, 'a')).not.toHaveProperty('progress');
    // A stale attempt's progress is ignored.
    run.onEvent({ type: 'progress', ref: ref('a'), attempt: 0, fraction: 0.9, message: 'old' });
    expect(run.status().tasks?.[0]?.message).toBe('25% fetching');
  });

  it('specHash ignores the fields applied to a started run (suspend, ttlSecondsAfterFinished) and key order', () => {
    const spec: WorkflowSpec = { pool: 'p', tasks: [{ name: 'a', handler: 'h', input: { x: 1, y: 2 } }] };
    const same: WorkflowSpec = {
      tasks: [{ input: { y: 2, x: 1 }, handler: 'h', name: 'a' }],
      pool: 'p',
      suspend: true,
      ttlSecondsAfterFinished: 60,
    };
    expect(specHash(same)).toBe(specHash(spec));
    expect(specHash({ ...spec, pool: 'q' })).not.toBe(specHash(spec));
  });
});
