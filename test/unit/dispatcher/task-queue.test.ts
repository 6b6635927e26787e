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

/** The queue's per-tenant lines, read to check that memory follows what is still queued. */
function linesOf(q: PoolQueue): Map<string, { items: unknown[]; head: number }> {
  return (q as unknown as { byNamespace: Map<string, { items: unknown[]; head: number }> }).byNamespace;
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
  const TENANTS = ['a/wf', 'a/wf2', 'b/wf', 'c/x'];
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
