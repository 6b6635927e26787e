// Failover: kill -9 a worker process while it holds tasks, then time how long
// until those tasks run again elsewhere, and audit the store: every task
// recorded exactly once (none lost, none committed twice).
//   agentflow: the dispatcher stops keeping the dead agent's etcd lease (TTL
//     2 s / 5 s), it expires, its claims vanish, the dispatcher re-queues the
//     attempts. Run twice: TLS + token auth (what users get) and the
//     plaintext baseline.
//   BullMQ (peer): lockDuration = stalledInterval = the same 2 s / 5 s, so a
//     surviving worker's stalled-job check moves the jobs back to wait.
import { AgentflowSystem } from '../lib/agentflow.ts';
import { BullmqSystem } from '../lib/bullmq.ts';
import { now } from '../lib/clock.ts';
import type { BenchConfig } from '../lib/config.ts';
import { printTable, writeJson, writeSvg } from '../lib/report.ts';
import { round, type Summary, summarize } from '../lib/stats.ts';
import { barPanel, svgDocument } from '../lib/svg.ts';
import { Collector, ids, type Security, type System, type SystemKey, withSystems } from '../lib/system.ts';

interface FailoverRun {
  key: SystemKey;
  label: string;
  security: Security;
  ttlSeconds: number;
  tasks: number;
  /** Tasks the victim had started and not finished when it was killed. */
  heldAtKill: number;
  /** Tasks not yet started anywhere at the kill: a re-queued task may wait behind them. */
  queuedAtKill: number;
  /** kill -> the system's first sign it noticed (agentflow 'lost' event / BullMQ 'stalled' event). */
  detectedMs: number;
  /** kill -> each held task started again on another worker. */
  runAgainMs: Summary;
  /** kill -> the last held task's result recorded. */
  allRecordedMs: number;
  lost: number;
  committedTwice: number;
  reportedTwice: number;
  audit: Record<string, number>;
}

export async function failover(cfg: BenchConfig): Promise<void> {
  const { tasks, holdMs, ttlSeconds } = cfg.failover;
  const runs: FailoverRun[] = [];
  for (const ttl of ttlSeconds) {
    const common = { processes: cfg.workers, holdMs, reportStarts: true };
    const starters = [
      () => AgentflowSystem.start({ ...common, capacity: cfg.capacity, leaseTtlSeconds: ttl, security: 'tls+auth' }),
      () => AgentflowSystem.start({ ...common, capacity: cfg.capacity, leaseTtlSeconds: ttl, security: 'plaintext' }),
      () =>
        BullmqSystem.start({
          ...common,
          fsync: 'everysec',
          concurrency: cfg.capacity,
          lockDurationMs: ttl * 1000,
          stalledIntervalMs: ttl * 1000,
        }),
    ];
    for (const start of starters) {
      await withSystems([start], async ([s]) => {
        console.log(`failover: ${s?.label}, TTL ${ttl} s`);
        runs.push(await killOne(s as System, ttl, tasks, cfg.capacity));
      });
    }
  }

  const config = {
    tasks,
    holdMs,
    workers: cfg.workers,
    capacity: cfg.capacity,
    ttlSeconds,
    kill: `SIGKILL to worker process 0 once it has started ${cfg.capacity} tasks`,
    agentflow:
      "the dispatcher's agentLeaseTtlSeconds = TTL (agents heartbeat every TTL/4); a dead agent's stream ends, the " +
      'dispatcher stops keeping its lease, and re-queues when the claim (bound to the lease) vanishes',
    bullmq: 'Worker lockDuration = stalledInterval = TTL; maxStalledCount 1 (default)',
  };
  const json = writeJson('failover', config, {
    unit: 'ms',
    invariant: 'lost = 0 and committedTwice = 0 (checked in the store: etcd result keys / BullMQ completed jobs)',
    requeueOrder:
      'agentflow re-queues a lost attempt at its first place in the pool queue (ahead of tasks queued after it); ' +
      'BullMQ RPUSHes a stalled job to the end of wait that workers pop next, so it runs before the backlog',
    runs,
    costOfSecurityNote: 'per TTL: agentflow (TLS + token auth) minus agentflow-plaintext, ms from the kill',
    costOfSecurity: Object.fromEntries(
      ttlSeconds.map((ttl) => {
        const of = (k: SystemKey) => runs.find((r) => r.key === k && r.ttlSeconds === ttl);
        const [secure, plain] = [of('agentflow'), of('agentflow-plaintext')];
        const delta = secure &&
          plain && {
            detectedMs: round(secure.detectedMs - plain.detectedMs),
            runAgainP50Ms: round(secure.runAgainMs.p50 - plain.runAgainMs.p50),
            allRecordedMs: round(secure.allRecordedMs - plain.allRecordedMs),
          };
        return [`ttl${ttl}s`, delta];
      }),
    ),
  });
  printTable(
    `Failover: kill -9 a worker holding tasks (${tasks} tasks of ${holdMs} ms, ${cfg.workers} x ${cfg.capacity} slots)`,
    ['system', 'TTL s', 'held', 'queued', 'detected', 'run again p50', 'max', 'all recorded', 'lost', 'twice'],
    runs.map((r) => [
      r.label,
      r.ttlSeconds,
      r.heldAtKill,
      r.queuedAtKill,
      r.detectedMs,
      r.runAgainMs.p50,
      r.runAgainMs.max,
      r.allRecordedMs,
      r.lost,
      r.committedTwice + r.reportedTwice,
    ]),
  );
  console.log(
    '(ms from the kill; held = tasks the killed worker was running, queued = tasks not started anywhere yet.\n' +
      ' a lost attempt runs again ahead of the queued tasks on both: agentflow keeps its place in line, BullMQ moves a stalled job to the head of wait.)',
  );
  const bad = runs.filter((r) => r.lost > 0 || r.committedTwice > 0 || r.reportedTwice > 0);
  for (const r of bad) {
    console.log(
      `!! ${r.label} TTL ${r.ttlSeconds}: lost ${r.lost}, committed twice ${r.committedTwice + r.reportedTwice}`,
    );
  }
  const svg = svgDocument(
    'Failover: kill -9 a worker holding tasks',
    `time from the kill until the held tasks run again on another worker (p50), ${tasks} tasks; ${new Date().toISOString().slice(0, 10)}`,
    ttlSeconds.map((ttl) =>
      barPanel(
        `TTL / lock duration ${ttl} s: kill -> run again, p50`,
        'ms, lower is better',
        runs
          .filter((r) => r.ttlSeconds === ttl)
          .map((r) => ({
            label: r.label,
            value: r.runAgainMs.p50,
            color: r.key,
            note: `lost ${r.lost}, twice ${r.committedTwice + r.reportedTwice}`,
          })),
      ),
    ),
  );
  console.log(`\nwrote ${json} and ${writeSvg('failover', svg)}`);
}

async function killOne(s: System, ttl: number, tasks: number, capacity: number): Promise<FailoverRun> {
  const victim = s.workerNames[0] as string;
  const phase = 'fo';
  const starts = new Map<string, { worker: string; at: number }[]>();
  s.on('start', (m, worker) => {
    const list = starts.get(m.id) ?? [];
    list.push({ worker, at: m.at });
    starts.set(m.id, list);
  });
  const lostAt: number[] = [];
  s.on('lost', (l) => lostAt.push(l.at));

  const collector = new Collector(s, phase, tasks);
  s.send(ids(phase, tasks));
  const startedOn = (w: string) => [...starts.values()].filter((l) => l.some((x) => x.worker === w)).length;
  const deadline = now() + 30_000;
  while (startedOn(victim) < capacity) {
    if (now() > deadline) throw new Error(`${s.label}: ${victim} never started ${capacity} tasks`);
    await new Promise((r) => setTimeout(r, 2));
  }
  const killAt = now();
  s.killWorker(victim);
  const queuedAtKill = tasks - starts.size;
  const held = [...starts]
    .filter(([id, l]) => l.some((x) => x.worker === victim) && !collector.results.has(id))
    .map(([id]) => id);

  await collector.wait(60_000 + ttl * 4_000 + tasks * 50).catch((err: Error) => console.error(err.message));
  const runAgain = held
    .map((id) => (starts.get(id) ?? []).find((x) => x.worker !== victim && x.at > killAt)?.at ?? Number.NaN)
    .filter(Number.isFinite)
    .map((at) => at - killAt);
  const heldDone = held.map((id) => collector.results.get(id)?.observedAt ?? Number.NaN);
  const audit = await s.audit(phase);
  return {
    key: s.key,
    label: s.label,
    security: s.security,
    ttlSeconds: ttl,
    tasks,
    heldAtKill: held.length,
    queuedAtKill,
    detectedMs: round((lostAt.find((t) => t > killAt) ?? Number.NaN) - killAt),
    runAgainMs: summarize(runAgain),
    allRecordedMs: round(Math.max(...heldDone) - killAt),
    lost: tasks - (audit.recorded ?? 0),
    committedTwice: audit.recordedMoreThanOnce ?? 0,
    reportedTwice: collector.duplicates.length,
    audit,
  };
}
