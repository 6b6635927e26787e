import {
  type Held,
  type LeaseLostError,
  Locks,
  Membership,
  type Session,
  SharedState,
  StateStore,
} from '../state/index.ts';

/** What the agent registers about itself in its pool. */
export interface MemberRecord {
  namespace: string;
  pool: string;
  agentId: string;
  pod: string;
  handlers: string[];
  capacity: number;
}

/** The agent's etcd lease with its pool membership bound to it. */
export interface AgentSession {
  /** The lease id (decimal), sent in Register. */
  readonly id: string;
  /** Called once if the lease is lost (keep-alive failed); everything bound to it is gone. */
  onLost(listener: (err: Error) => void): void;
  /** A lock held with this lease. */
  lock(name: string, opts: { timeoutMs?: number; signal?: AbortSignal }): Promise<Held>;
  /** Revokes the lease (membership and claims vanish at once). */
  close(): Promise<void>;
}

/**
 * The agent's only way to etcd. The default is `etcdCoordination`; tests and
 * embedders pass their own through `AgentOptions.coordination`.
 */
export interface Coordination {
  open(ttlSeconds: number, member: MemberRecord): Promise<AgentSession>;
  state(namespace: string, workflow: string): SharedState;
  close(): void;
}

class EtcdSession implements AgentSession {
  private readonly session: Session;
  private readonly locks: Locks;

  constructor(session: Session, locks: Locks) {
    this.session = session;
    this.locks = locks;
  }

  get id(): string {
    return this.session.id;
  }

  onLost(listener: (err: Error) => void): void {
    this.session.once('lost', (err: LeaseLostError) => listener(err));
  }

  lock(name: string, opts: { timeoutMs?: number; signal?: AbortSignal }): Promise<Held> {
    return this.locks.acquire(name, this.session, opts);
  }

  close(): Promise<void> {
    return this.session.close();
  }
}

export function etcdCoordination(opts: {
  endpoints: string[];
  prefix?: string;
  tls?: { ca: Buffer; cert?: Buffer; key?: Buffer };
}): Coordination {
  const store = new StateStore({
    endpoints: opts.endpoints,
    ...(opts.prefix !== undefined && { prefix: opts.prefix }),
    ...(opts.tls && { tls: opts.tls }),
  });
  const membership = new Membership(store);
  const locks = new Locks(store);
  return {
    async open(ttlSeconds, m) {
      const session = await store.session(ttlSeconds);
      try {
        await membership.register(session, m.namespace, m.pool, {
          agentId: m.agentId,
          pod: m.pod,
          handlers: m.handlers,
          capacity: m.capacity,
        });
      } catch (err) {
        await session.close();
        throw err;
      }
      return new EtcdSession(session, locks);
    },
    state: (namespace, workflow) => new SharedState(store, { kind: 'workflow', namespace, workflow }),
    close: () => store.close(),
  };
}
