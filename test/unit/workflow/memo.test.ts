import { describe, expect, it } from 'vitest';
import type { WorkflowSpec } from '../../../src/api/workflow.ts';
import type { TaskSpec } from '../../../src/dispatcher/types.ts';
import type { MemoEntry, TaskRef } from '../../../src/state/index.ts';
import { type RunHost, WorkflowRun } from '../../../src/workflow/run.ts';

// Memoization in the run: a memoized task is looked up instead of submitted; a hit succeeds it
// without dispatch (marked, audited, counted), a miss is the engine's to submit; a success is
// remembered under the key it was queued with, and a resumed run keeps both.

const T0 = Date.UTC(2025, 0, 1, 12, 0, 0);

class Host implements RunHost {
  time = T0;
  readonly submits: TaskSpec[] = [];
  readonly lookups: { spec: TaskSpec; memo: { key: string; maxAgeSeconds?: number } }[] = [];
  readonly remembered: MemoEntry[] = [];
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
  lookupMemo(spec: TaskSpec, memo: { key: string; maxAgeSeconds?: number }): void {
    this.lookups.push({ spec, memo });
  }
  rememberMemo(_key: string, entry: MemoEntry): void {
    this.remembered.push(entry);
  }
}

const spec = (memoize: NonNullable<WorkflowSpec['tasks'][number]['memoize']>, extra = {}): WorkflowSpec => ({
  pool: 'agents',
  inputs: { url: 'https://example.com', items: [1, 2] },
  tasks: [
    { name: 'fetch', handler: 'fetch', input: { url: '${{ inputs.url }}' }, memoize, ...extra },
    { name: 'after', handler: 'after', dependsOn: ['fetch'] },
  ],
});

function started(s: WorkflowSpec, host = new Host()) {
  const run = new WorkflowRun({ namespace: 'ns', name: 'wf', uid: 'u', spec: s }, host);
  run.step();
  return { run, host };
}

const entry = (key: string, output: unknown): MemoEntry => ({
  key,
  output,
  createdAt: '2025-01-01T11:00:00Z',
  workflow: 'earlier',
  task: 'fetch',
  attempt: 2,
  agentId: 'agents-0',
});

describe('a memoized task', () => {
  it('is looked up, not submitted, by its handler and a hash of its rendered input', () => {
    const { host } = started(spec({ maxAgeSeconds: 60 }));
    expect(host.submits).toEqual([]);
    expect(host.lookups).toHaveLength(1);
    const { memo, spec: s } = host.lookups[0] as (typeof host.lookups)[number];
    expect(memo.maxAgeSeconds).toBe(60);
    expect(memo.key).toMatch(/^fetch:[0-9a-f]{64}$/);
    expect(s).toMatchObject({ ref: { task: 'fetch' }, attempt: 1, input: { url: 'https://example.com' } });
    // The same input rendered with its keys in another order is the same key.
    const again = started({
      ...spec({}),
      tasks: [{ name: 'fetch', handler: 'fetch', input: { b: 1, a: 2 }, memoize: {} }],
    });
    const other = started({
      ...spec({}),
      tasks: [{ name: 'fetch', handler: 'fetch', input: { a: 2, b: 1 }, memoize: {} }],
    });
    expect(again.host.lookups[0]?.memo.key).toBe(other.host.lookups[0]?.memo.key);
  });

  it('on a hit succeeds with the cached output, marked and audited, and its dependents run', () => {
    const { run, host } = started(spec({}));
    const key = host.lookups[0]?.memo.key as string;
    run.memoHit('fetch', 1, entry(key, { body: 'cached' }));
    expect(run.record('fetch')).toMatchObject({
      phase: 'Succeeded',
      output: { body: 'cached' },
      memo: { workflow: 'earlier', task: 'fetch', attempt: 2, createdAt: '2025-01-01T11:00:00Z' },
      message: 'memoized: output of earlier/fetch attempt 2, cached 2025-01-01T11:00:00Z',
    });
    expect(run.status().tasks?.find((t) => t.name === 'fetch')).toMatchObject({ phase: 'Succeeded', memoized: 1 });
    expect(run.audit.find((a) => a.type === 'TaskMemoized')).toMatchObject({
      task: 'fetch',
      attempt: 1,
      detail: { key, from: 'earlier/fetch', fromAttempt: 2 },
    });
    expect(host.submits.map((s) => s.ref.task)).toEqual(['after']);
    // A cached output is not cached again.
    expect(host.remembered).toEqual([]);
  });

  it('ignores a hit for an attempt that is no longer queued', () => {
    const { run, host } = started(spec({}));
    const key = host.lookups[0]?.memo.key as string;
    run.stop('stop');
    run.memoHit('fetch', 1, entry(key, 'late'));
    expect(run.record('fetch')?.phase).not.toBe('Succeeded');
    expect(run.awaitsMemo('fetch', 1)).toBe(false);
    const fresh = started(spec({}));
    expect(fresh.run.awaitsMemo('fetch', 2)).toBe(false);
    expect(fresh.run.awaitsMemo('fetch', 1)).toBe(true);
  });

  it('on a miss runs as usual, and its output is remembered under the key it was queued with', () => {
    const { run, host } = started(spec({}));
    const key = host.lookups[0]?.memo.key as string;
    run.onEvent({
      type: 'started',
      ref: { namespace: 'ns', workflow: 'wf', task: 'fetch' },
      attempt: 1,
      agentId: 'a-0',
    });
    host.time += 1_000;
    run.onEvent({
      type: 'committed',
      ref: { namespace: 'ns', workflow: 'wf', task: 'fetch' },
      agentId: 'a-0',
      result: { ok: true, output: { body: 'fresh' }, attempt: 1, token: 7, agentId: 'a-0', committedAt: '' },
    });
    expect(run.record('fetch')).toMatchObject({ phase: 'Succeeded', memoKey: key });
    expect(run.record('fetch')?.memo).toBeUndefined();
    expect(host.remembered).toEqual([
      {
        key,
        output: { body: 'fresh' },
        createdAt: new Date(T0 + 1_000).toISOString().replace('.000', ''),
        workflow: 'wf',
        task: 'fetch',
        attempt: 1,
        agentId: 'a-0',
      },
    ]);
  });

  it('a CEL key sees the rendered input and forEach index; a key that does not evaluate fails the task naming the field', () => {
    const s: WorkflowSpec = {
      pool: 'agents',
      inputs: { items: ['a', 'b'] },
      tasks: [
        {
          name: 'each',
          handler: 'h',
          forEach: 'inputs.items',
          input: { v: '${{ item }}' },
          memoize: { key: "'k-' + input.v + '-' + string(index)" },
        },
      ],
    };
    const { host } = started(s);
    expect(host.lookups.map((l) => l.memo.key)).toEqual(['k-a-0', 'k-b-1']);
    const bad = started({
      ...s,
      tasks: [{ ...(s.tasks[0] as WorkflowSpec['tasks'][number]), memoize: { key: 'index' } }],
    });
    expect(bad.run.record('each.0')?.phase).toBe('Failed');
    expect(bad.run.record('each.0')?.message).toContain('spec.tasks[0].memoize.key');
  });

  it('a resumed run keeps the key and the memo mark, and counts memoized instances again', () => {
    const { run, host } = started(spec({}));
    const key = host.lookups[0]?.memo.key as string;
    run.memoHit('fetch', 1, entry(key, 1));
    const records = run.allRecords();
    const resumed = new WorkflowRun({ namespace: 'ns', name: 'wf', uid: 'u', spec: spec({}) }, new Host(), {
      run: run.runRecord(),
      tasks: records,
      specSaved: true,
    });
    expect(resumed.record('fetch')).toMatchObject({ memoKey: key, memo: { workflow: 'earlier' } });
    expect(resumed.status().tasks?.find((t) => t.name === 'fetch')?.memoized).toBe(1);
  });

  it('without a host that memoizes (no cache), is submitted as any task', () => {
    const host: RunHost = { submit: (s) => submits.push(s), cancel() {}, tracked: () => false, now: () => T0 };
    const submits: TaskSpec[] = [];
    new WorkflowRun({ namespace: 'ns', name: 'wf', uid: 'u', spec: spec({}) }, host).step();
    expect(submits.map((s) => s.ref.task)).toEqual(['fetch']);
  });
});
