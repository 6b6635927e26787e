/**
 * Who an agent is, as the dispatcher verified it, and what it may register as.
 * The dispatcher never trusts what a Register says about namespace, pool or
 * identity: the operator's AgentAuth answers from a TokenReview, the pod the
 * token is bound to, the AgentPool and (for agents outside the cluster) a
 * SubjectAccessReview.
 */

/** Why a stream or a Register was refused; one value per cause, never a parsed string. */
export type RefusalReason =
  | 'NoToken'
  | 'InvalidToken'
  | 'TokenExpired'
  | 'AuthUnavailable'
  | 'PodNotFound'
  | 'PodUidMismatch'
  | 'PodNotRunning'
  | 'NamespaceMismatch'
  | 'PoolMismatch'
  | 'PoolNotFound'
  | 'CapacityExceeded'
  | 'HandlerNotGranted'
  | 'NotAuthorized'
  | 'IdentityChanged'
  | 'InvalidRegister';

/** The gRPC status each reason ends a stream with. */
export const REFUSAL_STATUS: Record<
  RefusalReason,
  'UNAUTHENTICATED' | 'PERMISSION_DENIED' | 'UNAVAILABLE' | 'INVALID_ARGUMENT'
> = {
  NoToken: 'UNAUTHENTICATED',
  InvalidToken: 'UNAUTHENTICATED',
  TokenExpired: 'UNAUTHENTICATED',
  AuthUnavailable: 'UNAVAILABLE',
  PodNotFound: 'PERMISSION_DENIED',
  PodUidMismatch: 'PERMISSION_DENIED',
  PodNotRunning: 'PERMISSION_DENIED',
  NamespaceMismatch: 'PERMISSION_DENIED',
  PoolMismatch: 'PERMISSION_DENIED',
  PoolNotFound: 'PERMISSION_DENIED',
  CapacityExceeded: 'PERMISSION_DENIED',
  HandlerNotGranted: 'PERMISSION_DENIED',
  NotAuthorized: 'PERMISSION_DENIED',
  IdentityChanged: 'PERMISSION_DENIED',
  InvalidRegister: 'INVALID_ARGUMENT',
};

export class AgentAuthError extends Error {
  override name = 'AgentAuthError';
  readonly reason: RefusalReason;

  constructor(reason: RefusalReason, message: string) {
    super(message);
    this.reason = reason;
  }

  get status(): (typeof REFUSAL_STATUS)[RefusalReason] {
    return REFUSAL_STATUS[this.reason];
  }
}

/** A verified caller. */
export interface AgentIdentity {
  /** e.g. system:serviceaccount:research:agents */
  username: string;
  groups: string[];
  /** Set when the token is bound to a pod (a projected ServiceAccount token). */
  pod?: { namespace: string; name: string; uid: string };
  /** The ServiceAccount's namespace. */
  serviceAccountNamespace: string;
  /** When the token stops being valid (ms since the epoch). */
  expiresAt: number;
}

/** What a Register asks for (untrusted). */
export interface RegisterClaim {
  namespace: string;
  pool: string;
  agentId: string;
  capacity: number;
  handlers: string[];
}

/** What the dispatcher lets the agent be. */
export interface Grant {
  namespace: string;
  pool: string;
  agentId: string;
  /** The pod that runs the agent, if it runs in one of the pool's pods. */
  pod?: string;
  capacity: number;
  handlers: string[];
}

export interface AgentAuth {
  /** Verifies a bearer token; throws AgentAuthError (InvalidToken, TokenExpired, AuthUnavailable). */
  authenticate(token: string): Promise<AgentIdentity>;
  /** Decides a Register; throws AgentAuthError naming why not. */
  authorize(identity: AgentIdentity, claim: RegisterClaim): Promise<Grant>;
  /** A refusal worth telling the pool's owner about (a Warning Event). */
  refused?(identity: AgentIdentity | undefined, claim: RegisterClaim | undefined, err: AgentAuthError): void;
}

/** An agent id: a DNS-1123 subdomain-ish token, also an etcd key segment. */
export const AGENT_ID_SUFFIX = /^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$/;

/** The agent id a verified identity gets: the pod's name, or the ServiceAccount's name plus the agent's suffix. */
export function agentIdFor(identity: AgentIdentity, suffix: string): string {
  if (identity.pod) return identity.pod.name;
  const sa = identity.username.split(':').pop() ?? 'agent';
  // An agent that repeats the id it was given ("sa.suffix") keeps it.
  const bare = suffix.startsWith(`${sa}.`) ? suffix.slice(sa.length + 1) : suffix;
  return AGENT_ID_SUFFIX.test(bare) ? `${sa}.${bare}` : sa;
}

/** What a pool lets its agents register with (an AgentPool's spec.agent, as plain values). */
export interface PoolGrant {
  namespace: string;
  pool: string;
  /** spec.agent.capacity: the most slots one agent may register with. */
  capacity: number;
  /** spec.agent.handlers; empty: whatever the agent registers. */
  handlers: readonly string[];
}

/** The one rule for what a verified agent may register as within its pool; AgentAuthError names the field. */
export function grantWithinPool(
  identity: AgentIdentity,
  pool: PoolGrant,
  claim: RegisterClaim,
  pod: string | undefined,
): Grant {
  if (claim.capacity > pool.capacity) {
    throw new AgentAuthError(
      'CapacityExceeded',
      `Register.capacity: ${claim.capacity} is more than AgentPool ${pool.pool} grants (spec.agent.capacity ${pool.capacity})`,
    );
  }
  if (pool.handlers.length > 0) {
    const extra = claim.handlers.filter((h) => !pool.handlers.includes(h));
    if (extra.length > 0) {
      throw new AgentAuthError(
        'HandlerNotGranted',
        `Register.handlers: ${extra.map((h) => `"${h}"`).join(', ')} not in AgentPool ${pool.pool}'s spec.agent.handlers (${pool.handlers.join(', ')})`,
      );
    }
  }
  return {
    namespace: pool.namespace,
    pool: pool.pool,
    agentId: agentIdFor(identity, claim.agentId),
    ...(pod && { pod }),
    capacity: claim.capacity,
    handlers: claim.handlers,
  };
}

/** The bearer token of `authorization: Bearer <token>` metadata, or undefined. */
export function bearerToken(values: unknown[]): string | undefined {
  const v = values[0];
  const text = typeof v === 'string' ? v : Buffer.isBuffer(v) ? v.toString('utf8') : '';
  const m = /^Bearer\s+(\S{1,16384})$/i.exec(text.trim());
  return m?.[1];
}
