import { describe, expect, it } from 'vitest';
import { type AgentAuth, AgentAuthError, type AgentIdentity } from '../../../src/dispatcher/auth.ts';
import { type CredentialHolder, StreamCredentials } from '../../../src/dispatcher/credentials.ts';
import { silentLogger } from '../../../src/lib/log.ts';

// The credential rules of a stream with a stand-in verifier (the real one, TokenReview, is exercised
// in test/integration/dispatcher/trust.test.ts): bearer metadata, expiry, Reauth of the same identity.

const who = (name: string, expiresInMs: number, uid = 'u1'): AgentIdentity => ({
  username: `system:serviceaccount:ns:${name}`,
  groups: [],
  serviceAccountNamespace: 'ns',
  pod: { namespace: 'ns', name: 'p-0', uid },
  expiresAt: Date.now() + expiresInMs,
});

function rig(tokens: Record<string, () => AgentIdentity>) {
  const refused: string[] = [];
  const auth: AgentAuth = {
    authenticate: async (t) => {
      const f = tokens[t];
      if (!f) throw new AgentAuthError('InvalidToken', 'not accepted');
      return f();
    },
    authorize: async () => {
      throw new Error('not used');
    },
    refused: (_i, _c, e) => refused.push(e.reason),
  };
  const counters = { unauthenticated: 0, permissionDenied: 0, reauthenticated: 0 };
  return { creds: new StreamCredentials(auth, counters), counters, refused };
}

function holder(identity: AgentIdentity): CredentialHolder & { ended?: [string, string] } {
  const h: CredentialHolder & { ended?: [string, string] } = {
    identity,
    closed: false,
    log: silentLogger,
    closeWith(code, details) {
      h.ended = [code, details];
      (h as { closed: boolean }).closed = true;
    },
  };
  return h;
}

describe('StreamCredentials', () => {
  it('takes the identity from "authorization: Bearer"; none, a bad one or a failing verifier are typed refusals', async () => {
    const { creds } = rig({ good: () => who('a', 60_000) });
    await expect(creds.authenticate(['Bearer good'])).resolves.toMatchObject({
      username: 'system:serviceaccount:ns:a',
    });
    await expect(creds.authenticate([])).rejects.toMatchObject({ reason: 'NoToken', status: 'UNAUTHENTICATED' });
    await expect(creds.authenticate(['Basic Z29vZA=='])).rejects.toMatchObject({ reason: 'NoToken' });
    await expect(creds.authenticate(['Bearer nope'])).rejects.toMatchObject({ reason: 'InvalidToken' });
    const down = new StreamCredentials(
      {
        authenticate: async () => {
          throw new Error('connect ECONNREFUSED');
        },
        authorize: async () => {
          throw new Error('x');
        },
      },
      { unauthenticated: 0, permissionDenied: 0, reauthenticated: 0 },
    );
    await expect(down.authenticate(['Bearer x'])).rejects.toMatchObject({
      reason: 'AuthUnavailable',
      status: 'UNAVAILABLE',
    });
  });

  it('ends a stream UNAUTHENTICATED at its token expiry', async () => {
    const { creds, counters } = rig({});
    const h = holder(who('a', 60));
    creds.watchExpiry(h);
    expect(h.ended).toBeUndefined();
    await new Promise((r) => setTimeout(r, 150));
    expect(h.ended?.[0]).toBe('UNAUTHENTICATED');
    expect(counters.unauthenticated).toBe(1);
  });

  it('a Reauth of the same identity pushes the expiry back; the stream lives on', async () => {
    const { creds, counters } = rig({ fresh: () => who('a', 60_000) });
    const h = holder(who('a', 80));
    creds.watchExpiry(h);
    await creds.reauth(h, 'fresh');
    await new Promise((r) => setTimeout(r, 200));
    expect(h.ended).toBeUndefined();
    expect(counters.reauthenticated).toBe(1);
  });

  it('a Reauth for another user or another pod uid, or a bad token, ends the stream and is reported', async () => {
    const { creds, refused } = rig({ other: () => who('b', 60_000), sameNameNewPod: () => who('a', 60_000, 'u2') });
    const h1 = holder(who('a', 60_000));
    await creds.reauth(h1, 'other');
    expect(h1.ended).toEqual([
      'PERMISSION_DENIED',
      'Reauth: the token is for system:serviceaccount:ns:b, not system:serviceaccount:ns:a',
    ]);
    const h2 = holder(who('a', 60_000));
    await creds.reauth(h2, 'sameNameNewPod');
    expect(h2.ended?.[0]).toBe('PERMISSION_DENIED');
    const h3 = holder(who('a', 60_000));
    await creds.reauth(h3, 'forged');
    expect(h3.ended?.[0]).toBe('UNAUTHENTICATED');
    expect(refused).toEqual(['IdentityChanged', 'IdentityChanged', 'InvalidToken']);
  });
});
