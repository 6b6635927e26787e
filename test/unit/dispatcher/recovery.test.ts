import { describe, expect, it } from 'vitest';
import { type ClaimBook, confirmInFlight, judgeUntracked } from '../../../src/dispatcher/recovery.ts';
import type { InFlight__Output } from '../../../src/gen/agentflow/v1/InFlight.ts';
import type { Claim, TaskRef, TaskResult } from '../../../src/state/index.ts';

// What an agent's report means after a restart or reconnect, decided by the claims (an in-memory
// book standing in for etcd) and never by the agent's word alone.

const keyOf = (r: TaskRef) => `${r.namespace}/${r.workflow}/${r.task}`;

class MemoryClaims implements ClaimBook {
  readonly claims = new Map<string, Claim>();
  readonly results = new Map<string, TaskResult>();
  /** Every claim ever made, by task and token (etcd's history). */
  readonly history = new Map<string, Claim>();
  readonly calls: string[] = [];

  claim(ref: TaskRef, attempt: number, agentId: string, token: number): Claim {
    const c = { ref, attempt, agentId, token };
    this.claims.set(keyOf(ref), c);
    this.history.set(`${keyOf(ref)}@${token}`, c);
    return c;
  }
  /** The claim's key went with its lease. */
  lapse(ref: TaskRef): void {
    this.claims.delete(keyOf(ref));
  }
  commit(ref: TaskRef, attempt: number, agentId: string, token: number): void {
    this.claims.delete(keyOf(ref));
    this.results.set(keyOf(ref), { attempt, agentId, token, ok: true, output: 1, committedAt: '2025-01-01T00:00:00Z' });
  }

  async current(ref: TaskRef) {
    this.calls.push(`current ${keyOf(ref)}`);
    return this.claims.get(keyOf(ref));
  }
  async result(ref: TaskRef) {
    this.calls.push(`result ${keyOf(ref)}`);
    return this.results.get(keyOf(ref));
  }
  async claimedAt(ref: TaskRef, token: number) {
    this.calls.push(`claimedAt ${keyOf(ref)}@${token}`);
    return this.history.get(`${keyOf(ref)}@${token}`);
  }
}

const ref = (task: string, workflow = 'wf'): TaskRef => ({ namespace: 'ns', workflow, task });
const inf = (taskId: string, attempt: number, token: number, cost = 1): InFlight__Output => ({
  taskId,
  attempt,
  token,
  cost,
});

describe('confirmInFlight', () => {
  it('holds exactly the attempts whose current claim names this agent, attempt and token', async () => {
    const book = new MemoryClaims();
    const held = book.claim(ref('held'), 2, 'a', 100);
    const free = book.claim(ref('free-cost'), 1, 'a', 101);
    book.claim(ref('other-token'), 1, 'a', 102);
    book.claim(ref('other-attempt'), 3, 'a', 103);
    book.claim(ref('other-agent'), 1, 'b', 104);
    const got = await confirmInFlight(book, 'ns', 'a', [
      inf('wf/held', 2, 100, 3),
      inf('wf/free-cost', 1, 101, 0),
      inf('wf/other-token', 1, 999),
      inf('wf/other-attempt', 2, 103),
      inf('wf/other-agent', 1, 104),
      inf('wf/no-claim', 1, 105),
    ]);
    expect(got.held).toEqual([
      { inf: inf('wf/held', 2, 100, 3), ref: ref('held'), key: 'ns/wf/held', claim: held, cost: 3 },
      { inf: inf('wf/free-cost', 1, 101, 0), ref: ref('free-cost'), key: 'ns/wf/free-cost', claim: free, cost: 1 },
    ]);
    // Reported: every well-formed task named, held or not (the dispatcher re-queues what is missing).
    expect([...got.reported]).toEqual([
      'ns/wf/held',
      'ns/wf/free-cost',
      'ns/wf/other-token',
      'ns/wf/other-attempt',
      'ns/wf/other-agent',
      'ns/wf/no-claim',
    ]);
  });

  it('skips malformed task ids without asking etcd about them, and reads the agent namespace only', async () => {
    const book = new MemoryClaims();
    const got = await confirmInFlight(book, 'ns', 'a', [
      inf('no-slash', 1, 1),
      inf('wf/', 1, 2),
      inf('/t', 1, 3),
      inf('a/b/c/d', 1, 4),
      inf('a//c', 1, 6),
      inf('wf/ok', 1, 5),
    ]);
    expect(got.held).toEqual([]);
    expect([...got.reported]).toEqual(['ns/wf/ok']);
    expect(book.calls).toEqual(['current ns/wf/ok']);
  });

  it('does not hold a claim of the same task name in another namespace', async () => {
    const book = new MemoryClaims();
    book.claim({ namespace: 'other', workflow: 'wf', task: 't' }, 1, 'a', 7);
    const got = await confirmInFlight(book, 'ns', 'a', [inf('wf/t', 1, 7)]);
    expect(got.held).toEqual([]);
  });

  it('holds another namespace’s attempt (namespace/workflow/task) whose claim names agentNamespace/agentId', async () => {
    // Agent p-0 of the shared pool in pool-ns runs team-a's task.
    const book = new MemoryClaims();
    const teamTask: TaskRef = { namespace: 'team-a', workflow: 'wf', task: 't' };
    const claim = book.claim(teamTask, 1, 'pool-ns/p-0', 7);
    const got = await confirmInFlight(book, 'pool-ns', 'p-0', [inf('team-a/wf/t', 1, 7)]);
    expect(got.held).toEqual([{ inf: inf('team-a/wf/t', 1, 7), ref: teamTask, key: 'team-a/wf/t', claim, cost: 1 }]);
    expect(book.calls).toEqual(['current team-a/wf/t']);
  });

  it('refuses another namespace’s attempt whose claim names the bare agent id (that namespace’s own agent)', async () => {
    // team-a has an agent p-0 of its own: its claim on team-a's task is "p-0". The shared pool's p-0
    // must not pass for it, nor it for the shared pool's.
    const book = new MemoryClaims();
    const own = book.claim({ namespace: 'team-a', workflow: 'wf', task: 'mine' }, 1, 'p-0', 8);
    book.claim({ namespace: 'team-a', workflow: 'wf', task: 'theirs' }, 1, 'pool-ns/p-0', 9);
    const fromPool = await confirmInFlight(book, 'pool-ns', 'p-0', [inf('team-a/wf/mine', 1, 8)]);
    expect(fromPool.held).toEqual([]);
    expect([...fromPool.reported]).toEqual(['team-a/wf/mine']);
    const fromTeam = await confirmInFlight(book, 'team-a', 'p-0', [inf('wf/theirs', 1, 9), inf('wf/mine', 1, 8)]);
    expect(fromTeam.held.map((h) => h.claim)).toEqual([own]);
  });
});

describe('judgeUntracked', () => {
  it('commits when the current claim is this agent’s for this attempt and token (a string token too)', async () => {
    const book = new MemoryClaims();
    const c = book.claim(ref('t'), 2, 'a', 42);
    expect(await judgeUntracked(book, ref('t'), { attempt: 2, token: 42 }, 'a')).toEqual({ kind: 'commit', claim: c });
    expect(await judgeUntracked(book, ref('t'), { attempt: 2, token: '42' }, 'a')).toEqual({
      kind: 'commit',
      claim: c,
    });
  });

  it('answers committed when the result was committed under this token by this agent', async () => {
    const book = new MemoryClaims();
    book.claim(ref('t'), 1, 'a', 42);
    book.commit(ref('t'), 1, 'a', 42);
    expect(await judgeUntracked(book, ref('t'), { attempt: 1, token: 42 }, 'a')).toEqual({ kind: 'committed' });
  });

  it('answers superseded when this agent holds the task under another attempt or token', async () => {
    const book = new MemoryClaims();
    book.claim(ref('t'), 1, 'a', 10);
    book.lapse(ref('t'));
    book.claim(ref('t'), 2, 'a', 20); // the same agent runs the next attempt now
    expect(await judgeUntracked(book, ref('t'), { attempt: 1, token: 10 }, 'a')).toEqual({ kind: 'superseded' });
    // Token right, attempt wrong: not a commit either.
    expect(await judgeUntracked(book, ref('t'), { attempt: 1, token: 20 }, 'a')).toEqual({ kind: 'superseded' });
  });

  it('answers superseded when this agent committed the task under another token', async () => {
    const book = new MemoryClaims();
    book.claim(ref('t'), 2, 'a', 20);
    book.commit(ref('t'), 2, 'a', 20);
    expect(await judgeUntracked(book, ref('t'), { attempt: 1, token: 10 }, 'a')).toEqual({ kind: 'superseded' });
  });

  it('answers orphan when nobody holds the task, it has no result, and history shows this very attempt', async () => {
    const book = new MemoryClaims();
    book.claim(ref('t'), 3, 'a', 30);
    book.lapse(ref('t'));
    expect(await judgeUntracked(book, ref('t'), { attempt: 3, token: 30 }, 'a')).toEqual({ kind: 'orphan' });
    expect(book.calls).toEqual(['current ns/wf/t', 'result ns/wf/t', 'claimedAt ns/wf/t@30']);
  });

  it.each([
    ['history names another agent', 'b', 3, 30],
    ['history names another attempt', 'a', 2, 30],
  ] as const)('answers unknown when %s', async (_why, agentId, attempt, token) => {
    const book = new MemoryClaims();
    book.claim(ref('t'), attempt, agentId, token);
    book.lapse(ref('t'));
    expect(await judgeUntracked(book, ref('t'), { attempt: 3, token: 30 }, 'a')).toEqual({ kind: 'unknown' });
  });

  it('answers unknown when the token is in no history', async () => {
    const book = new MemoryClaims();
    expect(await judgeUntracked(book, ref('t'), { attempt: 1, token: 5 }, 'a')).toEqual({ kind: 'unknown' });
  });

  it('answers unknown, without consulting history, when another agent holds the task now', async () => {
    const book = new MemoryClaims();
    book.claim(ref('t'), 1, 'a', 10);
    book.lapse(ref('t'));
    book.claim(ref('t'), 2, 'b', 20);
    expect(await judgeUntracked(book, ref('t'), { attempt: 1, token: 10 }, 'a')).toEqual({ kind: 'unknown' });
    expect(book.calls.some((c) => c.startsWith('claimedAt'))).toBe(false);
  });

  it('answers unknown, without consulting history, when another agent committed the task', async () => {
    const book = new MemoryClaims();
    book.claim(ref('t'), 1, 'a', 10);
    book.lapse(ref('t'));
    book.claim(ref('t'), 2, 'b', 20);
    book.commit(ref('t'), 2, 'b', 20);
    expect(await judgeUntracked(book, ref('t'), { attempt: 1, token: 10 }, 'a')).toEqual({ kind: 'unknown' });
    expect(book.calls.some((c) => c.startsWith('claimedAt'))).toBe(false);
  });

  it('never commits for an agent that only claims the token: the claim of another agent with it stays unknown', async () => {
    const book = new MemoryClaims();
    book.claim(ref('t'), 1, 'b', 10);
    expect(await judgeUntracked(book, ref('t'), { attempt: 1, token: 10 }, 'a')).toEqual({ kind: 'unknown' });
    book.commit(ref('t'), 1, 'b', 10);
    expect(await judgeUntracked(book, ref('t'), { attempt: 1, token: 10 }, 'a')).toEqual({ kind: 'unknown' });
  });
});
