import type { AgentMessage } from '../gen/agentflow/v1/AgentMessage.ts';
import type { KeyValue__Output } from '../gen/agentflow/v1/KeyValue.ts';
import type { LockResponse__Output } from '../gen/agentflow/v1/LockResponse.ts';
import type { StateRequest } from '../gen/agentflow/v1/StateRequest.ts';
import type { StateResponse__Output } from '../gen/agentflow/v1/StateResponse.ts';
import type { WatchEvent__Output } from '../gen/agentflow/v1/WatchEvent.ts';
import { ConflictError, FencedError, StateError } from '../state/errors.ts';
import type { Held } from '../state/lock.ts';
import type { Versioned } from '../state/shared-state.ts';
import type { Fence } from '../state/store.ts';
import { encodeStateValue as encode, type JsonValue } from '../state/values.ts';
import type { ChangeEvent } from '../state/watch.ts';
import type { Attempt } from './attempt.ts';
import type { Connection } from './connection.ts';

/**
 * The dispatcher could not say whether the operation happened (the stream
 * broke, etcd did not answer, the leader changed). For a write the outcome is
 * unknown: read before writing again.
 */
export class StateUnavailableError extends StateError {
  override name = 'StateUnavailableError';
}

/**
 * A write reached etcd but its answer never came: it may or may not have
 * applied. Read the key (its revision history if the values can repeat)
 * before writing again.
 */
export class StateOutcomeUnknownError extends StateUnavailableError {
  override name = 'StateOutcomeUnknownError';
}

/** The dispatcher refused: the attempt is not this agent's, or a fence names another workflow's lock. */
export class StatePermissionError extends StateError {
  override name = 'StatePermissionError';
}

export class LockTimeoutError extends StateError {
  override name = 'LockTimeoutError';
}

/** A workflow's shared state as handlers see it (ctx.state). Values are JSON; revisions are etcd's. */
export interface WorkflowState {
  get<T extends JsonValue = JsonValue>(key: string): Promise<Versioned<T> | undefined>;
  /** Unconditional write (only while every fence holds). Returns the new modRevision. */
  put(key: string, value: JsonValue, opts?: { fences?: Fence[] }): Promise<number>;
  /** Writes only if the key's modRevision is still `expected` (0: absent); ConflictError otherwise. */
  cas(key: string, value: JsonValue, expected: number, opts?: { fences?: Fence[] }): Promise<number>;
  delete(key: string, expected?: number, opts?: { fences?: Fence[] }): Promise<boolean>;
  list(prefix?: string): Promise<{ items: Versioned[]; revision: number }>;
  history(key: string, limit?: number): Promise<Versioned[]>;
  /** Changes under `prefix` after `fromRevision`, resumed across reconnects; ends with the attempt. */
  watch(
    prefix: string,
    fromRevision: number,
    onChange: (e: ChangeEvent & { json?: JsonValue }) => void,
    onResync: (items: Versioned[], revision: number) => void,
  ): Promise<{ close(): Promise<void> }>;
}

/** What the client needs from the agent: the registered stream, waiting for one if need be. */
export interface StreamHost {
  /** The registered stream now, or after waiting (rejects when `signal` aborts or the agent stops). */
  registered(signal: AbortSignal): Promise<Connection>;
}

interface Pending {
  conn: Connection;
  /** Changes state if it applies (a put, CAS, delete, lock acquire or release): its loss is an unknown outcome. */
  write: boolean;
  resolve(v: StateResponse__Output | LockResponse__Output): void;
  reject(err: Error): void;
}

interface WatchEntry {
  attempt: Attempt;
  prefix: string;
  last: number;
  conn: Connection | undefined;
  onChange: (e: ChangeEvent & { json?: JsonValue }) => void;
  onResync: (items: Versioned[], revision: number) => void;
}

type StateOp = NonNullable<StateRequest['op']>;

/**
 * Shared state and locks through the dispatcher stream: agents hold no etcd
 * credentials. Requests carry the attempt they act for; the dispatcher
 * confines them to that attempt's workflow.
 */
export class RemoteState {
  private readonly host: StreamHost;
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private readonly watches = new Map<string, WatchEntry>();

  constructor(host: StreamHost) {
    this.host = host;
  }

  /** A stream ended: a read's answer is lost, a write's outcome unknown. */
  streamClosed(conn: Connection): void {
    for (const [id, p] of this.pending) {
      if (p.conn !== conn) continue;
      this.pending.delete(id);
      p.reject(
        p.write
          ? new StateOutcomeUnknownError('the dispatcher stream closed before the answer came; the outcome is unknown')
          : new StateUnavailableError('the dispatcher stream closed before the answer came'),
      );
    }
    for (const w of this.watches.values()) if (w.conn === conn) w.conn = undefined;
  }

  /** A stream registered: watches resume from the last revision each saw. */
  registered(conn: Connection): void {
    for (const [id, w] of this.watches) {
      if (w.attempt.finished) {
        this.watches.delete(id);
        continue;
      }
      w.conn = conn;
      conn.send(this.watchRequest(id, w));
    }
  }

  onStateResponse(r: StateResponse__Output): void {
    this.settle(String(r.id), r);
  }

  onLockResponse(r: LockResponse__Output): void {
    this.settle(String(r.id), r);
  }

  onWatchEvent(e: WatchEvent__Output): void {
    const w = this.watches.get(String(e.id));
    if (!w || w.attempt.finished) return;
    if (e.type === 'RESYNC') {
      w.last = Number(e.revision);
      w.onResync(
        e.items.map((i) => versioned(i)),
        Number(e.revision),
      );
      return;
    }
    const kv = e.kv;
    if (!kv) return;
    w.last = Math.max(w.last, Number(e.revision));
    const json = kv.valueJson === '' ? undefined : (JSON.parse(kv.valueJson) as JsonValue);
    w.onChange({
      type: e.type === 'DELETE' ? 'delete' : 'put',
      key: kv.key,
      modRevision: Number(kv.modRevision),
      createRevision: Number(kv.createRevision),
      ...(e.type !== 'DELETE' && { value: kv.valueJson }),
      ...(json !== undefined && { json }),
    } as ChangeEvent & { json?: JsonValue });
  }

  private settle(id: string, r: StateResponse__Output | LockResponse__Output): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    p.resolve(r);
  }

  private async call(attempt: Attempt, msg: (id: string) => AgentMessage): Promise<StateResponse__Output> {
    return (await this.request(attempt, msg)) as StateResponse__Output;
  }

  private async request(
    attempt: Attempt,
    msg: (id: string) => AgentMessage,
    signal: AbortSignal = attempt.signal,
  ): Promise<StateResponse__Output | LockResponse__Output> {
    if (attempt.finished) throw new StateError(`attempt ${attempt.key} has ended`);
    const conn = await this.host.registered(signal);
    const id = String(this.nextId++);
    const m = msg(id);
    const write =
      (m.state !== undefined && m.state !== null && ['PUT', 'CAS', 'DELETE'].includes(String(m.state.op))) ||
      (m.lock !== undefined && m.lock !== null);
    return new Promise((resolve, reject) => {
      this.pending.set(id, { conn, write, resolve, reject });
      if (!conn.send(m)) {
        this.pending.delete(id);
        reject(new StateUnavailableError('the dispatcher stream is not accepting messages'));
      }
    });
  }

  /** The WorkflowState of one attempt (its workflow). */
  forAttempt(attempt: Attempt): WorkflowState {
    // The token is read per request: a re-claimed attempt carries on under its new one.
    const req = (id: string, op: StateOp, extra: Partial<StateRequest> = {}): AgentMessage => ({
      state: { id, taskId: attempt.taskId, attempt: attempt.attempt, token: attempt.token, op, ...extra },
    });
    const fences = (f: Fence[] | undefined) => (f ?? []).map((x) => ({ key: x.key, createRevision: x.createRevision }));
    return {
      get: async <T extends JsonValue = JsonValue>(key: string) => {
        const r = check(await this.call(attempt, (id) => req(id, 'GET', { key })), key);
        const kv = r.items[0];
        return kv ? (versioned(kv) as Versioned<T>) : undefined;
      },
      put: async (key, value, opts = {}) => {
        const valueJson = encode(key, value);
        const r = check(
          await this.call(attempt, (id) => req(id, 'PUT', { key, valueJson, fences: fences(opts.fences) })),
          key,
        );
        return Number(r.revision);
      },
      cas: async (key, value, expected, opts = {}) => {
        const valueJson = encode(key, value);
        const r = await this.call(attempt, (id) =>
          req(id, 'CAS', { key, valueJson, expectedRevision: expected, fences: fences(opts.fences) }),
        );
        if (r.errorCode === 'CONFLICT') throw new ConflictError(key, expected, Number(r.revision));
        return Number(check(r, key).revision);
      },
      delete: async (key, expected, opts = {}) => {
        const r = await this.call(attempt, (id) =>
          req(id, 'DELETE', {
            key,
            ...(expected !== undefined && { expectedRevision: expected, hasExpected: true }),
            fences: fences(opts.fences),
          }),
        );
        if (r.errorCode === 'CONFLICT') throw new ConflictError(key, expected ?? 0, Number(r.revision));
        return check(r, key).existed;
      },
      list: async (prefix = '') => {
        const r = check(await this.call(attempt, (id) => req(id, 'LIST', { key: prefix })), prefix);
        return { items: r.items.map(versioned), revision: Number(r.revision) };
      },
      history: async (key, limit = 20) => {
        const r = check(await this.call(attempt, (id) => req(id, 'HISTORY', { key, limit })), key);
        return r.items.map(versioned);
      },
      watch: async (prefix, fromRevision, onChange, onResync) => {
        const entry: WatchEntry = { attempt, prefix, last: fromRevision - 1, conn: undefined, onChange, onResync };
        let watchId = '';
        try {
          check(
            await this.call(attempt, (id) => {
              watchId = id;
              this.watches.set(id, entry);
              return this.watchRequest(id, entry);
            }),
            prefix,
          );
        } catch (err) {
          // A watch the caller never got must not be resumed on the next stream nor call its callbacks.
          this.watches.delete(watchId);
          throw err;
        }
        const close = async () => {
          if (!this.watches.delete(watchId)) return;
          if (attempt.finished) return;
          await this.call(attempt, (id) => req(id, 'UNWATCH', { expectedRevision: Number(watchId) })).catch(
            () => undefined,
          );
        };
        attempt.onFinish(() => this.watches.delete(watchId));
        return { close };
      },
    };
  }

  private watchRequest(id: string, w: WatchEntry): AgentMessage {
    return {
      state: {
        id,
        taskId: w.attempt.taskId,
        attempt: w.attempt.attempt,
        token: w.attempt.token,
        op: 'WATCH',
        key: w.prefix,
        fromRevision: w.last + 1,
      },
    };
  }

  /** A lock of the attempt's workflow, held with the agent's lease (kept by the dispatcher). */
  async lock(attempt: Attempt, name: string, opts: { timeoutMs?: number; signal: AbortSignal }): Promise<Held> {
    const base = () => ({ taskId: attempt.taskId, attempt: attempt.attempt, token: attempt.token });
    let acquireId = '';
    const onAbort = () => {
      // Stop waiting at the dispatcher too; its answer (CANCELLED) settles the request.
      this.host
        .registered(AbortSignal.timeout(1_000))
        .then((conn) =>
          conn.send({ lock: { id: String(this.nextId++), ...base(), op: 'CANCEL', lockToken: Number(acquireId) } }),
        )
        .catch(() => undefined);
    };
    opts.signal.addEventListener('abort', onAbort, { once: true });
    let r: LockResponse__Output;
    try {
      r = (await this.request(
        attempt,
        (id) => {
          acquireId = id;
          return { lock: { id, ...base(), op: 'ACQUIRE', name, timeoutMs: opts.timeoutMs ?? 0 } };
        },
        AbortSignal.any([opts.signal]),
      )) as LockResponse__Output;
    } finally {
      opts.signal.removeEventListener('abort', onAbort);
    }
    if (r.errorCode === 'TIMEOUT') throw new LockTimeoutError(`timed out waiting for lock ${name}`);
    if (r.errorCode) throw stateError(r.errorCode, r.errorMessage, name);
    const token = Number(r.lockToken);
    let released = false;
    return {
      key: r.key,
      token,
      fence: { key: r.key, createRevision: token },
      release: async () => {
        if (released) return;
        released = true;
        // The lock is bound to the agent's lease: released here, or when the lease ends.
        const conn = await this.host.registered(AbortSignal.timeout(5_000)).catch(() => undefined);
        if (!conn) return;
        const id = String(this.nextId++);
        await new Promise<void>((resolve) => {
          this.pending.set(id, { conn, write: false, resolve: () => resolve(), reject: () => resolve() });
          if (!conn.send({ lock: { id, ...base(), op: 'RELEASE', lockToken: token } })) {
            this.pending.delete(id);
            resolve();
          }
        });
      },
    };
  }
}

function check(r: StateResponse__Output, key: string): StateResponse__Output {
  if (r.errorCode) throw stateError(r.errorCode, r.errorMessage, key);
  return r;
}

function stateError(code: string, message: string, key: string): Error {
  switch (code) {
    case 'FENCED':
      return new FencedError(key, message);
    case 'PERMISSION_DENIED':
      return new StatePermissionError(message);
    case 'INVALID':
    case 'PAYLOAD_TOO_LARGE':
    case 'TOO_MANY_WATCHES':
      return new RangeError(message);
    case 'CANCELLED':
      return new StateError(`${key}: ${message}`);
    case 'OUTCOME_UNKNOWN':
      return new StateOutcomeUnknownError(`${key}: ${message}`);
    default:
      return new StateUnavailableError(message);
  }
}

function versioned(kv: KeyValue__Output): Versioned {
  return {
    key: kv.key,
    value: JSON.parse(kv.valueJson) as JsonValue,
    modRevision: Number(kv.modRevision),
    createRevision: Number(kv.createRevision),
    version: Number(kv.version),
  };
}
