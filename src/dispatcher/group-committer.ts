import type { Logger } from '../lib/log.ts';

export interface GroupCommitterOptions<T, O> {
  /** Commits a batch in as few etcd round trips as it can; one outcome per item, in order. */
  commit(batch: T[]): Promise<O[]>;
  /** Called once per item with its outcome (undefined: the commit returned too few outcomes). */
  settled(item: T, outcome: O | undefined): void;
  /** Most items in one commit call (default 512). */
  maxBatch?: number;
  /** Wait before retrying a batch whose commit threw (default 500 ms). */
  retryMs?: number;
  logger: Logger;
}

/**
 * Group commit: whatever arrives while a commit is in flight goes into the
 * next one, so under load many results share one transaction. A batch whose
 * commit throws (etcd unavailable) is retried as a whole, in order, ahead of
 * newer items; nothing is dropped. One commit in flight at a time.
 */
export class GroupCommitter<T, O> {
  private readonly o: GroupCommitterOptions<T, O>;
  private readonly queue: T[] = [];
  private running = false;
  private stopped = false;
  private wake: (() => void) | undefined;
  readonly stats = { commits: 0, items: 0, failures: 0 };

  constructor(o: GroupCommitterOptions<T, O>) {
    this.o = o;
  }

  get pending(): number {
    return this.queue.length;
  }

  add(item: T): void {
    if (this.stopped) return;
    this.queue.push(item);
    this.start();
  }

  private start(): void {
    if (this.running || this.stopped || this.queue.length === 0) return;
    this.running = true;
    setImmediate(() => {
      this.loop().catch((err: Error) => this.o.logger.error('Group commit loop failed', { err }));
    });
  }

  /** Stops committing; items still queued stay unacknowledged (their agents re-send them). */
  stop(): void {
    this.stopped = true;
    this.wake?.();
  }

  private async loop(): Promise<void> {
    try {
      while (this.queue.length > 0 && !this.stopped) {
        const batch = this.queue.splice(0, this.o.maxBatch ?? 512);
        let outcomes: O[];
        try {
          outcomes = await this.o.commit(batch);
          this.stats.commits++;
          this.stats.items += batch.length;
        } catch (err) {
          this.stats.failures++;
          this.o.logger.error('Committing results failed; retrying', { err, results: batch.length });
          this.queue.unshift(...batch);
          await new Promise<void>((resolve) => {
            const t = setTimeout(resolve, this.o.retryMs ?? 500);
            this.wake = () => {
              clearTimeout(t);
              resolve();
            };
          });
          this.wake = undefined;
          continue;
        }
        batch.forEach((item, i) => {
          try {
            this.o.settled(item, outcomes[i]);
          } catch (err) {
            // One item's bookkeeping failing must not strand the rest of the batch.
            this.o.logger.error('Settling a committed result failed', { err });
          }
        });
      }
    } finally {
      this.running = false;
      this.start();
    }
  }
}
