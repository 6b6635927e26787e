import { createHash } from 'node:crypto';
import type { V1Pod } from '@kubernetes/client-node';
import type { AgentPool } from '../api/agentpool.ts';
import {
  type AgentAuth,
  AgentAuthError,
  type AgentIdentity,
  type Grant,
  grantWithinPool,
  type PoolGrant,
  type RegisterClaim,
} from '../dispatcher/auth.ts';
import type { Logger } from '../lib/log.ts';
import { AGENTPOOLS, isNotFound, type KubeClient, PODS, resourcePath } from './kube/client.ts';
import type { EventRecorder } from './kube/events.ts';

/** The verb RBAC grants for an agent outside the cluster to join a pool: `connect` on agentpools. */
export const CONNECT_VERB = 'connect';
export const DEFAULT_AUDIENCE = 'agentflow';

const POD_NAME_EXTRA = 'authentication.kubernetes.io/pod-name';
const POD_UID_EXTRA = 'authentication.kubernetes.io/pod-uid';
const SA_PREFIX = 'system:serviceaccount:';

export interface KubeAgentAuthOptions {
  client: KubeClient;
  /** The audience agent tokens must carry (default "agentflow"). */
  audience?: string;
  /** The informer caches; a miss falls back to a GET (a pod created a moment ago). */
  pod(namespace: string, name: string): V1Pod | undefined;
  pool(namespace: string, name: string): AgentPool | undefined;
  events?: EventRecorder;
  logger: Logger;
  /** How long a verified token is trusted without asking again, capped by its expiry (default 5 min). */
  cacheTtlMs?: number;
  /** How long a refused token is refused without asking again: floods cost one TokenReview (default 10 s). */
  negativeTtlMs?: number;
  maxCacheEntries?: number;
}

interface TokenReviewStatus {
  authenticated?: boolean;
  error?: string;
  audiences?: string[];
  user?: { username?: string; uid?: string; groups?: string[]; extra?: Record<string, string[]> };
}

type Cached = { ok: true; identity: AgentIdentity; until: number } | { ok: false; err: AgentAuthError; until: number };

/**
 * Agent authentication and authorisation against Kubernetes: a TokenReview
 * (audience-bound) says who the caller is; a pod-bound token must name a
 * live pod of an AgentPool with the same uid, and the agent becomes that
 * pod's agent in that pool; any other identity needs RBAC's `connect` on the
 * pool (a SubjectAccessReview). Capacity and handlers stay within the pool's spec.
 */
export class KubeAgentAuth implements AgentAuth {
  private readonly o: KubeAgentAuthOptions;
  private readonly audience: string;
  private readonly cache = new Map<string, Cached>();
  private readonly inflight = new Map<string, Promise<AgentIdentity>>();
  readonly stats = { tokenReviews: 0, cacheHits: 0, subjectAccessReviews: 0 };

  constructor(o: KubeAgentAuthOptions) {
    this.o = o;
    this.audience = o.audience ?? DEFAULT_AUDIENCE;
  }

  async authenticate(token: string): Promise<AgentIdentity> {
    const key = createHash('sha256').update(token).digest('base64url');
    const now = Date.now();
    const hit = this.cache.get(key);
    if (hit && hit.until > now) {
      this.stats.cacheHits++;
      if (!hit.ok) throw hit.err;
      if (hit.identity.expiresAt <= now) throw new AgentAuthError('TokenExpired', 'the token has expired');
      return hit.identity;
    }
    // Concurrent connects with one token (an agent reconnecting fast) share one review.
    let p = this.inflight.get(key);
    if (!p) {
      p = this.review(key, token).finally(() => this.inflight.delete(key));
      this.inflight.set(key, p);
    }
    return p;
  }

  private async review(key: string, token: string): Promise<AgentIdentity> {
    this.stats.tokenReviews++;
    let status: TokenReviewStatus;
    try {
      const res = await this.o.client.create<{ status?: TokenReviewStatus }>(
        '/apis/authentication.k8s.io/v1/tokenreviews',
        { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token, audiences: [this.audience] } },
      );
      status = res.status ?? {};
    } catch (err) {
      // Not the token's fault: do not cache, the agent retries.
      throw new AgentAuthError('AuthUnavailable', `TokenReview failed: ${(err as Error).message}`);
    }
    const now = Date.now();
    if (!status.authenticated || !status.user?.username) {
      const err = new AgentAuthError(
        'InvalidToken',
        `the token was not accepted for audience "${this.audience}"${status.error ? `: ${status.error}` : ''}`,
      );
      this.remember(key, { ok: false, err, until: now + (this.o.negativeTtlMs ?? 10_000) });
      throw err;
    }
    const user = status.user;
    const username = user.username as string;
    const extra = user.extra ?? {};
    const saNamespace = username.startsWith(SA_PREFIX) ? (username.slice(SA_PREFIX.length).split(':')[0] ?? '') : '';
    const podName = extra[POD_NAME_EXTRA]?.[0];
    const podUid = extra[POD_UID_EXTRA]?.[0];
    const exp = jwtExpiry(token);
    const identity: AgentIdentity = {
      username,
      groups: user.groups ?? [],
      serviceAccountNamespace: saNamespace,
      ...(podName && podUid && saNamespace && { pod: { namespace: saNamespace, name: podName, uid: podUid } }),
      // A token without an exp claim is trusted for the cache lifetime, then checked again (Reauth).
      expiresAt: exp ?? now + (this.o.cacheTtlMs ?? 300_000),
    };
    this.remember(key, {
      ok: true,
      identity,
      until: Math.min(identity.expiresAt, now + (this.o.cacheTtlMs ?? 300_000)),
    });
    return identity;
  }

  private remember(key: string, v: Cached): void {
    const max = this.o.maxCacheEntries ?? 10_000;
    if (this.cache.size >= max) {
      const now = Date.now();
      for (const [k, c] of this.cache) if (c.until <= now) this.cache.delete(k);
      // Still full: drop the oldest (Map keeps insertion order).
      while (this.cache.size >= max) {
        const first = this.cache.keys().next().value;
        if (first === undefined) break;
        this.cache.delete(first);
      }
    }
    this.cache.set(key, v);
  }

  async authorize(identity: AgentIdentity, claim: RegisterClaim): Promise<Grant> {
    const agentPod = identity.pod ? await this.podOf(identity.pod.namespace, identity.pod.name) : undefined;
    if (identity.pod && !agentPod) {
      throw new AgentAuthError(
        'PodNotFound',
        `the token is bound to pod ${identity.pod.namespace}/${identity.pod.name}, which does not exist`,
      );
    }
    const owner = agentPod?.metadata?.ownerReferences?.find(
      (r) => r.controller && r.kind === 'AgentPool' && r.apiVersion.startsWith('agentflow.io/'),
    );
    if (identity.pod && agentPod && owner) {
      return this.authorizePod(identity, identity.pod, agentPod, owner.name, claim);
    }
    return this.authorizeExternal(identity, claim);
  }

  private async authorizePod(
    identity: AgentIdentity,
    ref: { namespace: string; name: string; uid: string },
    pod: V1Pod,
    poolName: string,
    claim: RegisterClaim,
  ): Promise<Grant> {
    if (pod.metadata?.uid !== ref.uid) {
      throw new AgentAuthError(
        'PodUidMismatch',
        `the token is bound to pod ${ref.namespace}/${ref.name} uid ${ref.uid}, but that pod is now uid ${pod.metadata?.uid}`,
      );
    }
    const phase = pod.status?.phase;
    if (phase === 'Succeeded' || phase === 'Failed') {
      throw new AgentAuthError('PodNotRunning', `pod ${ref.namespace}/${ref.name} is ${phase}`);
    }
    if (claim.namespace !== '' && claim.namespace !== ref.namespace) {
      throw new AgentAuthError(
        'NamespaceMismatch',
        `Register.namespace: "${claim.namespace}" is not this agent's namespace; its pod is in "${ref.namespace}"`,
      );
    }
    if (claim.pool !== '' && claim.pool !== poolName) {
      throw new AgentAuthError(
        'PoolMismatch',
        `Register.pool: "${claim.pool}" is not this agent's pool; its pod belongs to AgentPool "${poolName}"`,
      );
    }
    const pool = await this.poolOf(ref.namespace, poolName);
    if (!pool) throw new AgentAuthError('PoolNotFound', `AgentPool ${ref.namespace}/${poolName} does not exist`);
    return this.withinPool(identity, pool, claim, ref.name);
  }

  private async authorizeExternal(identity: AgentIdentity, claim: RegisterClaim): Promise<Grant> {
    if (claim.namespace === '' || claim.pool === '') {
      throw new AgentAuthError(
        'InvalidRegister',
        "Register.namespace and Register.pool are required for an agent that does not run in a pool's pod",
      );
    }
    // Ask RBAC before looking the pool up, so a caller without the grant learns nothing about it.
    this.stats.subjectAccessReviews++;
    let allowed: { allowed?: boolean; reason?: string } | undefined;
    try {
      const res = await this.o.client.create<{ status?: { allowed?: boolean; reason?: string } }>(
        '/apis/authorization.k8s.io/v1/subjectaccessreviews',
        {
          apiVersion: 'authorization.k8s.io/v1',
          kind: 'SubjectAccessReview',
          spec: {
            user: identity.username,
            groups: identity.groups,
            resourceAttributes: {
              namespace: claim.namespace,
              verb: CONNECT_VERB,
              group: 'agentflow.io',
              resource: 'agentpools',
              name: claim.pool,
            },
          },
        },
      );
      allowed = res.status;
    } catch (err) {
      throw new AgentAuthError('AuthUnavailable', `SubjectAccessReview failed: ${(err as Error).message}`);
    }
    if (!allowed?.allowed) {
      throw new AgentAuthError(
        'NotAuthorized',
        `${identity.username} may not ${CONNECT_VERB} to agentpools/${claim.pool} in namespace ${claim.namespace}` +
          ` (grant the verb "${CONNECT_VERB}" on resource "agentpools" in group "agentflow.io")`,
      );
    }
    const pool = await this.poolOf(claim.namespace, claim.pool);
    if (!pool) throw new AgentAuthError('PoolNotFound', `AgentPool ${claim.namespace}/${claim.pool} does not exist`);
    return this.withinPool(identity, pool, claim, undefined);
  }

  private withinPool(identity: AgentIdentity, pool: AgentPool, claim: RegisterClaim, pod: string | undefined): Grant {
    const grant: PoolGrant = {
      namespace: pool.metadata?.namespace as string,
      pool: pool.metadata?.name as string,
      capacity: pool.spec.agent.capacity,
      handlers: pool.spec.agent.handlers ?? [],
    };
    return grantWithinPool(identity, grant, claim, pod);
  }

  refused(identity: AgentIdentity | undefined, claim: RegisterClaim | undefined, err: AgentAuthError): void {
    const events = this.o.events;
    if (!events) return;
    // Only where the owner of the pool is the one who should hear of it: a pod's agent on its own pod's
    // pool; an agent outside the pods on the pool it named in its own ServiceAccount's namespace. Never
    // on a pool in a namespace an outsider merely named (that would let anyone write Events there),
    // and never for an unverified caller.
    if (!identity) return;
    const podObj = identity.pod ? this.o.pod(identity.pod.namespace, identity.pod.name) : undefined;
    const owned = podObj?.metadata?.ownerReferences?.find((r) => r.controller && r.kind === 'AgentPool')?.name;
    const ns = owned ? identity.pod?.namespace : claim?.namespace;
    const poolName = owned ?? claim?.pool;
    if (!ns || !poolName || (!owned && ns !== identity.serviceAccountNamespace)) return;
    const pool = this.o.pool(ns, poolName);
    if (!pool) return;
    const who = owned ? `pod ${identity.pod?.name}` : identity.username;
    events.record(pool as never, 'Warning', `Agent${err.reason}`, `Refused ${who}: ${err.message}`);
  }

  private async podOf(namespace: string, name: string): Promise<V1Pod | undefined> {
    const cached = this.o.pod(namespace, name);
    if (cached) return cached;
    try {
      return await this.o.client.get<V1Pod>(resourcePath(PODS, { namespace, name }));
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw new AgentAuthError('AuthUnavailable', `could not read pod ${namespace}/${name}: ${(err as Error).message}`);
    }
  }

  private async poolOf(namespace: string, name: string): Promise<AgentPool | undefined> {
    const cached = this.o.pool(namespace, name);
    if (cached) return cached;
    try {
      return await this.o.client.get<AgentPool>(resourcePath(AGENTPOOLS, { namespace, name }));
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw new AgentAuthError(
        'AuthUnavailable',
        `could not read AgentPool ${namespace}/${name}: ${(err as Error).message}`,
      );
    }
  }
}

/** The exp claim of a JWT (ms), read only after the API server verified the token. */
export function jwtExpiry(token: string): number | undefined {
  const part = token.split('.')[1];
  if (!part) return undefined;
  try {
    const payload = JSON.parse(Buffer.from(part, 'base64url').toString('utf8')) as { exp?: unknown };
    return typeof payload.exp === 'number' && Number.isFinite(payload.exp) ? payload.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}
