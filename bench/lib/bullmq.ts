import { EventEmitter } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue, QueueEvents } from 'bullmq';
import type { Redis } from 'ioredis';
import type { BullmqProcessConfig } from './bullmq-process.ts';
import { Child } from './children.ts';
import { now } from './clock.ts';
import type { Role } from './proc.ts';
import { type AppendFsync, RedisServer } from './redis-server.ts';
import { type Persistence, SYSTEM_LABELS, type System, type SystemEvents } from './system.ts';
import { type HandlerOptions, isTaskOutput } from './task.ts';

export const QUEUE = 'bench';
/** Jobs per addBulk call (one MULTI of addStandardJob scripts). */
const ADD_BULK_CHUNK = 1_000;

export function bullmqPersistence(fsync: AppendFsync): Persistence {
  return {
    persists:
      'per job: job hash + wait list on add, lock key + active list on fetch, returnvalue in the job hash + ' +
      'completed sorted set + events stream entry on completion (removeOnComplete: false), each appended to the AOF',
    fsync:
      fsync === 'always'
        ? 'appendfsync always: redis fsyncs the AOF before it replies, once per event-loop turn (group commit): ' +
          'a completed job is on disk when QueueEvents reports it'
        : 'appendfsync everysec (what BullMQ\'s "Going to production" guide recommends): a background fsync once a second; ' +
          'up to ~1-2 s of acknowledged jobs and results can be lost on a power or kernel failure',
  };
}

export const BULLMQ_SECURITY = {
  posture: 'plaintext',
  note:
    'redis-server on 127.0.0.1 without TLS or AUTH/ACL, as BullMQ is commonly run on a private network; ' +
    "BullMQ's own security is whatever redis is given (TLS and ACLs would cost it too), not measured here",
};

export interface BullmqOptions extends Partial<HandlerOptions> {
  fsync: AppendFsync;
  /** Worker processes. */
  processes: number;
  /** Workers per process (1 but for the scale scenario). */
  workersPerProcess?: number;
  /** Each Worker's concurrency. */
  concurrency: number;
  lockDurationMs?: number;
  stalledIntervalMs?: number;
}

/** redis-server (AOF) + Queue and QueueEvents in this process + Worker processes. */
export class BullmqSystem extends EventEmitter<SystemEvents> implements System {
  readonly key;
  readonly label;
  readonly persistence;
  readonly security = BULLMQ_SECURITY;
  readonly workerNames: string[] = [];
  readonly readyReports: Record<string, unknown>[] = [];
  private readonly dir: string;
  readonly redis: RedisServer;
  private readonly queue: Queue;
  private readonly events: QueueEvents;
  private readonly connections: Redis[];
  private readonly children = new Map<string, Child>();
  private readonly adds = new Set<Promise<unknown>>();
  private failure: Error | undefined;

  private constructor(dir: string, redis: RedisServer) {
    super();
    this.dir = dir;
    this.redis = redis;
    this.key = redis.appendfsync === 'always' ? ('bullmq-always' as const) : ('bullmq-everysec' as const);
    this.label = SYSTEM_LABELS[this.key];
    this.persistence = bullmqPersistence(redis.appendfsync);
    this.connections = [redis.client(), redis.client()];
    this.queue = new Queue(QUEUE, {
      connection: this.connections[0] as Redis,
      defaultJobOptions: { removeOnComplete: false, removeOnFail: false },
      // QueueEvents must see every completion: keep the events stream longer than any run.
      streams: { events: { maxLen: 1_000_000 } },
    });
    this.events = new QueueEvents(QUEUE, { connection: this.connections[1] as Redis, lastEventId: '0-0' });
    this.events.on('completed', ({ returnvalue }) => {
      if (!isTaskOutput(returnvalue)) throw new Error(`unexpected returnvalue ${JSON.stringify(returnvalue)}`);
      this.emit('done', { ...returnvalue, observedAt: now(), attempt: 1 });
    });
    this.events.on('stalled', ({ jobId }) => this.emit('lost', { id: `job ${jobId}`, at: now() }));
  }

  static async start(opts: BullmqOptions): Promise<BullmqSystem> {
    const dir = mkdtempSync(join(tmpdir(), 'bullmq-bench-'));
    const redis = new RedisServer(dir, opts.fsync);
    await redis.start();
    const sys = new BullmqSystem(dir, redis);
    await sys.queue.waitUntilReady();
    await sys.events.waitUntilReady();
    await sys.addWorkers(opts);
    return sys;
  }

  /** Starts worker processes and waits until every Worker is connected. */
  async addWorkers(opts: Omit<BullmqOptions, 'fsync'>): Promise<void> {
    const first = this.children.size;
    for (let i = first; i < first + opts.processes; i++) {
      const name = `worker-${i}`;
      const cfg: BullmqProcessConfig = {
        name,
        redisPort: this.redis.port,
        queue: QUEUE,
        workers: opts.workersPerProcess ?? 1,
        concurrency: opts.concurrency,
        lockDurationMs: opts.lockDurationMs ?? 30_000,
        stalledIntervalMs: opts.stalledIntervalMs ?? 30_000,
        holdMs: opts.holdMs ?? 0,
        reportStarts: opts.reportStarts ?? false,
      };
      const child = new Child(name, 'bench/lib/bullmq-process.ts', cfg, (m, from) => {
        if (m.type === 'start') this.emit('start', m, from.name);
      });
      this.children.set(name, child);
      this.workerNames.push(name);
    }
    this.readyReports.push(...(await Promise.all([...this.children.values()].slice(first).map((c) => c.ready))));
  }

  send(tasks: { id: string }[]): void {
    if (this.failure) throw this.failure;
    for (let i = 0; i < tasks.length; i += ADD_BULK_CHUNK) {
      const sentAt = now();
      const jobs = tasks.slice(i, i + ADD_BULK_CHUNK).map(({ id }) => ({ name: 'task', data: { id, sentAt } }));
      const add = this.queue.addBulk(jobs).catch((err: Error) => {
        this.failure = err;
      });
      this.adds.add(add);
      void add.finally(() => this.adds.delete(add));
    }
  }

  /** Reads redis: the completed jobs of the phase and their stall counters; job counts by state. */
  async audit(phase: string): Promise<Record<string, number>> {
    const counts = await this.queue.getJobCounts('completed', 'failed', 'active', 'wait', 'delayed');
    const jobs = (await this.queue.getJobs(['completed'])).filter((j) =>
      (j.data as { id: string }).id.startsWith(`${phase}/`),
    );
    const perId = new Map<string, number>();
    for (const j of jobs) perId.set(j.data.id, (perId.get(j.data.id) ?? 0) + 1);
    return {
      recorded: perId.size,
      // One job per task here (addBulk, no retries configured): a task completed twice would show as two jobs.
      recordedMoreThanOnce: [...perId.values()].filter((n) => n > 1).length,
      recordedAfterAStall: jobs.filter((j) => (j.stalledCounter ?? 0) > 0).length,
      failedJobs: counts.failed ?? 0,
      activeOrWaitingJobs: (counts.active ?? 0) + (counts.wait ?? 0) + (counts.delayed ?? 0),
    };
  }

  roles(): Role[] {
    return [
      { role: 'driver + Queue/QueueEvents', pids: [process.pid] },
      { role: 'workers', pids: [...this.children.values()].map((c) => c.pid) },
      { role: 'redis', pids: this.redis.pid ? [this.redis.pid] : [] },
    ];
  }

  /** Commands redis executed and AOF state (INFO). */
  async storeCounters(): Promise<Record<string, number>> {
    const info = await (this.connections[0] as Redis).info();
    const field = (name: string) => Number(new RegExp(`^${name}:(\\S+)`, 'm').exec(info)?.[1] ?? Number.NaN);
    return {
      commands: field('total_commands_processed'),
      aofRewrites: field('aof_rewrites'),
      aofDelayedFsync: field('aof_delayed_fsync'),
    };
  }

  killWorker(name: string): void {
    this.children.get(name)?.kill();
  }

  async stop(): Promise<void> {
    await Promise.allSettled([...this.adds]);
    await Promise.all([...this.children.values()].map((c) => c.stop()));
    await this.events.close();
    await this.queue.close();
    for (const c of this.connections) c.disconnect();
    await this.redis.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
