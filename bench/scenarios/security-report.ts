// Renders bench/results/security.md, "the cost of security": agentflow as
// users get it (TLS + token auth) beside its plaintext, no-auth baseline and
// BullMQ, from the throughput, latency, chain and failover results of the
// same run. Written at the end of `npm run bench` when any of those ran.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Machine } from '../lib/env.ts';
import { RESULTS_DIR } from '../lib/report.ts';
import { SECURITY_NOTES } from '../lib/security.ts';
import type { Summary } from '../lib/stats.ts';
import type { SystemKey } from '../lib/system.ts';

const KEYS: SystemKey[] = ['agentflow', 'agentflow-plaintext', 'bullmq-everysec', 'bullmq-always'];
const HEAD = [
  'agentflow (TLS + token auth)',
  'agentflow-plaintext (baseline)',
  'BullMQ AOF everysec',
  'BullMQ AOF always',
];

interface Doc {
  generatedAt: string;
  command: string;
  machine: Machine;
  loadAverage: number[];
}
interface ThroughputDoc extends Doc {
  config: { tasks: number; rounds: number; workers: number; capacity: number };
  systems: Partial<
    Record<SystemKey, { tasksPerSec: number; cpuMsPerTaskTotal: number; rounds: { tasksPerSec: number }[] }>
  >;
  ratios: Record<string, number>;
  costOfSecurity?: { cpuMsPerTaskExtra: number; cpuMsPerTaskExtraByRole: Record<string, number> };
}
interface LatencyPoint {
  ratePerSec: number;
  dispatchMs: Summary;
  resultMs: Summary;
}
interface LatencyDoc extends Doc {
  systems: Partial<Record<SystemKey, { low: LatencyPoint; high: LatencyPoint }>>;
}
interface ChainDoc extends Doc {
  systems: Partial<Record<SystemKey, { hopMs: Summary }>>;
}
interface FailoverDoc extends Doc {
  config: { ttlSeconds: number[]; tasks: number };
  runs: {
    key: SystemKey;
    ttlSeconds: number;
    detectedMs: number;
    runAgainMs: Summary;
    allRecordedMs: number;
    lost: number;
    committedTwice: number;
    reportedTwice: number;
  }[];
}

function read<T extends Doc>(scenario: string): T | undefined {
  const file = join(RESULTS_DIR, `${scenario}.json`);
  return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as T) : undefined;
}

const fmt = (n: number | undefined, digits = 1): string =>
  n === undefined || !Number.isFinite(n)
    ? 'n/a'
    : Math.abs(n) >= 100
      ? Math.round(n).toLocaleString('en-US')
      : n.toFixed(digits);
const delta = (a: number | undefined, b: number | undefined, unit: string) =>
  a === undefined || b === undefined ? 'n/a' : `${a - b >= 0 ? '+' : ''}${fmt(a - b, 2)} ${unit}`;

function row(label: string, values: (number | undefined)[], cost: string, digits = 1): string {
  return `| ${label} | ${values.map((v) => fmt(v, digits)).join(' | ')} | ${cost} |`;
}

/** The run's figures in a sentence or two: only what the JSON says, no reading of it. */
function summary(tp: ThroughputDoc | undefined, lat: LatencyDoc | undefined): string {
  const out: string[] = [];
  const r = tp?.ratios['agentflow/agentflow-plaintext'];
  const cost = tp?.costOfSecurity;
  if (tp && r !== undefined && cost) {
    const byRole = Object.entries(cost.cpuMsPerTaskExtraByRole)
      .map(([role, ms]) => `${role} ${ms >= 0 ? '+' : ''}${ms.toFixed(3)}`)
      .join(', ');
    out.push(
      `At saturation agentflow with TLS and token auth ran at x${r} the throughput of its plaintext baseline ` +
        `(median of the per-round ratios: ${roundRatios(tp)}), and used ${cost.cpuMsPerTaskExtra >= 0 ? '+' : ''}` +
        `${cost.cpuMsPerTaskExtra.toFixed(3)} ms of CPU per task (${byRole} ms).`,
    );
  }
  const s = lat?.systems.agentflow?.low;
  const p = lat?.systems['agentflow-plaintext']?.low;
  if (s && p) {
    out.push(
      `At ${s.ratePerSec} tasks/s, hand-over -> handler start was p50 ${s.dispatchMs.p50} ms vs ${p.dispatchMs.p50} ms ` +
        `and p99 ${s.dispatchMs.p99} ms vs ${p.dispatchMs.p99} ms (TLS + auth vs plaintext).`,
    );
  }
  return out.join('\n');
}

function roundRatios(tp: ThroughputDoc): string {
  const a = tp.systems.agentflow?.rounds ?? [];
  const b = tp.systems['agentflow-plaintext']?.rounds ?? [];
  return a.map((x, i) => (x.tasksPerSec / (b[i]?.tasksPerSec ?? Number.NaN)).toFixed(2)).join(', ');
}

/** Writes results/security.md; returns its path, or undefined when no scenario it needs has results. */
export function writeSecurityReport(): string | undefined {
  const tp = read<ThroughputDoc>('throughput');
  const lat = read<LatencyDoc>('latency');
  const ch = read<ChainDoc>('chain');
  const fo = read<FailoverDoc>('failover');
  const docs = [tp, lat, ch, fo].filter((d): d is NonNullable<typeof d> => d !== undefined);
  const first = docs[0];
  if (!first) return undefined;
  const rows: string[] = [];
  if (tp) {
    const t = (k: SystemKey) => tp.systems[k]?.tasksPerSec;
    rows.push(
      row(
        `throughput, tasks/s (${tp.config.tasks.toLocaleString('en-US')} tasks, median of ${tp.config.rounds} rounds)`,
        KEYS.map(t),
        `x${tp.ratios['agentflow/agentflow-plaintext'] ?? 'n/a'} (median of per-round ratios)`,
      ),
      row(
        'CPU ms per task, all processes (median round)',
        KEYS.map((k) => tp.systems[k]?.cpuMsPerTaskTotal),
        delta(tp.systems.agentflow?.cpuMsPerTaskTotal, tp.systems['agentflow-plaintext']?.cpuMsPerTaskTotal, 'ms'),
        3,
      ),
    );
  }
  if (lat) {
    const l = (k: SystemKey) => lat.systems[k];
    const [s, p] = [l('agentflow'), l('agentflow-plaintext')];
    const low = s?.low.ratePerSec ?? 0;
    rows.push(
      row(
        `latency at ${low}/s: hand-over -> handler start p50, ms`,
        KEYS.map((k) => l(k)?.low.dispatchMs.p50),
        delta(s?.low.dispatchMs.p50, p?.low.dispatchMs.p50, 'ms'),
        2,
      ),
      row(
        `latency at ${low}/s: p99, ms`,
        KEYS.map((k) => l(k)?.low.dispatchMs.p99),
        delta(s?.low.dispatchMs.p99, p?.low.dispatchMs.p99, 'ms'),
        2,
      ),
      row(
        `latency at ${low}/s: hand-over -> result recorded p50, ms`,
        KEYS.map((k) => l(k)?.low.resultMs.p50),
        delta(s?.low.resultMs.p50, p?.low.resultMs.p50, 'ms'),
        2,
      ),
      row(
        "high load: rate (80% of each one's own peak), tasks/s",
        KEYS.map((k) => l(k)?.high.ratePerSec),
        '',
        0,
      ),
      row(
        'high load: hand-over -> handler start p50, ms',
        KEYS.map((k) => l(k)?.high.dispatchMs.p50),
        'different rates: not a like-for-like cost',
        2,
      ),
      row(
        'high load: p99, ms',
        KEYS.map((k) => l(k)?.high.dispatchMs.p99),
        '',
        2,
      ),
    );
  }
  if (ch) {
    const c = (k: SystemKey) => ch.systems[k]?.hopMs;
    rows.push(
      row(
        'chain of 100: ms per hop p50',
        KEYS.map((k) => c(k)?.p50),
        delta(c('agentflow')?.p50, c('agentflow-plaintext')?.p50, 'ms'),
        2,
      ),
      row(
        'chain of 100: ms per hop p99',
        KEYS.map((k) => c(k)?.p99),
        '',
        2,
      ),
    );
  }
  if (fo) {
    for (const ttl of fo.config.ttlSeconds) {
      const r = (k: SystemKey) => fo.runs.find((x) => x.key === k && x.ttlSeconds === ttl);
      rows.push(
        row(
          `failover, TTL / lock ${ttl} s: kill -9 -> held tasks run again p50, ms`,
          KEYS.map((k) => r(k)?.runAgainMs.p50),
          delta(r('agentflow')?.runAgainMs.p50, r('agentflow-plaintext')?.runAgainMs.p50, 'ms'),
          0,
        ),
      );
    }
    const bad = fo.runs.reduce((n, x) => n + x.lost + x.committedTwice + x.reportedTwice, 0);
    rows.push(
      `| failover: tasks lost or committed twice, all runs | ${bad === 0 ? '0 in every run' : `**${bad}**`} | | | | |`,
    );
  }

  const m = first.machine;
  const loads = [
    ['throughput', tp],
    ['latency', lat],
    ['chain', ch],
    ['failover', fo],
  ]
    .filter(([, d]) => d !== undefined)
    .map(([n, d]) => `${n} ${(d as Doc).loadAverage.join(' / ')}`)
    .join('; ');
  const text = `# The cost of security

Generated by \`${first.command.replace(/ --$/, '')}\` on ${first.generatedAt.slice(0, 10)} (\`bench/scenarios/security-report.ts\`, from
\`bench/results/{throughput,latency,chain,failover}.json\` of that run). ${m.cpuCount} x ${m.cpuModel}, ${m.totalMemGiB} GiB,
Node ${m.node}, etcd ${m.versions.etcd} (fsync on), redis ${m.versions.redis}, BullMQ ${m.versions.bullmq},
grpc-js ${m.versions['grpc-js']}. ${tp ? `${tp.config.workers} worker processes x ${tp.config.capacity} slots.` : ''}

Load average (1 / 5 / 15 min) when each scenario ended: ${loads}. On ${m.cpuCount} CPUs, a load above ${m.cpuCount / 2}
means other work shared the machine: absolute figures move between runs, so read the ratios, taken round by round
with the systems interleaved.

| | ${HEAD.join(' | ')} | cost: TLS + auth vs plaintext |
| --- | ${KEYS.map(() => '---:').join(' | ')} | --- |
${rows.join('\n')}

${summary(tp, lat)}

## What each column runs

- **agentflow**: ${SECURITY_NOTES['tls+auth']}.
- **agentflow-plaintext**: ${SECURITY_NOTES.plaintext}.
- **BullMQ**: redis-server on 127.0.0.1 without TLS or AUTH/ACL. BullMQ's security is whatever redis is given; a
  redis with TLS and ACLs would cost it too. That is not measured here, so agentflow vs BullMQ compares a secured
  system with an unsecured one.

Authentication is per stream, not per task: a token is checked when an agent connects (and on Reauth when the
kubelet rotates it), so the static map does not flatter the per-task figures. What it leaves out is the first
TokenReview for each new token (one round trip to the API server when an agent first connects, then cached for up
to 5 minutes), and the Register-time pod and AgentPool lookups, which KubeAgentAuth reads from its informer caches.

In failover, the time until held tasks run again is the dispatcher's agent lease TTL: it stops keeping a dead
agent's lease when its stream ends, and etcd expires it. The lease was last kept alive up to a third of the TTL
before the kill, so differences below TTL/3 between the two agentflow runs are that phase, not a cost of security.

Run it again: \`npm run bench\` (quick set, ~3 min; \`bench/run.sh\` installs redis-server if missing), or just
these scenarios: \`npm run bench -- --only throughput,latency,chain,failover\`.
`;
  const file = join(RESULTS_DIR, 'security.md');
  writeFileSync(file, text);
  return file;
}
