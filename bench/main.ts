// The benchmark suite: agentflow's dispatcher + agents against BullMQ on
// redis, side by side in one process tree, on this machine.
//   npm run bench                      quick set (a few minutes)
//   npm run bench -- --full            full set (50k tasks, failover, 1,000 agents)
//   npm run bench -- --only chain,failover [--workers 4] [--capacity 16]
//   npm run bench -- --only workflow   a 10,000-task fan-out + fan-in (100,000 too with --full)
//   npm run bench -- --only limits     the cost of concurrency keys and rate limits on throughput
// Each scenario prints a table and writes bench/results/<scenario>.json + .svg;
// the profile writes bench/results/profile.md.
import { existsSync, readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ALL_SYSTEMS, benchConfig } from './lib/config.ts';
import { machine } from './lib/env.ts';
import { RESULTS_DIR } from './lib/report.ts';
import type { SystemKey } from './lib/system.ts';
import { chain } from './scenarios/chain.ts';
import { failover } from './scenarios/failover.ts';
import { latency } from './scenarios/latency.ts';
import { limits } from './scenarios/limits.ts';
import { profile } from './scenarios/profile.ts';
import { scale } from './scenarios/scale.ts';
import { writeSecurityReport } from './scenarios/security-report.ts';
import { throughput } from './scenarios/throughput.ts';
import { tracing } from './scenarios/tracing.ts';
import { workflow } from './scenarios/workflow.ts';

const SCENARIOS = [
  'throughput',
  'latency',
  'chain',
  'workflow',
  'failover',
  'limits',
  'scale',
  'profile',
  'tracing',
] as const;
type Scenario = (typeof SCENARIOS)[number];

const { values } = parseArgs({
  options: {
    full: { type: 'boolean', default: false },
    only: { type: 'string' },
    workers: { type: 'string', default: '4' },
    // Default 16 (the workflow scenario: 32, issue 16's 4 agents x 32 slots); a value given applies to all.
    capacity: { type: 'string' },
  },
});
const positive = (name: string, v: string | undefined) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name}: expected a positive integer, got "${v}"`);
  return n;
};
const capacity = values.capacity === undefined ? undefined : positive('capacity', values.capacity);
const cfg = benchConfig(values.full, positive('workers', values.workers), capacity ?? 16, capacity);
const defaults: Scenario[] = values.full ? [...SCENARIOS] : SCENARIOS.filter((s) => s !== 'scale');
const only = values.only?.split(',').map((s) => s.trim()) ?? defaults;
for (const s of only) {
  if (!SCENARIOS.includes(s as Scenario))
    throw new Error(`--only: unknown scenario "${s}" (known: ${SCENARIOS.join(', ')})`);
}
const run = (s: Scenario) => only.includes(s);

const m = machine();
console.log(
  `agentflow bench (${cfg.mode}): ${m.cpuCount} x ${m.cpuModel}, ${m.totalMemGiB} GiB, node ${m.node}, ` +
    `etcd ${m.versions.etcd}, redis ${m.versions.redis}, bullmq ${m.versions.bullmq}`,
);
const [load] = loadavg();
if ((load ?? 0) > m.cpuCount / 2) {
  console.log(
    `note: load average ${load?.toFixed(2)} on ${m.cpuCount} CPUs: other work is running, expect noisy figures`,
  );
}
const started = performance.now();

let peak: Record<SystemKey, number> | undefined;
if (run('throughput')) peak = (await throughput(cfg)).peak;
// The high-load latency point is a fraction of each system's peak: from this run, else from the last one.
if (run('latency')) await latency(cfg, peak ?? lastPeaks());
if (run('chain')) await chain(cfg);
if (run('workflow')) await workflow(cfg);
if (run('failover')) await failover(cfg);
if (run('limits')) await limits(cfg);
if (run('scale')) await scale(cfg);
if (run('profile')) await profile(cfg);
if (run('tracing')) await tracing(cfg);
if (['throughput', 'latency', 'chain', 'failover'].some((s) => run(s as Scenario))) {
  const report = writeSecurityReport();
  if (report) console.log(`\nwrote ${report}`);
}
console.log(`\nbench finished in ${Math.round((performance.now() - started) / 1000)} s`);

function lastPeaks(): Record<SystemKey, number> {
  const file = join(RESULTS_DIR, 'throughput.json');
  if (!existsSync(file))
    throw new Error(`latency needs the throughput peaks: run the throughput scenario first (${file})`);
  const doc = JSON.parse(readFileSync(file, 'utf8')) as {
    systems: Partial<Record<SystemKey, { tasksPerSec: number }>>;
  };
  const missing = ALL_SYSTEMS.filter((k) => doc.systems[k] === undefined);
  if (missing.length > 0)
    throw new Error(
      `latency needs the throughput peaks of ${missing.join(', ')}: run the throughput scenario first (${file})`,
    );
  return Object.fromEntries(ALL_SYSTEMS.map((k) => [k, doc.systems[k]?.tasksPerSec ?? 0])) as Record<SystemKey, number>;
}
