import { describe, expect, it } from 'vitest';
import { type Candidate, leastLoaded, type PlacementPolicy } from '../../../src/dispatcher/placement.ts';
import { type Schedulable, Scheduler, type SlotHolder } from '../../../src/dispatcher/scheduler.ts';

// The choice of agent for each queued task, with stand-in agents: slots reserved on agent.used as
// picks are made, only fitting agents shown to the policy, pools kept apart, and a given-back task
// keeping its place in line.

class Agent implements SlotHolder {
  used = 0;
  draining = false;
  readonly agentId: string;
  readonly capacity: number;
  readonly handlers: ReadonlySet<string>;
  constructor(agentId: string, capacity: number, handlers: string[] = ['h']) {
    this.agentId = agentId;
    this.capacity = capacity;
    this.handlers = new Set(handlers);
  }
  get free(): number {
    return this.draining ? 0 : this.capacity - this.used;
  }
}

interface Task extends Schedulable {}

function task(
  name: string,
  o: {
    ns?: string;
    pool?: string;
    /** The pool's namespace, when it is another namespace's shared pool. */
    poolNs?: string;
    wf?: string;
    handler?: string;
    cost?: number;
    priority?: number;
  } = {},
): Task {
  const ns = o.ns ?? 'ns';
  const wf = o.wf ?? 'wf';
  return {
    key: `${ns}/${wf}/${name}`,
    spec: {
      ref: { namespace: ns, workflow: wf, task: name },
      pool: o.pool ?? 'p',
      ...(o.poolNs !== undefined && { poolNamespace: o.poolNs }),
      handler: o.handler ?? 'h',
      input: null,
      ...(o.priority !== undefined && { priority: o.priority }),
    },
    attempt: 1,
    cost: o.cost ?? 1,
    enqueuedAt: 0,
  };
}

/** Agents by pool, as the dispatcher's byPool map answers them. */
function pools(byPool: Record<string, Agent[]>) {
  const asked: string[] = [];
  return {
    asked,
    agentsOf: (ns: string, pool: string) => {
      asked.push(`${ns}/${pool}`);
      return byPool[`${ns}/${pool}`];
    },
  };
}

const picked = (ps: { task: Task; agent: Agent }[]) => ps.map((p) => `${p.task.spec.ref.task}->${p.agent.agentId}`);

describe('Scheduler', () => {
  it('picks an agent for each task, reserving its cost on agent.used, and takes the task out of line', () => {
    const s = new Scheduler<Task, Agent>(leastLoaded);
    const a = new Agent('a', 4);
    const t1 = task('t1', { cost: 3 });
    s.enqueue(t1);
    expect(s.isQueued(t1)).toBe(true);
    expect(s.size).toBe(1);
    const { agentsOf } = pools({ 'ns/p': [a] });
    const got = s.take(agentsOf, 10);
    expect(got).toEqual([{ task: t1, agent: a }]);
    expect(a.used).toBe(3);
    expect(s.isQueued(t1)).toBe(false);
    expect(s.size).toBe(0);
    expect(s.queuedSlots('ns', 'p')).toBe(0);
  });

  it('never gives a task to an agent that does not serve its handler; it stays queued and wanted', () => {
    const s = new Scheduler<Task, Agent>(leastLoaded);
    const a = new Agent('a', 4, ['h']);
    const t = task('t', { handler: 'other' });
    s.enqueue(t);
    expect(s.take(pools({ 'ns/p': [a] }).agentsOf, 10)).toEqual([]);
    expect(a.used).toBe(0);
    expect(s.isQueued(t)).toBe(true);
    expect(s.wantedHandlers('ns', 'p')).toEqual(['other']);
    const b = new Agent('b', 1, ['other', 'h']);
    expect(s.take(pools({ 'ns/p': [a, b] }).agentsOf, 10)).toEqual([{ task: t, agent: b }]);
    expect(s.wantedHandlers('ns', 'p')).toEqual([]);
  });

  it('fills no agent past its free slots, and takes a smaller task past one that does not fit', () => {
    const s = new Scheduler<Task, Agent>(leastLoaded);
    const a = new Agent('a', 3);
    a.used = 1;
    s.enqueue(task('big', { cost: 3 }));
    s.enqueue(task('s1'));
    s.enqueue(task('s2'));
    s.enqueue(task('s3'));
    const got = s.take(pools({ 'ns/p': [a] }).agentsOf, 10);
    expect(picked(got)).toEqual(['s1->a', 's2->a']);
    expect(a.used).toBe(3);
    expect(a.free).toBe(0);
    expect(s.size).toBe(2);
    expect(s.queuedSlots('ns', 'p')).toBe(4);
  });

  it('gives nothing to a draining agent (free 0) even with slots unused', () => {
    const s = new Scheduler<Task, Agent>(leastLoaded);
    const a = new Agent('a', 8);
    a.draining = true;
    s.enqueue(task('t'));
    expect(s.take(pools({ 'ns/p': [a] }).agentsOf, 10)).toEqual([]);
    expect(a.used).toBe(0);
    const b = new Agent('b', 8);
    expect(picked(s.take(pools({ 'ns/p': [a, b] }).agentsOf, 10))).toEqual(['t->b']);
  });

  it('shows the policy only the agents that fit, with their load as reserved so far, and skips it for one', () => {
    const seen: Candidate[][] = [];
    const policy: PlacementPolicy = (cs) => {
      seen.push(cs.map((c) => ({ agentId: c.agentId, capacity: c.capacity, used: c.used })));
      return cs[cs.length - 1];
    };
    const s = new Scheduler<Task, Agent>(policy);
    const full = new Agent('full', 1);
    full.used = 1;
    const draining = new Agent('draining', 4);
    draining.draining = true;
    const wrong = new Agent('wrong', 4, ['x']);
    const b = new Agent('b', 4);
    const d = new Agent('d', 2);
    s.enqueue(task('t1'));
    s.enqueue(task('t2'));
    s.enqueue(task('t3', { cost: 3 })); // only b has room for it
    const got = s.take(pools({ 'ns/p': [full, draining, wrong, b, d] }).agentsOf, 10);
    expect(picked(got)).toEqual(['t1->d', 't2->d', 't3->b']);
    expect(seen).toEqual([
      [
        { agentId: 'b', capacity: 4, used: 0 },
        { agentId: 'd', capacity: 2, used: 0 },
      ],
      [
        { agentId: 'b', capacity: 4, used: 0 },
        { agentId: 'd', capacity: 2, used: 1 },
      ],
    ]);
    expect([b.used, d.used]).toEqual([3, 2]);
  });

  it('leaves a task queued, reserving nothing, when the policy chooses none', () => {
    const s = new Scheduler<Task, Agent>(() => undefined);
    const a = new Agent('a', 2);
    const b = new Agent('b', 2);
    const t = task('t');
    s.enqueue(t);
    expect(s.take(pools({ 'ns/p': [a, b] }).agentsOf, 10)).toEqual([]);
    expect([a.used, b.used]).toEqual([0, 0]);
    expect(s.isQueued(t)).toBe(true);
  });

  it('spreads a turn over agents with least-loaded, since each pick sees the previous reservations', () => {
    const s = new Scheduler<Task, Agent>(leastLoaded);
    const a = new Agent('a', 2);
    const b = new Agent('b', 2);
    for (let i = 0; i < 4; i++) s.enqueue(task(`t${i}`));
    expect(picked(s.take(pools({ 'ns/p': [a, b] }).agentsOf, 10))).toEqual(['t0->a', 't1->b', 't2->a', 't3->b']);
  });

  it('takes a given-back task again ahead of work queued after it (it keeps its first seq)', () => {
    const s = new Scheduler<Task, Agent>(leastLoaded);
    const a = new Agent('a', 1);
    const first = task('first');
    s.enqueue(first);
    const later = task('later');
    s.enqueue(later);
    const [pick] = s.take(pools({ 'ns/p': [a] }).agentsOf, 10);
    expect(pick?.task).toBe(first);
    expect(s.isQueued(later)).toBe(true);
    // The claim was refused: the caller gives the slot back and queues the task again.
    a.used -= first.cost;
    const seq = first.seq;
    s.enqueue(first);
    expect(first.seq).toBe(seq);
    expect(picked(s.take(pools({ 'ns/p': [a] }).agentsOf, 10))).toEqual(['first->a']);
    expect(s.isQueued(later)).toBe(true);
  });

  it('keeps pools apart: an agent of one pool or namespace never gets another pool’s task', () => {
    const s = new Scheduler<Task, Agent>(leastLoaded);
    const p1 = new Agent('p1-agent', 10);
    const otherNs = new Agent('other-ns-agent', 10);
    s.enqueue(task('a', { pool: 'p1' }));
    s.enqueue(task('b', { pool: 'p2' }));
    s.enqueue(task('c', { ns: 'other', pool: 'p1' }));
    const { agentsOf, asked } = pools({ 'ns/p1': [p1], 'other/p1': [otherNs], 'ns/p2': [] });
    expect(picked(s.take(agentsOf, 10))).toEqual(['a->p1-agent', 'c->other-ns-agent']);
    expect(asked).toEqual(['ns/p1', 'ns/p2', 'other/p1']);
    expect(s.queuedSlots('ns', 'p2')).toBe(1);
    expect(s.queuedSlots('ns', 'nope')).toBe(0);
    expect(s.wantedHandlers('ns', 'nope')).toEqual([]);
    // A pool nobody serves (undefined) is skipped without harm.
    expect(s.take(pools({}).agentsOf, 10)).toEqual([]);
    expect(s.size).toBe(1);
  });

  it('makes at most `max` picks in a turn across pools, reserving slots for those only', () => {
    const s = new Scheduler<Task, Agent>(leastLoaded);
    const a = new Agent('a', 100);
    const b = new Agent('b', 100);
    for (let i = 0; i < 5; i++) {
      s.enqueue(task(`a${i}`, { pool: 'pa' }));
      s.enqueue(task(`b${i}`, { pool: 'pb' }));
    }
    const { agentsOf } = pools({ 'ns/pa': [a], 'ns/pb': [b] });
    expect(s.take(agentsOf, 0)).toEqual([]);
    expect(picked(s.take(agentsOf, 3))).toEqual(['a0->a', 'a1->a', 'a2->a']);
    // The next turn starts at the next pool.
    expect(picked(s.take(agentsOf, 7))).toEqual(['b0->b', 'b1->b', 'b2->b', 'b3->b', 'b4->b', 'a3->a', 'a4->a']);
    expect([a.used, b.used]).toEqual([5, 5]);
    expect(s.size).toBe(0);
    for (let i = 5; i < 8; i++) s.enqueue(task(`a${i}`, { pool: 'pa' }));
    expect(s.size).toBe(3);
  });

  it('refuses to queue a task twice, naming it, and queues it again once it left the line', () => {
    const s = new Scheduler<Task, Agent>(leastLoaded);
    const t = task('t1');
    s.enqueue(t);
    expect(() => s.enqueue(t)).toThrow(new Error('task ns/wf/t1 is already queued'));
    expect(() => s.enqueue(task('t1'))).toThrow('task ns/wf/t1 is already queued'); // same key, other object
    expect(s.size).toBe(1);
    expect(s.remove(t)).toBe(true);
    expect(s.remove(t)).toBe(false);
    s.enqueue(t);
    expect(s.isQueued(t)).toBe(true);
  });

  it('removes only the very task object queued under the key', () => {
    const s = new Scheduler<Task, Agent>(leastLoaded);
    const t = task('t1', { cost: 2 });
    s.enqueue(t);
    const impostor = task('t1', { cost: 2 });
    expect(s.isQueued(impostor)).toBe(false);
    expect(s.remove(impostor)).toBe(false);
    expect(s.isQueued(t)).toBe(true);
    expect(s.queuedSlots('ns', 'p')).toBe(2);
    expect(s.remove(t)).toBe(true);
    expect(s.queuedSlots('ns', 'p')).toBe(0);
    expect(s.take(pools({ 'ns/p': [new Agent('a', 5)] }).agentsOf, 10)).toEqual([]);
  });

  it('orders within a pool by priority, then round-robin between workflows', () => {
    const s = new Scheduler<Task, Agent>(leastLoaded);
    s.enqueue(task('w1-low', { wf: 'w1' }));
    s.enqueue(task('w1-high', { wf: 'w1', priority: 5 }));
    s.enqueue(task('w2-a', { wf: 'w2' }));
    s.enqueue(task('w1-next', { wf: 'w1' }));
    const a = new Agent('a', 10);
    expect(picked(s.take(pools({ 'ns/p': [a] }).agentsOf, 10))).toEqual([
      'w1-high->a',
      'w2-a->a',
      'w1-low->a',
      'w1-next->a',
    ]);
  });

  it('starts each turn at the next pool, so a deep backlog with many free slots cannot hold the max every turn', () => {
    const s = new Scheduler<Task, Agent>(leastLoaded);
    const big = new Agent('big', 100);
    const small = new Agent('small', 100);
    for (let i = 0; i < 50; i++) s.enqueue(task(`a${i}`, { pool: 'a' }));
    for (let i = 0; i < 50; i++) s.enqueue(task(`b${i}`, { pool: 'b' }));
    const { agentsOf } = pools({ 'ns/a': [big], 'ns/b': [small] });
    const first = s.take(agentsOf, 10).map((p) => p.task.spec.pool);
    const second = s.take(agentsOf, 10).map((p) => p.task.spec.pool);
    expect(first).toEqual(Array(10).fill('a'));
    expect(second).toEqual(Array(10).fill('b'));
  });
});

describe('Scheduler and shared pools', () => {
  // AgentPool pool-ns/p; team-a and team-b run tasks on it as pool: pool-ns/p.
  const shared = (...teams: [string, number][]) => new Map<string, number>([['pool-ns', 1], ...teams]);
  const notShared = (ns: string) =>
    `waiting on AgentPool pool-ns/p: it is not shared with namespace ${ns} (its spec.sharing.namespaces)`;

  function watched() {
    const held: string[] = [];
    const seen = { woken: 0 };
    const s = new Scheduler<Task, Agent>(leastLoaded, {
      held: (t, message) => held.push(`${t.key}: ${message}`),
      woken: () => {
        seen.woken++;
      },
    });
    return { s, held, seen };
  }

  it('queues a task of a shared pool under the pool’s namespace, never the task’s', () => {
    const { s, held } = watched();
    s.setSharing('pool-ns', 'p', shared(['team-a', 1]));
    const poolAgent = new Agent('pool-agent', 10);
    const teamAgent = new Agent('team-agent', 10);
    s.enqueue(task('remote', { ns: 'team-a', poolNs: 'pool-ns' }));
    s.enqueue(task('local', { ns: 'team-a' })); // team-a's own pool p
    expect(s.queuedSlots('pool-ns', 'p')).toBe(1);
    expect(s.queuedSlots('team-a', 'p')).toBe(1);
    const { agentsOf, asked } = pools({ 'pool-ns/p': [poolAgent], 'team-a/p': [teamAgent] });
    expect(picked(s.take(agentsOf, 10)).sort()).toEqual(['local->team-agent', 'remote->pool-agent']);
    expect(asked.sort()).toEqual(['pool-ns/p', 'team-a/p']);
    expect(held).toEqual([]);
  });

  it('never looks for agents of the task’s namespace for a task of a shared pool', () => {
    const { s } = watched();
    s.setSharing('pool-ns', 'p', shared(['team-a', 1]));
    const t = task('remote', { ns: 'team-a', poolNs: 'pool-ns' });
    s.enqueue(t);
    const { agentsOf, asked } = pools({ 'team-a/p': [new Agent('team-agent', 10)] });
    expect(s.take(agentsOf, 10)).toEqual([]);
    expect(asked).toEqual(['pool-ns/p']);
    expect(s.isQueued(t)).toBe(true);
  });

  it('holds the task of a namespace the pool is not shared with, saying why, and takes it once shared', () => {
    const { s, held, seen } = watched();
    const a = new Agent('pool-agent', 10);
    const { agentsOf } = pools({ 'pool-ns/p': [a] });
    const t = task('t', { ns: 'team-a', poolNs: 'pool-ns' });
    s.enqueue(t);
    s.enqueue(task('own', { ns: 'pool-ns' }));
    expect(held).toEqual([`team-a/wf/t: ${notShared('team-a')}`]);
    // The pool's own work is not held up by it.
    expect(picked(s.take(agentsOf, 10))).toEqual(['own->pool-agent']);
    expect(s.isQueued(t)).toBe(true);
    // Sharing with another namespace does not admit it.
    s.setSharing('pool-ns', 'p', shared(['team-b', 1]));
    expect(s.take(agentsOf, 10)).toEqual([]);
    expect(seen.woken).toBe(0);
    s.setSharing('pool-ns', 'p', shared(['team-a', 1]));
    expect(seen.woken).toBe(1);
    expect(picked(s.take(agentsOf, 10))).toEqual(['t->pool-agent']);
    expect(s.size).toBe(0);
  });

  it('admits tasks queued after the pool was shared without holding them', () => {
    const { s, held } = watched();
    s.setSharing('pool-ns', 'p', shared(['team-a', 2]));
    s.enqueue(task('t', { ns: 'team-a', poolNs: 'pool-ns' }));
    expect(held).toEqual([]);
    expect(picked(s.take(pools({ 'pool-ns/p': [new Agent('a', 1)] }).agentsOf, 10))).toEqual(['t->a']);
  });

  it('holds the queued tasks of a namespace whose sharing is revoked, telling each, and dispatches them once it is back', () => {
    const { s, held, seen } = watched();
    s.setSharing('pool-ns', 'p', shared(['team-a', 1], ['team-b', 1]));
    s.enqueue(task('a1', { ns: 'team-a', poolNs: 'pool-ns' }));
    s.enqueue(task('a2', { ns: 'team-a', poolNs: 'pool-ns', wf: 'wf2' }));
    s.enqueue(task('b1', { ns: 'team-b', poolNs: 'pool-ns' }));
    s.enqueue(task('own', { ns: 'pool-ns' }));
    expect(held).toEqual([]);
    s.setSharing('pool-ns', 'p', shared(['team-b', 1]));
    expect(held.sort()).toEqual([`team-a/wf/a1: ${notShared('team-a')}`, `team-a/wf2/a2: ${notShared('team-a')}`]);
    const a = new Agent('pool-agent', 10);
    const { agentsOf } = pools({ 'pool-ns/p': [a] });
    expect(picked(s.take(agentsOf, 10)).sort()).toEqual(['b1->pool-agent', 'own->pool-agent']);
    // The pool stops sharing altogether: nothing foreign is left queued but team-a's.
    held.length = 0;
    s.setSharing('pool-ns', 'p', undefined);
    expect(held.sort()).toEqual([`team-a/wf/a1: ${notShared('team-a')}`, `team-a/wf2/a2: ${notShared('team-a')}`]);
    expect(s.take(agentsOf, 10)).toEqual([]);
    const before = seen.woken;
    s.setSharing('pool-ns', 'p', shared(['team-a', 1]));
    expect(seen.woken).toBe(before + 1);
    expect(picked(s.take(agentsOf, 10)).sort()).toEqual(['a1->pool-agent', 'a2->pool-agent']);
  });

  it('counts the slots and handlers of other namespaces’ tasks for the pool (the autoscaler’s signal)', () => {
    const { s } = watched();
    s.setSharing('pool-ns', 'p', shared(['team-a', 1]));
    s.enqueue(task('remote', { ns: 'team-a', poolNs: 'pool-ns', cost: 3, handler: 'render' }));
    s.enqueue(task('own', { ns: 'pool-ns', cost: 2 }));
    expect(s.queuedSlots('pool-ns', 'p')).toBe(5);
    expect(s.queuedSlots('team-a', 'p')).toBe(0);
    expect(s.wantedHandlers('pool-ns', 'p')).toEqual(['h', 'render']);
    expect(s.wantedHandlers('team-a', 'p')).toEqual([]);
    s.take(pools({ 'pool-ns/p': [new Agent('a', 10, ['h', 'render'])] }).agentsOf, 10);
    expect(s.queuedSlots('pool-ns', 'p')).toBe(0);
  });

  it('splits scarce slots 3:1 between two namespaces weighted 3 and 1, and follows a change of weights', () => {
    const { s } = watched();
    s.setSharing('pool-ns', 'p', shared(['team-a', 3], ['team-b', 1]));
    for (let i = 0; i < 100; i++) {
      s.enqueue(task(`a${i}`, { ns: 'team-a', poolNs: 'pool-ns' }));
      s.enqueue(task(`b${i}`, { ns: 'team-b', poolNs: 'pool-ns' }));
    }
    const agents = [new Agent('x', 1), new Agent('y', 1)];
    const { agentsOf } = pools({ 'pool-ns/p': agents });
    /** Rounds of dispatch, each after the previous picks finished: two slots a round. */
    const rounds = (n: number) => {
      const got = { 'team-a': 0, 'team-b': 0 } as Record<string, number>;
      for (let r = 0; r < n; r++) {
        for (const a of agents) a.used = 0;
        const ps = s.take(agentsOf, 10);
        expect(ps).toHaveLength(2);
        for (const p of ps) got[p.task.spec.ref.namespace] = (got[p.task.spec.ref.namespace] ?? 0) + 1;
      }
      return got;
    };
    const first = rounds(20); // 40 picks: 30 and 10, give or take what the first visits carry
    expect(first['team-a']).toBeGreaterThanOrEqual(28);
    expect(first['team-a']).toBeLessThanOrEqual(32);
    expect((first['team-a'] ?? 0) + (first['team-b'] ?? 0)).toBe(40);
    s.setSharing('pool-ns', 'p', shared(['team-a', 1], ['team-b', 3]));
    const second = rounds(20);
    expect(second['team-b']).toBeGreaterThanOrEqual(28);
    expect(second['team-b']).toBeLessThanOrEqual(32);
  });
});
