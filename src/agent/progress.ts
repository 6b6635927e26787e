/**
 * At most one Progress per interval per attempt, and never a stale one: a
 * report inside the interval replaces the waiting one, which goes out when
 * the interval ends. A handler may call progress() in a tight loop.
 */
export class ProgressThrottle {
  private readonly send: (fraction: number, message: string) => void;
  private readonly intervalMs: number;
  private lastAt = Number.NEGATIVE_INFINITY;
  private waiting: { fraction: number; message: string } | undefined;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(send: (fraction: number, message: string) => void, intervalMs = 100) {
    this.send = send;
    this.intervalMs = intervalMs;
  }

  report(fraction: number, message: string): void {
    if (this.stopped) return;
    this.waiting = { fraction, message };
    const wait = this.lastAt + this.intervalMs - performance.now();
    if (wait <= 0) this.flush();
    else this.timer ??= setTimeout(() => this.flush(), wait);
  }

  /** The attempt is over: its Result supersedes any waiting report. */
  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.waiting = undefined;
  }

  private flush(): void {
    this.timer = undefined;
    const w = this.waiting;
    if (!w || this.stopped) return;
    this.waiting = undefined;
    this.lastAt = performance.now();
    this.send(w.fraction, w.message);
  }
}
