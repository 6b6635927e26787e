import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ClusterHandle } from '../../cluster/cluster-handle.ts';
import { testCluster, uniqueName } from '../../cluster/testing.ts';
import {
  apply,
  createNamespace,
  installCrds,
  nodes,
  OperatorProcess,
  pods,
  pool,
  poolManifest,
  startNodes,
  until,
} from './helpers.ts';

// The operator binds agent pods itself (schedulerName: agentflow) on real
// process-kubelet nodes: Spread and BinPack choose as specified, cordons,
// taints and maxPerNode hold, and a pod that fits nowhere stays Pending with
// the pool condition and an Event naming the shortfall.

let cluster: ClusterHandle;
let ns: string;
let operator: OperatorProcess;

beforeAll(async () => {
  cluster = testCluster();
  await installCrds(cluster);
  ns = await createNamespace(cluster, 'place');
  operator = new OperatorProcess(cluster, {
    name: 'op-place',
    namespace: ns,
    prefix: `/${uniqueName('place')}`,
    election: uniqueName('place'),
  });
  await operator.waitFor('Operator is leading');
});

afterAll(async () => {
  operator?.kill('SIGTERM');
  await operator?.exited;
  await cluster.client.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  await cluster.close();
});

const scheduled = (ps: { node?: string }[]) => ps.filter((p) => p.node).length;
const perNode = (ps: { node?: string }[]) => {
  const out: Record<string, number> = {};
  for (const p of ps) if (p.node) out[p.node] = (out[p.node] ?? 0) + 1;
  return out;
};

describe('placement by capacity', () => {
  it('Spread puts one pod on each of three equal nodes; BinPack fills one node before the next', async () => {
    const g = uniqueName('g');
    await startNodes(
      cluster,
      nodes(g, [
        { suffix: 'a', cpu: '4', memory: '8Gi' },
        { suffix: 'b', cpu: '4', memory: '8Gi' },
        { suffix: 'c', cpu: '4', memory: '8Gi' },
      ]),
    );
    await apply(cluster, poolManifest(ns, 'spread', { replicas: 3, strategy: 'Spread', group: g }));
    const spread = await until(
      '3 spread pods bound',
      () => pods(cluster, ns, 'spread'),
      (ps) => scheduled(ps) === 3,
    );
    expect(perNode(spread)).toEqual({ [`${g}-a`]: 1, [`${g}-b`]: 1, [`${g}-c`]: 1 });

    // The same nodes now hold 1 cpu each; BinPack adds 5 pods of 1 cpu: the most allocated node that fits first.
    await apply(cluster, poolManifest(ns, 'pack', { replicas: 5, strategy: 'BinPack', group: g }));
    const pack = await until(
      '5 packed pods bound',
      () => pods(cluster, ns, 'pack'),
      (ps) => scheduled(ps) === 5,
    );
    // Ties go by node name: a fills up (3 more), then b takes 2.
    expect(perNode(pack)).toEqual({ [`${g}-a`]: 3, [`${g}-b`]: 2 });
    // Every pod runs where it was bound.
    await until(
      'pack pods Ready',
      () => pods(cluster, ns, 'pack'),
      (ps) => ps.every((p) => p.ready),
    );
  });

  it('prefers the roomier node under Spread and the fuller one under BinPack when nodes differ in size', async () => {
    const g = uniqueName('g');
    await startNodes(
      cluster,
      nodes(g, [
        { suffix: 'small', cpu: '2', memory: '4Gi' },
        { suffix: 'large', cpu: '8', memory: '16Gi' },
      ]),
    );
    await apply(cluster, poolManifest(ns, 'roomy', { replicas: 1, strategy: 'Spread', group: g }));
    const roomy = await until(
      'roomy bound',
      () => pods(cluster, ns, 'roomy'),
      (ps) => scheduled(ps) === 1,
    );
    expect(roomy[0]?.node).toBe(`${g}-large`);
    await apply(cluster, poolManifest(ns, 'tight', { replicas: 1, strategy: 'BinPack', group: g }));
    const tight = await until(
      'tight bound',
      () => pods(cluster, ns, 'tight'),
      (ps) => scheduled(ps) === 1,
    );
    expect(tight[0]?.node).toBe(`${g}-small`);
  });

  it('a pod that fits nowhere stays Pending with an Unschedulable condition and a FailedScheduling Event naming the shortfall', async () => {
    const g = uniqueName('g');
    await startNodes(
      cluster,
      nodes(g, [
        { suffix: 'a', cpu: '2', memory: '4Gi' },
        { suffix: 'b', cpu: '2', memory: '4Gi' },
      ]),
    );
    await apply(cluster, poolManifest(ns, 'huge', { replicas: 1, cpu: '3', group: g }));
    const p = await until(
      'the Unschedulable condition',
      () => pool(cluster, ns, 'huge'),
      // Until the new nodes' first Ready heartbeat the verdict may cite their not-ready taint: wait for the settled one.
      (o) =>
        o.status?.conditions?.some(
          (c: { type: string; status: string; message: string }) =>
            c.type === 'Unschedulable' && c.status === 'True' && c.message.includes('too little cpu'),
        ),
    );
    const cond = p.status.conditions.find((c: { type: string }) => c.type === 'Unschedulable');
    expect(cond.reason).toBe('InsufficientResources');
    // Our two nodes lack cpu; other tests' nodes (in the same cluster) fail the node selector.
    expect(cond.message).toMatch(/^0\/\d+ nodes can run the pod \(it requests cpu 3, memory 1Gi\): /);
    expect(cond.message).toContain('2 have too little cpu (the most free is 2)');
    const [pod] = await pods(cluster, ns, 'huge');
    expect(pod?.node).toBeUndefined();
    expect(pod?.phase).toBe('Pending');
    expect(pod?.scheduled).toMatchObject({ status: 'False', reason: 'Unschedulable' });
    const events = await until(
      'a FailedScheduling event',
      () =>
        cluster.client.get<{
          items: { type: string; reason: string; message: string; involvedObject: { name: string } }[];
        }>(`/api/v1/namespaces/${ns}/events?fieldSelector=${encodeURIComponent('reason=FailedScheduling')}`),
      (l) => l.items.some((e) => e.involvedObject.name === 'huge-0' && e.message.includes('too little cpu')),
    );
    expect(events.items.filter((e) => e.involvedObject.name === 'huge-0').every((e) => e.type === 'Warning')).toBe(
      true,
    );

    // Room appears (a bigger node joins the group): the pod is placed without anyone touching the pool.
    await startNodes(cluster, nodes(g, [{ suffix: 'big', cpu: '4', memory: '8Gi' }]));
    const placed = await until(
      'huge-0 bound once room appears',
      () => pods(cluster, ns, 'huge'),
      (ps) => scheduled(ps) === 1,
      40_000,
    );
    expect(placed[0]?.node).toBe(`${g}-big`);
    await until(
      'the condition to clear',
      () => pool(cluster, ns, 'huge'),
      (o) =>
        o.status?.conditions?.some(
          (c: { type: string; status: string }) => c.type === 'Unschedulable' && c.status === 'False',
        ),
    );
  });

  it('respects cordons, NoSchedule taints (unless tolerated) and maxPerNode', async () => {
    const g = uniqueName('g');
    const taint = { key: 'dedicated', value: 'gpu', effect: 'NoSchedule' };
    await startNodes(
      cluster,
      nodes(g, [
        { suffix: 'cordoned', cpu: '8', memory: '16Gi', unschedulable: true },
        { suffix: 'tainted', cpu: '8', memory: '16Gi', taints: [taint] },
        { suffix: 'plain', cpu: '8', memory: '16Gi' },
      ]),
    );
    // Without a toleration only the plain node qualifies; maxPerNode 2 leaves the third pod Pending.
    await apply(cluster, poolManifest(ns, 'limited', { replicas: 3, maxPerNode: 2, group: g }));
    const limited = await until(
      'two bound, one unschedulable',
      () => pods(cluster, ns, 'limited'),
      // New nodes carry node.kubernetes.io/not-ready until their first Ready heartbeat, so the first
      // verdict may cite that taint; wait for the settled one, which names the max per node.
      (ps) =>
        scheduled(ps) === 2 &&
        ps.some((p) => p.scheduled?.reason === 'Unschedulable' && p.scheduled.message?.includes('max per node')),
    );
    expect(perNode(limited)).toEqual({ [`${g}-plain`]: 2 });
    const pending = limited.find((p) => !p.node);
    expect(pending?.scheduled?.message).toContain('1 is cordoned');
    expect(pending?.scheduled?.message).toContain('1 has untolerated taint dedicated=gpu:NoSchedule');
    expect(pending?.scheduled?.message).toContain('1 has reached the max per node (2)');

    // Tolerating the taint opens the tainted node to the pending pod; the cordoned node stays closed.
    await apply(
      cluster,
      poolManifest(ns, 'limited', {
        replicas: 3,
        maxPerNode: 2,
        group: g,
        tolerations: [{ key: 'dedicated', operator: 'Equal', value: 'gpu', effect: 'NoSchedule' }],
      }),
    );
    // The template changed, so the pods roll; once settled, nothing is on the cordoned node.
    const rolled = await until(
      'three bound pods on the new template',
      () => pods(cluster, ns, 'limited'),
      (ps) =>
        ps.length === 3 &&
        scheduled(ps) === 3 &&
        ps.every((p) => p.ready && !p.terminating) &&
        new Set(ps.map((p) => p.hash)).size === 1,
      60_000,
    );
    const counts = perNode(rolled);
    expect(counts[`${g}-cordoned`]).toBeUndefined();
    expect(Object.values(counts).every((n) => n <= 2)).toBe(true);
    expect(counts[`${g}-tainted`]).toBeGreaterThanOrEqual(1);
  });
});
