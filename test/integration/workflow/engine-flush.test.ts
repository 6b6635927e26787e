import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { WorkflowSpec } from '../../../src/api/workflow.ts';
import type { Dispatcher } from '../../../src/dispatcher/index.ts';
import { type StateStore, WorkflowRecords } from '../../../src/state/index.ts';
import type { WorkflowEngine } from '../../../src/workflow/engine.ts';
import { testStore } from '../state/helpers.ts';
import { engineWithoutAgents } from './engine-helpers.ts';

// The engine against the real etcd, without agents: what a flush in flight means for a finished run.

let store: StateStore;
let dispatcher: Dispatcher;
let engine: WorkflowEngine;

beforeAll(() => {
  store = testStore();
  ({ dispatcher, engine } = engineWithoutAgents(store));
});

afterAll(async () => {
  await engine.stop();
  await dispatcher.stop(100);
  store.close();
});

const spec = { tasks: [{ name: 'only', pool: 'p', handler: 'work' }] } as unknown as WorkflowSpec;

describe('engine flush', () => {
  // Found by the workflow bench at 100,000 tasks: evict() dropped a finished run while its final flush
  // was writing (the flush had taken its dirty records, so it looked clean); had that flush failed, the
  // records put back on the run would never have been written.
  it('keeps a finished run in memory while a flush is writing it, and lets it go once it is saved', async () => {
    const run = await engine.ensure({ namespace: 'ns', name: 'wf', uid: 'uid-1', spec });
    run.stop('cancelled by the test');
    expect(run.finished).toBe(true);
    const flushed = engine.flush();
    expect(engine.evict('ns', 'wf')).toBe(false);
    expect(engine.get('ns', 'wf')).toBe(run);
    await flushed;
    expect(engine.evict('ns', 'wf')).toBe(true);
    expect(engine.get('ns', 'wf')).toBeUndefined();
    expect((await new WorkflowRecords(store).loadRun('ns', 'wf'))?.phase).toBe('Cancelled');
  });

  // Found by a data API test under load: a second decision on an approval, once the run had finished but
  // before it left memory, answered 503 (send again) where an evicted run's answers 409; sending again
  // could never succeed.
  it('answers a decision on a finished run still in memory NotWaiting, as on an evicted one', async () => {
    const gated = {
      tasks: [{ name: 'review', approval: { message: 'ship it?' } }],
    } as unknown as WorkflowSpec;
    const run = await engine.ensure({ namespace: 'ns', name: 'gated', uid: 'uid-2', spec: gated });
    run.stop('cancelled by the test');
    expect(run.finished).toBe(true);
    expect(engine.get('ns', 'gated')).toBe(run);
    const outcome = await engine.decide('ns', 'gated', 'review', {
      decision: 'Approve',
      user: { username: 'alice', groups: [] },
    });
    expect(outcome).toEqual({
      ok: false,
      code: 'NotWaiting',
      message: 'workflow gated is Cancelled: it waits for no decision',
    });
  });
});
