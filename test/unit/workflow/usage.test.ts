import { describe, expect, it } from 'vitest';
import type { WorkflowSpec } from '../../../src/api/workflow.ts';
import type { TaskSpec } from '../../../src/dispatcher/types.ts';
import { formatUsd, type ModelUsage, toNanos } from '../../../src/lib/usage.ts';
import type { TaskRef } from '../../../src/state/index.ts';
import { type RunHost, specHash, WorkflowRun } from '../../../src/workflow/run.ts';
import { budgetExceeded, countAttempt, OTHER_MODEL, RunUsage } from '../../../src/workflow/usage.ts';

// The engine's usage sums and spec.budget, on WorkflowRun with a recorded host: exact sums per
// task and workflow, each committed attempt counted once (failed ones included, a re-reported
// one not), sums rebuilt from the records after a failover, Fail and Suspend.

const NS = 'team-a';
const WF = 'wf';
const T0 = Date.UTC(2025, 0, 1, 12, 0, 0);

class Host implements RunHost {
  readonly submits: TaskSpec[] = [];
  readonly cancels: string[] = [];
  submit(spec: TaskSpec): void {
    this.submits.push(spec);
  }
  cancel(ref: TaskRef): void {
    this.cancels.push(ref.task);
  }
  tracked(): boolean {
    return false;
  }
  now(): number {
    return T0;
  }
  submitted(): string[] {
    return this.submits.map((s) => `${s.ref.task}#${s.attempt}`);
  }
}

const usage = (model: string, inputTokens: number, outputTokens: number, costUsd: number): ModelUsage => ({
  model,
  inputTokens,
  outputTokens,
  costNanos: toNanos(costUsd),
});

function result(
  run: WorkflowRun,
  task: string,
  attempt: number,
  ok: boolean,
  models: ModelUsage[],
  retryable = true,
): void {
  const ref = { namespace: NS, workflow: WF, task };
  if (ok) run.onEvent({ type: 'started', ref, attempt, agentId: 'a' });
  run.onEvent({
    type: 'committed',
    ref,
    agentId: 'a',
    result: {
      attempt,
      agentId: 'a',
      token: attempt,
      committedAt: new Date(T0).toISOString(),
      ok,
      ...(ok ? { output: {} } : { error: { message: 'boom', retryable } }),
      usage: models,
    },
  });
}

const fanOut = (extra: Partial<WorkflowSpec> = {}): WorkflowSpec => ({
  pool: 'p',
  inputs: { items: [0, 1, 2, 3] },
  retryPolicy: { maxAttempts: 3, backoff: { initialSeconds: 0.001 } },
  tasks: [{ name: 'each', handler: 'h', forEach: 'inputs.items' }],
  ...extra,
});

describe('usage sums', () => {
  it('counts every committed attempt once, failed ones included, per task and in all', () => {
    const host = new Host();
    const run = new WorkflowRun({ namespace: NS, name: WF, uid: 'u', spec: fanOut() }, host);
    run.step();
    result(run, 'each.0', 1, true, [usage('big', 100, 10, 0.1)]);
    result(run, 'each.1', 1, false, [usage('big', 5, 5, 0.2)]);
    // The same result again (e.g. reported by a new leader): not counted twice.
    result(run, 'each.1', 1, false, [usage('big', 5, 5, 0.2)]);
    result(run, 'each.2', 1, true, [usage('small', 1, 2, 0.001), usage('big', 1, 1, 0)]);
    result(run, 'each.0', 1, true, [usage('big', 100, 10, 0.1)]);
    expect(run.status().usage).toEqual({
      inputTokens: 107,
      outputTokens: 18,
      // 0.1 + 0.2 + 0.001 summed as nano-dollars: exact.
      costUsd: 0.301,
      byModel: [
        { model: 'big', inputTokens: 106, outputTokens: 16, costUsd: 0.3 },
        { model: 'small', inputTokens: 1, outputTokens: 2, costUsd: 0.001 },
      ],
    });
    expect(run.status().tasks?.[0]?.usage).toEqual({ inputTokens: 107, outputTokens: 18, costUsd: 0.301 });
    expect(run.record('each.1')?.usage).toEqual({ attempts: [1], models: [usage('big', 5, 5, 0.2)] });
  });

  it('rebuilds the same sums from the saved records after a failover', () => {
    const run = new WorkflowRun({ namespace: NS, name: WF, uid: 'u', spec: fanOut() }, new Host());
    run.step();
    result(run, 'each.0', 1, true, [usage('big', 100, 10, 0.1)]);
    result(run, 'each.1', 1, false, [usage('big', 5, 5, 0.2)]);
    const resumed = new WorkflowRun({ namespace: NS, name: WF, uid: 'u', spec: fanOut() }, new Host(), {
      run: run.runRecord(),
      tasks: run.allRecords(),
    });
    expect(resumed.status().usage).toEqual(run.status().usage);
    // each.0's result reported again to the new leader ("already committed"): still counted once.
    result(resumed, 'each.0', 1, true, [usage('big', 100, 10, 0.1)]);
    expect(resumed.status().usage).toEqual(run.status().usage);
  });

  it('bounds the models a record keeps: more are summed as "other"', () => {
    const rec: { usage?: { attempts: number[]; models: ModelUsage[] } } = {};
    countAttempt(
      rec,
      1,
      Array.from({ length: 64 }, (_, i) => usage(`m${i}`, 1, 0, 0)),
    );
    countAttempt(rec, 2, [usage('m0', 1, 0, 0), usage('new', 2, 0, 0)]);
    expect(rec.usage?.models).toHaveLength(65);
    expect(rec.usage?.models.at(-1)).toEqual(usage(OTHER_MODEL, 2, 0, 0));
    expect(rec.usage?.attempts).toEqual([1, 2]);
    const all = new RunUsage();
    all.add(
      't',
      Array.from({ length: 20 }, (_, i) => usage(`m${i}`, 1, 0, i / 100)),
    );
    expect(all.status()?.byModel).toHaveLength(16);
    expect(all.status()?.byModel?.[0]?.model).toBe('m19');
  });
});

describe('spec.budget', () => {
  it('names the figure that passed the budget', () => {
    const t = { inputTokens: 10_000, outputTokens: 2_345, costNanos: toNanos(1.5) };
    expect(budgetExceeded(t, { maxTokens: 12_345 })).toBeUndefined();
    expect(budgetExceeded(t, { maxTokens: 10_000 })).toEqual({
      limit: 'maxTokens',
      message: 'used 12,345 tokens of a budget of 10,000 (spec.budget.maxTokens)',
    });
    expect(budgetExceeded(t, { maxCostUsd: 1.25 })).toEqual({
      limit: 'maxCostUsd',
      message: 'used $1.50 of a budget of $1.25 (spec.budget.maxCostUsd)',
    });
    expect(budgetExceeded(t, { maxCostUsd: 1.5 })).toBeUndefined();
    expect(budgetExceeded(t, undefined)).toBeUndefined();
    expect(formatUsd(toNanos(0.000123))).toBe('$0.000123');
  });

  it('action Fail: the result that takes the usage over fails the run, reason BudgetExceeded', () => {
    const host = new Host();
    const run = new WorkflowRun(
      { namespace: NS, name: WF, uid: 'u', spec: fanOut({ parallelism: 1, budget: { maxTokens: 100 } }) },
      host,
    );
    run.step();
    result(run, 'each.0', 1, true, [usage('m', 50, 0, 0)]);
    expect(run.phase).toBe('Running');
    result(run, 'each.1', 1, true, [usage('m', 50, 1, 0)]);
    expect(run.phase).toBe('Failed');
    expect(run.reason).toBe('BudgetExceeded');
    expect(run.message).toBe(
      'the workflow exceeded its budget: used 101 tokens of a budget of 100 (spec.budget.maxTokens)',
    );
    expect(host.submitted()).toEqual(['each.0#1', 'each.1#1']);
  });

  it('action Suspend: holds new tasks back (queued ones too) until the budget is raised, also across spec.suspend and a failover', () => {
    const host = new Host();
    const budget = { maxCostUsd: 0.5, action: 'Suspend' as const };
    const spec = fanOut({ parallelism: 2, budget });
    const run = new WorkflowRun({ namespace: NS, name: WF, uid: 'u', spec }, host);
    run.step();
    expect(host.submitted()).toEqual(['each.0#1', 'each.1#1']);
    result(run, 'each.0', 1, true, [usage('m', 0, 0, 0.6)]);
    // each.0's result took the cost over: each.2 is not handed out.
    expect(run.phase).toBe('Suspended');
    expect(run.budgetHold).toBe(
      'budget exceeded: used $0.60 of a budget of $0.50 (spec.budget.maxCostUsd); raise or remove spec.budget to resume',
    );
    expect(host.submitted()).toEqual(['each.0#1', 'each.1#1']);
    // A running attempt finishes and counts; nothing new starts.
    result(run, 'each.1', 1, true, [usage('m', 0, 0, 0.1)]);
    expect(host.submitted()).toEqual(['each.0#1', 'each.1#1']);
    // spec.suspend on and off again does not lift the hold.
    run.setSuspended(true);
    run.setSuspended(false);
    expect(run.phase).toBe('Suspended');
    expect(host.submitted()).toHaveLength(2);
    // A new leader resumes it held.
    const host2 = new Host();
    const resumed = new WorkflowRun({ namespace: NS, name: WF, uid: 'u', spec, budget }, host2, {
      run: run.runRecord(),
      tasks: run.allRecords(),
    });
    resumed.step();
    resumed.setSuspended(false);
    expect(resumed.phase).toBe('Suspended');
    expect(host2.submitted()).toEqual([]);
    // Raising the budget resumes it.
    resumed.setBudget({ ...budget, maxCostUsd: 5 });
    expect(resumed.phase).toBe('Running');
    expect(resumed.budgetHold).toBeUndefined();
    expect(host2.submitted()).toEqual(['each.2#1', 'each.3#1']);
  });

  it('a budget edit is applied live, not a spec change', () => {
    const spec = fanOut();
    expect(specHash({ ...spec, budget: { maxTokens: 5 } })).toBe(specHash(spec));
  });
});
