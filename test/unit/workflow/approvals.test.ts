import { describe, expect, it } from 'vitest';
import { validateWorkflowSpec } from '../../../src/api/validate.ts';
import type { WorkflowSpec } from '../../../src/api/workflow.ts';
import type { TaskSpec } from '../../../src/dispatcher/types.ts';
import type { TaskRef } from '../../../src/state/index.ts';
import { type RunHost, WorkflowRun } from '../../../src/workflow/run.ts';

// Approval tasks in the engine: a task that waits for a person, holding no slot, decided once,
// timed out as its spec says, and resumed by a new leader from its records.

const T0 = Date.UTC(2025, 0, 1, 12, 0, 0);

class Host implements RunHost {
  time = T0;
  readonly submits: TaskSpec[] = [];
  submit(spec: TaskSpec): void {
    this.submits.push(spec);
  }
  cancel(): void {}
  tracked(_ref: TaskRef): boolean {
    return false;
  }
  now(): number {
    return this.time;
  }
}

const alice = { username: 'alice', groups: ['system:authenticated'] };

function spec(approval: NonNullable<WorkflowSpec['tasks'][number]['approval']>): WorkflowSpec {
  return {
    pool: 'agents',
    inputs: { what: 'v2' },
    tasks: [
      { name: 'review', approval },
      { name: 'ship', handler: 'ship', dependsOn: ['review'] },
    ],
  };
}

function started(s: WorkflowSpec, host = new Host()) {
  const run = new WorkflowRun({ namespace: 'ns', name: 'wf', uid: 'u', spec: s }, host);
  run.step();
  return { run, host };
}

describe('an approval task', () => {
  it('waits with its message rendered, submits nothing, and holds no slot', () => {
    const { run, host } = started(spec({ message: 'ship ${{ inputs.what }}?' }));
    expect(run.record('review')).toMatchObject({ phase: 'Waiting', approval: { message: 'ship v2?' } });
    expect(run.record('review')?.message).toBe('waiting for approval: ship v2?');
    expect(host.submits).toEqual([]);
    expect(run.counts()).toMatchObject({ running: 0, queued: 0 });
    expect(run.approvals()).toEqual([{ task: 'review', message: 'ship v2?' }]);
    expect(run.status().tasks?.[0]).toMatchObject({ name: 'review', phase: 'Waiting' });
    expect(run.audit.map((a) => a.type)).toContain('ApprovalRequested');
  });

  it('on approve succeeds with the decision as output, and the next task is queued', () => {
    const { run, host } = started(spec({}));
    host.time += 5_000;
    expect(run.decide('review', { decision: 'Approve', user: alice, message: 'LGTM' })).toEqual({ ok: true });
    expect(run.record('review')).toMatchObject({
      phase: 'Succeeded',
      message: 'approved by alice: LGTM',
      output: { approved: true, user: 'alice', message: 'LGTM', decidedAt: new Date(T0 + 5_000).toISOString() },
    });
    expect(host.submits.map((s) => s.ref.task)).toEqual(['ship']);
    expect(run.audit.find((a) => a.type === 'TaskApproved')).toMatchObject({
      task: 'review',
      detail: { user: 'alice', message: 'LGTM' },
    });
    expect(run.approvals()).toEqual([]);
    // Once decided, it is decided.
    expect(run.decide('review', { decision: 'Reject', user: alice })).toMatchObject({ ok: false, code: 'NotWaiting' });
  });

  it('on reject fails itself and the run with the reviewer’s words', () => {
    const { run, host } = started(spec({}));
    run.decide('review', { decision: 'Reject', user: alice, message: 'not now' });
    expect(run.record('review')).toMatchObject({ phase: 'Failed', message: 'rejected by alice: not now' });
    expect(run.phase).toBe('Failed');
    expect(run.reason).toBe('ApprovalRejected');
    expect(run.message).toBe('task review was rejected by alice: not now');
    expect(run.record('ship')?.phase).toBe('Cancelled');
    expect(host.submits).toEqual([]);
  });

  it('refuses users outside approvers, unknown tasks and tasks that are not approvals', () => {
    const { run } = started(spec({ approvers: { users: ['bob'], groups: ['leads'] } }));
    expect(run.decide('review', { decision: 'Approve', user: alice })).toEqual({
      ok: false,
      code: 'NotApprover',
      message: 'user "alice" is not among the approvers of task "review" (users bob; groups leads)',
    });
    expect(run.decide('review', { decision: 'Approve', user: { username: 'carol', groups: ['leads'] } })).toEqual({
      ok: true,
    });
    expect(run.decide('ghost', { decision: 'Approve', user: alice })).toMatchObject({ code: 'UnknownTask' });
    expect(run.decide('ship', { decision: 'Approve', user: alice })).toMatchObject({ code: 'NotApproval' });
  });

  it('refuses a decision before its dependencies are done', () => {
    const s: WorkflowSpec = {
      pool: 'agents',
      tasks: [
        { name: 'build', handler: 'build' },
        { name: 'review', dependsOn: ['build'], approval: {} },
      ],
    };
    const { run } = started(s);
    expect(run.decide('review', { decision: 'Approve', user: alice })).toEqual({
      ok: false,
      code: 'NotWaiting',
      message: 'task "review" is not waiting for a decision: its dependencies have not finished',
    });
  });

  it('times out as onTimeout says, at its deadline and not before', () => {
    for (const onTimeout of ['Reject', 'Approve'] as const) {
      const { run, host } = started(spec({ timeoutSeconds: 60, onTimeout }));
      expect(run.nextWake()).toBe(T0 + 60_000);
      host.time += 59_999;
      run.tick();
      expect(run.record('review')?.phase).toBe('Waiting');
      host.time += 1;
      run.tick();
      if (onTimeout === 'Reject') {
        expect(run.record('review')).toMatchObject({
          phase: 'Failed',
          message: 'rejected on timeout: no decision within 60s',
        });
        expect(run.reason).toBe('ApprovalTimeout');
      } else {
        expect(run.record('review')).toMatchObject({ phase: 'Succeeded', output: { approved: true, timedOut: true } });
        expect(host.submits.map((x) => x.ref.task)).toEqual(['ship']);
      }
    }
  });

  it('keeps waiting on a new leader, with the same deadline, and can be decided there', () => {
    const s = spec({ timeoutSeconds: 60 });
    const { run } = started(s);
    const tasks = run.allRecords();
    const host = new Host();
    host.time = T0 + 30_000;
    const resumed = new WorkflowRun({ namespace: 'ns', name: 'wf', uid: 'u', spec: s }, host, {
      run: run.runRecord(),
      tasks,
    });
    resumed.step();
    expect(resumed.record('review')?.phase).toBe('Waiting');
    expect(resumed.nextWake()).toBe(T0 + 60_000);
    expect(resumed.approvals()).toHaveLength(1);
    expect(resumed.decide('review', { decision: 'Approve', user: alice })).toEqual({ ok: true });
    expect(host.submits.map((x) => x.ref.task)).toEqual(['ship']);
  });

  it('is cancelled with the run', () => {
    const { run } = started(spec({ timeoutSeconds: 60 }));
    run.stop('cancelled by the user');
    expect(run.record('review')?.phase).toBe('Cancelled');
    expect(run.approvals()).toEqual([]);
    expect(run.nextWake()).toBeUndefined();
  });
});

describe('validation of approval tasks', () => {
  const problems = (s: WorkflowSpec) => validateWorkflowSpec(s).map((p) => `${p.field}: ${p.message}`);
  it('needs exactly one of handler and approval', () => {
    expect(problems({ pool: 'p', tasks: [{ name: 'a' }] })).toContain(
      'spec.tasks[0].handler: a task needs exactly one of handler (an agent runs it) and approval (a person decides)',
    );
    expect(problems({ pool: 'p', tasks: [{ name: 'a', handler: 'h', approval: {} }] })).toHaveLength(1);
  });
  it('refuses what an approval task cannot use, and checks its message expressions', () => {
    expect(problems({ pool: 'p', tasks: [{ name: 'a', approval: {}, input: { x: 1 } }] })).toEqual([
      'spec.tasks[0].approval: an approval task takes no forEach, input, retryPolicy or timeoutSeconds (use approval.timeoutSeconds)',
    ]);
    const bad = problems({ pool: 'p', tasks: [{ name: 'a', approval: { message: '${{ tasks.nope.output }}' } }] });
    expect(bad).toHaveLength(1);
    expect(bad[0]).toMatch(/^spec\.tasks\[0\]\.approval\.message: /);
  });
});

describe('a handler’s ctx.waitForApproval', () => {
  const s: WorkflowSpec = {
    pool: 'agents',
    retryPolicy: { maxAttempts: 1 },
    tasks: [{ name: 'write', handler: 'write' }],
  };
  const ref = { namespace: 'ns', workflow: 'wf', task: 'write' };
  const parked = (run: WorkflowRun, attempt: number, ordinal: number) => {
    run.onEvent({ type: 'started', ref, attempt, agentId: 'a1' });
    run.onEvent({
      type: 'committed',
      ref,
      agentId: 'a1',
      result: {
        attempt,
        agentId: 'a1',
        token: attempt,
        ok: false,
        error: { message: `waiting for approval ${ordinal}`, retryable: true },
        park: { ordinal, message: `step ${ordinal}?`, timeoutSeconds: 30, approvers: { users: ['alice'] } },
        committedAt: new Date(T0).toISOString(),
      },
    });
  };

  it('holds the task Waiting without using its attempts, and runs it again with every decision', () => {
    const { run, host } = started(s);
    parked(run, 1, 0);
    expect(run.record('write')).toMatchObject({ phase: 'Waiting', approval: { message: 'step 0?', ordinal: 0 } });
    expect(run.approvals()).toEqual([
      {
        task: 'write',
        message: 'step 0?',
        deadline: T0 + 30_000,
        onTimeout: 'Reject',
        approvers: { users: ['alice'] },
      },
    ]);
    expect(run.decide('write', { decision: 'Approve', user: { username: 'bob', groups: [] } })).toMatchObject({
      code: 'NotApprover',
    });
    expect(run.decide('write', { decision: 'Approve', user: alice, message: 'ok' })).toEqual({ ok: true });
    // Queued again (maxAttempts 1: the wait was no failure), with the decision for its wait 0.
    expect(host.submits.map((x) => [x.attempt, x.approvals?.map((v) => [v.ordinal, v.approved, v.user])])).toEqual([
      [1, undefined],
      [2, [[0, true, 'alice']]],
    ]);
    // A second wait: both decisions go out with the third attempt.
    parked(run, 2, 1);
    host.time += 30_000;
    run.tick();
    expect(host.submits.at(-1)?.approvals?.map((v) => [v.ordinal, v.approved, v.timedOut ?? false])).toEqual([
      [0, true, false],
      [1, false, true],
    ]);
    expect(run.audit.filter((a) => a.type === 'ApprovalRequested')).toHaveLength(2);
  });

  it('ignores a park from an attempt that is no longer current', () => {
    const { run } = started(s);
    run.onEvent({ type: 'started', ref, attempt: 1, agentId: 'a1' });
    run.onEvent({
      type: 'committed',
      ref,
      agentId: 'a1',
      result: {
        attempt: 1,
        agentId: 'a1',
        token: 1,
        ok: true,
        output: 'done',
        committedAt: new Date(T0).toISOString(),
      },
    });
    parked(run, 1, 0);
    expect(run.record('write')?.phase).toBe('Succeeded');
  });
});
