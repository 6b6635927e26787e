import { MinHeap } from '../workflow/min-heap.ts';
import { poolNamespaceOf, type TaskSpec } from './types.ts';

// Concurrency keys and rate limits (issue 18, part 5), enforced where tasks are picked for agents.
//
// A task may name a concurrency key (namespace-wide: at most `max` attempts of the key hold a slot at
// once) and rate limits declared on its AgentPool (token buckets per pool, limit and key). Each of
// these is a gate. A queued task is in exactly one place: the pool's ready line (every gate admitted
// it and counts it as "ready") or the queue of the first gate that holds it (FIFO by its place in
// line). A held task is never scanned again: it is woken by what frees its gate, a running attempt
// of its key ending, or the one timer armed for the earliest moment a held bucket has a token.

/** A rate limit as an AgentPool declares it (spec.rateLimits[]). */
export interface RateLimitDef {
  name: string;
  perSecond?: number;
  perMinute?: number;
  /** Tokens the bucket holds at most (default DEFAULT_BURST). */
  burst?: number;
}

/** Tokens a bucket holds unless its limit says otherwise: one, so calls are spaced evenly. */
export const DEFAULT_BURST = 1;

/** Beginning of the message of a task queued for a pool that does not (or no longer) serve its namespace. */
export const NOT_SHARED_PREFIX = 'waiting on AgentPool ';
const HELD_PREFIXES = ['waiting on rate limit ', 'waiting on concurrency key ', NOT_SHARED_PREFIX] as const;
/** Whether a task's message is one a limit (or a pool not shared) wrote: the run clears it once the task starts. */
export const isHeldMessage = (m: string | undefined): boolean =>
  m !== undefined && HELD_PREFIXES.some((p) => m.startsWith(p));

/** What the limits need to know of a queued task. */
export interface Limited {
  readonly key: string;
  readonly spec: TaskSpec;
  seq?: number;
}

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): NodeJS.Timeout;
  clearTimeout(t: NodeJS.Timeout): void;
}

const realClock: Clock = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref();
    return t;
  },
  clearTimeout: (t) => clearTimeout(t),
};

/** Tasks held by one gate: sorted (priority desc, then place in line), taken from the front. */
class HeldQueue<T extends Limited> {
  private items: T[] = [];
  private head = 0;
  /** Tasks removed in place (cancelled): skipped when reached. */
  private readonly dead = new Set<T>();

  get size(): number {
    return this.items.length - this.head - this.dead.size;
  }

  /** Inserts in order; returns the number of live tasks ahead of it (an estimate once some are dead). */
  insert(t: T): number {
    const before = (m: T) => prio(m) > prio(t) || (prio(m) === prio(t) && (m.seq ?? 0) < (t.seq ?? 0));
    const q = this.items;
    const last = q[q.length - 1];
    if (q.length === this.head || (last && before(last))) {
      q.push(t);
      return this.size - 1;
    }
    let lo = this.head;
    let hi = q.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (before(q[mid] as T)) lo = mid + 1;
      else hi = mid;
    }
    q.splice(lo, 0, t);
    return lo - this.head;
  }

  peek(): T | undefined {
    this.skipDead();
    return this.items[this.head];
  }

  shift(): T | undefined {
    const t = this.peek();
    if (t === undefined) return undefined;
    this.items[this.head] = undefined as unknown as T;
    this.head++;
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return t;
  }

  remove(t: T): void {
    this.dead.add(t);
    if (this.dead.size > 64 && this.dead.size * 2 > this.items.length - this.head) {
      this.items = this.items.slice(this.head).filter((m) => !this.dead.has(m));
      this.head = 0;
      this.dead.clear();
    }
  }

  private skipDead(): void {
    while (this.head < this.items.length && this.dead.delete(this.items[this.head] as T)) {
      this.items[this.head] = undefined as unknown as T;
      this.head++;
    }
  }
}

const prio = (t: Limited) => t.spec.priority ?? 0;

/** At most `max` attempts of the key hold a slot at once, across the namespace. */
interface KeyGate<T extends Limited> {
  kind: 'concurrency';
  id: string;
  key: string;
  /** Attempts of the key picked and not yet ended (adopted ones included). */
  running: number;
  /** Tasks of the key in a ready line (admitted, not yet picked). */
  ready: number;
  held: HeldQueue<T>;
}

/** A token bucket: one pool's limit for one key, refilled lazily. */
interface Bucket<T extends Limited> {
  kind: 'rate';
  id: string;
  namespace: string;
  pool: string;
  limit: string;
  key: string;
  /** Tokens per millisecond. */
  rate: number;
  burst: number;
  tokens: number;
  /** When `tokens` was last brought up to date. */
  at: number;
  ready: number;
  held: HeldQueue<T>;
  /** When the timer heap was told the bucket is due (undefined: not in the heap). */
  due?: number;
  /**
   * Sends, paced (GCRA): the theoretical time of the next Assign of the bucket. Tokens are taken at
   * admission; claim transactions of varying length between admission and send would otherwise let
   * Assigns admitted 100 ms apart go out together, over the rate for that second.
   */
  sendTat: number;
}

/** Tasks naming a limit their pool does not declare (yet): woken when the pool's limits change. */
interface MissingGate<T extends Limited> {
  kind: 'missing';
  id: string;
  namespace: string;
  pool: string;
  limit: string;
  held: HeldQueue<T>;
}

type Gate<T extends Limited> = KeyGate<T> | Bucket<T> | MissingGate<T>;

interface TaskState<T extends Limited> {
  /** Where the task is: a ready line, a gate's queue, or neither (picked, or not queued). */
  place: 'ready' | Gate<T> | undefined;
  /** The buckets whose `ready` counts it (set while place is 'ready'). */
  buckets: Bucket<T>[];
  /** Holds a slot of its concurrency key (picked or adopted, attempt not yet ended). */
  holding?: KeyGate<T>;
  /** Buckets it took a token from at its pick (refunded if the pick is given back). */
  took?: Bucket<T>[];
}

export interface LimitsOptions<T extends Limited> {
  /** A held task goes back to its pool's ready line. */
  ready(task: T): void;
  /** A task was held by a gate, and why (e.g. for the task's status message). */
  held?(task: T, message: string): void;
  /** Tasks went back to a ready line from a wake the dispatcher did not cause (a timer, new limits). */
  woken?(): void;
  clock?: Clock;
}

const sameDef = (a: RateLimitDef, b: RateLimitDef) =>
  a.perSecond === b.perSecond && a.perMinute === b.perMinute && a.burst === b.burst;

const ratePerMs = (d: RateLimitDef) => (d.perSecond !== undefined ? d.perSecond / 1000 : (d.perMinute ?? 0) / 60_000);

/**
 * The gates of every queued task: concurrency keys per namespace, token buckets per (namespace, pool,
 * limit, key), and tasks waiting for a limit their pool does not declare. Knows nothing of agents.
 */
export class Limits<T extends Limited> {
  private readonly o: LimitsOptions<T>;
  private readonly clock: Clock;
  private readonly tasks = new Map<T, TaskState<T>>();
  private readonly keys = new Map<string, KeyGate<T>>();
  private readonly buckets = new Map<string, Bucket<T>>();
  private readonly missing = new Map<string, MissingGate<T>>();
  /** Rate limits per namespace/pool, by name. */
  private readonly defs = new Map<string, Map<string, RateLimitDef>>();
  private readonly dueHeap = new MinHeap<{ at: number; bucket: Bucket<T> }>((a, b) => a.at < b.at);
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Number.POSITIVE_INFINITY;
  private bucketsAtSweep = 64;
  /** Buckets a pick made room in, to wake after the turn (see flush). */
  private readonly pending = new Set<Bucket<T>>();

  constructor(o: LimitsOptions<T>) {
    this.o = o;
    this.clock = o.clock ?? realClock;
  }

  /** Whether a task is subject to any gate (the rest skip every check). */
  static limited(spec: TaskSpec): boolean {
    return spec.concurrency !== undefined || (spec.rateLimits?.length ?? 0) > 0;
  }

  // ---- what the scheduler calls ----

  /**
   * A task is queued: true if every gate admits it (the caller puts it in its ready line), false if a
   * gate holds it (it waits here until woken through `ready`).
   */
  admit(task: T): boolean {
    const s = this.stateOf(task);
    const gate = this.blocker(task, s);
    if (gate) {
      this.hold(task, s, gate);
      return false;
    }
    this.enterReady(task, s);
    return true;
  }

  /**
   * At its pick: the gate that holds the task now (only after an adoption took its key over `max`,
   * or its pool's limits changed), else undefined. A task it returns must be given to `holdAtPick`.
   */
  check(task: T): Gate<T> | undefined {
    const s = this.tasks.get(task);
    if (!s) return undefined;
    const c = task.spec.concurrency;
    const g = c && this.keys.get(this.keyId(task));
    if (c && g && g.running >= c.max) return g;
    // Its tokens were taken when it was admitted: only a limit gone since then holds it now.
    for (const b of s.buckets) {
      if (!this.defs.get(poolId(b.namespace, b.pool))?.has(b.limit))
        return this.missingGate(b.namespace, b.pool, b.limit);
    }
    return undefined;
  }

  /** The ready task `check` refused leaves its line for that gate's queue. */
  holdAtPick(task: T, gate: Gate<T>): void {
    const s = this.tasks.get(task);
    if (!s) return;
    this.leaveReady(task, s);
    this.hold(task, s, gate);
  }

  /** The task was picked for an agent: it takes a slot of its key and a token of each bucket. */
  picked(task: T): void {
    const s = this.tasks.get(task);
    if (!s || s.place !== 'ready') return;
    const g = task.spec.concurrency ? this.keyGate(task) : undefined;
    if (g) {
      g.ready--;
      g.running++;
      s.holding = g;
    }
    for (const b of s.buckets) {
      b.ready--;
      // Room for the next held task (its token may be there already): woken in flush(), after the turn.
      if (b.held.size > 0) this.pending.add(b);
    }
    s.took = s.buckets;
    s.buckets = [];
    s.place = undefined;
  }

  /**
   * When the Assign of a picked task may go out (clock ms; now or later), booked in every bucket its
   * pick took a token from: no bucket's Assigns closer than 1/rate apart beyond its burst (and
   * PACE_SLACK_MS), so over any window W at most burst + rate × (W + PACE_SLACK_MS) go out, however
   * unevenly the claim transactions before them return. Call once per pick, when its claim is written.
   */
  sendAt(task: T): number {
    const now = this.clock.now();
    const took = this.tasks.get(task)?.took;
    if (!took?.length) return now;
    let at = now;
    for (const b of took) if (b.rate > 0) at = Math.max(at, b.sendTat - paceTolerance(b));
    for (const b of took) if (b.rate > 0) b.sendTat = Math.max(b.sendTat, at) + 1 / b.rate;
    return at;
  }

  /** Wakes what picks made room for (called once the scheduler's turn is over, never inside it). */
  flush(): void {
    if (this.pending.size === 0) return;
    const gates = [...this.pending];
    this.pending.clear();
    let woken = false;
    for (const b of gates) if (this.wake(b)) woken = true;
    this.arm();
    if (woken) this.o.woken?.();
  }

  /** A queued task left without a pick (cancelled, adopted, committed as an orphan). */
  remove(task: T): void {
    const s = this.tasks.get(task);
    if (!s) return;
    if (s.place === 'ready') this.leaveReady(task, s);
    else if (s.place) {
      s.place.held.remove(task);
      const g = s.place;
      s.place = undefined;
      this.forget(g);
      this.arm();
    }
    if (!s.holding) this.tasks.delete(task);
  }

  /**
   * The attempt is over, or its pick was given back: frees its key's slot (waking the next task of
   * the key) and, if `refund`, gives back the tokens its pick took. Idempotent.
   */
  release(task: T, refund = false): void {
    const s = this.tasks.get(task);
    if (!s || s.place !== undefined) return;
    this.tasks.delete(task);
    const now = this.clock.now();
    if (refund) {
      for (const b of s.took ?? []) {
        this.refill(b, now);
        b.tokens = Math.min(b.burst, b.tokens + 1);
        this.wake(b);
      }
    }
    const g = s.holding;
    if (g) {
      g.running--;
      this.wake(g);
      this.forget(g);
    }
  }

  /** An attempt adopted from a re-registering agent runs: it holds a slot of its key (even over max). */
  adopted(task: T): void {
    if (!task.spec.concurrency) return;
    const s = this.stateOf(task);
    if (s.holding) return;
    if (s.place !== undefined) this.remove(task);
    const g = this.keyGate(task);
    g.running++;
    s.holding = g;
    this.tasks.set(task, s);
  }

  /** The rate limits a pool declares now (undefined: the pool is gone). Re-checks what they affect. */
  setRateLimits(namespace: string, pool: string, defs: readonly RateLimitDef[] | undefined): void {
    const id = poolId(namespace, pool);
    const next = new Map((defs ?? []).map((d) => [d.name, d]));
    const prev = this.defs.get(id);
    if (next.size === 0) this.defs.delete(id);
    else this.defs.set(id, next);
    const changed = new Set<string>();
    for (const [name, d] of next)
      if (!prev?.get(name) || !sameDef(prev.get(name) as RateLimitDef, d)) changed.add(name);
    for (const name of prev?.keys() ?? []) if (!next.has(name)) changed.add(name);
    if (changed.size === 0) return;
    const now = this.clock.now();
    const requeue: T[] = [];
    for (const b of this.buckets.values()) {
      if (b.namespace !== namespace || b.pool !== pool || !changed.has(b.limit)) continue;
      const d = next.get(b.limit);
      if (d) {
        this.refill(b, now);
        b.rate = ratePerMs(d);
        b.burst = d.burst ?? DEFAULT_BURST;
        b.tokens = Math.min(b.tokens, b.burst);
        this.wake(b);
        this.schedule(b);
      } else {
        // The limit went away: its held tasks wait for it again as undeclared.
        for (let t = b.held.shift(); t; t = b.held.shift()) requeue.push(t);
        this.forget(b);
      }
    }
    for (const name of changed) {
      const m = this.missing.get(`${id}/${name}`);
      if (!m || !next.has(name)) continue;
      for (let t = m.held.shift(); t; t = m.held.shift()) requeue.push(t);
      this.forget(m);
    }
    let woken = false;
    for (const t of requeue) {
      const s = this.tasks.get(t);
      if (!s) continue;
      s.place = undefined;
      if (this.admit(t)) {
        this.o.ready(t);
        woken = true;
      }
    }
    this.arm();
    if (woken) this.o.woken?.();
  }

  /** Why a queued task is held now (the figures as of now), or undefined if it is not held. */
  reason(task: T): string | undefined {
    const s = this.tasks.get(task);
    if (!s || s.place === undefined || s.place === 'ready') return undefined;
    return this.describe(task, s.place, 0);
  }

  /** Tasks held by a gate. */
  get heldCount(): number {
    let n = 0;
    for (const s of this.tasks.values()) if (s.place !== undefined && s.place !== 'ready') n++;
    return n;
  }

  /** Whether the refill timer is armed (unit tests: none when nothing is due). */
  get timerArmed(): boolean {
    return this.timer !== undefined;
  }

  /** Attempts of a concurrency key holding a slot (namespace, key as evaluated). */
  runningOf(namespace: string, key: string): number {
    return this.keys.get(`${namespace}/${key}`)?.running ?? 0;
  }

  close(): void {
    if (this.timer) this.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }

  // ---- gates ----

  private stateOf(task: T): TaskState<T> {
    let s = this.tasks.get(task);
    if (!s) {
      s = { place: undefined, buckets: [] };
      this.tasks.set(task, s);
    }
    return s;
  }

  private keyId(task: T): string {
    return `${task.spec.ref.namespace}/${task.spec.concurrency?.key ?? ''}`;
  }

  private keyGate(task: T): KeyGate<T> {
    const id = this.keyId(task);
    let g = this.keys.get(id);
    if (!g) {
      g = {
        kind: 'concurrency',
        id,
        key: task.spec.concurrency?.key ?? '',
        running: 0,
        ready: 0,
        held: new HeldQueue(),
      };
      this.keys.set(id, g);
    }
    return g;
  }

  private missingGate(namespace: string, pool: string, limit: string): MissingGate<T> {
    const id = `${poolId(namespace, pool)}/${limit}`;
    let m = this.missing.get(id);
    if (!m) {
      m = { kind: 'missing', id, namespace, pool, limit, held: new HeldQueue() };
      this.missing.set(id, m);
    }
    return m;
  }

  private bucket(namespace: string, pool: string, d: RateLimitDef, key: string): Bucket<T> {
    const id = `${poolId(namespace, pool)}/${d.name}/${key}`;
    let b = this.buckets.get(id);
    if (!b) {
      const burst = d.burst ?? DEFAULT_BURST;
      b = {
        kind: 'rate',
        id,
        namespace,
        pool,
        limit: d.name,
        key,
        rate: ratePerMs(d),
        burst,
        tokens: burst,
        at: this.clock.now(),
        ready: 0,
        held: new HeldQueue(),
        sendTat: 0,
      };
      this.buckets.set(id, b);
      if (this.buckets.size > this.bucketsAtSweep * 2) this.sweep();
    }
    return b;
  }

  /** The first gate that does not admit the task now (its buckets resolved into s.buckets). */
  private blocker(task: T, s: TaskState<T>): Gate<T> | undefined {
    const c = task.spec.concurrency;
    if (c) {
      const g = this.keyGate(task);
      if (g.running + g.ready >= c.max) return g;
    }
    // The pool's limits: those of its own namespace, also for a task of a namespace it is shared with.
    const namespace = poolNamespaceOf(task.spec);
    const { pool } = task.spec;
    const defs = this.defs.get(poolId(namespace, pool));
    const now = this.clock.now();
    s.buckets = [];
    for (const r of task.spec.rateLimits ?? []) {
      const d = defs?.get(r.name);
      if (!d) return this.missingGate(namespace, pool, r.name);
      const b = this.bucket(namespace, pool, d, r.key ?? '');
      if (!this.bucketAdmits(b, now)) return b;
      s.buckets.push(b);
    }
    return undefined;
  }

  /**
   * A token now, and fewer than maxReady admitted tasks still waiting for an agent (so tokens taken
   * for tasks no agent takes yet cannot pile up into a burst when agents come).
   */
  private bucketAdmits(b: Bucket<T>, now: number): boolean {
    this.refill(b, now);
    return b.tokens >= 1 && b.ready < maxReady(b);
  }

  /** Admitted: counted as ready by its gates; it takes its tokens now (given back if it leaves unpicked). */
  private enterReady(task: T, s: TaskState<T>): void {
    const g = task.spec.concurrency ? this.keyGate(task) : undefined;
    if (g) g.ready++;
    for (const b of s.buckets) {
      b.tokens -= 1;
      b.ready++;
    }
    s.place = 'ready';
  }

  /** The task leaves a ready line without a pick: its gates have room for the next. */
  private leaveReady(task: T, s: TaskState<T>): void {
    s.place = undefined;
    const g = task.spec.concurrency ? this.keys.get(this.keyId(task)) : undefined;
    const buckets = s.buckets;
    s.buckets = [];
    if (g) {
      g.ready--;
      this.wake(g);
    }
    const now = this.clock.now();
    for (const b of buckets) {
      b.ready--;
      this.refill(b, now);
      b.tokens = Math.min(b.burst, b.tokens + 1);
      this.wake(b);
    }
    if (g) this.forget(g);
    this.arm();
  }

  private hold(task: T, s: TaskState<T>, gate: Gate<T>): void {
    s.place = gate;
    s.buckets = [];
    const ahead = gate.held.insert(task);
    if (gate.kind === 'rate') {
      this.schedule(gate);
      this.arm();
    }
    this.o.held?.(task, this.describe(task, gate, ahead));
  }

  private describe(task: T, gate: Gate<T>, ahead: number): string {
    switch (gate.kind) {
      case 'concurrency':
        return `waiting on concurrency key ${gate.key} (${gate.running + gate.ready} of ${task.spec.concurrency?.max ?? 0} running)`;
      case 'missing':
        return `waiting on rate limit ${gate.limit}: AgentPool ${gate.pool} declares no rate limit "${gate.limit}" (spec.rateLimits)`;
      case 'rate': {
        this.refill(gate, this.clock.now());
        const need = ahead + 1 - gate.tokens;
        const ms = need <= 0 || gate.rate <= 0 ? 0 : need / gate.rate;
        return `waiting on rate limit ${gate.limit}${gate.key ? ` (key ${gate.key})` : ''}: next slot in ${(ms / 1000).toFixed(1)} s`;
      }
    }
  }

  /** Whether the gate has room for the task now. */
  private admits(gate: Gate<T>, task: T): boolean {
    switch (gate.kind) {
      case 'concurrency':
        return gate.running + gate.ready < (task.spec.concurrency?.max ?? 0);
      case 'missing':
        return this.defs.get(poolId(gate.namespace, gate.pool))?.has(gate.limit) ?? false;
      case 'rate':
        return this.bucketAdmits(gate, this.clock.now());
    }
  }

  /** Moves the tasks the gate has room for out of its queue, through the other gates, into ready lines. */
  private wake(gate: Gate<T>): boolean {
    let woken = false;
    for (let t = gate.held.peek(); t && this.admits(gate, t); t = gate.held.peek()) {
      gate.held.shift();
      const s = this.tasks.get(t);
      if (!s) continue;
      s.place = undefined;
      if (this.admit(t)) {
        this.o.ready(t);
        woken = true;
      }
    }
    if (gate.kind === 'rate') this.schedule(gate);
    return woken;
  }

  // ---- buckets and the timer ----

  /**
   * Brings the tokens up to date. While tasks wait on the bucket it may go over its burst (to
   * maxReady + CATCH_UP_MS of the rate, at most one: one token more at 10/s, ADMIT_AHEAD_MS of the
   * rate more at 1,000/s, a hair at 6/min): the time a due task spends reaching its turn (a late
   * timer, a pick waiting for a claim transaction) is not lost from the rate; at most maxReady wait
   * for agents at once all the same, and the Assigns still go out paced (sendAt).
   */
  private refill(b: Bucket<T>, now: number): void {
    if (now > b.at) {
      const cap = b.held.size > 0 ? maxReady(b) + Math.min(1, b.rate * CATCH_UP_MS) : b.burst;
      b.tokens = Math.min(cap, b.tokens + (now - b.at) * b.rate);
      b.at = now;
    }
  }

  /** Puts a bucket with held tasks in the timer heap at the moment its next held task has a token. */
  private schedule(b: Bucket<T>): void {
    // Tasks it admitted wait for agents: until one is picked it cannot admit more, whatever the time.
    if (b.held.size === 0 || b.rate <= 0 || b.ready >= maxReady(b)) {
      b.due = undefined;
      return;
    }
    this.refill(b, this.clock.now());
    const need = 1 - b.tokens;
    const at = b.at + Math.max(0, need) / b.rate;
    if (b.due !== undefined && b.due <= at) return;
    b.due = at;
    this.dueHeap.push({ at, bucket: b });
  }

  /** One timer, for the earliest due bucket; none when no bucket is due. */
  private arm(): void {
    let top = this.dueHeap.peek();
    while (top && (top.bucket.due !== top.at || top.bucket.held.size === 0)) {
      this.dueHeap.pop();
      top = this.dueHeap.peek();
    }
    if (!top) {
      if (this.timer) this.clock.clearTimeout(this.timer);
      this.timer = undefined;
      this.timerAt = Number.POSITIVE_INFINITY;
      return;
    }
    if (this.timer && this.timerAt <= top.at) return;
    if (this.timer) this.clock.clearTimeout(this.timer);
    this.timerAt = top.at;
    // +1 ms: a timer may fire a little early, and a bucket a hair short of its token would re-arm at once.
    this.timer = this.clock.setTimeout(() => this.fire(), Math.max(0, Math.ceil(top.at - this.clock.now()) + 1));
  }

  private fire(): void {
    this.timer = undefined;
    this.timerAt = Number.POSITIVE_INFINITY;
    const now = this.clock.now();
    let woken = false;
    for (let top = this.dueHeap.peek(); top && top.at <= now; top = this.dueHeap.peek()) {
      this.dueHeap.pop();
      const b = top.bucket;
      if (b.due !== top.at) continue;
      b.due = undefined;
      if (this.wake(b)) woken = true;
    }
    this.arm();
    if (woken) this.o.woken?.();
  }

  /** Drops a gate nothing refers to (a bucket once it would be full again). */
  private forget(g: Gate<T>): void {
    if (g.held.size > 0) return;
    if (g.kind === 'concurrency') {
      if (g.running === 0 && g.ready === 0) this.keys.delete(g.id);
    } else if (g.kind === 'missing') this.missing.delete(g.id);
  }

  /** Drops buckets that are idle and full again (a new bucket starts full: nothing is lost). */
  private sweep(): void {
    const now = this.clock.now();
    for (const b of this.buckets.values()) {
      if (b.held.size > 0 || b.ready > 0 || b.sendTat > now) continue;
      this.refill(b, now);
      if (b.tokens >= b.burst) this.buckets.delete(b.id);
    }
    for (const s of this.tasks.values()) for (const b of s.took ?? []) this.buckets.set(b.id, b);
    this.bucketsAtSweep = Math.max(64, this.buckets.size);
  }
}

const poolId = (namespace: string, pool: string) => `${namespace}/${pool}`;

/**
 * How far admissions may run ahead of picks (ms of the rate): a dispatch turn picks what was admitted
 * while the previous claim transaction was in flight, so a fast limit is not held to one task per turn.
 */
const ADMIT_AHEAD_MS = 50;

/**
 * Most admitted tasks of a bucket waiting for agents: its burst plus ADMIT_AHEAD_MS of its rate. Tokens
 * taken for tasks no agent takes yet cannot pile up into a larger burst when agents come.
 */
const maxReady = (b: { burst: number; rate: number }) => b.burst + Math.floor(b.rate * ADMIT_AHEAD_MS);

/**
 * How long a due task may take to reach its turn without the rate losing that time (ms). Short next
 * to a slow limit's interval: the token gained meanwhile is paced out again at the send, and a pick
 * that holds an agent slot waiting for its send slot waits at most this much longer for it.
 */
const CATCH_UP_MS = 250;

/**
 * How much earlier than its paced time an Assign may go out (ms): a timer's granularity, so a fast
 * limit (1,000/s) sends a few per timer instead of one per millisecond; at 10/s it is a tenth of a task.
 */
const PACE_SLACK_MS = 10;

/** GCRA's tolerance: the burst's back-to-back sends, plus the slack. */
const paceTolerance = (b: { burst: number; rate: number }) => (b.burst - 1) / b.rate + PACE_SLACK_MS;
