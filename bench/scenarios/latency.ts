// Dispatch latency: hand-over -> handler start (agentflow: submit -> the
// handler runs in an agent process; BullMQ: job added -> processor invoked),
// both timed on the machine clock, at low load and at a fraction of each
// system's measured peak (open loop: tasks arrive at a fixed rate).
import { ALL_SYSTEMS, type BenchConfig, starter } from '../lib/config.ts';
import { printTable, writeJson, writeSvg } from '../lib/report.ts';
import { round, type Summary, summarize } from '../lib/stats.ts';
import { type Panel, percentilePanel, svgDocument } from '../lib/svg.ts';
import { runBatch, runPaced, type System, type SystemKey, withSystems } from '../lib/system.ts';

interface LoadPoint {
  ratePerSec: number;
  tasks: number;
  /** What the system sustained: tasks over the time from the first hand-over to the last result. */
  achievedPerSec: number;
  /** Hand-over -> handler / processor start. */
  dispatchMs: Summary;
  /** Hand-over -> result recorded (and reported to the driver). */
  resultMs: Summary;
}

const PERCENTILES = ['p50', 'p90', 'p95', 'p99', 'max'] as const;

export async function latency(cfg: BenchConfig, peak: Record<SystemKey, number>): Promise<void> {
  const { lowRate, lowTasks, highFractionOfPeak, highSeconds } = cfg.latency;
  const points = new Map<System, { low: LoadPoint; high: LoadPoint }>();
  await withSystems(
    ALL_SYSTEMS.map((k) => starter(k, cfg)),
    async (systems) => {
      for (const s of systems) await runBatch(s, 'warmup', 1_000, 60_000);
      const low = new Map<System, LoadPoint>();
      for (const s of systems) {
        console.log(`latency: ${s.label} at ${lowRate}/s`);
        low.set(s, await measure(s, 'low', lowRate, lowTasks));
      }
      for (const s of systems) {
        const rate = Math.round(peak[s.key] * highFractionOfPeak);
        console.log(`latency: ${s.label} at ${rate}/s (${highFractionOfPeak * 100}% of its peak ${peak[s.key]}/s)`);
        const high = await measure(s, 'high', rate, Math.round(rate * highSeconds));
        points.set(s, { low: low.get(s) as LoadPoint, high });
      }
    },
  );

  const results = [...points].map(([s, p]) => ({ key: s.key, label: s.label, security: s.security, ...p }));
  const secure = results.find((r) => r.key === 'agentflow');
  const plain = results.find((r) => r.key === 'agentflow-plaintext');
  const extra = (load: 'low' | 'high') =>
    secure &&
    plain && {
      rates: { agentflow: secure[load].ratePerSec, 'agentflow-plaintext': plain[load].ratePerSec },
      dispatchP50Ms: round(secure[load].dispatchMs.p50 - plain[load].dispatchMs.p50),
      dispatchP99Ms: round(secure[load].dispatchMs.p99 - plain[load].dispatchMs.p99),
      resultP50Ms: round(secure[load].resultMs.p50 - plain[load].resultMs.p50),
      resultP99Ms: round(secure[load].resultMs.p99 - plain[load].resultMs.p99),
    };
  const config = {
    workers: cfg.workers,
    capacity: cfg.capacity,
    low: { ratePerSec: lowRate, tasks: lowTasks },
    high: { fractionOfPeak: highFractionOfPeak, seconds: highSeconds, peaksUsed: peak },
    clock: 'performance.timeOrigin + performance.now() in every process (one machine clock)',
  };
  const json = writeJson('latency', config, {
    unit: 'ms',
    measures: {
      dispatchMs:
        'agentflow: dispatcher.submit() -> handler invoked in the agent process; BullMQ: queue.addBulk() called -> processor invoked in the worker process',
      resultMs:
        "hand-over -> the driver learns the result is recorded (dispatcher 'committed' event / QueueEvents 'completed')",
    },
    systems: Object.fromEntries(results.map((r) => [r.key, r])),
    costOfSecurityNote:
      'agentflow (TLS + token auth) minus agentflow-plaintext, ms; the high point runs each at 80% of its own peak',
    costOfSecurity: { low: extra('low'), high: extra('high') },
  });

  for (const load of ['low', 'high'] as const) {
    printTable(
      `Latency at ${load} load: hand-over -> handler start (ms)`,
      ['system', 'rate/s', 'achieved/s', 'p50', 'p95', 'p99', 'max', 'result p50', 'result p99'],
      results.map((r) => {
        const p = r[load];
        return [
          r.label,
          p.ratePerSec,
          p.achievedPerSec,
          p.dispatchMs.p50,
          p.dispatchMs.p95,
          p.dispatchMs.p99,
          p.dispatchMs.max,
          p.resultMs.p50,
          p.resultMs.p99,
        ];
      }),
    );
  }

  type R = (typeof results)[number];
  const panel = (title: string, pick: (r: R) => Summary, label = (r: R) => r.label): Panel =>
    percentilePanel(
      title,
      'ms',
      [...PERCENTILES],
      results.map((r) => ({ label: label(r), color: r.key, values: PERCENTILES.map((p) => pick(r)[p]) })),
    );
  const svg = svgDocument(
    'Dispatch latency: hand-over to handler start',
    `${cfg.workers} processes x ${cfg.capacity} slots; low = ${lowRate}/s, high = ${highFractionOfPeak * 100}% of each system's peak; ${new Date().toISOString().slice(0, 10)}`,
    [
      panel(`Low load (${lowRate} tasks/s): hand-over -> handler start`, (r) => r.low.dispatchMs),
      panel(
        `High load (${highFractionOfPeak * 100}% of each peak): hand-over -> handler start`,
        (r) => r.high.dispatchMs,
        (r) => `${r.label} @ ${r.high.ratePerSec}/s`,
      ),
      panel(`Low load: hand-over -> result recorded`, (r) => r.low.resultMs),
    ],
  );
  console.log(`\nwrote ${json} and ${writeSvg('latency', svg)}`);
}

async function measure(s: System, phase: string, rate: number, tasks: number): Promise<LoadPoint> {
  const { done, startedAt } = await runPaced(s, phase, rate, tasks, 60_000 + tasks * 10);
  const last = done.reduce((m, d) => Math.max(m, d.observedAt), 0);
  return {
    ratePerSec: rate,
    tasks,
    achievedPerSec: round(tasks / ((last - startedAt) / 1000), 0),
    dispatchMs: summarize(done.map((d) => d.startedAt - d.sentAt)),
    resultMs: summarize(done.map((d) => d.observedAt - d.sentAt)),
  };
}
