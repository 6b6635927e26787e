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
  /** Step down after keep-alive has failed this long (default 2/3 of the TTL; must be shorter than it). */
  renewDeadlineMs?: number;
  logger: Logger;
}

/**
 * Leader election through an etcd election key bound to this process's
 * lease. Only the leader reconciles; its key's revision fences every etcd
 * write it makes. A leader steps down once its lease has not been renewed
 * for the renew deadline (2/3 of the TTL by default), before its lease can
 * expire and another replica be elected, so two leaders never act at once
 * on the Kubernetes side either. Each `campaign()` is a term of its own, on a
 * fresh lease: the caller tears down everything the last term built before
 * campaigning again.
 */
export class LeaderElector {
  private readonly o: LeaderElectorOptions;
  private readonly elections: Elections;
  private readonly log: Logger;
  private session: Session | undefined;
  private held: Held | undefined;
  private term: AbortController | undefined;

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
    return this.held !== undefined && this.term !== undefined && !this.term.signal.aborted;
  }

  private get ttlSeconds(): number {
    return this.o.ttlSeconds ?? 15;
  }

  /** How long keep-alive may fail before this leader steps down (default 2/3 of the TTL). */
  get renewDeadlineMs(): number {
    return this.o.renewDeadlineMs ?? Math.floor((this.ttlSeconds * 1000 * 2) / 3);
  }

  /**
   * Campaigns until this process leads (or `signal` aborts: undefined).
   * The returned signal aborts when this term's leadership is lost.
   */
  async campaign(signal?: AbortSignal): Promise<Leadership | undefined> {
    const session = await this.o.store.session(this.ttlSeconds, { renewDeadlineMs: this.renewDeadlineMs });
    const term = new AbortController();
    this.session = session;
    this.term = term;
    this.held = undefined;
    session.once('lost', (err) => {
      if (term.signal.aborted) return;
      this.log.error('Leadership lost: the election lease could not be renewed in time; stepping down', {
        error: err,
      });
      term.abort(err);
    });
    this.log.info('Campaigning for leadership', { leaseId: session.id });
    const started = Date.now();
    let held: Held;
    try {
      held = await this.elections.campaign(this.o.name, session, this.o.identity, signal ? { signal } : {});
    } catch (err) {
      term.abort(err);
      await session.close().catch(() => undefined);
      if (signal?.aborted) return undefined;
      throw err;
    }
    this.held = held;
    this.log.info('Became the leader', { token: held.token, waitedMs: Date.now() - started });
    return { token: held.token, fence: held.fence, signal: term.signal };
  }

  /**
   * Ends the current term at once (deletes the key, revokes the lease) so
   * another replica takes over without waiting for the TTL. Best effort
   * within `timeoutMs`: with etcd unreachable the key expires with its lease.
   */
  async resign(timeoutMs = 2_000): Promise<void> {
    const term = this.term;
    term?.abort(new Error('resigned'));
    const held = this.held;
    const session = this.session;
    this.held = undefined;
    const done = (async () => {
      await held?.release().catch(() => undefined);
      await session?.close().catch(() => undefined);
    })();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([done, new Promise<void>((r) => (timer = setTimeout(r, timeoutMs)))]);
    clearTimeout(timer);
  }
}
