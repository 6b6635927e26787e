import type { Logger } from '../lib/log.ts';
import { Elections, type Fence, type Held, type Session, type StateStore } from '../state/index.ts';

export interface Leadership {
  /** The election key's createRevision: strictly increasing across successive leaders. */
  token: number;
  /** Pass to every etcd write the leader makes: a deposed leader's write then fails. */
  fence: Fence;
  /** Aborted when leadership is lost (the lease expired or could not be renewed). */
  signal: AbortSignal;
}

export interface LeaderElectorOptions {
  store: StateStore;
  /** Election name (one per operator installation). */
  name: string;
  /** Who campaigns: pod name and address, shown by `leader()`. */
  identity: string;
  /** Lease TTL: how long a dead leader blocks the next one (default 15 s). */
  ttlSeconds?: number;
  logger: Logger;
}

/**
 * Leader election through an etcd election key bound to this process's
 * lease. Only the leader reconciles; its key's revision fences every etcd
 * write it makes. Losing the lease ends leadership for good: like
 * controller-runtime, the caller should stop and exit so that Kubernetes
 * restarts it as a fresh candidate, rather than risk acting on stale beliefs.
 */
export class LeaderElector {
  private readonly o: LeaderElectorOptions;
  private readonly elections: Elections;
  private readonly log: Logger;
  private session: Session | undefined;
  private held: Held | undefined;
  private readonly abort = new AbortController();
  private resigned = false;

  constructor(o: LeaderElectorOptions) {
    this.o = o;
    this.elections = new Elections(o.store);
    this.log = o.logger.with({ election: o.name, identity: o.identity });
  }

  /** Current leader's identity and token, if any (any replica may ask). */
  leader(): Promise<{ value: string; token: number } | undefined> {
    return this.elections.leader(this.o.name);
  }

  /** The lease behind the campaign (tests freeze it with `abandon()` to play a leader that hung). */
  get etcdSession(): Session | undefined {
    return this.session;
  }

  get isLeader(): boolean {
    return this.held !== undefined && !this.abort.signal.aborted;
  }

  /**
   * Campaigns until this process leads (or `signal` aborts: undefined).
   * The returned signal aborts when leadership is lost.
   */
  async campaign(signal?: AbortSignal): Promise<Leadership | undefined> {
    const session = await this.o.store.session(this.o.ttlSeconds ?? 15);
    this.session = session;
    session.once('lost', (err) => {
      if (this.resigned) return;
      this.log.error('Leadership lost: the election lease expired or could not be renewed', { error: err });
      this.abort.abort(err);
    });
    this.log.info('Campaigning for leadership', { leaseId: session.id });
    const started = Date.now();
    try {
      this.held = await this.elections.campaign(this.o.name, session, this.o.identity, signal ? { signal } : {});
    } catch (err) {
      await session.close().catch(() => undefined);
      if (signal?.aborted) return undefined;
      throw err;
    }
    this.log.info('Became the leader', { token: this.held.token, waitedMs: Date.now() - started });
    return { token: this.held.token, fence: this.held.fence, signal: this.abort.signal };
  }

  /** Steps down at once (deletes the key, revokes the lease) so another replica takes over without waiting for the TTL. */
  async resign(): Promise<void> {
    this.resigned = true;
    this.abort.abort(new Error('resigned'));
    await this.held?.release().catch(() => undefined);
    await this.session?.close().catch(() => undefined);
    this.held = undefined;
  }
}
