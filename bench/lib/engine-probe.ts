// Probe of the workflow engine under a big fan-out + fan-in: etcd (fsync on),
// the Dispatcher with TLS and token auth, W agent processes of C slots (the
// bench's AgentflowSystem), and a WorkflowEngine on top, as the leader runs it
// (records, audit, fenced by a leadership key). One Workflow: a forEach over N
// items, then one task depending on all of them. Prints one JSON line: submit
// -> Succeeded, submit -> everything flushed to etcd, CPU by process role, this
// process's peak RSS and heap, what the engine wrote to etcd, and the bytes of
// the status the controller would write (sampled every statusIntervalMs while
// it runs, as the controller throttles it). A tool for finding what is slow,
// not a benchmark: bench/scenarios/workflow.ts measures it against BullMQ.
//
//   bash scripts/run.sh node bench/lib/engine-probe.ts [--tasks 10000] [--workers 4] [--capacity 32]
//     --engine <path>     load another copy of src/workflow/engine.ts (A/B against an older engine)
//     --no-persist        records and audit entries are not written (what persistence costs)
//     --dispatcher-only   the same tasks straight to the dispatcher, no engine (its share)
//   node --cpu-prof --cpu-prof-dir=/tmp/prof ...   a V8 CPU profile of this process
//   PROBE_HEAP_SNAPSHOT=<file> [PROBE_HEAP_AT=0.5]   a heap snapshot once that share of tasks succeeded
//   PROBE_ALLOC_PROFILE=<file>   sampled allocations of the run, collected objects included
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { parseArgs } from 'node:util';
import { writeHeapSnapshot } from 'node:v8';
import type { WorkflowSpec } from '../../src/api/workflow.ts';
import { silentLogger } from '../../src/lib/log.ts';
import { workflowConditions } from '../../src/operator/workflow/conditions.ts';
import { AuditLog, WorkflowRecords } from '../../src/state/index.ts';
import type { WorkflowEngine as Engine } from '../../src/workflow/engine.ts';
import type { WorkflowRun } from '../../src/workflow/run.ts';
import { AgentflowSystem, NAMESPACE, POOL } from './agentflow.ts';
import { now } from './clock.ts';
import { CpuMeter } from './proc.ts';

const { values: args } = parseArgs({
  options: {
    tasks: { type: 'string', default: '10000' },
    workers: { type: 'string', default: '4' },
    capacity: { type: 'string', default: '32' },
    statusIntervalMs: { type: 'string', default: '2000' },
    /** Another copy of src/workflow/engine.ts to load instead (an A/B run against an older engine). */
    engine: { type: 'string' },
    /** Diagnosis only: records and audit entries are not written (what persistence costs). */
    'no-persist': { type: 'boolean', default: false },
    /** Diagnosis only: the same tasks handed to the dispatcher directly, no engine (its share of time and memory). */
    'dispatcher-only': { type: 'boolean', default: false },
  },
});
const tasks = Number(args.tasks);
const statusIntervalMs = Number(args.statusIntervalMs);

/** The Workflow: N instances of the bench task (input {id, sentAt}), then one fan-in task. */
function spec(n: number): WorkflowSpec {
  return {
    pool: POOL,
    inputs: { items: Array.from({ length: n }, (_, k) => k) },
    tasks: [
      {
        name: 'fan',
        handler: 'task',
        forEach: 'inputs.items',
        input: { id: "${{ 'item-' + string(item) }}", sentAt: 0 },
      },
      { name: 'join', handler: 'task', dependsOn: ['fan'], input: { id: 'join', sentAt: 0 } },
    ],
  } as WorkflowSpec;
}

/** What the controller's syncStatus would write: the run's status, its message and conditions. */
function statusBytes(run: WorkflowRun): number {
  const s = run.status();
  const c = s.progress;
  const message = `${c?.succeeded}/${c?.total} tasks done, ${c?.running} running, ${c?.queued} queued`;
  const conditions = workflowConditions([], {
    outcome: run.phase === 'Succeeded' ? { phase: 'Succeeded', message } : { phase: 'Running', message },
    specApplied: { ok: true, message: 'the run runs the current spec' },
    generation: 1,
  });
  return Buffer.byteLength(JSON.stringify({ status: { ...s, message, conditions, observedGeneration: 1 } }));
}

/** What the engine writes to etcd: calls, items and the time spent in them (calls may overlap). */
const writes = { saves: 0, records: 0, saveMs: 0, appends: 0, auditEntries: 0, appendMs: 0 };
const saveOf = WorkflowRecords.prototype.save;
WorkflowRecords.prototype.save = async function (this: WorkflowRecords, ...a: Parameters<typeof saveOf>) {
  const t = now();
  writes.saves++;
  writes.records += a[3].length;
  try {
    if (args['no-persist']) return;
    return await saveOf.apply(this, a);
  } finally {
    writes.saveMs += now() - t;
  }
};
const appendOf = AuditLog.prototype.append;
AuditLog.prototype.append = async function (this: AuditLog, ...a: Parameters<typeof appendOf>) {
  const t = now();
  writes.appends++;
  writes.auditEntries += a[0].length;
  try {
    if (args['no-persist']) return [];
    return await appendOf.apply(this, a);
  } finally {
    writes.appendMs += now() - t;
  }
};

const sys = await AgentflowSystem.start({
  processes: Number(args.workers),
  capacity: Number(args.capacity),
  holdMs: 0,
  reportStarts: false,
});
const leaderKey = sys.store.key('probe-leader');
await sys.store.client.put(leaderKey).value('probe');
const fenceRev = (await sys.store.get(leaderKey))?.createRevision as number;

let peakRss = process.memoryUsage().rss;
const rssBefore = peakRss;
const peak = { heapUsed: 0, heapTotal: 0, external: 0, arrayBuffers: 0 };
const sampler = setInterval(() => {
  const m = process.memoryUsage();
  peakRss = Math.max(peakRss, m.rss);
  for (const k of Object.keys(peak) as (keyof typeof peak)[]) peak[k] = Math.max(peak[k], m[k]);
}, 20);

let run: WorkflowRun | undefined;
let succeededAt: number | undefined;
let lastStatusAt = 0;
let maxStatus = 0;
let statusWrites = 0;
let statusMs = 0;
const sampleStatus = () => {
  if (!run) return;
  const t = now();
  maxStatus = Math.max(maxStatus, statusBytes(run));
  statusMs += now() - t;
  statusWrites++;
  lastStatusAt = t;
};
let snapped = false;
let engineOnChange: () => void = () => {};
const done = new Promise<void>((resolve) => {
  const check = () => {
    if (!run) return;
    if (run.finished && succeededAt === undefined) {
      succeededAt = now();
      sampleStatus();
      resolve();
    } else if (now() - lastStatusAt >= statusIntervalMs) sampleStatus();
    const snap = process.env.PROBE_HEAP_SNAPSHOT;
    if (snap && !snapped && run.counts().succeeded >= tasks * Number(process.env.PROBE_HEAP_AT ?? 0.5)) {
      snapped = true;
      writeHeapSnapshot(snap);
    }
  };
  engineOnChange = check;
});
const { WorkflowEngine } = (await import(args.engine ?? '../../src/workflow/engine.ts')) as {
  WorkflowEngine: typeof Engine;
};
const engine = new WorkflowEngine({
  store: sys.store,
  dispatcher: sys.dispatcher,
  fences: () => [{ key: leaderKey, createRevision: fenceRev }],
  logger: silentLogger,
  onChange: () => engineOnChange(),
});

// Diagnosis: where the run allocates (sampled, collected objects included), written at the end.
const allocFile = process.env.PROBE_ALLOC_PROFILE;
const allocSession = allocFile ? new Session() : undefined;
if (allocSession) {
  allocSession.connect();
  await allocSession.post('HeapProfiler.startSampling', {
    samplingInterval: 16384,
    includeObjectsCollectedByMajorGC: true,
    includeObjectsCollectedByMinorGC: true,
  });
}
async function writeAllocProfile(): Promise<void> {
  if (!allocSession || !allocFile) return;
  const { profile } = await allocSession.post('HeapProfiler.stopSampling');
  writeFileSync(allocFile, JSON.stringify(profile));
}

if (args['dispatcher-only']) {
  const t0 = now();
  const cpuStart = process.cpuUsage();
  let left = tasks + 1;
  const all = new Promise<void>((resolve) =>
    sys.dispatcher.on('task', (e) => {
      if (e.type !== 'committed') return;
      --left;
      const snap = process.env.PROBE_HEAP_SNAPSHOT;
      if (snap && left === Math.floor((tasks + 1) * (1 - Number(process.env.PROBE_HEAP_AT ?? 0.5))))
        writeHeapSnapshot(snap);
      if (left === 0) resolve();
    }),
  );
  for (let k = 0; k <= tasks; k++) {
    sys.dispatcher.submit({
      ref: { namespace: NAMESPACE, workflow: 'direct', task: `t${k}` },
      pool: POOL,
      handler: 'task',
      input: { id: `item-${k}`, sentAt: 0 },
      attempt: 1,
    });
  }
  await all;
  const cpu = process.cpuUsage(cpuStart);
  clearInterval(sampler);
  console.log(
    JSON.stringify({
      mode: 'dispatcher-only',
      ms: Math.round(now() - t0),
      leaderCpuMs: Math.round((cpu.user + cpu.system) / 1000),
      rssBeforeMiB: Math.round(rssBefore / 2 ** 20),
      peakRssMiB: Math.round(peakRss / 2 ** 20),
      peakMiB: Object.fromEntries(Object.entries(peak).map(([k, v]) => [k, Math.round(v / 2 ** 20)])),
    }),
  );
  await writeAllocProfile();
  await sys.stop();
  process.exit(0);
}

const wfSpec = spec(tasks);
const started = now();
const cpu0 = process.cpuUsage();
const meter = new CpuMeter(() => sys.roles());
meter.begin();
run = await engine.ensure({ namespace: NAMESPACE, name: 'probe', uid: 'probe-uid', spec: wfSpec });
await done;
await engine.flush();
const flushedAt = now();
const cpu = process.cpuUsage(cpu0);
const cpuByRole = Object.fromEntries(Object.entries(meter.end()).map(([k, v]) => [k, Math.round(v * 1000)]));
clearInterval(sampler);
peakRss = Math.max(peakRss, process.memoryUsage().rss);
const status = run.status();
const result = {
  tasks,
  workers: Number(args.workers),
  capacity: Number(args.capacity),
  phase: run.phase,
  progress: status.progress,
  submitToSucceededMs: Math.round((succeededAt as number) - started),
  submitToFlushedMs: Math.round(flushedAt - started),
  tasksPerSec: Math.round((tasks + 1) / (((succeededAt as number) - started) / 1000)),
  leaderCpuMs: Math.round((cpu.user + cpu.system) / 1000),
  cpuMsByRole: cpuByRole,
  rssBeforeMiB: Math.round(rssBefore / 2 ** 20),
  peakRssMiB: Math.round(peakRss / 2 ** 20),
  maxRssMiB: Math.round(process.resourceUsage().maxRSS / 1024),
  peakMiB: Object.fromEntries(Object.entries(peak).map(([k, v]) => [k, Math.round(v / 2 ** 20)])),
  statusBytesMax: maxStatus,
  writes: Object.fromEntries(Object.entries(writes).map(([k, v]) => [k, Math.round(v)])),
  statusComputations: statusWrites,
  statusMsTotal: Math.round(statusMs),
};
console.log(JSON.stringify(result));
await writeAllocProfile();
await engine.stop();
await sys.stop();
process.exit(0);
