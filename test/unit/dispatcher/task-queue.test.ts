import { describe, expect, it } from 'vitest';
import { PoolQueue, type QueuedTask } from '../../../src/dispatcher/task-queue.ts';
import { mulberry32 } from '../seeded-random.ts';

// One pool's ready line: priority desc then FIFO by seq within a workflow, workflows served
// round-robin one task per visit, a bounded scan past tasks nobody can take, counters that always
// equal a recount, and a head index that keeps taking O(1) without holding on to what was taken.

let nextSeq = 0;
function qt(
  tenant: string,
  name: string,
  o: { priority?: number; seq?: number; cost?: number; handler?: string } = {},
): QueuedTask {
  const [namespace = 'ns', workflow = 'wf'] = tenant.split('/');
  return {
    spec: { ref: { namespace, workflow, task: name }, pool: 'p', handler: o.handler ?? 'h', input: null },
    attempt: 1,
    cost: o.cost ?? 1,
    priority: o.priority ?? 0,
    seq: o.seq ?? nextSeq++,
    enqueuedAt: 0,
  };
}

const names = (ts: QueuedTask[]) => ts.map((t) => t.spec.ref.task);
const all = () => true;

type LineView = { items: unknown[]; head: number };

/** The queue's workflow lines by namespace/workflow, read to check that memory follows what is still queued. */
function linesOf(q: PoolQueue): Map<string, LineView> {
  const tenants = (q as unknown as { tenants: Map<string, { lines: Map<string, LineView> }> }).tenants;
  const out = new Map<string, LineView>();
  for (const [ns, t] of tenants) for (const [wf, l] of t.lines) out.set(`${ns}/${wf}`, l);
  return out;
}

describe('PoolQueue order', () => {
  it('takes the highest priority first, then the lowest seq, whatever the push order', () => {
    const q = new PoolQueue();
    q.push(qt('ns/wf', 'low-2', { priority: 0, seq: 2 }));
    q.push(qt('ns/wf', 'high-5', { priority: 5, seq: 5 }));
    q.push(qt('ns/wf', 'low-1', { priority: 0, seq: 1 }));
    q.push(qt('ns/wf', 'mid-3', { priority: 1, seq: 3 }));
    q.push(qt('ns/wf', 'high-4', { priority: 5, seq: 4 }));
    q.push(qt('ns/wf', 'neg-0', { priority: -1, seq: 0 }));
    expect(names(q.take(all, 10))).toEqual(['high-4', 'high-5', 'mid-3', 'low-1', 'low-2', 'neg-0']);
    expect(q.size).toBe(0);
  });

  it('serves workflows round-robin, one task per visit, keyed by namespace/workflow', () => {
    const q = new PoolQueue();
    for (let i = 0; i < 3; i++) q.push(qt('a/wf', `a${i}`));
    q.push(qt('b/wf', 'b0')); // same workflow name, other namespace: another tenant
    q.push(qt('a/other', 'o0')); // same namespace, other workflow: another tenant
    expect(names(q.take(all, 10))).toEqual(['a0', 'b0', 'o0', 'a1', 'a2']);
  });

  it('keeps its place in the rotation across takes, so a small max does not always favour the first workflow', () => {
    const q = new PoolQueue();
    for (let i = 0; i < 3; i++) {
      q.push(qt('ns/a', `a${i}`));
      q.push(qt('ns/b', `b${i}`));
    }
    expect(names(q.take(all, 1))).toEqual(['a0']);
    expect(names(q.take(all, 1))).toEqual(['b0']);
    expect(names(q.take(all, 3))).toEqual(['a1', 'b1', 'a2']);
    expect(names(q.take(all, 3))).toEqual(['b2']);
  });

  it('does not let a high-priority burst of one workflow starve another: round-robin comes before priority', () => {
    const q = new PoolQueue();
    for (let i = 0; i < 4; i++) q.push(qt('ns/burst', `x${i}`, { priority: 9 }));
    q.push(qt('ns/quiet', 'q0', { priority: 0 }));
    expect(names(q.take(all, 2))).toEqual(['x0', 'q0']);
  });

  it('stops at max and leaves the rest in order', () => {
    const q = new PoolQueue();
    for (let i = 0; i < 5; i++) q.push(qt('ns/wf', `t${i}`));
    expect(names(q.take(all, 2))).toEqual(['t0', 't1']);
    expect(q.take(all, 0)).toEqual([]);
    expect(q.size).toBe(3);
    expect(names(q.take(all, 10))).toEqual(['t2', 't3', 't4']);
  });
});

describe('PoolQueue scan', () => {
  it('takes past a head-of-line task nobody can take, and keeps that task first in line', () => {
    const q = new PoolQueue();
    q.push(qt('ns/wf', 'big', { cost: 8 }));
    q.push(qt('ns/wf', 's1'));
    q.push(qt('ns/wf', 's2'));
    expect(names(q.take((t) => t.cost <= 1, 1))).toEqual(['s1']);
    expect(names(q.take(all, 10))).toEqual(['big', 's2']);
  });

  it('looks exactly `scan` tasks deep (default 64) and no further', () => {
    const q = new PoolQueue();
    for (let i = 0; i < 64; i++) q.push(qt('ns/wf', `no${i}`, { handler: 'other' }));
    q.push(qt('ns/wf', 'yes'));
    const serves = (t: QueuedTask) => t.spec.handler === 'h';
    expect(q.take(serves, 10)).toEqual([]); // 65th in line: beyond the default scan
    expect(names(q.take(serves, 10, 65))).toEqual(['yes']);
    q.push(qt('ns/wf', 'yes2', { seq: -1, handler: 'h' })); // first in line now
    q.push(qt('ns/wf', 'yes3', { handler: 'h' })); // behind the 64 others
    expect(names(q.take(serves, 10, 1))).toEqual(['yes2']);
    expect(q.take(serves, 10, 64)).toEqual([]);
    expect(q.size).toBe(65);
  });

  it('returns nothing and changes nothing when no task fits, asking each scanned task once', () => {
    const q = new PoolQueue();
    q.push(qt('ns/a', 'a0'));
    q.push(qt('ns/a', 'a1'));
    q.push(qt('ns/b', 'b0'));
    let asked = 0;
    expect(
      q.take(() => {
        asked++;
        return false;
      }, 10),
    ).toEqual([]);
    expect(asked).toBe(3);
    expect(q.size).toBe(3);
    expect(q.queuedSlots).toBe(3);
  });
});

describe('PoolQueue counters and remove', () => {
  it('counts queued slots and wanted handlers through push, take and remove', () => {
    const q = new PoolQueue();
    const a = qt('ns/wf', 'a', { cost: 2, handler: 'zeta' });
    const b = qt('ns/wf', 'b', { cost: 3, handler: 'alpha' });
    const c = qt('ns/x', 'c', { cost: 1, handler: 'zeta' });
    q.push(a);
    q.push(b);
    q.push(c);
    expect(q.queuedSlots).toBe(6);
    expect(q.wantedHandlers()).toEqual(['alpha', 'zeta']);
    expect(q.take((t) => t.spec.handler === 'zeta', 1)).toEqual([a]);
    expect(q.queuedSlots).toBe(4);
    expect(q.wantedHandlers()).toEqual(['alpha', 'zeta']);
    expect(q.remove((t) => t === c)).toBe(c);
    expect(q.queuedSlots).toBe(3);
    expect(q.wantedHandlers()).toEqual(['alpha']);
    expect(q.remove((t) => t === c)).toBeUndefined();
    expect(q.take(all, 5)).toEqual([b]);
    expect(q.queuedSlots).toBe(0);
    expect(q.wantedHandlers()).toEqual([]);
    expect(q.size).toBe(0);
  });

  it('removes from the middle of a line, and a workflow emptied by remove leaves the rotation', () => {
    const q = new PoolQueue();
    const a = [qt('ns/a', 'a0'), qt('ns/a', 'a1'), qt('ns/a', 'a2')];
    for (const t of a) q.push(t);
    const b = qt('ns/b', 'b0');
    q.push(b);
    expect(q.remove((t) => t === a[1])).toBe(a[1]);
    expect(q.remove((t) => t === b)).toBe(b);
    expect(linesOf(q).has('ns/b')).toBe(false);
    expect(names(q.take(all, 10))).toEqual(['a0', 'a2']);
    q.push(qt('ns/b', 'b1')); // a workflow seen before comes back as a new tenant
    expect(names(q.take(all, 10))).toEqual(['b1']);
  });

  // Found by this test: remove() used to leave the cursor where it was, skipping the next workflow.
  it('keeps the next workflow next when a workflow before the cursor is emptied by remove', () => {
    const q = new PoolQueue();
    const a0 = qt('ns/a', 'a0');
    const a1 = qt('ns/a', 'a1');
    q.push(a0);
    q.push(a1);
    q.push(qt('ns/b', 'b0'));
    q.push(qt('ns/c', 'c0'));
    expect(q.take(all, 1)).toEqual([a0]); // b is next
    q.remove((t) => t === a1); // a leaves the rotation
    expect(names(q.take(all, 1))).toEqual(['b0']); // gets c0
  });
});

describe('PoolQueue head index', () => {
  it('takes 5,000 tasks in order while re-queued tasks with a lower seq go ahead, and memory follows the queue', () => {
    const q = new PoolQueue();
    const pushed: QueuedTask[] = [];
    for (let i = 0; i < 5000; i++) {
      const t = qt('ns/wf', `t${i}`, { seq: 1_000_000 + i });
      pushed.push(t);
      q.push(t);
    }
    const got: QueuedTask[] = [];
    let requeued = 0;
    while (q.size > 0) {
      const batch = q.take(all, 7);
      got.push(...batch);
      // Now and then a taken task comes back (its claim was refused): it keeps its seq, lower than all
      // still queued, so it must be the very next one out.
      if (got.length % 91 < 7 && batch.length > 0) {
        const back = batch[0] as QueuedTask;
        q.push(back);
        requeued++;
        expect(q.take(all, 1)).toEqual([back]);
      }
      const line = linesOf(q).get('ns/wf');
      if (line) {
        const left = line.items.length - line.head;
        expect(left).toBe(q.size);
        // Compaction: the taken front never exceeds both 1024 slots and what is still queued.
        expect(line.head).toBeLessThanOrEqual(Math.max(1024, left));
      }
    }
    expect(requeued).toBeGreaterThan(40);
    expect(names(got)).toEqual(names(pushed));
    expect(q.queuedSlots).toBe(0);
    expect(linesOf(q).size).toBe(0);
  });

  it('puts a task that belongs first into the freed slot before the head, and others in order', () => {
    const q = new PoolQueue();
    for (let i = 0; i < 10; i++) q.push(qt('ns/wf', `t${i}`, { seq: 10 + i }));
    expect(names(q.take(all, 3))).toEqual(['t0', 't1', 't2']);
    q.push(qt('ns/wf', 'back1', { seq: 11 })); // before t3 (seq 13)
    q.push(qt('ns/wf', 'back0', { seq: 10 })); // before back1
    q.push(qt('ns/wf', 'mid', { seq: 15.5 })); // between t5 and t6
    q.push(qt('ns/wf', 'urgent', { seq: 99, priority: 1 })); // ahead of everything
    q.push(qt('ns/wf', 'last', { seq: 100 }));
    expect(names(q.take(all, 20))).toEqual([
      'urgent',
      'back0',
      'back1',
      't3',
      't4',
      't5',
      'mid',
      't6',
      't7',
      't8',
      't9',
      'last',
    ]);
  });
});

// ---- random sequences against a reference model: plain sorted arrays, linear insertion ----

const before = (x: QueuedTask, y: QueuedTask) =>
  x.priority > y.priority || (x.priority === y.priority && x.seq < y.seq);
const tenantOf = (t: QueuedTask) => `${t.spec.ref.namespace}/${t.spec.ref.workflow}`;

class ModelQueue {
  readonly lines = new Map<string, QueuedTask[]>();
  rotation: string[] = [];
  cursor = 0;

  push(t: QueuedTask): void {
    const ns = tenantOf(t);
    let l = this.lines.get(ns);
    if (!l) {
      l = [];
      this.lines.set(ns, l);
      this.rotation.push(ns);
    }
    // Walk back from the end past everything t goes before (new work mostly lands last).
    let i = l.length;
    while (i > 0 && before(t, l[i - 1] as QueuedTask)) i--;
    l.splice(i, 0, t);
  }

  take(fits: (t: QueuedTask) => boolean, max: number, scan: number): QueuedTask[] {
    const out: QueuedTask[] = [];
    let idle = 0;
    while (out.length < max && this.rotation.length > 0 && idle < this.rotation.length) {
      this.cursor %= this.rotation.length;
      const ns = this.rotation[this.cursor] as string;
      const l = this.lines.get(ns) as QueuedTask[];
      let i = -1;
      for (let j = 0; j < Math.min(l.length, scan) && i < 0; j++) if (fits(l[j] as QueuedTask)) i = j;
      if (i >= 0) out.push(...l.splice(i, 1));
      if (l.length === 0) {
        this.lines.delete(ns);
        this.rotation.splice(this.cursor, 1);
      } else this.cursor++;
      idle = i >= 0 ? 0 : idle + 1;
    }
    return out;
  }

  remove(t: QueuedTask): QueuedTask | undefined {
    const ns = tenantOf(t);
    const l = this.lines.get(ns);
    const i = l ? l.indexOf(t) : -1;
    if (!l || i < 0) return undefined;
    l.splice(i, 1);
    if (l.length === 0) {
      this.lines.delete(ns);
      const at = this.rotation.indexOf(ns);
      this.rotation.splice(at, 1);
      if (at < this.cursor) this.cursor--;
    }
    return t;
  }

  queued(): QueuedTask[] {
    return [...this.lines.values()].flat();
  }
}

describe('PoolQueue against a reference model', () => {
  // One namespace: the round-robin between workflows is exactly what it was before namespaces shared
  // pools by weight (several namespaces: the fair-share model below).
  const TENANTS = ['ns/wf', 'ns/wf2', 'ns/b', 'ns/x'];
  const HANDLERS = ['h0', 'h1', 'h2'];
  /** Compactions seen across the sequences (the front dropped while tasks were pushed and removed around it). */
  let compactionsSeen = 0;

  it.each(Array.from({ length: 16 }, (_, i) => i + 1))('random push/take/remove sequence (seed %i)', (seed) => {
    const rnd = mulberry32(seed);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)] as T;
    const q = new PoolQueue();
    const m = new ModelQueue();
    const taken: QueuedTask[] = [];
    let seq = 0;
    let n = 0;
    const fresh = (tenant: string) => {
      const t = qt(tenant, `t${n++}`, {
        seq: seq++,
        priority: pick([0, 0, 0, 1, 2, -1]),
        cost: 1 + Math.floor(rnd() * 3),
        handler: pick(HANDLERS),
      });
      q.push(t);
      m.push(t);
    };
    let compactions = 0;
    for (let op = 0; op < 600; op++) {
      const arrays = new Map([...linesOf(q)].map(([k, l]) => [k, l.items]));
      const r = rnd();
      if (r < 0.015 && q.size < 3000) {
        // A burst into one workflow: enough for the head to pass 1024 and compaction to run.
        const tenant = pick(TENANTS);
        for (let i = 0; i < 1200; i++) fresh(tenant);
      } else if (r < 0.35) fresh(pick(TENANTS));
      else if (r < 0.45 && taken.length > 0) {
        // Re-queued: the same task (and seq) again, usually ahead of what arrived after it.
        const t = taken.splice(Math.floor(rnd() * taken.length), 1)[0] as QueuedTask;
        q.push(t);
        m.push(t);
      } else if (r < 0.85) {
        const serves = new Set(HANDLERS.filter(() => rnd() < 0.7));
        const maxCost = 1 + Math.floor(rnd() * 3);
        const fits = (t: QueuedTask) => serves.has(t.spec.handler) && t.cost <= maxCost;
        const max = rnd() < 0.2 ? 600 : 1 + Math.floor(rnd() * 20);
        const scan = rnd() < 0.5 ? 64 : 1 + Math.floor(rnd() * 80);
        const got = q.take(fits, max, scan);
        expect(names(got)).toEqual(names(m.take(fits, max, scan)));
        taken.push(...got);
      } else {
        const queued = m.queued();
        const target = queued.length > 0 && rnd() < 0.9 ? pick(queued) : (taken[0] ?? qt('z/z', 'absent'));
        expect(q.remove((t) => t === target)).toBe(m.remove(target));
      }
      for (const [k, l] of linesOf(q)) if (arrays.has(k) && arrays.get(k) !== l.items) compactions++;
      const queued = m.queued();
      expect(q.size).toBe(queued.length);
      expect(q.queuedSlots).toBe(queued.reduce((s, t) => s + t.cost, 0));
      expect(q.wantedHandlers()).toEqual([...new Set(queued.map((t) => t.spec.handler))].sort());
    }
    compactionsSeen += compactions;
    // Drained to the end, both agree on the order of everything left.
    expect(names(q.take(all, Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER))).toEqual(
      names(m.take(all, Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER)),
    );
    expect(q.size).toBe(0);
    expect(q.queuedSlots).toBe(0);
    expect(q.wantedHandlers()).toEqual([]);
  });

  it('ran compaction in the middle of those sequences, not only in the in-order test', () => {
    expect(compactionsSeen).toBeGreaterThan(2);
  });
});

// ---- namespaces sharing one pool: deficit round-robin by weight, in slots ----

const nsOf = (t: QueuedTask) => t.spec.ref.namespace;
const countOf = (ts: QueuedTask[], ns: string) => ts.filter((t) => nsOf(t) === ns).length;
const slotsOf = (ts: QueuedTask[], ns: string) => ts.filter((t) => nsOf(t) === ns).reduce((s, t) => s + t.cost, 0);
const weights = (w: Record<string, number>) => new Map(Object.entries(w));

/** `n` tasks for each of the tenants, pushed in turn (so no namespace is ahead by arrival). */
function fill(q: PoolQueue, tenants: string[], n: number, o: { cost?: number } = {}): void {
  for (let i = 0; i < n; i++) for (const tenant of tenants) q.push(qt(tenant, `${tenant}#${i}`, o));
}

/** Takes `times` times, `max` tasks each, and returns all that came out. */
function takeRepeatedly(q: PoolQueue, fits: (t: QueuedTask) => boolean | 'hold', max: number, times: number) {
  const out: QueuedTask[] = [];
  for (let i = 0; i < times; i++) out.push(...q.take(fits, max));
  return out;
}

/** A namespace's deficit: what it may still take in its visit (private; read to bound what waiting banks). */
function deficitOf(q: PoolQueue, ns: string): number {
  const tenants = (q as unknown as { tenants: Map<string, { deficit: number }> }).tenants;
  return tenants.get(ns)?.deficit ?? 0;
}

describe('PoolQueue fair share between namespaces', () => {
  it('splits 3:1 by weight, whether taken one task per take (400 takes) or 400 in one take', () => {
    for (const [max, times] of [
      [1, 400],
      [400, 1],
    ] as const) {
      const q = new PoolQueue('agents');
      q.setWeights(weights({ 'team-a': 3, 'team-b': 1 }));
      fill(q, ['team-a/wf1', 'team-a/wf2', 'team-b/wf1'], 500);
      const got = takeRepeatedly(q, all, max, times);
      expect(got).toHaveLength(400);
      expect(Math.abs(countOf(got, 'team-a') - 300)).toBeLessThanOrEqual(4);
      expect(Math.abs(countOf(got, 'team-b') - 100)).toBeLessThanOrEqual(4);
    }
  });

  it('splits 3:1 by weight when slots are scarce: one slot frees between takes of up to 10 (400 takes)', () => {
    const q = new PoolQueue('agents');
    q.setWeights(weights({ 'team-a': 3, 'team-b': 1 }));
    fill(q, ['team-a/wf1', 'team-a/wf2', 'team-b/wf1'], 500);
    let free = 0;
    const fitsWhileFree = () => {
      if (free === 0) return false;
      free--;
      return true;
    };
    const got: QueuedTask[] = [];
    for (let i = 0; i < 400; i++) {
      free++;
      const batch = q.take(fitsWhileFree, 10);
      expect(batch).toHaveLength(1);
      got.push(...batch);
    }
    // Each take finds the agents full after its one task: if that ended turns, the split would be 1:1.
    expect(Math.abs(countOf(got, 'team-a') - 300)).toBeLessThanOrEqual(8);
    expect(Math.abs(countOf(got, 'team-b') - 100)).toBeLessThanOrEqual(8);
  });

  it('lets a namespace whose tasks no agent serves bank no more than its weight plus its largest task, while the other takes everything', () => {
    for (const scarce of [false, true]) {
      const q = new PoolQueue();
      q.setWeights(weights({ gpu: 2, cpu: 1 }));
      for (let i = 0; i < 50; i++) q.push(qt('gpu/wf', `g${i}`, { cost: i % 2 === 0 ? 1 : 3, handler: 'gpu' }));
      fill(q, ['cpu/wf1', 'cpu/wf2'], 300);
      let free = 0;
      const fits = (t: QueuedTask) => {
        if (t.spec.handler !== 'h' || (scarce && free === 0)) return false;
        free--;
        return true;
      };
      for (let i = 0; i < 100; i++) {
        free = 1;
        const got = q.take(fits, 5);
        expect(got).toHaveLength(scarce ? 1 : 5);
        expect(countOf(got, 'cpu')).toBe(got.length);
        expect(deficitOf(q, 'gpu')).toBeLessThanOrEqual(2 + 3);
      }
      expect(q.queuedOf('gpu')).toHaveLength(50);
    }
  });

  it('shares slots, not tasks: cost-4 tasks of one namespace against cost-1 tasks of another, equal weights', () => {
    for (const max of [1, 1000]) {
      const q = new PoolQueue();
      fill(q, ['big/wf'], 300, { cost: 4 });
      fill(q, ['small/wf'], 1200, { cost: 1 });
      const got: QueuedTask[] = [];
      let slots = 0;
      while (slots < 800) {
        const batch = q.take(all, Math.min(max, 800 - slots));
        expect(batch.length).toBeGreaterThan(0);
        got.push(...batch);
        slots += batch.reduce((s, t) => s + t.cost, 0);
      }
      // A task costing more than a visit earns (4 slots against 1 per visit) is still taken, each in its turn.
      expect(countOf(got, 'big')).toBeGreaterThan(90);
      expect(Math.abs(slotsOf(got, 'big') - slotsOf(got, 'small'))).toBeLessThanOrEqual(4);
    }
  });

  it("does not let a flood of 10,000 tasks over 50 workflows starve another namespace's 100 in one workflow", () => {
    const q = new PoolQueue();
    fill(
      q,
      Array.from({ length: 50 }, (_, i) => `flood/wf${i}`),
      200,
    );
    fill(q, ['quiet/wf'], 100);
    const got = q.take(all, 200);
    expect(countOf(got, 'quiet')).toBeGreaterThanOrEqual(98);
    // Inside the flooding namespace its workflows still take turns.
    expect(new Set(got.filter((t) => nsOf(t) === 'flood').map((t) => t.spec.ref.workflow)).size).toBe(50);
    expect(q.size).toBe(10_100 - 200);
  });

  it('keeps the tasks of a namespace it does not serve (counted, listed) but never takes them until it is admitted', () => {
    const q = new PoolQueue('agents');
    q.setWeights(weights({ 'team-a': 1 }));
    fill(q, ['agents/wf', 'team-a/wf'], 3);
    fill(q, ['team-b/wf'], 4, { cost: 2 });
    expect(q.admits('team-b')).toBe(false);
    expect(q.size).toBe(10);
    expect(q.queuedSlots).toBe(14);
    const first = q.take(all, 100);
    expect(first).toHaveLength(6);
    expect(countOf(first, 'team-b')).toBe(0);
    expect(q.size).toBe(4);
    expect(q.queuedSlots).toBe(8);
    expect(q.namespaces()).toEqual(['team-b']);
    expect(names(q.queuedOf('team-b')).sort()).toEqual(['team-b/wf#0', 'team-b/wf#1', 'team-b/wf#2', 'team-b/wf#3']);
    expect(q.queuedOf('team-a')).toEqual([]);

    q.setWeights(weights({ 'team-a': 1, 'team-b': 1 }));
    expect(q.admits('team-b')).toBe(true);
    expect(names(q.take(all, 2))).toEqual(['team-b/wf#0', 'team-b/wf#1']);

    q.setWeights(weights({ 'team-a': 1 })); // revoked again
    q.push(qt('team-a/wf', 'a-late'));
    expect(names(q.take(all, 100))).toEqual(['a-late']);
    expect(q.size).toBe(2);
    expect(q.queuedSlots).toBe(4);

    q.setWeights(undefined); // only the owner is served
    q.push(qt('team-a/wf', 'a-later'));
    q.push(qt('agents/wf', 'own'));
    expect(names(q.take(all, 100))).toEqual(['own']);
    expect(q.namespaces().sort()).toEqual(['team-a', 'team-b']);
  });

  it('serves its own namespace without a weight for it, at weight 1, and at the weight the map gives it', () => {
    const q = new PoolQueue('agents');
    fill(q, ['agents/wf', 'team-a/wf'], 2);
    expect(q.admits('agents')).toBe(true);
    expect(names(q.take(all, 10))).toEqual(['agents/wf#0', 'agents/wf#1']); // weights unset: the owner only
    fill(q, ['agents/wf', 'team-a/wf'], 100);
    q.setWeights(weights({ 'team-a': 2 }));
    expect(q.admits('agents')).toBe(true);
    let got = takeRepeatedly(q, all, 1, 60);
    expect(Math.abs(countOf(got, 'agents') - 20)).toBeLessThanOrEqual(2);
    q.setWeights(weights({ 'team-a': 2, agents: 4 }));
    got = takeRepeatedly(q, all, 1, 60);
    expect(Math.abs(countOf(got, 'agents') - 40)).toBeLessThanOrEqual(2);
  });

  it('refuses a weight that is not an integer of at least 1', () => {
    const q = new PoolQueue('agents');
    expect(() => q.setWeights(weights({ 'team-a': 0 }))).toThrow(RangeError);
    expect(() => q.setWeights(weights({ 'team-a': 1.5 }))).toThrow(RangeError);
  });

  it('banks no deficit while its tasks do not fit: once they do, no burst beyond its share', () => {
    const q = new PoolQueue();
    fill(q, ['slow/wf', 'busy/wf'], 200);
    const notSlow = (t: QueuedTask) => nsOf(t) !== 'slow';
    const waited = takeRepeatedly(q, notSlow, 1, 60);
    expect(countOf(waited, 'busy')).toBe(60);
    const after = takeRepeatedly(q, all, 1, 20);
    // Its share of 20 is 10; one visit's quantum plus the task it had lined up is all it may have in hand.
    expect(countOf(after, 'slow')).toBeGreaterThanOrEqual(9);
    expect(countOf(after, 'slow')).toBeLessThanOrEqual(11);
  });

  it('keeps what a big task was waiting with while it did not fit: it goes out on its first visit once it does', () => {
    const q = new PoolQueue();
    q.push(qt('big/wf', 'whole-agent', { cost: 4 }));
    fill(q, ['small/wf'], 100);
    const notBig = (t: QueuedTask) => nsOf(t) !== 'big';
    expect(countOf(takeRepeatedly(q, notBig, 1, 20), 'small')).toBe(20);
    // Reset to nothing instead, it would have to earn its 4 slots again, 1 a visit, while small takes 3 more.
    expect(names(takeRepeatedly(q, all, 1, 2))).toContain('whole-agent');
  });

  it('returns nothing when no task of any namespace fits, whatever their costs, and takes them when they do', () => {
    const q = new PoolQueue();
    q.setWeights(weights({ b: 2 }));
    q.push(qt('a/wf', 'a-big', { cost: 7 }));
    q.push(qt('b/wf', 'b-small'));
    q.push(qt('c/wf', 'c-mid', { cost: 3 }));
    expect(q.take(() => false, 10)).toEqual([]);
    expect(q.size).toBe(3);
    expect(names(q.take(all, 10)).sort()).toEqual(['a-big', 'b-small', 'c-mid']);
  });

  it("moves a 'hold' task to held, not taken and not charged to its namespace's share", () => {
    const q = new PoolQueue();
    q.push(qt('a/wf', 'a-held0'));
    q.push(qt('a/wf', 'a-held1'));
    q.push(qt('a/wf', 'a2'));
    q.push(qt('a/wf', 'a3'));
    for (let i = 0; i < 3; i++) q.push(qt('b/wf', `b${i}`));
    const held: QueuedTask[] = [];
    const got = q.take((t) => (t.spec.ref.task.startsWith('a-held') ? 'hold' : true), 10, 64, held);
    expect(names(held)).toEqual(['a-held0', 'a-held1']);
    // The two held did not use up a's turn: a2 comes out in the same visit.
    expect(names(got)).toEqual(['a2', 'b0', 'a3', 'b1', 'b2']);
    expect(q.size).toBe(0);
    expect(q.queuedSlots).toBe(0);
  });

  it('keeps the next namespace next when remove() empties the namespace whose visit is open', () => {
    const q = new PoolQueue();
    const [a0, a1] = [qt('a/wf', 'a0'), qt('a/wf', 'a1')];
    q.push(a0);
    q.push(a1);
    q.push(qt('b/wf', 'b0'));
    q.push(qt('c/wf', 'c0'));
    expect(q.take(all, 1)).toEqual([a0]);
    expect(q.remove((t) => t === a1)).toBe(a1);
    expect(q.namespaces()).toEqual(['b', 'c']);
    expect(names(q.take(all, 1))).toEqual(['b0']); // b gets a visit of its own, not the rest of a's
    expect(names(q.take(all, 1))).toEqual(['c0']);
  });

  it('keeps the next namespace next when remove() empties a namespace before it in the rotation', () => {
    const q = new PoolQueue();
    const a = [qt('a/wf', 'a0'), qt('a/wf', 'a1')];
    for (const t of a) q.push(t);
    q.push(qt('b/wf', 'b0'));
    q.push(qt('b/wf', 'b1'));
    q.push(qt('c/wf', 'c0'));
    expect(names(q.take(all, 1))).toEqual(['a0']);
    expect(names(q.take(all, 1))).toEqual(['b0']);
    q.remove((t) => t === a[1]);
    expect(names(q.take(all, 1))).toEqual(['c0']); // b has had its turn
    expect(names(q.take(all, 5))).toEqual(['b1']);
  });

  it('without an owner serves every namespace, weight 1 unless the map says otherwise', () => {
    const q = new PoolQueue();
    q.push(qt('x/w1', 'x1a'));
    q.push(qt('x/w1', 'x1b'));
    q.push(qt('x/w2', 'x2a'));
    q.push(qt('y/w', 'y0'));
    q.push(qt('y/w', 'y1'));
    q.push(qt('z/w', 'z0'));
    expect(['x', 'y', 'z', 'anyone'].every((ns) => q.admits(ns))).toBe(true);
    // Namespaces take turns first, then a namespace's workflows inside its turns.
    expect(names(q.take(all, 10))).toEqual(['x1a', 'y0', 'z0', 'x2a', 'y1', 'x1b']);

    q.setWeights(weights({ x: 2 }));
    expect(q.admits('y')).toBe(true);
    fill(q, ['x/w', 'y/w'], 4);
    expect(names(q.take(all, 10))).toEqual(['x/w#0', 'x/w#1', 'y/w#0', 'x/w#2', 'x/w#3', 'y/w#1', 'y/w#2', 'y/w#3']);
  });
});

// ---- random sequences against a two-level reference model: plain arrays, linear insertion ----

interface ModelTenant {
  lines: Map<string, QueuedTask[]>;
  order: string[];
  cursor: number;
  deficit: number;
}

/**
 * Deficit round-robin between namespaces (1 slot per weight unit, unmetered when alone), round-robin
 * between a namespace's workflows, written with plain arrays: it checks the queue's head indices,
 * binary insertion, compaction, remove and re-admission against the rules, while the tests above check
 * that the rules share fairly. A visit in which nothing (more) fits is settled later: once anyone
 * after it takes or comes up short, its turn is over (deficit capped at the largest cost it asked);
 * if the take ends without that, the agents were full and the take is rewound to the end of the
 * first such visit, which stays open.
 */
class FairModel {
  readonly tenants = new Map<string, ModelTenant>();
  rotation: string[] = [];
  cursor = 0;
  open = false;
  weights: Map<string, number> | undefined;
  readonly owner: string | undefined;

  constructor(owner?: string) {
    this.owner = owner;
  }

  admits(ns: string): boolean {
    return this.owner === undefined || ns === this.owner || (this.weights?.has(ns) ?? false);
  }

  setWeights(w: Map<string, number> | undefined): void {
    this.weights = w;
    const current = this.rotation[this.cursor];
    if (current !== undefined && !this.admits(current)) this.open = false;
    for (const ns of this.rotation) if (!this.admits(ns)) (this.tenants.get(ns) as ModelTenant).deficit = 0;
    const kept = this.rotation.filter((ns) => this.admits(ns));
    this.cursor = this.rotation.slice(0, this.cursor).filter((ns) => this.admits(ns)).length;
    this.rotation = [...kept, ...[...this.tenants.keys()].filter((ns) => this.admits(ns) && !kept.includes(ns))];
  }

  push(t: QueuedTask): void {
    const ns = nsOf(t);
    let tenant = this.tenants.get(ns);
    if (!tenant) {
      tenant = { lines: new Map(), order: [], cursor: 0, deficit: 0 };
      this.tenants.set(ns, tenant);
      if (this.admits(ns)) this.rotation.push(ns);
    }
    let l = tenant.lines.get(t.spec.ref.workflow);
    if (!l) {
      l = [];
      tenant.lines.set(t.spec.ref.workflow, l);
      tenant.order.push(t.spec.ref.workflow);
    }
    let i = l.length;
    while (i > 0 && before(t, l[i - 1] as QueuedTask)) i--;
    l.splice(i, 0, t);
  }

  take(fits: (t: QueuedTask) => boolean | 'hold', max: number, scan: number, held: QueuedTask[]): QueuedTask[] {
    const out: QueuedTask[] = [];
    let idle = 0;
    /** Caps owed by the unsettled dry visits, applied if their turns turn out to be over. */
    let caps: [ModelTenant, number][] = [];
    /** Every deficit and the namespace, as they stood when the first unsettled dry visit ended. */
    let rewind: { ns: string; deficits: Map<string, number> } | undefined;
    const settle = () => {
      for (const [tenant, cap] of caps) tenant.deficit = Math.min(tenant.deficit, cap);
      caps = [];
      rewind = undefined;
    };
    while (out.length < max && this.rotation.length > 0 && idle < this.rotation.length) {
      this.cursor %= this.rotation.length;
      const ns = this.rotation[this.cursor] as string;
      const tenant = this.tenants.get(ns) as ModelTenant;
      const metered = this.rotation.length > 1;
      if (!metered) tenant.deficit = 0;
      else if (!this.open) tenant.deficit += this.weights?.get(ns) ?? 1;
      this.open = true;
      const n = out.length;
      let end: 'max' | 'short' | 'dry' | 'empty';
      let wfIdle = 0;
      let asked = 0;
      for (;;) {
        if (tenant.order.length === 0) {
          end = 'empty';
          break;
        }
        if (out.length >= max) {
          end = 'max';
          break;
        }
        if (wfIdle >= tenant.order.length) {
          end = 'dry';
          break;
        }
        tenant.cursor %= tenant.order.length;
        const wf = tenant.order[tenant.cursor] as string;
        const l = tenant.lines.get(wf) as QueuedTask[];
        let took = false;
        let short = false;
        let looked = 0;
        let j = 0;
        while (j < l.length && looked < scan) {
          const t = l[j] as QueuedTask;
          if (metered && t.cost > tenant.deficit) {
            short = true;
            break;
          }
          looked++;
          asked = Math.max(asked, t.cost);
          const verdict = fits(t);
          if (verdict === false) j++;
          else {
            l.splice(j, 1);
            if (verdict === 'hold') held.push(t);
            else {
              out.push(t);
              if (metered) tenant.deficit -= t.cost;
              took = true;
              break;
            }
          }
        }
        if (l.length === 0) {
          tenant.lines.delete(wf);
          tenant.order.splice(tenant.cursor, 1);
        } else if (!short) tenant.cursor++;
        if (short) {
          end = 'short';
          break;
        }
        wfIdle = took ? 0 : wfIdle + 1;
      }
      const progress = out.length > n || end === 'short';
      if (progress) settle();
      if (end === 'max') break;
      if (end === 'dry' && metered) {
        rewind ??= { ns, deficits: new Map([...this.tenants].map(([k, v]) => [k, v.deficit])) };
        caps.push([tenant, asked]);
      }
      this.open = false;
      if (end === 'empty') {
        this.tenants.delete(ns);
        this.rotation.splice(this.cursor, 1);
      } else this.cursor++;
      idle = progress ? 0 : idle + 1;
    }
    if (rewind && out.length < max && this.rotation.length > 1 && this.rotation.includes(rewind.ns)) {
      for (const [k, d] of rewind.deficits) {
        const tenant = this.tenants.get(k);
        if (tenant) tenant.deficit = d;
      }
      this.cursor = this.rotation.indexOf(rewind.ns);
      this.open = true;
    } else settle();
    return out;
  }

  remove(t: QueuedTask): QueuedTask | undefined {
    const ns = nsOf(t);
    const tenant = this.tenants.get(ns);
    const l = tenant?.lines.get(t.spec.ref.workflow);
    const i = l ? l.indexOf(t) : -1;
    if (!tenant || !l || i < 0) return undefined;
    l.splice(i, 1);
    if (l.length === 0) {
      tenant.lines.delete(t.spec.ref.workflow);
      const at = tenant.order.indexOf(t.spec.ref.workflow);
      tenant.order.splice(at, 1);
      if (at < tenant.cursor) tenant.cursor--;
    }
    if (tenant.order.length === 0) {
      this.tenants.delete(ns);
      const at = this.rotation.indexOf(ns);
      if (at >= 0) {
        this.rotation.splice(at, 1);
        if (at < this.cursor) this.cursor--;
        else if (at === this.cursor) this.open = false;
      }
    }
    return t;
  }

  queuedOf(ns: string): QueuedTask[] {
    return [...(this.tenants.get(ns)?.lines.values() ?? [])].flat();
  }

  queued(): QueuedTask[] {
    return [...this.tenants.keys()].flatMap((ns) => this.queuedOf(ns));
  }
}

describe('PoolQueue against a two-level reference model (namespaces by weight, then workflows)', () => {
  const TENANTS = ['a/wf', 'a/wf2', 'b/wf', 'b/wf2', 'c/x', 'd/y'];
  const NAMESPACES = ['a', 'b', 'c', 'd'];
  const HANDLERS = ['h0', 'h1', 'h2'];

  it.each(
    Array.from({ length: 16 }, (_, i) => i + 1),
  )('random sequence with weights and admission (seed %i)', (seed) => {
    const rnd = mulberry32(1000 + seed);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)] as T;
    const owner = seed % 2 === 0 ? 'a' : undefined;
    const q = new PoolQueue(owner);
    const m = new FairModel(owner);
    const taken: QueuedTask[] = [];
    let n = 0;
    let seq = 0;
    const fresh = (tenant: string) => {
      const t = qt(tenant, `t${n++}`, {
        seq: seq++,
        priority: pick([0, 0, 0, 1, -1]),
        cost: pick([1, 1, 1, 2, 3, 5]),
        handler: pick(HANDLERS),
      });
      q.push(t);
      m.push(t);
    };
    for (let op = 0; op < 600; op++) {
      const r = rnd();
      if (r < 0.01 && q.size < 3000) {
        const tenant = pick(TENANTS);
        for (let i = 0; i < 1200; i++) fresh(tenant);
      } else if (r < 0.35) fresh(pick(TENANTS));
      else if (r < 0.42 && taken.length > 0) {
        const t = taken.splice(Math.floor(rnd() * taken.length), 1)[0] as QueuedTask;
        q.push(t);
        m.push(t);
      } else if (r < 0.48) {
        const w =
          rnd() < 0.15
            ? undefined
            : new Map(NAMESPACES.filter(() => rnd() < 0.6).map((ns) => [ns, 1 + Math.floor(rnd() * 4)] as const));
        q.setWeights(w);
        m.setWeights(w);
      } else if (r < 0.85) {
        const serves = new Set(HANDLERS.filter(() => rnd() < 0.7));
        const holds = rnd() < 0.2 ? pick(HANDLERS) : undefined;
        const maxCost = 1 + Math.floor(rnd() * 5);
        const fits = (t: QueuedTask) =>
          t.spec.handler === holds ? 'hold' : serves.has(t.spec.handler) && t.cost <= maxCost;
        const max = rnd() < 0.2 ? 600 : 1 + Math.floor(rnd() * 20);
        const scan = rnd() < 0.5 ? 64 : 1 + Math.floor(rnd() * 80);
        const qHeld: QueuedTask[] = [];
        const mHeld: QueuedTask[] = [];
        const got = q.take(fits, max, scan, qHeld);
        expect(names(got)).toEqual(names(m.take(fits, max, scan, mHeld)));
        expect(names(qHeld)).toEqual(names(mHeld));
        for (const t of got) expect(q.admits(nsOf(t))).toBe(true);
        taken.push(...got, ...qHeld);
      } else {
        const queued = m.queued();
        const target = queued.length > 0 && rnd() < 0.9 ? pick(queued) : (taken[0] ?? qt('z/z', 'absent'));
        expect(q.remove((t) => t === target)).toBe(m.remove(target));
      }
      const queued = m.queued();
      expect(q.size).toBe(queued.length);
      expect(q.queuedSlots).toBe(queued.reduce((s, t) => s + t.cost, 0));
      expect(q.wantedHandlers()).toEqual([...new Set(queued.map((t) => t.spec.handler))].sort());
      expect(q.namespaces().sort()).toEqual([...m.tenants.keys()].sort());
      if (op % 10 !== 0) continue; // the full listings now and then: they are the slow part
      for (const ns of NAMESPACES) {
        expect(q.admits(ns)).toBe(m.admits(ns));
        expect(names(q.queuedOf(ns)).sort()).toEqual(names(m.queuedOf(ns)).sort());
      }
    }
    const qHeld: QueuedTask[] = [];
    const mHeld: QueuedTask[] = [];
    expect(names(q.take(all, Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER, qHeld))).toEqual(
      names(m.take(all, Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER, mHeld)),
    );
    // What is left belongs to namespaces the pool does not serve.
    for (const ns of q.namespaces()) expect(q.admits(ns)).toBe(false);
    expect(q.size).toBe(m.queued().length);
  });
});
