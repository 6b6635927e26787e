// Child process: hosts `agents` agentflow agents (createAgent, the real agent
// runtime: etcd lease + membership, one gRPC stream each) that run the bench
// task. Prints {"type":"ready"} once every agent is registered.
import { writeFileSync } from 'node:fs';
import { type Agent, createAgent } from '../../src/agent/index.ts';
import { silentLogger } from '../../src/lib/log.ts';
import { childConfig, tell } from './children.ts';
import { now } from './clock.ts';
import { type CpuProfile, startProfiler } from './cpu-profile.ts';
import { type HandlerOptions, runTask } from './task.ts';

export interface AgentProcessConfig extends HandlerOptions {
  name: string;
  dispatcher: string;
  etcd: string;
  etcdPrefix: string;
  agents: number;
  capacity: number;
  leaseTtlSeconds: number;
  /** Agents started at once (many agents: spread the etcd and gRPC handshakes). */
  startConcurrency: number;
  /** If set: SIGUSR2 starts a CPU profile, written here on SIGTERM. */
  cpuProfileFile?: string;
}

const cfg = childConfig<AgentProcessConfig>();
const started = now();
const agents: Agent[] = [];

async function startOne(i: number): Promise<void> {
  const agentId = cfg.agents === 1 ? cfg.name : `${cfg.name}-${i}`;
  const agent = createAgent({
    dispatcher: cfg.dispatcher,
    etcd: [cfg.etcd],
    etcdPrefix: cfg.etcdPrefix,
    namespace: 'bench',
    pool: 'bench',
    capacity: cfg.capacity,
    agentId,
    pod: cfg.name,
    leaseTtlSeconds: cfg.leaseTtlSeconds,
    logger: silentLogger,
    handlers: { task: (ctx) => runTask(ctx.input, agentId, ctx.attempt, cfg, ctx.signal) },
  });
  agents.push(agent);
  const connected = new Promise<void>((resolve) => agent.once('connected', () => resolve()));
  await agent.start();
  await connected;
}

let next = 0;
await Promise.all(
  Array.from({ length: Math.min(cfg.startConcurrency, cfg.agents) }, async () => {
    while (next < cfg.agents) await startOne(next++);
  }),
);
tell({ type: 'ready', connectMs: now() - started, rssMiB: process.memoryUsage().rss / 2 ** 20 });

let profiling: Promise<() => Promise<CpuProfile>> | undefined;
const profileFile = cfg.cpuProfileFile;
if (profileFile) {
  process.on('SIGUSR2', () => {
    profiling ??= startProfiler();
  });
}

process.once('SIGTERM', async () => {
  if (profiling && profileFile) writeFileSync(profileFile, JSON.stringify(await (await profiling)()));
  await Promise.allSettled(agents.map((a) => a.stop()));
  process.exit(0);
});
