import { describe, expect, it } from 'vitest';
import { parsePoolRef, sharedWith, shareWeights } from '../../../src/api/sharing.ts';

// How a Workflow names another namespace's AgentPool, and which namespaces a pool's spec.sharing
// serves with what weight: what the controller, the engine and the dispatcher all read.

const seg63 = 'a'.repeat(63);
const seg64 = 'a'.repeat(64);

describe('parsePoolRef', () => {
  it('resolves a bare name in the workflow’s namespace', () => {
    expect(parsePoolRef('researchers', 'team-a')).toEqual({ namespace: 'team-a', name: 'researchers' });
  });

  it('reads namespace/name as another namespace’s pool, and the workflow’s own namespace named in full', () => {
    expect(parsePoolRef('shared/gpu', 'team-a')).toEqual({ namespace: 'shared', name: 'gpu' });
    expect(parsePoolRef('team-a/gpu', 'team-a')).toEqual({ namespace: 'team-a', name: 'gpu' });
  });

  it('takes 63-character namespace and name (the longest DNS labels, 127 characters in all)', () => {
    expect(parsePoolRef(`${seg63}/${seg63}`, 'ns')).toEqual({ namespace: seg63, name: seg63 });
  });

  it.each([
    ['three parts', 'a/b/c'],
    ['upper case', 'A'],
    ['upper case in the namespace', 'A/b'],
    ['a leading dash', '-a'],
    ['a trailing dash', 'a-'],
    ['a dot', 'a.b'],
    ['an empty string', ''],
    ['a lone slash', '/'],
    ['an empty namespace', '/p'],
    ['an empty name', 'ns/'],
    ['a 64-character namespace', `${seg64}/p`],
    ['a 64-character name after a namespace', `ns/${seg64}`],
  ])('refuses %s (%j)', (_why, ref) => {
    expect(parsePoolRef(ref, 'ns')).toBeUndefined();
  });

  it('refuses a bare 64-character name, as it does one after a namespace', () => {
    expect(parsePoolRef(seg64, 'ns')).toBeUndefined();
  });
});

describe('shareWeights', () => {
  it('serves only the pool’s own namespace, with weight 1, when nothing is shared', () => {
    expect(shareWeights('pool-ns', undefined)).toEqual(new Map([['pool-ns', 1]]));
    expect(shareWeights('pool-ns', {})).toEqual(new Map([['pool-ns', 1]]));
    expect(shareWeights('pool-ns', { namespaces: [] })).toEqual(new Map([['pool-ns', 1]]));
  });

  it('gives the own namespace spec.sharing.weight, and each listed namespace its weight or 1', () => {
    expect(
      shareWeights('pool-ns', {
        weight: 5,
        namespaces: [{ name: 'team-a', weight: 3 }, { name: 'team-b' }],
      }),
    ).toEqual(
      new Map([
        ['pool-ns', 5],
        ['team-a', 3],
        ['team-b', 1],
      ]),
    );
    expect(shareWeights('pool-ns', { namespaces: [{ name: 'team-a', weight: 7 }] })).toEqual(
      new Map([
        ['pool-ns', 1],
        ['team-a', 7],
      ]),
    );
  });

  it('keeps the weight the own namespace is listed with, unless spec.sharing.weight is set', () => {
    expect(shareWeights('pool-ns', { namespaces: [{ name: 'pool-ns', weight: 4 }, { name: 'team-a' }] })).toEqual(
      new Map([
        ['pool-ns', 4],
        ['team-a', 1],
      ]),
    );
    expect(shareWeights('pool-ns', { weight: 2, namespaces: [{ name: 'pool-ns', weight: 4 }] })).toEqual(
      new Map([['pool-ns', 2]]),
    );
  });
});

describe('sharedWith', () => {
  const sharing = { namespaces: [{ name: 'team-a', weight: 3 }, { name: 'team-b' }] };

  it('always serves the pool’s own namespace', () => {
    expect(sharedWith('pool-ns', undefined, 'pool-ns')).toBe(true);
    expect(sharedWith('pool-ns', sharing, 'pool-ns')).toBe(true);
  });

  it('serves the listed namespaces and no other', () => {
    expect(sharedWith('pool-ns', sharing, 'team-a')).toBe(true);
    expect(sharedWith('pool-ns', sharing, 'team-b')).toBe(true);
    expect(sharedWith('pool-ns', sharing, 'team-c')).toBe(false);
    expect(sharedWith('pool-ns', undefined, 'team-a')).toBe(false);
    // A weight for the own namespace shares the pool with nobody.
    expect(sharedWith('pool-ns', { weight: 3 }, 'team-a')).toBe(false);
  });
});
