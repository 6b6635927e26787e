import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StateStore } from '../../../src/state/index.ts';
import type { ClusterHandle } from '../../cluster/cluster-handle.ts';
import { testCluster, uniqueName } from '../../cluster/testing.ts';
import { testStore } from '../state/helpers.ts';
import {
  apply,
  createNamespace,
  installCrds,
  nodes,
  OperatorProcess,
  operatorKubeconfig,
  type PodView,
  pods,
  pool,
  poolManifest,
  startNodes,
  until,
} from './helpers.ts';

// The AgentPool controller on the real API server: pods follow spec.replicas
// and `kubectl scale`, a template change replaces pods one at a time, status
// and printer columns stay current, and deleting a pool removes its pods and
// its etcd records. The operator runs with deploy/operator/rbac.yaml's
// permissions and no more.

let cluster: ClusterHandle;
let ns: string;
let operator: OperatorProcess;
let store: StateStore;
const prefix = `/${uniqueName('life')}`;
const group = uniqueName('g');

beforeAll(async () => {
  cluster = testCluster();
  await installCrds(cluster);
  ns = await createNamespace(cluster, 'life');
  await startNodes(
    cluster,
    nodes(group, [
      { suffix: 'a', cpu: '16', memory: '32Gi' },
      { suffix: 'b', cpu: '16', memory: '32Gi' },
    ]),
  );
  store = testStore(prefix);
  // The operator runs with the shipped RBAC only, so these tests also prove it is enough.
  const kubeconfig = await operatorKubeconfig(cluster, ns);
  operator = new OperatorProcess(cluster, {
    name: 'op-life',
    namespace: ns,
    prefix,
    election: uniqueName('life'),
    kubeconfig,
  });
  await operator.waitFor('Operator is leading');
});

afterAll(async () => {
  operator?.kill('SIGTERM');
  await operator?.exited;
  store?.close();
  await cluster.client.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  await cluster.close();
});

const live = (ps: PodView[]) => ps.filter((p) => !p.terminating);
const allReady = (n: number) => (ps: PodView[]) => ps.length === n && ps.every((p) => p.ready && !p.terminating);

describe('AgentPool controller', () => {
  it('scales through spec.replicas and kubectl scale, with deterministic pod names and a current status', async () => {
    await apply(cluster, poolManifest(ns, 'workers', { replicas: 2, group }));
    const two = await until('2 Ready pods', () => pods(cluster, ns, 'workers'), allReady(2));
    expect(two.map((p) => p.name)).toEqual(['workers-0', 'workers-1']);
    const st = await until(
      'status readyReplicas 2',
      () => pool(cluster, ns, 'workers'),
      (o) => o.status?.readyReplicas === 2,
    );
    expect(st.status).toMatchObject({
      replicas: 2,
      readyReplicas: 2,
      selector: 'agentflow.io/pool=workers',
      observedGeneration: st.metadata.generation,
    });
    expect(st.status.conditions.find((c: { type: string }) => c.type === 'Ready')).toMatchObject({
      status: 'True',
      reason: 'AllReplicasReady',
    });
    expect(st.metadata.finalizers).toContain('agentflow.io/pool-cleanup');

    const scaled = await cluster.kubectl(['scale', '-n', ns, 'ap/workers', '--replicas=4']);
    expect(scaled.stderr).toBe('');
    const four = await until('4 Ready pods', () => pods(cluster, ns, 'workers'), allReady(4));
    expect(four.map((p) => p.name)).toEqual(['workers-0', 'workers-1', 'workers-2', 'workers-3']);
    // The first two pods were kept, not replaced.
    expect(four.slice(0, 2).map((p) => p.uid)).toEqual(two.map((p) => p.uid));

    // The printer columns read the status the controller writes.
    await until(
      'status readyReplicas 4',
      () => pool(cluster, ns, 'workers'),
      (o) => o.status?.readyReplicas === 4,
    );
    const get = await cluster.kubectl(['get', '-n', ns, 'ap', 'workers']);
    const [header, row] = get.stdout
      .trim()
      .split('\n')
      .map((l) => l.trim().split(/\s+/));
    expect(header?.slice(0, 6)).toEqual(['NAME', 'READY', 'AGENTS', 'SLOTS', 'INFLIGHT', 'QUEUED']);
    // No agent process runs in these pods (they sleep), so none is connected to the dispatcher.
    expect(row?.slice(0, 6)).toEqual(['workers', '4', '0', '0', '0', '0']);

    // Scale down through the spec: the highest ordinals go.
    await apply(cluster, poolManifest(ns, 'workers', { replicas: 1, group }));
    const one = await until(
      '1 pod left',
      () => pods(cluster, ns, 'workers'),
      (ps) => ps.length === 1,
    );
    expect(one[0]?.uid).toBe(two[0]?.uid);
    await until(
      'status replicas 1',
      () => pool(cluster, ns, 'workers'),
      (o) => o.status?.replicas === 1 && o.status?.readyReplicas === 1,
    );
  });

  it('replaces pods one at a time on a template change, highest ordinal first, never two down at once', async () => {
    await apply(cluster, poolManifest(ns, 'roll', { replicas: 3, group }));
    const before = await until('3 Ready pods', () => pods(cluster, ns, 'roll'), allReady(3));
    const oldHash = before[0]?.hash;
    expect(new Set(before.map((p) => p.hash)).size).toBe(1);

    await apply(cluster, poolManifest(ns, 'roll', { replicas: 3, group, env: [{ name: 'MODEL', value: 'v2' }] }));
    // Sample the pods while the rollout runs.
    const samples: PodView[][] = [];
    const after = await until(
      '3 Ready pods on the new template',
      async () => {
        const ps = await pods(cluster, ns, 'roll');
        samples.push(ps);
        return ps;
      },
      (ps) => allReady(3)(ps) && ps.every((p) => p.hash !== oldHash),
      60_000,
    );
    expect(after.every((p) => p.hash === after[0]?.hash)).toBe(true);
    // At every moment at least two of the three pods were up and Ready (one replaced at a time).
    for (const s of samples) expect(live(s).filter((p) => p.ready).length).toBeGreaterThanOrEqual(2);
    // The order of replacement: roll-2, then roll-1, then roll-0.
    const firstNew = (name: string) => samples.findIndex((s) => s.some((p) => p.name === name && p.hash !== oldHash));
    expect(firstNew('roll-2')).toBeLessThanOrEqual(firstNew('roll-1'));
    expect(firstNew('roll-1')).toBeLessThanOrEqual(firstNew('roll-0'));
    expect(after.filter((p) => before.some((b) => b.uid === p.uid))).toEqual([]);
    const events = await cluster.client.get<{ items: { reason: string; involvedObject: { name: string } }[] }>(
      `/api/v1/namespaces/${ns}/events`,
    );
    expect(events.items.filter((e) => e.involvedObject.name === 'roll').map((e) => e.reason)).toContain(
      'RollingUpdate',
    );
  });

  it('deleting a pool deletes its pods and its etcd records, then the pool itself', async () => {
    await apply(cluster, poolManifest(ns, 'doomed', { replicas: 2, group }));
    await until('2 Ready pods', () => pods(cluster, ns, 'doomed'), allReady(2));
    // Records the pool owns in etcd (an agent's membership and pool-scoped shared state), and a neighbour's.
    await store.client.put(`${prefix}/members/${ns}/doomed/agent-x`).value('{}');
    await store.client.put(`${prefix}/state/pool/${ns}/doomed/notes`).value('"hello"');
    await store.client.put(`${prefix}/state/pool/${ns}/workers/notes`).value('"keep me"');

    const del = await cluster.kubectl(['delete', '-n', ns, 'ap/doomed', '--wait=true', '--timeout=60s']);
    expect(del.code).toBe(0);
    await until(
      'the pods gone',
      () => pods(cluster, ns, 'doomed'),
      (ps) => ps.length === 0,
      60_000,
    );
    expect(await store.client.getAll().prefix(`${prefix}/members/${ns}/doomed/`).keys()).toEqual([]);
    expect(await store.client.getAll().prefix(`${prefix}/state/pool/${ns}/doomed/`).keys()).toEqual([]);
    expect(await store.client.get(`${prefix}/state/pool/${ns}/workers/notes`).string()).toBe('"keep me"');
  });
});
