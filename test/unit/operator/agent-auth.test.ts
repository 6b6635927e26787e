import type { V1Pod } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import type { AgentPool } from '../../../src/api/agentpool.ts';
import { AgentAuthError, type AgentIdentity } from '../../../src/dispatcher/auth.ts';
import { silentLogger } from '../../../src/lib/log.ts';
import { jwtExpiry, KubeAgentAuth } from '../../../src/operator/agent-auth.ts';
import type { KubeClient } from '../../../src/operator/kube/client.ts';
import type { EventRecorder } from '../../../src/operator/kube/events.ts';

// Which refusals become Warning Events, and on which pool: only the pool's owner should hear of it,
// and nobody may write Events into a namespace by naming it. (The TokenReview / SubjectAccessReview
// paths run against the real API server in test/integration/dispatcher/trust.test.ts.)

const poolObj = (namespace: string, name: string) =>
  ({ metadata: { namespace, name, uid: `${namespace}-${name}` }, spec: { agent: { capacity: 2 } } }) as AgentPool;
const pods: Record<string, V1Pod> = {
  'a/p-0': {
    metadata: {
      namespace: 'a',
      name: 'p-0',
      uid: 'u',
      ownerReferences: [
        { apiVersion: 'agentflow.io/v1alpha1', kind: 'AgentPool', name: 'p', uid: 'x', controller: true },
      ],
    },
  },
};
const pools: Record<string, AgentPool> = {
  'a/p': poolObj('a', 'p'),
  'b/victim': poolObj('b', 'victim'),
  'a/q': poolObj('a', 'q'),
};

function auth() {
  const recorded: { pool: string; reason: string; message: string }[] = [];
  const events = {
    record: (obj: AgentPool, _type: string, reason: string, message: string) =>
      recorded.push({ pool: `${obj.metadata?.namespace}/${obj.metadata?.name}`, reason, message }),
  } as unknown as EventRecorder;
  const a = new KubeAgentAuth({
    client: {} as KubeClient,
    pod: (ns, n) => pods[`${ns}/${n}`],
    pool: (ns, n) => pools[`${ns}/${n}`],
    events,
    logger: silentLogger,
  });
  return { a, recorded };
}

const podAgent: AgentIdentity = {
  username: 'system:serviceaccount:a:default',
  groups: [],
  serviceAccountNamespace: 'a',
  pod: { namespace: 'a', name: 'p-0', uid: 'u' },
  expiresAt: Date.now() + 60_000,
};
const outsider: AgentIdentity = {
  username: 'system:serviceaccount:a:laptop',
  groups: [],
  serviceAccountNamespace: 'a',
  expiresAt: Date.now() + 60_000,
};
const claim = (namespace: string, pool: string) => ({ namespace, pool, agentId: 'x', capacity: 1, handlers: ['h'] });

describe('refusal events', () => {
  it("go on a pod agent's own pool, whatever pool it claimed", () => {
    const { a, recorded } = auth();
    a.refused(podAgent, claim('b', 'victim'), new AgentAuthError('NamespaceMismatch', 'no'));
    expect(recorded).toEqual([{ pool: 'a/p', reason: 'AgentNamespaceMismatch', message: 'Refused pod p-0: no' }]);
  });

  it("go on the named pool of an outside agent's own namespace, never on another namespace's pool", () => {
    const { a, recorded } = auth();
    a.refused(outsider, claim('a', 'q'), new AgentAuthError('NotAuthorized', 'no grant'));
    a.refused(outsider, claim('b', 'victim'), new AgentAuthError('NotAuthorized', 'no grant'));
    expect(recorded).toEqual([
      { pool: 'a/q', reason: 'AgentNotAuthorized', message: 'Refused system:serviceaccount:a:laptop: no grant' },
    ]);
  });

  it('are never written for an unauthenticated caller', () => {
    const { a, recorded } = auth();
    a.refused(undefined, claim('a', 'p'), new AgentAuthError('InvalidToken', 'bad token'));
    expect(recorded).toEqual([]);
  });
});

describe('jwtExpiry', () => {
  const jwt = (payload: unknown) => `h.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.s`;
  it('reads exp in milliseconds, and nothing from tokens that carry none or are not JWTs', () => {
    expect(jwtExpiry(jwt({ exp: 1_800_000_000 }))).toBe(1_800_000_000_000);
    expect(jwtExpiry(jwt({ sub: 'x' }))).toBeUndefined();
    expect(jwtExpiry(jwt({ exp: 'soon' }))).toBeUndefined();
    expect(jwtExpiry('opaque-token')).toBeUndefined();
    expect(jwtExpiry('a.%%%.b')).toBeUndefined();
  });
});
