// BullMQ's side of the workflow scenario: its own fan-out + fan-in, a
// FlowProducer parent job with n children. The children run on the workers;
// BullMQ moves the parent from waiting-children to wait once the last child
// completes, and a worker then runs it. The same BullmqSystem as the
// throughput scenario (redis with AOF, Worker processes, QueueEvents).
import { FlowProducer, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import { BullmqSystem, QUEUE } from './bullmq.ts';
import { now } from './clock.ts';
import type { Role } from './proc.ts';
import type { AppendFsync } from './redis-server.ts';
import type { Done } from './system.ts';

export interface FlowTimes {
  /** flow.add returned: the parent and every child are in redis. */
  addedMs: number;
  /** QueueEvents reported the parent completed. */
  doneMs: number;
}

export class BullmqFlowSystem {
  readonly sys: BullmqSystem;
  private readonly connection: Redis;
  private readonly flow: FlowProducer;
  /** The parent job of each phase's flow. */
  private readonly parents = new Map<string, Job>();

  private constructor(sys: BullmqSystem) {
    this.sys = sys;
    this.connection = sys.redis.client();
    this.flow = new FlowProducer({ connection: this.connection });
  }

  get key() {
    return this.sys.key;
  }

  get label() {
    return this.sys.label;
  }

  static async start(o: { fsync: AppendFsync; processes: number; concurrency: number }): Promise<BullmqFlowSystem> {
    const s = new BullmqFlowSystem(await BullmqSystem.start(o));
    await s.flow.waitUntilReady();
    return s;
  }

  /** Adds a parent with n children in one flow.add and waits until the parent has completed. */
  async run(phase: string, n: number, timeoutMs: number): Promise<{ times: FlowTimes; submittedAt: number }> {
    const parentId = `${phase}/join`;
    let parentDone: Done | undefined;
    let settle: ((err?: Error) => void) | undefined;
    const finished = new Promise<void>((resolve, reject) => {
      settle = (err) => (err ? reject(err) : resolve());
    });
    const onDone = (d: Done) => {
      if (d.id !== parentId) return;
      parentDone = d;
      settle?.();
    };
    this.sys.on('done', onDone);
    const timer = setTimeout(
      () => settle?.(new Error(`${this.label}: parent ${parentId} not completed after ${timeoutMs} ms`)),
      timeoutMs,
    );
    const submittedAt = now();
    try {
      const node = await this.flow.add({
        name: 'join',
        queueName: QUEUE,
        data: { id: parentId, sentAt: submittedAt },
        opts: { removeOnComplete: false, removeOnFail: false },
        children: Array.from({ length: n }, (_, i) => ({
          name: 'task',
          queueName: QUEUE,
          data: { id: `${phase}/t${i}`, sentAt: submittedAt },
          opts: { removeOnComplete: false, removeOnFail: false },
        })),
      });
      const addedMs = now() - submittedAt;
      this.parents.set(phase, node.job);
      await finished;
      return { submittedAt, times: { addedMs, doneMs: (parentDone as Done).observedAt - submittedAt } };
    } finally {
      clearTimeout(timer);
      this.sys.off('done', onDone);
    }
  }

  roles(): Role[] {
    return this.sys
      .roles()
      .map((r) => (r.role === 'driver + Queue/QueueEvents' ? { ...r, role: 'driver: FlowProducer + QueueEvents' } : r));
  }

  storeCounters(): Promise<Record<string, number>> {
    return this.sys.storeCounters();
  }

  /**
   * What redis holds for the phase's flow: the parent's state and its children by outcome (read from the
   * parent's dependency sets, not by loading every completed job: that would inflate the driver's RSS).
   */
  async audit(phase: string): Promise<Record<string, number | string>> {
    const parent = this.parents.get(phase);
    if (!parent) throw new Error(`no flow was added for ${phase}`);
    const counts = await parent.getDependenciesCount();
    return {
      parentState: await parent.getState(),
      childrenProcessed: counts.processed ?? 0,
      childrenUnprocessed: counts.unprocessed ?? 0,
      childrenFailed: counts.failed ?? 0,
      childrenIgnored: counts.ignored ?? 0,
    };
  }

  async stop(): Promise<void> {
    await this.flow.close();
    this.connection.disconnect();
    await this.sys.stop();
  }
}
