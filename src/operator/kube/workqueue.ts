/**
 * A work queue with client-go's semantics: a key is queued at most once
 * (de-duplication); a key being processed is never handed to a second worker,
 * and if it is added meanwhile it is queued again when the first worker is
 * done; failures are retried with per-key exponential back-off (5 ms doubling
 * to 16 min), and all retries together are held to a token bucket (10/s,
 * burst 100) so a broken dependency cannot make the operator hammer the API.
 */
export interface WorkQueueOptions {
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** Overall retry rate (default 10/s) and burst (default 100). */
  qps?: number;
  burst?: number;
}

export class WorkQueue<K = string> {
  private readonly queue: K[] = [];
  private readonly dirty = new Set<K>();
  private readonly processing = new Set<K>();
  private readonly failures = new Map<K, number>();
  private readonly delayed = new Map<K, { at: number; timer: NodeJS.Timeout }>();
  private readonly waiters: ((k: K | undefined) => void)[] = [];
  private readonly o: Required<WorkQueueOptions>;
  private tokens: number;
  private tokensAt = Date.now();
  private shuttingDown = false;
  private drainWaiters: (() => void)[] = [];

  constructor(opts: WorkQueueOptions = {}) {
    this.o = {
      baseDelayMs: opts.baseDelayMs ?? 5,
      maxDelayMs: opts.maxDelayMs ?? 1000_000,
      qps: opts.qps ?? 10,
      burst: opts.burst ?? 100,
    };
    this.tokens = this.o.burst;
  }

  /** Keys waiting (not counting those being processed or delayed). */
  get length(): number {
    return this.queue.length;
  }

  get delayedCount(): number {
    return this.delayed.size;
  }

  get processingCount(): number {
    return this.processing.size;
  }

  get isShuttingDown(): boolean {
    return this.shuttingDown;
  }

  add(key: K): void {
    if (this.shuttingDown || this.dirty.has(key)) return;
    this.dirty.add(key);
    if (this.processing.has(key)) return;
    const w = this.waiters.shift();
    if (w) {
      this.dirty.delete(key);
      this.processing.add(key);
      w(key);
    } else this.queue.push(key);
  }

  /** Adds after `ms`; an earlier pending delayed add wins, a later one is dropped. */
  addAfter(key: K, ms: number): void {
    if (this.shuttingDown) return;
    if (ms <= 0) {
      this.add(key);
      return;
    }
    const at = Date.now() + ms;
    const existing = this.delayed.get(key);
    if (existing && existing.at <= at) return;
    if (existing) clearTimeout(existing.timer);
    const timer = setTimeout(() => {
      this.delayed.delete(key);
      this.add(key);
    }, ms);
    timer.unref?.();
    this.delayed.set(key, { at, timer });
  }

  /** Retries the key after its back-off (and the overall bucket's wait). */
  addRateLimited(key: K): void {
    this.addAfter(key, this.when(key));
  }

  /** The delay addRateLimited would use now; counts as one failure. */
  when(key: K): number {
    const n = this.failures.get(key) ?? 0;
    this.failures.set(key, n + 1);
    const perKey = Math.min(this.o.maxDelayMs, this.o.baseDelayMs * 2 ** n);
    // Token bucket: how long until a token is free for this retry.
    const now = Date.now();
    this.tokens = Math.min(this.o.burst, this.tokens + ((now - this.tokensAt) / 1000) * this.o.qps);
    this.tokensAt = now;
    this.tokens -= 1;
    const bucket = this.tokens >= 0 ? 0 : (-this.tokens / this.o.qps) * 1000;
    return Math.max(perKey, bucket);
  }

  /** Clears the key's failure count (after a successful reconcile). */
  forget(key: K): void {
    this.failures.delete(key);
  }

  failuresOf(key: K): number {
    return this.failures.get(key) ?? 0;
  }

  /** The next key, waiting if none; undefined once shut down. Call done(key) after processing. */
  get(): Promise<K | undefined> {
    const key = this.queue.shift();
    if (key !== undefined) {
      this.dirty.delete(key);
      this.processing.add(key);
      return Promise.resolve(key);
    }
    if (this.shuttingDown) return Promise.resolve(undefined);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  done(key: K): void {
    this.processing.delete(key);
    if (this.dirty.has(key)) {
      this.dirty.delete(key);
      this.add(key);
    }
    if (this.processing.size === 0) for (const w of this.drainWaiters.splice(0)) w();
  }

  /** Stops handing out keys; waiting get()s resolve undefined. Resolves when in-progress keys are done. */
  shutDown(): Promise<void> {
    this.shuttingDown = true;
    for (const d of this.delayed.values()) clearTimeout(d.timer);
    this.delayed.clear();
    this.queue.length = 0;
    this.dirty.clear();
    for (const w of this.waiters.splice(0)) w(undefined);
    if (this.processing.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }
}
