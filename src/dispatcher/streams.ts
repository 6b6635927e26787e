import type { ServerDuplexStream } from '@grpc/grpc-js';
import type { AgentMessage__Output } from '../gen/agentflow/v1/AgentMessage.ts';
import type { DispatcherMessage } from '../gen/agentflow/v1/DispatcherMessage.ts';
import type { Register__Output } from '../gen/agentflow/v1/Register.ts';
import type { Logger } from '../lib/log.ts';
import type { AgentConn } from './agent-conn.ts';
import { type AgentAuth, AgentAuthError, type AgentIdentity, type RegisterClaim } from './auth.ts';
import { asAuthError, type StreamCredentials } from './credentials.ts';
import type { WireErrorCode } from './task-state.ts';
import { claimOf } from './wire-checks.ts';

export type AgentStream = ServerDuplexStream<AgentMessage__Output, DispatcherMessage>;

/** gRPC status codes a stream may end with. */
export const GRPC_CODE = {
  UNAUTHENTICATED: 16,
  PERMISSION_DENIED: 7,
  UNAVAILABLE: 14,
  INVALID_ARGUMENT: 3,
} as const;

/** A message the dispatcher could not take; the agent is told, nothing changed. */
export class WireMessageError extends Error {
  override name = 'WireMessageError';
  readonly code: WireErrorCode;

  constructor(code: WireErrorCode, message: string) {
    super(message);
    this.code = code;
  }
}

/** What a stream's life calls back into. */
export interface StreamHandlers {
  /** True once the dispatcher was deposed: new streams are turned away UNAVAILABLE. */
  deposed(): boolean;
  /** True once the dispatcher stops: messages are ignored. */
  stopped(): boolean;
  /** Checks and registers the agent (throws AgentAuthError to deny, any other error to refuse INVALID). */
  register(stream: AgentStream, r: Register__Output, who: AgentIdentity): Promise<AgentConn>;
  /** A registered agent's message (throws WireMessageError to refuse it). */
  message(conn: AgentConn, m: AgentMessage__Output): void;
  disconnected(conn: AgentConn): void;
  counters: { refused: number; unauthenticated: number; permissionDenied: number };
}

/**
 * One Connect stream's life before and around the dispatcher's bookkeeping: authenticate the token
 * before reading anything, insist on Register first, register once, then hand each message over;
 * end it on the first denial.
 */
export function acceptStream(
  stream: AgentStream,
  h: StreamHandlers,
  credentials: StreamCredentials,
  auth: AgentAuth,
  log: Logger,
): void {
  let conn: AgentConn | undefined;
  let registering = false;
  let over = false;
  const refuse = (code: WireErrorCode, message: string, taskId = '') => {
    h.counters.refused++;
    stream.write({ error: { code, message, taskId } });
  };
  const deny = (err: AgentAuthError, identity?: AgentIdentity, claim?: RegisterClaim) => {
    if (over) return;
    over = true;
    if (err.status === 'UNAUTHENTICATED') h.counters.unauthenticated++;
    if (err.status === 'PERMISSION_DENIED') h.counters.permissionDenied++;
    log.warn('Agent refused', { reason: err.reason, message: err.message, user: identity?.username });
    auth.refused?.(identity, claim, err);
    stream.emit('error', Object.assign(new Error(err.message), { code: GRPC_CODE[err.status], details: err.message }));
  };
  if (h.deposed()) {
    const details = 'this dispatcher is no longer the leader; reconnect to the new leader';
    stream.emit('error', Object.assign(new Error(details), { code: GRPC_CODE.UNAVAILABLE, details }));
    return;
  }
  // Authenticate before reading anything the agent says.
  const identity: Promise<AgentIdentity | undefined> = credentials
    .authenticate(stream.metadata.get('authorization'))
    .catch((err: unknown) => {
      deny(asAuthError(err));
      return undefined;
    });
  stream.on('data', (m: AgentMessage__Output) => {
    if (h.stopped() || over) return;
    if (!conn) {
      // What an agent sends while its Register is being handled is ignored (it re-sends after Registered).
      if (registering) return;
      if (m.msg !== 'register' || !m.register) {
        refuse('NOT_REGISTERED', 'the first message on a stream must be Register');
        stream.end();
        return;
      }
      registering = true;
      const register = m.register;
      let verified: AgentIdentity | undefined;
      void identity
        .then(async (who) => {
          if (!who || over) return;
          verified = who;
          conn = await h.register(stream, register, who);
          // The stream went while it registered: nobody else will tell the dispatcher.
          if (over) h.disconnected(conn);
        })
        .catch((err: unknown) => {
          if (err instanceof AgentAuthError) {
            deny(err, verified, claimOf(register));
            return;
          }
          refuse('INVALID', (err as Error).message);
          stream.end();
        });
      return;
    }
    conn.lastSeen = performance.now();
    try {
      h.message(conn, m);
    } catch (err) {
      refuse(err instanceof WireMessageError ? err.code : 'INVALID', (err as Error).message);
    }
  });
  const gone = () => {
    over = true;
    if (conn) h.disconnected(conn);
  };
  stream.on('end', () => {
    gone();
    stream.end();
  });
  stream.on('error', gone);
  stream.on('cancelled', gone);
}
