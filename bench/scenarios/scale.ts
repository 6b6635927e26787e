// Scale: 1,000 agents of capacity 1 (one process hosting 1,000 createAgent
// instances: each its own etcd lease, membership key and gRPC stream) on one
// dispatcher: connect time, memory, idle cost, throughput. Peer: 1,000 BullMQ
// Workers of concurrency 1 in one process on one redis.

import { AGENT_NODE_OPTIONS } from '../../src/lib/agent-node-options.ts';
import { type AgentRssRun, DEFAULT_SETTLE_MS, IN_FLIGHT, measureAgentRss } from '../lib/agent-rss.ts';
import { AgentflowSystem } from '../lib/agentflow.ts';
import { BullmqSystem } from '../lib/bullmq.ts';
import { now, sleep } from '../lib/clock.ts';
import type { BenchConfig } from '../lib/config.ts';
import { CpuMeter, rssMiB } from '../lib/proc.ts';
import { printTable, writeJson, writeSvg } from '../lib/report.ts';
import { round } from '../lib/stats.ts';
import { barPanel, svgDocument } from '../lib/svg.ts';
import { runBatch, type System, type SystemKey } from '../lib/system.ts';

const IDLE_SECONDS = 5;

interface ScaleRun {
  key: SystemKey;
  label: string;
  workers: number;
  /** From starting the host process until every agent / Worker is registered / connected. */
  connectMs: number;
  /**
   * Memory before and after connecting: the coordinator (this process: dispatcher / Queue + QueueEvents;
   * its heap after a full GC, since this process's RSS carries whatever earlier scenarios left),
   * the store (etcd / redis) and the process hosting the workers.
   */
  memoryMiB: {
    coordinatorBefore: number;
    coordinatorAfter: number;
    coordinatorHeapDelta: number;
    storeBefore: number;
    storeAfter: number;
    /** The process hosting every worker: connected and idle, and the most it held while the tasks ran. */
    workerHost: number;
    workerHostBusy: number;
    /** The host's RSS divided by the workers it hosts. */
    perWorkerIdle: number;
    perWorkerBusy: number;
  };
  /** CPU % (of one core) with every worker connected and no work, over IDLE_SECONDS. */
  idleCpuPercent: Record<string, number>;
  tasksPerSec: number;
  cpuMsPerTask: Record<string, number>;
}

export async function scale(cfg: BenchConfig): Promise<void> {
  const { agents, tasks } = cfg.scale;
  const runs: ScaleRun[] = [];

  const af = await AgentflowSystem.start({ processes: 0, capacity: 1 });
  try {
    runs.push(
      await measure(
        af,
        agents,
        tasks,
        () => af.addAgents({ processes: 1, agentsPerProcess: agents, capacity: 1 }),
        () => rssMiB(af.etcd.pid ?? 0),
      ),
    );
  } finally {
    await af.stop();
  }
  const bq = await BullmqSystem.start({ fsync: 'everysec', processes: 0, concurrency: 1 });
  try {
    runs.push(
      await measure(
        bq,
        agents,
        tasks,
        () => bq.addWorkers({ processes: 1, workersPerProcess: agents, concurrency: 1 }),
        () => rssMiB(bq.redis.pid ?? 0),
      ),
    );
  } finally {
    await bq.stop();
  }

  // What one agent pod's process holds (issue 16: <= 64 MiB idle, <= 96 MiB with 16 tasks in flight): one
  // `agentflow agent` process on its own dispatcher, as the image runs it and as a checkout runs it.
  console.log('scale: one agent process per pod, idle and busy (bench/lib/agent-rss.ts)');
  const agentProcess = await measureAgentRss({
    entries: ['image', 'source'],
    nodeOptions: AGENT_NODE_OPTIONS,
    nodeArgs: [],
    burstTasks: tasks,
    settleMs: DEFAULT_SETTLE_MS,
  });

  const json = writeJson(
    'scale',
    {
      agents,
      capacityEach: 1,
      tasks,
      hosts: 'one child process hosts every agent / Worker',
      idleSeconds: IDLE_SECONDS,
      agentProcess: { capacity: IN_FLIGHT, burstTasks: tasks, nodeOptions: AGENT_NODE_OPTIONS },
    },
    {
      note:
        'agentflow: each agent has its own etcd lease, membership key and Connect stream (grpc-js multiplexes the streams ' +
        'of one process over shared HTTP/2 connections). BullMQ: each Worker has its own 2 redis connections. ' +
        'agentProcess: one `agentflow agent` process (capacity 16) per entry: VmRSS idle, at most while ' +
        'burstTasks no-op tasks ran, with 16 sleeping tasks right after, and idle again after a quiet spell',
      runs,
      agentProcess,
    },
  );
  printTable(
    `Scale: ${agents.toLocaleString('en-US')} workers of capacity 1 in one process`,
    [
      'system',
      'connect s',
      'coordinator heap +MiB',
      'store RSS MiB',
      'host RSS MiB idle / busy',
      'idle CPU %',
      'tasks/s',
    ],
    runs.map((r) => [
      r.label,
      round(r.connectMs / 1000, 2),
      r.memoryMiB.coordinatorHeapDelta,
      `${round(r.memoryMiB.storeBefore, 0)} -> ${round(r.memoryMiB.storeAfter, 0)}`,
      `${round(r.memoryMiB.workerHost, 0)} / ${round(r.memoryMiB.workerHostBusy, 0)}`,
      round(
        Object.values(r.idleCpuPercent).reduce((a, b) => a + b, 0),
        1,
      ),
      r.tasksPerSec,
    ]),
  );
  const svg = svgDocument(
    `Scale: ${agents.toLocaleString('en-US')} workers of capacity 1`,
    `one host process; ${tasks.toLocaleString('en-US')} no-op tasks; ${new Date().toISOString().slice(0, 10)}`,
    [
      barPanel(
        'Time until all are connected',
        's, lower is better',
        runs.map((r) => ({ label: r.label, value: r.connectMs / 1000, color: r.key })),
      ),
      barPanel(
        'Throughput',
        'tasks/s, higher is better',
        runs.map((r) => ({ label: r.label, value: r.tasksPerSec, color: r.key })),
      ),
      barPanel(
        `Server-side memory growth for ${agents.toLocaleString('en-US')} workers`,
        'MiB; heap after GC / store RSS',
        runs.flatMap((r) => {
          const [coordinator, store] = r.key === 'agentflow' ? ['dispatcher', 'etcd'] : ['Queue process', 'redis'];
          const name = r.key === 'agentflow' ? 'agentflow' : 'BullMQ';
          return [
            {
              label: `${name}: ${coordinator} heap`,
              value: r.memoryMiB.coordinatorHeapDelta,
              color: r.key,
            },
            { label: `${name}: ${store}`, value: r.memoryMiB.storeAfter - r.memoryMiB.storeBefore, color: r.key },
          ];
        }),
      ),
      barPanel(
        `Idle CPU with all connected, no tasks`,
        '% of one core, all processes',
        runs.map((r) => ({
          label: r.label,
          value: Object.values(r.idleCpuPercent).reduce((a, b) => a + b, 0),
          color: r.key,
          note: Object.entries(r.idleCpuPercent)
            .map(([k, v]) => `${k.split(' ')[0]} ${v}`)
            .join(', '),
        })),
      ),
    ],
  );
  printAgentProcess(agentProcess);
  console.log(`\nwrote ${json} and ${writeSvg('scale', svg)}`);
}

function printAgentProcess(runs: AgentRssRun[]): void {
  printTable(
    `One agent process (capacity ${IN_FLIGHT}): VmRSS MiB; goals idle <= 64, ${IN_FLIGHT} in flight <= 96`,
    ['entry', 'idle', 'busy', `${IN_FLIGHT} in flight`, 'idle again', 'agent CPU ms/task'],
    runs.map((r) => [
      r.entry,
      r.idle.median,
      r.busyMiB ?? 'n/a',
      r.inFlight.median,
      r.settled.median,
      r.agentCpuMsPerTask ?? 'n/a',
    ]),
  );
}

/** A full GC when node runs with --expose-gc (bench/run.sh does), so heap figures are live objects only. */
function fullGc(): void {
  (globalThis as { gc?: () => void }).gc?.();
}

async function measure(
  s: System & { readyReports: Record<string, unknown>[] },
  workers: number,
  tasks: number,
  connect: () => Promise<void>,
  storeRss: () => number,
): Promise<ScaleRun> {
  console.log(`scale: ${s.label}, connecting ${workers} workers`);
  fullGc();
  const rssBefore = rssMiB(process.pid);
  const storeBefore = storeRss();
  const heapBefore = process.memoryUsage().heapUsed;
  const t0 = now();
  await connect();
  const connectMs = now() - t0;
  const hostPid = s.roles()[1]?.pids[0] ?? 0;
  await sleep(1_000);
  const idle = new CpuMeter(() => s.roles());
  idle.begin();
  await sleep(IDLE_SECONDS * 1000);
  const idleCpu = idle.end();
  fullGc();
  const memoryMiB = {
    coordinatorBefore: round(rssBefore, 1),
    coordinatorAfter: round(rssMiB(process.pid), 1),
    coordinatorHeapDelta: round((process.memoryUsage().heapUsed - heapBefore) / 2 ** 20, 1),
    storeBefore: round(storeBefore, 1),
    storeAfter: round(storeRss(), 1),
    workerHost: round(rssMiB(hostPid), 1),
    workerHostBusy: 0,
    perWorkerIdle: 0,
    perWorkerBusy: 0,
  };
  console.log(`scale: ${s.label}: connected in ${Math.round(connectMs)} ms; ${tasks} tasks`);
  await runBatch(s, 'warmup', Math.min(tasks, 2_000), 120_000);
  const cpu = new CpuMeter(() => s.roles());
  cpu.begin();
  const t1 = now();
  let busy = 0;
  const sampler = setInterval(() => {
    busy = Math.max(busy, rssMiB(hostPid));
  }, 200);
  const done = await runBatch(s, 'scale', tasks, 120_000 + tasks * 20).finally(() => clearInterval(sampler));
  const t2 = done.reduce((m, d) => Math.max(m, d.observedAt), 0);
  const used = cpu.end();
  memoryMiB.workerHostBusy = round(Math.max(busy, rssMiB(hostPid)), 1);
  memoryMiB.perWorkerIdle = round(memoryMiB.workerHost / workers, 3);
  memoryMiB.perWorkerBusy = round(memoryMiB.workerHostBusy / workers, 3);
  return {
    key: s.key,
    label: s.label,
    workers,
    connectMs: round(connectMs, 0),
    memoryMiB,
    idleCpuPercent: Object.fromEntries(
      Object.entries(idleCpu).map(([k, v]) => [k, round((v / IDLE_SECONDS) * 100, 1)]),
    ),
    tasksPerSec: round(tasks / ((t2 - t1) / 1000), 0),
    cpuMsPerTask: Object.fromEntries(Object.entries(used).map(([k, v]) => [k, round((v * 1000) / tasks, 3)])),
  };
}
