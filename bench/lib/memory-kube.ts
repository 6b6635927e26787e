// A stand-in for the Kubernetes API server, in memory, so the workflow
// scenario can run the operator's real WorkflowController (validation,
// finalizer, conditions, throttled bounded status, Events) without starting a
// kube-apiserver. It serves exactly the calls that controller makes: create,
// get, JSON merge patch of an object or its /status, delete; and it feeds
// informer views the way a watch would, one event loop turn later. Bodies and
// answers are JSON-encoded and decoded as over the wire, so the client side
// of that cost is counted; HTTP, the API server's own work and etcd writes
// behind it are not.
import { randomUUID } from 'node:crypto';
import {
  type KObject,
  KubeApiError,
  KubeClient,
  type RequestOptions,
  type ResourceType,
} from '../../src/operator/kube/client.ts';
import { staticCredentials } from '../../src/operator/kube/credentials.ts';
import type { InformerHandlers, InformerView } from '../../src/operator/kube/informer.ts';

type Json = Record<string, unknown>;

/** What was written, per resource (plural, with "/status" for the subresource). */
export interface WriteTally {
  writes: number;
  bytes: number;
}

const PATH = /^\/apis?\/(?:[^/]+\/)?[^/]+\/namespaces\/([^/]+)\/([^/]+)(?:\/([^/]+))?(?:\/([^/]+))?$/;

const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/** RFC 7386 JSON merge patch: objects merge, null removes, anything else replaces. */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return patch;
  const out: Json = isObject(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

/**
 * Static credentials, as the operator resolves them (src/operator/kube/credentials.ts): no
 * @kubernetes/client-node in the leader's memory, as in a real operator.
 */
function credentials() {
  return staticCredentials({ kind: 'static', server: 'http://127.0.0.1:1', skipTLSVerify: true, tls: {}, headers: {} });
}

/** A KubeClient whose requests are answered from memory (namespaced resources only). */
export class MemoryKube extends KubeClient {
  private readonly objects = new Map<string, KObject>();
  private readonly informers = new Map<string, MemoryInformer<KObject>>();
  private resourceVersion = 1;
  readonly tally = new Map<string, WriteTally>();
  /** Every Event created or bumped: reason -> count. */
  readonly eventReasons = new Map<string, number>();
  private readonly writeListeners = new Set<(plural: string, o: KObject) => void>();

  constructor() {
    super(credentials(), { userAgent: 'agentflow-bench' });
  }

  /** The cache a controller reads `rt` from, kept up to date by this server's writes. */
  informer<T extends KObject>(rt: ResourceType): InformerView<T> {
    let inf = this.informers.get(rt.plural);
    if (!inf) {
      inf = new MemoryInformer<KObject>(rt);
      this.informers.set(rt.plural, inf);
    }
    return inf as unknown as InformerView<T>;
  }

  /** Calls `fn` after every write with the object as stored (do not modify it); returns the unsubscribe. */
  onWrite(fn: (plural: string, o: KObject) => void): () => void {
    this.writeListeners.add(fn);
    return () => this.writeListeners.delete(fn);
  }

  private wrote(plural: string, o: KObject): void {
    for (const fn of this.writeListeners) fn(plural, o);
  }

  /** The stored object (a copy), as `kubectl get -o json` would show it. */
  object(plural: string, namespace: string, name: string): KObject | undefined {
    const o = this.objects.get(`${plural}/${namespace}/${name}`);
    return o && structuredClone(o);
  }

  override async request<T = unknown>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    const m = PATH.exec(path);
    if (!m) throw new KubeApiError(404, 'NotFound', `${method} ${path}: not served by the in-memory API`);
    const [, namespace = '', plural = '', name, sub] = m;
    const text = opts.body === undefined ? undefined : JSON.stringify(opts.body);
    const body = text === undefined ? undefined : (JSON.parse(text) as Json);
    if (text !== undefined) {
      const t = this.tally.get(sub ? `${plural}/${sub}` : plural) ?? { writes: 0, bytes: 0 };
      t.writes++;
      t.bytes += Buffer.byteLength(text);
      this.tally.set(sub ? `${plural}/${sub}` : plural, t);
    }
    const answer = (o: KObject | undefined) => JSON.parse(JSON.stringify(o ?? {})) as T;
    if (method === 'POST' && name === undefined) return answer(this.createObject(plural, namespace, body ?? {}));
    if (name === undefined) throw new KubeApiError(405, 'MethodNotAllowed', `${method} ${path}: not served`);
    const key = `${plural}/${namespace}/${decodeURIComponent(name)}`;
    const current = this.objects.get(key);
    if (!current) throw new KubeApiError(404, 'NotFound', `${method} ${path}: 404 not found`);
    if (method === 'GET') return answer(current);
    if (method === 'PATCH') return answer(this.patchObject(key, current, body ?? {}, sub));
    if (method === 'DELETE') return answer(this.removeObject(key, current));
    throw new KubeApiError(405, 'MethodNotAllowed', `${method} ${path}: not served`);
  }

  private createObject(plural: string, namespace: string, body: Json): KObject {
    const o = body as KObject;
    const name = o.metadata?.name ?? '';
    const key = `${plural}/${namespace}/${name}`;
    if (this.objects.has(key)) throw new KubeApiError(409, 'AlreadyExists', `${plural} "${name}" already exists`);
    const stored: KObject = {
      ...o,
      metadata: {
        ...o.metadata,
        namespace,
        uid: randomUUID(),
        resourceVersion: String(++this.resourceVersion),
        ...(plural !== 'events' && { generation: 1 }),
        creationTimestamp: new Date().toISOString(),
      } as KObject['metadata'],
    };
    this.objects.set(key, stored);
    if (plural === 'events') this.countEvent(stored as KObject & { reason?: string });
    this.informers.get(plural)?.deliver('add', undefined, stored);
    this.wrote(plural, stored);
    return stored;
  }

  private patchObject(key: string, current: KObject, body: Json, sub: string | undefined): KObject {
    const meta = isObject(body.metadata) ? body.metadata : undefined;
    const precondition = meta?.resourceVersion;
    if (precondition !== undefined && precondition !== current.metadata?.resourceVersion)
      throw new KubeApiError(
        409,
        'Conflict',
        'the object has been modified; please apply your changes to the latest version',
      );
    let next: Json;
    if (sub === 'status') next = { ...(current as Json), status: mergePatch((current as Json).status, body.status) };
    else {
      const { status: _ignored, ...rest } = body;
      if (meta) delete meta.resourceVersion;
      next = mergePatch(current, rest) as Json;
    }
    const stored = next as KObject;
    const specChanged = JSON.stringify((current as Json).spec) !== JSON.stringify(next.spec);
    stored.metadata = {
      ...stored.metadata,
      resourceVersion: String(++this.resourceVersion),
      ...(specChanged && { generation: (current.metadata?.generation ?? 0) + 1 }),
    };
    const plural = key.split('/', 1)[0] as string;
    if (plural === 'events') this.countEvent(stored as KObject & { reason?: string });
    if (stored.metadata.deletionTimestamp && (stored.metadata.finalizers ?? []).length === 0) {
      this.objects.delete(key);
      this.informers.get(plural)?.deliver('delete', current, stored);
      return stored;
    }
    this.objects.set(key, stored);
    this.informers.get(plural)?.deliver('update', current, stored);
    this.wrote(plural, stored);
    return stored;
  }

  private removeObject(key: string, current: KObject): KObject {
    const plural = key.split('/', 1)[0] as string;
    if ((current.metadata?.finalizers ?? []).length > 0) {
      const stored = structuredClone(current);
      stored.metadata = {
        ...stored.metadata,
        deletionTimestamp: new Date().toISOString(),
        resourceVersion: String(++this.resourceVersion),
      };
      this.objects.set(key, stored);
      this.informers.get(plural)?.deliver('update', current, stored);
      return stored;
    }
    this.objects.delete(key);
    this.informers.get(plural)?.deliver('delete', current, current);
    return current;
  }

  private countEvent(e: { reason?: string }): void {
    const r = e.reason ?? '?';
    this.eventReasons.set(r, (this.eventReasons.get(r) ?? 0) + 1);
  }
}

/** An informer's cache and handlers, fed by MemoryKube's writes instead of a watch. */
export class MemoryInformer<T extends KObject> implements InformerView<T> {
  readonly rt: ResourceType;
  readonly hasSynced = true;
  lastContact = Date.now();
  private readonly cache = new Map<string, T>();
  private readonly handlers: InformerHandlers<T>[] = [];

  constructor(rt: ResourceType) {
    this.rt = rt;
  }

  on(h: InformerHandlers<T>): void {
    this.handlers.push(h);
  }

  /** A watch event: handled one turn later, as one arriving over the network would be. */
  deliver(type: 'add' | 'update' | 'delete', old: T | undefined, obj: T): void {
    const copy = structuredClone(obj);
    setImmediate(() => {
      this.lastContact = Date.now();
      const key = `${copy.metadata?.namespace}/${copy.metadata?.name}`;
      if (type === 'delete') this.cache.delete(key);
      else this.cache.set(key, copy);
      for (const h of this.handlers) {
        if (type === 'add') h.add?.(copy);
        else if (type === 'update') h.update?.(old as T, copy);
        else h.delete?.(copy);
      }
    });
  }

  waitForSync(): Promise<void> {
    return Promise.resolve();
  }

  get(key: string): T | undefined {
    return this.cache.get(key);
  }

  list(filter?: (o: T) => boolean): T[] {
    const all = [...this.cache.values()];
    return filter ? all.filter(filter) : all;
  }

  get size(): number {
    return this.cache.size;
  }

  start(): void {}

  stop(): Promise<void> {
    return Promise.resolve();
  }
}
