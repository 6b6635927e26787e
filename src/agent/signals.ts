// ctx.waitForSignal and ctx.onSignal: a handler takes the signals users send to its workflow
// (`agentflow signal`), each signal by exactly one task. The rules are in src/api/signals.ts: a
// signal is a reserved key of the workflow's shared state, written by the leader; taking it is
// creating its consumed marker (compare-and-swap on absence) naming the task and the ordinal of
// the wait. So a signal sent before the handler waits is there when it does, a leader failover
// loses nothing (it is all in etcd), and a retry of the task that waits again gets the signals its
// earlier attempt took, in the same order, before any new one.

import {
  CONSUMED_PREFIX,
  type ConsumedValue,
  consumedKey,
  SIGNAL_PREFIX,
  type SignalValue,
  signalKey,
  signalNameProblem,
} from '../api/signals.ts';
import { ConflictError } from '../state/errors.ts';
import type { JsonValue, Versioned } from '../state/shared-state.ts';
import { KeyedMutex } from './keyed-mutex.ts';
import type { WorkflowState } from './remote-state.ts';

/** A signal as a handler gets it. */
export interface Signal<T = unknown> {
  name: string;
  id: string;
  data: T;
  /** The user who sent it (authenticated by the Kubernetes API server). */
  sentBy: string;
  sentAt: string;
}

/** waitForSignal's timeoutMs passed with no signal. */
export class SignalTimeoutError extends Error {
  override name = 'SignalTimeoutError';
  readonly signal: string;
  constructor(signal: string, timeoutMs: number) {
    super(`no signal "${signal}" came within ${timeoutMs} ms`);
    this.signal = signal;
  }
}

/** What a signal reader needs of the attempt it serves. */
export interface SignalHost {
  /** The task instance (the part of the task id after the workflow). */
  task: string;
  attempt: number;
  state(): WorkflowState;
  /** Aborts when the attempt ends. */
  signal: AbortSignal;
}

/** After a failed wait, onSignal waits this long before it waits again. */
const ON_SIGNAL_RETRY_MS = 1_000;

const idOf = (key: string) => key.slice(key.lastIndexOf('/') + 1);

function asSignal(name: string, kv: Versioned): Signal {
  const v = kv.value as unknown as SignalValue;
  return { name, id: idOf(kv.key), data: v?.data ?? null, sentBy: v?.sentBy ?? '', sentAt: v?.sentAt ?? '' };
}

/** The signal readers of one attempt: waits on one name are served one after another, in call order. */
export class SignalReader {
  private readonly host: SignalHost;
  private readonly delivered = new Map<string, number>();
  private readonly mutex = new KeyedMutex();

  constructor(host: SignalHost) {
    this.host = host;
  }

  /** The next signal `name` for this task (see the file's comment), waiting up to `timeoutMs` (default: the attempt). */
  async wait(name: string, opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<Signal> {
    const problem = signalNameProblem(name);
    if (problem) throw new TypeError(`waitForSignal: name: ${problem}`);
    const { timeoutMs } = opts;
    if (timeoutMs !== undefined && (!Number.isFinite(timeoutMs) || timeoutMs < 0)) {
      throw new RangeError(`waitForSignal: timeoutMs must be a number ≥ 0, got ${String(timeoutMs)}`);
    }
    const abort = new AbortController();
    const ends = [this.host.signal, ...(opts.signal ? [opts.signal] : [])];
    const onEnd = () => abort.abort(ends.find((s) => s.aborted)?.reason);
    for (const s of ends) s.addEventListener('abort', onEnd, { once: true });
    if (ends.some((s) => s.aborted)) onEnd();
    const timer =
      timeoutMs === undefined
        ? undefined
        : setTimeout(() => abort.abort(new SignalTimeoutError(name, timeoutMs)), timeoutMs);
    try {
      const release = await this.mutex.acquire(name, abort.signal);
      try {
        const ordinal = this.delivered.get(name) ?? 0;
        const s = await this.take(name, ordinal, abort.signal);
        // Taken, but nobody waits any more: not counted, so the next wait at this ordinal gets it.
        if (abort.signal.aborted) throw abort.signal.reason;
        this.delivered.set(name, ordinal + 1);
        return s;
      } finally {
        release();
      }
    } finally {
      clearTimeout(timer);
      for (const s of ends) s.removeEventListener('abort', onEnd);
    }
  }

  private async take(name: string, ordinal: number, signal: AbortSignal): Promise<Signal> {
    const st = this.host.state();
    const sentPrefix = `${SIGNAL_PREFIX}${name}/`;
    const takenPrefix = `${CONSUMED_PREFIX}${name}/`;
    for (;;) {
      if (signal.aborted) throw signal.reason;
      const taken = await st.list(takenPrefix);
      const takenIds = new Set<string>();
      for (const c of taken.items) {
        const v = c.value as unknown as ConsumedValue;
        const id = idOf(c.key);
        takenIds.add(id);
        // Taken by this task at this wait already (an earlier attempt, or a reply that got lost).
        if (v?.task === this.host.task && v.ordinal === ordinal) {
          const kv = await st.get(signalKey(name, id));
          if (kv) return asSignal(name, kv);
        }
      }
      const sent = await st.list(sentPrefix);
      const open = sent.items
        .filter((kv) => !takenIds.has(idOf(kv.key)))
        .sort((a, b) => a.createRevision - b.createRevision);
      for (const kv of open) {
        const mark: ConsumedValue = { task: this.host.task, ordinal, attempt: this.host.attempt };
        try {
          await st.cas(consumedKey(name, idOf(kv.key)), mark as unknown as JsonValue, 0);
          return asSignal(name, kv);
        } catch (err) {
          if (!(err instanceof ConflictError)) throw err;
          // Another task took it first: try the next one.
        }
      }
      await this.nextSent(st, sentPrefix, Math.max(sent.revision, taken.revision) + 1, signal);
    }
  }

  /** Resolves at the next signal written under `prefix` after `from` (or a resync); rejects when `signal` aborts. */
  private async nextSent(st: WorkflowState, prefix: string, from: number, signal: AbortSignal): Promise<void> {
    let wake: () => void = () => undefined;
    const woken = new Promise<void>((resolve) => {
      wake = resolve;
    });
    const w = await st.watch(
      prefix,
      from,
      (e) => {
        if (e.type === 'put') wake();
      },
      () => wake(),
    );
    try {
      await new Promise<void>((resolve, reject) => {
        const onAbort = () => reject(signal.reason);
        if (signal.aborted) return onAbort();
        signal.addEventListener('abort', onAbort, { once: true });
        woken.then(() => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        }, reject);
      });
    } finally {
      await w.close();
    }
  }

  /**
   * Calls `cb` with every signal `name` this task takes until the attempt ends or the returned
   * function is called. A callback that throws is logged by `onError`; the loop goes on.
   */
  on(name: string, cb: (s: Signal) => unknown, onError: (err: Error) => void): () => void {
    const problem = signalNameProblem(name);
    if (problem) throw new TypeError(`onSignal: name: ${problem}`);
    if (typeof cb !== 'function') throw new TypeError('onSignal: the callback must be a function');
    const stop = new AbortController();
    const stopped = () => stop.signal.aborted || this.host.signal.aborted;
    const loop = async () => {
      while (!stopped()) {
        let s: Signal;
        try {
          s = await this.wait(name, { signal: stop.signal });
        } catch (err) {
          if (stopped()) return;
          onError(err as Error);
          // The stream is down or etcd is away: try again shortly rather than spin.
          await new Promise((r) => setTimeout(r, ON_SIGNAL_RETRY_MS));
          continue;
        }
        try {
          await cb(s);
        } catch (err) {
          onError(err as Error);
        }
      }
    };
    loop().catch(onError);
    return () => stop.abort();
  }
}
