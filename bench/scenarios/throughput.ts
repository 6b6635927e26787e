// Throughput: N no-op tasks handed over at once, timed from the first
// hand-over to the last durably recorded result, for each system in turn,
// in interleaved rounds (other load on the machine hits every system alike).
import { now } from '../lib/clock.ts';
import { ALL_SYSTEMS, type BenchConfig, starter } from '../lib/config.ts';
import { CpuMeter } from '../lib/proc.ts';
import { printTable, writeJson, writeSvg } from '../lib/report.ts';
import { percentile, round } from '../lib/stats.ts';
import { barPanel, svgDocument } from '../lib/svg.ts';
import { runBatch, type Security, type System, type SystemKey, withSystems } from '../lib/system.ts';

interface Round {
  tasksPerSec: number;
  seconds: number;
  /** CPU seconds by process role during the round. */
  cpuSeconds: Record<string, number>;
  /** Store counter deltas during the round (etcd fsyncs and txns / redis commands). */
  store: Record<string, number>;
}

interface SystemThroughput {
  key: SystemKey;
  label: string;
  security: Security;
  persists: string;
  fsync: string;
  /** Median of the rounds. */
  tasksPerSec: number;
  rounds: Round[];
  /** From the median round. */
  cpuMsPerTask: Record<string, number>;
  cpuMsPerTaskTotal: number;
  storePerTask: Record<string, number>;
}

export interface ThroughputResult {
  /** Median tasks/s per system. */
  peak: Record<SystemKey, number>;
}

export async function throughput(cfg: BenchConfig): Promise<ThroughputResult> {
  const { tasks, rounds, warmupTasks } = cfg.throughput;
  const timeoutMs = 60_000 + tasks * 10;
  const measured = new Map<System, Round[]>();
  await withSystems(
    ALL_SYSTEMS.map((k) => starter(k, cfg)),
    async (systems) => {
      for (const s of systems) {
        console.log(`throughput: warming up ${s.label} (${warmupTasks} tasks)`);
        await runBatch(s, 'warmup', warmupTasks, timeoutMs);
        measured.set(s, []);
      }
      for (let r = 1; r <= rounds; r++) {
        for (const s of systems) {
          const rd = await measure(s, `tp${r}`, tasks, timeoutMs);
          measured.get(s)?.push(rd);
          console.log(`throughput: round ${r}/${rounds} ${s.label}: ${Math.round(rd.tasksPerSec)} tasks/s`);
        }
      }
    },
  );

  const results: SystemThroughput[] = [...measured].map(([s, rs]) => {
    const median = percentile(
      rs.map((r) => r.tasksPerSec),
      50,
    );
    const mid = rs.find((r) => r.tasksPerSec === median) ?? (rs[0] as Round);
    const cpuMsPerTask = perTask(mid.cpuSeconds, tasks, 1000);
    return {
      key: s.key,
      label: s.label,
      security: s.security,
      persists: s.persistence.persists,
      fsync: s.persistence.fsync,
      tasksPerSec: round(median, 0),
      rounds: rs.map((r) => ({ ...r, tasksPerSec: round(r.tasksPerSec, 0) })),
      cpuMsPerTask,
      cpuMsPerTaskTotal: round(
        Object.values(cpuMsPerTask).reduce((a, b) => a + b, 0),
        3,
      ),
      storePerTask: perTask(mid.store, tasks, 1),
    };
  });
  const peak = Object.fromEntries(results.map((r) => [r.key, r.tasksPerSec])) as Record<SystemKey, number>;
  // Paired: each round runs the systems back to back, so a per-round ratio cancels slow drifts in
  // other load on the machine; the median of those is the figure.
  const roundsOf = (k: SystemKey) => results.find((r) => r.key === k)?.rounds ?? [];
  const pairRatio = (a: SystemKey, b: SystemKey) =>
    round(
      percentile(
        roundsOf(a).map((r, i) => r.tasksPerSec / (roundsOf(b)[i]?.tasksPerSec ?? Number.NaN)),
        50,
      ),
      2,
    );
  const ratio = (k: SystemKey) => pairRatio('agentflow', k);
  const secure = results.find((r) => r.key === 'agentflow');
  const plain = results.find((r) => r.key === 'agentflow-plaintext');
  const config = { tasks, rounds, warmupTasks, workers: cfg.workers, capacity: cfg.capacity, taskBody: 'no-op' };
  const json = writeJson('throughput', config, {
    unit: 'tasks/s from the first hand-over to the last durably recorded result (median of rounds)',
    systems: Object.fromEntries(results.map((r) => [r.key, r])),
    ratiosNote:
      'median over rounds of a tasks/s / b tasks/s in the same round; agentflow = TLS + token auth (what users get), ' +
      'agentflow-plaintext = the no-TLS, no-auth baseline',
    ratios: {
      'agentflow/agentflow-plaintext': ratio('agentflow-plaintext'),
      'agentflow/bullmq-everysec': ratio('bullmq-everysec'),
      'agentflow/bullmq-always': ratio('bullmq-always'),
      'agentflow-plaintext/bullmq-everysec': pairRatio('agentflow-plaintext', 'bullmq-everysec'),
      'agentflow-plaintext/bullmq-always': pairRatio('agentflow-plaintext', 'bullmq-always'),
    },
    costOfSecurity: secure &&
      plain && {
        throughputRatio: ratio('agentflow-plaintext'),
        cpuMsPerTaskExtra: round(secure.cpuMsPerTaskTotal - plain.cpuMsPerTaskTotal, 3),
        cpuMsPerTaskExtraByRole: mapValues(secure.cpuMsPerTask, (v, k) => round(v - (plain.cpuMsPerTask[k] ?? 0), 4)),
      },
  });

  printTable(
    `Throughput: ${tasks.toLocaleString('en-US')} no-op tasks, ${cfg.workers} worker processes x ${cfg.capacity} slots (median of ${rounds} rounds)`,
    ['system', 'tasks/s', 'rounds', 'CPU ms/task', 'agentflow / this'],
    results.map((r) => [
      r.label,
      r.tasksPerSec,
      r.rounds.map((x) => x.tasksPerSec).join(' / '),
      r.cpuMsPerTaskTotal,
      r.key === 'agentflow' ? '' : `x${ratio(r.key)}`,
    ]),
  );
  printTable(
    'CPU ms per task by process role (median round)',
    ['system', 'role', 'CPU ms/task'],
    results.flatMap((r) => Object.entries(r.cpuMsPerTask).map(([role, ms]) => [r.label, role, ms])),
  );
  console.log('\nWhat each side persists, and when it fsyncs:');
  for (const r of results) console.log(`- ${r.label}: ${r.persists}.\n  fsync: ${r.fsync}.`);

  const svg = svgDocument(
    'Throughput: no-op tasks to a durably recorded result',
    `${tasks.toLocaleString('en-US')} tasks, ${cfg.workers} processes x ${cfg.capacity} slots, median of ${rounds} rounds, ${new Date().toISOString().slice(0, 10)}`,
    [
      barPanel(
        'Throughput',
        'tasks/s, higher is better',
        results.map((r) => ({
          label: r.label,
          value: r.tasksPerSec,
          color: r.key,
          note: r.key === 'agentflow' ? '' : `agentflow: x${ratio(r.key)}`,
        })),
      ),
      barPanel(
        'CPU per task, all processes',
        'ms, lower is better',
        results.map((r) => ({ label: r.label, value: r.cpuMsPerTaskTotal, color: r.key })),
      ),
    ],
  );
  console.log(`\nwrote ${json} and ${writeSvg('throughput', svg)}`);
  return { peak };
}

async function measure(s: System, phase: string, tasks: number, timeoutMs: number): Promise<Round> {
  const cpu = new CpuMeter(() => s.roles());
  const before = await s.storeCounters();
  cpu.begin();
  const t0 = now();
  const done = await runBatch(s, phase, tasks, timeoutMs);
  const t1 = done.reduce((m, d) => Math.max(m, d.observedAt), 0);
  const cpuSeconds = cpu.end();
  const after = await s.storeCounters();
  return {
    tasksPerSec: tasks / ((t1 - t0) / 1000),
    seconds: round((t1 - t0) / 1000, 3),
    cpuSeconds: mapValues(cpuSeconds, (v) => round(v, 2)),
    store: mapValues(after, (v, k) => round(v - (before[k] ?? 0), 4)),
  };
}

const mapValues = (o: Record<string, number>, f: (v: number, k: string) => number) =>
  Object.fromEntries(Object.entries(o).map(([k, v]) => [k, f(v, k)]));

const perTask = (totals: Record<string, number>, tasks: number, scale: number) =>
  mapValues(totals, (v) => round((v * scale) / tasks, 4));
