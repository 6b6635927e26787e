import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ClusterHandle } from '../../cluster/cluster-handle.ts';
import { apply, type OperatorProcess, until } from '../operator/helpers.ts';
import { type Json, operatorWithPool, type PoolFixture, readHandlerLog } from './helpers.ts';

// CronWorkflows end to end: a real operator process, real agents, real etcd and kube-apiserver, and
// real time. The schedules use the six-field form (seconds first) so that a run is due every few
// seconds; the minute-based form goes through the same code (see test/unit/operator/cron-schedule.test.ts).

let fx: PoolFixture;
let cluster: ClusterHandle;
let ns: string;
let handlerLog: string;
const API = '/apis/agentflow.io/v1alpha1';

const cronWorkflow = (name: string, spec: Json): Json => ({
  apiVersion: 'agentflow.io/v1alpha1',
  kind: 'CronWorkflow',
  metadata: { name, namespace: ns },
  spec,
});
const task = (handler: string, input: Json = {}): Json => ({
  pool: 'agents',
  retryPolicy: { maxAttempts: 1 },
  tasks: [{ name: 'work', handler, input }],
});
const getCron = (name: string) => cluster.client.get<Json>(`${API}/namespaces/${ns}/cronworkflows/${name}`);
const runsOf = async (cron: string): Promise<Json[]> =>
  (
    await cluster.client.get<{ items: Json[] }>(
      `${API}/namespaces/${ns}/workflows?labelSelector=${encodeURIComponent(`agentflow.io/cron-workflow=${cron}`)}`,
    )
  ).items.sort((a, b) => scheduledAt(a) - scheduledAt(b));
const scheduledAt = (w: Json): number => Date.parse(w.metadata.annotations['agentflow.io/scheduled-time']);
const phase = (w: Json) => w.status?.phase as string | undefined;
const reasons = async (name: string): Promise<string[]> => {
  const r = await cluster.kubectl([
    'get',
    'events',
    '-n',
    ns,
    '--field-selector',
    `involvedObject.name=${name}`,
    '-o',
    'json',
  ]);
  return (JSON.parse(r.stdout).items as Json[]).map((e) => e.reason);
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

beforeAll(async () => {
  fx = await operatorWithPool({
    name: 'cron',
    handlersModule: 'test/fixtures/agent/limit-handlers.mjs',
    capacity: 16,
    operator: { leaseTtl: 3 },
  });
  ({ cluster, ns, handlerLog } = fx);
}, 120_000);

afterAll(() => fx?.close());

describe('CronWorkflows', () => {
  it('start a run at each due time, named by it and owned by the CronWorkflow; suspend stops them', async () => {
    await apply(
      cluster,
      cronWorkflow('ticker', { schedule: '*/2 * * * * *', workflowSpec: task('tick', { key: 'ticker' }) }),
    );
    const cron = await until(
      'two runs succeeded',
      () => getCron('ticker'),
      (c) => c.status?.lastSuccessfulTime !== undefined,
      30_000,
    );
    await until(
      'two runs',
      () => runsOf('ticker'),
      (rs) => rs.filter((w) => phase(w) === 'Succeeded').length >= 2,
      30_000,
    );
    const runs = await runsOf('ticker');
    for (const w of runs) {
      const at = scheduledAt(w);
      expect(at % 2000).toBe(0);
      expect(w.metadata.name).toBe(`ticker-${at / 1000}`);
      expect(w.metadata.ownerReferences).toEqual([
        expect.objectContaining({ kind: 'CronWorkflow', name: 'ticker', uid: cron.metadata.uid, controller: true }),
      ]);
    }
    const c = await getCron('ticker');
    expect(Date.parse(c.status.lastScheduleTime)).toBeGreaterThanOrEqual(scheduledAt(runs[runs.length - 1] as Json));
    expect(Date.parse(c.status.nextScheduleTime)).toBeGreaterThan(Date.parse(c.status.lastScheduleTime));
    expect(c.status.conditions.find((x: Json) => x.type === 'Scheduled')).toMatchObject({
      status: 'True',
      reason: 'Scheduled',
    });
    expect(await reasons('ticker')).toContain('SuccessfulCreate');
    // The default history keeps 3 succeeded runs: wait until more than 3 were started.
    const seen = new Set<string>();
    await until(
      'a fifth run',
      async () => {
        for (const w of await runsOf('ticker')) seen.add(w.metadata.name);
        return seen.size;
      },
      (n) => n >= 5,
      30_000,
    );

    await cluster.client.mergePatch(`${API}/namespaces/${ns}/cronworkflows/ticker`, { spec: { suspend: true } });
    const suspended = await until(
      'suspended',
      () => getCron('ticker'),
      (x) => x.status?.conditions?.some((k: Json) => k.type === 'Scheduled' && k.reason === 'Suspended'),
      10_000,
    );
    expect(suspended.status.nextScheduleTime).toBeUndefined();
    const before = (await runsOf('ticker')).map((w) => w.metadata.name);
    await sleep(4_500);
    const after = await until(
      'the history pruned',
      () => runsOf('ticker'),
      (rs) => rs.every((w) => phase(w) === 'Succeeded') && rs.length <= 3,
      10_000,
    );
    expect(after.map((w) => w.metadata.name).filter((n) => !before.includes(n))).toEqual([]);
    expect(after).toHaveLength(3);
  });

  it('history limits delete the oldest finished runs: succeeded and failed each to their own limit', async () => {
    await apply(
      cluster,
      cronWorkflow('failing', {
        schedule: '*/2 * * * * *',
        failedJobsHistoryLimit: 1,
        successfulJobsHistoryLimit: 0,
        workflowSpec: task('fail', { key: 'failing' }),
      }),
    );
    await until(
      'three runs failed',
      async () => readFailures(),
      (n) => n >= 3,
      30_000,
    );
    const runs = await until(
      'pruned to one failed run',
      () => runsOf('failing'),
      (rs) => rs.filter((w) => phase(w) === 'Failed').length === 1,
      10_000,
    );
    expect(runs.filter((w) => phase(w) === 'Failed')).toHaveLength(1);
    await cluster.client.mergePatch(`${API}/namespaces/${ns}/cronworkflows/failing`, { spec: { suspend: true } });
  });

  it('Forbid holds a due run back while one runs, and starts it once that one finishes', async () => {
    await apply(
      cluster,
      cronWorkflow('forbid', {
        schedule: '*/4 * * * * *',
        concurrencyPolicy: 'Forbid',
        workflowSpec: task('hold', { key: 'forbid', ms: 5500 }),
      }),
    );
    let most = 0;
    const runs = await until(
      'two runs finished',
      async () => {
        const rs = await runsOf('forbid');
        most = Math.max(most, rs.filter((w) => !['Succeeded', 'Failed'].includes(phase(w) ?? '')).length);
        return rs;
      },
      (rs) => rs.filter((w) => phase(w) === 'Succeeded').length >= 2,
      40_000,
    );
    await cluster.client.mergePatch(`${API}/namespaces/${ns}/cronworkflows/forbid`, { spec: { suspend: true } });
    expect(most).toBe(1);
    const [first, second] = runs as [Json, Json];
    // The schedule held back while the first ran is the one started after it: 4 s later, not skipped.
    expect(scheduledAt(second) - scheduledAt(first)).toBe(4000);
    expect(Date.parse(second.metadata.creationTimestamp)).toBeGreaterThanOrEqual(
      Date.parse(first.status.finishedAt) - 1000,
    );
    expect(await reasons('forbid')).toContain('JobAlreadyActive');
  });

  it('Forbid with startingDeadlineSeconds skips a held-back run once it is too late', async () => {
    await apply(
      cluster,
      cronWorkflow('deadline', {
        schedule: '*/4 * * * * *',
        concurrencyPolicy: 'Forbid',
        startingDeadlineSeconds: 1,
        workflowSpec: task('hold', { key: 'deadline', ms: 5500 }),
      }),
    );
    const runs = await until(
      'two runs finished',
      () => runsOf('deadline'),
      (rs) => rs.filter((w) => phase(w) === 'Succeeded').length >= 2,
      40_000,
    );
    await cluster.client.mergePatch(`${API}/namespaces/${ns}/cronworkflows/deadline`, { spec: { suspend: true } });
    const [first, second] = runs as [Json, Json];
    // Due 4 s after the first, held back, and more than 1 s late when the first finished: skipped.
    expect(scheduledAt(second) - scheduledAt(first)).toBe(8000);
    expect(await reasons('deadline')).toContain('MissSchedule');
  });

  it('Replace deletes the running run before it starts the next; Allow lets them overlap', async () => {
    await apply(
      cluster,
      cronWorkflow('replace', {
        schedule: '*/3 * * * * *',
        concurrencyPolicy: 'Replace',
        workflowSpec: task('hold', { key: 'replace', ms: 60_000 }),
      }),
    );
    await apply(
      cluster,
      cronWorkflow('allow', { schedule: '*/2 * * * * *', workflowSpec: task('hold', { key: 'allow', ms: 5000 }) }),
    );
    const first = (
      await until(
        'a replace run',
        () => runsOf('replace'),
        (rs) => rs.length >= 1,
        20_000,
      )
    )[0] as Json;
    await until(
      'the first replaced',
      () => runsOf('replace'),
      (rs) =>
        rs.some((w) => scheduledAt(w) > scheduledAt(first)) && !rs.some((w) => w.metadata.name === first.metadata.name),
      30_000,
    );
    expect(await reasons('replace')).toContain('SuccessfulDelete');
    const c = await getCron('replace');
    expect(c.status.active).toHaveLength(1);
    const allow = await until(
      'two allow runs at once',
      () => getCron('allow'),
      (x) => (x.status?.active?.length ?? 0) >= 2,
      30_000,
    );
    expect(allow.status.active.length).toBeGreaterThanOrEqual(2);
    for (const n of ['replace', 'allow'])
      await cluster.client.mergePatch(`${API}/namespaces/${ns}/cronworkflows/${n}`, { spec: { suspend: true } });
  });

  it('reports a schedule the parser refuses, naming the field', async () => {
    await apply(cluster, cronWorkflow('bad', { schedule: '61 * * * *', workflowSpec: task('tick') }));
    const c = await until(
      'the problem reported',
      () => getCron('bad'),
      (x) => x.status?.conditions?.some((k: Json) => k.reason === 'InvalidSchedule'),
      10_000,
    );
    expect(c.status.conditions.find((k: Json) => k.type === 'Scheduled').message).toMatch(
      /^spec\.schedule: "61 \* \* \* \*" is not a cron schedule/,
    );
    expect(await reasons('bad')).toContain('InvalidSchedule');
    expect(await runsOf('bad')).toEqual([]);
  });

  it('deleting a CronWorkflow deletes its runs', async () => {
    await cluster.client.delete(`${API}/namespaces/${ns}/cronworkflows/ticker`);
    await until(
      'its runs gone',
      () => runsOf('ticker'),
      (rs) => rs.length === 0,
      30_000,
    );
  });

  // Last: it kills the leader.
  it('after an operator outage only the latest missed run starts, once', async () => {
    await apply(
      cluster,
      cronWorkflow('outage', { schedule: '*/2 * * * * *', workflowSpec: task('tick', { key: 'outage' }) }),
    );
    const before = await until(
      'a run',
      () => runsOf('outage'),
      (rs) => rs.length >= 1,
      20_000,
    );
    const leader = fx.operators[0] as OperatorProcess;
    leader.kill('SIGKILL');
    await leader.exited;
    const killedAt = Date.now();
    const lastBefore = Math.max(...(await runsOf('outage')).map(scheduledAt), ...before.map(scheduledAt));
    await sleep(7_000); // no operator: at least three due times pass
    const next = fx.operator('op-cron-2');
    await next.waitFor('Operator is leading', 30_000);
    const leadingAt = Date.now();
    const after = await until(
      'a run after the outage',
      () => runsOf('outage'),
      (rs) => rs.some((w) => scheduledAt(w) > killedAt),
      20_000,
    );
    await cluster.client.mergePatch(`${API}/namespaces/${ns}/cronworkflows/outage`, { spec: { suspend: true } });
    const caughtUp = after.filter((w) => scheduledAt(w) > lastBefore).map(scheduledAt);
    const first = Math.min(...caughtUp);
    // The times missed while no operator ran (at least three of them) were not all started: the
    // first run after the outage is for the latest of them, and none before it.
    expect(killedAt - lastBefore).toBeLessThan(2500);
    expect(first - lastBefore).toBeGreaterThanOrEqual(6000);
    expect(first).toBeLessThanOrEqual(leadingAt + 2000);
    expect(new Set(caughtUp).size).toBe(caughtUp.length);
  });
});

function readFailures(): number {
  return readHandlerLog(handlerLog).filter((l) => l.handler === 'fail' && l.key === 'failing').length;
}
