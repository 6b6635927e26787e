// How agentflow calls etcd: each call at most once unless it provably did
// not apply, every failure a typed StateError.
//
// The etcd3 package retries any call up to 3 times after a timeout or a
// dropped connection, writes included (an acknowledged put could land twice,
// and a CAS that applied could report a conflict), and its per-host circuit
// breaker turned every call away for ~5 s after a short outage. Both policies
// are switched off (`noFaultHandling`) and replaced by `guardCalls`, which
// wraps the client's one funnel for unary calls (ConnectionPool.exec) so that
// no call site can bypass it: reads, and writes that were never sent, are
// retried within a budget; a write that may have applied becomes an
// OutcomeUnknownError for its caller to resolve.
import type { Etcd3, IOptions } from 'etcd3';
import { EtcdUnavailableError, OutcomeUnknownError, RequestTooLargeError, StateError } from './errors.ts';

type Policy = NonNullable<NonNullable<IOptions['faultHandling']>['global']>;

/** A policy that runs the call once and lets its error through (no retry, no breaker). */
const once = {
  execute: <T>(fn: (ctx: { signal: AbortSignal }) => T | Promise<T>, signal?: AbortSignal) =>
    Promise.resolve().then(() => fn({ signal: signal ?? new AbortController().signal })),
  onSuccess: () => ({ dispose: () => undefined }),
  onFailure: () => ({ dispose: () => undefined }),
} as unknown as Policy;

export const noFaultHandling: NonNullable<IOptions['faultHandling']> = { global: once, host: () => once };

/** gRPC keepalive on etcd connections in use: a dead peer is noticed in ~15 s, not at the next TCP timeout. */
export const KEEPALIVE_OPTIONS = {
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 5_000,
  // etcd's keepalive enforcement refuses pings without an open stream (GOAWAY "too many pings").
  'grpc.keepalive_permit_without_calls': 0,
  // Range answers are paged well under this; it only keeps a big LIST from failing outright.
  'grpc.max_receive_message_length': 16 * 1024 * 1024,
};

interface Pool {
  exec(service: string, method: string, payload: unknown, options?: unknown): Promise<unknown>;
}

interface TxnPayload {
  success?: { request_range?: unknown }[];
  failure?: { request_range?: unknown }[];
}

/** Calls that change nothing: safe to repeat whatever happened to an earlier try. */
export function isReadOnly(service: string, method: string, payload: unknown): boolean {
  if (service === 'KV' && method === 'range') return true;
  if (service === 'KV' && method === 'txn') {
    const p = payload as TxnPayload;
    return [...(p.success ?? []), ...(p.failure ?? [])].every((op) => op.request_range !== undefined);
  }
  if (service === 'Lease') return method === 'leaseTimeToLive' || method === 'leaseLeases';
  if (service === 'Auth') return method === 'authStatus' || method === 'authenticate' || method.endsWith('Get');
  return false;
}

// grpc-js and etcd phrasings that mean the request never reached a server able to apply it.
// ("too many requests": etcd sheds load before proposing anything.)
const NOT_SENT =
  /No connection established|ECONNREFUSED|ENOTFOUND|EHOSTUNREACH|ENETUNREACH|Failed to connect|connection refused|etcdserver: no leader|etcdserver: not capable|etcdserver: too many requests|waiting for LB pick/i;
// Only the size limits (etcd's --max-request-bytes, gRPC's message limits), not every RESOURCE_EXHAUSTED.
const TOO_LARGE = /request is too large|message larger than max/i;
// Failures of the transport or of etcd's consensus, as opposed to answers (auth, bad lease, compacted).
const TRANSPORT =
  /UNAVAILABLE|DEADLINE_EXCEEDED|Deadline exceeded|CANCELLED|Connection dropped|ECONNRESET|EPIPE|GOAWAY|stream removed|etcdserver: request timed out|etcdserver: leader changed|timed out|socket hang up|Call ended without gRPC status/i;

export interface Classified {
  error: Error;
  /** True when repeating the call cannot apply anything twice. */
  retryable: boolean;
}

/** Turns an etcd3/grpc error from `service.method` into a typed StateError (or passes an answer through). */
export function classify(err: unknown, service: string, method: string, readOnly: boolean): Classified {
  const e = err instanceof Error ? err : new Error(String(err));
  if (e instanceof StateError) return { error: e, retryable: false };
  const what = `etcd ${service}.${method}`;
  const name = e.constructor?.name ?? '';
  const text = `${name} ${e.message}`;
  if (TOO_LARGE.test(text)) {
    return { error: new RequestTooLargeError(`${what}: ${e.message}`, { cause: e }), retryable: false };
  }
  const transport = TRANSPORT.test(text) || name === 'GRPCUnavailableError' || name === 'GRPCDeadlineExceededError';
  if (!transport && !NOT_SENT.test(text)) return { error: e, retryable: false };
  if (NOT_SENT.test(text)) {
    return {
      error: new EtcdUnavailableError('unavailable', `${what}: etcd is unreachable (${e.message})`, { cause: e }),
      retryable: true,
    };
  }
  if (readOnly) {
    const kind = /deadline|timed out/i.test(text) ? 'timeout' : 'unavailable';
    return { error: new EtcdUnavailableError(kind, `${what}: ${e.message}`, { cause: e }), retryable: true };
  }
  return {
    error: new OutcomeUnknownError(`${what}: sent, but no answer came (${e.message}); it may or may not have applied`, {
      cause: e,
    }),
    retryable: false,
  };
}

export interface GuardOptions {
  /** How long a retryable call keeps being retried before its typed error is thrown (ms). */
  retryBudgetMs: number;
}

/**
 * Installs the at-most-once policy on `client`: every unary call goes through
 * `classify`, retryable failures are retried with backoff within the budget.
 * etcd3 has had no release since 2023 and its pool is not public API; the
 * version is pinned exactly in package.json, and test/integration/state/transport.test.ts
 * proves the behaviour against a real etcd.
 */
export function guardCalls(client: Etcd3, o: GuardOptions): void {
  const pool = (client as unknown as { pool: Pool }).pool;
  if (typeof pool?.exec !== 'function') throw new Error('etcd3: connection pool not found (unsupported etcd3 version)');
  const exec = pool.exec.bind(pool);
  pool.exec = async (service, method, payload, options) => {
    const readOnly = isReadOnly(service, method, payload);
    const started = Date.now();
    for (let attempt = 0; ; attempt++) {
      try {
        return await exec(service, method, payload, options);
      } catch (err) {
        const c = classify(err, service, method, readOnly);
        if (!c.retryable || Date.now() - started >= o.retryBudgetMs) throw c.error;
        await new Promise((r) => setTimeout(r, Math.min(500, 25 * 2 ** attempt) * (0.5 + Math.random() / 2)));
      }
    }
  };
}
