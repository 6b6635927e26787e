import { AgentflowSystem } from './agentflow.ts';
import { BullmqSystem } from './bullmq.ts';
import type { System, SystemKey } from './system.ts';

/** Everything a run is parameterised by; recorded in every result file. */
export interface BenchConfig {
  mode: 'quick' | 'full';
  /** Worker processes per system (agent processes / BullMQ worker processes). */
  workers: number;
  /** Slots per worker (agent capacity / BullMQ Worker concurrency). */
  capacity: number;
  throughput: { tasks: number; rounds: number; warmupTasks: number };
  latency: { lowRate: number; lowTasks: number; highFractionOfPeak: number; highSeconds: number };
  chain: { hops: number };
  failover: { tasks: number; holdMs: number; ttlSeconds: number[] };
  scale: { agents: number; tasks: number };
  profile: { tasks: number };
  /** Fan-out + fan-in workflows: one size after another, `rounds` interleaved rounds each; W x `capacity`. */
  workflow: { sizes: { tasks: number; rounds: number }[]; warmupTasks: number; capacity: number };
}

/** Slots per worker in the workflow scenario unless --capacity is given: issue 16's 4 agents x 32 slots. */
export const WORKFLOW_CAPACITY = 32;

export function benchConfig(
  full: boolean,
  workers: number,
  capacity: number,
  workflowCapacity = WORKFLOW_CAPACITY,
): BenchConfig {
  return {
    mode: full ? 'full' : 'quick',
    workers,
    capacity,
    throughput: { tasks: full ? 50_000 : 10_000, rounds: full ? 3 : 5, warmupTasks: 2_000 },
    latency: { lowRate: 50, lowTasks: full ? 500 : 200, highFractionOfPeak: 0.8, highSeconds: full ? 10 : 4 },
    chain: { hops: 100 },
    failover: { tasks: full ? 1_000 : 200, holdMs: 500, ttlSeconds: [2, 5] },
    scale: { agents: 1_000, tasks: full ? 20_000 : 5_000 },
    profile: { tasks: full ? 20_000 : 10_000 },
    workflow: {
      sizes: full
        ? [
            { tasks: 10_000, rounds: 3 },
            { tasks: 100_000, rounds: 1 },
          ]
        : [{ tasks: 10_000, rounds: 3 }],
      warmupTasks: 1_000,
      capacity: workflowCapacity,
    },
  };
}

/** agentflow as users get it, its plaintext baseline (the cost of security), then the peer. */
export const ALL_SYSTEMS: SystemKey[] = ['agentflow', 'agentflow-plaintext', 'bullmq-everysec', 'bullmq-always'];

/** A starter for each system with the run's W x C. */
export function starter(key: SystemKey, cfg: BenchConfig): () => Promise<System> {
  if (key === 'agentflow' || key === 'agentflow-plaintext') {
    const security = key === 'agentflow' ? 'tls+auth' : 'plaintext';
    return () => AgentflowSystem.start({ processes: cfg.workers, capacity: cfg.capacity, security });
  }
  const fsync = key === 'bullmq-always' ? 'always' : 'everysec';
  return () => BullmqSystem.start({ fsync, processes: cfg.workers, concurrency: cfg.capacity });
}
