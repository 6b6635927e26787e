import type { Logger } from '../lib/log.ts';
import { type AgentAuth, AgentAuthError, type AgentIdentity, bearerToken } from './auth.ts';

/** What the credential rules need of a connected agent's stream (AgentConn is one). */
export interface CredentialHolder {
  identity: AgentIdentity;
  readonly closed: boolean;
  readonly log: Logger;
  closeWith(code: 'UNAUTHENTICATED' | 'PERMISSION_DENIED' | 'UNAVAILABLE' | 'INVALID_ARGUMENT', details: string): void;
}

export interface CredentialCounters {
  unauthenticated: number;
  permissionDenied: number;
  reauthenticated: number;
}

/** Any failure to verify as a typed refusal: a verifier that could not be asked is AuthUnavailable. */
export function asAuthError(err: unknown): AgentAuthError {
  if (err instanceof AgentAuthError) return err;
  return new AgentAuthError('AuthUnavailable', `could not verify the token: ${(err as Error).message}`);
}

/**
 * The credential rules of an agent stream: it opens with a bearer token, stays valid until that
 * token's expiry, and is extended only by a Reauth that proves the same identity.
 */
export class StreamCredentials {
  private readonly auth: AgentAuth;
  private readonly counters: CredentialCounters;

  constructor(auth: AgentAuth, counters: CredentialCounters) {
    this.auth = auth;
    this.counters = counters;
  }

  /** Who the `authorization` metadata proves; an AgentAuthError (NoToken, InvalidToken, ...) otherwise. */
  async authenticate(authorization: unknown[]): Promise<AgentIdentity> {
    const token = bearerToken(authorization);
    if (!token) throw new AgentAuthError('NoToken', 'no "authorization: Bearer <token>" metadata on the stream');
    try {
      return await this.auth.authenticate(token);
    } catch (err) {
      throw asAuthError(err);
    }
  }

  /** Ends the stream UNAUTHENTICATED when its token expires, unless a Reauth extended it meanwhile. */
  watchExpiry(holder: CredentialHolder): void {
    const check = () => {
      if (holder.closed) return;
      const left = holder.identity.expiresAt - Date.now();
      if (left <= 0) {
        this.counters.unauthenticated++;
        holder.log.warn('Agent token expired on an open stream; closing it');
        holder.closeWith(
          'UNAUTHENTICATED',
          "the stream's token expired; send Reauth with a fresh token before it does",
        );
        return;
      }
      setTimeout(check, Math.min(left, 2 ** 31 - 1)).unref();
    };
    check();
  }

  /** A fresh token on an open stream: same user and pod, or the stream ends. */
  async reauth(holder: CredentialHolder, token: string): Promise<void> {
    let next: AgentIdentity;
    try {
      next = await this.auth.authenticate(token);
    } catch (err) {
      const e = asAuthError(err);
      this.counters.unauthenticated++;
      holder.log.warn('Agent Reauth refused', { reason: e.reason, message: e.message });
      this.auth.refused?.(holder.identity, undefined, e);
      holder.closeWith(e.status, e.message);
      return;
    }
    const was = holder.identity;
    if (next.username !== was.username || next.pod?.uid !== was.pod?.uid) {
      const e = new AgentAuthError('IdentityChanged', `Reauth: the token is for ${next.username}, not ${was.username}`);
      this.counters.permissionDenied++;
      this.auth.refused?.(was, undefined, e);
      holder.closeWith(e.status, e.message);
      return;
    }
    holder.identity = next;
    this.counters.reauthenticated++;
    holder.log.debug('Agent re-authenticated', { expiresAt: new Date(next.expiresAt).toISOString() });
  }
}
