import { afterAll, describe, expect, it } from 'vitest';
import { type KeptLease, LeaseKeeper, Membership } from '../../../src/state/index.ts';
import { testStore } from './helpers.ts';

// The dispatcher keeps agents' leases on their behalf (agents hold no etcd credentials): kept leases
// outlive their TTL, paused ones expire with what is bound to them, and adoption never revives an
// expired lease. Real etcd, TTL 2 s.

const store = testStore();
const membership = new Membership(store);
afterAll(() => store.close());

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const member = (id: string) => ({ agentId: id, pod: '', handlers: ['h'], capacity: 1 });

describe('LeaseKeeper', () => {
  it('keeps a lease alive past its TTL; a paused one expires, is reported once, and cannot be adopted', async () => {
    const expired: KeptLease[] = [];
    const keeper = new LeaseKeeper(store, { ttlSeconds: 2, onExpired: (l) => expired.push(l) });
    keeper.start();
    try {
      const kept = await keeper.grant();
      const paused = await keeper.grant();
      await membership.register(kept, 'ns', 'pool', member('kept'));
      await membership.register(paused, 'ns', 'pool', member('paused'));
      keeper.pause(paused);
      await sleep(5_000); // 2.5 TTLs
      expect(await membership.leaseOf('ns', 'pool', 'kept')).toBe(kept.id);
      expect(await membership.leaseOf('ns', 'pool', 'paused')).toBeUndefined();
      expect(expired.map((l) => l.id)).toEqual([paused.id]);
      expect(paused.lost).toBe(true);
      expect(await keeper.adopt(paused.id)).toBeUndefined();
      expect(keeper.size).toBe(1);
    } finally {
      keeper.close();
    }
  });

  it('a new keeper (a new leader) adopts a live lease it never granted and keeps it alive', async () => {
    const first = new LeaseKeeper(store, { ttlSeconds: 2 });
    first.start();
    const lease = await first.grant();
    await membership.register(lease, 'ns', 'pool', member('moved'));
    first.close(); // the old leader dies without revoking
    const second = new LeaseKeeper(store, { ttlSeconds: 2 });
    second.start();
    try {
      const adopted = await second.adopt(lease.id);
      expect(adopted?.id).toBe(lease.id);
      await sleep(4_000);
      expect(await membership.leaseOf('ns', 'pool', 'moved')).toBe(lease.id);
      expect(await second.adopt('123456789')).toBeUndefined(); // a lease etcd never had
      expect(await second.adopt('not-a-lease')).toBeUndefined();
    } finally {
      second.close();
    }
  });
});
