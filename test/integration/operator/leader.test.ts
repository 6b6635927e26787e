import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../../src/lib/log.ts';
import { LeaderElector } from '../../../src/operator/leader.ts';
import { FencedError, type StateStore } from '../../../src/state/index.ts';
import type { ClusterHandle } from '../../cluster/cluster-handle.ts';
import { testCluster, uniqueName } from '../../cluster/testing.ts';
import { testStore } from '../state/helpers.ts';
import {
  apply,
  createNamespace,
  installCrds,
  nodes,
  OperatorProcess,
  pods,
  poolManifest,
  startNodes,
  until,
} from './helpers.ts';

// Two operator replicas elect one leader through etcd; kill -9 the leader and
// the other takes over within the lease TTL without duplicating a pod; a
// deposed leader's etcd writes are refused by its fencing token.

let cluster: ClusterHandle;
let ns: string;
const group = uniqueName('g');
const operators: OperatorProcess[] = [];
const stores: StateStore[] = [];

beforeAll(async () => {
  cluster = testCluster();
  await installCrds(cluster);
  ns = await createNamespace(cluster, 'leader');
  await startNodes(cluster, nodes(group, [{ suffix: 'a', cpu: '16', memory: '32Gi' }]));
});

afterAll(async () => {
  for (const o of operators) o.kill('SIGKILL');
  for (const s of stores) s.close();
  await cluster.client.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  await cluster.close();
});

describe('leader election', () => {
  it('only the leader reconciles; after kill -9 the standby takes over within the TTL and duplicates no pod', async () => {
    const prefix = `/${uniqueName('ha')}`;
    const election = uniqueName('ha');
    const ttl = 2;
    const a = new OperatorProcess(cluster, { name: 'op-a', namespace: ns, prefix, election, leaseTtl: ttl });
    operators.push(a);
    await a.waitFor('Operator is leading');
    const b = new OperatorProcess(cluster, { name: 'op-b', namespace: ns, prefix, election, leaseTtl: ttl });
    operators.push(b);
    await b.waitFor('Campaigning for leadership');

    await apply(cluster, poolManifest(ns, 'ha', { replicas: 3, group }));
    const first = await until(
      '3 Ready pods',
      () => pods(cluster, ns, 'ha'),
      (ps) => ps.length === 3 && ps.every((p) => p.ready),
    );
    expect(a.has('Created agent pod')).toBe(true);
    expect(b.has('Operator is leading')).toBe(false);
    expect(b.has('Created agent pod')).toBe(false);

    const killedAt = Date.now();
    a.kill('SIGKILL');
    await b.waitFor('Became the leader', 20_000);
    const elected = Date.now() - killedAt;
    await b.waitFor('Operator is leading', 20_000);
    const reconciling = Date.now() - killedAt;
    console.log(
      `operator failover: standby elected ${elected} ms and reconciling ${reconciling} ms after kill -9 of the leader (lease TTL ${ttl} s)`,
    );
    // Leadership passes when etcd expires the dead leader's lease: within the TTL, give or take etcd's
    // expiry sweep (the generous slack keeps a loaded CI machine from failing a correct handover).
    expect(elected).toBeLessThan(ttl * 1000 + 5_000);

    const scaled = await cluster.kubectl(['scale', '-n', ns, 'ap/ha', '--replicas=5']);
    expect(scaled.code).toBe(0);
    const five = await until(
      '5 Ready pods',
      () => pods(cluster, ns, 'ha'),
      (ps) => ps.length === 5 && ps.every((p) => p.ready),
    );
    expect(five.map((p) => p.name)).toEqual(['ha-0', 'ha-1', 'ha-2', 'ha-3', 'ha-4']);
    // The pods the first leader made were adopted, not replaced.
    expect(five.slice(0, 3).map((p) => p.uid)).toEqual(first.map((p) => p.uid));
    expect(b.has('Created agent pod')).toBe(true);
  });

  it("a deposed leader's etcd write is refused: its fencing token no longer holds", async () => {
    const prefix = `/${uniqueName('fence')}`;
    const storeA = testStore(prefix);
    const storeB = testStore(prefix);
    stores.push(storeA, storeB);
    const record = `${prefix}/members/ns/pool/agent-1`;
    await storeA.client.put(record).value('{}');

    const electorA = new LeaderElector({
      store: storeA,
      name: 'fence',
      identity: 'a',
      ttlSeconds: 2,
      logger: silentLogger,
    });
    const a = await electorA.campaign();
    expect(a).toBeDefined();
    // A hangs (a long GC pause, a frozen VM): its keep-alives stop and its lease expires.
    electorA.etcdSession?.abandon();
    const electorB = new LeaderElector({
      store: storeB,
      name: 'fence',
      identity: 'b',
      ttlSeconds: 2,
      logger: silentLogger,
    });
    const b = await electorB.campaign();
    expect(b?.token).toBeGreaterThan(a?.token ?? Number.POSITIVE_INFINITY);

    // A wakes up still believing it leads, and writes with its old fence: refused, nothing changes.
    const write = storeA.deletePrefixes([`${prefix}/members/ns/pool/`], [a?.fence as never]);
    await expect(write).rejects.toBeInstanceOf(FencedError);
    await expect(write).rejects.toThrow(/no longer held/);
    expect(await storeA.client.get(record).string()).toBe('{}');
    // The current leader's write goes through.
    await storeB.deletePrefixes([`${prefix}/members/ns/pool/`], [b?.fence as never]);
    expect(await storeB.client.get(record).string()).toBeNull();
    await electorB.resign();
  });
});
