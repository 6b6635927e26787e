import { MinHeap } from './min-heap.ts';
import { TASK_PHASES, type TaskPhase } from './phases.ts';

/** What the index reads of a task instance. */
export interface IndexedInstance {
  readonly name: string;
  readonly template: string;
  readonly phase: TaskPhase;
  /** Input rendered: may run once a slot is free (phase Pending). */
  readonly ready?: boolean;
  readonly retryAt?: number;
  readonly attempt: number;
  readonly pool: string;
  readonly handler: string;
  readonly parent?: string;
  readonly index?: number;
}

/** What the index last saw of an instance: an update is the difference to it. */
interface Entry {
  readonly name: string;
  /** Position in the run's instance order (first seen first): the order dispatch and the status follow. */
  readonly seq: number;
  readonly template: string;
  /** A forEach item (`name.<k>`), not a spawned child: what decides whether its template is done. */
  readonly item: boolean;
  pool: string;
  handler: string;
  phase: TaskPhase;
  ready: boolean;
  /** When a Retrying instance is due (a record without retryAt is due at once, as before). */
  retryAt: number;
  attempt: number;
  /** Has an entry in the ready heap (at most one). */
  inReady: boolean;
  /** Retrying, due, and moved to the ready heap (it stays Retrying until it is submitted). */
  released: boolean;
}

const zeroPhases = (): Record<TaskPhase, number> =>
  Object.fromEntries(TASK_PHASES.map((p) => [p, 0])) as Record<TaskPhase, number>;

/** What the status reads of one template's instances (its forEach items and spawned children included). */
export interface TemplateCounts {
  readonly count: number;
  readonly phases: Readonly<Record<TaskPhase, number>>;
  /** forEach items (`name.<k>`) in Succeeded. */
  readonly itemsSucceeded: number;
  /** The first instance in the run's order: the one a single-instance summary shows. */
  readonly first: string | undefined;
  /** The highest attempt number of its instances. */
  readonly maxAttempt: number;
}

class TemplateTally implements TemplateCounts {
  count = 0;
  readonly phases = zeroPhases();
  itemsSucceeded = 0;
  first: string | undefined;
  /** Failed or Retrying: the status names the first of them. */
  readonly failing = new Set<Entry>();
  readonly running = new Set<Entry>();
  private max = 0;
  /** The highest attempt number went down (a record replaced): recounted when asked. */
  private stale = false;

  private readonly recount: () => number;

  constructor(recount: () => number) {
    this.recount = recount;
  }

  get maxAttempt(): number {
    if (this.stale) {
      this.max = this.recount();
      this.stale = false;
    }
    return this.max;
  }

  noteAttempt(before: number | undefined, now: number): void {
    if (now > this.max) this.max = now;
    else if (before !== undefined && now < before && before === this.max) this.stale = true;
  }
}

/** Queued instances of one pool and handler. */
interface Need {
  pool: string;
  handler: string;
  members: Set<Entry>;
}

const bySeq = (a: Entry, b: Entry) => a.seq < b.seq;
/** The one of `set` first in the run's order that `pred` accepts. */
function firstBySeq(set: Iterable<Entry>, pred: (e: Entry) => boolean = () => true): Entry | undefined {
  let best: Entry | undefined;
  for (const e of set) if ((best === undefined || e.seq < best.seq) && pred(e)) best = e;
  return best;
}

/**
 * A run's bookkeeping, kept up to date on every change of an instance instead
 * of recounted by scanning them all: phase counts (of the run and per
 * template), which instances may be submitted now (a heap in the run's
 * instance order, so dispatch hands them out in the order a scan would), when
 * the next retry is due, and the queued work per pool and handler. Every
 * change to an instance must be followed by update(); then each answer equals
 * what a full scan of the instances in their order would give.
 */
export class RunIndex {
  private readonly entries = new Map<string, Entry>();
  private readonly tallies = new Map<string, TemplateTally>();
  private readonly byPhase = zeroPhases();
  /** Pending and ready, or Retrying and released: what dispatch may submit. */
  private readonly ready = new MinHeap<Entry>(bySeq);
  /** Retrying instances by due time; entries whose instance moved on are dropped when met. */
  private readonly retries = new MinHeap<{ at: number; e: Entry }>((a, b) => a.at < b.at);
  private readonly released = new Set<Entry>();
  private readonly queued = new Map<string, Need>();
  private seq = 0;

  get size(): number {
    return this.entries.size;
  }

  /** Instances per phase. */
  get phases(): Readonly<Record<TaskPhase, number>> {
    return this.byPhase;
  }

  /** Queued and running: what counts against parallelism. */
  get active(): number {
    return this.byPhase.Queued + this.byPhase.Running;
  }

  tally(template: string): TemplateCounts | undefined {
    return this.tallies.get(template);
  }

  /** Records the instance as it is now (a new one, or a change to one already here). */
  update(i: IndexedInstance): void {
    const retryAt = i.retryAt ?? 0;
    let e = this.entries.get(i.name);
    if (!e) {
      e = {
        name: i.name,
        seq: this.seq++,
        template: i.template,
        item: i.parent === undefined && i.index !== undefined,
        pool: i.pool,
        handler: i.handler,
        phase: i.phase,
        ready: false,
        retryAt,
        attempt: i.attempt,
        inReady: false,
        released: false,
      };
      this.entries.set(i.name, e);
      const t = this.tallyOf(e.template);
      t.count++;
      t.first ??= e.name;
      t.noteAttempt(undefined, e.attempt);
      this.enter(e, t);
    } else {
      const t = this.tallyOf(e.template);
      if (e.phase !== i.phase || e.retryAt !== retryAt || e.pool !== i.pool || e.handler !== i.handler) {
        this.leave(e, t);
        e.phase = i.phase;
        e.retryAt = retryAt;
        e.pool = i.pool;
        e.handler = i.handler;
        this.enter(e, t);
      }
      if (e.attempt !== i.attempt) {
        t.noteAttempt(e.attempt, i.attempt);
        e.attempt = i.attempt;
      }
    }
    e.ready = i.ready === true;
    if (this.eligible(e)) this.offer(e);
  }

  /** Puts an entry in the ready heap unless it has one there already (a stale one comes back to life). */
  private offer(e: Entry): void {
    if (e.inReady) return;
    e.inReady = true;
    this.ready.push(e);
  }

  private eligible(e: Entry): boolean {
    return (e.phase === 'Pending' && e.ready) || (e.phase === 'Retrying' && e.released);
  }

  /** Moves retries due by `now` to the ready heap. */
  private release(now: number): void {
    for (let top = this.retries.peek(); top && top.at <= now; top = this.retries.peek()) {
      this.retries.pop();
      const e = top.e;
      if (e.phase !== 'Retrying' || e.released || e.retryAt !== top.at) continue; // moved on since
      e.released = true;
      this.released.add(e);
      this.offer(e);
    }
  }

  /**
   * The next instance dispatch may submit at `now`, first in the run's order:
   * Pending and ready, or Retrying and due. It leaves the ready heap; the
   * caller submits it (and updates it) or the instance would wait for its
   * next change.
   */
  takeEligible(now: number): string | undefined {
    this.release(now);
    for (let e = this.ready.pop(); e; e = this.ready.pop()) {
      e.inReady = false;
      if (this.eligible(e)) return e.name;
    }
    return undefined;
  }

  /** When the earliest Retrying instance is due (one due already but not yet submitted included). */
  nextRetryAt(): number | undefined {
    for (let top = this.retries.peek(); top; top = this.retries.peek()) {
      const e = top.e;
      if (e.phase === 'Retrying' && !e.released && e.retryAt === top.at) break;
      this.retries.pop();
    }
    let at = this.retries.peek()?.at;
    for (const e of this.released) at = Math.min(at ?? e.retryAt, e.retryAt);
    return at;
  }

  /** Pool and handler of the queued instances with counts, in the order of each pair's first queued instance. */
  queuedNeeds(): { pool: string; handler: string; tasks: number }[] {
    const needs = [...this.queued.values()];
    if (needs.length > 1) {
      const first = new Map(needs.map((n) => [n, firstBySeq(n.members)?.seq ?? 0]));
      needs.sort((a, b) => (first.get(a) as number) - (first.get(b) as number));
    }
    return needs.map((n) => ({ pool: n.pool, handler: n.handler, tasks: n.members.size }));
  }

  /** The first Failed or Retrying instance of a template, in the run's order. */
  firstFailing(template: string): string | undefined {
    const t = this.tallies.get(template);
    return t && firstBySeq(t.failing)?.name;
  }

  /** The first Running instance of a template that `pred` accepts, in the run's order. */
  firstRunning(template: string, pred: (name: string) => boolean): string | undefined {
    const t = this.tallies.get(template);
    return t && firstBySeq(t.running, (e) => pred(e.name))?.name;
  }

  private tallyOf(template: string): TemplateTally {
    let t = this.tallies.get(template);
    if (!t) {
      t = new TemplateTally(() => {
        let max = 0;
        for (const e of this.entries.values()) if (e.template === template && e.attempt > max) max = e.attempt;
        return max;
      });
      this.tallies.set(template, t);
    }
    return t;
  }

  /** Counts an entry in its (new) phase. */
  private enter(e: Entry, t: TemplateTally): void {
    this.byPhase[e.phase]++;
    t.phases[e.phase]++;
    if (e.phase === 'Succeeded' && e.item) t.itemsSucceeded++;
    if (e.phase === 'Failed' || e.phase === 'Retrying') t.failing.add(e);
    if (e.phase === 'Running') t.running.add(e);
    if (e.phase === 'Retrying') this.retries.push({ at: e.retryAt, e });
    if (e.phase === 'Queued') {
      const k = `${e.pool}\0${e.handler}`;
      let n = this.queued.get(k);
      if (!n) {
        n = { pool: e.pool, handler: e.handler, members: new Set() };
        this.queued.set(k, n);
      }
      n.members.add(e);
    }
  }

  /** Takes an entry out of the counts of its (old) phase. */
  private leave(e: Entry, t: TemplateTally): void {
    this.byPhase[e.phase]--;
    t.phases[e.phase]--;
    if (e.phase === 'Succeeded' && e.item) t.itemsSucceeded--;
    t.failing.delete(e);
    t.running.delete(e);
    this.released.delete(e);
    e.released = false;
    if (e.phase === 'Queued') {
      const k = `${e.pool}\0${e.handler}`;
      const n = this.queued.get(k);
      n?.members.delete(e);
      if (n && n.members.size === 0) this.queued.delete(k);
    }
  }
}
