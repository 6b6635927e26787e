import { ConflictError, FencedError, StateDecodeError } from './errors.ts';
import { encodeStateValue, type JsonValue, MAX_VALUE_BYTES } from './values.ts';

export { encodeStateValue, type JsonValue, MAX_VALUE_BYTES };

import { fenceError } from './fence.ts';
import type { Fence, StateStore } from './store.ts';
import { type ChangeEvent, ResumableWatch } from './watch.ts';

/** Whose state: one workflow's, one pool's, or a whole namespace's. */
export type Scope =
  | { kind: 'workflow'; namespace: string; workflow: string }
  | { kind: 'pool'; namespace: string; pool: string }
  | { kind: 'namespace'; namespace: string };

export interface Versioned<T = JsonValue> {
  key: string;
  value: T;
  /** Pass to cas() as the expected revision. */
  modRevision: number;
  createRevision: number;
  version: number;
}

export interface WriteOptions {
  /** Leadership, lock or claim keys that must still be current for the write to happen. */
  fences?: Fence[];
}

const KEY_PATTERN = /^[A-Za-z0-9._:-]+(\/[A-Za-z0-9._:-]+)*$/;

/**
 * Shared state for agents, scoped per workflow, pool or namespace: get, put,
 * compare-and-swap on modRevision, delete, list, history and watch. Values are
 * JSON. Optimistic concurrency: read, compute, cas(key, value, modRevision),
 * and on ConflictError read again.
 */
export class SharedState {
  private readonly store: StateStore;
  readonly base: string;

  constructor(store: StateStore, scope: Scope) {
    this.store = store;
    this.base = `${
      scope.kind === 'workflow'
        ? store.key('state', 'workflow', scope.namespace, scope.workflow)
        : scope.kind === 'pool'
          ? store.key('state', 'pool', scope.namespace, scope.pool)
          : store.key('state', 'namespace', scope.namespace)
    }/`;
  }

  private path(key: string, isPrefix = false): string {
    const bare = isPrefix && key.endsWith('/') ? key.slice(0, -1) : key;
    // "." and ".." are refused although etcd keys are not paths: a key that reads like a way out of its scope is a bug or an attack.
    if (bare.length === 0 || bare.length > 512 || !KEY_PATTERN.test(bare) || /(^|\/)\.\.?(\/|$)/.test(bare)) {
      throw new RangeError(
        `invalid state ${isPrefix ? 'prefix' : 'key'} "${key}": 1-512 characters of letters, digits, ".", "_", ":", "-", in "/"-separated segments`,
      );
    }
    return this.base + key;
  }

  private encode(key: string, value: JsonValue): string {
    return encodeStateValue(key, value);
  }

  private decode(key: string, raw: string): JsonValue {
    try {
      return JSON.parse(raw) as JsonValue;
    } catch {
      throw new StateDecodeError(this.base + key, `holds non-JSON data: ${raw.slice(0, 100)}`);
    }
  }

  async get<T extends JsonValue = JsonValue>(key: string): Promise<Versioned<T> | undefined> {
    const e = await this.store.get(this.path(key));
    if (!e) return undefined;
    return {
      key,
      value: this.decode(key, e.value) as T,
      modRevision: e.modRevision,
      createRevision: e.createRevision,
      version: e.version,
    };
  }

  /** How many keys are under `prefix`: a count-only range read (no values cross the wire). */
  async count(prefix: string): Promise<number> {
    return this.store.client.getAll().prefix(this.path(prefix, true)).count();
  }

  /** Unconditional write (still fenced if fences are given). Returns the new modRevision. */
  async put(key: string, value: JsonValue, opts: WriteOptions = {}): Promise<number> {
    const path = this.path(key);
    const text = this.encode(key, value);
    const res = await this.store.txn(opts.fences).then(this.store.client.put(path).value(text)).commit();
    if (!res.succeeded) {
      throw (await fenceError(this.store, opts.fences ?? [])) ?? new FencedError(path, 'a fence did not hold');
    }
    return Number(res.header.revision);
  }

  /**
   * Writes only if the key's modRevision is still `expected` (0: the key must
   * not exist). Returns the new modRevision; throws ConflictError otherwise.
   */
  async cas(key: string, value: JsonValue, expected: number, opts: WriteOptions = {}): Promise<number> {
    const path = this.path(key);
    const text = this.encode(key, value);
    const res = await this.store
      .txn(opts.fences)
      .and(path, 'Mod', '==', expected)
      .then(this.store.client.put(path).value(text))
      .commit();
    if (res.succeeded) return Number(res.header.revision);
    const fenced = await fenceError(this.store, opts.fences ?? []);
    if (fenced) throw fenced;
    const now = await this.store.get(path);
    throw new ConflictError(path, expected, now?.modRevision ?? 0);
  }

  /** Deletes the key (only at `expected` modRevision when given). Returns whether it existed. */
  async delete(key: string, expected?: number, opts: WriteOptions = {}): Promise<boolean> {
    const path = this.path(key);
    let b = this.store.txn(opts.fences);
    if (expected !== undefined) b = b.and(path, 'Mod', '==', expected);
    const res = await b.then(this.store.client.delete().key(path)).commit();
    if (!res.succeeded) {
      const fenced = await fenceError(this.store, opts.fences ?? []);
      if (fenced) throw fenced;
      const now = await this.store.get(path);
      throw new ConflictError(path, expected ?? 0, now?.modRevision ?? 0);
    }
    return Number(res.responses[0]?.response_delete_range?.deleted ?? 0) > 0;
  }

  /** Every key under `prefix` (default: the whole scope), sorted, with the read's revision. */
  async list(prefix = ''): Promise<{ items: Versioned[]; revision: number }> {
    if (prefix) this.path(prefix, true);
    const { entries, revision } = await this.store.list(this.base + prefix);
    const items = entries.map((e) => {
      const key = e.key.slice(this.base.length);
      return {
        key,
        value: this.decode(key, e.value),
        modRevision: e.modRevision,
        createRevision: e.createRevision,
        version: e.version,
      };
    });
    return { items, revision };
  }

  /**
   * Earlier values of a key, newest first, as far back as etcd's history
   * reaches (compaction discards older revisions) and at most `limit`.
   */
  async history(key: string, limit = 20): Promise<Versioned[]> {
    const path = this.path(key);
    const out: Versioned[] = [];
    let rev: number | undefined;
    while (out.length < limit) {
      let res: Awaited<ReturnType<ReturnType<typeof this.store.client.get>['exec']>>;
      try {
        const q = this.store.client.get(path);
        res = await (rev === undefined ? q : q.revision(rev)).exec();
      } catch (err) {
        if (/compacted/i.test((err as Error).message)) break;
        throw err;
      }
      const kv = res.kvs[0];
      if (!kv) break;
      const modRevision = Number(kv.mod_revision);
      out.push({
        key,
        value: this.decode(key, kv.value.toString()),
        modRevision,
        createRevision: Number(kv.create_revision),
        version: Number(kv.version),
      });
      if (Number(kv.version) <= 1) break;
      rev = modRevision - 1;
    }
    return out;
  }

  /** Watches changes under `prefix` from `fromRevision` (see ResumableWatch). Keys are relative to the scope. */
  watch(
    prefix: string,
    fromRevision: number,
    onChange: (e: ChangeEvent & { json?: JsonValue }) => void,
    onResync: (items: Versioned[], revision: number) => void,
  ): Promise<ResumableWatch> {
    if (prefix) this.path(prefix, true);
    return new ResumableWatch(this.store, this.base + prefix, fromRevision, {
      onEvent: (e) => {
        const key = prefix + e.key;
        onChange({ ...e, key, ...(e.value !== undefined ? { json: this.decode(key, e.value) } : {}) });
      },
      onResync: (entries, revision) =>
        onResync(
          entries.map((e) => ({
            key: prefix + e.key,
            value: this.decode(prefix + e.key, e.value),
            modRevision: e.modRevision,
            createRevision: e.createRevision,
            version: e.version,
          })),
          revision,
        ),
    }).start();
  }
}
