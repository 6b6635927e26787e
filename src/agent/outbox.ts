/** The part of a writable stream that backpressure needs. */
export interface DrainableWriter<T> {
  write(msg: T): boolean;
  once(event: 'drain', listener: () => void): unknown;
}

export type Enqueued = 'written' | 'queued' | 'dropped' | 'overflow';

/**
 * Writes in order while honouring backpressure: after write() returns false,
 * messages wait in a bounded queue until 'drain'. When the queue is full a
 * best-effort message is dropped; anything else reports 'overflow' so the
 * caller can give up on the stream (results survive in the agent's pending
 * set and go out again on the next stream).
 */
export class Outbox<T> {
  private readonly writer: DrainableWriter<T>;
  private readonly limit: number;
  private readonly queue: T[] = [];
  private waiting = false;
  private closed = false;

  constructor(writer: DrainableWriter<T>, limit: number) {
    this.writer = writer;
    this.limit = limit;
  }

  get queued(): number {
    return this.queue.length;
  }

  send(msg: T, bestEffort = false): Enqueued {
    if (this.closed) return 'dropped';
    if (this.waiting) {
      if (this.queue.length >= this.limit) return bestEffort ? 'dropped' : 'overflow';
      this.queue.push(msg);
      return 'queued';
    }
    if (!this.writer.write(msg)) this.awaitDrain();
    return 'written';
  }

  close(): void {
    this.closed = true;
    this.queue.length = 0;
  }

  private awaitDrain(): void {
    this.waiting = true;
    this.writer.once('drain', () => {
      this.waiting = false;
      while (this.queue.length > 0 && !this.closed) {
        if (!this.writer.write(this.queue.shift() as T)) {
          this.awaitDrain();
          return;
        }
      }
    });
  }
}
