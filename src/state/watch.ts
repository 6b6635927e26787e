import type { IWatchResponse, Watcher } from 'etcd3';
import { type Entry, type StateStore, toEntry } from './store.ts';

export interface ChangeEvent {
  type: 'put' | 'delete';
  /** Key relative to the watched prefix. */
  key: string;
  /** The new value (put) or the last value (delete, when etcd still had it and the watch asked for it). */
  value?: string;
  modRevision: number;
  /** The key's createRevision; of a delete, only when the watch asks for previous values (else 0). */
  createRevision: number;
}

export interface WatchHandlers {
  /** Every change after the start revision, in revision order. */
  onEvent(e: ChangeEvent): void;
  /**
   * The history the watch needed was compacted away: here is the whole current
   * state under the prefix at `revision`; events continue after it. Consumers
   * replace what they know (level-triggered), so nothing is silently missed.
   */
  onResync(entries: Entry[], revision: number): void;
  onError?(err: Error): void;
}

/**
 * A prefix watch that survives disconnects (resuming after the last revision
 * it delivered) and compaction (re-reading, reporting a resync, and watching
 * on from the read's revision).
 */
export class ResumableWatch {
  private readonly store: StateStore;
  private readonly prefix: string;
  private readonly handlers: WatchHandlers;
  private watcher: Watcher | undefined;
  private closed = false;
  private readonly onlyDeletes: boolean;
  private readonly previous: boolean;
  private readonly keysOnlyResync: boolean;
  /** Last revision delivered to the consumer. */
  revision: number;

  /**
   * `onlyDeletes`: etcd filters out puts (half the events for a consumer that only cares what vanished).
   * `previousValues: false`: a delete carries no value and no createRevision (etcd need not read the old
   * value, and deleting a big prefix sends keys, not values). `keysOnlyResync`: a resync hands over keys
   * and revisions without values.
   */
  constructor(
    store: StateStore,
    prefix: string,
    fromRevision: number,
    handlers: WatchHandlers,
    opts: { onlyDeletes?: boolean; previousValues?: boolean; keysOnlyResync?: boolean } = {},
  ) {
    this.store = store;
    this.prefix = prefix;
    this.handlers = handlers;
    this.revision = fromRevision - 1;
    this.onlyDeletes = opts.onlyDeletes ?? false;
    this.previous = opts.previousValues ?? true;
    this.keysOnlyResync = opts.keysOnlyResync ?? false;
  }

  async start(): Promise<this> {
    await this.open();
    return this;
  }

  private async open(): Promise<void> {
    for (;;) {
      if (this.closed) return;
      let w: Watcher;
      try {
        let b = this.store.client
          .watch()
          .prefix(this.prefix)
          .startRevision(String(this.revision + 1));
        if (this.previous) b = b.withPreviousKV();
        // etcd3 maps ignore('delete') to etcd's NOPUT filter (and 'put' to NODELETE): its names are
        // the other way round, so this asks etcd to leave puts out.
        w = await (this.onlyDeletes ? b.ignore('delete') : b).create();
      } catch (err) {
        if (!(await this.compacted(err))) throw err;
        await this.resync();
        continue;
      }
      if (this.closed) {
        await w.cancel();
        return;
      }
      this.watcher = w;
      w.on('data', (res: IWatchResponse) => this.deliver(res));
      w.on('error', (err: Error) => void this.recover(w, err));
      return;
    }
  }

  /**
   * Whether a cancelled watch was cancelled for compaction. etcd says so in a
   * field etcd3 does not surface (its error reads "Watcher canceled: "), so ask
   * etcd directly: can the revision we resume from still be read?
   */
  private async compacted(err: unknown): Promise<boolean> {
    if (err instanceof Error && /compacted/i.test(err.message)) return true;
    try {
      await this.store.client
        .get(this.prefix)
        .revision(String(this.revision + 1))
        .exec();
      return false;
    } catch (probe) {
      return probe instanceof Error && /compacted/i.test(probe.message);
    }
  }

  /** Re-reads the prefix and hands the consumer the whole current state. */
  private async resync(): Promise<void> {
    const { entries, revision } = await this.store.list(this.prefix, { keysOnly: this.keysOnlyResync });
    this.revision = revision;
    this.handlers.onResync(
      entries.map((e) => ({ ...e, key: e.key.slice(this.prefix.length) })),
      revision,
    );
  }

  private deliver(res: IWatchResponse): void {
    // One revision can change many keys (a transaction, a lease expiring): etcd sends all of its
    // events in one response. Skip only revisions delivered before this response (a replay after
    // a reconnect), never the later events of the revision being delivered.
    const delivered = this.revision;
    for (const ev of res.events) {
      const kv = toEntry(ev.kv, this.prefix);
      if (kv.modRevision <= delivered) continue;
      const deleted = ev.type === 'Delete';
      const value = deleted ? (ev.prev_kv ? ev.prev_kv.value.toString('utf8') : undefined) : kv.value;
      this.revision = kv.modRevision;
      this.handlers.onEvent({
        type: deleted ? 'delete' : 'put',
        key: kv.key,
        ...(value !== undefined ? { value } : {}),
        modRevision: kv.modRevision,
        createRevision: deleted ? Number(ev.prev_kv?.create_revision ?? 0) : kv.createRevision,
      });
    }
  }

  private async recover(failed: Watcher, err: Error): Promise<void> {
    if (this.closed || failed !== this.watcher) return;
    this.watcher = undefined;
    // The server already cancelled it: cancel() would wait for an answer that never comes.
    failed.removeAllListeners('data');
    try {
      if (await this.compacted(err)) {
        await this.resync();
      } else {
        this.handlers.onError?.(err);
        await new Promise((r) => setTimeout(r, 200 + Math.random() * 300));
      }
      await this.open();
    } catch (e) {
      this.handlers.onError?.(e as Error);
      if (!this.closed) setTimeout(() => void this.recover(failed, err), 1_000);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.watcher?.cancel().catch(() => undefined);
  }
}
