import type { V1Node, V1Pod } from '@kubernetes/client-node';
import type { AgentPool } from '../api/agentpool.ts';
import type { CronWorkflow } from '../api/cron-workflow.ts';
import { parsePoolRef } from '../api/sharing.ts';
import { type Workflow, WorkflowPhases } from '../api/workflow.ts';
import type { WorkflowTemplate } from '../api/workflow-template.ts';
import { BackupStatus } from '../backup/status.ts';
import { Dispatcher } from '../dispatcher/index.ts';
import { DispatcherMetrics } from '../dispatcher/metrics.ts';
import type { Logger } from '../lib/log.ts';
import { Counter, Gauge, Histogram, LATENCY_BUCKETS, type Registry, registerProcessMetrics } from '../lib/metrics.ts';
import { startOpsServer } from '../lib/ops-server.ts';
import { type Fence, StateStore } from '../state/index.ts';
import { WorkflowEngine } from '../workflow/engine.ts';
import type { RunLimits } from '../workflow/run.ts';
import { KubeAgentAuth } from './agent-auth.ts';
import { CronWorkflowController } from './cron/controller.ts';
import { type DataApiHandle, LeaderDataSource, startDataApi } from './data-api/index.ts';
import { DispatcherTls, TlsMaterialError } from './dispatcher-tls.ts';
import {
  AGENTPOOLS,
  CRON_WORKFLOWS,
  type KObject,
  KubeClient,
  type KubeSource,
  NODES,
  PODS,
  type ResourceType,
  resourcePath,
  WORKFLOW_TEMPLATES,
  WORKFLOWS,
} from './kube/client.ts';
import type { ControllerObserver } from './kube/controller.ts';
import { EventRecorder } from './kube/events.ts';
import { Informer, type InformerView, MultiNamespaceInformer } from './kube/informer.ts';
import { LeaderElector, type Leadership } from './leader.ts';
import { type AgentDirectory, PoolController } from './pool/controller.ts';
import type { AgentEndpoints } from './pool/pods.ts';
import { WorkflowController } from './workflow/controller.ts';

export interface OperatorConfig {
  /** From resolveKubeCredentials (kube/credentials.ts), or a KubeConfig the caller loaded. */
  kubeConfig: KubeSource;
  etcd: string[];
  etcdPrefix: string;
  etcdTls?: { ca: Buffer; cert?: Buffer; key?: Buffer };
  /** etcd password auth (--etcd-username, --etcd-password-file); else the client certificate's CN is the user. */
  etcdAuth?: { username: string; password: string };
  /** Only these namespaces' pools and workflows (default: all namespaces). */
  watchNamespaces?: string[];
  /** host:port of /healthz, /readyz, /metrics. */
  opsAddress: string;
  /** Where the leader's dispatcher listens. */
  dispatcherListen: string;
  /** What agents dial to reach the dispatcher (the Service). */
  agentDispatcherAddress: string;
  /** The operator's own namespace: where the dispatcher's TLS Secret lives. */
  namespace: string;
  dispatcherTls: { mode: 'managed' | 'secret'; secretName: string; sans: string[]; certValiditySeconds?: number };
  /** Where the leader serves the data API (data.agentflow.io); absent: not served. */
  dataApi?: { listen: string; service: string };
  /** ConfigMap with the dispatcher's CA bundle, published into every pool namespace. */
  caConfigMap: string;
  /** Audience of agents' ServiceAccount tokens. */
  tokenAudience: string;
  agentLeaseTtlSeconds: number;
  electionName: string;
  leaseTtlSeconds: number;
  identity: string;
  /** This pod, labelled agentflow.io/role=leader while it leads (so the dispatcher Service finds it). */
  pod?: { namespace: string; name: string };
  workers: number;
  /** Caps on a workflow run (--max-foreach-items, --max-spawned-children); default DEFAULT_RUN_LIMITS. */
  workflowLimits?: Partial<RunLimits>;
  /** --waiting-timeout: how long a workflow waits for a missing pool or handler (default DEFAULT_WAITING_TIMEOUT_SECONDS). */
  waitingTimeoutSeconds?: number;
  logger: Logger;
  registry: Registry;
}

export const ROLE_LABEL = 'agentflow.io/role';

/**
 * The operator process: campaigns for leadership in etcd; the leader starts
 * informers, the dispatcher and the controllers. Losing leadership (its
 * lease not renewed within the renew deadline, e.g. etcd unreachable) ends
 * the term: everything the term built is stopped and thrown away, and the
 * process campaigns again on a fresh lease, so it rides out an etcd outage
 * without a restart and without acting on stale beliefs. SIGTERM stops it
 * gracefully and hands leadership over at once.
 */
export class Operator {
  private readonly c: OperatorConfig;
  private readonly log: Logger;
  private readonly client: KubeClient;
  private readonly store: StateStore;
  private readonly elector: LeaderElector;
  private readonly abort = new AbortController();
  private informers: InformerView<never>[] = [];
  private pools: PoolController | undefined;
  private workflows: WorkflowController | undefined;
  private crons: CronWorkflowController | undefined;
  private engine: WorkflowEngine | undefined;
  private readonly backups: BackupStatus;
  private dispatcher: Dispatcher | undefined;
  private tls: DispatcherTls | undefined;
  private dataApi: DataApiHandle | undefined;
  private ops: { port: number; close(): Promise<void> } | undefined;
  private observer!: ControllerObserver;
  private readonly leader: Gauge;
  /** Task and agent metrics, handed to each term's dispatcher. */
  private readonly dispatcherMetrics: DispatcherMetrics;
  /** Terms this process has led (a metric and the tests' view of re-election). */
  private terms = 0;
  private stopping: Promise<void> | undefined;
  private resolveDone: (why: 'stopped' | 'lost') => void = () => undefined;
  /** Resolves when the operator has stopped: 'lost' if leadership was lost. */
  readonly done: Promise<'stopped' | 'lost'>;

  constructor(c: OperatorConfig) {
    this.c = c;
    this.log = c.logger;
    this.client = new KubeClient(c.kubeConfig, { userAgent: `agentflow-operator/${c.identity}` });
    this.store = new StateStore({
      endpoints: c.etcd,
      prefix: c.etcdPrefix,
      ...(c.etcdTls && { tls: c.etcdTls }),
      ...(c.etcdAuth && { auth: c.etcdAuth }),
    });
    this.elector = new LeaderElector({
      store: this.store,
      name: c.electionName,
      identity: c.identity,
      ttlSeconds: c.leaseTtlSeconds,
      logger: c.logger,
    });
    this.done = new Promise((r) => {
      this.resolveDone = r;
    });
    this.backups = new BackupStatus(this.store, c.registry, c.logger.with({ component: 'backup-status' }));
    const registers = [c.registry];
    this.leader = new Gauge({ name: 'agentflow_leader', help: '1 while this replica is the leader.', registers });
    const runs: Gauge = new Gauge({
      name: 'agentflow_workflow_runs_in_memory',
      help: 'Workflow runs the leader holds in memory (finished ones leave once their final status is written).',
      registers,
      collect: () => runs.set(this.engine?.size ?? 0),
    });
    const terms: Counter = new Counter({
      name: 'agentflow_leader_terms_total',
      help: 'Times this replica became the leader (more than 1: it stepped down and was elected again).',
      registers,
      collect: () => {
        terms.reset();
        terms.inc(this.terms);
      },
    });
    const reconciles = new Counter({
      name: 'agentflow_reconcile_total',
      help: 'Reconciles by controller and result (success, requeue, error).',
      labelNames: ['controller', 'result'],
      registers,
    });
    const durations = new Histogram({
      name: 'agentflow_reconcile_duration_seconds',
      help: 'Time per reconcile.',
      labelNames: ['controller'],
      buckets: [...LATENCY_BUCKETS],
      registers,
    });
    const objects: Gauge<'resource'> = new Gauge({
      name: 'agentflow_informer_objects',
      help: 'Objects in each informer cache.',
      labelNames: ['resource'],
      registers,
      collect: () => {
        for (const i of this.informers) objects.set({ resource: i.rt.plural }, i.size);
      },
    });
    const queueDepth: Gauge<'controller'> = new Gauge({
      name: 'agentflow_workqueue_depth',
      help: 'Keys waiting in each controller work queue.',
      labelNames: ['controller'],
      registers,
      collect: () => {
        if (this.pools) queueDepth.set({ controller: 'agentpool' }, this.pools.controller.queue.length);
        if (this.workflows) queueDepth.set({ controller: 'workflow' }, this.workflows.controller.queue.length);
        if (this.crons) queueDepth.set({ controller: 'cronworkflow' }, this.crons.controller.queue.length);
      },
    });
    // What the leader's informer caches hold (a standby shows none).
    const cached = <T extends KObject>(rt: ResourceType) =>
      (this.informers.find((i) => i.rt === rt) as InformerView<T> | undefined)?.list();
    const byPhase: Gauge<'phase'> = new Gauge({
      name: 'agentflow_workflows',
      help: 'Workflows by status.phase (one not yet reconciled counts as Pending), from the leader.',
      labelNames: ['phase'],
      registers,
      collect: () => {
        byPhase.reset();
        const list = cached<Workflow>(WORKFLOWS);
        if (!list) return;
        const counts = new Map<string, number>(WorkflowPhases.map((p) => [p, 0]));
        for (const w of list) {
          const phase = w.status?.phase ?? 'Pending';
          counts.set(phase, (counts.get(phase) ?? 0) + 1);
        }
        for (const [phase, n] of counts) byPhase.set({ phase }, n);
      },
    });
    this.dispatcherMetrics = new DispatcherMetrics(c.registry, {
      pools: () =>
        (cached<AgentPool>(AGENTPOOLS) ?? []).map((p) => ({
          namespace: p.metadata?.namespace ?? '',
          pool: p.metadata?.name ?? '',
        })),
    });
    this.observer = {
      reconciled: (controller, result, seconds) => {
        reconciles.inc({ controller, result });
        durations.observe({ controller }, seconds);
      },
    };
  }

  get opsPort(): number | undefined {
    return this.ops?.port;
  }

  get dataApiPort(): number | undefined {
    return this.dataApi?.port;
  }

  get dispatcherPort(): number | undefined {
    return this.dispatcher?.port;
  }

  async start(): Promise<void> {
    const [host, port] = splitHostPort(this.c.opsAddress);
    registerProcessMetrics(this.c.registry);
    this.backups.start();
    this.ops = await startOpsServer({
      host,
      port,
      registry: this.c.registry,
      logger: this.log,
      checks: {
        healthz: { informers: () => this.informersHealthy() },
        // Every replica is ready: a standby is a healthy replica waiting its turn.
        readyz: { informers: () => this.informersSynced() },
      },
    });
    this.log.info('Ops server listening', { port: this.ops.port });
    await this.unlabelSelf();
    void this.run().catch((err: Error) => {
      this.log.error('Operator failed', { error: err });
      this.stop('lost').catch(() => undefined); // stop() never rejects: it logs and resolves done
    });
  }

  /** Campaign, lead, step down, campaign again: until stop(). */
  private async run(): Promise<void> {
    for (let failures = 0; !this.abort.signal.aborted; ) {
      let leadership: Leadership | undefined;
      try {
        leadership = await this.elector.campaign(this.abort.signal);
        if (!leadership) return;
        this.terms++;
        await this.lead(leadership);
        failures = 0;
        await aborted(AbortSignal.any([leadership.signal, this.abort.signal]));
      } catch (err) {
        if (this.abort.signal.aborted) return;
        failures++;
        this.log.error('Leading failed; stepping down and campaigning again', { error: err as Error, failures });
      }
      if (this.abort.signal.aborted) return;
      await this.stepDown();
      // A term that failed at once (etcd unreachable) waits longer each time, up to 5 s.
      await new Promise((r) => setTimeout(r, Math.min(5_000, 250 * 2 ** Math.min(failures, 5))));
    }
  }

  /** Stops the controllers, engine, dispatcher, TLS and informers of the current term and forgets them. */
  private async endTerm(): Promise<void> {
    this.leader.set(0);
    const term = {
      pools: this.pools,
      workflows: this.workflows,
      crons: this.crons,
      engine: this.engine,
      dispatcher: this.dispatcher,
      tls: this.tls,
      dataApi: this.dataApi,
      informers: this.informers,
    };
    this.dataApi = undefined;
    this.pools = undefined;
    this.workflows = undefined;
    this.crons = undefined;
    this.engine = undefined;
    this.dispatcher = undefined;
    this.tls = undefined;
    this.informers = [];
    await term.pools?.stop();
    await term.crons?.stop();
    await term.workflows?.stop();
    await term.dataApi?.stop();
    await term.engine?.stop();
    await term.dispatcher?.stop(2_000);
    term.tls?.stop();
    await Promise.all(term.informers.map((i) => i.stop()));
  }

  /** Stops everything the last term built; the process stays up as a candidate. */
  private async stepDown(): Promise<void> {
    try {
      await this.endTerm();
    } catch (err) {
      this.log.error('Stepping down did not finish cleanly', { error: err as Error });
    }
    await this.unlabelSelf();
    await this.elector.resign();
    this.log.info('Stepped down; campaigning again');
  }

  private informersSynced(): true | string {
    const waiting = this.informers.filter((i) => !i.hasSynced).map((i) => i.rt.plural);
    return waiting.length === 0 ? true : `not synced yet: ${waiting.join(', ')}`;
  }

  private informersHealthy(): true | string {
    // A synced informer that heard nothing (not even a bookmark) for 10 minutes is stuck.
    const stale = this.informers.filter((i) => i.hasSynced && Date.now() - i.lastContact > 600_000);
    return stale.length === 0 ? true : `no contact for 10 min: ${stale.map((i) => i.rt.plural).join(', ')}`;
  }

  private async lead(leadership: Leadership): Promise<void> {
    this.leader.set(1);
    const fences = (): Fence[] => [leadership.fence];
    const log = this.log;

    // Pools and workflows of the watched namespaces (all when none is named); pods and nodes cluster-wide.
    const watched = <T extends KObject>(rt: ResourceType): InformerView<T> => {
      const ns = this.c.watchNamespaces ?? [];
      if (ns.length > 1) return new MultiNamespaceInformer<T>(this.client, rt, ns, { logger: log });
      return new Informer<T>(this.client, rt, { logger: log, ...(ns[0] && { namespace: ns[0] }) });
    };
    const pools = watched<AgentPool>(AGENTPOOLS);
    const pods = new Informer<V1Pod>(this.client, PODS, { logger: log });
    const nodes = new Informer<V1Node>(this.client, NODES, { logger: log });
    const workflows = watched<Workflow>(WORKFLOWS);
    const templates = watched<WorkflowTemplate>(WORKFLOW_TEMPLATES);
    const crons = watched<CronWorkflow>(CRON_WORKFLOWS);
    this.informers = [pools, pods, nodes, workflows, templates, crons] as InformerView<never>[];
    const poolEvents = new EventRecorder(this.client, {
      component: 'agentflow-operator',
      host: this.c.identity,
      logger: log,
    });
    this.tls = new DispatcherTls({
      client: this.client,
      namespace: this.c.namespace,
      secretName: this.c.dispatcherTls.secretName,
      mode: this.c.dispatcherTls.mode,
      sans: this.c.dispatcherTls.sans,
      caConfigMapName: this.c.caConfigMap,
      ...(this.c.dispatcherTls.certValiditySeconds && {
        certValiditySeconds: this.c.dispatcherTls.certValiditySeconds,
      }),
      logger: log.with({ component: 'dispatcher-tls' }),
      events: poolEvents,
    });
    await this.startTls(this.tls, leadership.signal);
    const tls = this.tls;
    // Pools reconcile often; the CA bundle changes rarely. Ask the API server again at most once a
    // minute per namespace (so a deleted ConfigMap comes back), and at once when the bundle changes.
    const published = new Map<string, { bundle: string; at: number }>();
    const publishCa = async (namespace: string): Promise<void> => {
      const bundle = tls.caBundle();
      const last = published.get(namespace);
      if (last && last.bundle === bundle && Date.now() - last.at < 60_000) return;
      await tls.publishCa(namespace);
      published.set(namespace, { bundle, at: Date.now() });
    };
    // A new CA bundle reaches every namespace agents run in, before their next connect needs it.
    tls.onCaChange(() => {
      const namespaces = new Set(pools.list().map((p) => p.metadata.namespace as string));
      for (const n of namespaces) {
        publishCa(n).catch((err: Error) => log.warn('Could not publish the CA bundle', { namespace: n, err }));
      }
    });
    this.dispatcher = new Dispatcher({
      store: this.store,
      address: this.c.dispatcherListen,
      fences,
      auth: new KubeAgentAuth({
        client: this.client,
        audience: this.c.tokenAudience,
        pod: (namespace, name) => pods.get(`${namespace}/${name}`),
        pool: (namespace, name) => pools.get(`${namespace}/${name}`),
        events: poolEvents,
        logger: log,
      }),
      credentials: tls.credentials,
      agentLeaseTtlSeconds: this.c.agentLeaseTtlSeconds,
      logger: log.with({ component: 'dispatcher' }),
      metrics: this.dispatcherMetrics,
    });
    await this.dispatcher.start();
    const dispatcher = this.dispatcher;
    // The rate limits each AgentPool declares (spec.rateLimits), as the dispatcher enforces them.
    const rateLimits = (p: AgentPool, gone?: boolean) =>
      dispatcher.setRateLimits(p.metadata.namespace ?? '', p.metadata.name ?? '', gone ? undefined : p.spec.rateLimits);
    // And the namespaces each shares itself with, by weight (spec.sharing).
    const poolConfig = (p: AgentPool, gone?: boolean) => {
      rateLimits(p, gone);
      dispatcher.setSharing(p.metadata.namespace ?? '', p.metadata.name ?? '', gone ? undefined : p.spec.sharing);
    };
    pools.on({ add: (p) => poolConfig(p), update: (_, p) => poolConfig(p), delete: (p) => poolConfig(p, true) });
    const agents: AgentDirectory = {
      drainPod: (namespace, pool, pod, timeoutSeconds) => {
        let any = false;
        for (const a of dispatcher.agents()) {
          if (a.namespace === namespace && a.pool === pool && a.pod === pod) {
            any = dispatcher.drainAgent(a.namespace, a.agentId, timeoutSeconds) || any;
          }
        }
        return any;
      },
      podConnected: (namespace, pool, pod) =>
        dispatcher.agents().some((a) => a.namespace === namespace && a.pool === pool && a.pod === pod),
      poolStats: (namespace, pool) => dispatcher.poolStats(namespace, pool),
    };
    const endpoints: AgentEndpoints = {
      dispatcher: this.c.agentDispatcherAddress,
      caConfigMap: this.c.caConfigMap,
      tokenAudience: this.c.tokenAudience,
    };
    this.pools = new PoolController({
      client: this.client,
      pools,
      pods,
      nodes,
      events: new EventRecorder(this.client, { component: 'agentflow-operator', host: this.c.identity, logger: log }),
      endpoints,
      prepareNamespace: publishCa,
      agents,
      records: {
        deletePool: async (namespace, pool) => {
          await this.store.deletePrefixes(
            [this.store.key('members', namespace, pool), this.store.key('state', 'pool', namespace, pool)].map(
              (p) => `${p}/`,
            ),
            fences(),
          );
        },
      },
      logger: log,
      workers: this.c.workers,
      observer: this.observer,
    });
    const events = new EventRecorder(this.client, {
      component: 'agentflow-operator',
      host: this.c.identity,
      logger: log,
    });
    this.engine = new WorkflowEngine({
      store: this.store,
      dispatcher: this.dispatcher,
      fences,
      logger: log,
      onChange: (namespace, name) => this.workflows?.changed(namespace, name),
      ...(this.c.workflowLimits && { limits: this.c.workflowLimits }),
      poolCapacity: (namespace, ref) => {
        const pool = parsePoolRef(ref, namespace);
        return pool && pools.get(`${pool.namespace}/${pool.name}`)?.spec.agent.capacity;
      },
    });
    this.workflows = new WorkflowController({
      client: this.client,
      workflows,
      pools,
      templates,
      engine: this.engine,
      events,
      logger: log,
      workers: this.c.workers,
      observer: this.observer,
      ...(this.c.waitingTimeoutSeconds !== undefined && { waitingTimeoutMs: this.c.waitingTimeoutSeconds * 1000 }),
    });
    this.crons = new CronWorkflowController({
      client: this.client,
      crons,
      workflows,
      events,
      logger: log,
      observer: this.observer,
    });
    for (const i of this.informers) i.start();
    await Promise.all(this.informers.map((i) => i.waitForSync(leadership.signal)));
    this.pools.start();
    this.workflows.start();
    this.crons.start();
    if (this.c.dataApi) {
      const engine = this.engine;
      this.dataApi = await startDataApi({
        client: this.client,
        listen: this.c.dataApi.listen,
        source: new LeaderDataSource({
          store: this.store,
          fences,
          engine,
          dispatcher,
          workflows,
          pools,
          pods,
          memo: engine.memoCache,
        }),
        identity: () => tls.identity(),
        onIdentityChange: (l) => tls.onIdentityChange(l),
        caBundle: () => tls.caBundle(),
        onCaChange: (l) => tls.onCaChange(l),
        logger: log,
      });
    }
    await this.labelSelf();
    log.info('Operator is leading', {
      token: leadership.token,
      dispatcherPort: this.dispatcher.port,
      ...(this.dataApi && { dataApiPort: this.dataApi.port }),
    });
  }

  /**
   * In secret mode the Secret may not exist yet (cert-manager has not issued it): wait for it while
   * leading, saying so, rather than crash-looping.
   */
  private async startTls(tls: DispatcherTls, signal: AbortSignal): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await tls.start();
        return;
      } catch (err) {
        if (!(err instanceof TlsMaterialError) || this.c.dispatcherTls.mode !== 'secret' || signal.aborted) throw err;
        this.log.warn('Waiting for the dispatcher TLS Secret', { error: err, attempt });
        await new Promise((r) => setTimeout(r, Math.min(30_000, 1_000 * attempt)));
      }
    }
  }

  private async labelSelf(): Promise<void> {
    const pod = this.c.pod;
    if (!pod) return;
    await this.client
      .mergePatch(resourcePath(PODS, pod), { metadata: { labels: { [ROLE_LABEL]: 'leader' } } })
      .catch((err: Error) => this.log.warn('Could not label this pod as the leader', { error: err }));
  }

  private async unlabelSelf(): Promise<void> {
    const pod = this.c.pod;
    if (!pod) return;
    await this.client
      .mergePatch(resourcePath(PODS, pod), { metadata: { labels: { [ROLE_LABEL]: null } } })
      .catch((err: Error) => this.log.warn('Could not remove the leader label from this pod', { error: err }));
  }

  /** Stops controllers, the dispatcher and informers, then steps down. */
  stop(why: 'stopped' | 'lost' = 'stopped'): Promise<void> {
    this.stopping ??= (async () => {
      this.log.info(why === 'lost' ? 'Stopping: leadership lost' : 'Stopping');
      try {
        this.abort.abort();
        this.backups.stop();
        await this.endTerm();
        if (why === 'stopped') await this.unlabelSelf();
        await this.elector.resign();
        await this.ops?.close();
        this.client.close();
        this.store.close();
      } catch (err) {
        // Stopping must end: main() waits for done, and Kubernetes restarts us either way.
        this.log.error('Stopping did not finish cleanly', { error: err as Error });
      } finally {
        this.resolveDone(why);
      }
    })();
    return this.stopping;
  }
}

/** Resolves once `signal` aborts. */
function aborted(signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
}

export function splitHostPort(address: string): [string, number] {
  const i = address.lastIndexOf(':');
  const host = address.slice(0, i).replace(/^\[|\]$/g, '') || '0.0.0.0';
  return [host, Number(address.slice(i + 1))];
}
