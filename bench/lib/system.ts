import type { EventEmitter } from 'node:events';
import type { ChildMessage } from './children.ts';
import { now } from './clock.ts';
import type { Role } from './proc.ts';
import type { TaskOutput } from './task.ts';

export type SystemKey = 'agentflow' | 'agentflow-plaintext' | 'bullmq-everysec' | 'bullmq-always';

export const SYSTEM_LABELS: Record<SystemKey, string> = {
  agentflow: 'agentflow (etcd, fsync on, TLS + token auth)',
  'agentflow-plaintext': 'agentflow-plaintext (baseline: no TLS, no auth)',
  'bullmq-everysec': 'BullMQ (AOF everysec)',
  'bullmq-always': 'BullMQ (AOF always)',
};

/** What a system writes per task and when those writes reach the disk. */
export interface Persistence {
  persists: string;
  fsync: string;
}

/** How the workers' connections are secured, recorded beside every figure. */
export interface Security {
  /** 'tls+auth' | 'plaintext' for agentflow; BullMQ's redis runs without TLS or AUTH here. */
  posture: string;
  note: string;
}

/** A task whose result the system has recorded, as the driver observed it. */
export interface Done extends TaskOutput {
  /** When the driver learned the result was recorded (dispatcher 'committed' event / QueueEvents 'completed'). */
  observedAt: number;
  /** The attempt that produced the result (BullMQ: attemptsMade + 1, which a stall does not raise). */
  attempt: number;
}

export interface SystemEvents {
  done: [Done];
  /** A worker process printed a start line (only with reportStarts). */
  start: [ChildMessage & { type: 'start' }, string];
  /** The system noticed an attempt is lost (agentflow 'lost', BullMQ 'stalled'). */
  lost: [{ id: string; at: number }];
}

/**
 * One system under test, started for a scenario: the store (etcd / redis),
 * the driver-side part (dispatcher / Queue + QueueEvents) in this process,
 * and worker processes. `send` hands tasks over; 'done' reports each result
 * once it is recorded.
 */
export interface System extends EventEmitter<SystemEvents> {
  readonly key: SystemKey;
  readonly label: string;
  readonly persistence: Persistence;
  readonly security: Security;
  /** Worker processes, in start order (failover kills one). */
  readonly workerNames: string[];
  send(tasks: { id: string }[]): void;
  /** Processes by role, for CPU accounting. */
  roles(): Role[];
  /** Counters of the store (etcd fsyncs, redis commands...) to diff around a measurement. */
  storeCounters(): Promise<Record<string, number>>;
  /**
   * What the store holds for `phase` once it is over: `recorded` results,
   * `recordedMoreThanOnce` (must be 0), plus what else the system can tell.
   */
  audit(phase: string): Promise<Record<string, number>>;
  killWorker(name: string): void;
  stop(): Promise<void>;
}

/**
 * Collects the results of the tasks whose id starts with `phase/` until
 * `count` distinct ids are done. Duplicates (a result reported twice) are
 * kept in `duplicates`.
 */
export class Collector {
  readonly results = new Map<string, Done>();
  readonly duplicates: Done[] = [];
  private readonly prefix: string;
  private readonly count: number;
  private readonly system: System;
  private readonly listener: (d: Done) => void;
  private finished: (() => void) | undefined;

  constructor(system: System, phase: string, count: number) {
    this.system = system;
    this.prefix = `${phase}/`;
    this.count = count;
    this.listener = (d) => {
      if (!d.id.startsWith(this.prefix)) return;
      if (this.results.has(d.id)) this.duplicates.push(d);
      else this.results.set(d.id, d);
      if (this.results.size >= this.count) this.finished?.();
    };
    system.on('done', this.listener);
  }

  /** Resolves once every task is done; rejects after `timeoutMs` saying how many are missing. */
  async wait(timeoutMs: number): Promise<Done[]> {
    if (this.results.size < this.count) {
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve, reject) => {
        this.finished = resolve;
        timer = setTimeout(
          () =>
            reject(
              new Error(
                `${this.system.label}: ${this.count - this.results.size} of ${this.count} ${this.prefix}* tasks not done after ${timeoutMs} ms`,
              ),
            ),
          timeoutMs,
        );
      }).finally(() => clearTimeout(timer));
    }
    this.system.off('done', this.listener);
    return [...this.results.values()];
  }
}

/** Runs `count` tasks of `phase` through the system at once and waits for them. */
export async function runBatch(system: System, phase: string, count: number, timeoutMs: number): Promise<Done[]> {
  const c = new Collector(system, phase, count);
  system.send(ids(phase, count));
  return c.wait(timeoutMs);
}

export const ids = (phase: string, count: number, from = 0): { id: string }[] =>
  Array.from({ length: count }, (_, i) => ({ id: `${phase}/t${from + i}` }));

/** Starts the systems one after another (start-up is not measured), runs `fn`, stops them all. */
export async function withSystems<T>(starters: (() => Promise<System>)[], fn: (systems: System[]) => Promise<T>) {
  const systems: System[] = [];
  try {
    for (const start of starters) systems.push(await start());
    return await fn(systems);
  } finally {
    for (const s of systems) await s.stop().catch((err: Error) => console.error(`stopping ${s.label}: ${err.message}`));
  }
}

/**
 * Open-loop load: hands over `count` tasks of `phase` at `rate` per second
 * (in small ticks, whatever the results do), then waits for all of them.
 */
export async function runPaced(system: System, phase: string, rate: number, count: number, timeoutMs: number) {
  const c = new Collector(system, phase, count);
  const t0 = now();
  let sent = 0;
  while (sent < count) {
    const due = Math.min(count, Math.floor(((now() - t0) / 1000) * rate) + 1);
    if (due > sent) {
      system.send(ids(phase, due - sent, sent));
      sent = due;
    }
    await new Promise((r) => setTimeout(r, 2));
  }
  const sendSeconds = (now() - t0) / 1000;
  return { done: await c.wait(timeoutMs), startedAt: t0, sendSeconds };
}
