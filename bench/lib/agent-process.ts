// Child process: hosts `agents` agentflow agents (createAgent, the real agent
// runtime: one gRPC stream each, TLS and a bearer token unless the system runs
// the plaintext baseline; the dispatcher keeps their etcd leases) that run the
// bench task. Prints {"type":"ready"} once every agent is registered.
import { writeFileSync } from 'node:fs';
import { type Agent, createAgent } from '../../src/agent/index.ts';
import { silentLogger } from '../../src/lib/log.ts';
import { childConfig, tell } from './children.ts';
import { now } from './clock.ts';
import { type CpuProfile, startProfiler } from './cpu-profile.ts';
import type { AgentCredentials } from './security.ts';
import { type HandlerOptions, runItems, runTask } from './task.ts';

export interface AgentProcessConfig extends HandlerOptions, AgentCredentials {
  name: string;
  dispatcher: string;
  agents: number;
  capacity: number;
  heartbeatMs: number;
  /** Agents started at once (many agents: spread the TLS and gRPC handshakes). */
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
    token: cfg.tokenFile,
    ...(cfg.caFile ? { ca: cfg.caFile } : { insecurePlaintext: true }),
    ...(cfg.serverName && { serverName: cfg.serverName }),
    namespace: 'bench',
    pool: 'bench',
    capacity: cfg.capacity,
    agentId,
    pod: cfg.name,
    heartbeatMs: cfg.heartbeatMs,
    logger: silentLogger,
    handlers: {
      task: (ctx) => runTask(ctx.input, agentId, ctx.attempt, cfg, ctx.signal),
      // The workflow scenario's first task: the list its forEach fans out over.
      items: (ctx) => runItems(ctx.input, agentId),
    },
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
