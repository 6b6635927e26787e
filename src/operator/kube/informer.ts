import { setTimeout as delay } from 'node:timers/promises';
import { Backoff } from '../../lib/backoff.ts';
import type { Logger } from '../../lib/log.ts';
import {
  isGone,
  type KObject,
  type KubeClient,
  type Query,
  type ResourceType,
  resourcePath,
  type WatchEvent,
} from './client.ts';

export interface InformerHandlers<T> {
  add?(obj: T): void;
  update?(oldObj: T, newObj: T): void;
  delete?(obj: T): void;
}

export interface InformerOptions {
  namespace?: string;
  labelSelector?: string;
  fieldSelector?: string;
  /** Every object is re-announced as an update this often (level-triggered safety net; default 10 min, 0 = never). */
  resyncMs?: number;
  /** A watch that delivers nothing, not even a bookmark, for this long is restarted (default 90 s). */
  stallMs?: number;
  /** Page size of the initial list (default 500). */
  pageSize?: number;
  logger: Logger;
}

interface List<T> {
  metadata: { resourceVersion?: string; continue?: string };
  items: T[];
}

export const objectKey = (o: KObject) =>
  o.metadata?.namespace ? `${o.metadata.namespace}/${o.metadata.name}` : (o.metadata?.name ?? '');

/** What controllers read from an informer: one namespace's, all namespaces', or several namespaces' (MultiNamespaceInformer). */
export interface InformerView<T extends KObject> {
  readonly rt: ResourceType;
  on(h: InformerHandlers<T>): void;
  readonly hasSynced: boolean;
  waitForSync(signal?: AbortSignal): Promise<void>;
  get(key: string): T | undefined;
  list(filter?: (o: T) => boolean): T[];
  readonly size: number;
  /** Last time any underlying watch delivered something (ms since epoch). */
  readonly lastContact: number;
  start(): void;
  stop(): Promise<void>;
}

/**
 * A list+watch cache of one resource type, as client-go's reflector and
 * informer: lists (paged), then watches from the list's resourceVersion with
 * bookmarks; restarts the watch when the server ends it, when it fails, and
 * when it goes silent; re-lists on 410 Gone (the watch window moved past us),
 * delivering the differences as add/update/delete. Never gives up.
 */
export class Informer<T extends KObject> implements InformerView<T> {
  readonly rt: ResourceType;
  private readonly client: KubeClient;
  private readonly opts: InformerOptions;
  private readonly log: Logger;
  private readonly store = new Map<string, T>();
  private readonly handlers: InformerHandlers<T>[] = [];
  private readonly backoff = new Backoff({ initialMs: 200, maxMs: 30_000 });
  private resourceVersion = '';
  private synced = false;
  private readonly syncWaiters: (() => void)[] = [];
  private abort = new AbortController();
  private running: Promise<void> | undefined;
  private resyncTimer: NodeJS.Timeout | undefined;
  /** Last time the watch delivered something or a list completed (ms since epoch). */
  lastContact = 0;
  /** Counts, for metrics and tests. */
  readonly stats = { lists: 0, watches: 0, relistsAfterGone: 0, stalls: 0, errors: 0 };

  constructor(client: KubeClient, rt: ResourceType, opts: InformerOptions) {
    this.client = client;
    this.rt = rt;
    this.opts = opts;
    this.log = opts.logger.with({ informer: rt.plural });
  }

  on(h: InformerHandlers<T>): void {
    this.handlers.push(h);
  }

  get hasSynced(): boolean {
    return this.synced;
  }

  /** Resolves after the first complete list. */
  waitForSync(signal?: AbortSignal): Promise<void> {
    if (this.synced) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.syncWaiters.push(resolve);
      signal?.addEventListener('abort', () => reject(signal.reason), { once: true });
    });
  }

  get(key: string): T | undefined {
    return this.store.get(key);
  }

  list(filter?: (o: T) => boolean): T[] {
    const out: T[] = [];
    for (const o of this.store.values()) if (!filter || filter(o)) out.push(o);
    return out;
  }

  get size(): number {
    return this.store.size;
  }

  start(): void {
    if (this.running) return;
    this.abort = new AbortController();
    this.running = this.run(this.abort.signal);
    const resync = this.opts.resyncMs ?? 600_000;
    if (resync > 0) {
      this.resyncTimer = setInterval(() => {
        for (const o of this.store.values()) this.emit('update', o, o);
      }, resync);
      this.resyncTimer.unref();
    }
  }

  async stop(): Promise<void> {
    this.abort.abort();
    if (this.resyncTimer) clearInterval(this.resyncTimer);
    await this.running;
    this.running = undefined;
  }

  private path(): string {
    return resourcePath(this.rt, { namespace: this.opts.namespace });
  }

  private selectors(): Query {
    return { labelSelector: this.opts.labelSelector, fieldSelector: this.opts.fieldSelector };
  }

  private async run(signal: AbortSignal): Promise<void> {
    let needList = true;
    while (!signal.aborted) {
      try {
        if (needList) {
          await this.relist(signal);
          needList = false;
        }
        needList = await this.watchOnce(signal);
        this.backoff.reset();
      } catch (err) {
        if (signal.aborted) break;
        this.stats.errors++;
        if (isGone(err)) {
          this.stats.relistsAfterGone++;
          this.log.info('Watch window expired (410 Gone); re-listing', { resourceVersion: this.resourceVersion });
          needList = true;
          continue;
        }
        if ((err as Error).name === 'WatchStalledError') this.stats.stalls++;
        const wait = this.backoff.next();
        this.log.warn('List/watch failed; retrying', { error: err as Error, retryInMs: wait });
        await sleep(wait, signal);
      }
    }
  }

  private async relist(signal: AbortSignal): Promise<void> {
    const fresh = new Map<string, T>();
    let cont: string | undefined;
    let rv = '';
    do {
      const page: List<T> = await this.client.request<List<T>>('GET', this.path(), {
        query: { ...this.selectors(), limit: this.opts.pageSize ?? 500, continue: cont },
        signal,
        timeoutMs: 60_000,
      });
      for (const item of page.items) {
        // Lists omit kind/apiVersion on items; handlers (owner refs, events) want them.
        item.kind ??= this.rt.kind;
        item.apiVersion ??= this.rt.group ? `${this.rt.group}/${this.rt.version}` : this.rt.version;
        fresh.set(objectKey(item), item);
      }
      cont = page.metadata.continue || undefined;
      rv = page.metadata.resourceVersion ?? rv;
    } while (cont);
    this.stats.lists++;
    const old = new Map(this.store);
    this.store.clear();
    for (const [k, o] of fresh) this.store.set(k, o);
    for (const [k, o] of fresh) {
      const prev = old.get(k);
      if (!prev) this.emit('add', o);
      else if (prev.metadata?.resourceVersion !== o.metadata?.resourceVersion) this.emit('update', prev, o);
    }
    for (const [k, o] of old) if (!fresh.has(k)) this.emit('delete', o);
    this.resourceVersion = rv;
    this.lastContact = Date.now();
    if (!this.synced) {
      this.synced = true;
      for (const w of this.syncWaiters.splice(0)) w();
      this.log.debug('Informer synced', { objects: this.store.size, resourceVersion: rv });
    }
  }

  /** One watch; true when a re-list is needed. */
  private async watchOnce(signal: AbortSignal): Promise<boolean> {
    this.stats.watches++;
    let gone = false;
    // Server-side timeout spread over 5-10 min so watches of many informers do not restart together.
    const timeoutSeconds = 300 + Math.floor(Math.random() * 300);
    await this.client.watch<T>(
      this.path(),
      {
        ...this.selectors(),
        resourceVersion: this.resourceVersion,
        allowWatchBookmarks: true,
        timeoutSeconds,
      },
      (e) => {
        this.lastContact = Date.now();
        if (gone) return;
        gone = this.apply(e);
      },
      { signal, stallMs: this.opts.stallMs ?? 90_000 },
    );
    return gone;
  }

  /** Applies one event; true for a 410 ERROR (re-list). */
  private apply(e: WatchEvent<T>): boolean {
    if (e.type === 'ERROR') {
      const st = e.object as unknown as { code?: number; message?: string };
      if (st.code === 410) {
        this.stats.relistsAfterGone++;
        this.log.info('Watch window expired (410 Gone); re-listing', { resourceVersion: this.resourceVersion });
        return true;
      }
      throw new Error(`watch ${this.path()}: ${st.message ?? 'error event'}`);
    }
    const o = e.object;
    const rv = o.metadata?.resourceVersion;
    if (rv) this.resourceVersion = rv;
    if (e.type === 'BOOKMARK') return false;
    o.kind ??= this.rt.kind;
    o.apiVersion ??= this.rt.group ? `${this.rt.group}/${this.rt.version}` : this.rt.version;
    const k = objectKey(o);
    const prev = this.store.get(k);
    if (e.type === 'DELETED') {
      this.store.delete(k);
      this.emit('delete', prev ?? o);
    } else {
      this.store.set(k, o);
      if (prev) this.emit('update', prev, o);
      else this.emit('add', o);
    }
    return false;
  }

  private emit(kind: 'add', o: T): void;
  private emit(kind: 'update', prev: T, o: T): void;
  private emit(kind: 'delete', o: T): void;
  private emit(kind: 'add' | 'update' | 'delete', a: T, b?: T): void {
    for (const h of this.handlers) {
      try {
        if (kind === 'add') h.add?.(a);
        else if (kind === 'update') h.update?.(a, b as T);
        else h.delete?.(a);
      } catch (err) {
        this.log.error('An informer handler threw', { kind, error: err as Error });
      }
    }
  }
}

/** Waits `ms`, or less if `signal` aborts (resolving either way). */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return delay(ms, undefined, { signal }).catch(() => undefined);
}

/**
 * One informer per namespace behind one view (the operator's
 * --watch-namespace a,b): keys are namespace/name, so they never collide.
 */
export class MultiNamespaceInformer<T extends KObject> implements InformerView<T> {
  readonly rt: ResourceType;
  private readonly parts: Informer<T>[];

  constructor(client: KubeClient, rt: ResourceType, namespaces: string[], opts: Omit<InformerOptions, 'namespace'>) {
    if (namespaces.length === 0) throw new RangeError('MultiNamespaceInformer: at least one namespace');
    this.rt = rt;
    this.parts = namespaces.map((namespace) => new Informer<T>(client, rt, { ...opts, namespace }));
  }

  on(h: InformerHandlers<T>): void {
    for (const p of this.parts) p.on(h);
  }

  get hasSynced(): boolean {
    return this.parts.every((p) => p.hasSynced);
  }

  async waitForSync(signal?: AbortSignal): Promise<void> {
    await Promise.all(this.parts.map((p) => p.waitForSync(signal)));
  }

  get(key: string): T | undefined {
    for (const p of this.parts) {
      const o = p.get(key);
      if (o) return o;
    }
    return undefined;
  }

  list(filter?: (o: T) => boolean): T[] {
    return this.parts.flatMap((p) => p.list(filter));
  }

  get size(): number {
    return this.parts.reduce((n, p) => n + p.size, 0);
  }

  get lastContact(): number {
    return Math.min(...this.parts.map((p) => p.lastContact));
  }

  start(): void {
    for (const p of this.parts) p.start();
  }

  async stop(): Promise<void> {
    await Promise.all(this.parts.map((p) => p.stop()));
  }
}
