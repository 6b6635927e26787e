/**
 * The AgentPool controller's placer: picks a node for an agent pod the way
 * kube-scheduler would with the NodeUnschedulable, TaintToleration,
 * NodeAffinity and NodeResourcesFit plugins, plus the pool's maxPerNode.
 * Pure arithmetic over snapshots; the caller owns the informers and binding.
 *
 * Amounts are milli-units (bigint) throughout, so "100m" cpu and "8Ei" memory
 * are both exact. Malformed quantities throw QuantityError: the API server
 * validates quantities, so one here means our own template is wrong.
 */
import type {
  V1Container,
  V1Node,
  V1NodeSelectorRequirement,
  V1NodeSelectorTerm,
  V1Pod,
  V1Taint,
  V1Toleration,
} from '@kubernetes/client-node';
import { formatQuantity, parseQuantity, type QuantityKind } from '../lib/quantity.ts';

export type Strategy = 'Spread' | 'BinPack';

export interface PlaceOptions {
  strategy: Strategy;
  /** At most this many non-terminal pods of the same pool per node; unlimited when absent. */
  maxPerNode?: number;
  /** pods of the same pool, counted for maxPerNode */
  samePool: (p: V1Pod) => boolean;
}

export type Placement =
  | { node: string; score: number }
  | { node?: undefined; message: string; reasons: Record<string, number> };

const CPU = 'cpu';
const MEMORY = 'memory';
const EPHEMERAL_STORAGE = 'ephemeral-storage';
const PODS = 'pods';
const ONE_POD = 1000n;

/** kube-scheduler's non-zero defaults (pkg/scheduler/util.DefaultMilliCPURequest / DefaultMemoryRequest). */
const DEFAULT_CPU_REQUEST = 100n;
const DEFAULT_MEMORY_REQUEST = 200n * 1024n * 1024n * 1000n;

/** Fixed-point precision of utilisation fractions, so equal scores compare equal. */
const FRACTION_ONE = 1_000_000_000_000n;

const UNSCHEDULABLE_TAINT_KEY = 'node.kubernetes.io/unschedulable';

/**
 * What the pod asks for, in milli-units per resource name; always includes
 * "pods" = 1000 (one pod). Resources nobody requests are absent.
 */
export function podRequests(pod: V1Pod): Map<string, bigint> {
  return requestsOf(pod, false);
}

/**
 * Room left on a node: allocatable (falling back to capacity per resource)
 * minus the requests of the non-terminal pods bound to it. Resources the pods
 * use but the node does not offer come out negative.
 */
export function nodeFree(node: V1Node, podsOnNode: V1Pod[]): Map<string, bigint> {
  const free = allocatable(node);
  const name = node.metadata?.name;
  for (const p of podsOnNode) {
    if (isTerminal(p) || (name !== undefined && p.spec?.nodeName !== name)) continue;
    for (const [r, q] of requestsOf(p, false)) free.set(r, (free.get(r) ?? 0n) - q);
  }
  return free;
}

/**
 * Picks a node for `pod`, or explains why none fits.
 * nodes: all Nodes; pods: all pods in the cluster (any namespace) incl. ones just
 * bound but not yet seen by informers (caller merges them)
 */
export function place(pod: V1Pod, nodes: V1Node[], pods: V1Pod[], opts: PlaceOptions): Placement {
  const request = podRequests(pod);
  if (nodes.length === 0) {
    return { message: '0/0 nodes can run the pod: the cluster has no nodes', reasons: {} };
  }

  const byNode = podsByNode(pod, pods);
  const checked = orderedResources(request);
  const scored = scoredResources(request);
  const scoringRequest = requestsOf(pod, true);

  const reasons = new Map<string, number>();
  const mostFree = new Map<string, bigint>();
  let best: { node: string; total: bigint } | undefined;

  for (const node of nodes) {
    const name = node.metadata?.name ?? '';
    const onNode = byNode.get(name) ?? [];
    const failure = filter(pod, node, onNode, request, checked, opts);
    if (failure !== undefined) {
      reasons.set(failure.reason, (reasons.get(failure.reason) ?? 0) + 1);
      if (failure.resource !== undefined && failure.free !== undefined) {
        const prev = mostFree.get(failure.resource);
        if (prev === undefined || failure.free > prev) mostFree.set(failure.resource, failure.free);
      }
      continue;
    }
    const total = utilisation(node, onNode, scoringRequest, scored);
    if (best === undefined || better(opts.strategy, total, name, best)) best = { node: name, total };
  }

  if (best !== undefined) {
    return { node: best.node, score: Number(best.total) / Number(FRACTION_ONE) / scored.length };
  }
  return {
    message: unschedulableMessage(nodes.length, request, reasons, mostFree),
    reasons: Object.fromEntries(reasons),
  };
}

// ---------------------------------------------------------------- requests

function requestsOf(pod: V1Pod, nonZero: boolean): Map<string, bigint> {
  const spec = pod.spec;
  // Regular containers and restartable init containers (sidecars) run together.
  const running = new Map<string, bigint>();
  for (const c of spec?.containers ?? []) addInto(running, containerRequests(c, nonZero));

  // Init containers run one at a time, each alongside the sidecars started before it.
  const init = new Map<string, bigint>();
  const sidecars = new Map<string, bigint>();
  for (const c of spec?.initContainers ?? []) {
    const r = containerRequests(c, nonZero);
    if (c.restartPolicy === 'Always') {
      addInto(running, r);
      addInto(sidecars, r);
      maxInto(init, sidecars);
    } else {
      const during = new Map(sidecars);
      addInto(during, r);
      maxInto(init, during);
    }
  }

  const total = new Map(running);
  maxInto(total, init);
  for (const [r, q] of Object.entries(spec?.overhead ?? {})) {
    total.set(r, (total.get(r) ?? 0n) + parseQuantity(q));
  }
  total.set(PODS, ONE_POD);
  return total;
}

function containerRequests(c: V1Container, nonZero: boolean): Map<string, bigint> {
  const out = new Map<string, bigint>();
  // API defaulting: a limit without a request becomes the request.
  for (const [r, q] of Object.entries(c.resources?.limits ?? {})) out.set(r, parseQuantity(q));
  for (const [r, q] of Object.entries(c.resources?.requests ?? {})) out.set(r, parseQuantity(q));
  if (nonZero) {
    if (!out.has(CPU)) out.set(CPU, DEFAULT_CPU_REQUEST);
    if (!out.has(MEMORY)) out.set(MEMORY, DEFAULT_MEMORY_REQUEST);
  }
  return out;
}

function addInto(into: Map<string, bigint>, from: Map<string, bigint>): void {
  for (const [r, q] of from) into.set(r, (into.get(r) ?? 0n) + q);
}

function maxInto(into: Map<string, bigint>, from: Map<string, bigint>): void {
  for (const [r, q] of from) {
    const cur = into.get(r);
    if (cur === undefined || q > cur) into.set(r, q);
  }
}

function allocatable(node: V1Node): Map<string, bigint> {
  const out = new Map<string, bigint>();
  for (const [r, q] of Object.entries(node.status?.capacity ?? {})) out.set(r, parseQuantity(q));
  for (const [r, q] of Object.entries(node.status?.allocatable ?? {})) out.set(r, parseQuantity(q));
  return out;
}

function isTerminal(p: V1Pod): boolean {
  const phase = p.status?.phase;
  return phase === 'Succeeded' || phase === 'Failed';
}

/**
 * Non-terminal pods per node name. A pod listed twice (the informer's copy and
 * the caller's just-bound copy share a uid) counts once, as its bound copy;
 * the pod being placed never counts.
 */
function podsByNode(pod: V1Pod, pods: V1Pod[]): Map<string, V1Pod[]> {
  const self = pod.metadata?.uid;
  const unique = new Map<string, V1Pod>();
  const anonymous: V1Pod[] = [];
  for (const p of pods) {
    const uid = p.metadata?.uid;
    if (uid === undefined || uid === '') {
      anonymous.push(p);
      continue;
    }
    if (uid === self) continue;
    const prev = unique.get(uid);
    if (prev === undefined || !prev.spec?.nodeName || p.spec?.nodeName) unique.set(uid, p);
  }
  const byNode = new Map<string, V1Pod[]>();
  for (const p of [...unique.values(), ...anonymous]) {
    const n = p.spec?.nodeName;
    if (!n || isTerminal(p)) continue;
    const list = byNode.get(n);
    if (list) list.push(p);
    else byNode.set(n, [p]);
  }
  return byNode;
}

/** Resources checked for fit, in kube-scheduler's order: pods, cpu, memory, ephemeral-storage, the rest by name. */
function orderedResources(request: Map<string, bigint>): string[] {
  const fixed = [PODS, CPU, MEMORY, EPHEMERAL_STORAGE];
  const extended = [...request.keys()].filter((r) => !fixed.includes(r)).sort();
  return [...fixed, ...extended].filter((r) => (request.get(r) ?? 0n) > 0n);
}

/** Resources that score: cpu and memory (always, thanks to the non-zero defaults) and requested extended ones. */
function scoredResources(request: Map<string, bigint>): string[] {
  const extended = [...request.keys()]
    .filter((r) => r !== CPU && r !== MEMORY && r !== PODS && r !== EPHEMERAL_STORAGE && !r.startsWith('hugepages-'))
    .filter((r) => (request.get(r) ?? 0n) > 0n)
    .sort();
  return [CPU, MEMORY, ...extended];
}

// ---------------------------------------------------------------- filters

interface Failure {
  reason: string;
  resource?: string;
  free?: bigint;
}

function filter(
  pod: V1Pod,
  node: V1Node,
  onNode: V1Pod[],
  request: Map<string, bigint>,
  checked: string[],
  opts: PlaceOptions,
): Failure | undefined {
  const tolerations = pod.spec?.tolerations ?? [];

  // NodeUnschedulable lets pods that tolerate the cordon taint through.
  const cordonTaint: V1Taint = { key: UNSCHEDULABLE_TAINT_KEY, effect: 'NoSchedule' };
  if (node.spec?.unschedulable && !tolerations.some((t) => tolerates(t, cordonTaint))) {
    return { reason: 'cordoned' };
  }

  const ready = node.status?.conditions?.find((c) => c.type === 'Ready');
  if (ready?.status !== 'True') return { reason: 'not ready' };

  for (const taint of node.spec?.taints ?? []) {
    if (taint.effect !== 'NoSchedule' && taint.effect !== 'NoExecute') continue;
    if (!tolerations.some((t) => tolerates(t, taint))) return { reason: `untolerated taint ${showTaint(taint)}` };
  }

  const labels = node.metadata?.labels ?? {};
  for (const [k, v] of Object.entries(pod.spec?.nodeSelector ?? {})) {
    if (labels[k] !== v) return { reason: 'node selector mismatch' };
  }

  const required = pod.spec?.affinity?.nodeAffinity?.requiredDuringSchedulingIgnoredDuringExecution;
  if (required !== undefined && !matchesAnyTerm(required.nodeSelectorTerms ?? [], node)) {
    return { reason: 'node affinity mismatch' };
  }

  if (opts.maxPerNode !== undefined) {
    const count = onNode.filter((p) => !isTerminal(p) && opts.samePool(p)).length;
    if (count >= opts.maxPerNode) return { reason: `max per node (${opts.maxPerNode}) reached` };
  }

  const free = nodeFree(node, onNode);
  for (const r of checked) {
    const have = free.get(r) ?? 0n;
    if ((request.get(r) ?? 0n) > have) return { reason: `too little ${r}`, resource: r, free: have };
  }
  return undefined;
}

/** k8s.io/api/core/v1 Toleration.ToleratesTaint. */
function tolerates(t: V1Toleration, taint: V1Taint): boolean {
  if (t.effect && t.effect !== taint.effect) return false;
  if (t.key && t.key !== taint.key) return false;
  switch (t.operator ?? '') {
    case '':
    case 'Equal':
      return (t.value ?? '') === (taint.value ?? '');
    case 'Exists':
      return true;
    default:
      return false;
  }
}

/** kubectl's notation: key=value:effect, or key:effect without a value. */
function showTaint(taint: V1Taint): string {
  return taint.value ? `${taint.key}=${taint.value}:${taint.effect}` : `${taint.key}:${taint.effect}`;
}

/** Terms are ORed; an empty term matches nothing (k8s component-helpers nodeaffinity). */
function matchesAnyTerm(terms: V1NodeSelectorTerm[], node: V1Node): boolean {
  const labels = node.metadata?.labels ?? {};
  const name = node.metadata?.name ?? '';
  return terms.some((term) => {
    const exprs = term.matchExpressions ?? [];
    const fields = term.matchFields ?? [];
    if (exprs.length === 0 && fields.length === 0) return false;
    return exprs.every((e) => matchesLabel(e, labels)) && fields.every((f) => matchesField(f, name));
  });
}

function matchesLabel(req: V1NodeSelectorRequirement, labels: Record<string, string>): boolean {
  const has = Object.hasOwn(labels, req.key);
  const value = labels[req.key];
  const values = req.values ?? [];
  switch (req.operator) {
    case 'In':
      return has && value !== undefined && values.includes(value);
    case 'NotIn':
      return !has || value === undefined || !values.includes(value);
    case 'Exists':
      return has;
    case 'DoesNotExist':
      return !has;
    case 'Gt':
    case 'Lt': {
      const bound = values.length === 1 ? parseInt64(values[0]) : undefined;
      const actual = has ? parseInt64(value) : undefined;
      if (bound === undefined || actual === undefined) return false;
      return req.operator === 'Gt' ? actual > bound : actual < bound;
    }
    default:
      return false;
  }
}

/** matchFields supports only metadata.name with In / NotIn, as kube-scheduler does. */
function matchesField(req: V1NodeSelectorRequirement, nodeName: string): boolean {
  if (req.key !== 'metadata.name') return false;
  const values = req.values ?? [];
  switch (req.operator) {
    case 'In':
      return values.includes(nodeName);
    case 'NotIn':
      return !values.includes(nodeName);
    default:
      return false;
  }
}

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

/** strconv.ParseInt(s, 10, 64), or undefined. */
function parseInt64(s: string | undefined): bigint | undefined {
  if (s === undefined || !/^[+-]?\d+$/.test(s)) return undefined;
  const n = BigInt(s);
  return n < INT64_MIN || n > INT64_MAX ? undefined : n;
}

// ---------------------------------------------------------------- scoring

/**
 * Sum over scored resources of (used + request) / allocatable after placing,
 * each clamped to [0, 1], in FRACTION_ONE fixed point. Uses non-zero defaults
 * for both sides, like kube-scheduler's NodeInfo.NonZeroRequested.
 */
function utilisation(node: V1Node, onNode: V1Pod[], request: Map<string, bigint>, scored: string[]): bigint {
  const alloc = allocatable(node);
  const used = new Map<string, bigint>();
  for (const p of onNode) addInto(used, requestsOf(p, true));
  let total = 0n;
  for (const r of scored) {
    const cap = alloc.get(r) ?? 0n;
    const after = (used.get(r) ?? 0n) + (request.get(r) ?? 0n);
    if (cap <= 0n || after >= cap) total += FRACTION_ONE;
    else if (after > 0n) total += (after * FRACTION_ONE) / cap;
  }
  return total;
}

function better(strategy: Strategy, total: bigint, name: string, best: { node: string; total: bigint }): boolean {
  if (total !== best.total) return strategy === 'BinPack' ? total > best.total : total < best.total;
  return name < best.node;
}

// ---------------------------------------------------------------- messages

const FILTER_ORDER = [
  'cordoned',
  'not ready',
  'untolerated taint',
  'node selector',
  'node affinity',
  'max per node',
  'too little',
];

function filterRank(reason: string): number {
  const i = FILTER_ORDER.findIndex((prefix) => reason.startsWith(prefix));
  return i < 0 ? FILTER_ORDER.length : i;
}

function kindOf(resource: string): QuantityKind {
  if (resource === CPU) return 'cpu';
  if (resource === MEMORY || resource === EPHEMERAL_STORAGE || resource.startsWith('hugepages-')) return 'memory';
  return 'count';
}

function phrase(reason: string, n: number, mostFree: Map<string, bigint>): string {
  const one = n === 1;
  if (reason === 'cordoned') return `${n} ${one ? 'is' : 'are'} cordoned`;
  if (reason === 'not ready') return `${n} ${one ? 'is' : 'are'} not ready`;
  if (reason === 'node selector mismatch') return `${n} ${one ? "doesn't" : "don't"} match the node selector`;
  if (reason === 'node affinity mismatch') return `${n} ${one ? "doesn't" : "don't"} match the required node affinity`;
  if (reason.startsWith('too little ')) {
    const r = reason.slice('too little '.length);
    const free = mostFree.get(r) ?? 0n;
    const shown = formatQuantity(free > 0n ? free : 0n, kindOf(r));
    return `${n} ${one ? 'has' : 'have'} ${reason} (the most free is ${shown})`;
  }
  if (reason.startsWith('max per node'))
    return `${n} ${one ? 'has' : 'have'} reached the ${reason.replace(/ reached$/, '')}`;
  return `${n} ${one ? 'has' : 'have'} ${reason}`;
}

function unschedulableMessage(
  nodeCount: number,
  request: Map<string, bigint>,
  reasons: Map<string, number>,
  mostFree: Map<string, bigint>,
): string {
  const asked = orderedResources(request)
    .filter((r) => r !== PODS)
    .map((r) => `${r} ${formatQuantity(request.get(r) ?? 0n, kindOf(r))}`);
  const head = `0/${nodeCount} nodes can run the pod${asked.length > 0 ? ` (it requests ${asked.join(', ')})` : ''}`;
  const parts = [...reasons.entries()]
    .sort(([ra, na], [rb, nb]) => nb - na || filterRank(ra) - filterRank(rb) || (ra < rb ? -1 : ra > rb ? 1 : 0))
    .map(([reason, n]) => phrase(reason, n, mostFree));
  return `${head}: ${parts.join(', ')}`;
}
