import type { V1Container, V1Node, V1Pod, V1Taint, V1Toleration } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { nodeFree, type Placement, type PlaceOptions, place, podRequests } from '../../../src/operator/placer.ts';

// ---------------------------------------------------------------- factories

interface NodeSpec {
  cpu?: string;
  memory?: string;
  pods?: string;
  extra?: Record<string, string>;
  labels?: Record<string, string>;
  taints?: V1Taint[];
  unschedulable?: boolean;
  ready?: 'True' | 'False' | 'Unknown' | null;
  /** put resources under capacity instead of allocatable */
  capacityOnly?: boolean;
}

function node(name: string, s: NodeSpec = {}): V1Node {
  const resources = { cpu: s.cpu ?? '4', memory: s.memory ?? '8Gi', pods: s.pods ?? '110', ...s.extra };
  const ready = s.ready === undefined ? 'True' : s.ready;
  return {
    metadata: { name, labels: { 'kubernetes.io/hostname': name, ...s.labels } },
    spec: { unschedulable: s.unschedulable, taints: s.taints },
    status: {
      ...(s.capacityOnly ? { capacity: resources } : { allocatable: resources, capacity: { cpu: '64' } }),
      conditions: ready === null ? [] : [{ type: 'Ready', status: ready }],
    },
  };
}

type Res = Record<string, string>;
const c = (requests?: Res, limits?: Res, restartPolicy?: string): V1Container => ({
  name: 'c',
  resources: { requests, limits },
  restartPolicy,
});

interface PodSpec {
  containers?: V1Container[];
  initContainers?: V1Container[];
  overhead?: Res;
  nodeName?: string;
  phase?: string;
  pool?: string;
  uid?: string;
  deleting?: boolean;
  tolerations?: V1Toleration[];
  nodeSelector?: Record<string, string>;
  affinity?: NonNullable<V1Pod['spec']>['affinity'];
}

function pod(name: string, s: PodSpec = {}): V1Pod {
  return {
    metadata: {
      name,
      namespace: 'default',
      uid: s.uid,
      labels: s.pool ? { 'agentflow.dev/pool': s.pool } : {},
      deletionTimestamp: s.deleting ? new Date('2025-01-01T00:00:00Z') : undefined,
    },
    spec: {
      containers: s.containers ?? [c()],
      initContainers: s.initContainers,
      overhead: s.overhead,
      nodeName: s.nodeName,
      tolerations: s.tolerations,
      nodeSelector: s.nodeSelector,
      affinity: s.affinity,
    },
    status: { phase: s.phase ?? (s.nodeName ? 'Running' : 'Pending') },
  };
}

const req = (requests: Res, extra: Omit<PodSpec, 'containers'> = {}): V1Pod =>
  pod('new', { containers: [c(requests)], ...extra });
const spread: PlaceOptions = { strategy: 'Spread', samePool: () => false };
const binpack: PlaceOptions = { strategy: 'BinPack', samePool: () => false };

/** The reasons of an unschedulable placement; fails the test if a node was picked. */
function reasonsOf(pl: Placement): Record<string, number> {
  if (pl.node !== undefined) throw new Error(`expected no node, got ${pl.node}`);
  return pl.reasons;
}

const GI = 1_073_741_824_000n; // 1Gi in milli-units
const MI = 1_048_576_000n;

// ---------------------------------------------------------------- podRequests / nodeFree

describe('podRequests', () => {
  it('sums containers and always counts one pod', () => {
    const p = pod('p', { containers: [c({ cpu: '500m', memory: '1Gi' }), c({ cpu: '250m' })] });
    expect(podRequests(p)).toEqual(
      new Map([
        ['cpu', 750n],
        ['memory', GI],
        ['pods', 1000n],
      ]),
    );
  });

  it('takes the max of the containers sum and each init container', () => {
    const p = pod('p', {
      containers: [c({ cpu: '500m', memory: '1Gi' }), c({ cpu: '500m' })],
      initContainers: [c({ cpu: '2' }), c({ memory: '512Mi' })],
    });
    expect(podRequests(p)).toEqual(
      new Map([
        ['cpu', 2000n],
        ['memory', GI],
        ['pods', 1000n],
      ]),
    );
  });

  it('runs sidecar init containers (restartPolicy Always) alongside everything after them', () => {
    const p = pod('p', {
      containers: [c({ cpu: '1' })],
      initContainers: [c({ cpu: '200m' }, undefined, 'Always'), c({ cpu: '1500m' })],
    });
    // containers + sidecar = 1200m; the later init container runs beside the sidecar: 1700m.
    expect(podRequests(p).get('cpu')).toBe(1700n);
  });

  it('adds the pod overhead', () => {
    const p = pod('p', { containers: [c({ cpu: '1' })], overhead: { cpu: '250m', memory: '120Mi' } });
    expect(podRequests(p)).toEqual(
      new Map([
        ['cpu', 1250n],
        ['memory', 120n * MI],
        ['pods', 1000n],
      ]),
    );
  });

  it('uses limits as requests where a container sets no request', () => {
    const p = pod('p', { containers: [c({ memory: '512Mi' }, { cpu: '2', memory: '1Gi', 'nvidia.com/gpu': '1' })] });
    expect(podRequests(p)).toEqual(
      new Map([
        ['cpu', 2000n],
        ['memory', 512n * MI],
        ['nvidia.com/gpu', 1000n],
        ['pods', 1000n],
      ]),
    );
  });
});

describe('nodeFree', () => {
  it('subtracts non-terminal pods bound to the node from allocatable', () => {
    const n = node('a', { cpu: '4', memory: '8Gi', pods: '10' });
    const pods = [
      pod('x', { nodeName: 'a', containers: [c({ cpu: '1500m', memory: '1Gi' })] }),
      pod('y', { nodeName: 'a', phase: 'Succeeded', containers: [c({ cpu: '2' })] }),
      pod('z', { nodeName: 'b', containers: [c({ cpu: '1' })] }),
    ];
    expect(nodeFree(n, pods)).toEqual(
      new Map([
        ['cpu', 2500n],
        ['memory', 7n * GI],
        ['pods', 9000n],
      ]),
    );
  });

  it('falls back to capacity and goes negative for resources the node lacks', () => {
    const n = node('a', { cpu: '2', capacityOnly: true });
    const pods = [pod('x', { nodeName: 'a', containers: [c({ cpu: '500m', 'example.com/foo': '2' })] })];
    const free = nodeFree(n, pods);
    expect(free.get('cpu')).toBe(1500n);
    expect(free.get('example.com/foo')).toBe(-2000n);
  });
});

// ---------------------------------------------------------------- place

describe('place: strategies and scoring', () => {
  const nodes = [node('a'), node('b')];
  const pods = [pod('busy', { nodeName: 'a', containers: [c({ cpu: '2', memory: '4Gi' })] })];
  const p = req({ cpu: '1', memory: '1Gi' });

  it('Spread picks the least allocated node', () => {
    // b after placing: cpu 1/4, memory 1/8 -> 0.1875
    expect(place(p, nodes, pods, spread)).toEqual({ node: 'b', score: 0.1875 });
  });

  it('BinPack picks the most allocated node that fits', () => {
    // a after placing: cpu 3/4, memory 5/8 -> 0.6875
    expect(place(p, nodes, pods, binpack)).toEqual({ node: 'a', score: 0.6875 });
  });

  it('BinPack skips a fuller node the pod does not fit on', () => {
    const full = [pod('busy', { nodeName: 'a', containers: [c({ cpu: '3500m' })] })];
    expect(place(p, nodes, full, binpack).node).toBe('b');
  });

  it('breaks ties by node name, whatever the input order', () => {
    const same = [node('c'), node('a'), node('b')];
    expect(place(p, same, [], spread)).toEqual({ node: 'a', score: 0.1875 });
    expect(place(p, same, [], binpack)).toEqual({ node: 'a', score: 0.1875 });
  });

  it('spreads pods without requests using the scheduler non-zero defaults', () => {
    const empty = (name: string, nodeName: string) => pod(name, { nodeName });
    const existing = [empty('e1', 'a'), empty('e2', 'a'), empty('e3', 'a'), empty('e4', 'b')];
    // b: cpu (100m+100m)/4, memory (200Mi+200Mi)/8Gi -> (0.05 + 0.048828125) / 2
    expect(place(pod('new'), nodes, existing, spread)).toEqual({ node: 'b', score: 0.0494140625 });
    expect(place(pod('new'), nodes, existing, binpack).node).toBe('a');
  });

  it('scores requested extended resources too', () => {
    const gpus = [node('g1', { extra: { 'nvidia.com/gpu': '4' } }), node('g2', { extra: { 'nvidia.com/gpu': '4' } })];
    const used = [pod('u', { nodeName: 'g2', containers: [c({ 'nvidia.com/gpu': '2' })] })];
    const p = req({ cpu: '1', memory: '2Gi', 'nvidia.com/gpu': '1' });
    // g1: cpu 1/4, memory 2/8, gpu 1/4 -> 0.25; g2: gpu 3/4 (and 100m/200Mi defaults for u)
    expect(place(p, gpus, used, spread)).toEqual({ node: 'g1', score: 0.25 });
    expect(place(p, gpus, used, binpack).node).toBe('g2');
  });
});

describe('place: resources', () => {
  it('lets terminal pods free their room, but counts terminating ones', () => {
    const nodes = [node('a', { cpu: '2' })];
    const p = req({ cpu: '1' });
    const done = [
      pod('ok', { nodeName: 'a', phase: 'Succeeded', containers: [c({ cpu: '2' })] }),
      pod('bad', { nodeName: 'a', phase: 'Failed', containers: [c({ cpu: '2' })] }),
    ];
    expect(place(p, nodes, done, spread).node).toBe('a');
    const deleting = [pod('d', { nodeName: 'a', deleting: true, containers: [c({ cpu: '1500m' })] })];
    expect(place(p, nodes, deleting, spread)).toEqual({
      message: '0/1 nodes can run the pod (it requests cpu 1): 1 has too little cpu (the most free is 500m)',
      reasons: { 'too little cpu': 1 },
    });
  });

  it('applies the init container max rule when fitting', () => {
    const p = pod('new', { containers: [c({ cpu: '500m' })], initContainers: [c({ cpu: '2' })] });
    expect(place(p, [node('a', { cpu: '1500m' }), node('b', { cpu: '2' })], [], spread).node).toBe('b');
    expect(place(p, [node('a', { cpu: '1500m' })], [], spread)).toEqual({
      message: '0/1 nodes can run the pod (it requests cpu 2): 1 has too little cpu (the most free is 1500m)',
      reasons: { 'too little cpu': 1 },
    });
  });

  it('adds overhead when fitting', () => {
    const p = pod('new', { containers: [c({ cpu: '1' })], overhead: { cpu: '250m' } });
    expect(place(p, [node('a', { cpu: '1' })], [], spread).node).toBeUndefined();
    expect(place(p, [node('a', { cpu: '1' }), node('b', { cpu: '1250m' })], [], spread).node).toBe('b');
  });

  it('counts limits as requests', () => {
    const p = pod('new', { containers: [c(undefined, { memory: '6Gi' })] });
    const used = [pod('u', { nodeName: 'a', containers: [c({ memory: '4Gi' })] })];
    expect(place(p, [node('a'), node('b', { memory: '4Gi' })], used, spread)).toEqual({
      message: '0/2 nodes can run the pod (it requests memory 6Gi): 2 have too little memory (the most free is 4Gi)',
      reasons: { 'too little memory': 2 },
    });
  });

  it('puts a pod requesting a GPU only on a node that has one free', () => {
    const nodes = [
      node('a', { cpu: '64', memory: '256Gi' }),
      node('g', { cpu: '2', extra: { 'nvidia.com/gpu': '1' } }),
    ];
    const p = req({ cpu: '1', 'nvidia.com/gpu': '1' });
    expect(place(p, nodes, [], spread).node).toBe('g');
    const taken = [pod('t', { nodeName: 'g', containers: [c({ 'nvidia.com/gpu': '1' })] })];
    expect(place(p, nodes, taken, spread)).toEqual({
      message:
        '0/2 nodes can run the pod (it requests cpu 1, nvidia.com/gpu 1): 2 have too little nvidia.com/gpu (the most free is 0)',
      reasons: { 'too little nvidia.com/gpu': 2 },
    });
  });

  it('checks ephemeral-storage only when requested', () => {
    const n = node('a'); // offers no ephemeral-storage
    expect(place(req({ cpu: '1' }), [n], [], spread).node).toBe('a');
    expect(place(req({ 'ephemeral-storage': '1Gi' }), [n], [], spread)).toEqual({
      message:
        '0/1 nodes can run the pod (it requests ephemeral-storage 1Gi): 1 has too little ephemeral-storage (the most free is 0)',
      reasons: { 'too little ephemeral-storage': 1 },
    });
  });

  it('respects the pods allocatable', () => {
    const used = [pod('x', { nodeName: 'a' }), pod('y', { nodeName: 'a' })];
    expect(place(pod('new'), [node('a', { pods: '2' })], used, spread)).toEqual({
      message: '0/1 nodes can run the pod: 1 has too little pods (the most free is 0)',
      reasons: { 'too little pods': 1 },
    });
  });

  it('counts a pod listed twice (informer copy and just-bound copy) once, and never the pod itself', () => {
    const bound = pod('x', { uid: 'u-x', nodeName: 'a', containers: [c({ cpu: '1' })] });
    const stale = pod('x', { uid: 'u-x', containers: [c({ cpu: '1' })] });
    const self = pod('new', { uid: 'u-new', nodeName: 'a', containers: [c({ cpu: '1' })] });
    const p = pod('new', { uid: 'u-new', containers: [c({ cpu: '1' })] });
    expect(place(p, [node('a', { cpu: '2' })], [bound, stale, self], spread).node).toBe('a');
  });
});

describe('place: filters', () => {
  const p = req({ cpu: '1' });

  it('skips cordoned nodes unless the pod tolerates the unschedulable taint', () => {
    const nodes = [node('a', { unschedulable: true }), node('b', { cpu: '2' })];
    expect(place(p, nodes, [], binpack).node).toBe('b');
    expect(place(p, [nodes[0] as V1Node], [], spread)).toEqual({
      message: '0/1 nodes can run the pod (it requests cpu 1): 1 is cordoned',
      reasons: { cordoned: 1 },
    });
    const tolerant = req(
      { cpu: '1' },
      { tolerations: [{ key: 'node.kubernetes.io/unschedulable', operator: 'Exists', effect: 'NoSchedule' }] },
    );
    expect(place(tolerant, [nodes[0] as V1Node], [], spread).node).toBe('a');
  });

  it('skips nodes that are not Ready, or report no Ready condition', () => {
    const nodes = [node('a', { ready: 'False' }), node('b', { ready: 'Unknown' }), node('c', { ready: null })];
    expect(place(p, nodes, [], spread)).toEqual({
      message: '0/3 nodes can run the pod (it requests cpu 1): 3 are not ready',
      reasons: { 'not ready': 3 },
    });
    expect(place(p, [...nodes, node('d')], [], spread).node).toBe('d');
  });

  describe('taints', () => {
    const gpuTaint: V1Taint = { key: 'gpu', value: 'true', effect: 'NoSchedule' };

    it('rejects NoSchedule and NoExecute taints the pod does not tolerate', () => {
      const nodes = [
        node('a', { taints: [gpuTaint] }),
        node('b', { taints: [{ key: 'dedicated', value: 'db', effect: 'NoExecute' }] }),
        node('c', { taints: [{ key: 'maintenance', effect: 'NoSchedule' }] }),
      ];
      expect(place(p, nodes, [], spread)).toEqual({
        message:
          '0/3 nodes can run the pod (it requests cpu 1): 1 has untolerated taint dedicated=db:NoExecute, 1 has untolerated taint gpu=true:NoSchedule, 1 has untolerated taint maintenance:NoSchedule',
        reasons: {
          'untolerated taint gpu=true:NoSchedule': 1,
          'untolerated taint dedicated=db:NoExecute': 1,
          'untolerated taint maintenance:NoSchedule': 1,
        },
      });
    });

    it('accepts a taint tolerated with Equal (and the default operator)', () => {
      const nodes = [node('a', { taints: [gpuTaint] })];
      const equal = req(
        { cpu: '1' },
        { tolerations: [{ key: 'gpu', operator: 'Equal', value: 'true', effect: 'NoSchedule' }] },
      );
      expect(place(equal, nodes, [], spread).node).toBe('a');
      const implicit = req({ cpu: '1' }, { tolerations: [{ key: 'gpu', value: 'true' }] });
      expect(place(implicit, nodes, [], spread).node).toBe('a');
      const wrongValue = req({ cpu: '1' }, { tolerations: [{ key: 'gpu', operator: 'Equal', value: 'false' }] });
      expect(reasonsOf(place(wrongValue, nodes, [], spread))).toEqual({ 'untolerated taint gpu=true:NoSchedule': 1 });
      const wrongEffect = req({ cpu: '1' }, { tolerations: [{ key: 'gpu', value: 'true', effect: 'NoExecute' }] });
      expect(place(wrongEffect, nodes, [], spread).node).toBeUndefined();
    });

    it('accepts a taint tolerated with Exists, by key or for all keys', () => {
      const nodes = [node('a', { taints: [gpuTaint, { key: 'other', value: 'x', effect: 'NoExecute' }] })];
      const byKey = req({ cpu: '1' }, { tolerations: [{ key: 'gpu', operator: 'Exists' }] });
      expect(reasonsOf(place(byKey, nodes, [], spread))).toEqual({ 'untolerated taint other=x:NoExecute': 1 });
      const everything = req({ cpu: '1' }, { tolerations: [{ operator: 'Exists' }] });
      expect(place(everything, nodes, [], spread).node).toBe('a');
    });

    it('ignores PreferNoSchedule', () => {
      const nodes = [node('a', { taints: [{ key: 'soft', value: 'yes', effect: 'PreferNoSchedule' }] })];
      // cpu 1/4, memory 200Mi (the non-zero default) / 8Gi
      expect(place(p, nodes, [], spread)).toEqual({ node: 'a', score: 0.13720703125 });
    });
  });

  it('requires every nodeSelector label to match', () => {
    const nodes = [node('a', { labels: { zone: 'z1' } }), node('b', { labels: { zone: 'z2', disk: 'ssd' } })];
    expect(place(req({ cpu: '1' }, { nodeSelector: { zone: 'z2' } }), nodes, [], spread).node).toBe('b');
    expect(place(req({ cpu: '1' }, { nodeSelector: { zone: 'z1', disk: 'ssd' } }), nodes, [], spread)).toEqual({
      message: "0/2 nodes can run the pod (it requests cpu 1): 2 don't match the node selector",
      reasons: { 'node selector mismatch': 2 },
    });
  });

  describe('required node affinity', () => {
    const nodes = [
      node('a', { labels: { zone: 'z1', cores: '8' } }),
      node('b', { labels: { zone: 'z2', cores: '32' } }),
      node('c', { labels: { cores: 'many' } }),
    ];
    type Term = {
      matchExpressions?: { key: string; operator: string; values?: string[] }[];
      matchFields?: { key: string; operator: string; values?: string[] }[];
    };
    const withTerms = (...terms: Term[]) =>
      req(
        { cpu: '1' },
        {
          affinity: { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: terms } } },
        },
      );
    const names = (pd: V1Pod) =>
      ['a', 'b', 'c'].filter(
        (n) =>
          place(
            pd,
            nodes.filter((x) => x.metadata?.name === n),
            [],
            spread,
          ).node === n,
      );

    it('supports In and NotIn (NotIn matches nodes without the label)', () => {
      expect(names(withTerms({ matchExpressions: [{ key: 'zone', operator: 'In', values: ['z1', 'z3'] }] }))).toEqual([
        'a',
      ]);
      expect(names(withTerms({ matchExpressions: [{ key: 'zone', operator: 'NotIn', values: ['z1'] }] }))).toEqual([
        'b',
        'c',
      ]);
    });

    it('supports Exists, DoesNotExist, and Gt / Lt on integer labels', () => {
      expect(names(withTerms({ matchExpressions: [{ key: 'zone', operator: 'Exists' }] }))).toEqual(['a', 'b']);
      expect(names(withTerms({ matchExpressions: [{ key: 'zone', operator: 'DoesNotExist' }] }))).toEqual(['c']);
      expect(names(withTerms({ matchExpressions: [{ key: 'cores', operator: 'Gt', values: ['16'] }] }))).toEqual(['b']);
      expect(names(withTerms({ matchExpressions: [{ key: 'cores', operator: 'Lt', values: ['16'] }] }))).toEqual(['a']);
    });

    it('ANDs expressions within a term and ORs terms', () => {
      const and = withTerms({
        matchExpressions: [
          { key: 'zone', operator: 'Exists' },
          { key: 'cores', operator: 'Gt', values: ['4'] },
          { key: 'zone', operator: 'NotIn', values: ['z2'] },
        ],
      });
      expect(names(and)).toEqual(['a']);
      const or = withTerms(
        { matchExpressions: [{ key: 'zone', operator: 'In', values: ['z2'] }] },
        { matchExpressions: [{ key: 'cores', operator: 'In', values: ['many'] }] },
      );
      expect(names(or)).toEqual(['b', 'c']);
    });

    it('supports matchFields on metadata.name', () => {
      expect(names(withTerms({ matchFields: [{ key: 'metadata.name', operator: 'In', values: ['c'] }] }))).toEqual([
        'c',
      ]);
      expect(names(withTerms({ matchFields: [{ key: 'metadata.name', operator: 'NotIn', values: ['c'] }] }))).toEqual([
        'a',
        'b',
      ]);
    });

    it('matches nothing with an empty term or an unknown operator, and says so', () => {
      expect(names(withTerms({}))).toEqual([]);
      expect(names(withTerms({ matchExpressions: [{ key: 'zone', operator: 'Like', values: ['z1'] }] }))).toEqual([]);
      expect(place(withTerms({}), nodes, [], spread)).toEqual({
        message: "0/3 nodes can run the pod (it requests cpu 1): 3 don't match the required node affinity",
        reasons: { 'node affinity mismatch': 3 },
      });
    });
  });

  it('enforces maxPerNode over non-terminal pods of the same pool', () => {
    const opts: PlaceOptions = {
      strategy: 'BinPack',
      maxPerNode: 2,
      samePool: (x) => x.metadata?.labels?.['agentflow.dev/pool'] === 'p1',
    };
    const nodes = [node('a'), node('b')];
    const onA = [
      pod('p1-0', { nodeName: 'a', pool: 'p1', containers: [c({ cpu: '1' })] }),
      pod('p1-1', { nodeName: 'a', pool: 'p1', containers: [c({ cpu: '1' })] }),
      pod('p2-0', { nodeName: 'b', pool: 'p2', containers: [c({ cpu: '500m' })] }),
    ];
    expect(place(p, nodes, onA, opts).node).toBe('b');
    const oneFinished = onA.map((x) => (x.metadata?.name === 'p1-1' ? { ...x, status: { phase: 'Succeeded' } } : x));
    expect(place(p, nodes, oneFinished, opts).node).toBe('a');
    const bothFull = [...onA, pod('p1-2', { nodeName: 'b', pool: 'p1' }), pod('p1-3', { nodeName: 'b', pool: 'p1' })];
    expect(place(p, nodes, bothFull, opts)).toEqual({
      message: '0/2 nodes can run the pod (it requests cpu 1): 2 have reached the max per node (2)',
      reasons: { 'max per node (2) reached': 2 },
    });
  });
});

describe('place: when nothing fits', () => {
  it('explains a mixed case, each node once under its first failing filter', () => {
    const nodes = [
      node('n1', { unschedulable: true, cpu: '1' }), // also too small, but cordoned comes first
      node('n2', { cpu: '2' }),
      node('n3', { cpu: '4' }),
    ];
    const pods = [
      pod('x', { nodeName: 'n2', containers: [c({ cpu: '500m' })] }),
      pod('y', { nodeName: 'n3', containers: [c({ cpu: '3' })] }),
    ];
    const p = req({ cpu: '2', memory: '1Gi' });
    expect(place(p, nodes, pods, spread)).toEqual({
      message:
        '0/3 nodes can run the pod (it requests cpu 2, memory 1Gi): 2 have too little cpu (the most free is 1500m), 1 is cordoned',
      reasons: { cordoned: 1, 'too little cpu': 2 },
    });
  });

  it('orders reasons by count, then by filter order', () => {
    const nodes = [
      node('a', { ready: 'False' }),
      node('b', { taints: [{ key: 'k', value: 'v', effect: 'NoSchedule' }] }),
      node('c', { memory: '1536Mi' }),
      node('d', { memory: '512Mi' }),
      node('e', { labels: { zone: 'z9' }, memory: '1Gi' }), // memory would fail too; the selector fails first
      node('f', { cpu: '1', memory: '1Gi' }),
    ];
    const p = req({ cpu: '1500m', memory: '2Gi' }, { nodeSelector: { 'kubernetes.io/os': 'linux' } });
    for (const n of nodes) {
      if (n.metadata?.name !== 'e') (n.metadata?.labels ?? {})['kubernetes.io/os'] = 'linux';
    }
    expect(place(p, nodes, [], spread)).toEqual({
      message:
        "0/6 nodes can run the pod (it requests cpu 1500m, memory 2Gi): 2 have too little memory (the most free is 1.5Gi), 1 is not ready, 1 has untolerated taint k=v:NoSchedule, 1 doesn't match the node selector, 1 has too little cpu (the most free is 1)",
      reasons: {
        'not ready': 1,
        'untolerated taint k=v:NoSchedule': 1,
        'too little memory': 2,
        'node selector mismatch': 1,
        'too little cpu': 1,
      },
    });
  });

  it('says so when the cluster has no nodes', () => {
    expect(place(req({ cpu: '1' }), [], [], spread)).toEqual({
      message: '0/0 nodes can run the pod: the cluster has no nodes',
      reasons: {},
    });
  });
});
