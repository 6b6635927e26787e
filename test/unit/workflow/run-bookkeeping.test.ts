import { describe, expect, it } from 'vitest';
import type { WorkflowSpec } from '../../../src/api/workflow.ts';
import type { TaskRecord } from '../../../src/state/index.ts';
import { type TaskPhase, WorkflowRun } from '../../../src/workflow/run.ts';
import { mulberry32 } from '../seeded-random.ts';
import { type Driver, NS, RecordingHost, randomAction, randomSpec, WF } from './random-run.ts';

// WorkflowRun keeps its counts, ready queue, retry queue and status summary
// up to date on every change instead of scanning its instances. These tests
// recount all of it from the run's records after every event of random
// lives (starts, results, retryable and final failures, losses, deadlines,
// spawned children, forEach expansion, suspend, stop, retry) and compare:
// the incremental answers must be the ones a scan gives.

/** counts() from scratch: every record, plus each forEach template not expanded yet. */
function recount(spec: WorkflowSpec, records: TaskRecord[], expanded: Record<string, number>) {
  const n = (p: string) => records.filter((r) => r.phase === p).length;
  const unexpanded = spec.tasks.filter((t) => t.forEach && expanded[t.name] === undefined).length;
  return {
    total: records.length + unexpanded,
    succeeded: n('Succeeded') + n('Skipped'),
    failed: n('Failed'),
    running: n('Running'),
    queued: n('Queued'),
  };
}

/** status().tasks from scratch, as the scan over every instance computed it (progress aside: none is sent). */
function summaries(run: WorkflowRun, spec: WorkflowSpec, records: TaskRecord[], expanded: Record<string, number>) {
  return spec.tasks.map((t) => {
    const name = t.name;
    if (expanded[name] === -1) return { name, phase: 'Skipped' };
    const own = records.filter((r) => r.template === name);
    if (own.length === 0) return { name, phase: run.finished ? 'Cancelled' : 'Pending' };
    const by = (p: TaskPhase) => own.filter((i) => i.phase === p).length;
    const phase = by('Failed')
      ? 'Failed'
      : own.every((i) => i.phase === 'Succeeded') && (!t.forEach || expanded[name] !== undefined)
        ? 'Succeeded'
        : by('Running')
          ? 'Running'
          : by('Retrying')
            ? 'Retrying'
            : by('Queued')
              ? 'Queued'
              : by('Cancelled')
                ? 'Cancelled'
                : 'Pending';
    const failed = own.find((i) => i.phase === 'Failed' || i.phase === 'Retrying');
    let message: string | undefined;
    if (own.length > 1) {
      message = `${by('Succeeded')}/${own.length} succeeded, ${by('Running')} running, ${by('Queued')} queued, ${by('Failed')} failed`;
      if (failed?.message) message += `; ${failed.name}: ${failed.message}`;
    } else message = own[0]?.message;
    const attempts = Math.max(...own.map((i) => i.attempt));
    return { name, phase, attempts, ...(message && { message: message.slice(0, 1024) }) };
  });
}

/** queuedNeeds() from scratch: per pool and handler, in the order of each pair's first queued instance. */
function needs(records: TaskRecord[]) {
  const out = new Map<string, { pool: string; handler: string; tasks: number }>();
  for (const r of records) {
    if (r.phase !== 'Queued') continue;
    const k = `${r.pool}\0${r.handler}`;
    const n = out.get(k);
    if (n) n.tasks++;
    else out.set(k, { pool: r.pool, handler: r.handler, tasks: 1 });
  }
  return [...out.values()];
}

/** Can dispatch hand it out now: rendered and waiting, or retrying and past its back-off. */
const due = (r: TaskRecord, now: number) =>
  (r.phase === 'Pending' && r.input !== undefined) || (r.phase === 'Retrying' && (r.retryAt ?? 0) <= now);

function newDriver(seed: number): { d: Driver; spec: WorkflowSpec } {
  const rnd = mulberry32(seed);
  const spec = randomSpec(rnd);
  const host = new RecordingHost();
  const run = new WorkflowRun({ namespace: NS, name: WF, uid: `uid-${seed}`, spec }, host);
  run.step();
  return { d: { run, host, rnd, spawned: 0, retries: 0 }, spec };
}

describe('WorkflowRun bookkeeping: incremental = recounted from the records', () => {
  it.each(Array.from({ length: 60 }, (_, k) => k + 1))('after every event of random runs (seed %i)', (seed) => {
    let life = 0;
    let { d, spec } = newDriver(seed * 100);
    const trail: string[] = [];
    for (let step = 0; step < 300; step++) {
      if (d.run.phase === 'Succeeded') ({ d, spec } = newDriver(seed * 100 + ++life)); // nothing left to do: next run
      const { run, host } = d;
      const limit = spec.parallelism ?? Number.POSITIVE_INFINITY;
      const submitted = host.submits.length;
      trail.push(randomAction(d));
      const where = `seed ${seed} life ${life}, after: ${trail.slice(-5).join(' | ')}`;
      const records = run.allRecords();
      const { expanded } = run.runRecord();
      expect(run.counts(), where).toEqual(recount(spec, records, expanded));
      expect(run.status().tasks, where).toEqual(summaries(run, spec, records, expanded));
      expect(run.queuedNeeds(), where).toEqual(needs(records));
      const retrying = records.filter((r) => r.phase === 'Retrying').map((r) => r.retryAt ?? 0);
      expect(run.nextWake(), where).toBe(retrying.length > 0 ? Math.min(...retrying) : undefined);

      // The ready queue: what this event submitted went in instance order, and nothing due was passed
      // over for a later instance or left waiting while a slot was free.
      const position = new Map(records.map((r, k) => [r.name, k]));
      const order = host.submits.slice(submitted).map((s) => position.get(s.ref.task) as number);
      expect(order, where).toEqual([...order].sort((a, b) => a - b));
      if (run.phase === 'Running') {
        const waiting = records.filter((r) => due(r, host.time)).map((r) => position.get(r.name) as number);
        const active = records.filter((r) => r.phase === 'Queued' || r.phase === 'Running').length;
        if (waiting.length > 0)
          expect(active, `${where}: due ${waiting} with a free slot`).toBeGreaterThanOrEqual(limit);
        for (const w of waiting) expect(w, where).toBeGreaterThan(Math.max(-1, ...order));
      }
      // Every submission hands out the attempt its record carries.
      for (const s of host.submits.slice(submitted)) {
        expect(s.attempt, where).toBe(records[position.get(s.ref.task) as number]?.attempt);
      }
    }
  });
});

describe('WorkflowRun bookkeeping: cases the ready queue must get right', () => {
  const fanout = (parallelism: number, items = 4): WorkflowSpec => ({
    pool: 'p',
    parallelism,
    retryPolicy: { maxAttempts: 3, backoff: { initialSeconds: 1, factor: 1, maxSeconds: 1 } },
    inputs: { items: Array.from({ length: items }, (_, k) => k) },
    tasks: [
      { name: 'fan', handler: 'work', forEach: 'inputs.items', input: { n: '${{ item }}' } },
      { name: 'join', handler: 'join', dependsOn: ['fan'] },
    ],
  });
  const ref = (task: string) => ({ namespace: NS, workflow: WF, task });
  const start = (run: WorkflowRun, task: string, attempt = 1) =>
    run.onEvent({ type: 'started', ref: ref(task), attempt, agentId: 'a' });
  const result = (run: WorkflowRun, task: string, ok: boolean, attempt = 1) =>
    run.onEvent({
      type: 'committed',
      ref: ref(task),
      agentId: 'a',
      result: {
        attempt,
        agentId: 'a',
        token: 1,
        committedAt: '2025-01-01T12:00:00Z',
        ...(ok ? { ok: true, output: task } : { ok: false, error: { message: 'flaky', retryable: true } }),
      },
    });
  const newRun = (spec: WorkflowSpec) => {
    const host = new RecordingHost();
    const run = new WorkflowRun({ namespace: NS, name: WF, uid: 'u', spec }, host);
    run.step();
    return { run, host, submitted: () => host.submits.map((s) => `${s.ref.task}#${s.attempt}`) };
  };

  it('hands out a fan-out in item order within parallelism, a due retry before later items', () => {
    const { run, host, submitted } = newRun(fanout(2));
    expect(submitted()).toEqual(['fan.0#1', 'fan.1#1']);
    start(run, 'fan.0');
    result(run, 'fan.0', false); // retries in 1 s; its slot goes to the next item
    expect(submitted()).toEqual(['fan.0#1', 'fan.1#1', 'fan.2#1']);
    host.time += 1_000;
    run.tick(); // due, but both slots are taken
    expect(submitted()).toHaveLength(3);
    expect(run.nextWake()).toBe(host.time);
    result(run, 'fan.1', true); // the freed slot goes to fan.0 (first in order), not fan.3
    expect(submitted()).toEqual(['fan.0#1', 'fan.1#1', 'fan.2#1', 'fan.0#2']);
    expect(run.nextWake()).toBeUndefined();
    result(run, 'fan.2', true);
    result(run, 'fan.0', true, 2);
    expect(submitted().slice(4)).toEqual(['fan.3#1']);
    result(run, 'fan.3', true);
    expect(submitted().at(-1)).toBe('join#1'); // fan-in once the last item is in
    expect(run.counts()).toEqual({ total: 5, succeeded: 4, failed: 0, running: 0, queued: 1 });
  });

  it('puts cancelled work back in order when a stopped run is retried', () => {
    const { run, host, submitted } = newRun(fanout(1, 3));
    start(run, 'fan.0');
    run.stop('stop');
    expect(run.counts()).toMatchObject({ total: 4, succeeded: 0, running: 0, queued: 0 });
    run.retry('t1', run.retryTargets());
    expect(submitted()).toEqual(['fan.0#1', 'fan.0#2']);
    result(run, 'fan.0', true, 2);
    result(run, 'fan.1', true);
    expect(submitted().slice(2)).toEqual(['fan.1#1', 'fan.2#1']);
    expect(host.cancels.map((c) => c.task)).toEqual(['fan.0']);
  });

  it('queues spawned children after the instances already waiting, and counts them', () => {
    const { run, submitted } = newRun(fanout(2, 3));
    start(run, 'fan.0');
    run.requestSpawn({
      type: 'spawn',
      ref: ref('fan.0'),
      attempt: 1,
      children: [{ name: 'c', handler: 'child', input: {}, cost: 1 }],
    });
    expect(run.counts()).toMatchObject({ total: 5, queued: 1, running: 1 });
    result(run, 'fan.0', true); // its own result: it waits for its child, holding its slot
    expect(submitted()).toEqual(['fan.0#1', 'fan.1#1']);
    result(run, 'fan.1', true); // the freed slot goes to fan.2, before the child spawned after it
    expect(submitted()).toEqual(['fan.0#1', 'fan.1#1', 'fan.2#1']);
    result(run, 'fan.2', true);
    expect(submitted().at(-1)).toBe('fan.0~c#1');
    expect(run.status().tasks?.[0]).toMatchObject({
      name: 'fan',
      phase: 'Running',
      attempts: 1,
      message: '2/4 succeeded, 1 running, 1 queued, 0 failed',
    });
    result(run, 'fan.0~c', true);
    expect(run.status().tasks?.[0]).toMatchObject({ name: 'fan', phase: 'Succeeded' });
    expect(submitted().at(-1)).toBe('join#1');
  });

  it('moves suspended queued work back to waiting and hands it out again on resume, in order', () => {
    const { run, submitted } = newRun(fanout(3, 3));
    start(run, 'fan.1');
    run.setSuspended(true);
    expect(run.counts()).toMatchObject({ running: 1, queued: 0 });
    run.setSuspended(false);
    expect(submitted()).toEqual(['fan.0#1', 'fan.1#1', 'fan.2#1', 'fan.0#2', 'fan.2#2']);
    expect(run.queuedNeeds()).toEqual([{ pool: 'p', handler: 'work', tasks: 2 }]);
  });
});
