import { EventEmitter } from 'node:events';
import { type ComparatorBuilder, Etcd3, type IKeyValue, type Lease } from 'etcd3';
import { DEFAULT_TXN_BYTES } from './batch.ts';
import {
  EtcdUnavailableError,
  LeaseLostError,
  OutcomeUnknownError,
  RequestTooLargeError,
  StateDecodeError,
} from './errors.ts';
import { fenceError } from './fence.ts';
import { encodeTxn, type LeanCompare, type LeanOp, type LeanTxnAnswer, leanTxnCaller } from './lean-txn.ts';
import { guardCalls, KEEPALIVE_OPTIONS, noFaultHandling } from './transport.ts';

export interface StoreOptions {
  /** etcd client URLs, e.g. ["http://127.0.0.1:2379"]. */
  endpoints: string[];
  /** Root of every key agentflow writes (default /agentflow/v1). */
  prefix?: string;
  /** Deadline of unary calls, in milliseconds (default 5000). */
  callTimeoutMs?: number;
  /**
   * How long a call that provably did not apply (a read, or a write etcd never
   * received) is retried before its EtcdUnavailableError is thrown (default: callTimeoutMs).
   */
  retryBudgetMs?: number;
  /**
   * Bytes of keys and values per transaction (default 1 MiB, under etcd's
   * default --max-request-bytes of 1.5 MiB). Lower it for an etcd configured smaller.
   */
  maxTxnBytes?: number;
  /** TLS to etcd (https:// endpoints): the CA, and a client certificate if etcd asks for one. */
  tls?: { ca: Buffer; cert?: Buffer; key?: Buffer };
  /**
   * etcd password auth, for an external etcd that uses it: the client trades
   * these for a token. Without it, an etcd with client-cert-auth takes the
   * user name from the client certificate's CN.
   */
  auth?: { username: string; password: string };
}

/** A key/value as agentflow reads it: revisions as numbers, value as text. */
export interface Entry {
  key: string;
  value: string;
  createRevision: number;
  modRevision: number;
  version: number;
  lease: string;
}

/**
 * A guard that makes a transaction conditional on a lease-bound key still
 * being the one its holder created: the leader's election key, a lock's key,
 * a task claim. Its createRevision is the fencing token.
 */
export interface Fence {
  key: string;
  createRevision: number;
}

/** The end of the key range that holds every key starting with `prefix` (its last character plus one). */
export function rangeEnd(prefix: string): string {
  return `${prefix.slice(0, -1)}${String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1)}`;
}

export function toEntry(kv: IKeyValue, strip = ''): Entry {
  const key = kv.key.toString('utf8');
  return {
    key: strip && key.startsWith(strip) ? key.slice(strip.length) : key,
    value: kv.value.toString('utf8'),
    createRevision: Number(kv.create_revision),
    modRevision: Number(kv.mod_revision),
    version: Number(kv.version),
    lease: String(kv.lease),
  };
}

export function decodeJson<T>(entry: Entry, check: (v: unknown) => v is T, what: string): T {
  let parsed: unknown;
  try {
    parsed = JSON.parse(entry.value);
  } catch (err) {
    throw new StateDecodeError(entry.key, `is not JSON (${(err as Error).message}); expected ${what}`);
  }
  if (!check(parsed)) throw new StateDecodeError(entry.key, `is not ${what}: ${entry.value.slice(0, 200)}`);
  return parsed;
}

/** The one place agentflow talks to etcd (see CONVENTIONS: nothing else imports etcd3). */
export class StateStore {
  readonly client: Etcd3;
  readonly prefix: string;
  readonly maxTxnBytes: number;
  private readonly retryBudgetMs: number;
  private leanCall: ((req: Buffer) => Promise<LeanTxnAnswer>) | undefined;

  constructor(opts: StoreOptions) {
    if (opts.endpoints.length === 0) throw new Error('StoreOptions.endpoints: at least one etcd endpoint is required');
    const callTimeoutMs = opts.callTimeoutMs ?? 5_000;
    this.client = new Etcd3({
      hosts: opts.endpoints,
      ...(opts.tls && {
        credentials: {
          rootCertificate: opts.tls.ca,
          ...(opts.tls.cert && { certChain: opts.tls.cert }),
          ...(opts.tls.key && { privateKey: opts.tls.key }),
        },
      }),
      ...(opts.auth && { auth: { username: opts.auth.username, password: opts.auth.password } }),
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + callTimeoutMs }),
      // No blind retries and no circuit breaker: see transport.ts.
      faultHandling: noFaultHandling,
      grpcOptions: KEEPALIVE_OPTIONS,
    });
    this.retryBudgetMs = opts.retryBudgetMs ?? callTimeoutMs;
    guardCalls(this.client, { retryBudgetMs: this.retryBudgetMs });
    this.prefix = (opts.prefix ?? '/agentflow/v1').replace(/\/+$/, '');
    this.maxTxnBytes = opts.maxTxnBytes ?? DEFAULT_TXN_BYTES;
  }

  key(...parts: string[]): string {
    for (const p of parts) {
      if (p === '' || p.includes('/'))
        throw new Error(`invalid key segment "${p}": must be non-empty and contain no "/"`);
    }
    return `${this.prefix}/${parts.join('/')}`;
  }

  /**
   * A transaction on the lean path (lean-txn.ts): `compares` and every fence must hold for `ops` to
   * apply; the answer is whether they did and the revision. For the hot paths that need nothing else.
   */
  async leanTxn(fences: Fence[], compares: LeanCompare[], ops: LeanOp[]): Promise<LeanTxnAnswer> {
    const all: LeanCompare[] = fences.map((f) => ({
      key: f.key,
      target: 'create',
      result: 'equal',
      value: f.createRevision,
    }));
    // etcd needs no compare, but the fenced and unfenced paths stay alike: one that always holds.
    if (all.length === 0) all.push({ key: `${this.prefix}/.always`, target: 'version', result: 'greater', value: -1 });
    for (const c of compares) all.push(c);
    this.leanCall ??= leanTxnCaller(this.client);
    return this.leanCall(encodeTxn(all, ops));
  }

  /** A transaction whose success also requires every fence to hold. */
  txn(fences: Fence[] = []): ComparatorBuilder {
    const [first, ...rest] = fences;
    // etcd3's builder needs one compare; with no fence, one that always holds.
    let b = first
      ? this.client.if(first.key, 'Create', '==', first.createRevision)
      : this.client.if(`${this.prefix}/.always`, 'Version', '>', -1);
    for (const f of rest) b = b.and(f.key, 'Create', '==', f.createRevision);
    return b;
  }

  async get(key: string): Promise<Entry | undefined> {
    const res = await this.client.get(key).exec();
    const kv = res.kvs[0];
    return kv ? toEntry(kv) : undefined;
  }

  /** Every key under `prefix` in one read (`keysOnly`: values left out, revisions and leases kept). */
  async list(prefix: string, opts: { keysOnly?: boolean } = {}): Promise<{ entries: Entry[]; revision: number }> {
    const res = opts.keysOnly
      ? await this.client.kv.range({
          key: Buffer.from(prefix),
          range_end: Buffer.from(rangeEnd(prefix)),
          keys_only: true,
        })
      : await this.client.getAll().prefix(prefix).sort('Key', 'Ascend').exec();
    return { entries: res.kvs.map((kv) => toEntry(kv)), revision: Number(res.header.revision) };
  }

  /**
   * Every key under `prefix` in key order, read at one revision, up to `limit`
   * keys per request. A page whose answer would pass the client's receive limit
   * (large values) is asked for again in halves, so `limit` can suit the common
   * small values: etcd visits every remaining key of the range to count them on
   * each page, so small pages make a large listing quadratic.
   */
  async listPaged(prefix: string, limit: number): Promise<Entry[]> {
    const end = rangeEnd(prefix);
    const out: Entry[] = [];
    let start = prefix;
    let revision: string | undefined;
    let page = limit;
    for (;;) {
      let q = this.client.getAll().inRange({ start, end }).sort('Key', 'Ascend').limit(page);
      if (revision) q = q.revision(revision);
      let res: Awaited<ReturnType<typeof q.exec>>;
      try {
        res = await q.exec();
      } catch (err) {
        if (page > 1 && err instanceof RequestTooLargeError) {
          page = Math.max(1, Math.floor(page / 2));
          continue;
        }
        throw err;
      }
      revision ??= res.header.revision;
      for (const kv of res.kvs) out.push(toEntry(kv));
      const last = res.kvs[res.kvs.length - 1];
      if (!res.more || !last) return out;
      start = `${last.key.toString('utf8')}\0`;
    }
  }

  /**
   * Deletes every key under each prefix in one transaction that also requires
   * every fence to hold; a FencedError (nothing deleted) if one does not.
   */
  async deletePrefixes(prefixes: string[], fences: Fence[] = []): Promise<void> {
    for (const p of prefixes) {
      if (!p.startsWith(`${this.prefix}/`) || !p.endsWith('/')) {
        throw new Error(`deletePrefixes: "${p}" must lie under ${this.prefix}/ and end with "/"`);
      }
    }
    const res = await this.txn(fences)
      .then(...prefixes.map((p) => this.client.delete().prefix(p)))
      .commit();
    if (!res.succeeded) {
      throw (await fenceError(this, fences)) ?? new Error('deletePrefixes: the transaction failed');
    }
  }

  /**
   * Deletes every key under `prefix`, at most `page` keys per fenced transaction: each page is a
   * revision of its own, so a watch of the prefix gets a bounded answer per page, not one answer with
   * every key of a large prefix. Not atomic: a caller that must not be seen half-done deletes what
   * marks the whole (e.g. a run record) last.
   */
  async deletePrefixPaged(prefix: string, page: number, fences: Fence[] = []): Promise<number> {
    if (!prefix.startsWith(`${this.prefix}/`) || !prefix.endsWith('/')) {
      throw new Error(`deletePrefixPaged: "${prefix}" must lie under ${this.prefix}/ and end with "/"`);
    }
    const end = Buffer.from(rangeEnd(prefix));
    let deleted = 0;
    for (;;) {
      const res = await this.client.kv.range({
        key: Buffer.from(prefix),
        range_end: end,
        keys_only: true,
        limit: page,
      });
      const last = res.kvs[res.kvs.length - 1];
      if (!last) return deleted;
      const upTo = `${last.key.toString('utf8')}\0`;
      const txn = await this.txn(fences)
        .then(this.client.delete().inRange({ start: prefix, end: upTo }))
        .commit();
      if (!txn.succeeded) {
        throw (await fenceError(this, fences)) ?? new Error('deletePrefixPaged: the transaction failed');
      }
      deleted += res.kvs.length;
      if (!res.more) return deleted;
    }
  }

  /** Discards history before `revision` (what etcd's auto-compaction does). Watches from before it resync. */
  async compact(revision: number): Promise<void> {
    await this.client.kv.compact({ revision: String(revision), physical: true });
  }

  /**
   * A lease-backed session (claims, locks, leadership). With `renewDeadlineMs`
   * the session counts as lost once keep-alive has not succeeded for that
   * long, which must be shorter than the TTL: a leader then steps down while
   * its lease may still be alive, before anyone else can be elected (what
   * Kubernetes' leader election calls the renew deadline).
   */
  async session(ttlSeconds: number, opts: { renewDeadlineMs?: number } = {}): Promise<Session> {
    const started = Date.now();
    for (;;) {
      const s = new Session(this.client.lease(ttlSeconds, { autoKeepAlive: true }), ttlSeconds, opts.renewDeadlineMs);
      try {
        await s.ready();
        return s;
      } catch (err) {
        s.abandon();
        // A grant whose answer was lost (e.g. etcd changing leaders) is safe to repeat: a lease
        // nobody holds expires after its TTL with nothing bound to it.
        const again = err instanceof OutcomeUnknownError || err instanceof EtcdUnavailableError;
        if (!again || Date.now() - started > this.retryBudgetMs * 2) throw err;
      }
    }
  }

  close(): void {
    this.client.close();
  }
}

/**
 * An etcd lease kept alive in the background. Keys written with it vanish when
 * the lease expires (the holder died or was partitioned for longer than the
 * TTL). `lost` fires when keep-alive fails; after that the holder must stop
 * acting on anything bound to the lease.
 */
export class Session extends EventEmitter<{ lost: [LeaseLostError] }> {
  readonly ttlSeconds: number;
  private readonly lease: Lease;
  private leaseId = '';
  private isLost = false;

  private renewedAt = Date.now();
  private deadlineTimer: NodeJS.Timeout | undefined;

  constructor(lease: Lease, ttlSeconds: number, renewDeadlineMs?: number) {
    super();
    this.lease = lease;
    this.ttlSeconds = ttlSeconds;
    lease.on('lost', (err) => this.lose(`lease ${this.leaseId} lost: ${err.message}`));
    if (renewDeadlineMs !== undefined) {
      if (renewDeadlineMs >= ttlSeconds * 1000) {
        throw new RangeError(
          `renewDeadlineMs (${renewDeadlineMs}) must be shorter than the lease TTL (${ttlSeconds} s)`,
        );
      }
      lease.on('keepaliveSucceeded', () => {
        this.renewedAt = Date.now();
      });
      const beat = (ttlSeconds * 1000) / 3;
      this.deadlineTimer = setInterval(
        () => {
          const since = Date.now() - this.renewedAt;
          // A missed beat: the keep-alive stream may sit on a member that froze. Ask once on a fresh
          // stream (the pool picks a member at random) rather than wait for the stream's own TTL timeout.
          if (since > beat * 1.5 && !this.probing) this.probe(beat);
          if (since <= renewDeadlineMs) return;
          // Stop renewing too: a holder that gave up must not come back to life when etcd does.
          this.lease.release();
          this.lose(`lease ${this.leaseId} not renewed for ${since} ms (renew deadline ${renewDeadlineMs} ms)`);
        },
        Math.max(50, Math.floor(renewDeadlineMs / 10)),
      );
      this.deadlineTimer.unref();
    }
  }

  private probing = false;

  private probe(timeoutMs: number): void {
    this.probing = true;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error('keep-alive probe timed out')), timeoutMs);
    });
    void Promise.race([this.lease.keepaliveOnce(), timeout])
      .then(
        () => {
          this.renewedAt = Date.now();
        },
        () => undefined, // the next tick tries again; the renew deadline decides
      )
      .finally(() => {
        clearTimeout(timer);
        this.probing = false;
      });
  }

  private lose(message: string): void {
    if (this.deadlineTimer) clearInterval(this.deadlineTimer);
    this.deadlineTimer = undefined;
    if (this.isLost) return;
    this.isLost = true;
    this.emit('lost', new LeaseLostError(message));
  }

  async ready(): Promise<void> {
    this.leaseId = await this.lease.grant();
    this.renewedAt = Date.now();
  }

  /** The lease id (decimal). */
  get id(): string {
    return this.leaseId;
  }

  get lost(): boolean {
    return this.isLost || this.lease.revoked();
  }

  assertAlive(): void {
    if (this.lost) throw new LeaseLostError(`lease ${this.leaseId} is lost`);
  }

  /** Revokes the lease: every key bound to it is deleted at once. */
  async close(): Promise<void> {
    if (this.deadlineTimer) clearInterval(this.deadlineTimer);
    this.deadlineTimer = undefined;
    if (this.lease.revoked()) return;
    await this.lease.revoke().catch(() => undefined);
  }

  /** Stops keep-alive without revoking: the lease expires after its TTL (tests: a holder that froze). */
  abandon(): void {
    if (this.deadlineTimer) clearInterval(this.deadlineTimer);
    this.deadlineTimer = undefined;
    this.lease.release();
  }
}
