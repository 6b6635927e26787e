import type { WorkflowSpec } from '../../../src/api/workflow.ts';
import type { TaskSpec } from '../../../src/dispatcher/types.ts';
import type { TaskRecord, TaskRef } from '../../../src/state/index.ts';
import type { RunHost, WorkflowRun } from '../../../src/workflow/run.ts';

// Random but plausible lives of a WorkflowRun, for property tests: what the
// dispatcher and the controller could send it (starts, results, failures,
// losses, deadlines, spawns, time passing, suspend, stop, retry), each chosen
// from the run's records so that most of them apply. Seeded: a failure
// replays from its seed.

export const NS = 'team-a';
export const WF = 'fanout';

/** The dispatcher and the clock, recorded. */
export class RecordingHost implements RunHost {
  time = Date.UTC(2025, 0, 1, 12, 0, 0);
  readonly submits: TaskSpec[] = [];
  readonly cancels: { task: string; reason: string }[] = [];
  submit(spec: TaskSpec): void {
    this.submits.push(spec);
  }
  cancel(ref: TaskRef, reason: string): void {
    this.cancels.push({ task: ref.task, reason });
  }
  tracked(): boolean {
    return false;
  }
  now(): number {
    return this.time;
  }
}

/**
 * A fan-out and fan-in with a side branch on another pool and handler, a
 * conditional task, retries with short back-off and, in some, parallelism.
 */
export function randomSpec(rnd: () => number): WorkflowSpec {
  const items = 2 + Math.floor(rnd() * 10);
  const parallelism = [undefined, 1, 2, 5][Math.floor(rnd() * 4)];
  return {
    pool: 'p',
    ...(parallelism !== undefined && { parallelism }),
    retryPolicy: { maxAttempts: 3, backoff: { initialSeconds: 1, factor: 2, maxSeconds: 4 } },
    inputs: { items: Array.from({ length: items }, (_, k) => k), flag: rnd() < 0.5 },
    tasks: [
      { name: 'plan', handler: 'plan' },
      { name: 'fan', handler: 'work', dependsOn: ['plan'], forEach: 'inputs.items', input: { n: '${{ item }}' } },
      { name: 'side', handler: 'alt', pool: 'q', dependsOn: ['plan'], input: { p: '${{ tasks.plan.output }}' } },
      { name: 'maybe', handler: 'work', dependsOn: ['plan'], when: 'inputs.flag' },
      { name: 'join', handler: 'join', dependsOn: ['fan', 'side', 'maybe'] },
    ],
  } as WorkflowSpec;
}

const ref = (task: string): TaskRef => ({ namespace: NS, workflow: WF, task });

/** What drives one run: its host, the PRNG, and counters for unique names and tokens. */
export interface Driver {
  run: WorkflowRun;
  host: RecordingHost;
  rnd: () => number;
  spawned: number;
  retries: number;
  /** Also send progress reports (they show in the status, but in no record). */
  progress?: boolean;
}

/** Picks one action for the run from its records and applies it; returns its name (for failure messages). */
export function randomAction(d: Driver): string {
  const { run, host, rnd } = d;
  const pick = <T>(xs: readonly T[]): T | undefined => xs[Math.floor(rnd() * xs.length)];
  const records = run.allRecords();
  const active = records.filter((r) => r.phase === 'Queued' || r.phase === 'Running');
  const r = rnd();
  const target = (list: TaskRecord[]) => pick(list.length > 0 ? list : records) as TaskRecord;
  if (run.finished) {
    if ((run.phase === 'Failed' || run.phase === 'Cancelled') && rnd() < 0.7) {
      run.retry(`retry-${++d.retries}`, run.retryTargets());
      return 'retry';
    }
    host.time += 500;
    run.tick();
    return 'tick (finished)';
  }
  if (run.phase === 'Suspended' && r < 0.2) {
    run.setSuspended(false);
    return 'resume';
  }
  if (r < 0.22) {
    const t = target(records.filter((x) => x.phase === 'Queued'));
    run.onEvent({ type: 'started', ref: ref(t.name), attempt: t.attempt, agentId: 'agent-1' });
    return `started ${t.name}`;
  }
  if (r < 0.5) {
    const t = target(active);
    const output = { from: t.name };
    commit(run, t, { ok: true, output });
    return `succeeded ${t.name}`;
  }
  if (r < 0.58) {
    const t = target(active);
    commit(run, t, { ok: false, error: { message: 'flaky', retryable: true } });
    return `failed (retryable) ${t.name}`;
  }
  if (r < 0.6) {
    const t = target(active);
    commit(run, t, { ok: false, error: { message: 'broken', retryable: false } });
    return `failed ${t.name}`;
  }
  if (r < 0.64) {
    const t = target(active);
    run.onEvent({ type: 'timedOut', ref: ref(t.name), attempt: t.attempt, agentId: 'agent-1' });
    return `timedOut ${t.name}`;
  }
  if (r < 0.67) {
    const t = target(active);
    run.onEvent({ type: 'lost', ref: ref(t.name), attempt: t.attempt, agentId: 'agent-1', reason: 'agent died' });
    return `lost ${t.name}`;
  }
  if (r < 0.69) {
    const t = target(active);
    run.onEvent({ type: 'orphanLost', ref: ref(t.name), attempt: t.attempt, agentId: 'agent-1' });
    return `orphanLost ${t.name}`;
  }
  if (r < 0.76) {
    const t = target(records.filter((x) => x.phase === 'Running'));
    const n = 1 + Math.floor(rnd() * 3);
    const children = Array.from({ length: n }, () => ({
      name: `c${++d.spawned}`,
      handler: 'child',
      input: { k: d.spawned },
      cost: 1,
    }));
    run.requestSpawn({ type: 'spawn', ref: ref(t.name), attempt: t.attempt, children });
    return `spawn ${n} under ${t.name}`;
  }
  if (r < 0.9) {
    host.time += Math.floor(rnd() * 3_000);
    run.tick();
    return 'tick';
  }
  if (r < 0.96) {
    const suspend = run.phase !== 'Suspended';
    run.setSuspended(suspend);
    return suspend ? 'suspend' : 'resume';
  }
  if (r < 0.97) {
    run.stop('stopped by the test');
    return 'stop';
  }
  if (d.progress && r < 0.985) {
    const t = target(active);
    const fraction = Math.floor(rnd() * 10) / 10;
    run.onEvent({ type: 'progress', ref: ref(t.name), attempt: t.attempt, fraction, message: 'working' });
    return `progress ${t.name}`;
  }
  // A stale event: another attempt's start (ignored by the run).
  const t = target(active);
  run.onEvent({ type: 'started', ref: ref(t.name), attempt: t.attempt + 1, agentId: 'agent-2' });
  return `stale started ${t.name}`;
}

function commit(
  run: WorkflowRun,
  t: TaskRecord,
  result: { ok: boolean; output?: unknown; error?: { message: string; retryable: boolean } },
): void {
  run.onEvent({
    type: 'committed',
    ref: ref(t.name),
    agentId: 'agent-1',
    result: {
      attempt: t.attempt,
      agentId: 'agent-1',
      token: 100 + t.attempt,
      committedAt: '2025-01-01T12:00:00Z',
      ...result,
    },
  });
}
