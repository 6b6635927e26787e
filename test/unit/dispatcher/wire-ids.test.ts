import { describe, expect, it } from 'vitest';
import {
  agentKey,
  agentKeyOfClaimant,
  claimantId,
  parseWireTaskId,
  poolLabel,
  poolNamespaceOf,
  wireTaskId,
} from '../../../src/dispatcher/types.ts';
import type { TaskRef } from '../../../src/state/index.ts';

// How tasks and agents are named across namespaces: a wire task id is relative to the agent's
// namespace, and a claim on another namespace's task names the agent with its namespace, so that
// same-named agents of two namespaces never pass for each other.

const own: TaskRef = { namespace: 'pool-ns', workflow: 'wf', task: 't' };
const foreign: TaskRef = { namespace: 'team-a', workflow: 'wf', task: 't' };

describe('wireTaskId', () => {
  it('is workflow/task for a task of the agent’s namespace (the default), namespace/workflow/task otherwise', () => {
    expect(wireTaskId(own)).toBe('wf/t');
    expect(wireTaskId(own, 'pool-ns')).toBe('wf/t');
    expect(wireTaskId(foreign, 'pool-ns')).toBe('team-a/wf/t');
  });
});

describe('parseWireTaskId', () => {
  it('reads workflow/task in the agent’s namespace and namespace/workflow/task as given', () => {
    expect(parseWireTaskId('pool-ns', 'wf/t')).toEqual(own);
    expect(parseWireTaskId('pool-ns', 'team-a/wf/t')).toEqual(foreign);
  });

  it.each(['', 'wf', 'wf/', '/t', '//', 'a/b/c/d', '/wf/t', 'ns//t', 'ns/wf/', 'ns/wf/t/'])('refuses %j', (id) => {
    expect(parseWireTaskId('pool-ns', id)).toBeUndefined();
  });

  it.each([
    ['its own namespace', own],
    ['another namespace', foreign],
  ])('gives back the task wireTaskId named, for a task of %s', (_why, ref) => {
    expect(parseWireTaskId('pool-ns', wireTaskId(ref, 'pool-ns'))).toEqual(ref);
  });
});

describe('claimantId and agentKeyOfClaimant', () => {
  it('names the bare agent id on its own namespace’s task, namespace/agentId on another’s', () => {
    expect(claimantId('pool-ns', 'p-0', own)).toBe('p-0');
    expect(claimantId('pool-ns', 'p-0', foreign)).toBe('pool-ns/p-0');
    // team-a's own p-0 and the shared pool's p-0 claim team-a's task under different names.
    expect(claimantId('team-a', 'p-0', foreign)).not.toBe(claimantId('pool-ns', 'p-0', foreign));
  });

  it('finds the connection of the agent a claim names', () => {
    expect(agentKeyOfClaimant(foreign, 'p-0')).toBe('team-a/p-0');
    expect(agentKeyOfClaimant(foreign, 'pool-ns/p-0')).toBe('pool-ns/p-0');
    for (const ref of [own, foreign])
      for (const ns of ['pool-ns', 'team-a'])
        expect(agentKeyOfClaimant(ref, claimantId(ns, 'p-0', ref))).toBe(agentKey(ns, 'p-0'));
  });
});

describe('poolNamespaceOf and poolLabel', () => {
  it('place a task without poolNamespace in its own namespace, and name another namespace’s pool in full', () => {
    expect(poolNamespaceOf({ ref: foreign })).toBe('team-a');
    expect(poolNamespaceOf({ ref: foreign, poolNamespace: 'pool-ns' })).toBe('pool-ns');
    expect(poolLabel({ ref: foreign, pool: 'gpu' })).toBe('gpu');
    expect(poolLabel({ ref: foreign, pool: 'gpu', poolNamespace: 'team-a' })).toBe('gpu');
    expect(poolLabel({ ref: foreign, pool: 'gpu', poolNamespace: 'pool-ns' })).toBe('pool-ns/gpu');
  });
});
