import { describe, expect, it } from 'vitest';
import { type Clock, isHeldMessage, Limits, type RateLimitDef } from '../../../src/dispatcher/limits.ts';
import { leastLoaded } from '../../../src/dispatcher/placement.ts';
import { type Schedulable, Scheduler, type SlotHolder } from '../../../src/dispatcher/scheduler.ts';
import type { TaskSpec } from '../../../src/dispatcher/types.ts';

// Concurrency keys and token buckets on a clock the test moves: what a held task waits for, what
// wakes it, and that nothing runs while nothing is due (no timer armed, never a polling loop).

class TestClock implements Clock {
  t = 1_000;
  readonly timers = new Map<NodeJS.Timeout, { at: number; fn: () => void }>();
  private id = 0;
  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): NodeJS.Timeout {
    const h = { id: this.id++ } as unknown as NodeJS.Timeout;
    this.timers.set(h, { at: this.t + ms, fn });
    return h;
  }
  clearTimeout(h: NodeJS.Timeout): void {
    this.timers.delete(h);
  }
  /** Moves time on, firing what falls due in order; returns how many timers fired. */
  advance(ms: number): number {
    const end = this.t + ms;
    let fired = 0;
    for (;;) {
      const next = [...this.timers].sort((a, b) => a[1].at - b[1].at)[0];
      if (!next || next[1].at > end) break;
      this.timers.delete(next[0]);
      this.t = next[1].at;
      next[1].fn();
      fired++;
    }
    this.t = end;
    return fired;
  }
}

interface T extends Schedulable {}

let seq = 0;
function task(
  name: string,
  o: Partial<Pick<TaskSpec, 'concurrency' | 'rateLimits' | 'pool'>> & { ns?: string } = {},
): T {
  const ns = o.ns ?? 'ns';
  return {
    key: `${ns}/wf/${name}`,
    spec: {
      ref: { namespace: ns, workflow: 'wf', task: name },
      pool: o.pool ?? 'p',
      handler: 'h',
      input: null,
      ...(o.concurrency && { concurrency: o.concurrency }),
      ...(o.rateLimits && { rateLimits: o.rateLimits }),
    },
    attempt: 1,
    cost: 1,
    enqueuedAt: 0,
    seq: seq++,
  };
}

function setup(defs: RateLimitDef[] = []) {
  const clock = new TestClock();
  const ready: string[] = [];
  const held = new Map<string, string>();
  let woken = 0;
  const limits = new Limits<T>({
    ready: (t) => ready.push(t.spec.ref.task),
    held: (t, m) => held.set(t.spec.ref.task, m),
    woken: () => woken++,
    clock,
  });
  limits.setRateLimits('ns', 'p', defs);
  return { clock, ready, held, limits, woken: () => woken };
}

describe('concurrency keys', () => {
  it('admits max tasks of a key, holds the rest in order, and wakes the next when an attempt ends', () => {
    const { limits, ready, held, clock } = setup();
    const ts = ['a', 'b', 'c', 'd'].map((n) => task(n, { concurrency: { key: 'customer-acme', max: 2 } }));
    expect(ts.map((t) => limits.admit(t))).toEqual([true, true, false, false]);
    expect(held.get('c')).toBe('waiting on concurrency key customer-acme (2 of 2 running)');
    expect(isHeldMessage(held.get('c'))).toBe(true);
    for (const t of ts.slice(0, 2)) limits.picked(t as T);
    expect(limits.runningOf('ns', 'customer-acme')).toBe(2);
    expect(clock.timers.size).toBe(0); // a key is woken by an attempt ending, never by a timer
    limits.release(ts[0] as T);
    expect(ready).toEqual(['c']); // the first held, not the last
    limits.release(ts[0] as T); // idempotent: no second wake
    expect(ready).toEqual(['c']);
    expect(limits.reason(ts[3] as T)).toBe('waiting on concurrency key customer-acme (2 of 2 running)');
  });

  it('keys are per namespace', () => {
    const { limits } = setup();
    expect(limits.admit(task('a', { concurrency: { key: 'k', max: 1 } }))).toBe(true);
    expect(limits.admit(task('b', { ns: 'other', concurrency: { key: 'k', max: 1 } }))).toBe(true);
    expect(limits.admit(task('c', { concurrency: { key: 'k', max: 1 } }))).toBe(false);
  });

  it('a cancelled held task is not woken; a ready one leaving frees its place', () => {
    const { limits, ready } = setup();
    const [a, b, c] = ['a', 'b', 'c'].map((n) => task(n, { concurrency: { key: 'k', max: 1 } })) as [T, T, T];
    limits.admit(a);
    limits.admit(b);
    limits.admit(c);
    limits.remove(b);
    limits.remove(a); // a was ready (not picked): its place goes to the next held, c
    expect(ready).toEqual(['c']);
  });

  it('adopted attempts count, even over max', () => {
    const { limits, ready } = setup();
    const [a, b, c] = ['a', 'b', 'c'].map((n) => task(n, { concurrency: { key: 'k', max: 1 } })) as [T, T, T];
    limits.adopted(a);
    limits.adopted(b);
    expect(limits.runningOf('ns', 'k')).toBe(2);
    expect(limits.admit(c)).toBe(false);
    limits.release(a);
    expect(ready).toEqual([]); // still 1 of 1 running
    limits.release(b);
    expect(ready).toEqual(['c']);
  });
});

describe('rate limits', () => {
  const calls: RateLimitDef = { name: 'openai-calls', perSecond: 10 };

  it('spaces starts by the rate, one timer for the earliest due bucket and none when nothing is due', () => {
    const { limits, ready, held, clock, woken } = setup([calls]);
    const ts = ['a', 'b', 'c'].map((n) => task(n, { rateLimits: [{ name: 'openai-calls', key: 'acme' }] }));
    expect(ts.map((t) => limits.admit(t))).toEqual([true, false, false]);
    expect(held.get('b')).toBe('waiting on rate limit openai-calls (key acme): next slot in 0.1 s');
    expect(held.get('c')).toBe('waiting on rate limit openai-calls (key acme): next slot in 0.2 s');
    // a is admitted but not picked: the bucket cannot admit more until it is, whatever the time.
    expect(limits.timerArmed).toBe(false);
    limits.picked(ts[0] as T);
    limits.flush();
    expect(clock.timers.size).toBe(1);
    expect([...clock.timers.values()][0]?.at).toBeGreaterThanOrEqual(clock.t + 100);
    expect(clock.advance(99)).toBe(0);
    expect(ready).toEqual([]);
    expect(clock.advance(2)).toBe(1);
    expect(ready).toEqual(['b']);
    expect(woken()).toBe(1);
    expect(limits.timerArmed).toBe(false); // b waits for an agent: no more can be admitted, whatever the time
    expect(clock.advance(10_000)).toBe(0);
    limits.picked(ts[1] as T);
    limits.flush(); // the bucket refilled meanwhile: c is admitted at once
    expect(ready).toEqual(['b', 'c']);
    limits.picked(ts[2] as T);
    limits.flush();
    expect(limits.timerArmed).toBe(false); // nothing held
  });

  it('paces sends: Assigns whose claims return together go out 1/rate apart, so no second holds more than rate + burst', () => {
    const { limits, clock, ready } = setup([calls]);
    const ts = Array.from({ length: 30 }, (_, i) =>
      task(`t${i}`, { rateLimits: [{ name: 'openai-calls', key: 'acme' }] }),
    );
    const byName = new Map(ts.map((t) => [t.spec.ref.task, t]));
    for (const t of ts) if (limits.admit(t)) ready.push(t.spec.ref.task);
    // Picked as the refill timer admits them (every 100 ms), but their claim transactions return
    // unevenly: the first at once, then one of 300 ms, the rest at once. Without pacing, the three
    // picks behind the slow claim would go out within a millisecond of each other.
    const sends: number[] = [];
    let claiming: T[] = [];
    let picked = 0;
    for (let step = 0; picked < ts.length && step < 1_000; step++) {
      for (const name of ready.splice(0)) {
        const t = byName.get(name) as T;
        limits.picked(t);
        picked++;
        claiming.push(t);
      }
      limits.flush();
      if (clock.t < 1_100 || clock.t >= 1_400) {
        for (const t of claiming) sends.push(limits.sendAt(t));
        claiming = [];
      }
      clock.advance(10);
    }
    for (const t of claiming) sends.push(limits.sendAt(t));
    expect(sends).toHaveLength(30);
    expect(sends[0]).toBe(1_000); // the first goes at once: nothing before it
    for (let i = 1; i < sends.length; i++)
      expect((sends[i] as number) - (sends[i - 1] as number)).toBeGreaterThanOrEqual(100 - 10);
    const mostInOneSecond = Math.max(...sends.map((s) => sends.filter((x) => x >= s && x < s + 1_000).length));
    expect(mostInOneSecond).toBeLessThanOrEqual(10 + 1);
    // and the rate holds: the pacing delays, it does not drop (30 sends within 30 × 100 ms + a claim's lag)
    expect((sends.at(-1) as number) - (sends[0] as number)).toBeLessThanOrEqual(29 * 100 + 300);
  });

  it('a burst goes out back to back, then at the rate; a task without rate limits is never paced', () => {
    const { limits, clock } = setup([{ name: 'l', perSecond: 1, burst: 3 }]);
    const ts = ['a', 'b', 'c', 'd'].map((n) => task(n, { rateLimits: [{ name: 'l' }] }));
    expect(ts.map((t) => limits.admit(t))).toEqual([true, true, true, false]);
    for (const t of ts.slice(0, 3)) limits.picked(t);
    expect(ts.slice(0, 3).map((t) => limits.sendAt(t))).toEqual([1_000, 1_000, 1_000]);
    clock.advance(1_000); // the refill timer admits d
    limits.flush();
    limits.picked(ts[3] as T);
    // d's send slot: three sent at 1,000, at 1/s with a burst of 3 the next is due at 2,000 - 10 ms slack
    expect(limits.sendAt(ts[3] as T)).toBe(2_000);
    const free = task('free', { concurrency: { key: 'k', max: 5 } });
    limits.admit(free);
    limits.picked(free);
    expect(limits.sendAt(free)).toBe(clock.t);
  });

  it('buckets are per key; the timer is for the earliest of them', () => {
    const { limits, clock } = setup([calls, { name: 'slow', perMinute: 6 }]);
    const a = task('a', { rateLimits: [{ name: 'slow', key: 'x' }] });
    const b = task('b', { rateLimits: [{ name: 'slow', key: 'x' }] });
    const c = task('c', { rateLimits: [{ name: 'openai-calls', key: 'y' }] });
    const d = task('d', { rateLimits: [{ name: 'openai-calls', key: 'y' }] });
    const e = task('e', { rateLimits: [{ name: 'openai-calls', key: 'z' }] });
    for (const t of [a, b, c, d, e]) limits.admit(t);
    expect(limits.heldCount).toBe(2); // b and d: e has its own bucket
    limits.picked(a);
    limits.picked(c);
    limits.flush();
    expect(clock.timers.size).toBe(1);
    expect([...clock.timers.values()][0]?.at).toBeLessThanOrEqual(clock.t + 102); // d's bucket (10/s), not b's (6/min)
  });

  it('a burst admits that many at once', () => {
    const { limits } = setup([{ name: 'l', perSecond: 1, burst: 3 }]);
    const ts = ['a', 'b', 'c', 'd'].map((n) => task(n, { rateLimits: [{ name: 'l' }] }));
    expect(ts.map((t) => limits.admit(t))).toEqual([true, true, true, false]);
  });

  it('a pick given back refunds its token', () => {
    const { limits, ready } = setup([{ name: 'l', perMinute: 1 }]);
    const [a, b] = ['a', 'b'].map((n) => task(n, { rateLimits: [{ name: 'l' }] })) as [T, T];
    limits.admit(a);
    limits.admit(b);
    limits.picked(a);
    limits.release(a, true);
    expect(ready).toEqual(['b']);
  });

  it('a limit the pool does not declare holds the task until it does', () => {
    const { limits, ready, held, woken } = setup([]);
    const a = task('a', { rateLimits: [{ name: 'openai-calls' }] });
    expect(limits.admit(a)).toBe(false);
    expect(held.get('a')).toBe(
      'waiting on rate limit openai-calls: AgentPool p declares no rate limit "openai-calls" (spec.rateLimits)',
    );
    expect(limits.timerArmed).toBe(false);
    limits.setRateLimits('ns', 'p', [calls]);
    expect(ready).toEqual(['a']);
    expect(woken()).toBe(1);
  });

  it('a task with a key and a limit waits for both', () => {
    const { limits, ready, clock } = setup([{ name: 'l', perSecond: 10 }]);
    const spec = { concurrency: { key: 'k', max: 1 }, rateLimits: [{ name: 'l' }] };
    const [a, b] = ['a', 'b'].map((n) => task(n, spec)) as [T, T];
    limits.admit(a);
    expect(limits.admit(b)).toBe(false);
    limits.picked(a);
    limits.release(a); // the key frees at once, the bucket in 100 ms
    expect(ready).toEqual([]);
    expect(limits.reason(b)).toMatch(/^waiting on rate limit l: next slot in 0\.1 s$/);
    clock.advance(101);
    expect(ready).toEqual(['b']);
  });
});

class Agent implements SlotHolder {
  used = 0;
  readonly agentId: string;
  readonly capacity: number;
  readonly handlers: ReadonlySet<string> = new Set(['h']);
  constructor(agentId: string, capacity: number) {
    this.agentId = agentId;
    this.capacity = capacity;
  }
  get free(): number {
    return this.capacity - this.used;
  }
}

describe('Scheduler with limits', () => {
  it('held tasks leave the line (not scanned, not blocking others) and come back in their place', () => {
    const clock = new TestClock();
    const messages: string[] = [];
    const s = new Scheduler<T, Agent>(leastLoaded, { held: (_, m) => messages.push(m), clock });
    const agent = new Agent('a1', 100);
    const agents = () => [agent];
    const keyed = Array.from({ length: 100 }, (_, i) => task(`k${i}`, { concurrency: { key: 'one', max: 1 } }));
    const free = task('free');
    for (const t of keyed) s.enqueue(t);
    s.enqueue(free);
    expect(s.size).toBe(101);
    expect(s.queuedSlots('ns', 'p')).toBe(2); // k0 and free; 99 wait for the key, not for an agent
    const picks = s.take(agents, 10).map((p) => p.task.spec.ref.task);
    expect(picks.sort()).toEqual(['free', 'k0']);
    expect(messages).toHaveLength(99);
    expect(s.take(agents, 10)).toEqual([]);
    s.release(keyed[0] as T);
    expect(s.take(agents, 10).map((p) => p.task.spec.ref.task)).toEqual(['k1']);
    expect(s.remove(keyed[50] as T)).toBe(true);
    expect(s.heldReason(keyed[2] as T)).toBe('waiting on concurrency key one (1 of 1 running)');
    expect(clock.timers.size).toBe(0);
  });
});
