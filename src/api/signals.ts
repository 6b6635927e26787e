// Signals: data sent into a running workflow (`agentflow signal NAME SIGNAL --data JSON`, or a
// POST to the data API's workflows/<name>/signal) and taken by handlers (`ctx.waitForSignal`,
// `ctx.onSignal`). One home for the rules the data API, the dispatcher and the agent SDK share.
//
// A signal is a key of the workflow's shared state, `agentflow:signal/<name>/<id>`, written by the
// leader (never by an agent: keys under `agentflow:` are reserved), so it is durable before the
// sender hears "sent" and survives a leader failover. A handler takes one by creating
// `agentflow:consumed/<name>/<id>` (compare-and-swap on absence) with its task and the ordinal of
// the wait: exactly one task takes each signal, and a retry of that task that waits again in the
// same order gets the same signals back before any new one.

/** A signal's name: what `waitForSignal(name)` waits for. */
export const SIGNAL_NAME = /^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$/;
/** Keys of the shared state only agentflow itself writes (agents and `agentflow state put` may not). */
export const RESERVED_STATE_PREFIX = 'agentflow:';
export const SIGNAL_PREFIX = 'agentflow:signal/';
export const CONSUMED_PREFIX = 'agentflow:consumed/';
/** Largest `data` of one signal, as JSON (a shared-state value's bound). */
export const MAX_SIGNAL_DATA_BYTES = 64 * 1024;
/** Signals one workflow may hold, taken or not (each is a key in etcd until the workflow goes). */
export const MAX_SIGNALS_PER_WORKFLOW = 10_000;

/** What a signal key holds. */
export interface SignalValue {
  data: unknown;
  /** The user the API server authenticated. */
  sentBy: string;
  sentAt: string;
}

/** What a consumed marker holds: which task took the signal, at which of its waits. */
export interface ConsumedValue {
  task: string;
  /** 0 for the task's first wait on this signal name, 1 for the second, … */
  ordinal: number;
  attempt: number;
}

/** Why a signal name is refused, or undefined. */
export function signalNameProblem(name: unknown): string | undefined {
  if (typeof name !== 'string') return `must be a string, got ${typeof name}`;
  if (!SIGNAL_NAME.test(name))
    return `"${name.slice(0, 80)}" is not a signal name (letters, digits, ".", "_", "-", 1-63, starting and ending alphanumeric)`;
  return undefined;
}

export const signalKey = (name: string, id: string) => `${SIGNAL_PREFIX}${name}/${id}`;
export const consumedKey = (name: string, id: string) => `${CONSUMED_PREFIX}${name}/${id}`;

/**
 * Whether an agent may write this key of its workflow's state: anything outside the reserved
 * prefix, and under it only the creation of a consumed marker (a compare-and-swap on absence).
 */
export function agentMayWrite(key: string, op: 'PUT' | 'CAS' | 'DELETE', expectedRevision: number): boolean {
  if (!key.startsWith(RESERVED_STATE_PREFIX)) return true;
  return key.startsWith(CONSUMED_PREFIX) && op === 'CAS' && expectedRevision === 0;
}
