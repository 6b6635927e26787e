import type { TaskSpec } from './types.ts';

export interface QueuedTask {
  spec: TaskSpec;
  attempt: number;
  cost: number;
  priority: number;
  seq: number;
  enqueuedAt: number;
}

/** One workflow's line: sorted, taken from the front in O(1) (a head index, compacted now and then). */
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

/** One namespace's part of the pool's queue: its workflows' lines, served round-robin, and its deficit. */
interface Tenant {
  /** Lines by workflow name. */
  readonly lines: Map<string, Line>;
  /** Workflows with queued tasks, in the order they are served. */
  rotation: string[];
  cursor: number;
  /** Slots it may still take in its current visit (deficit round-robin between namespaces). */
  deficit: number;
  /** In the namespace rotation, i.e. admitted (a tenant exists only while it has queued tasks). */
  inRotation: boolean;
}

/**
 * Slots a namespace earns per unit of weight on each visit. One slot keeps shares fine-grained (weights
 * 3:1 with unit costs give A A A B, not bursts); a task costing more than a visit earns waits while its
 * namespace's deficit grows visit by visit (the rotation moves on meanwhile), as in classic deficit
 * round-robin.
 */
const QUANTUM = 1;

/**
 * How a visit to a namespace ended: the take reached `max` (the visit stays open for the next take);
 * its next task costs more than its deficit ('short'); nothing more of it fits ('dry'); or it has no
 * tasks left ('empty').
 */
type VisitEnd = 'max' | 'short' | 'dry' | 'empty';

/**
 * The ready tasks of one pool. Namespaces (tenants of a shared pool) share its slots by weight; inside
 * a namespace, workflows are served round-robin so one workflow's burst does not starve another's;
 * inside a workflow, highest priority first, FIFO within a priority.
 */
export class PoolQueue {
  private readonly tenants = new Map<string, Tenant>();
  /** Admitted namespaces with queued tasks, in the order they are visited. */
  private rotation: string[] = [];
  private cursor = 0;
  /** rotation[cursor] has been given its quantum and its visit is not over (a take stopped at max in it). */
  private open = false;
  private weights: ReadonlyMap<string, number> | undefined;
  private slots = 0;
  /** Queued tasks per handler: which handlers the pool's agents are wanted for. */
  private readonly perHandler = new Map<string, number>();
  private readonly owner: string | undefined;
  size = 0;

  /**
   * @param owner the pool's own namespace: with it, only the owner and the namespaces given weights by
   *   `setWeights` are taken from; without it, every namespace is (weight 1 unless given another).
   */
  constructor(owner?: string) {
    this.owner = owner;
  }

  /**
   * The namespaces the pool serves, with their weights (integers >= 1). The owner is always served,
   * with weight 1 unless the map says otherwise. Tasks of a namespace no longer served stay queued
   * (counted, listed by `queuedOf`) but are not taken until it is served again; a namespace leaving the
   * rotation loses its deficit.
   */
  setWeights(weights: ReadonlyMap<string, number> | undefined): void {
    // A weight below 1 would earn no deficit: its namespace would be visited forever without taking.
    for (const [ns, w] of weights ?? [])
      if (!Number.isInteger(w) || w < 1)
        throw new RangeError(`weight of namespace ${ns} must be an integer >= 1, got ${w}`);
    this.weights = weights && new Map(weights);
    const rotation: string[] = [];
    let cursor = 0;
    for (let i = 0; i < this.rotation.length; i++) {
      const ns = this.rotation[i] as string;
      if (this.admits(ns)) {
        if (i < this.cursor) cursor++;
        rotation.push(ns);
        continue;
      }
      const tenant = this.tenants.get(ns) as Tenant;
      tenant.inRotation = false;
      tenant.deficit = 0;
      if (i === this.cursor) this.open = false; // the namespace after it is next, with a visit of its own
    }
    for (const [ns, tenant] of this.tenants) {
      if (tenant.inRotation || !this.admits(ns)) continue;
      tenant.inRotation = true;
      rotation.push(ns);
    }
    this.rotation = rotation;
    this.cursor = cursor;
  }

  /** Whether `take` takes tasks of this namespace. */
  admits(namespace: string): boolean {
    return this.owner === undefined || namespace === this.owner || (this.weights?.has(namespace) ?? false);
  }

  private weightOf(namespace: string): number {
    return this.weights?.get(namespace) ?? 1;
  }

  /** The tasks queued for a namespace, admitted or not (in no particular order). */
  queuedOf(namespace: string): QueuedTask[] {
    const tenant = this.tenants.get(namespace);
    if (!tenant) return [];
    const out: QueuedTask[] = [];
    for (const line of tenant.lines.values())
      for (let i = line.head; i < line.items.length; i++) out.push(line.items[i] as QueuedTask);
    return out;
  }

  /** Namespaces with queued tasks, admitted or not. */
  namespaces(): string[] {
    return [...this.tenants.keys()];
  }

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
    this.size += by;
    this.slots += by * t.cost;
  }

  push(t: QueuedTask): void {
    const { namespace, workflow } = t.spec.ref;
    let tenant = this.tenants.get(namespace);
    if (!tenant) {
      tenant = { lines: new Map(), rotation: [], cursor: 0, deficit: 0, inRotation: this.admits(namespace) };
      this.tenants.set(namespace, tenant);
      if (tenant.inRotation) this.rotation.push(namespace);
    }
    let line = tenant.lines.get(workflow);
    if (!line) {
      line = { items: [], head: 0 };
      tenant.lines.set(workflow, line);
      tenant.rotation.push(workflow);
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
    this.counted(t, 1);
  }

  /**
   * Takes up to `max` tasks that `fits` accepts, on two levels.
   *
   * Between namespaces (admitted ones only), deficit round-robin in slots: each visit adds the
   * namespace's weight × QUANTUM to its deficit, and it takes while its next task's cost is within the
   * deficit (each taken task's cost is subtracted); then the rotation moves on. A task costing more
   * than a visit earns is taken once enough visits have added up. A namespace whose tasks run out loses
   * its deficit; one in which nothing (more) fits keeps only the largest cost it asked `fits` about, so
   * that waiting banks no credit for a burst later. The rotation position, an unfinished visit and
   * the deficits carry over to the next take, so repeated takes of max 1 still share by weight. A
   * namespace alone in the rotation is not metered: with one namespace, the queue is exactly the
   * round-robin between workflows below.
   *
   * Inside a namespace, its workflows round-robin, one task per visit, looking at most `scan` tasks
   * deep into each line so a head-of-line task no agent can take does not block the rest. `fits` is
   * asked only about tasks the deficit covers, and a `true` is always taken (it may have reserved room
   * for the task). A task `fits` answers 'hold' for leaves the line too, into `held` (not counted as
   * taken, no deficit spent).
   *
   * Stops when `max` is reached, the admitted lines are empty, or a full cycle of namespace visits took
   * nothing and earned no namespace the deficit it lacked for its next task.
   */
  take(fits: (t: QueuedTask) => boolean | 'hold', max: number, scan = 64, held?: QueuedTask[]): QueuedTask[] {
    const out: QueuedTask[] = [];
    let idle = 0;
    // Visits that ended dry (nothing, or nothing more, of their namespace fitted) since anything was
    // taken or earned. Whether such a visit was the end of that namespace's turn is known only later:
    // if a visit after it takes something, there was room and the dry namespace's tasks did not fit
    // (its turn is over, its deficit trimmed so it banks nothing); if the take ends with nothing
    // fitting anywhere, the agents are full (the common case under load) and none of those visits was
    // a turn. Then they are undone and the first stays open for the next take: else every take that
    // finds the agents full would move the rotation on and trim the deficits, and whoever came first
    // when a slot freed would get it, whatever the weights.
    let dry: { tenant: Tenant; ns: string; before: number; after: number; asked: number }[] = [];
    const endTurns = () => {
      for (const d of dry) d.tenant.deficit = Math.min(d.tenant.deficit, d.asked);
      dry = [];
    };
    while (out.length < max && this.rotation.length > 0 && idle < this.rotation.length) {
      this.cursor %= this.rotation.length;
      const ns = this.rotation[this.cursor] as string;
      const tenant = this.tenants.get(ns) as Tenant;
      // Alone, a namespace has nobody to share with: metering it would only add visits that take nothing.
      const metered = this.rotation.length > 1;
      const before = tenant.deficit;
      if (!metered) tenant.deficit = 0;
      else if (!this.open) tenant.deficit += this.weightOf(ns) * QUANTUM;
      this.open = true;
      const taken = out.length;
      const { end, asked } = this.visit(tenant, fits, max, scan, held, out, metered);
      if (out.length > taken || end === 'short') endTurns(); // there was room (or credit was earned)
      if (end === 'max') break;
      this.open = false;
      if (end === 'empty') {
        this.tenants.delete(ns);
        this.rotation.splice(this.cursor, 1);
      } else this.cursor++;
      if (end === 'dry' && metered) dry.push({ tenant, ns, before, after: tenant.deficit, asked });
      // A short visit earned deficit towards its next task: progress, even with nothing taken yet.
      idle = out.length > taken || end === 'short' ? 0 : idle + 1;
    }
    const first = dry[0];
    if (first && out.length < max && this.rotation.length > 1 && this.rotation.includes(first.ns)) {
      // Nothing fitted anywhere after `first` ran dry: no visit since was a turn. The others get back
      // the deficit they had before (the earliest visit's, hence in reverse); `first` goes on when room
      // frees, with what its visit was granted less what it took.
      for (let i = dry.length - 1; i > 0; i--)
        (dry[i] as (typeof dry)[number]).tenant.deficit = (dry[i] as (typeof dry)[number]).before;
      first.tenant.deficit = first.after;
      this.cursor = this.rotation.indexOf(first.ns);
      this.open = true;
    } else endTurns();
    return out;
  }

  /** One visit to a namespace: its workflows round-robin, one task per workflow, within its deficit. */
  private visit(
    tenant: Tenant,
    fits: (t: QueuedTask) => boolean | 'hold',
    max: number,
    scan: number,
    held: QueuedTask[] | undefined,
    out: QueuedTask[],
    metered: boolean,
  ): { end: VisitEnd; asked: number } {
    let idle = 0;
    /** The largest cost asked about in this visit: what it needs to ask for the same tasks next visit. */
    let asked = 0;
    for (;;) {
      if (tenant.rotation.length === 0) return { end: 'empty', asked };
      if (out.length >= max) return { end: 'max', asked };
      if (idle >= tenant.rotation.length) return { end: 'dry', asked };
      tenant.cursor %= tenant.rotation.length;
      const wf = tenant.rotation[tenant.cursor] as string;
      const line = tenant.lines.get(wf) as Line;
      let taken = false;
      let short = false;
      let looked = 0;
      let i = line.head;
      while (i < line.items.length && looked < scan) {
        const t = line.items[i] as QueuedTask;
        // Not asked: a `true` reserves room for a task this visit could not take.
        if (metered && t.cost > tenant.deficit) {
          short = true;
          break;
        }
        looked++;
        if (t.cost > asked) asked = t.cost;
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
        this.counted(t, -1);
        if (verdict === 'hold') {
          held?.push(t);
          continue;
        }
        out.push(t);
        if (metered) tenant.deficit -= t.cost;
        taken = true;
        break;
      }
      if (length(line) === 0) {
        tenant.lines.delete(wf);
        tenant.rotation.splice(tenant.cursor, 1);
      } else if (!short) tenant.cursor++; // short: this workflow goes first on the next visit
      if (short) return { end: 'short', asked };
      idle = taken ? 0 : idle + 1;
    }
  }

  remove(key: (t: QueuedTask) => boolean): QueuedTask | undefined {
    for (const [ns, tenant] of this.tenants) {
      for (const [wf, line] of tenant.lines) {
        let i = -1;
        for (let j = line.head; j < line.items.length; j++) {
          if (key(line.items[j] as QueuedTask)) {
            i = j;
            break;
          }
        }
        if (i < 0) continue;
        const t = line.items.splice(i, 1)[0] as QueuedTask;
        this.counted(t, -1);
        if (length(line) === 0) {
          tenant.lines.delete(wf);
          const at = tenant.rotation.indexOf(wf);
          tenant.rotation.splice(at, 1);
          // The workflows after it move one place left: so does the cursor, or the next one is skipped.
          if (at < tenant.cursor) tenant.cursor--;
        }
        if (tenant.rotation.length === 0) this.drop(ns, tenant);
        return t;
      }
    }
    return undefined;
  }

  /** A namespace emptied by remove leaves the rotation; the namespace after it stays next. */
  private drop(ns: string, tenant: Tenant): void {
    this.tenants.delete(ns);
    if (!tenant.inRotation) return;
    const at = this.rotation.indexOf(ns);
    this.rotation.splice(at, 1);
    if (at < this.cursor) this.cursor--;
    else if (at === this.cursor) this.open = false; // its visit is over; the next namespace gets one of its own
  }
}
