// The state layer's contract with a faulty etcd: a write is applied at most
// once, an unknown outcome is reported as such (never as a conflict), reads
// and unsent writes ride out a short outage, and nothing locks the client out
// once etcd is back. Runs against a private etcd it can freeze and crash.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AuditLog,
  ConflictError,
  EtcdUnavailableError,
  OutcomeUnknownError,
  SharedState,
  StateStore,
} from '../../../src/state/index.ts';
import { EtcdServer } from '../../cluster/etcd.ts';

const dir = mkdtempSync(join(tmpdir(), 'agentflow-transport-'));
const etcd = new EtcdServer({ dir, name: 'transport' });
const stores: StateStore[] = [];
const open = (callTimeoutMs = 600, retryBudgetMs?: number) => {
  const s = new StateStore({
    endpoints: [etcd.endpoint],
    prefix: `/t-${stores.length}`,
    callTimeoutMs,
    ...(retryBudgetMs !== undefined && { retryBudgetMs }),
  });
  stores.push(s);
  return s;
};
const scope = { kind: 'workflow', namespace: 'ns', workflow: 'wf' } as const;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

beforeAll(async () => {
  await etcd.start();
}, 60_000);
afterAll(async () => {
  etcd.signal('SIGCONT');
  for (const s of stores) s.close();
  await etcd.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** Freezes etcd for `ms` while `during` runs (it should outlive the call timeout), then resumes it. */
async function frozen<T>(ms: number, during: () => Promise<T>): Promise<T> {
  etcd.signal('SIGSTOP');
  const resume = sleep(ms).then(() => etcd.signal('SIGCONT'));
  try {
    return await during();
  } finally {
    await resume;
  }
}

describe('etcd transport faults', () => {
  it('a put sent to a frozen etcd is reported OutcomeUnknown, not retried, and applies at most once', async () => {
    const store = open();
    const state = new SharedState(store, scope);
    await state.put('once', 'before');
    const err = await frozen(2_500, () => state.put('once', 'during').catch((e: Error) => e));
    expect(err).toBeInstanceOf(OutcomeUnknownError);
    expect((err as Error).message).toContain('may or may not have applied');
    // grpc-js cancels the timed-out call; whether etcd saw it first is unknowable, which is the point.
    // Either it never applied (version 1) or it applied once (version 2); etcd3's own retries could land it again.
    await sleep(500);
    const after = await state.get('once');
    expect([
      JSON.stringify({ value: 'before', version: 1 }),
      JSON.stringify({ value: 'during', version: 2 }),
    ]).toContain(JSON.stringify({ value: after?.value, version: after?.version }));
  });

  it('a CAS whose answer never came is OutcomeUnknown, never a ConflictError for a write that applied', async () => {
    const store = open();
    const state = new SharedState(store, scope);
    const rev = await state.put('cas', 1);
    const err = await frozen(2_500, () => state.cas('cas', 2, rev).catch((e: Error) => e));
    expect(err).not.toBeInstanceOf(ConflictError);
    expect(err).toBeInstanceOf(OutcomeUnknownError);
    await sleep(500);
    const now = await state.get<number>('cas');
    expect([JSON.stringify([1, 1]), JSON.stringify([2, 2])]).toContain(JSON.stringify([now?.value, now?.version]));
  });

  it('with etcd down, writes fail fast as EtcdUnavailable (not sent), and the first call after restart succeeds', async () => {
    const store = open(600, 300);
    const state = new SharedState(store, scope);
    await state.put('down', 'a');
    await etcd.crash();
    const errors: unknown[] = [];
    try {
      // A write racing the crash may really have been sent into the dying connection (then its outcome is
      // unknown, correctly): let a read find the connection gone first. Every write after that never leaves.
      await state.get('down').catch(() => undefined);
      for (let i = 0; i < 5; i++) errors.push(await state.put('down', `x${i}`).catch((e: Error) => e));
    } finally {
      await etcd.start();
    }
    for (const e of errors) {
      expect(e).toBeInstanceOf(EtcdUnavailableError);
      expect((e as EtcdUnavailableError).kind).toBe('unavailable');
    }
    // No circuit breaker: etcd3's default turned every call away for 5 s after such an outage.
    const started = Date.now();
    const store2 = state;
    let rev = 0;
    for (;;) {
      try {
        rev = await store2.put('down', 'b');
        break;
      } catch (e) {
        expect(e).toBeInstanceOf(EtcdUnavailableError);
        if (Date.now() - started > 3_000) throw e;
        await sleep(50);
      }
    }
    expect(Date.now() - started).toBeLessThan(3_000);
    expect(rev).toBeGreaterThan(0);
    // None of the refused writes applied.
    expect(await state.get('down')).toMatchObject({ value: 'b', version: 2 });
  });

  it('an audit append through a freeze past the call timeout records its events exactly once', async () => {
    const store = open(500, 6_000);
    const log = new AuditLog(store, 'ns', 'audit-freeze');
    await log.append([{ type: 'before' }]);
    // The first try's answer is lost; the retry must not append the same events a second time.
    const out = await frozen(2_000, () => log.append([{ type: 'one' }, { type: 'two' }]));
    expect(out.map((e) => e.type)).toEqual(['one', 'two']);
    const verdict = await log.verify();
    expect(verdict).toMatchObject({ ok: true, entries: 3 });
  });

  it('a read during a short crash-restart is retried within the budget and answers', async () => {
    const store = open(1_000, 8_000);
    const state = new SharedState(store, scope);
    await state.put('read', 'v');
    await etcd.crash();
    const restart = sleep(1_000).then(() => etcd.start());
    const got = await state.get('read').finally(() => restart);
    expect(got).toMatchObject({ value: 'v' });
  });
});
