import type { V1Binding, V1Node, V1Pod } from '@kubernetes/client-node';
import { type AgentPool, type AgentPoolStatus, DEFAULT_POOL } from '../../api/agentpool.ts';
import type { PoolStats } from '../../dispatcher/types.ts';
import type { Logger } from '../../lib/log.ts';
import {
  AGENTPOOLS,
  isAlreadyExists,
  isConflict,
  isNotFound,
  type KubeClient,
  PODS,
  resourcePath,
} from '../kube/client.ts';
import { type Condition, getCondition, rfc3339, setCondition } from '../kube/conditions.ts';
import { Controller, type ControllerObserver, type ReconcileResult } from '../kube/controller.ts';
import type { EventRecorder } from '../kube/events.ts';
import { type InformerView, objectKey } from '../kube/informer.ts';
import { place } from '../placer.ts';
import { type AutoscaleState, autoscale } from './autoscaler.ts';
import {
  type AgentEndpoints,
  buildPod,
  DRAIN_ANNOTATION,
  HASH_LABEL,
  isReady,
  isTerminal,
  isTerminating,
  ordinalOf,
  POOL_FINALIZER,
  POOL_LABEL,
  podName,
  SCHEDULER_NAME,
  selectorOf,
  templateHash,
} from './pods.ts';

/** What the pool controller needs from the dispatcher (absent: no agent is ever connected). */
export interface AgentDirectory {
  /** Asks the agents of a pod to drain; false when none is connected. */
  drainPod(namespace: string, pool: string, pod: string, timeoutSeconds: number): boolean;
  /** Whether an agent of this pod still holds a stream. */
  podConnected(namespace: string, pool: string, pod: string): boolean;
  poolStats(namespace: string, pool: string): PoolStats;
}

/** The pool's etcd records, removed when the pool is deleted (fenced by leadership). */
export interface PoolRecords {
  deletePool(namespace: string, pool: string): Promise<void>;
}

export interface PoolControllerOptions {
  client: KubeClient;
  pools: InformerView<AgentPool>;
  pods: InformerView<V1Pod>;
  nodes: InformerView<V1Node>;
  events: EventRecorder;
  endpoints: AgentEndpoints;
  /** Makes what agent pods mount exist in the pool's namespace (the dispatcher's CA bundle) before pods are made. */
  prepareNamespace?: (namespace: string) => Promise<void>;
  agents?: AgentDirectory;
  records: PoolRecords;
  logger: Logger;
  workers?: number;
  observer?: ControllerObserver;
}

// While something is in motion (pods starting, draining, unplaceable), look again this often.
const POLL_MS = 1_000;
const UNSCHEDULABLE_RETRY_MS = 10_000;
const STATS_REFRESH_MS = 5_000;
// Autoscaled pools look at their queue this often (work arriving at a pool of 0 waits at most this long).
const AUTOSCALE_INTERVAL_MS = 2_000;

/**
 * Keeps each AgentPool's pods at the desired count and template, binds them
 * to nodes by capacity (pods carry schedulerName "agentflow"), rolls template
 * changes one pod at a time with a drain before each delete, and keeps the
 * pool's status current. Level-triggered: every reconcile starts from the
 * informers' view of the world.
 */
export class PoolController {
  readonly controller: Controller;
  private readonly o: PoolControllerOptions;
  /** Bindings made but not yet seen in the pod informer: pod key -> node. */
  private readonly assumed = new Map<string, string>();
  private placing: Promise<void> = Promise.resolve();
  private readonly autoscaleState = new Map<string, AutoscaleState>();

  constructor(o: PoolControllerOptions) {
    this.o = o;
    this.controller = new Controller({
      name: 'agentpool',
      reconcile: (key, log) => this.reconcile(key, log),
      workers: o.workers ?? 2,
      logger: o.logger,
      ...(o.observer && { observer: o.observer }),
    });
    const enqueuePool = (p: AgentPool) => this.controller.enqueue(objectKey(p));
    o.pools.on({ add: enqueuePool, update: (_, p) => enqueuePool(p), delete: enqueuePool });
    const enqueueOwner = (pod: V1Pod) => {
      const pool = pod.metadata?.labels?.[POOL_LABEL];
      if (pool && pod.metadata?.namespace) this.controller.enqueue(`${pod.metadata.namespace}/${pool}`);
    };
    o.pods.on({
      add: enqueueOwner,
      update: (old, pod) => {
        if (pod.spec?.nodeName) this.assumed.delete(objectKey(pod));
        enqueueOwner(pod);
        // A pod that ends frees its node's resources: pools waiting for room may fit now.
        if (!isTerminal(old) && isTerminal(pod)) this.enqueueWaiting();
      },
      delete: (pod) => {
        this.assumed.delete(objectKey(pod));
        enqueueOwner(pod);
        this.enqueueWaiting();
      },
    });
    o.nodes.on({
      add: () => this.enqueueWaiting(),
      update: () => this.enqueueWaiting(),
      delete: () => this.enqueueWaiting(),
    });
  }

  start(): void {
    this.controller.start();
  }

  stop(): Promise<void> {
    return this.controller.stop();
  }

  /** Pools with pods waiting for a node get another look (a node or pod changed). */
  private enqueueWaiting(): void {
    for (const pod of this.o.pods.list((p) => this.unbound(p))) {
      const pool = pod.metadata?.labels?.[POOL_LABEL];
      if (pool) this.controller.enqueue(`${pod.metadata?.namespace}/${pool}`);
    }
  }

  private unbound(p: V1Pod): boolean {
    return (
      p.spec?.schedulerName === SCHEDULER_NAME &&
      !p.spec.nodeName &&
      !isTerminating(p) &&
      !isTerminal(p) &&
      !this.assumed.has(objectKey(p))
    );
  }

  private async reconcile(key: string, log: Logger): Promise<ReconcileResult | undefined> {
    const pool = this.o.pools.get(key);
    if (!pool) return undefined; // gone: its pods go with it (owner references)
    const namespace = pool.metadata.namespace as string;
    const name = pool.metadata.name as string;

    if (pool.metadata.deletionTimestamp) {
      await this.finalize(pool, log);
      return undefined;
    }
    if (!pool.metadata.finalizers?.includes(POOL_FINALIZER)) {
      await this.setFinalizers(pool, [...(pool.metadata.finalizers ?? []), POOL_FINALIZER]);
      return undefined; // the update event brings us back
    }

    if (pool.spec.autoscaling && this.o.agents) {
      const changed = await this.autoscale(key, pool, log);
      if (changed) return { requeueAfterMs: POLL_MS }; // the spec update event brings us back sooner
    }
    const desired = desiredReplicas(pool);
    if (desired > 0) await this.o.prepareNamespace?.(namespace);
    const hash = templateHash(pool, this.o.endpoints);
    const owned = this.ownedPods(pool);
    let busy = false;

    // Pods that ended (the agent exited and the pod will not restart) are replaced.
    for (const p of owned.filter((p) => isTerminal(p) && !isTerminating(p))) {
      log.info('Deleting an agent pod that ended', { pod: p.metadata?.name, phase: p.status?.phase });
      await this.deletePod(p);
      busy = true;
    }
    const live = owned.filter((p) => !isTerminal(p));
    const byOrdinal = new Map<number, V1Pod>();
    for (const p of live) {
      const n = ordinalOf(name, p.metadata?.name ?? '');
      if (n !== undefined) byOrdinal.set(n, p);
    }

    // Scale up: create missing ordinals below `desired`.
    for (let i = 0; i < desired; i++) {
      if (byOrdinal.has(i) || owned.some((p) => p.metadata?.name === podName(name, i))) continue;
      const pod = buildPod(pool, i, this.o.endpoints, hash);
      try {
        await this.o.client.create(resourcePath(PODS, { namespace }), pod);
        log.info('Created agent pod', { pod: pod.metadata?.name });
        this.o.events.record(pool, 'Normal', 'SuccessfulCreate', `Created pod ${pod.metadata?.name}`);
      } catch (err) {
        if (!isAlreadyExists(err)) throw err;
      }
      busy = true;
    }

    // Scale down (highest ordinals first) and remove pods outside the ordinal scheme: drain, then delete.
    for (const p of live) {
      const n = ordinalOf(name, p.metadata?.name ?? '');
      if (n !== undefined && n < desired) continue;
      if (isTerminating(p)) {
        busy = true;
        continue;
      }
      if (await this.drainThenDelete(pool, p, 'scale down', log)) busy = true;
    }

    // Rolling replacement: one outdated pod at a time, only while every other pod is Ready.
    const current = [...byOrdinal.entries()].filter(([n]) => n < desired).sort((a, b) => b[0] - a[0]);
    const outdated = current.filter(([, p]) => p.metadata?.labels?.[HASH_LABEL] !== hash);
    if (outdated.length > 0) {
      busy = true;
      // A pod mid-drain continues first; an outdated pod that is not Ready serves nobody, replace it at once.
      const draining = outdated.find(([, p]) => p.metadata?.annotations?.[DRAIN_ANNOTATION] || isTerminating(p));
      const notReady = outdated.find(([, p]) => !isReady(p));
      const othersReady = current.every(([, p]) => isReady(p) || outdated.some(([, o]) => o === p));
      const allPresent = current.length === desired && current.every(([, p]) => !isTerminating(p));
      const next = draining ?? notReady ?? (allPresent && othersReady ? outdated[0] : undefined);
      if (next && !isTerminating(next[1])) {
        if (
          !draining &&
          getCondition(pool.status?.conditions as Condition[], 'Progressing')?.reason !== 'RollingUpdate'
        ) {
          this.o.events.record(
            pool,
            'Normal',
            'RollingUpdate',
            `Replacing ${outdated.length} pod(s) with template ${hash}`,
          );
        }
        await this.drainThenDelete(pool, next[1], 'template changed', log);
      }
    }

    // Bind pods waiting for a node.
    const unschedulable = await this.bindPending(pool, live, log);
    if (unschedulable) busy = true;

    await this.updateStatus(pool, owned, desired, hash, unschedulable);
    if (unschedulable) return { requeueAfterMs: UNSCHEDULABLE_RETRY_MS };
    if (busy || live.some((p) => !isReady(p))) return { requeueAfterMs: POLL_MS };
    if (pool.spec.autoscaling && this.o.agents) return { requeueAfterMs: AUTOSCALE_INTERVAL_MS };
    return this.o.agents ? { requeueAfterMs: STATS_REFRESH_MS } : undefined;
  }

  /** Sets spec.replicas from the queue depth (within min/max); true when it changed. */
  private async autoscale(key: string, pool: AgentPool, log: Logger): Promise<boolean> {
    const a = pool.spec.autoscaling;
    const agents = this.o.agents;
    if (!a || !agents) return false;
    const namespace = pool.metadata.namespace as string;
    const name = pool.metadata.name as string;
    const stats = agents.poolStats(namespace, name);
    const current = pool.spec.replicas ?? a.minReplicas;
    const prev = this.autoscaleState.get(key);
    const d = autoscale({
      now: Date.now(),
      current,
      min: a.minReplicas,
      max: a.maxReplicas,
      targetUtilization: a.targetUtilization ?? DEFAULT_POOL.targetUtilization,
      scaleDownDelaySeconds: a.scaleDownDelaySeconds ?? DEFAULT_POOL.scaleDownDelaySeconds,
      slotsPerAgent: pool.spec.agent.capacity ?? DEFAULT_POOL.capacity,
      inflight: stats.inflight,
      queued: stats.queued,
      ...(prev && { state: prev }),
    });
    this.autoscaleState.set(key, d.state);
    if (d.replicas === current && pool.spec.replicas !== undefined) return false;
    await this.o.client.mergePatch(resourcePath(AGENTPOOLS, { namespace, name }), { spec: { replicas: d.replicas } });
    if (d.replicas !== current) {
      log.info('Autoscaled the pool', { from: current, to: d.replicas, reason: d.reason });
      this.o.events.record(pool, 'Normal', d.replicas > current ? 'ScaledUp' : 'ScaledDown', d.reason);
    }
    return true;
  }

  /** The pool's pods: labelled with it and controlled by it (a same-named predecessor's pods are not ours). */
  private ownedPods(pool: AgentPool): V1Pod[] {
    const namespace = pool.metadata.namespace as string;
    const name = pool.metadata.name as string;
    return this.o.pods.list(
      (p) =>
        p.metadata?.namespace === namespace &&
        p.metadata.labels?.[POOL_LABEL] === name &&
        p.metadata.ownerReferences?.some((r) => r.controller && r.uid === pool.metadata.uid) === true,
    );
  }

  /** Drains the pod's agent (up to drainTimeoutSeconds) and deletes the pod; true while in progress. */
  private async drainThenDelete(pool: AgentPool, pod: V1Pod, why: string, log: Logger): Promise<boolean> {
    const namespace = pod.metadata?.namespace as string;
    const name = pod.metadata?.name as string;
    const poolName = pool.metadata.name as string;
    const timeout = pool.spec.agent.drainTimeoutSeconds ?? DEFAULT_POOL.drainTimeoutSeconds;
    const startedAt = pod.metadata?.annotations?.[DRAIN_ANNOTATION];
    const agents = this.o.agents;
    if (!startedAt) {
      if (agents?.drainPod(namespace, poolName, name, timeout)) {
        await this.o.client.mergePatch(resourcePath(PODS, { namespace, name }), {
          metadata: { annotations: { [DRAIN_ANNOTATION]: new Date().toISOString() } },
        });
        log.info('Draining agent before deleting its pod', { pod: name, reason: why, timeoutSeconds: timeout });
        this.o.events.record(pool, 'Normal', 'Draining', `Draining pod ${name} (${why})`);
        return true;
      }
    } else if (agents?.podConnected(namespace, poolName, name)) {
      const elapsed = (Date.now() - Date.parse(startedAt)) / 1000;
      if (elapsed < timeout) {
        agents.drainPod(namespace, poolName, name, Math.max(1, Math.ceil(timeout - elapsed))); // after a failover
        return true;
      }
      log.warn('Drain timed out; deleting the pod anyway', { pod: name, timeoutSeconds: timeout });
    }
    await this.deletePod(pod);
    log.info('Deleted agent pod', { pod: name, reason: why });
    this.o.events.record(pool, 'Normal', 'SuccessfulDelete', `Deleted pod ${name} (${why})`);
    return true;
  }

  private async deletePod(pod: V1Pod): Promise<void> {
    const namespace = pod.metadata?.namespace as string;
    const name = pod.metadata?.name as string;
    try {
      // Preconditioned on the uid: never delete a same-named successor.
      await this.o.client.delete(resourcePath(PODS, { namespace, name }), {
        apiVersion: 'v1',
        kind: 'DeleteOptions',
        preconditions: { uid: pod.metadata?.uid },
      });
    } catch (err) {
      if (!isNotFound(err) && !isConflict(err)) throw err;
    }
  }

  /** Places and binds the pool's unbound pods; the unschedulable message, if any pod cannot be placed. */
  private async bindPending(pool: AgentPool, live: V1Pod[], log: Logger): Promise<string | undefined> {
    const pending = live.filter((p) => this.unbound(p)).sort((a, b) => podOrder(pool, a) - podOrder(pool, b));
    if (pending.length === 0) return undefined;
    // One placement at a time in this process, so two pools never count the same free room.
    const run = this.placing.then(() => this.placeAll(pool, pending, log));
    this.placing = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  private async placeAll(pool: AgentPool, pending: V1Pod[], log: Logger): Promise<string | undefined> {
    const poolName = pool.metadata.name as string;
    const namespace = pool.metadata.namespace as string;
    let message: string | undefined;
    for (const pod of pending) {
      const nodes = this.o.nodes.list();
      const pods = this.o.pods.list().map((p) => {
        const node = this.assumed.get(objectKey(p));
        return node && !p.spec?.nodeName
          ? { ...p, spec: { ...p.spec, containers: p.spec?.containers ?? [], nodeName: node } }
          : p;
      });
      const res = place(pod, nodes, pods, {
        strategy: pool.spec.placement?.strategy ?? DEFAULT_POOL.strategy,
        ...(pool.spec.placement?.maxPerNode !== undefined && { maxPerNode: pool.spec.placement.maxPerNode }),
        samePool: (p) => p.metadata?.namespace === namespace && p.metadata.labels?.[POOL_LABEL] === poolName,
      });
      const name = pod.metadata?.name as string;
      if (res.node === undefined) {
        message = res.message;
        await this.markUnschedulable(pod, res.message);
        log.info('Agent pod cannot be placed', { pod: name, reason: res.message });
        continue;
      }
      const binding: V1Binding = {
        apiVersion: 'v1',
        kind: 'Binding',
        metadata: { name, namespace, uid: pod.metadata?.uid },
        target: { apiVersion: 'v1', kind: 'Node', name: res.node },
      };
      try {
        await this.o.client.create(resourcePath(PODS, { namespace, name, subresource: 'binding' }), binding);
      } catch (err) {
        if (isNotFound(err) || isConflict(err)) continue; // deleted, or bound meanwhile
        throw err;
      }
      this.assumed.set(objectKey(pod), res.node);
      log.info('Bound agent pod', { pod: name, node: res.node });
      this.o.events.record(pod, 'Normal', 'Scheduled', `Successfully assigned ${namespace}/${name} to ${res.node}`);
    }
    return message;
  }

  private async markUnschedulable(pod: V1Pod, message: string): Promise<void> {
    const current = pod.status?.conditions?.find((c) => c.type === 'PodScheduled');
    if (current?.status === 'False' && current.message === message) return;
    this.o.events.record(pod, 'Warning', 'FailedScheduling', message);
    const namespace = pod.metadata?.namespace as string;
    const name = pod.metadata?.name as string;
    try {
      await this.o.client.request('PATCH', resourcePath(PODS, { namespace, name, subresource: 'status' }), {
        body: {
          status: {
            conditions: [
              {
                type: 'PodScheduled',
                status: 'False',
                reason: 'Unschedulable',
                message,
                lastTransitionTime: rfc3339(),
              },
            ],
          },
        },
        contentType: 'application/strategic-merge-patch+json',
      });
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }

  private async updateStatus(
    pool: AgentPool,
    owned: V1Pod[],
    desired: number,
    hash: string,
    unschedulable: string | undefined,
  ): Promise<void> {
    const namespace = pool.metadata.namespace as string;
    const name = pool.metadata.name as string;
    const existing = owned.filter((p) => !isTerminating(p) && !isTerminal(p));
    const ready = existing.filter(isReady).length;
    const updated = existing.filter((p) => p.metadata?.labels?.[HASH_LABEL] === hash).length;
    const stats = this.o.agents?.poolStats(namespace, name) ?? {
      connectedAgents: 0,
      capacity: 0,
      inflight: 0,
      queued: 0,
      handlers: [],
      wanted: [],
    };
    const generation = pool.metadata.generation;
    let conditions = (pool.status?.conditions ?? []) as Condition[];
    const cond = (c: Omit<Condition, 'lastTransitionTime' | 'observedGeneration'>) => {
      conditions = setCondition(conditions, {
        ...c,
        ...(generation !== undefined && { observedGeneration: generation }),
      });
    };
    cond(
      ready >= desired && existing.length === desired && updated === desired
        ? {
            type: 'Ready',
            status: 'True',
            reason: 'AllReplicasReady',
            message: `${ready}/${desired} agent pods are Ready`,
          }
        : {
            type: 'Ready',
            status: 'False',
            reason: 'ReplicasNotReady',
            message: `${ready}/${desired} agent pods are Ready`,
          },
    );
    cond(
      updated < desired || existing.length !== desired
        ? {
            type: 'Progressing',
            status: 'True',
            reason: updated < existing.length ? 'RollingUpdate' : 'Scaling',
            message: `${updated}/${desired} agent pods run template ${hash}; ${existing.length} exist`,
          }
        : {
            type: 'Progressing',
            status: 'False',
            reason: 'Complete',
            message: `${desired} agent pods run template ${hash}`,
          },
    );
    cond(
      unschedulable
        ? { type: 'Unschedulable', status: 'True', reason: 'InsufficientResources', message: unschedulable }
        : { type: 'Unschedulable', status: 'False', reason: 'Placed', message: 'Every agent pod has a node' },
    );
    const handlers = handlersServed(pool, stats);
    cond(handlers);
    const status: AgentPoolStatus = {
      ...pool.status,
      ...(generation !== undefined && { observedGeneration: generation }),
      replicas: existing.length,
      readyReplicas: ready,
      connectedAgents: stats.connectedAgents,
      capacity: stats.capacity,
      inflight: stats.inflight,
      queued: stats.queued,
      selector: selectorOf(name),
      conditions: conditions as AgentPoolStatus['conditions'],
    };
    if (JSON.stringify(status) === JSON.stringify(pool.status)) return;
    try {
      await this.o.client.mergePatch(resourcePath(AGENTPOOLS, { namespace, name, subresource: 'status' }), { status });
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    const before = getCondition(pool.status?.conditions as Condition[], 'Unschedulable');
    if (unschedulable && before?.status !== 'True') {
      this.o.events.record(pool, 'Warning', 'Unschedulable', unschedulable);
    }
    const served = getCondition(pool.status?.conditions as Condition[], 'HandlersServed');
    if (handlers.status === 'False' && (served?.status !== 'False' || served.message !== handlers.message)) {
      this.o.events.record(pool, 'Warning', handlers.reason, handlers.message);
    }
  }

  private async finalize(pool: AgentPool, log: Logger): Promise<void> {
    if (!pool.metadata.finalizers?.includes(POOL_FINALIZER)) return;
    // Delete the pods now rather than leave them to the garbage collector, which may not watch
    // AgentPools yet (it discovers new resource types every 30 s). Each agent drains on SIGTERM.
    const owned = this.ownedPods(pool).filter((p) => !isTerminating(p));
    await Promise.all(owned.map((p) => this.deletePod(p)));
    if (owned.length > 0) log.info('Deleted the pods of a deleted pool', { pods: owned.length });
    await this.o.records.deletePool(pool.metadata.namespace as string, pool.metadata.name as string);
    log.info('Removed the pool records from etcd');
    await this.setFinalizers(
      pool,
      pool.metadata.finalizers.filter((f) => f !== POOL_FINALIZER),
    );
  }

  /** Replaces the finalizer list, conditional on the resourceVersion we read (a conflict retries). */
  private async setFinalizers(pool: AgentPool, finalizers: string[]): Promise<void> {
    const namespace = pool.metadata.namespace as string;
    const name = pool.metadata.name as string;
    try {
      await this.o.client.mergePatch(resourcePath(AGENTPOOLS, { namespace, name }), {
        metadata: { finalizers, resourceVersion: pool.metadata.resourceVersion },
      });
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }
}

/**
 * The HandlersServed condition: False when a handler the pool lists in
 * spec.agent.handlers, or one its queued tasks need, is registered by none
 * of its connected agents (the agents' image or handler module does not
 * match the pool, and such tasks would wait forever); Unknown while no agent
 * is connected.
 */
export function handlersServed(
  pool: AgentPool,
  stats: { connectedAgents: number; handlers: readonly string[]; wanted: readonly string[] },
): Omit<Condition, 'lastTransitionTime' | 'observedGeneration'> {
  const listed = pool.spec.agent.handlers ?? [];
  if (stats.connectedAgents === 0) {
    return {
      type: 'HandlersServed',
      status: 'Unknown',
      reason: 'NoAgentConnected',
      message: 'no agent is connected to the dispatcher',
    };
  }
  const served = new Set(stats.handlers);
  const missing = [...new Set([...listed, ...stats.wanted])].filter((h) => !served.has(h)).sort();
  if (missing.length === 0) {
    return {
      type: 'HandlersServed',
      status: 'True',
      reason: 'AllHandlersRegistered',
      message: `connected agents serve ${listed.length > 0 ? 'every handler spec.agent.handlers lists' : stats.handlers.join(', ')}`,
    };
  }
  const why = (h: string) =>
    `"${h}"${listed.includes(h) ? ' (listed in spec.agent.handlers)' : ''}${stats.wanted.includes(h) ? ' (queued tasks wait for it)' : ''}`;
  return {
    type: 'HandlersServed',
    status: 'False',
    reason: 'HandlerNotRegistered',
    message:
      `no connected agent registers handler ${missing.map(why).join(', ')}; the ${stats.connectedAgents} connected agent(s) serve ${stats.handlers.map((h) => `"${h}"`).join(', ') || 'nothing'}`.slice(
        0,
        1024,
      ),
  };
}

/** spec.replicas, kept within the autoscaling bounds when they are set. */
export function desiredReplicas(pool: AgentPool): number {
  const a = pool.spec.autoscaling;
  const r = pool.spec.replicas ?? (a ? a.minReplicas : 1);
  return a ? Math.min(a.maxReplicas, Math.max(a.minReplicas, r)) : r;
}

function podOrder(pool: AgentPool, p: V1Pod): number {
  return ordinalOf(pool.metadata.name as string, p.metadata?.name ?? '') ?? Number.MAX_SAFE_INTEGER;
}
