// Child process: the workflow scenario's agentflow leader (see
// workflow-leader.ts for the commands it takes on stdin). It starts etcd and
// the agent processes itself, through AgentflowWorkflowSystem.
import { createInterface } from 'node:readline';
import { AgentflowWorkflowSystem } from './agentflow-workflow.ts';
import { childConfig } from './children.ts';
import { type CpuProfile, inclusiveMs, startProfiler, summarizeProfile } from './cpu-profile.ts';
import type { LeaderAnswer, LeaderCommand, LeaderConfig, RunAnswer } from './workflow-leader.ts';

const cfg = childConfig<LeaderConfig>();
const af = await AgentflowWorkflowSystem.start(cfg);
const say = (m: LeaderAnswer) => process.stdout.write(`${JSON.stringify(m)}\n`);
say({
  type: 'ready',
  label: af.label,
  roles: af.roles().map((r) => (r.pids.includes(process.pid) ? { ...r, pids: [process.pid] } : r)),
});

const MiB = 2 ** 20;

/** Leader code by area: CPU in (and under) its functions, synchronous stretches only. */
const AREAS: [string, RegExp][] = [
  ['src/state/audit.ts (audit chain)', /\/src\/state\/audit\.ts$/],
  ['src/state/workflow-records.ts + blobs.ts (task records)', /\/src\/state\/(workflow-records|blobs)\.ts$/],
  ['src/state/claims.ts (claims, result commits)', /\/src\/state\/claims\.ts$/],
  ['src/workflow/ (WorkflowRun, engine, CEL)', /\/src\/workflow\//],
  ['src/dispatcher/', /\/src\/dispatcher\//],
  ['src/operator/ (WorkflowController, Events)', /\/src\/operator\//],
  ['bench/lib/memory-kube.ts (the API stand-in)', /\/bench\/lib\/memory-kube\.ts$/],
];
const byArea = (p: CpuProfile) =>
  Object.fromEntries(AREAS.map(([name, re]) => [name, inclusiveMs(p, (_fn, url) => re.test(url))]));
let stopping: Promise<void> | undefined;
const stop = () => {
  stopping ??= af.stop();
  return stopping;
};

async function run(c: Extract<LeaderCommand, { type: 'run' }>): Promise<RunAnswer> {
  const heapBefore = process.memoryUsage().heapUsed;
  let heapPeak = heapBefore;
  const sampler = setInterval(() => {
    heapPeak = Math.max(heapPeak, process.memoryUsage().heapUsed);
  }, 50);
  const stopProfiler = c.profile ? await startProfiler() : undefined;
  try {
    const { times, submittedAt, taskTimes } = await af.run(c.name, c.tasks, c.timeoutMs);
    const raw = stopProfiler && (await stopProfiler());
    const profile = raw && { ...summarizeProfile(raw, 20), inclusiveMsByArea: byArea(raw) };
    return {
      times,
      heapUsedBeforeMiB: Math.round((heapBefore / MiB) * 10) / 10,
      heapUsedPeakMiB: Math.round((heapPeak / MiB) * 10) / 10,
      ...(await af.details(c.name, c.tasks, submittedAt, taskTimes)),
      ...(profile && { profile }),
    };
  } finally {
    clearInterval(sampler);
  }
}

async function answer(c: LeaderCommand): Promise<unknown> {
  switch (c.type) {
    case 'gc':
      (globalThis as { gc?: () => void }).gc?.();
      return null;
    case 'counters':
      return af.storeCounters();
    case 'api':
      return af.apiTotals();
    case 'run':
      return run(c);
    case 'stop':
      await stop();
      setImmediate(() => process.exit(0));
      return null;
  }
}

const commands = createInterface({ input: process.stdin });
// The driver went away without a word: stop what this process started.
commands.once('close', () => {
  void stop().finally(() => process.exit(0));
});
commands.on('line', (line) => {
  const c = JSON.parse(line) as LeaderCommand;
  answer(c).then(
    (value) => say({ type: 'answer', id: c.id, value: value ?? null }),
    (err: Error) => say({ type: 'error', id: c.id, message: err.message }),
  );
});

process.once('SIGTERM', () => {
  void stop().finally(() => process.exit(0));
});
