// Agent authentication for the benchmark, where there is no kube-apiserver.
//
// StaticAgentAuth is a fixed token -> identity map. That is an honest
// stand-in for the operator's KubeAgentAuth on its hot path: KubeAgentAuth
// asks the API server (TokenReview) once per token, then answers every
// further connect from its cache keyed by the token's SHA-256 until the
// token expires or the cache entry does (5 min). A benchmark agent connects
// once and keeps its stream, so what the run pays is what a cache hit costs
// plus the pool checks (namespace, pool, capacity, handlers) KubeAgentAuth
// makes on every Register. It does not pay the first TokenReview's round trip
// (a few ms, once per token); results/security.md says so beside the figures.
//
// OpenAgentAuth accepts any stream and grants whatever the Register claims:
// the posture before issue 12, kept only as the benchmark's baseline.
import { createHash } from 'node:crypto';
import {
  type AgentAuth,
  AgentAuthError,
  type AgentIdentity,
  type Grant,
  grantWithinPool,
  type RegisterClaim,
} from '../../src/dispatcher/auth.ts';

/** What a token may register as: an AgentPool's spec.agent, as KubeAgentAuth reads it. */
export interface PoolGrant {
  namespace: string;
  pool: string;
  /** spec.agent.capacity: the most slots one agent may register with. */
  maxCapacity: number;
  /** spec.agent.handlers; empty: any handler. */
  handlers: string[];
}

interface Entry {
  identity: AgentIdentity;
  grant: PoolGrant;
}

const digest = (token: string) => createHash('sha256').update(token).digest('base64url');

export class StaticAgentAuth implements AgentAuth {
  private readonly entries = new Map<string, Entry>();
  private readonly grants = new WeakMap<AgentIdentity, PoolGrant>();
  readonly stats = { authenticated: 0, authorized: 0, refused: 0 };

  /** Trusts `token` as `identity`, allowed to join `grant`'s pool. */
  add(token: string, identity: AgentIdentity, grant: PoolGrant): void {
    this.entries.set(digest(token), { identity, grant });
    this.grants.set(identity, grant);
  }

  async authenticate(token: string): Promise<AgentIdentity> {
    const entry = this.entries.get(digest(token));
    if (!entry) throw new AgentAuthError('InvalidToken', 'the token is not one this benchmark issued');
    if (entry.identity.expiresAt <= Date.now()) throw new AgentAuthError('TokenExpired', 'the token has expired');
    this.stats.authenticated++;
    return entry.identity;
  }

  async authorize(identity: AgentIdentity, claim: RegisterClaim): Promise<Grant> {
    const g = this.grants.get(identity);
    if (!g) throw new AgentAuthError('NotAuthorized', `${identity.username} holds no grant in this benchmark`);
    if (claim.namespace !== '' && claim.namespace !== g.namespace) {
      throw new AgentAuthError(
        'NamespaceMismatch',
        `Register.namespace: "${claim.namespace}" is not this agent's namespace "${g.namespace}"`,
      );
    }
    if (claim.pool !== '' && claim.pool !== g.pool) {
      throw new AgentAuthError('PoolMismatch', `Register.pool: "${claim.pool}" is not this agent's pool "${g.pool}"`);
    }
    this.stats.authorized++;
    return grantWithinPool(
      identity,
      { namespace: g.namespace, pool: g.pool, capacity: g.maxCapacity, handlers: g.handlers },
      claim,
      identity.pod?.name,
    );
  }

  refused(): void {
    this.stats.refused++;
  }
}

/** The pre-issue-12 posture: every stream is welcome and its Register is taken as sent. Baseline only. */
export class OpenAgentAuth implements AgentAuth {
  async authenticate(): Promise<AgentIdentity> {
    return {
      username: 'system:anonymous',
      groups: [],
      serviceAccountNamespace: '',
      expiresAt: Number.MAX_SAFE_INTEGER,
    };
  }

  async authorize(_identity: AgentIdentity, claim: RegisterClaim): Promise<Grant> {
    if (claim.namespace === '' || claim.pool === '' || claim.agentId === '') {
      throw new AgentAuthError('InvalidRegister', 'Register.namespace, pool and agentId are required without auth');
    }
    return { ...claim, handlers: [...claim.handlers] };
  }
}
