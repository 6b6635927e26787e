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
/** One tenant's line: sorted, taken from the front in O(1) (a head index, compacted now and then). */
interface Line {
  items: QueuedTask[];
  head: number;
}

const length = (l: Line) => l.items.length - l.head;

/** Drops the taken front once it is most of the array, so memory follows what is still queued. */
function compact(l: Line): void {
  if (l.head > 1024 && l.head * 2 > l.items.length) {
    l.items = l.items.slice(l.head);
    l.head = 0;
  }
}

/**
 * The ready tasks of one pool: highest priority first, FIFO within a
 * priority, and workflows (tenants: namespace/workflow) served round-robin so
 * one workflow's burst does not starve another's.
 */
export class PoolQueue {
  private readonly byNamespace = new Map<string, Line>();
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
    let line = this.byNamespace.get(ns);
    if (!line) {
      line = { items: [], head: 0 };
      this.byNamespace.set(ns, line);
      this.rotation.push(ns);
    }
    const q = line.items;
    const after = (m: QueuedTask) => m.priority > t.priority || (m.priority === t.priority && m.seq < t.seq);
    // The common case, a new task of the same priority as the last: append.
    const last = q[q.length - 1];
    if (q.length === line.head || (last && after(last))) q.push(t);
    else {
      // Binary insertion keeps each line sorted: priority desc, then seq asc.
      let lo = line.head;
      let hi = q.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (after(q[mid] as QueuedTask)) lo = mid + 1;
        else hi = mid;
      }
      if (lo === line.head && line.head > 0) {
        line.head--;
        q[line.head] = t;
      } else q.splice(lo, 0, t);
    }
    this.size++;
    this.slots += t.cost;
    this.counted(t, 1);
  }

  /**
   * Takes tasks that `fits` accepts, visiting tenants round-robin, one task
   * per visit, looking at most `scan` tasks deep into each tenant so a
   * head-of-line task no agent can take does not block the rest. A task `fits`
   * answers 'hold' for leaves the line too, into `held` (not counted as taken).
   */
  take(fits: (t: QueuedTask) => boolean | 'hold', max: number, scan = 64, held?: QueuedTask[]): QueuedTask[] {
    const out: QueuedTask[] = [];
    let idle = 0;
    while (out.length < max && this.rotation.length > 0 && idle < this.rotation.length) {
      this.cursor %= this.rotation.length;
      const ns = this.rotation[this.cursor] as string;
      const line = this.byNamespace.get(ns) as Line;
      let taken = false;
      let looked = 0;
      let i = line.head;
      while (i < line.items.length && looked < scan) {
        const t = line.items[i] as QueuedTask;
        looked++;
        const verdict = fits(t);
        if (verdict === false) {
          i++;
          continue;
        }
        // Taken, or held by a limit ('hold': it leaves the line for its limit's own queue, given to `held`).
        if (i === line.head) {
          line.items[i] = undefined as unknown as QueuedTask; // let it be collected
          line.head++;
          compact(line);
          i = line.head;
        } else line.items.splice(i, 1);
        this.size--;
        this.slots -= t.cost;
        this.counted(t, -1);
        if (verdict === 'hold') {
          held?.push(t);
          continue;
        }
        out.push(t);
        taken = true;
        break;
      }
      if (length(line) === 0) {
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
    for (const [ns, line] of this.byNamespace) {
      let i = -1;
      for (let j = line.head; j < line.items.length; j++) {
        if (key(line.items[j] as QueuedTask)) {
          i = j;
          break;
        }
      }
      if (i >= 0) {
        const [t] = line.items.splice(i, 1);
        this.size--;
        this.slots -= (t as QueuedTask).cost;
        this.counted(t as QueuedTask, -1);
        if (length(line) === 0) {
          this.byNamespace.delete(ns);
          const at = this.rotation.indexOf(ns);
          this.rotation.splice(at, 1);
          // The workflows after it move one place left: so does the cursor, or the next one is skipped.
          if (at < this.cursor) this.cursor--;
        }
        return t;
      }
    }
    return undefined;
  }
}
