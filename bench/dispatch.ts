// Throughput and dispatch latency through one dispatcher with no-op agents.
//   node bench/dispatch.ts [--tasks 20000] [--agents 8] [--capacity 16] [--fsync on|off] [--security tls+auth|plaintext]
// etcd runs with fsync on by default (durable commits), and the dispatcher
// with TLS and token auth (bench/lib/security.ts), as in production.
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { Dispatcher } from '../src/dispatcher/index.ts';
import { StateStore } from '../src/state/index.ts';
import { EtcdServer } from '../test/cluster/etcd.ts';
import { benchSecurity, type SecurityPosture } from './lib/security.ts';
import { percentile, round } from './lib/stats.ts';

const { values } = parseArgs({
  options: {
    tasks: { type: 'string', default: '20000' },
    agents: { type: 'string', default: '8' },
    capacity: { type: 'string', default: '16' },
    fsync: { type: 'string', default: 'on' },
    'low-load': { type: 'string', default: '300' },
    security: { type: 'string', default: 'tls+auth' },
  },
});
if (values.security !== 'tls+auth' && values.security !== 'plaintext') {
  throw new Error(`--security: expected tls+auth or plaintext, got "${values.security}"`);
}
const posture: SecurityPosture = values.security;
const N = Number(values.tasks);
const W = Number(values.agents);
const C = Number(values.capacity);
const now = () => performance.timeOrigin + performance.now();

const dir = mkdtempSync(join(tmpdir(), 'agentflow-bench-'));
const etcd = new EtcdServer({ dir, name: 'bench-etcd', unsafeNoFsync: values.fsync === 'off' });
await etcd.start();
const store = new StateStore({ endpoints: [etcd.endpoint], prefix: '/bench' });
const sec = await benchSecurity(posture, dir, {
  namespace: 'bench',
  pool: 'noop',
  maxCapacity: 1024,
  handlers: ['noop'],
});
const dispatcher = new Dispatcher({ store, auth: sec.auth, credentials: sec.credentials });
const port = await dispatcher.start();

const assignedAt = new Map<string, number>();
// One process, many agents: one ServiceAccount-like identity, agents named after it plus their id.
const creds = sec.agentCredentials('noop-agents');
const childArgs = [
  String(port),
  String(W),
  String(C),
  creds.tokenFile,
  ...(creds.caFile ? [creds.caFile, creds.serverName ?? ''] : []),
];
const child = spawn(process.execPath, ['bench/lib/noop-agents.ts', ...childArgs], {
  stdio: ['ignore', 'pipe', 'inherit'],
});
await new Promise<void>((resolve) => {
  createInterface({ input: child.stdout }).on('line', (l) => {
    const m = JSON.parse(l) as { ready?: boolean; at?: number; id?: string };
    if (m.ready) resolve();
    else if (m.id && m.at) assignedAt.set(m.id, m.at);
  });
});
while (dispatcher.agents().length < W) await new Promise((r) => setTimeout(r, 20));

const submittedAt = new Map<string, number>();
const committedAt = new Map<string, number>();
let waiter: (() => void) | undefined;
let target = 0;
dispatcher.on('task', (e) => {
  if (e.type !== 'committed') return;
  committedAt.set(`${e.ref.workflow}/${e.ref.task}`, now());
  if (committedAt.size >= target) waiter?.();
});
const submit = (wf: string, i: number) => {
  const id = `${wf}/t${i}`;
  submittedAt.set(id, now());
  dispatcher.submit({
    ref: { namespace: 'bench', workflow: wf, task: `t${i}` },
    pool: 'noop',
    handler: 'noop',
    input: null,
  });
};

// 1. Low load: one task at a time.
const lowN = Number(values['low-load']);
for (let i = 0; i < lowN; i++) {
  target = committedAt.size + 1;
  const done = new Promise<void>((r) => {
    waiter = r;
  });
  submit('low', i);
  await done;
}
await new Promise((r) => setTimeout(r, 200)); // let the agent child flush its timestamps
const lowDispatch = [...Array(lowN).keys()].map(
  (i) => (assignedAt.get(`low/t${i}`) ?? Number.NaN) - (submittedAt.get(`low/t${i}`) ?? 0),
);
const lowE2E = [...Array(lowN).keys()].map(
  (i) => (committedAt.get(`low/t${i}`) ?? 0) - (submittedAt.get(`low/t${i}`) ?? 0),
);

// 2. Peak: N tasks at once.
target = committedAt.size + N;
const peakDone = new Promise<void>((r) => {
  waiter = r;
});
const t0 = now();
for (let i = 0; i < N; i++) submit('peak', i);
await peakDone;
const elapsed = (now() - t0) / 1000;
await new Promise((r) => setTimeout(r, 200));
const peakDispatch = [...Array(N).keys()].map(
  (i) => (assignedAt.get(`peak/t${i}`) ?? Number.NaN) - (submittedAt.get(`peak/t${i}`) ?? 0),
);

const result = {
  scenario: 'dispatch',
  machine: { cpus: cpus().length, model: cpus()[0]?.model, node: process.version },
  config: { tasks: N, agents: W, capacity: C, etcdFsync: values.fsync, security: posture },
  throughputTasksPerSec: round(N / elapsed, 0),
  peakSeconds: round(elapsed, 2),
  lowLoad: {
    tasks: lowN,
    dispatchMs: {
      p50: round(percentile(lowDispatch, 50)),
      p95: round(percentile(lowDispatch, 95)),
      p99: round(percentile(lowDispatch, 99)),
    },
    submitToCommitMs: { p50: round(percentile(lowE2E, 50)), p99: round(percentile(lowE2E, 99)) },
  },
  peak: {
    dispatchMs: {
      p50: round(percentile(peakDispatch, 50)),
      p95: round(percentile(peakDispatch, 95)),
      p99: round(percentile(peakDispatch, 99)),
    },
  },
  etcdTxns: { claims: dispatcher.counters.claimTxns, commits: dispatcher.counters.commitTxns },
};
child.kill('SIGTERM');
await dispatcher.stop(1_000);
store.close();
await etcd.stop();
rmSync(dir, { recursive: true, force: true });
mkdirSync('bench/results', { recursive: true });
writeFileSync(
  `bench/results/dispatch${posture === 'plaintext' ? '-plaintext' : ''}.json`,
  `${JSON.stringify(result, null, 2)}\n`,
);
console.log(`dispatch: ${N} no-op tasks, ${W} agents x ${C} slots, etcd fsync ${values.fsync}, ${posture}`);
console.table({
  'throughput (tasks/s)': { value: result.throughputTasksPerSec },
  'low load: submit -> handler start p50 (ms)': { value: result.lowLoad.dispatchMs.p50 },
  'low load: submit -> handler start p99 (ms)': { value: result.lowLoad.dispatchMs.p99 },
  'low load: submit -> committed p50 (ms)': { value: result.lowLoad.submitToCommitMs.p50 },
  'peak: submit -> handler start p50 (ms)': { value: result.peak.dispatchMs.p50 },
  'peak: submit -> handler start p99 (ms)': { value: result.peak.dispatchMs.p99 },
  'etcd txns (claims / commits)': { value: `${result.etcdTxns.claims} / ${result.etcdTxns.commits}` },
});
