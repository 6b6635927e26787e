import { EventEmitter } from 'node:events';
import { LeaseLostError } from './errors.ts';
import type { StateStore } from './store.ts';

/**
 * What a lease-bound operation (a lock, a claim) needs of the lease it binds
 * keys to. The operator's own Session and an agent's KeptLease both are one.
 */
export interface LeaseHolder {
  readonly id: string;
  assertAlive(): void;
  on(event: 'lost', listener: (err: LeaseLostError) => void): unknown;
  off(event: 'lost', listener: (err: LeaseLostError) => void): unknown;
}

/** One agent's lease, kept alive by the dispatcher on the agent's behalf. */
export class KeptLease extends EventEmitter<{ lost: [LeaseLostError] }> implements LeaseHolder {
  readonly id: string;
  readonly ttlSeconds: number;
  /** Whether keep-alives are being sent (the agent is connected and heartbeating). */
  kept = true;
  /** When keep-alives stopped (ms, performance.now()). */
  pausedAt = 0;
  /** Who the lease is for (the dispatcher's agent id), for whoever must forget the agent with it. */
  owner = '';
  private gone = false;

  constructor(id: string, ttlSeconds: number) {
    super();
    this.id = id;
    this.ttlSeconds = ttlSeconds;
  }

  get lost(): boolean {
    return this.gone;
  }

  assertAlive(): void {
    if (this.gone) throw new LeaseLostError(`lease ${this.id} is lost`);
  }

  /** @internal */
  markLost(why: string): void {
    if (this.gone) return;
    this.gone = true;
    this.kept = false;
    this.emit('lost', new LeaseLostError(`lease ${this.id} lost: ${why}`));
  }
}

export interface LeaseKeeperOptions {
  ttlSeconds: number;
  /** Called when keep-alives cannot reach etcd (they are retried). */
  onError?: (err: Error) => void;
  /** Called once for a lease that was not kept alive for long enough that etcd has expired it. */
  onExpired?: (lease: KeptLease) => void;
}

/**
 * Grants, adopts and keeps alive many leases over one etcd keep-alive stream
 * (agents hold no etcd credentials, so the dispatcher keeps their leases).
 * A lease whose keep-alive stops expires after its TTL, and with it every key
 * bound to it: that is how an agent's death releases its claims and locks.
 */
export class LeaseKeeper {
  readonly ttlSeconds: number;
  private readonly store: StateStore;
  private readonly leases = new Map<string, KeptLease>();
  private readonly onError: (err: Error) => void;
  private readonly onExpired: (lease: KeptLease) => void;
  private timer: NodeJS.Timeout | undefined;
  private stream: Awaited<ReturnType<StateStore['client']['leaseClient']['leaseKeepAlive']>> | undefined;
  private opening: Promise<void> | undefined;
  private closed = false;

  constructor(store: StateStore, opts: LeaseKeeperOptions) {
    if (!Number.isInteger(opts.ttlSeconds) || opts.ttlSeconds < 2) {
      throw new RangeError(`LeaseKeeper.ttlSeconds: must be an integer >= 2 (etcd's minimum), got ${opts.ttlSeconds}`);
    }
    this.store = store;
    this.ttlSeconds = opts.ttlSeconds;
    this.onError = opts.onError ?? (() => undefined);
    this.onExpired = opts.onExpired ?? (() => undefined);
  }

  start(): void {
    // A third of the TTL, as etcd's own clients do: two keep-alives may be lost before it expires.
    this.timer = setInterval(() => this.tick(), Math.max(300, (this.ttlSeconds * 1000) / 3));
    this.timer.unref();
  }

  /** A new lease, kept alive from now on. */
  async grant(): Promise<KeptLease> {
    const res = await this.store.client.leaseClient.leaseGrant({ TTL: this.ttlSeconds, ID: 0 });
    const lease = new KeptLease(String(res.ID), this.ttlSeconds);
    this.leases.set(lease.id, lease);
    return lease;
  }

  /**
   * Takes over an existing lease if etcd still has it (e.g. granted by a
   * previous leader): undefined if it expired. The caller must first check
   * that the lease belongs to the agent asking (see Membership).
   */
  /** The keys etcd has bound to a lease (claims and the membership key of the agent holding it). */
  async keysOf(id: string): Promise<string[]> {
    const res = await this.store.client.leaseClient.leaseTimeToLive({ ID: id, keys: true });
    return (res.keys ?? []).map((k) => Buffer.from(k).toString('utf8'));
  }

  async adopt(id: string): Promise<KeptLease | undefined> {
    if (!/^[1-9][0-9]{0,19}$/.test(id)) return undefined;
    const known = this.leases.get(id);
    // A lease we still keep is ours to hand back; a paused one may have expired meanwhile: ask etcd.
    if (known && !known.lost && known.kept) return known;
    const res = await this.store.client.leaseClient.leaseTimeToLive({ ID: id, keys: false });
    if (Number(res.TTL) <= 0) {
      if (known) this.expire(known);
      return undefined;
    }
    if (known && !known.lost) {
      known.kept = true;
      this.keepAliveNow([id]);
      return known;
    }
    const lease = new KeptLease(id, Number(res.grantedTTL) || this.ttlSeconds);
    this.leases.set(id, lease);
    this.keepAliveNow([id]);
    return lease;
  }

  /** Stops keeping the lease alive: it expires after its TTL unless resumed. */
  pause(lease: KeptLease): void {
    if (lease.kept) lease.pausedAt = performance.now();
    lease.kept = false;
  }

  resume(lease: KeptLease): void {
    if (!lease.lost) lease.kept = true;
  }

  /** Ends the lease now: every key bound to it is deleted. */
  async revoke(lease: KeptLease): Promise<void> {
    this.leases.delete(lease.id);
    lease.markLost('revoked');
    await this.store.client.leaseClient.leaseRevoke({ ID: lease.id }).catch((err: Error) => {
      if (!/not found/i.test(err.message)) throw err;
    });
  }

  /** Forgets the lease without revoking it (it expires after its TTL). */
  forget(lease: KeptLease): void {
    this.leases.delete(lease.id);
    lease.kept = false;
  }

  get size(): number {
    return this.leases.size;
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.stream?.end();
    this.stream = undefined;
  }

  private tick(): void {
    const ids: string[] = [];
    const now = performance.now();
    for (const l of this.leases.values()) {
      if (l.kept) ids.push(l.id);
      // Not kept for two TTLs: etcd has expired it (and deleted what was bound to it). Forget it.
      else if (now - l.pausedAt > 2 * l.ttlSeconds * 1000) this.expire(l);
    }
    if (ids.length > 0) this.keepAliveNow(ids);
  }

  private expire(lease: KeptLease): void {
    this.leases.delete(lease.id);
    lease.markLost('not kept alive past its TTL');
    this.onExpired(lease);
  }

  private keepAliveNow(ids: string[]): void {
    if (this.closed) return;
    if (!this.stream) {
      if (this.opening) return; // one stream at a time; the next tick sends what this one missed
      this.opening = this.open()
        .catch((err: Error) => this.onError(err))
        .finally(() => {
          this.opening = undefined;
        });
      return;
    }
    for (const id of ids) this.stream.write({ ID: id });
  }

  private async open(): Promise<void> {
    const stream = await this.store.client.leaseClient.leaseKeepAlive();
    if (this.closed) {
      stream.end();
      return;
    }
    stream.on('data', (res: { ID: string; TTL: string }) => {
      const lease = this.leases.get(String(res.ID));
      if (lease && Number(res.TTL) <= 0) {
        this.leases.delete(lease.id);
        lease.markLost('expired before it could be kept alive');
      }
    });
    const drop = (err?: Error) => {
      if (this.stream === stream) this.stream = undefined;
      if (err && !this.closed) this.onError(err);
    };
    stream.on('error', (err: Error) => drop(err));
    stream.on('end', () => drop());
    this.stream = stream;
    this.tick();
  }
}
