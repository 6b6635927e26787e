import { describe, expect, it } from 'vitest';
import type { AgentPool } from '../../../src/api/agentpool.ts';
import type { Condition } from '../../../src/operator/kube/conditions.ts';
import { handlersServed } from '../../../src/operator/pool/controller.ts';
import { trueSince, workflowConditions } from '../../../src/operator/workflow/conditions.ts';

// A Workflow's conditions have one meaning each, so `kubectl wait
// --for=condition=Succeeded` tells success from failure; and a pool says
// which handler its connected agents fail to register.

const T0 = new Date('2026-01-01T00:00:00Z');
const T1 = new Date('2026-01-01T00:01:00Z');
const byType = (list: Condition[]) => Object.fromEntries(list.map((c) => [c.type, [c.status, c.reason]]));

describe('workflowConditions', () => {
  it.each([
    [
      { phase: 'Running', message: '1/3 tasks done' } as const,
      { Running: ['True', 'TasksRunning'], Succeeded: ['False', 'InProgress'], Failed: ['False', 'NoFailure'] },
    ],
    [
      { phase: 'Succeeded', message: 'every task succeeded' } as const,
      { Running: ['False', 'Succeeded'], Succeeded: ['True', 'AllTasksSucceeded'], Failed: ['False', 'NoFailure'] },
    ],
    [
      { phase: 'Failed', reason: 'Timeout', message: 'the workflow exceeded its timeout of 5s' } as const,
      { Running: ['False', 'Failed'], Succeeded: ['False', 'Timeout'], Failed: ['True', 'Timeout'] },
    ],
    [
      { phase: 'Cancelled', reason: 'Cancelled', message: 'cancelled' } as const,
      { Running: ['False', 'Cancelled'], Succeeded: ['False', 'Cancelled'], Failed: ['True', 'Cancelled'] },
    ],
    [
      { phase: 'Suspended', message: 'spec.suspend is true' } as const,
      { Running: ['False', 'Suspended'], Suspended: ['True', 'Suspended'], Succeeded: ['False', 'InProgress'] },
    ],
  ])('%o', (outcome, expected) => {
    const list = workflowConditions([], { outcome, generation: 3 }, T0);
    expect(byType(list)).toMatchObject(expected);
    expect(list.every((c) => c.observedGeneration === 3)).toBe(true);
  });

  it('drops the old Completed condition and keeps transition times while a status holds', () => {
    const prev: Condition[] = [
      { type: 'Completed', status: 'False', reason: 'InProgress', message: '', lastTransitionTime: T0.toISOString() },
    ];
    const waiting = { reason: 'NoAgentConnected' as const, message: 'waiting: no agent' };
    const first = workflowConditions(prev, { outcome: { phase: 'Running', message: '' }, waiting }, T0);
    expect(first.some((c) => c.type === 'Completed')).toBe(false);
    expect(trueSince(first, 'Waiting')).toBe(T0.getTime());
    // Still waiting (another reason): the clock of the waiting deadline does not restart.
    const later = workflowConditions(
      first,
      { outcome: { phase: 'Running', message: '' }, waiting: { ...waiting, reason: 'HandlerNotServed' } },
      T1,
    );
    expect(trueSince(later, 'Waiting')).toBe(T0.getTime());
    const done = workflowConditions(later, { outcome: { phase: 'Succeeded', message: '' } }, T1);
    expect(trueSince(done, 'Waiting')).toBeUndefined();
    expect(byType(done).Waiting).toEqual(['False', 'NotWaiting']);
  });

  it('leaves SpecApplied alone unless told', () => {
    const edited = workflowConditions(
      [],
      { outcome: { phase: 'Running', message: '' }, specApplied: { ok: false, reason: 'RunStarted', message: 'x' } },
      T0,
    );
    expect(byType(edited).SpecApplied).toEqual(['False', 'RunStarted']);
    const next = workflowConditions(edited, { outcome: { phase: 'Running', message: '' } }, T1);
    expect(byType(next).SpecApplied).toEqual(['False', 'RunStarted']);
  });
});

describe('handlersServed (AgentPool condition)', () => {
  const pool = (handlers?: string[]) =>
    ({ spec: { agent: { capacity: 1, ...(handlers && { handlers }) } } }) as AgentPool;

  it('is Unknown with no agent connected', () => {
    expect(handlersServed(pool(['a']), { connectedAgents: 0, handlers: [], wanted: ['a'] })).toMatchObject({
      status: 'Unknown',
      reason: 'NoAgentConnected',
    });
  });

  it('is True when every listed and wanted handler is registered', () => {
    expect(handlersServed(pool(['a', 'b']), { connectedAgents: 2, handlers: ['a', 'b'], wanted: ['a'] })).toMatchObject(
      {
        status: 'True',
      },
    );
  });

  it('names a listed handler no agent registers, and one only queued tasks want', () => {
    const c = handlersServed(pool(['a', 'b']), { connectedAgents: 2, handlers: ['a'], wanted: ['b', 'z'] });
    expect(c).toMatchObject({ status: 'False', reason: 'HandlerNotRegistered' });
    expect(c.message).toBe(
      'no connected agent registers handler "b" (listed in spec.agent.handlers) (queued tasks wait for it), "z" (queued tasks wait for it); the 2 connected agent(s) serve "a"',
    );
  });
});
