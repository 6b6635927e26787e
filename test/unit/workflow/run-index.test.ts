import { describe, expect, it } from 'vitest';
import { MinHeap } from '../../../src/workflow/min-heap.ts';
import { TASK_PHASES, type TaskPhase } from '../../../src/workflow/phases.ts';
import { type IndexedInstance, RunIndex } from '../../../src/workflow/run-index.ts';
import { mulberry32 } from '../seeded-random.ts';

// The run's bookkeeping, checked against what a scan of every instance in
// their order says: after any sequence of changes the index must answer
// exactly as the scans it replaces (counts, what dispatch takes next and in
// which order, the next retry, queued work per pool and handler).

describe('MinHeap', () => {
  it('pops in ascending order whatever the order of pushes, duplicates included', () => {
    const rnd = mulberry32(7);
    const heap = new MinHeap<number>((a, b) => a < b);
    const held: number[] = [];
    for (let k = 0; k < 2_000; k++) {
      if (rnd() < 0.6 || heap.size === 0) {
        const v = Math.floor(rnd() * 100);
        heap.push(v);
        held.push(v);
      } else {
        const min = Math.min(...held);
        expect(heap.peek()).toBe(min);
        expect(heap.pop()).toBe(min);
        held.splice(held.indexOf(min), 1);
      }
      expect(heap.size).toBe(held.length);
    }
    const rest: number[] = [];
    for (let v = heap.pop(); v !== undefined; v = heap.pop()) rest.push(v);
    expect(rest).toEqual([...rest].sort((a, b) => a - b));
    expect(heap.size).toBe(0);
    expect(heap.pop()).toBeUndefined();
  });
});

/** An instance as the run holds it: the fields the index reads, changed in place. */
type Inst = { -readonly [K in keyof IndexedInstance]: IndexedInstance[K] };

/** What the scans of the run said, from the instances in their order. */
function scan(list: Inst[], now: number) {
  const phases = Object.fromEntries(TASK_PHASES.map((p) => [p, list.filter((i) => i.phase === p).length])) as Record<
    TaskPhase,
    number
  >;
  const templates = [...new Set(list.map((i) => i.template))].map((t) => {
    const own = list.filter((i) => i.template === t);
    return {
      template: t,
      count: own.length,
      phases: Object.fromEntries(TASK_PHASES.map((p) => [p, own.filter((i) => i.phase === p).length])),
      itemsSucceeded: own.filter((i) => i.phase === 'Succeeded' && i.parent === undefined && i.index !== undefined)
        .length,
      maxAttempt: Math.max(...own.map((i) => i.attempt)),
      first: own[0]?.name,
      firstFailing: own.find((i) => i.phase === 'Failed' || i.phase === 'Retrying')?.name,
      firstRunningOdd: own.find((i) => i.phase === 'Running' && i.attempt % 2 === 1)?.name,
    };
  });
  const due = list
    .filter((i) => (i.phase === 'Pending' && i.ready) || (i.phase === 'Retrying' && (i.retryAt ?? 0) <= now))
    .map((i) => i.name);
  const retrying = list.filter((i) => i.phase === 'Retrying').map((i) => i.retryAt ?? 0);
  const needs = new Map<string, { pool: string; handler: string; tasks: number }>();
  for (const i of list) {
    if (i.phase !== 'Queued') continue;
    const k = `${i.pool}\0${i.handler}`;
    const n = needs.get(k);
    if (n) n.tasks++;
    else needs.set(k, { pool: i.pool, handler: i.handler, tasks: 1 });
  }
  return {
    phases,
    size: list.length,
    active: phases.Queued + phases.Running,
    templates,
    due,
    nextRetryAt: retrying.length > 0 ? Math.min(...retrying) : undefined,
    needs: [...needs.values()],
  };
}

/** The same questions, asked of the index. */
function ask(index: RunIndex, list: Inst[]) {
  const odd = new Map(list.map((i) => [i.name, i.attempt % 2 === 1]));
  return {
    phases: { ...index.phases },
    size: index.size,
    active: index.active,
    templates: [...new Set(list.map((i) => i.template))].map((t) => {
      const tally = index.tally(t);
      return {
        template: t,
        count: tally?.count,
        phases: { ...tally?.phases },
        itemsSucceeded: tally?.itemsSucceeded,
        maxAttempt: tally?.maxAttempt,
        first: tally?.first,
        firstFailing: index.firstFailing(t),
        firstRunningOdd: index.firstRunning(t, (n) => odd.get(n) === true),
      };
    }),
    nextRetryAt: index.nextRetryAt(),
    needs: index.queuedNeeds(),
  };
}

describe('RunIndex', () => {
  const TEMPLATES = ['a', 'b', 'c'];
  const POOLS = ['p', 'q'];

  it.each(
    Array.from({ length: 40 }, (_, k) => k + 1),
  )('answers as a scan of the instances after random changes (seed %i)', (seed) => {
    const rnd = mulberry32(seed);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)] as T;
    const index = new RunIndex();
    const list: Inst[] = [];
    const byName = new Map<string, Inst>();
    let now = 1_000;
    for (let step = 0; step < 400; step++) {
      const r = rnd();
      if (r < 0.15 || list.length === 0) {
        // A new instance: a template's single, a forEach item or a spawned child.
        const template = pick(TEMPLATES);
        const kind = rnd();
        const name = `${template}${kind < 0.5 ? `.${list.length}` : `~c${list.length}`}`;
        const i: Inst = {
          name,
          template,
          phase: rnd() < 0.8 ? 'Pending' : pick(TASK_PHASES),
          attempt: Math.floor(rnd() * 3),
          pool: pick(POOLS),
          handler: pick(['h1', 'h2']),
          ...(kind < 0.5 ? { index: list.length } : { parent: template }),
          ...(rnd() < 0.7 && { ready: true }),
        };
        if (i.phase === 'Retrying') i.retryAt = now + Math.floor(rnd() * 3_000);
        list.push(i);
        byName.set(name, i);
        index.update(i);
      } else if (r < 0.8) {
        // A change to one instance, as the run makes them (phase, attempt, ready, retryAt).
        const i = pick(list);
        const phase = pick(TASK_PHASES);
        i.phase = phase;
        if (phase === 'Retrying') i.retryAt = now + Math.floor(rnd() * 3_000) - 500;
        else if (rnd() < 0.5) delete i.retryAt;
        if (phase === 'Queued' && rnd() < 0.7) i.attempt++;
        if (rnd() < 0.05) i.attempt = Math.max(0, i.attempt - 1); // a record replaced, a stale lost event
        if (rnd() < 0.3) i.ready = rnd() < 0.7;
        index.update(i);
      } else if (r < 0.9) {
        now += Math.floor(rnd() * 1_500);
      } else {
        // Dispatch: take up to k in the run's order; each is submitted (Queued) as the run does.
        const k = 1 + Math.floor(rnd() * 4);
        const expected = scan(list, now).due.slice(0, k);
        const taken: string[] = [];
        for (let n = 0; n < k; n++) {
          const name = index.takeEligible(now);
          if (name === undefined) break;
          taken.push(name);
          const i = byName.get(name) as Inst;
          i.phase = 'Queued';
          i.attempt++;
          delete i.retryAt;
          index.update(i);
        }
        expect(taken).toEqual(expected);
      }
      const { due: _due, ...want } = scan(list, now);
      expect(ask(index, list)).toEqual(want);
    }
    // Whatever is due comes out, all of it, in order.
    const due = scan(list, now).due;
    const drained: string[] = [];
    for (let name = index.takeEligible(now); name !== undefined; name = index.takeEligible(now)) drained.push(name);
    expect(drained).toEqual(due);
  });

  it('keeps a due retry that dispatch could not take in nextRetryAt and hands it out later', () => {
    const index = new RunIndex();
    const a: Inst = { name: 'a', template: 'a', phase: 'Retrying', retryAt: 500, attempt: 1, pool: 'p', handler: 'h' };
    const b: Inst = { name: 'b', template: 'b', phase: 'Retrying', retryAt: 900, attempt: 1, pool: 'p', handler: 'h' };
    index.update(a);
    index.update(b);
    expect(index.nextRetryAt()).toBe(500);
    expect(index.takeEligible(400)).toBeUndefined();
    expect(index.takeEligible(600)).toBe('a');
    // Taken but not submitted (the caller stopped at parallelism): the next change brings it back.
    index.update(a);
    expect(index.nextRetryAt()).toBe(500);
    expect(index.takeEligible(1_000)).toBe('a'); // first in the run's order
    expect(index.takeEligible(1_000)).toBe('b');
    expect(index.takeEligible(1_000)).toBeUndefined();
  });
});
