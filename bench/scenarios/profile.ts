// Profile of the dispatch hot path: one agentflow throughput run with V8's
// sampling profiler on in the dispatcher process (this one) and in one agent
// process, the etcd round trips of the claim and commit paths timed, and the
// event loop's utilisation. Writes bench/results/profile.md (+ profile.json).
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentConn } from '../../src/dispatcher/agent-conn.ts';
import { ResumableWatch, TaskClaims } from '../../src/state/index.ts';
import { AgentflowSystem } from '../lib/agentflow.ts';
import { now } from '../lib/clock.ts';
import type { BenchConfig } from '../lib/config.ts';
import {
  type CpuProfile,
  inclusiveMs,
  type ProfileSummary,
  startProfiler,
  summarizeProfile,
} from '../lib/cpu-profile.ts';
import { machine } from '../lib/env.ts';
import { CpuMeter } from '../lib/proc.ts';
import { RESULTS_DIR, writeJson } from '../lib/report.ts';
import { round, type Summary, summarize } from '../lib/stats.ts';
import { runBatch } from '../lib/system.ts';
import { renderProfileReport } from './profile-report.ts';

/** Results per etcd txn in claimMany / commitMany (no fences: 63). */
const GROUP = 63;

interface Call {
  ms: number;
  items: number;
}

export interface RoundTrips {
  calls: number;
  txns: number;
  tasksPerTxn: number;
  /** Wall time of one call (its txns run one after another). */
  callMs: Summary;
  /** Sum of call times over the run's wall time: > 1 means calls overlapped other work. */
  busyShare: number;
}

export interface ProfileFigures {
  tasks: number;
  seconds: number;
  tasksPerSec: number;
  eventLoopUtilization: number;
  cpuMsPerTask: Record<string, number>;
  etcd: { claims: RoundTrips; commits: RoundTrips; walFsyncs: number; walFsyncMeanMs: number; tasksPerFsync: number };
  /** Messages and events through the dispatcher per task (results in: 1 per task, not counted). */
  perTask: Record<string, number>;
  /** Dispatcher-side submit -> Assign written (from Dispatcher.dispatchLatencies). */
  submitToAssignMs: Summary;
  dispatcher: ProfileSummary & { inclusive: HotPaths<keyof typeof DISPATCHER_PATHS> };
  agent: ProfileSummary & { inclusive: HotPaths<keyof typeof AGENT_PATHS> };
}

/** Counts what flows through the dispatcher per task: stream messages out by kind, claims-watch events in. */
function countTraffic(counts: Record<string, number>): () => void {
  const conn = AgentConn.prototype as unknown as { send: (msg: Record<string, unknown>) => void };
  const send = conn.send;
  conn.send = function (this: AgentConn, msg: Record<string, unknown>) {
    const kind = `out: ${Object.keys(msg)[0] ?? '?'}`;
    counts[kind] = (counts[kind] ?? 0) + 1;
    send.call(this, msg);
  };
  // ResumableWatch.deliver is private to TypeScript only: one call per etcd watch response.
  const watch = ResumableWatch.prototype as unknown as { deliver: (res: { events: unknown[] }) => void };
  const deliver = watch.deliver;
  watch.deliver = function (this: ResumableWatch, res: { events: unknown[] }) {
    counts['in: claims-watch events'] = (counts['in: claims-watch events'] ?? 0) + res.events.length;
    counts['in: claims-watch responses'] = (counts['in: claims-watch responses'] ?? 0) + 1;
    deliver.call(this, res);
  };
  return () => {
    conn.send = send;
    watch.deliver = deliver;
  };
}

/** Times every call of a TaskClaims method (the dispatcher's only etcd round trips on the hot path). */
function instrument(method: 'claimMany' | 'commitMany', calls: Call[]): () => void {
  const proto = TaskClaims.prototype as unknown as Record<string, (...args: unknown[]) => Promise<unknown>>;
  const original = proto[method] as (...args: unknown[]) => Promise<unknown>;
  proto[method] = async function (this: TaskClaims, ...args: unknown[]) {
    const t = performance.now();
    try {
      return await original.apply(this, args);
    } finally {
      calls.push({ ms: performance.now() - t, items: (args[0] as unknown[]).length });
    }
  };
  return () => {
    proto[method] = original;
  };
}

function roundTrips(calls: Call[], wallMs: number): RoundTrips {
  const items = calls.reduce((s, c) => s + c.items, 0);
  const txns = calls.reduce((s, c) => s + Math.ceil(c.items / GROUP), 0);
  return {
    calls: calls.length,
    txns,
    tasksPerTxn: round(items / txns, 1),
    callMs: summarize(calls.map((c) => c.ms)),
    busyShare: round(calls.reduce((s, c) => s + c.ms, 0) / wallMs, 2),
  };
}

type Match = (fn: string, url: string) => boolean;
const fnIn =
  (file: string, ...fns: string[]): Match =>
  (fn, url) =>
    url.endsWith(file) && fns.includes(fn);
const urlMatches =
  (re: RegExp): Match =>
  (_fn, url) =>
    re.test(url);

/** Hot paths of the dispatcher process: CPU spent in and under these frames. An indented label is part of the one above. */
const DISPATCHER_PATHS = {
  dispatchTurn: {
    label: 'dispatch turn (Dispatcher.dispatchLoop: queue take + placement + claim + Assign)',
    match: fnIn('dispatcher/dispatcher.ts', 'dispatchLoop'),
  },
  queueTake: {
    label: '  placement and queue (PoolQueue.take + policy)',
    match: fnIn('dispatcher/task-queue.ts', 'take'),
  },
  claimMany: {
    label: '  claim txn building / answer (TaskClaims.claimMany)',
    match: fnIn('state/claims.ts', 'claimMany'),
  },
  assignSend: { label: '  Assign writes (AgentConn.send)', match: fnIn('dispatcher/agent-conn.ts', 'send') },
  onResult: {
    label: 'results in (Dispatcher.onResult: JSON.parse of the output, checks)',
    match: fnIn('dispatcher/dispatcher.ts', 'onResult'),
  },
  commitLoop: {
    label: 'group commit (Dispatcher.commitLoop: commitMany, Acks, events)',
    match: fnIn('dispatcher/dispatcher.ts', 'commitLoop'),
  },
  commitMany: {
    label: '  commit txn building / answer (TaskClaims.commitMany)',
    match: fnIn('state/claims.ts', 'commitMany'),
  },
  claimsWatch: {
    label: 'claims watch: deletes of lost claims only (etcd3 watch -> ResumableWatch)',
    match: fnIn('etcd3/lib/watch.js', 'handleResponse'),
  },
  submit: { label: 'submit() (the engine side)', match: fnIn('dispatcher/dispatcher.ts', 'submit') },
  etcdClient: {
    label: 'etcd client side: any stack through etcd3 or a grpc-js client call',
    match: urlMatches(
      /(\/etcd3\/|grpc-js\/build\/src\/(client|subchannel-call|load-balancing-call|resolving-call|retrying-call|internal-channel)\.js$)/,
    ),
  },
  agentStreams: {
    label: 'agent streams side: any stack through a grpc-js server call or AgentConn',
    match: urlMatches(
      /(grpc-js\/build\/src\/(server|server-interceptors|server-call)\.js|dispatcher\/agent-conn\.ts)$/,
    ),
  },
  bench: {
    label: 'bench: result listener (AgentflowSystem.onTask, Collector)',
    match: urlMatches(/bench\/lib\/(agentflow|system)\.ts$/),
  },
} satisfies Record<string, { label: string; match: Match }>;

const AGENT_PATHS = {
  onAssign: {
    label: 'Assign handling (Agent.onAssign: parse input, build context, start the handler)',
    match: fnIn('agent/agent.ts', 'onAssign'),
  },
  taskContext: {
    label: '  task context (createTaskContext)',
    match: fnIn('agent/task-context.ts', 'createTaskContext'),
  },
  settle: {
    label: 'handler settled -> Result sent (Agent.onSettled, report)',
    match: fnIn('agent/agent.ts', 'onSettled', 'report'),
  },
  outbox: { label: 'stream writes (Outbox.send)', match: fnIn('agent/outbox.ts', 'send') },
} satisfies Record<string, { label: string; match: Match }>;

export type HotPaths<K extends string> = Record<K, { label: string; ms: number }>;

function hotPaths<K extends string>(p: CpuProfile, paths: Record<K, { label: string; match: Match }>): HotPaths<K> {
  const out = {} as HotPaths<K>;
  for (const [id, { label, match }] of Object.entries(paths) as [K, { label: string; match: Match }][]) {
    out[id] = { label, ms: inclusiveMs(p, match) };
  }
  return out;
}

export async function profile(cfg: BenchConfig): Promise<void> {
  const { tasks } = cfg.profile;
  const dir = mkdtempSync(join(tmpdir(), 'agentflow-profile-'));
  const agentProfileFile = join(dir, 'agent-0.cpuprofile');
  const claims: Call[] = [];
  const commits: Call[] = [];
  const traffic: Record<string, number> = {};
  const restore = [instrument('claimMany', claims), instrument('commitMany', commits), countTraffic(traffic)];
  let figures: Omit<ProfileFigures, 'agent'> & { agent?: ProfileFigures['agent'] };
  const sys = await AgentflowSystem.start({
    processes: cfg.workers,
    capacity: cfg.capacity,
    cpuProfileFile: agentProfileFile,
  });
  try {
    console.log(`profile: agentflow, ${tasks} tasks with the CPU profiler on`);
    await runBatch(sys, 'warmup', 2_000, 120_000);
    claims.length = 0;
    commits.length = 0;
    for (const k of Object.keys(traffic)) delete traffic[k];
    sys.dispatcher.dispatchLatencies.length = 0;
    const before = await sys.storeCounters();
    const cpu = new CpuMeter(() => sys.roles());
    cpu.begin();
    const stopProfiler = await startProfiler();
    sys.profileAgent();
    const elu0 = performance.eventLoopUtilization();
    const t0 = now();
    const done = await runBatch(sys, 'prof', tasks, 120_000 + tasks * 10);
    const t1 = done.reduce((m, d) => Math.max(m, d.observedAt), 0);
    const elu = performance.eventLoopUtilization(elu0);
    const dispatcherProfile = await stopProfiler();
    writeFileSync(join(dir, 'dispatcher.cpuprofile'), JSON.stringify(dispatcherProfile));
    const used = cpu.end();
    const after = await sys.storeCounters();
    const wallMs = t1 - t0;
    const fsyncs = (after.walFsyncs ?? 0) - (before.walFsyncs ?? 0);
    figures = {
      tasks,
      seconds: round(wallMs / 1000, 2),
      tasksPerSec: round(tasks / (wallMs / 1000), 0),
      eventLoopUtilization: round(elu.utilization, 3),
      cpuMsPerTask: Object.fromEntries(Object.entries(used).map(([k, v]) => [k, round((v * 1000) / tasks, 3)])),
      etcd: {
        claims: roundTrips(claims, wallMs),
        commits: roundTrips(commits, wallMs),
        walFsyncs: fsyncs,
        walFsyncMeanMs: round((((after.walFsyncSeconds ?? 0) - (before.walFsyncSeconds ?? 0)) * 1000) / fsyncs, 3),
        tasksPerFsync: round(tasks / fsyncs, 1),
      },
      submitToAssignMs: summarize(sys.dispatcher.dispatchLatencies),
      perTask: Object.fromEntries(Object.entries(traffic).map(([k, v]) => [k, round(v / tasks, 3)])),
      dispatcher: {
        ...summarizeProfile(dispatcherProfile),
        inclusive: hotPaths(dispatcherProfile, DISPATCHER_PATHS),
      },
    };
  } finally {
    await sys.stop();
    for (const r of restore) r();
  }
  const agentProfile = JSON.parse(readFileSync(agentProfileFile, 'utf8')) as CpuProfile;
  const full: ProfileFigures = {
    ...figures,
    agent: {
      ...summarizeProfile(agentProfile),
      inclusive: hotPaths(agentProfile, AGENT_PATHS),
    },
  };
  const config = { tasks, workers: cfg.workers, capacity: cfg.capacity, samplingIntervalUs: 200 };
  writeJson('profile', config, { ...full });
  const md = join(RESULTS_DIR, 'profile.md');
  writeFileSync(md, renderProfileReport(full, config, machine()));
  console.log(
    `\nprofile: ${full.tasksPerSec} tasks/s with the profiler on; event loop ${Math.round(full.eventLoopUtilization * 100)}% busy; ` +
      `claims ${full.etcd.claims.tasksPerTxn} tasks/txn, commits ${full.etcd.commits.tasksPerTxn} tasks/txn`,
  );
  console.log(`wrote ${md}; raw profiles (Chrome DevTools > Performance > Load profile): ${dir}/*.cpuprofile`);
}
