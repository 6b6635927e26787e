// Workflow: a fan-out + fan-in of N no-op tasks, each system's own way, on the
// same W worker processes x C slots, timed from submit to done, in interleaved
// rounds.
//   agentflow: a Workflow (items -> forEach each over N items -> join) applied
//     to the operator's real WorkflowController + WorkflowEngine + Dispatcher
//     (records, audit chain and results in etcd, fenced by a real leader
//     election), the API server stood in for by MemoryKube; done = the run is
//     Succeeded in etcd (the flush that saved it returned) and in the status.
//   BullMQ: a FlowProducer parent with N children; done = QueueEvents reports
//     the parent completed (BullMQ runs it once its last child completed).
import { loadavg } from 'node:os';
import { OPERATOR_DEFAULTS } from '../lib/agentflow-workflow.ts';
import { BullmqFlowSystem } from '../lib/bullmq-flow.ts';
import { sleep } from '../lib/clock.ts';
import type { BenchConfig } from '../lib/config.ts';
import { CpuMeter, type Role, rssMiB } from '../lib/proc.ts';
import { printTable, writeJson, writeSvg } from '../lib/report.ts';
import { percentile, round } from '../lib/stats.ts';
import { barPanel, svgDocument } from '../lib/svg.ts';
import { LeaderProcess } from '../lib/workflow-leader.ts';

type Key = 'agentflow' | 'bullmq-everysec' | 'bullmq-always';
const KEYS: Key[] = ['agentflow', 'bullmq-everysec', 'bullmq-always'];

/** Issue 16's goals for the 10,000-task run. */
const GOALS = { tasks: 10_000, seconds: 3, leaderRssMiB: 200, workflowObjectKiB: 16 };

interface Runner {
  key: Key;
  label: string;
  roles(): Role[];
  /** The process whose RSS is the figure: agentflow's leader / BullMQ's driver (this one). */
  pid: number;
  gc(): Promise<void>;
  storeCounters(): Promise<Record<string, number>>;
  run(phase: string, n: number, timeoutMs: number): Promise<RunResult>;
  stop(): Promise<void>;
}

interface RunResult {
  times: Record<string, number> & { doneMs: number };
  heapUsedBeforeMiB: number;
  heapUsedPeakMiB: number;
  workflow?: Record<string, unknown>;
  audit: Record<string, unknown>;
}

interface Round {
  phase: string;
  seconds: number;
  tasksPerSec: number;
  /** Milestones after submit (ms). */
  times: Record<string, number>;
  cpuSeconds: Record<string, number>;
  store: Record<string, number>;
  /** agentflow: the leader process; BullMQ: the driver (this process). RSS sampled every 50 ms from /proc. */
  driverMiB: { rssBefore: number; rssPeak: number; heapUsedBefore: number; heapUsedPeak: number };
  /** agentflow: the Workflow object, its status writes, Events, timeline from the records. */
  workflow?: Record<string, unknown>;
  audit: Record<string, unknown>;
}

interface SizeFigures {
  label: string;
  seconds: number;
  tasksPerSec: number;
  cpuMsPerTask: Record<string, number>;
  cpuMsPerTaskTotal: number;
  driverRssPeakMiB: number;
  /** Store counters of the median round per fanned-out task (etcd txns, keys, fsyncs / redis commands). */
  storePerTask: Record<string, number>;
  rounds: Round[];
}

const RSS_SAMPLE_MS = 50;
const MiB = 2 ** 20;

export async function workflow(cfg: BenchConfig): Promise<void> {
  const { sizes, warmupTasks, capacity } = cfg.workflow;
  const maxTasks = Math.max(...sizes.map((s) => s.tasks));
  const runners: Runner[] = [];
  const measured = new Map<Key, Round[]>(KEYS.map((k) => [k, []]));
  let profile: Record<string, unknown> | undefined;
  let apiTotals: Record<string, unknown> | undefined;
  let leaderIdleRssMiB = Number.NaN;
  try {
    console.log(`workflow: starting the agentflow leader process (+ etcd, ${cfg.workers} agents x ${capacity})`);
    const leader = await LeaderProcess.start({
      processes: cfg.workers,
      capacity,
      maxForEachItems: Math.max(maxTasks, 10_000),
    });
    runners.push(agentflowRunner(leader));
    // Before any workflow ran: the operator's code loaded, etcd client and dispatcher up, agents connected.
    leaderIdleRssMiB = round(rssMiB(leader.pid), 1);
    for (const fsync of ['everysec', 'always'] as const) {
      console.log(`workflow: starting BullMQ (AOF ${fsync}, ${cfg.workers} workers x ${capacity})`);
      runners.push(
        bullmqRunner(await BullmqFlowSystem.start({ fsync, processes: cfg.workers, concurrency: capacity })),
      );
    }
    for (const r of runners) {
      console.log(`workflow: warming up ${r.label} (${warmupTasks} tasks)`);
      await r.run('warmup', warmupTasks, timeoutFor(warmupTasks));
    }
    for (const { tasks, rounds } of sizes) {
      for (let i = 1; i <= rounds; i++) {
        for (const r of runners) {
          const rd = await measure(r, `wf${tasks}-r${i}`, tasks);
          measured.get(r.key)?.push(rd);
          console.log(
            `workflow: ${tasks.toLocaleString('en-US')} tasks, round ${i}/${rounds}, ${r.label}: ${rd.seconds} s ` +
              `(${Math.round(rd.tasksPerSec)} tasks/s, RSS peak ${rd.driverMiB.rssPeak} MiB)`,
          );
        }
      }
    }
    apiTotals = await leader.apiTotals();
    // Where the leader's time goes: one more run, profiled (slower; not among the figures).
    const n = Math.min(...sizes.map((s) => s.tasks));
    console.log(`workflow: profiling the agentflow leader over one more ${n.toLocaleString('en-US')}-task run`);
    await leader.gc();
    const p = await leader.run(`wf${n}-profiled`, n, timeoutFor(n) * 2, true);
    profile = p.profile && {
      note: `V8 sampling profiler (200 us) in the leader process over one extra ${n}-task run (${round(p.times.doneMs / 1000, 2)} s with the profiler on); not among the measured rounds`,
      times: p.times,
      ...p.profile,
      categories: p.profile.categories.filter((c) => c.ms > 0),
    };
  } finally {
    for (const r of runners) await r.stop().catch((err: Error) => console.error(`stopping ${r.label}: ${err.message}`));
  }
  report(cfg, measured, runners, profile, { apiTotals, leaderIdleRssMiB });
}

const timeoutFor = (n: number) => 60_000 + n * 10;

function agentflowRunner(leader: LeaderProcess): Runner {
  return {
    key: 'agentflow',
    label: leader.label,
    roles: () => leader.roles(),
    pid: leader.pid,
    gc: () => leader.gc(),
    storeCounters: () => leader.storeCounters(),
    run: async (phase, n, t) => {
      const { times, heapUsedBeforeMiB, heapUsedPeakMiB, workflow, audit } = await leader.run(phase, n, t);
      return { times: { ...times }, heapUsedBeforeMiB, heapUsedPeakMiB, workflow, audit };
    },
    stop: () => leader.stop(),
  };
}

function bullmqRunner(b: BullmqFlowSystem): Runner {
  return {
    key: b.key,
    label: `${b.label}, FlowProducer`,
    roles: () => b.roles(),
    pid: process.pid,
    gc: async () => (globalThis as { gc?: () => void }).gc?.(),
    storeCounters: () => b.storeCounters(),
    run: async (phase, n, t) => {
      const heapBefore = process.memoryUsage().heapUsed;
      let heapPeak = heapBefore;
      const sampler = setInterval(() => {
        heapPeak = Math.max(heapPeak, process.memoryUsage().heapUsed);
      }, RSS_SAMPLE_MS);
      try {
        const { times } = await b.run(phase, n, t);
        return {
          times: { ...times },
          heapUsedBeforeMiB: round(heapBefore / MiB, 1),
          heapUsedPeakMiB: round(heapPeak / MiB, 1),
          audit: await b.audit(phase),
        };
      } finally {
        clearInterval(sampler);
      }
    },
    stop: () => b.stop(),
  };
}

async function measure(r: Runner, phase: string, n: number): Promise<Round> {
  await r.gc();
  await sleep(100);
  const rssBefore = rssMiB(r.pid);
  let rssPeak = rssBefore;
  const sampler = setInterval(() => {
    rssPeak = Math.max(rssPeak, rssMiB(r.pid));
  }, RSS_SAMPLE_MS);
  const cpu = new CpuMeter(() => r.roles());
  const storeBefore = await r.storeCounters();
  cpu.begin();
  let result: RunResult;
  let cpuSeconds: Record<string, number>;
  try {
    result = await r.run(phase, n, timeoutFor(n));
    cpuSeconds = cpu.end();
  } finally {
    clearInterval(sampler);
  }
  const storeAfter = await r.storeCounters();
  const seconds = result.times.doneMs / 1000;
  return {
    phase,
    seconds: round(seconds, 3),
    tasksPerSec: round(n / seconds, 0),
    times: mapValues(result.times, (v) => round(v, 1)),
    cpuSeconds: mapValues(cpuSeconds, (v) => round(v, 2)),
    store: mapValues(storeAfter, (v, k) => round(v - (storeBefore[k] ?? 0), 4)),
    driverMiB: {
      rssBefore: round(rssBefore, 1),
      rssPeak: round(rssPeak, 1),
      heapUsedBefore: result.heapUsedBeforeMiB,
      heapUsedPeak: result.heapUsedPeakMiB,
    },
    ...(result.workflow && { workflow: result.workflow }),
    audit: result.audit,
  };
}

const mapValues = (o: Record<string, number>, f: (v: number, k: string) => number) =>
  Object.fromEntries(Object.entries(o).map(([k, v]) => [k, f(v, k)]));

const median = (xs: number[]) => percentile(xs, 50);

function report(
  cfg: BenchConfig,
  measured: Map<Key, Round[]>,
  runners: Runner[],
  profile: Record<string, unknown> | undefined,
  extra: { apiTotals: Record<string, unknown> | undefined; leaderIdleRssMiB: number },
): void {
  const labels = new Map(runners.map((r) => [r.key, r.label]));
  const sizes = cfg.workflow.sizes.map((s) => s.tasks);
  const bySize = sizes.map((tasks) => {
    const phaseOf = (rd: Round) => rd.phase.startsWith(`wf${tasks}-`);
    const figures = (k: Key): SizeFigures => {
      const rounds = (measured.get(k) ?? []).filter(phaseOf);
      const secs = median(rounds.map((r) => r.seconds));
      const mid = rounds.find((r) => r.seconds === secs) ?? rounds[0];
      const cpuMsPerTask = mapValues(mid?.cpuSeconds ?? {}, (v) => round((v * 1000) / tasks, 4));
      return {
        label: labels.get(k) ?? k,
        seconds: secs,
        tasksPerSec: round(tasks / secs, 0),
        cpuMsPerTask,
        cpuMsPerTaskTotal: round(
          Object.values(cpuMsPerTask).reduce((x, y) => x + y, 0),
          3,
        ),
        driverRssPeakMiB: Math.max(...rounds.map((r) => r.driverMiB.rssPeak)),
        storePerTask: mapValues(mid?.store ?? {}, (v) => round(v / tasks, 3)),
        rounds,
      };
    };
    const systems = Object.fromEntries(KEYS.map((k) => [k, figures(k)])) as Record<Key, SizeFigures>;
    // Paired per round (the systems ran back to back), then the median: slow drifts in other load cancel.
    const pair = (k: Key, f: (a: Round, b: Round) => number) =>
      round(median(systems.agentflow.rounds.map((a, i) => f(a, systems[k].rounds[i] as Round))), 2);
    const ratios = Object.fromEntries(
      (['bullmq-everysec', 'bullmq-always'] as const).flatMap((k) => [
        [`agentflow/${k} seconds`, pair(k, (a, b) => a.seconds / b.seconds)],
        [`agentflow/${k} tasks/s`, pair(k, (a, b) => a.tasksPerSec / b.tasksPerSec)],
      ]),
    );
    return { tasks, systems, ratios };
  });

  const ten = bySize.find((s) => s.tasks === GOALS.tasks);
  const af10 = ten?.systems.agentflow;
  const objectKiB = af10 ? Math.max(...af10.rounds.map((r) => Number(r.workflow?.objectBytes ?? NaN))) / 1024 : NaN;
  const goals = af10 && {
    seconds: { goal: `<= ${GOALS.seconds}`, measured: af10.seconds, met: af10.seconds <= GOALS.seconds },
    leaderRssPeakMiB: {
      goal: `<= ${GOALS.leaderRssMiB}`,
      measured: af10.driverRssPeakMiB,
      met: af10.driverRssPeakMiB <= GOALS.leaderRssMiB,
    },
    workflowObjectKiB: {
      goal: `< ${GOALS.workflowObjectKiB}`,
      measured: round(objectKiB, 2),
      met: objectKiB < GOALS.workflowObjectKiB,
    },
  };

  const config = {
    sizes: cfg.workflow.sizes,
    warmupTasks: cfg.workflow.warmupTasks,
    workers: cfg.workers,
    capacity: cfg.workflow.capacity,
    taskBody: 'no-op (bench/lib/task.ts)',
    operator: OPERATOR_DEFAULTS,
  };
  const json = writeJson('workflow', config, {
    unit: 'seconds from submit to done; tasks/s = fanned-out tasks / seconds (median of rounds)',
    notes: [
      'agentflow: a Workflow with three tasks: items (returns the list 0..N-1, as a planner would), each ' +
        '(forEach over that list: N instances of the no-op task), join (dependsOn each: the fan-in). Submit = the ' +
        "Workflow is created; done = the run is Succeeded in etcd (the engine's flush that saved the finished run " +
        'returned: every task record, result and audit entry written, fsynced) and in the Workflow status',
      'agentflow runs the operator leader in the driver process: Dispatcher (TLS + token auth, fenced by a real ' +
        'leader election in etcd), WorkflowEngine (records + audit chain in etcd) and the real WorkflowController ' +
        '(validation, finalizer, conditions, throttled bounded status, Events). No kube-apiserver is started: ' +
        'bench/lib/memory-kube.ts stands in for it (create / get / merge patch / delete in memory, bodies JSON-encoded, ' +
        "informer events one turn later), so the HTTP round trips and the API server's own work are not counted",
      `agentflow's forEach limit (the operator's --max-foreach-items, default 10,000) is raised to the largest N`,
      'BullMQ: FlowProducer.add of one parent job with N children on the queue the Worker processes serve; done = ' +
        'QueueEvents reports the parent completed (BullMQ moves it to wait once its last child completed, then a worker ' +
        "runs it). Neither fan-in reads its children's outputs. agentflow runs one task more (items) before the fan-out",
      'timelineMs (agentflow): ms after submit; handler starts from the task outputs (the bench clock, taken in the ' +
        "agent processes), commits from the dispatcher's committed events in the leader",
      'driverMiB: agentflow = the leader process (dispatcher + engine + controller; etcd and the agents are processes ' +
        'of their own), BullMQ = the bench driver process (FlowProducer + QueueEvents, also the idle driver side of the ' +
        'other BullMQ system); RSS read from /proc every 50 ms, each run started after a full GC, heapUsed sampled in-process',
    ],
    goals,
    leaderIdleRssMiBNote:
      'the leader process right after start: code loaded, etcd client, dispatcher, agents connected',
    leaderIdleRssMiB: extra.leaderIdleRssMiB,
    sizes: bySize,
    apiTotalsNote:
      'what the WorkflowController and EventRecorder wrote to the in-memory API over every run (warm-up included)',
    apiTotals: extra.apiTotals,
    profile,
  });

  for (const s of bySize) {
    printTable(
      `Workflow fan-out + fan-in: ${s.tasks.toLocaleString('en-US')} tasks, ${cfg.workers} processes x ${cfg.workflow.capacity} slots (median of rounds)`,
      ['system', 'seconds', 'rounds', 'tasks/s', 'CPU ms/task', 'leader/driver RSS peak MiB', 'agentflow / this (s)'],
      KEYS.map((k) => {
        const r = s.systems[k];
        return [
          labels.get(k) ?? k,
          r.seconds,
          r.rounds.map((x) => x.seconds).join(' / '),
          r.tasksPerSec,
          r.cpuMsPerTaskTotal,
          r.driverRssPeakMiB,
          k === 'agentflow' ? '' : `x${s.ratios[`agentflow/${k} seconds`]}`,
        ];
      }),
    );
    const af = s.systems.agentflow.rounds.at(-1);
    if (af?.workflow) {
      const t = af.workflow.timelineMs as Record<string, number>;
      console.log(
        `agentflow, last round: Workflow object ${af.workflow.objectBytes} bytes (status ${af.workflow.statusBytes}); ` +
          `milestones (ms after submit): ${Object.entries(af.times)
            .map(([k, v]) => `${k} ${v}`)
            .join(', ')}; ` +
          `items committed ${t.itemsCommitted}, each started ${t.firstEachStarted}..${t.lastEachStarted}, ` +
          `last each committed ${t.lastEachCommitted}, join committed ${t.joinCommitted}`,
      );
      console.log(`agentflow audit: ${JSON.stringify(af.audit)}`);
    }
  }
  if (goals) console.log(`goals (10,000 tasks): ${JSON.stringify(goals)}`);
  const areas = profile?.inclusiveMsByArea as Record<string, number> | undefined;
  if (areas) console.log(`leader profile, CPU ms by area (inclusive, sync only): ${JSON.stringify(areas)}`);
  const top = (profile?.topSelf as { fn: string; where: string; shareOfBusy: number }[] | undefined) ?? [];
  if (top.length > 0)
    console.log(
      `leader profile, top self time: ${top
        .slice(0, 6)
        .map((f) => `${f.fn} (${f.where}) ${f.shareOfBusy}%`)
        .join('; ')}`,
    );

  const panels = bySize.flatMap((s) => [
    barPanel(
      `${s.tasks.toLocaleString('en-US')} tasks: submit to done`,
      's, lower is better',
      KEYS.map((k) => ({
        label: k,
        value: s.systems[k].seconds,
        color: k,
        note: k === 'agentflow' ? `goal <= ${GOALS.seconds} s` : `agentflow: x${s.ratios[`agentflow/${k} seconds`]}`,
      })),
    ),
    barPanel(
      `${s.tasks.toLocaleString('en-US')} tasks: driver / leader RSS peak`,
      'MiB, lower is better',
      KEYS.map((k) => ({ label: k, value: s.systems[k].driverRssPeakMiB, color: k })),
    ),
  ]);
  const svg = svgDocument(
    'Workflow: fan-out + fan-in of no-op tasks',
    `${cfg.workers} processes x ${cfg.workflow.capacity} slots; agentflow: Workflow engine + controller; BullMQ: FlowProducer; ${new Date().toISOString().slice(0, 10)}, load ${loadavg()[0]?.toFixed(2)}`,
    panels,
  );
  console.log(`\nwrote ${json} and ${writeSvg('workflow', svg)}`);
}
