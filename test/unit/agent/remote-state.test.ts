// ctx.state and ctx.lock as handlers use them: every operation travels over
// the agent's dispatcher stream (the agent holds no etcd credentials), here
// to a fake dispatcher that keeps state in memory with etcd's revisions.
import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import {
  ConflictError,
  FencedError,
  type Handler,
  LockTimeoutError,
  StatePermissionError,
  StateUnavailableError,
  type TaskContext,
} from '../../../src/agent/index.ts';
import { StateError } from '../../../src/state/errors.ts';
import type { JsonValue, Versioned } from '../../../src/state/shared-state.ts';
import { assign, gate, register, rig, roundTrip, runCleanups, until } from './agent-rig.ts';

afterEach(runCleanups);

const WF = { namespace: 'team-a', workflow: 'wf' };

/** What `p` rejected with, or an Error saying it did not reject. */
async function caught(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    (v) => new Error(`expected a rejection, got ${JSON.stringify(v)}`),
    (e: unknown) => e,
  );
}

/** An agent whose one handler `run` is `fn`; runs it once and resolves with the attempt's Result. */
async function runOnce(fn: Handler) {
  const r = await rig({ run: fn });
  const a = assign('run');
  r.stream.send({ assign: a });
  return { ...r, a, result: r.stream.result(a.taskId as string) };
}

describe('ctx.state', () => {
  it('gets, puts, compares-and-swaps, deletes, lists and reads history with etcd revisions', async () => {
    const seen: Record<string, unknown> = {};
    const { result } = await runOnce(async (ctx) => {
      const s = ctx.state;
      seen.missing = await s.get('plan');
      const r1 = await s.put('plan', { step: 1 });
      seen.r1 = r1;
      seen.afterPut = await s.get('plan');
      const r2 = await s.cas('plan', { step: 2 }, r1);
      seen.r2 = r2;
      seen.staleCas = await caught(s.cas('plan', { step: 3 }, r1));
      seen.created = await s.cas('notes/a', 'first', 0);
      seen.createTwice = await caught(s.cas('notes/a', 'again', 0));
      await s.put('notes/b', ['x']);
      seen.list = await s.list('notes/');
      seen.history = await s.history('plan');
      seen.staleDelete = await caught(s.delete('plan', r1));
      seen.deleted = await s.delete('plan', r2);
      seen.deletedAgain = await s.delete('plan');
      seen.gone = await s.get('plan');
      return null;
    });
    expect((await result).outcome).toBe('outputJson');

    const r1 = seen.r1 as number;
    const r2 = seen.r2 as number;
    expect(seen.missing).toBeUndefined();
    expect(seen.afterPut).toEqual({ key: 'plan', value: { step: 1 }, modRevision: r1, createRevision: r1, version: 1 });
    expect(r2).toBeGreaterThan(r1);
    expect(seen.staleCas).toBeInstanceOf(ConflictError);
    expect(seen.staleCas).toMatchObject({ key: 'plan', expectedRevision: r1, actualRevision: r2 });
    const created = seen.created as number;
    expect(seen.createTwice).toMatchObject({ name: 'ConflictError', expectedRevision: 0, actualRevision: created });
    const list = seen.list as { items: Versioned[]; revision: number };
    expect(list.items.map((i) => [i.key, i.value])).toEqual([
      ['notes/a', 'first'],
      ['notes/b', ['x']],
    ]);
    expect(list.revision).toBeGreaterThan(created);
    expect((seen.history as Versioned[]).map((v) => [v.value, v.modRevision])).toEqual([
      [{ step: 2 }, r2],
      [{ step: 1 }, r1],
    ]);
    expect(seen.staleDelete).toMatchObject({ name: 'ConflictError', expectedRevision: r1, actualRevision: r2 });
    expect(seen.deleted).toBe(true);
    expect(seen.deletedAgain).toBe(false);
    expect(seen.gone).toBeUndefined();
  });

  it('is the workflow of the attempt: it sees what others wrote there, and nothing of another workflow', async () => {
    const { fake, stream } = await rig({
      run: async (ctx) => ({
        mine: (await ctx.state.get('topic'))?.value ?? null,
        all: (await ctx.state.list()).items.length,
      }),
    });
    fake.state.put(WF, 'topic', 'from the planner');
    fake.state.put({ namespace: 'team-a', workflow: 'other' }, 'secret', 1);
    fake.state.put({ namespace: 'team-b', workflow: 'wf' }, 'topic', 'another tenant');
    const a = assign('run');
    stream.send({ assign: a });
    expect(JSON.parse((await stream.result(a.taskId as string)).outputJson as string)).toEqual({
      mine: 'from the planner',
      all: 1,
    });
    const q = await stream.nextState('GET');
    expect(q).toMatchObject({ taskId: a.taskId, attempt: 1, token: a.token, key: 'topic' });
  });

  it('loses a compare-and-swap to a write made since its read, with the revision that won', async () => {
    const read = gate();
    const written = gate<number>();
    let err: unknown;
    const { fake, result } = await runOnce(async (ctx) => {
      const v = await ctx.state.get<number>('budget');
      read.open(undefined);
      await written.promise;
      err = await caught(ctx.state.cas('budget', (v?.value ?? 0) + 1, v?.modRevision ?? 0));
      return null;
    });
    fake.state.put(WF, 'budget', 10);
    await read.promise;
    const theirs = fake.state.put(WF, 'budget', 11);
    written.open(theirs);
    await result;
    expect(err).toBeInstanceOf(ConflictError);
    expect((err as ConflictError).actualRevision).toBe(theirs);
    expect(fake.state.get(WF, 'budget')?.valueJson).toBe('11');
  });

  it('refuses a value that is not JSON or is too large before sending it', async () => {
    let errs: unknown[] = [];
    const { stream, result } = await runOnce(async (ctx) => {
      errs = [
        await caught(ctx.state.put('k', undefined as unknown as JsonValue)),
        await caught(ctx.state.put('k', 'x'.repeat(1024 * 1024 + 1))),
      ];
      return null;
    });
    await result;
    expect(errs[0]).toBeInstanceOf(TypeError);
    expect(String(errs[0])).toContain('"k"');
    expect(errs[1]).toBeInstanceOf(RangeError);
    expect(String(errs[1])).toContain('the limit is 1048576');
    expect(stream.requests('PUT')).toEqual([]);
  });

  it('is refused with StatePermissionError once the attempt is no longer the agent’s', async () => {
    const claimed = gate();
    const revoked = gate();
    const errs: unknown[] = [];
    const { fake, a, result } = await runOnce(async (ctx) => {
      await ctx.state.put('k', 1);
      claimed.open(undefined);
      await revoked.promise;
      errs.push(await caught(ctx.state.get('k')), await caught(ctx.state.put('k', 2)), await caught(ctx.lock('db')));
      return null;
    });
    await claimed.promise;
    fake.revoke(a.taskId as string);
    revoked.open(undefined);
    await result;
    for (const e of errs) expect(e).toBeInstanceOf(StatePermissionError);
    expect(String(errs[0])).toContain('UNKNOWN_TASK');
    expect(fake.state.get(WF, 'k')?.valueJson).toBe('1');
  });

  it('refuses a write fenced by another workflow’s lock with StatePermissionError', async () => {
    let err: unknown;
    const { fake, result } = await runOnce(async (ctx) => {
      err = await caught(
        ctx.state.put('k', 1, { fences: [{ key: 'locks/workflow/team-a/other/db/7001', createRevision: 2 }] }),
      );
      return null;
    });
    await result;
    expect(err).toBeInstanceOf(StatePermissionError);
    expect(fake.state.get(WF, 'k')).toBeUndefined();
  });

  it('fails with StateUnavailableError, and does not retry, when the stream closes with a request outstanding', async () => {
    const failed = gate();
    let err: unknown;
    let after: unknown = 'not read';
    const { agent, fake, stream } = await rig({
      run: async (ctx) => {
        err = await caught(ctx.state.put('k', 'maybe'));
        failed.open(undefined);
        // Nothing was retried behind the handler's back: it decides, and a read works on the next stream.
        after = await ctx.state.get('k');
        return null;
      },
    });
    fake.withhold = (m) => 'valueJson' in m && m.op === 'PUT';
    const a = assign('run');
    stream.send({ assign: a });
    await stream.nextState('PUT');
    stream.end();
    await failed.promise;
    expect(err).toBeInstanceOf(StateUnavailableError);
    expect(String(err)).toContain('outcome is unknown');
    fake.withhold = undefined;
    const s2 = await register(fake, agent);
    expect((await s2.result(a.taskId as string)).outcome).toBe('outputJson');
    expect(after).toBeUndefined();
    expect(s2.requests('PUT')).toEqual([]);
    expect(s2.requests('GET')).toHaveLength(1);
    expect(fake.state.get(WF, 'k')).toBeUndefined();
  });

  it('waits for a registered stream when the agent is disconnected, then sends the request', async () => {
    const disconnected = gate();
    let got: unknown;
    const { agent, fake, stream, a } = await runOnce(async (ctx) => {
      await disconnected.promise;
      got = await ctx.state.get('k');
      return null;
    });
    fake.state.put(WF, 'k', 'v');
    const gone = once(agent, 'disconnected');
    stream.end();
    await gone;
    disconnected.open(undefined);
    const s2 = await register(fake, agent);
    const r = await s2.result(a.taskId as string);
    expect(r.error).toBeUndefined();
    expect(s2.requests('GET')).toHaveLength(1);
    expect(got).toMatchObject({ key: 'k', value: 'v' });
    expect(stream.requests('GET')).toEqual([]);
  });
});

describe('ctx.state.watch', () => {
  interface Seen {
    type: string;
    key: string;
    json?: JsonValue;
    modRevision: number;
  }

  /** A handler that watches `notes/` from now until `stop` opens, recording events and resyncs. */
  function watcher(stop: Promise<unknown>, close = true) {
    const events: Seen[] = [];
    const resyncs: { keys: string[]; revision: number }[] = [];
    const watching = gate();
    const handler: Handler = async (ctx: TaskContext) => {
      const { revision } = await ctx.state.list('notes/');
      const w = await ctx.state.watch(
        'notes/',
        revision + 1,
        (e) => events.push({ type: e.type, key: e.key, json: e.json, modRevision: e.modRevision }),
        (items, rev) => resyncs.push({ keys: items.map((i) => i.key), revision: rev }),
      );
      watching.open(undefined);
      await stop;
      if (close) await w.close();
      return null;
    };
    return { events, resyncs, watching, handler };
  }

  it('delivers changes under the prefix, and after a reconnect resumes from the last revision it saw', async () => {
    const stop = gate();
    const w = watcher(stop.promise);
    const { agent, fake, stream, a } = await runOnce(w.handler);
    await w.watching.promise;
    const first = await stream.nextState('WATCH');
    expect(first).toMatchObject({ taskId: a.taskId, token: a.token, key: 'notes/' });

    const ra = fake.state.put(WF, 'notes/a', 1);
    fake.state.put(WF, 'elsewhere', 'not watched');
    await until(() => w.events.length === 1, 'the first event');

    stream.end();
    await stream.ended;
    // Missed while away: must arrive once, in order, after the reconnect.
    const rb = fake.state.put(WF, 'notes/b', 2);
    const rdel = fake.state.remove(WF, 'notes/a') ? fake.state.revision : 0;

    const s2 = await register(fake, agent);
    const resumed = await s2.nextState('WATCH');
    expect(resumed).toMatchObject({ id: first.id, key: 'notes/', fromRevision: ra + 1 });
    await until(() => w.events.length === 3, 'the missed events');
    const rc = fake.state.put(WF, 'notes/c', 3);
    await until(() => w.events.length === 4, 'a live event on the new stream');

    expect(w.events).toEqual([
      { type: 'put', key: 'notes/a', json: 1, modRevision: ra },
      { type: 'put', key: 'notes/b', json: 2, modRevision: rb },
      expect.objectContaining({ type: 'delete', key: 'notes/a', modRevision: rdel }),
      { type: 'put', key: 'notes/c', json: 3, modRevision: rc },
    ]);
    expect(w.resyncs).toEqual([]);
    stop.open(undefined);
    await s2.result(a.taskId as string);
  });

  it('hands over the whole current state when the history it needs was compacted while it was away', async () => {
    const stop = gate();
    const w = watcher(stop.promise);
    const { agent, fake, stream, a } = await runOnce(w.handler);
    await w.watching.promise;
    fake.state.put(WF, 'notes/a', 1);
    await until(() => w.events.length === 1, 'the first event');
    stream.end();
    await stream.ended;
    fake.state.put(WF, 'notes/b', 2);
    fake.state.compact();

    const s2 = await register(fake, agent);
    await until(() => w.resyncs.length === 1, 'the resync');
    expect(w.resyncs[0]).toEqual({ keys: ['notes/a', 'notes/b'], revision: fake.state.revision });
    const rc = fake.state.put(WF, 'notes/c', 3);
    await until(() => w.events.length === 2, 'events after the resync');
    expect(w.events[1]).toMatchObject({ key: 'notes/c', modRevision: rc });

    // The next resume starts after what the resync and the events covered.
    s2.end();
    await s2.ended;
    const s3 = await register(fake, agent);
    expect((await s3.nextState('WATCH')).fromRevision).toBe(rc + 1);
    stop.open(undefined);
    await s3.result(a.taskId as string);
  });

  it('stops on close(), telling the dispatcher with UNWATCH', async () => {
    const stop = gate();
    const w = watcher(stop.promise);
    const { fake, stream, a, result } = await runOnce(w.handler);
    await w.watching.promise;
    const watch = await stream.nextState('WATCH');
    stop.open(undefined);
    await result;
    expect(await stream.nextState('UNWATCH')).toMatchObject({ taskId: a.taskId, expectedRevision: watch.id });
    expect(fake.state.watchCount).toBe(0);
    fake.state.put(WF, 'notes/late', 1);
    await roundTrip(stream);
    expect(w.events).toEqual([]);
  });

  it('is neither resumed nor called back when watch() itself failed (the stream closed under it)', async () => {
    const failed = gate();
    const finish = gate();
    const events: unknown[] = [];
    let err: unknown;
    const { agent, fake, stream } = await rig({
      run: async (ctx) => {
        err = await caught(
          ctx.state.watch(
            'notes/',
            1,
            (e) => events.push(e),
            (items) => events.push(items),
          ),
        );
        failed.open(undefined);
        await finish.promise;
        return null;
      },
    });
    fake.withhold = (m) => 'valueJson' in m && m.op === 'WATCH';
    const a = assign('run');
    stream.send({ assign: a });
    await stream.nextState('WATCH');
    stream.end();
    await failed.promise;
    expect(err).toBeInstanceOf(StateUnavailableError);
    fake.withhold = undefined;
    const s2 = await register(fake, agent);
    fake.state.put(WF, 'notes/x', 1);
    await roundTrip(s2);
    finish.open(undefined);
    await s2.result(a.taskId as string);
    expect(s2.requests('WATCH')).toEqual([]);
    expect(events).toEqual([]);
  });

  it('is not resumed after a reconnect once its attempt has ended, even if never closed', async () => {
    const stop = gate();
    const w = watcher(stop.promise, false);
    const { agent, fake, stream, result } = await runOnce(w.handler);
    await w.watching.promise;
    stop.open(undefined);
    await result;
    stream.end();
    const s2 = await register(fake, agent);
    await roundTrip(s2);
    expect(s2.requests('WATCH')).toEqual([]);
  });
});

describe('ctx.lock', () => {
  it('acquires a lock of the workflow, fences writes with it, and releases it', async () => {
    const holding = gate();
    const go = gate();
    const seen: Record<string, unknown> = {};
    const { fake, stream, a, result } = await runOnce(async (ctx) => {
      const held = await ctx.lock('db');
      seen.held = held;
      holding.open(undefined);
      await go.promise;
      seen.fenced = await ctx.state.put('counter', 1, { fences: [held.fence] });
      await held.release();
      seen.afterRelease = await caught(ctx.state.put('counter', 2, { fences: [held.fence] }));
      return null;
    });
    await holding.promise;
    const acquire = await stream.nextLock('ACQUIRE');
    expect(acquire).toMatchObject({ taskId: a.taskId, attempt: 1, token: a.token, name: 'db', timeoutMs: 0 });
    const holder = fake.state.holder(WF, 'db');
    expect(holder?.leaseId).toBe(stream.leaseId);
    expect(seen.held).toMatchObject({
      key: holder?.key,
      token: holder?.token,
      fence: { key: holder?.key, createRevision: holder?.token },
    });
    expect(holder?.key).toMatch(/^locks\/workflow\/team-a\/wf\/db\//);
    go.open(undefined);
    await result;
    expect(typeof seen.fenced).toBe('number');
    expect(await stream.nextLock('RELEASE')).toMatchObject({ lockToken: holder?.token });
    expect(fake.state.holder(WF, 'db')).toBeUndefined();
    expect(seen.afterRelease).toBeInstanceOf(FencedError);
    expect(fake.state.get(WF, 'counter')?.valueJson).toBe('1');
  });

  it('waits while someone else holds it and gets it when they release', async () => {
    const { fake, stream, result } = await runOnce(async (ctx) => (await ctx.lock('db')).token);
    const other = fake.state.hold(WF, 'db', '9999');
    await stream.nextLock('ACQUIRE');
    expect(fake.state.waiting(WF, 'db')).toBe(1);
    fake.state.free(WF, 'db');
    const token = JSON.parse((await result).outputJson as string) as number;
    expect(token).toBeGreaterThan(other.token);
  });

  it('gives up with LockTimeoutError after timeoutMs', async () => {
    let err: unknown;
    const { fake, stream, result } = await runOnce(async (ctx) => {
      err = await caught(ctx.lock('db', { timeoutMs: 100 }));
      return null;
    });
    fake.state.hold(WF, 'db', '9999');
    const acquire = await stream.nextLock('ACQUIRE');
    expect(acquire.timeoutMs).toBeGreaterThan(0);
    expect(acquire.timeoutMs).toBeLessThanOrEqual(100);
    await result;
    expect(err).toBeInstanceOf(LockTimeoutError);
    expect(fake.state.waiting(WF, 'db')).toBe(0);
  });

  it('stops waiting at the dispatcher (CANCEL) when the attempt is aborted', async () => {
    let err: unknown;
    const { fake, stream, a, result } = await runOnce(async (ctx) => {
      err = await caught(ctx.lock('db'));
      return null;
    });
    fake.state.hold(WF, 'db', '9999');
    const acquire = await stream.nextLock('ACQUIRE');
    stream.send({ cancel: { taskId: a.taskId, attempt: 1, reason: 'workflow deleted' } });
    expect(await stream.nextLock('CANCEL')).toMatchObject({ taskId: a.taskId, lockToken: acquire.id });
    expect((await result).error).toMatchObject({ code: 'CANCELLED' });
    expect(err).toBeInstanceOf(StateError);
    expect(err).not.toBeInstanceOf(LockTimeoutError);
    expect(fake.state.waiting(WF, 'db')).toBe(0);
    expect(fake.state.holder(WF, 'db')?.leaseId).toBe('9999');
  });

  it('fails with StateUnavailableError when the stream closes while it waits', async () => {
    let err: unknown;
    const done = gate();
    const { fake, stream } = await runOnce(async (ctx) => {
      err = await caught(ctx.lock('db'));
      done.open(undefined);
      return null;
    });
    fake.state.hold(WF, 'db', '9999');
    await stream.nextLock('ACQUIRE');
    stream.end();
    await done.promise;
    expect(err).toBeInstanceOf(StateUnavailableError);
  });

  it('queues two attempts of this agent for the same name here, sending one ACQUIRE at a time', async () => {
    const firstHolds = gate();
    const releaseFirst = gate();
    const order: string[] = [];
    const { stream } = await rig({
      locker: async (ctx) => {
        const { name } = ctx.input as { name: string };
        const held = await ctx.lock('db');
        order.push(`${name} holds`);
        if (name === 'first') {
          firstHolds.open(undefined);
          await releaseFirst.promise;
          order.push('first releases');
          await held.release();
        }
        return null;
      },
    });
    const first = assign('locker', { name: 'first' });
    const second = assign('locker', { name: 'second' });
    stream.send({ assign: first });
    await firstHolds.promise;
    stream.send({ assign: second });
    await roundTrip(stream);
    // One more turn of the event loop for a lock that wrongly did not wait.
    await new Promise((resolve) => setImmediate(resolve));
    expect(order).toEqual(['first holds']);
    // etcd would let the same lease "take" it twice: the agent must not ask.
    expect(stream.requests('ACQUIRE')).toHaveLength(1);
    releaseFirst.open(undefined);
    await stream.result(second.taskId as string);
    expect(order).toEqual(['first holds', 'first releases', 'second holds']);
    const locks = stream.messages.filter((m) => m.lock).map((m) => `${m.lock?.op} ${m.lock?.taskId}`);
    expect(locks.slice(0, 3)).toEqual([
      `ACQUIRE ${first.taskId}`,
      `RELEASE ${first.taskId}`,
      `ACQUIRE ${second.taskId}`,
    ]);
  });

  it('times out in the local queue without asking the dispatcher, and does not share it across workflows', async () => {
    const firstHolds = gate();
    const releaseFirst = gate();
    const errs = new Map<string, unknown>();
    const { stream } = await rig({
      locker: async (ctx) => {
        const { name } = ctx.input as { name: string };
        if (name === 'first') {
          const held = await ctx.lock('db');
          firstHolds.open(undefined);
          await releaseFirst.promise;
          await held.release();
          return null;
        }
        errs.set(name, await caught(ctx.lock('db', { timeoutMs: 50 })));
        return null;
      },
    });
    const first = assign('locker', { name: 'first' });
    stream.send({ assign: first });
    await firstHolds.promise;
    const same = assign('locker', { name: 'same' });
    const otherWf = assign('locker', { name: 'other' }, { workflow: 'wf2', taskId: 'wf2/t' });
    stream.send({ assign: same });
    stream.send({ assign: otherWf });
    await stream.result(same.taskId as string);
    await stream.result(otherWf.taskId as string);
    expect(errs.get('same')).toBeInstanceOf(LockTimeoutError);
    // Another workflow's "db" is another lock: it was asked for and granted.
    expect(errs.get('other')).toBeInstanceOf(Error);
    expect(String(errs.get('other'))).toContain('expected a rejection');
    expect(stream.requests('ACQUIRE').map((r) => r.taskId)).toEqual([first.taskId, otherWf.taskId]);
    releaseFirst.open(undefined);
    await stream.result(first.taskId as string);
  });

  it('releases what the handler still holds when its attempt ends', async () => {
    const { fake, stream, result } = await runOnce(async (ctx) => {
      await ctx.lock('db');
      return 'kept it';
    });
    await result;
    expect(await stream.nextLock('RELEASE')).toMatchObject({ lockToken: expect.any(Number) });
    await until(() => fake.state.holder(WF, 'db') === undefined, 'the lock to be free');
  });
});
