import { agentMayWrite, RESERVED_STATE_PREFIX } from '../api/signals.ts';
import type { DispatcherMessage } from '../gen/agentflow/v1/DispatcherMessage.ts';
import type { KeyValue } from '../gen/agentflow/v1/KeyValue.ts';
import type { LockRequest__Output } from '../gen/agentflow/v1/LockRequest.ts';
import type { LockResponse } from '../gen/agentflow/v1/LockResponse.ts';
import type { StateRequest__Output } from '../gen/agentflow/v1/StateRequest.ts';
import type { StateResponse } from '../gen/agentflow/v1/StateResponse.ts';
import type { Logger } from '../lib/log.ts';
import { MAX_MESSAGE_BYTES } from '../lib/proto.ts';
import {
  ConflictError,
  type Fence,
  FencedError,
  type Held,
  type JsonValue,
  type KeptLease,
  Locks,
  LockTimeoutError,
  MAX_VALUE_BYTES,
  OutcomeUnknownError,
  type ResumableWatch,
  SharedState,
  type StateStore,
  type TaskRef,
  type Versioned,
} from '../state/index.ts';

/** Error codes of StateResponse / LockResponse (docs/protocol.md). */
export type StateErrorCode =
  | 'CONFLICT'
  | 'FENCED'
  | 'INVALID'
  | 'PERMISSION_DENIED'
  | 'PAYLOAD_TOO_LARGE'
  | 'UNAVAILABLE'
  | 'OUTCOME_UNKNOWN'
  | 'TOO_MANY_WATCHES'
  | 'TIMEOUT'
  | 'CANCELLED';

/** Most watches one agent stream may hold open. */
export const MAX_WATCHES_PER_STREAM = 32;
/** Most locks one agent may hold or wait for at once. */
export const MAX_LOCKS_PER_AGENT = 64;
const MAX_HISTORY = 100;
// Room for the rest of the message inside the gRPC limit.
const MAX_RESPONSE_BYTES = MAX_MESSAGE_BYTES - 64 * 1024;
const LOCK_NAME = /^[A-Za-z0-9._:-]{1,128}(\/[A-Za-z0-9._:-]{1,128}){0,7}$/;

class Refusal extends Error {
  readonly code: StateErrorCode;
  constructor(code: StateErrorCode, message: string) {
    super(message);
    this.code = code;
  }
}

/** The stream a request arrived on: where answers and watch events go. */
export interface StateClient {
  readonly agentId: string;
  /** `namespace/agentId`: what the locks it holds are kept under (agent ids repeat across namespaces). */
  readonly key: string;
  send(msg: DispatcherMessage): void;
}

interface StreamResources {
  watches: Map<string, ResumableWatch>;
  acquiring: Map<string, AbortController>;
}

/**
 * Agents' shared state and locks, performed by the dispatcher in etcd: the
 * agent names one of its own current attempts, and the operation is confined
 * to that attempt's workflow (namespace from the agent's verified identity).
 * Every write also carries the leader's fences, so a deposed leader cannot
 * write on an agent's behalf.
 */
export class StateService {
  private readonly store: StateStore;
  private readonly locks: Locks;
  private readonly leaderFences: () => Fence[];
  private readonly log: Logger;
  private readonly streams = new Map<StateClient, StreamResources>();
  /** Locks each agent holds, by fencing token. Bound to the agent's lease: they outlive a reconnect. */
  private readonly held = new Map<string, Map<number, Held>>();

  constructor(store: StateStore, leaderFences: () => Fence[], log: Logger) {
    this.store = store;
    this.locks = new Locks(store);
    this.leaderFences = leaderFences;
    this.log = log;
  }

  private resources(client: StateClient): StreamResources {
    let r = this.streams.get(client);
    if (!r) {
      r = { watches: new Map(), acquiring: new Map() };
      this.streams.set(client, r);
    }
    return r;
  }

  /** The stream ended: its watches and lock waits end with it (held locks stay with the lease). */
  async closeStream(client: StateClient): Promise<void> {
    const r = this.streams.get(client);
    if (!r) return;
    this.streams.delete(client);
    for (const a of r.acquiring.values()) a.abort();
    await Promise.allSettled([...r.watches.values()].map((w) => w.close()));
  }

  /** The agent is gone for good (its lease is over): forget what it held. */
  forgetAgent(key: string): void {
    this.held.delete(key);
  }

  async state(client: StateClient, ref: TaskRef, req: StateRequest__Output): Promise<void> {
    const id = String(req.id);
    let res: StateResponse;
    try {
      res = { id, ...(await this.stateOp(client, ref, req)) };
    } catch (err) {
      res = { id, ...this.failure(err, `state ${req.op} ${req.key}`) };
    }
    if (req.op !== 'WATCH' || res.errorCode) client.send({ state: res });
  }

  private scoped(ref: TaskRef): SharedState {
    return new SharedState(this.store, { kind: 'workflow', namespace: ref.namespace, workflow: ref.workflow });
  }

  private async stateOp(
    client: StateClient,
    ref: TaskRef,
    req: StateRequest__Output,
  ): Promise<Omit<StateResponse, 'id'>> {
    const s = this.scoped(ref);
    if (
      (req.op === 'PUT' || req.op === 'CAS' || req.op === 'DELETE') &&
      !agentMayWrite(req.key, req.op, req.op === 'CAS' ? Number(req.expectedRevision) : -1)
    ) {
      throw new Refusal(
        'PERMISSION_DENIED',
        `StateRequest.key: "${req.key.slice(0, 128)}" is under ${RESERVED_STATE_PREFIX}, which only agentflow writes (signals come from \`agentflow signal\`)`,
      );
    }
    switch (req.op) {
      case 'GET': {
        const v = await s.get(req.key);
        return { items: v ? [kv(v)] : [], revision: v?.modRevision ?? 0 };
      }
      case 'PUT':
        return { revision: await s.put(req.key, parseValue(req), { fences: this.fences(ref, req) }) };
      case 'CAS':
        return {
          revision: await s.cas(req.key, parseValue(req), Number(req.expectedRevision), {
            fences: this.fences(ref, req),
          }),
        };
      case 'DELETE': {
        const existed = await s.delete(req.key, req.hasExpected ? Number(req.expectedRevision) : undefined, {
          fences: this.fences(ref, req),
        });
        return { existed };
      }
      case 'LIST': {
        const { items, revision } = await s.list(req.key);
        return { items: bounded(items.map(kv), `list of "${req.key}"`), revision };
      }
      case 'HISTORY': {
        const limit = Math.min(req.limit || 20, MAX_HISTORY);
        return { items: bounded((await s.history(req.key, limit)).map(kv), `history of "${req.key}"`) };
      }
      case 'WATCH':
        await this.watch(client, s, req);
        client.send({ state: { id: String(req.id) } });
        return {};
      case 'UNWATCH': {
        const r = this.resources(client);
        const key = String(req.expectedRevision);
        const w = r.watches.get(key);
        r.watches.delete(key);
        await w?.close();
        return {};
      }
      default:
        throw new Refusal('INVALID', `StateRequest.op: unknown operation ${String(req.op)}`);
    }
  }

  private async watch(client: StateClient, s: SharedState, req: StateRequest__Output): Promise<void> {
    const r = this.resources(client);
    const id = String(req.id);
    if (r.watches.has(id)) throw new Refusal('INVALID', `StateRequest.id: watch ${id} already exists`);
    if (r.watches.size >= MAX_WATCHES_PER_STREAM) {
      throw new Refusal('TOO_MANY_WATCHES', `at most ${MAX_WATCHES_PER_STREAM} watches per agent stream`);
    }
    const from = Number(req.fromRevision) || 0;
    const w = await s.watch(
      req.key,
      from,
      (e) => {
        client.send({
          watchEvent: {
            id,
            type: e.type === 'delete' ? 'DELETE' : 'PUT',
            kv: {
              key: e.key,
              valueJson: e.value ?? '',
              modRevision: e.modRevision,
              createRevision: e.createRevision,
              version: 0,
            },
            revision: e.modRevision,
          },
        });
      },
      (items, revision) => client.send({ watchEvent: { id, type: 'RESYNC', items: items.map(kv), revision } }),
    );
    if (!this.streams.has(client)) {
      await w.close(); // the stream ended while the watch started
      return;
    }
    r.watches.set(id, w);
  }

  async lock(client: StateClient, lease: KeptLease, ref: TaskRef, req: LockRequest__Output): Promise<void> {
    const id = String(req.id);
    let res: LockResponse;
    try {
      res = { id, ...(await this.lockOp(client, lease, ref, req)) };
    } catch (err) {
      res = { id, ...this.failure(err, `lock ${req.op} ${req.name}`) };
    }
    client.send({ lock: res });
  }

  private async lockOp(
    client: StateClient,
    lease: KeptLease,
    ref: TaskRef,
    req: LockRequest__Output,
  ): Promise<Omit<LockResponse, 'id'>> {
    const mine = this.heldBy(client.key);
    switch (req.op) {
      case 'ACQUIRE': {
        if (!LOCK_NAME.test(req.name)) {
          throw new Refusal('INVALID', `LockRequest.name: "${req.name.slice(0, 64)}" is not a lock name (a/b/c)`);
        }
        const r = this.resources(client);
        if (mine.size + r.acquiring.size >= MAX_LOCKS_PER_AGENT) {
          throw new Refusal('INVALID', `at most ${MAX_LOCKS_PER_AGENT} locks held or awaited per agent`);
        }
        const abort = new AbortController();
        const id = String(req.id);
        r.acquiring.set(id, abort);
        try {
          const held = await this.locks.acquire(`workflow/${ref.namespace}/${ref.workflow}/${req.name}`, lease, {
            signal: abort.signal,
            ...(req.timeoutMs > 0 && { timeoutMs: req.timeoutMs }),
          });
          if (abort.signal.aborted) {
            await held.release();
            throw new Refusal('CANCELLED', 'the wait was cancelled');
          }
          mine.set(held.token, held);
          return { key: held.key, lockToken: held.token };
        } catch (err) {
          if (abort.signal.aborted && !(err instanceof Refusal))
            throw new Refusal('CANCELLED', 'the wait was cancelled');
          throw err;
        } finally {
          r.acquiring.delete(id);
        }
      }
      case 'RELEASE': {
        const token = Number(req.lockToken);
        const held = mine.get(token);
        if (!held) throw new Refusal('INVALID', `LockRequest.lockToken: this agent holds no lock with token ${token}`);
        mine.delete(token);
        await held.release();
        return {};
      }
      case 'CANCEL': {
        this.resources(client).acquiring.get(String(req.lockToken))?.abort();
        return {};
      }
      default:
        throw new Refusal('INVALID', `LockRequest.op: unknown operation ${String(req.op)}`);
    }
  }

  private heldBy(agentId: string): Map<number, Held> {
    let m = this.held.get(agentId);
    if (!m) {
      m = new Map();
      this.held.set(agentId, m);
    }
    return m;
  }

  /** The agent's fences (locks of this workflow only) plus the leader's. */
  private fences(ref: TaskRef, req: StateRequest__Output): Fence[] {
    const allowed = this.locks.prefix(`workflow/${ref.namespace}/${ref.workflow}`);
    const out: Fence[] = [];
    req.fences.forEach((f, i) => {
      if (!f.key.startsWith(allowed)) {
        throw new Refusal('PERMISSION_DENIED', `StateRequest.fences[${i}].key: not a lock of this workflow`);
      }
      out.push({ key: f.key, createRevision: Number(f.createRevision) });
    });
    return [...out, ...this.leaderFences()];
  }

  private failure(err: unknown, what: string): { errorCode: StateErrorCode; errorMessage: string; revision?: number } {
    if (err instanceof Refusal) return { errorCode: err.code, errorMessage: err.message };
    if (err instanceof ConflictError) {
      return { errorCode: 'CONFLICT', errorMessage: relative(err.message), revision: err.actualRevision };
    }
    if (err instanceof FencedError) {
      // A failed leadership fence is the dispatcher's problem, not the agent's: its write did not happen here.
      if (this.leaderFences().some((f) => f.key === err.key)) {
        return { errorCode: 'UNAVAILABLE', errorMessage: 'the dispatcher is no longer the leader; reconnect' };
      }
      return { errorCode: 'FENCED', errorMessage: relative(err.message) };
    }
    if (err instanceof LockTimeoutError) return { errorCode: 'TIMEOUT', errorMessage: relative(err.message) };
    if (err instanceof OutcomeUnknownError) {
      return {
        errorCode: 'OUTCOME_UNKNOWN',
        errorMessage: `etcd took the write but did not answer; it may have applied`,
      };
    }
    if (err instanceof RangeError || err instanceof TypeError) {
      return { errorCode: 'INVALID', errorMessage: err.message };
    }
    this.log.warn('Agent state operation failed', { what, err: err as Error });
    return { errorCode: 'UNAVAILABLE', errorMessage: `etcd did not answer: ${(err as Error).message}` };
  }
}

function parseValue(req: StateRequest__Output): JsonValue {
  const bytes = Buffer.byteLength(req.valueJson);
  if (bytes > MAX_VALUE_BYTES) {
    throw new Refusal('PAYLOAD_TOO_LARGE', `value for "${req.key}" is ${bytes} bytes; the limit is ${MAX_VALUE_BYTES}`);
  }
  try {
    return JSON.parse(req.valueJson);
  } catch {
    throw new Refusal('INVALID', `StateRequest.valueJson: not JSON`);
  }
}

function kv(v: Versioned): KeyValue {
  return {
    key: v.key,
    valueJson: JSON.stringify(v.value),
    modRevision: v.modRevision,
    createRevision: v.createRevision,
    version: v.version,
  };
}

function bounded(items: KeyValue[], what: string): KeyValue[] {
  let bytes = 0;
  for (const i of items) bytes += Buffer.byteLength(i.valueJson ?? '') + Buffer.byteLength(i.key ?? '') + 32;
  if (bytes > MAX_RESPONSE_BYTES) {
    throw new Refusal(
      'PAYLOAD_TOO_LARGE',
      `${what} is ${bytes} bytes (${items.length} keys), over the ${MAX_RESPONSE_BYTES}-byte message limit; read a narrower prefix`,
    );
  }
  return items;
}

/** etcd keys in messages to agents are shown without the operator's prefix. */
function relative(message: string): string {
  return message.replace(/\/[^\s:]*\/state\/workflow\/[^/\s]+\/[^/\s]+\//g, '');
}
