import type { TaskSpec } from './types.ts';

export interface QueuedTask {
  spec: TaskSpec;
  attempt: number;
  cost: number;
  priority: number;
  seq: number;
  enqueuedAt: number;
}

/**
 * The ready tasks of one pool: highest priority first, FIFO within a
 * priority, and workflows (tenants: namespace/workflow) served round-robin so
 * one workflow's burst does not starve another's.
 */
export class PoolQueue {
  private readonly byNamespace = new Map<string, QueuedTask[]>();
  private rotation: string[] = [];
  private cursor = 0;
  private slots = 0;
  /** Queued tasks per handler: which handlers the pool's agents are wanted for. */
  private readonly perHandler = new Map<string, number>();
  size = 0;

  /** Slots wanted by queued tasks (the autoscaler's signal). */
  get queuedSlots(): number {
    return this.slots;
  }

  /** Handlers of the queued tasks (sorted). */
  wantedHandlers(): string[] {
    return [...this.perHandler.keys()].sort();
  }

  private counted(t: QueuedTask, by: 1 | -1): void {
    const h = t.spec.handler;
    const n = (this.perHandler.get(h) ?? 0) + by;
    if (n > 0) this.perHandler.set(h, n);
    else this.perHandler.delete(h);
  }

  push(t: QueuedTask): void {
    const ns = `${t.spec.ref.namespace}/${t.spec.ref.workflow}`;
    let q = this.byNamespace.get(ns);
    if (!q) {
      q = [];
      this.byNamespace.set(ns, q);
      this.rotation.push(ns);
    }
    // Binary insertion keeps each namespace sorted: priority desc, then seq asc.
    let lo = 0;
    let hi = q.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const m = q[mid] as QueuedTask;
      if (m.priority > t.priority || (m.priority === t.priority && m.seq < t.seq)) lo = mid + 1;
      else hi = mid;
    }
    q.splice(lo, 0, t);
    this.size++;
    this.slots += t.cost;
    this.counted(t, 1);
  }

  /**
   * Takes tasks that `fits` accepts, visiting tenants round-robin, one task
   * per visit, looking at most `scan` tasks deep into each tenant so a
   * head-of-line task no agent can take does not block the rest.
   */
  take(fits: (t: QueuedTask) => boolean, max: number, scan = 64): QueuedTask[] {
    const out: QueuedTask[] = [];
    let idle = 0;
    while (out.length < max && this.rotation.length > 0 && idle < this.rotation.length) {
      this.cursor %= this.rotation.length;
      const ns = this.rotation[this.cursor] as string;
      const q = this.byNamespace.get(ns) as QueuedTask[];
      let taken = false;
      for (let i = 0; i < Math.min(q.length, scan); i++) {
        const t = q[i] as QueuedTask;
        if (fits(t)) {
          q.splice(i, 1);
          this.size--;
          this.slots -= t.cost;
          this.counted(t, -1);
          out.push(t);
          taken = true;
          break;
        }
      }
      if (q.length === 0) {
        this.byNamespace.delete(ns);
        this.rotation.splice(this.cursor, 1);
      } else {
        this.cursor++;
      }
      idle = taken ? 0 : idle + 1;
    }
    return out;
  }

  remove(key: (t: QueuedTask) => boolean): QueuedTask | undefined {
    for (const [ns, q] of this.byNamespace) {
      const i = q.findIndex(key);
      if (i >= 0) {
        const [t] = q.splice(i, 1);
        this.size--;
        this.slots -= (t as QueuedTask).cost;
        this.counted(t as QueuedTask, -1);
        if (q.length === 0) {
          this.byNamespace.delete(ns);
          this.rotation = this.rotation.filter((n) => n !== ns);
        }
        return t;
      }
    }
    return undefined;
  }
}
