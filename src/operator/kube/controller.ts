import { SpanStatusCode } from '@opentelemetry/api';
import type { Logger } from '../../lib/log.ts';
import { tracer, tracingEnabled } from '../../lib/tracing.ts';
import { WorkQueue } from './workqueue.ts';

/** What a reconcile may ask for besides "done". */
export interface ReconcileResult {
  /** Reconcile this key again after this long even if nothing changes. */
  requeueAfterMs?: number;
}

export type Reconciler = (key: string, log: Logger) => Promise<ReconcileResult | undefined>;

/** Hooks for metrics, so this module does not depend on a registry. */
export interface ControllerObserver {
  reconciled(controller: string, result: 'success' | 'error' | 'requeue', seconds: number): void;
}

export interface ControllerOptions {
  name: string;
  reconcile: Reconciler;
  /** Concurrent reconciles (different keys only; default 2). */
  workers?: number;
  logger: Logger;
  observer?: ControllerObserver;
  queue?: WorkQueue<string>;
}

/**
 * Level-triggered reconcile loop: event handlers enqueue keys ("namespace/name");
 * workers reconcile each key from the current cache state. An error retries
 * the key with back-off; success forgets its failures.
 */
export class Controller {
  readonly name: string;
  readonly queue: WorkQueue<string>;
  private readonly o: ControllerOptions;
  private readonly log: Logger;
  private workers: Promise<void>[] = [];

  constructor(o: ControllerOptions) {
    this.o = o;
    this.name = o.name;
    this.queue = o.queue ?? new WorkQueue<string>();
    this.log = o.logger.with({ controller: o.name });
  }

  enqueue(key: string): void {
    this.queue.add(key);
  }

  start(): void {
    const n = this.o.workers ?? 2;
    for (let i = 0; i < n; i++) this.workers.push(this.work());
    this.log.info('Controller started', { workers: n });
  }

  /** Stops taking keys and waits for reconciles in progress. */
  async stop(): Promise<void> {
    await this.queue.shutDown();
    await Promise.all(this.workers);
    this.workers = [];
  }

  private async work(): Promise<void> {
    for (;;) {
      const key = await this.queue.get();
      if (key === undefined) return;
      const log = this.log.with({ key });
      const started = performance.now();
      // A span per reconcile when tracing is on (src/lib/tracing.ts); nothing otherwise.
      const span = tracingEnabled()
        ? tracer().startSpan(`reconcile ${this.name}`, { attributes: { 'agentflow.key': key } })
        : undefined;
      try {
        const res = await this.o.reconcile(key, log);
        span?.end();
        this.queue.forget(key);
        const seconds = (performance.now() - started) / 1000;
        if (res?.requeueAfterMs !== undefined) {
          this.queue.addAfter(key, res.requeueAfterMs);
          this.o.observer?.reconciled(this.name, 'requeue', seconds);
        } else this.o.observer?.reconciled(this.name, 'success', seconds);
      } catch (err) {
        const seconds = (performance.now() - started) / 1000;
        span?.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message?.slice(0, 1024) });
        span?.end();
        this.o.observer?.reconciled(this.name, 'error', seconds);
        const retries = this.queue.failuresOf(key);
        const level = retries >= 5 ? 'error' : 'warn';
        log[level]('Reconcile failed; retrying with back-off', { error: err as Error, retries });
        this.queue.addRateLimited(key);
      } finally {
        this.queue.done(key);
      }
    }
  }
}
