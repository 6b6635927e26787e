import type { LeaseHolder } from './agent-leases.ts';
import { type LeaseLostError, StateError } from './errors.ts';
import type { Fence, StateStore } from './store.ts';

export class LockTimeoutError extends StateError {
  override name = 'LockTimeoutError';
}

/** A held lock (or won election). Pass `fence` to every write the holder makes. */
export interface Held {
  key: string;
  /** The key's createRevision: strictly increasing across successive holders. */
  token: number;
  fence: Fence;
  release(): Promise<void>;
}

/**
 * Waits in line for `prefix`: creates this session's lease-bound key under it
 * and waits until no key with a smaller createRevision remains. Each waiter
 * watches only its predecessor (no thundering herd). A lock alone never
 * guarantees mutual exclusion (a paused holder may wake after its lease
 * expired): writes must carry the fence.
 */
async function waitInLine(
  store: StateStore,
  prefix: string,
  session: LeaseHolder,
  value: string,
  opts: { timeoutMs?: number; signal?: AbortSignal },
): Promise<Held> {
  session.assertAlive();
  const key = `${prefix}${session.id}`;
  const res = await store.client
    .if(key, 'Create', '==', 0)
    .then(store.client.put(key).value(value).lease(session.id))
    .else(store.client.get(key))
    .commit();
  const token = res.succeeded
    ? Number(res.header.revision)
    : Number(res.responses[0]?.response_range?.kvs[0]?.create_revision ?? 0);
  const deadline = opts.timeoutMs !== undefined ? Date.now() + opts.timeoutMs : undefined;
  const release = async () => {
    await store.client.if(key, 'Create', '==', token).then(store.client.delete().key(key)).commit();
  };
  try {
    for (;;) {
      session.assertAlive();
      if (opts.signal?.aborted) throw new StateError(`waiting for ${prefix} aborted`);
      const ahead = await store.client
        .getAll()
        .prefix(prefix)
        .maxCreateRevision(String(token - 1))
        .sort('Create', 'Descend')
        .limit(1)
        .exec();
      const pred = ahead.kvs[0];
      if (!pred) return { key, token, fence: { key, createRevision: token }, release };
      await waitForDelete(store, pred.key.toString(), Number(ahead.header.revision), session, deadline, opts.signal);
    }
  } catch (err) {
    await release().catch(() => undefined);
    if (err instanceof LockTimeoutError) throw new LockTimeoutError(`timed out waiting for ${prefix}`);
    throw err;
  }
}

async function waitForDelete(
  store: StateStore,
  key: string,
  atRevision: number,
  session: LeaseHolder,
  deadline: number | undefined,
  signal: AbortSignal | undefined,
): Promise<void> {
  const watcher = await store.client
    .watch()
    .key(key)
    .startRevision(String(atRevision + 1))
    .create();
  try {
    await new Promise<void>((resolve, reject) => {
      const timer =
        deadline !== undefined
          ? setTimeout(() => reject(new LockTimeoutError('timeout')), Math.max(0, deadline - Date.now()))
          : undefined;
      const done = (err?: Error) => {
        if (timer) clearTimeout(timer);
        session.off('lost', onLost);
        signal?.removeEventListener('abort', onAbort);
        if (err) reject(err);
        else resolve();
      };
      const onLost = (e: LeaseLostError) => done(e);
      const onAbort = () => done(new StateError('aborted'));
      session.on('lost', onLost);
      signal?.addEventListener('abort', onAbort);
      watcher.on('delete', () => done());
      // On any watch error, go round again: the loop re-reads the line.
      watcher.on('error', () => done());
      // The predecessor may be gone already (deleted between the read and the watch).
      // A failed read goes round again too (done() re-reads the line), never an unhandled rejection.
      store.client
        .get(key)
        .exists()
        .then(
          (exists) => {
            if (!exists) done();
          },
          () => done(),
        );
    });
  } finally {
    await watcher.cancel().catch(() => undefined);
  }
}

/** Mutual-exclusion locks (lease-bound, revision-ordered) with fencing tokens. */
export class Locks {
  private readonly store: StateStore;

  constructor(store: StateStore) {
    this.store = store;
  }

  prefix(name: string): string {
    return `${this.store.key('locks', ...name.split('/'))}/`;
  }

  acquire(name: string, session: LeaseHolder, opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<Held> {
    return waitInLine(this.store, this.prefix(name), session, '', opts);
  }

  /** Runs `fn` holding the lock; the fence is passed in for fenced writes. */
  async withLock<T>(
    name: string,
    session: LeaseHolder,
    fn: (held: Held) => Promise<T>,
    opts: { timeoutMs?: number } = {},
  ): Promise<T> {
    const held = await this.acquire(name, session, opts);
    try {
      return await fn(held);
    } finally {
      await held.release();
    }
  }
}

export interface Leader {
  value: string;
  token: number;
  key: string;
}

/**
 * Leader election: the campaigner whose key has the lowest createRevision
 * leads. Its token fences every write it makes, so a deposed leader that has
 * not noticed yet cannot change anything.
 */
export class Elections {
  private readonly store: StateStore;

  constructor(store: StateStore) {
    this.store = store;
  }

  prefix(name: string): string {
    return `${this.store.key('elections', ...name.split('/'))}/`;
  }

  /** Resolves once this session leads. `value` identifies the leader (e.g. its pod and address). */
  campaign(name: string, session: LeaseHolder, value: string, opts: { signal?: AbortSignal } = {}): Promise<Held> {
    return waitInLine(this.store, this.prefix(name), session, value, opts);
  }

  async leader(name: string): Promise<Leader | undefined> {
    const res = await this.store.client.getAll().prefix(this.prefix(name)).sort('Create', 'Ascend').limit(1).exec();
    const kv = res.kvs[0];
    return kv ? { value: kv.value.toString(), token: Number(kv.create_revision), key: kv.key.toString() } : undefined;
  }
}
