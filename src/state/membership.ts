import type { LeaseHolder } from './agent-leases.ts';
import { fenceError } from './fence.ts';
import { decodeJson, type Entry, type Fence, type StateStore } from './store.ts';
import { ResumableWatch } from './watch.ts';

export interface MemberInfo {
  agentId: string;
  pod: string;
  handlers: string[];
  capacity: number;
  registeredAt: string;
}

const isMember = (v: unknown): v is MemberInfo => {
  const m = v as MemberInfo;
  return (
    typeof m === 'object' &&
    m !== null &&
    typeof m.agentId === 'string' &&
    typeof m.pod === 'string' &&
    Array.isArray(m.handlers) &&
    m.handlers.every((h) => typeof h === 'string') &&
    Number.isInteger(m.capacity) &&
    m.capacity >= 1
  );
};

/**
 * Pool membership: an agent's key is bound to its lease, so the key's
 * disappearance is the agent's death (or a partition longer than the TTL).
 */
export class Membership {
  private readonly store: StateStore;

  constructor(store: StateStore) {
    this.store = store;
  }

  prefix(namespace: string, pool: string): string {
    return `${this.store.key('members', namespace, pool)}/`;
  }

  /** Registers (or refreshes) the agent under its lease; fenced by `fences` (the dispatcher's leadership). */
  async register(
    lease: LeaseHolder,
    namespace: string,
    pool: string,
    info: Omit<MemberInfo, 'registeredAt'>,
    fences: Fence[] = [],
  ): Promise<number> {
    lease.assertAlive();
    const value: MemberInfo = { ...info, registeredAt: new Date().toISOString() };
    const res = await this.store
      .txn(fences)
      .then(
        this.store.client
          .put(this.prefix(namespace, pool) + info.agentId)
          .value(JSON.stringify(value))
          .lease(lease.id),
      )
      .commit();
    if (!res.succeeded) throw (await fenceError(this.store, fences)) ?? new Error('membership write refused');
    return Number(res.header.revision);
  }

  /** The lease id (decimal) the agent's membership key is bound to, if it is registered. */
  async leaseOf(namespace: string, pool: string, agentId: string): Promise<string | undefined> {
    const e = await this.store.get(this.prefix(namespace, pool) + agentId);
    return e && e.lease !== '0' ? e.lease : undefined;
  }

  async deregister(namespace: string, pool: string, agentId: string): Promise<void> {
    await this.store.client
      .delete()
      .key(this.prefix(namespace, pool) + agentId)
      .exec();
  }

  /** Members of a pool. Malformed entries are reported, not dropped silently. */
  async list(namespace: string, pool: string): Promise<{ members: MemberInfo[]; invalid: Error[]; revision: number }> {
    const { entries, revision } = await this.store.list(this.prefix(namespace, pool));
    const members: MemberInfo[] = [];
    const invalid: Error[] = [];
    for (const e of entries) {
      try {
        members.push(decodeJson(e, isMember, 'an agent membership record {agentId, pod, handlers[], capacity>=1}'));
      } catch (err) {
        invalid.push(err as Error);
      }
    }
    return { members, invalid, revision };
  }

  watch(
    namespace: string,
    pool: string,
    fromRevision: number,
    handlers: { joined(m: MemberInfo): void; left(agentId: string): void; resync(members: Entry[]): void },
  ): Promise<ResumableWatch> {
    return new ResumableWatch(this.store, this.prefix(namespace, pool), fromRevision, {
      onEvent: (e) => {
        if (e.type === 'delete') handlers.left(e.key);
        else if (e.value !== undefined) {
          try {
            handlers.joined(
              decodeJson({ ...e, value: e.value, version: 0, lease: '' }, isMember, 'an agent membership record'),
            );
          } catch {
            // a malformed record is surfaced by list(); a watch keeps going
          }
        }
      },
      onResync: (entries) => handlers.resync(entries),
    }).start();
  }
}
