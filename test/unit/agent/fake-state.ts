// The dispatcher's side of agents' shared state and locks, in memory, for
// agent runtime tests: revisions, history, watches with replay and
// compaction, lease-held locks with waiters, fences. It answers the way
// src/dispatcher/state-service.ts does, without etcd.
import type { DispatcherMessage } from '../../../src/gen/agentflow/v1/DispatcherMessage.ts';
import type { KeyValue } from '../../../src/gen/agentflow/v1/KeyValue.ts';
import type { LockRequest__Output } from '../../../src/gen/agentflow/v1/LockRequest.ts';
import type { StateRequest__Output } from '../../../src/gen/agentflow/v1/StateRequest.ts';

/** The workflow a request acts on (from the claim of the attempt it names). */
export interface Scope {
  namespace: string;
  workflow: string;
}

/** Where answers go: one agent stream, holding the agent's lease. */
export interface Sink {
  readonly leaseId: string;
  send(m: DispatcherMessage): void;
}

interface Kv {
  key: string;
  valueJson: string;
  modRevision: number;
  createRevision: number;
  version: number;
}

interface Change {
  scope: string;
  type: 'PUT' | 'DELETE';
  kv: Kv;
}

interface Watcher {
  sink: Sink;
  id: string;
  scope: string;
  prefix: string;
}

interface Waiter {
  sink: Sink;
  reqId: string;
  name: string;
  timer: NodeJS.Timeout | undefined;
}

interface Lock {
  key: string;
  token: number;
  leaseId: string;
}

const scopeKey = (s: Scope) => `${s.namespace}/${s.workflow}`;
const lockPrefix = (s: Scope) => `locks/workflow/${s.namespace}/${s.workflow}/`;
const toWire = (kv: Kv): KeyValue => ({ ...kv });

export class FakeState {
  /** etcd's revision: 1 for an empty store, +1 per write. */
  revision = 1;
  private readonly data = new Map<string, Kv>();
  private readonly versions = new Map<string, Kv[]>();
  private readonly changes: { revision: number; change: Change }[] = [];
  private compactedAt = 0;
  private readonly watchers = new Set<Watcher>();
  /** Lock path (scope + name) -> holder. */
  private readonly locks = new Map<string, Lock>();
  private readonly waiters = new Map<string, Waiter[]>();

  // ---- the test's view ----

  get(scope: Scope, key: string): Kv | undefined {
    return this.data.get(`${scopeKey(scope)}\n${key}`);
  }

  /** A write by someone else (another agent, the CLI). */
  put(scope: Scope, key: string, value: unknown): number {
    return this.write(scopeKey(scope), key, JSON.stringify(value));
  }

  remove(scope: Scope, key: string): boolean {
    return this.erase(scopeKey(scope), key);
  }

  /** Forgets the change log up to now: a watch from an older revision gets RESYNC. */
  compact(): void {
    this.compactedAt = this.revision;
    this.changes.length = 0;
  }

  /** Who holds lock `name` of the workflow, if anyone. */
  holder(scope: Scope, name: string): Lock | undefined {
    return this.locks.get(lockPrefix(scope) + name);
  }

  /** Takes a lock for another agent's lease (so the agent under test has to wait). */
  hold(scope: Scope, name: string, leaseId: string): Lock {
    return this.grant(lockPrefix(scope) + name, leaseId);
  }

  /** Releases a lock as its holder would; the next waiter gets it. */
  free(scope: Scope, name: string): void {
    this.release(lockPrefix(scope) + name);
  }

  /** Lock waits that are still queued. */
  waiting(scope: Scope, name: string): number {
    return this.waiters.get(lockPrefix(scope) + name)?.length ?? 0;
  }

  /** Active watches (of every stream). */
  get watchCount(): number {
    return this.watchers.size;
  }

  /** A stream ended: its watches and lock waits end with it; held locks stay with the lease. */
  dropSink(sink: Sink): void {
    for (const w of this.watchers) if (w.sink === sink) this.watchers.delete(w);
    for (const [path, list] of this.waiters) {
      for (const w of list.filter((x) => x.sink === sink)) clearTimeout(w.timer);
      this.waiters.set(
        path,
        list.filter((x) => x.sink !== sink),
      );
    }
  }

  // ---- the wire ----

  state(sink: Sink, scope: Scope, req: StateRequest__Output): void {
    const id = String(req.id);
    const s = scopeKey(scope);
    const reply = (body: Omit<NonNullable<DispatcherMessage['state']>, 'id'>) => sink.send({ state: { id, ...body } });
    const fenced =
      req.op === 'PUT' || req.op === 'CAS' || req.op === 'DELETE' ? this.checkFences(scope, req) : undefined;
    if (fenced) {
      reply(fenced);
      return;
    }
    const current = this.data.get(`${s}\n${req.key}`);
    switch (req.op) {
      case 'GET':
        reply({ items: current ? [toWire(current)] : [], revision: current?.modRevision ?? 0 });
        return;
      case 'PUT':
        reply({ revision: this.write(s, req.key, req.valueJson) });
        return;
      case 'CAS': {
        const actual = current?.modRevision ?? 0;
        if (actual !== Number(req.expectedRevision)) {
          reply({ errorCode: 'CONFLICT', errorMessage: `${req.key}: modified concurrently`, revision: actual });
          return;
        }
        reply({ revision: this.write(s, req.key, req.valueJson) });
        return;
      }
      case 'DELETE': {
        const actual = current?.modRevision ?? 0;
        if (req.hasExpected && actual !== Number(req.expectedRevision)) {
          reply({ errorCode: 'CONFLICT', errorMessage: `${req.key}: modified concurrently`, revision: actual });
          return;
        }
        reply({ existed: this.erase(s, req.key) });
        return;
      }
      case 'LIST': {
        const items = [...this.data.entries()]
          .filter(([k]) => k.startsWith(`${s}\n${req.key}`))
          .map(([, kv]) => toWire(kv))
          .sort((a, b) => String(a.key).localeCompare(String(b.key)));
        reply({ items, revision: this.revision });
        return;
      }
      case 'HISTORY': {
        const all = this.versions.get(`${s}\n${req.key}`) ?? [];
        reply({
          items: all
            .slice(-(req.limit || 20))
            .reverse()
            .map(toWire),
        });
        return;
      }
      case 'WATCH':
        this.watch(sink, s, id, req.key, Number(req.fromRevision));
        return;
      case 'UNWATCH':
        for (const w of this.watchers) {
          if (w.sink === sink && w.id === String(req.expectedRevision)) this.watchers.delete(w);
        }
        reply({});
        return;
    }
  }

  lock(sink: Sink, scope: Scope, req: LockRequest__Output): void {
    const id = String(req.id);
    const reply = (body: Omit<NonNullable<DispatcherMessage['lock']>, 'id'>) => sink.send({ lock: { id, ...body } });
    switch (req.op) {
      case 'ACQUIRE': {
        const path = lockPrefix(scope) + req.name;
        const held = this.locks.get(path);
        // etcd's lock is per lease: the same lease "gets" a lock it holds at once. The agent must queue its own attempts.
        if (!held || held.leaseId === sink.leaseId) {
          const lock = held ?? this.grant(path, sink.leaseId);
          reply({ key: lock.key, lockToken: lock.token });
          return;
        }
        const w: Waiter = { sink, reqId: id, name: req.name, timer: undefined };
        if (req.timeoutMs > 0) {
          w.timer = setTimeout(() => {
            this.unqueue(path, w);
            reply({ errorCode: 'TIMEOUT', errorMessage: `timed out waiting for lock ${req.name}` });
          }, req.timeoutMs);
        }
        this.waiters.set(path, [...(this.waiters.get(path) ?? []), w]);
        return;
      }
      case 'RELEASE': {
        const entry = [...this.locks.entries()].find(
          ([, l]) => l.token === Number(req.lockToken) && l.leaseId === sink.leaseId,
        );
        if (!entry) {
          reply({ errorCode: 'INVALID', errorMessage: `this agent holds no lock with token ${req.lockToken}` });
          return;
        }
        this.release(entry[0]);
        reply({});
        return;
      }
      case 'CANCEL': {
        for (const [path, list] of this.waiters) {
          const w = list.find((x) => x.sink === sink && x.reqId === String(req.lockToken));
          if (!w) continue;
          this.unqueue(path, w);
          w.sink.send({ lock: { id: w.reqId, errorCode: 'CANCELLED', errorMessage: 'the wait was cancelled' } });
        }
        reply({});
        return;
      }
    }
  }

  // ---- internals ----

  private checkFences(scope: Scope, req: StateRequest__Output) {
    for (const [i, f] of req.fences.entries()) {
      if (!f.key.startsWith(lockPrefix(scope))) {
        return {
          errorCode: 'PERMISSION_DENIED',
          errorMessage: `StateRequest.fences[${i}].key: not a lock of this workflow`,
        };
      }
      const held = [...this.locks.values()].find((l) => l.key === f.key);
      if (!held || held.token !== Number(f.createRevision)) {
        return { errorCode: 'FENCED', errorMessage: `the lock ${f.key} is no longer held` };
      }
    }
    return undefined;
  }

  private write(scope: string, key: string, valueJson: string): number {
    const k = `${scope}\n${key}`;
    const prev = this.data.get(k);
    const rev = ++this.revision;
    const kv: Kv = {
      key,
      valueJson,
      modRevision: rev,
      createRevision: prev?.createRevision ?? rev,
      version: (prev?.version ?? 0) + 1,
    };
    this.data.set(k, kv);
    this.versions.set(k, [...(this.versions.get(k) ?? []), kv]);
    this.publish({ scope, type: 'PUT', kv });
    return rev;
  }

  private erase(scope: string, key: string): boolean {
    const k = `${scope}\n${key}`;
    const prev = this.data.get(k);
    if (!prev) return false;
    this.data.delete(k);
    const rev = ++this.revision;
    this.publish({ scope, type: 'DELETE', kv: { ...prev, modRevision: rev } });
    return true;
  }

  private publish(change: Change): void {
    this.changes.push({ revision: change.kv.modRevision, change });
    for (const w of this.watchers) this.deliver(w, change);
  }

  private deliver(w: Watcher, c: Change): void {
    if (c.scope !== w.scope || !c.kv.key.startsWith(w.prefix)) return;
    w.sink.send({ watchEvent: { id: w.id, type: c.type, kv: toWire(c.kv), revision: c.kv.modRevision } });
  }

  private watch(sink: Sink, scope: string, id: string, prefix: string, from: number): void {
    const w: Watcher = { sink, id, scope, prefix };
    sink.send({ state: { id } });
    if (from > 0 && from <= this.compactedAt) {
      const items = [...this.data.entries()]
        .filter(([k]) => k.startsWith(`${scope}\n${prefix}`))
        .map(([, kv]) => toWire(kv));
      sink.send({ watchEvent: { id, type: 'RESYNC', items, revision: this.revision } });
    } else if (from > 0) {
      for (const { revision, change } of this.changes) if (revision >= from) this.deliver(w, change);
    }
    this.watchers.add(w);
  }

  private grant(path: string, leaseId: string): Lock {
    const token = ++this.revision;
    const lock: Lock = { key: `${path}/${leaseId}`, token, leaseId };
    this.locks.set(path, lock);
    return lock;
  }

  private release(path: string): void {
    this.locks.delete(path);
    const [next] = this.waiters.get(path) ?? [];
    if (!next) return;
    this.unqueue(path, next);
    const lock = this.grant(path, next.sink.leaseId);
    next.sink.send({ lock: { id: next.reqId, key: lock.key, lockToken: lock.token } });
  }

  private unqueue(path: string, w: Waiter): void {
    clearTimeout(w.timer);
    this.waiters.set(
      path,
      (this.waiters.get(path) ?? []).filter((x) => x !== w),
    );
  }
}
