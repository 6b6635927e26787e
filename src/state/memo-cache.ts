import { createHash } from 'node:crypto';
import { fenceError } from './fence.ts';
import { decodeJson, type Fence, type StateStore } from './store.ts';

// Memoized task outputs, per namespace: a task with `memoize` whose key (CEL; by default its handler
// and rendered input) has an entry younger than its maxAgeSeconds is not dispatched; its output is
// the entry's. Entries live under <prefix>/memo/<namespace>/<sha256 of the key>, bounded per namespace
// by count and bytes; the oldest go first when a write passes a bound.

/** Entries one namespace keeps at most (the oldest are evicted past it). */
export const MAX_MEMO_ENTRIES = 1000;
/** Bytes of entries one namespace keeps at most. */
export const MAX_MEMO_BYTES = 16 * 1024 * 1024;
/** The largest output cached (its JSON): a bigger one is returned as usual but not kept. */
export const MAX_MEMO_OUTPUT_BYTES = 256 * 1024;

/** One memoized output, with where it came from. */
export interface MemoEntry {
  /** The memoization key as evaluated. */
  key: string;
  output: unknown;
  /** RFC 3339: when the attempt that produced it committed. */
  createdAt: string;
  workflow: string;
  task: string;
  attempt: number;
  agentId?: string;
}

/** An entry as listed: everything but the output, with its size. */
export type MemoSummary = Omit<MemoEntry, 'output'> & { bytes: number };

/** Why an output was not cached. */
export class MemoTooLargeError extends Error {
  constructor(key: string, bytes: number) {
    super(
      `output of ${bytes} bytes is over the memoization bound of ${MAX_MEMO_OUTPUT_BYTES}: not cached (key "${key.slice(0, 64)}")`,
    );
    this.name = 'MemoTooLargeError';
  }
}

const isMemoEntry = (v: unknown): v is MemoEntry => {
  if (typeof v !== 'object' || v === null) return false;
  const e = v as Record<string, unknown>;
  return (
    typeof e.key === 'string' &&
    'output' in e &&
    typeof e.createdAt === 'string' &&
    !Number.isNaN(Date.parse(e.createdAt)) &&
    typeof e.workflow === 'string' &&
    typeof e.task === 'string' &&
    typeof e.attempt === 'number' &&
    (e.agentId === undefined || typeof e.agentId === 'string')
  );
};
const MEMO_SHAPE = 'a memoized output {key, output, createdAt, workflow, task, attempt}';

export const memoHash = (key: string) => createHash('sha256').update(key).digest('hex');

export class MemoCache {
  private readonly store: StateStore;

  constructor(store: StateStore) {
    this.store = store;
  }

  private prefix(namespace: string): string {
    return `${this.store.key('memo', namespace)}/`;
  }

  private path(namespace: string, key: string): string {
    return this.store.key('memo', namespace, memoHash(key));
  }

  /** The entry for `key` if there is one no older than `maxAgeSeconds` (undefined: any age). */
  async get(namespace: string, key: string, maxAgeSeconds?: number, now = Date.now()): Promise<MemoEntry | undefined> {
    const e = await this.store.get(this.path(namespace, key));
    if (!e) return undefined;
    const entry = decodeJson(e, isMemoEntry, MEMO_SHAPE);
    // A hash collision is as good as a miss (and would need sha256 broken).
    if (entry.key !== key) return undefined;
    if (maxAgeSeconds !== undefined && now - Date.parse(entry.createdAt) > maxAgeSeconds * 1000) return undefined;
    return entry;
  }

  /**
   * Keeps an output (replacing an entry of the same key), then evicts the namespace's oldest entries
   * past MAX_MEMO_ENTRIES or MAX_MEMO_BYTES. MemoTooLargeError (nothing written) for an output over
   * MAX_MEMO_OUTPUT_BYTES; a FencedError if a fence no longer holds.
   */
  async put(namespace: string, entry: MemoEntry, fences: Fence[] = []): Promise<void> {
    const outputBytes = Buffer.byteLength(JSON.stringify(entry.output ?? null));
    if (outputBytes > MAX_MEMO_OUTPUT_BYTES) throw new MemoTooLargeError(entry.key, outputBytes);
    return this.serial(namespace, () => this.write(namespace, entry, fences));
  }

  /**
   * One write or clear of a namespace at a time (in this process, the leader's): the index is read
   * once, not by each of a burst of first puts (the last read would drop what the others added), and
   * an eviction cannot delete an entry a put of the same key is writing anew.
   */
  private serial<T>(namespace: string, fn: () => Promise<T>): Promise<T> {
    const before = this.queues.get(namespace) ?? Promise.resolve();
    const run = before.then(fn, fn);
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.queues.set(namespace, tail);
    void tail.then(() => {
      if (this.queues.get(namespace) === tail) this.queues.delete(namespace);
    });
    return run;
  }

  private readonly queues = new Map<string, Promise<void>>();

  private async write(namespace: string, entry: MemoEntry, fences: Fence[]): Promise<void> {
    const body = JSON.stringify(entry);
    const bytes = Buffer.byteLength(body);
    const res = await this.store
      .txn(fences)
      .then(this.store.client.put(this.path(namespace, entry.key)).value(body))
      .commit();
    if (!res.succeeded) throw (await fenceError(this.store, fences)) ?? new Error('memo put: the transaction failed');
    const m = await this.indexOf(namespace);
    m.set(this.path(namespace, entry.key), { at: Date.parse(entry.createdAt), bytes });
    await this.evict(namespace, fences);
  }

  /** Every entry of the namespace, newest first (outputs left out). */
  async list(namespace: string): Promise<MemoSummary[]> {
    const out: MemoSummary[] = [];
    for (const e of await this.store.listPaged(this.prefix(namespace), 200)) {
      const { output: _, ...rest } = decodeJson(e, isMemoEntry, MEMO_SHAPE);
      out.push({ ...rest, bytes: Buffer.byteLength(e.value) });
    }
    return out.sort((a, b) => Date.parse(b.createdAt) - Date.parse(a.createdAt));
  }

  /** Removes the entry of `key`, or all of the namespace's; how many went. */
  clear(namespace: string, key?: string, fences: Fence[] = []): Promise<number> {
    return this.serial(namespace, () => this.remove(namespace, key, fences));
  }

  private async remove(namespace: string, key: string | undefined, fences: Fence[]): Promise<number> {
    if (key !== undefined) {
      const res = await this.store
        .txn(fences)
        .then(this.store.client.delete().key(this.path(namespace, key)))
        .commit();
      if (!res.succeeded)
        throw (await fenceError(this.store, fences)) ?? new Error('memo clear: the transaction failed');
      this.index.get(namespace)?.delete(this.path(namespace, key));
      const deleted = res.responses[0]?.response_delete_range?.deleted;
      return Number(deleted ?? 0);
    }
    const n = await this.store.client.getAll().prefix(this.prefix(namespace)).count();
    await this.store.deletePrefixes([this.prefix(namespace)], fences);
    this.index.delete(namespace);
    return n;
  }

  /**
   * What of a namespace's entries eviction needs (path -> age, size), read once per namespace and then
   * kept up to date by this process's own writes: only the leader writes the cache.
   */
  private readonly index = new Map<string, Map<string, { at: number; bytes: number }>>();

  private async indexOf(namespace: string): Promise<Map<string, { at: number; bytes: number }>> {
    let m = this.index.get(namespace);
    if (m) return m;
    m = new Map();
    for (const e of await this.store.listPaged(this.prefix(namespace), 200)) {
      let at = 0;
      try {
        at = Date.parse(decodeJson(e, isMemoEntry, MEMO_SHAPE).createdAt);
      } catch {
        at = 0; // unreadable: the first to go
      }
      m.set(e.key, { at, bytes: Buffer.byteLength(e.value) });
    }
    this.index.set(namespace, m);
    return m;
  }

  private async evict(namespace: string, fences: Fence[]): Promise<void> {
    const m = await this.indexOf(namespace);
    let bytes = 0;
    for (const v of m.values()) bytes += v.bytes;
    const doomed: string[] = [];
    while (m.size > MAX_MEMO_ENTRIES || bytes > MAX_MEMO_BYTES) {
      let oldest: string | undefined;
      let at = Number.POSITIVE_INFINITY;
      for (const [k, v] of m)
        if (v.at < at) {
          at = v.at;
          oldest = k;
        }
      if (oldest === undefined) break;
      bytes -= (m.get(oldest) as { bytes: number }).bytes;
      m.delete(oldest);
      doomed.push(oldest);
    }
    for (let i = 0; i < doomed.length; i += 64) {
      const res = await this.store
        .txn(fences)
        .then(...doomed.slice(i, i + 64).map((k) => this.store.client.delete().key(k)))
        .commit();
      if (!res.succeeded)
        throw (await fenceError(this.store, fences)) ?? new Error('memo eviction: the transaction failed');
    }
  }
}
