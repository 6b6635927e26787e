// Child process: hosts `workers` BullMQ Workers (concurrency `concurrency`
// each) that run the bench task. Prints {"type":"ready"} once every worker is
// connected.
import { type Job, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { childConfig, tell } from './children.ts';
import { now } from './clock.ts';
import { type HandlerOptions, runTask } from './task.ts';

export interface BullmqProcessConfig extends HandlerOptions {
  name: string;
  redisPort: number;
  queue: string;
  workers: number;
  concurrency: number;
  /** BullMQ's lock TTL and stalled-job check period (its failover knobs; defaults 30 s). */
  lockDurationMs: number;
  stalledIntervalMs: number;
}

const cfg = childConfig<BullmqProcessConfig>();
const started = now();
const workers: Worker[] = [];
for (let i = 0; i < cfg.workers; i++) {
  const name = cfg.workers === 1 ? cfg.name : `${cfg.name}-${i}`;
  // BullMQ's Processor type is async: it awaits whatever the processor returns anyway.
  const processor = async (job: Job, _token?: string, signal?: AbortSignal) =>
    runTask(job.data, name, job.attemptsMade + 1, cfg, signal);
  const worker = new Worker(cfg.queue, processor, {
    connection: new Redis({ host: '127.0.0.1', port: cfg.redisPort, maxRetriesPerRequest: null }),
    concurrency: cfg.concurrency,
    lockDuration: cfg.lockDurationMs,
    stalledInterval: cfg.stalledIntervalMs,
  });
  worker.on('error', (err) => console.error(`${name}: ${err.message}`));
  workers.push(worker);
}
await Promise.all(workers.map((w) => w.waitUntilReady()));
tell({ type: 'ready', connectMs: now() - started, rssMiB: process.memoryUsage().rss / 2 ** 20 });

process.once('SIGTERM', () => {
  void Promise.allSettled(workers.map((w) => w.close(true))).then(() => process.exit(0));
});
