import { EventEmitter } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Dispatcher, type TaskEvent, type TaskSpec } from '../../src/dispatcher/index.ts';
import { DispatcherMetrics } from '../../src/dispatcher/metrics.ts';
import { AGENT_NODE_OPTIONS } from '../../src/lib/agent-node-options.ts';
import { silentLogger } from '../../src/lib/log.ts';
import { Registry } from '../../src/lib/metrics.ts';
import { LeaderElector, type Leadership } from '../../src/operator/leader.ts';
import { type Fence, isClaimEntry, StateStore } from '../../src/state/index.ts';
import { EtcdServer } from '../../test/cluster/etcd.ts';
import type { AgentProcessConfig } from './agent-process.ts';
import { Child } from './children.ts';

/** Agent processes run with the NODE_OPTIONS the operator gives agent pods (src/operator/pool/pods.ts). */
const AGENT_FLAGS = AGENT_NODE_OPTIONS.split(' ').filter(Boolean);

import { now } from './clock.ts';
import type { Role } from './proc.ts';
import { type BenchSecurity, benchSecurity, SECURITY_NOTES, type SecurityPosture } from './security.ts';
import type { PoolGrant } from './static-auth.ts';
import { type Persistence, type Security, SYSTEM_LABELS, type System, type SystemEvents } from './system.ts';
import { type HandlerOptions, isTaskOutput } from './task.ts';

export const ETCD_PREFIX = '/bench';
export const NAMESPACE = 'bench';
export const POOL = 'bench';
/** What the bench's agents may register as: the AgentPool spec.agent KubeAgentAuth would read. */
const POOL_GRANT: PoolGrant = { namespace: NAMESPACE, pool: POOL, maxCapacity: 1024, handlers: ['task', 'items'] };

export const AGENTFLOW_PERSISTENCE: Persistence = {
  persists:
    'per task: one key, put bound to the agent lease as the claim (claim txn), then overwritten with the result ' +
    '(no lease) by a txn that compares the claim untouched (group commit: up to 127 tasks per txn, one txn in ' +
    'flight per kind); the dispatcher queue itself is in memory (the workflow engine owns task records)',
  fsync:
    'etcd fsyncs its WAL before it answers a txn (one fsync per Raft batch): a result is on disk when ' +
    "the dispatcher emits 'committed'",
};

export interface AgentflowOptions extends Partial<HandlerOptions> {
  /** Agent processes. */
  processes: number;
  /** Agents per process (1 but for the scale scenario). */
  agentsPerProcess?: number;
  capacity: number;
  /** The first agent process CPU-profiles itself from profileAgent() until it stops, into this file. */
  cpuProfileFile?: string;
}

export interface AgentflowStartOptions extends AgentflowOptions {
  /** Default 'tls+auth', what users get; 'plaintext' is the baseline the cost of security is measured against. */
  security?: SecurityPosture;
  /** The dispatcher's agentLeaseTtlSeconds: how long a dead agent keeps its tasks (default 10). */
  leaseTtlSeconds?: number;
  /**
   * Win the operator's leader election (src/operator/leader.ts) first: every etcd write of the
   * dispatcher, and of whatever else uses `fences()`, then carries the leadership fence, as in the operator.
   */
  leaderElection?: boolean;
}

/** etcd (fsync on) + a Dispatcher in this process + agent processes running createAgent. */
export class AgentflowSystem extends EventEmitter<SystemEvents> implements System {
  readonly key: 'agentflow' | 'agentflow-plaintext';
  readonly label: string;
  readonly persistence = AGENTFLOW_PERSISTENCE;
  readonly security: Security;
  readonly workerNames: string[] = [];
  readonly etcd: EtcdServer;
  readonly store: StateStore;
  readonly dispatcher: Dispatcher;
  /** What the agent processes reported when ready (connect time, RSS). */
  readonly readyReports: Record<string, unknown>[] = [];
  private readonly dir: string;
  private readonly sec: BenchSecurity;
  private readonly children = new Map<string, Child>();
  private elector: LeaderElector | undefined;
  private leadership: Leadership | undefined;
  /** The leadership fence every etcd write carries (none without leaderElection). */
  readonly fences = (): Fence[] => (this.leadership ? [this.leadership.fence] : []);

  private constructor(dir: string, etcd: EtcdServer, store: StateStore, dispatcher: Dispatcher, sec: BenchSecurity) {
    super();
    this.dir = dir;
    this.sec = sec;
    this.key = sec.posture === 'plaintext' ? 'agentflow-plaintext' : 'agentflow';
    this.label = SYSTEM_LABELS[this.key];
    this.security = { posture: sec.posture, note: SECURITY_NOTES[sec.posture] };
    this.etcd = etcd;
    this.store = store;
    this.dispatcher = dispatcher;
    dispatcher.on('task', (e) => this.onTask(e));
  }

  static async start(opts: AgentflowStartOptions): Promise<AgentflowSystem> {
    const dir = mkdtempSync(join(tmpdir(), 'agentflow-bench-'));
    const sec = await benchSecurity(opts.security ?? 'tls+auth', dir, POOL_GRANT);
    const etcd = new EtcdServer({ dir, name: 'etcd' }); // fsync on: durable commits, as in production
    await etcd.start();
    const store = new StateStore({ endpoints: [etcd.endpoint], prefix: ETCD_PREFIX });
    let sys: AgentflowSystem | undefined;
    const dispatcher = new Dispatcher({
      store,
      fences: () => sys?.fences() ?? [],
      auth: sec.auth,
      credentials: sec.credentials,
      agentLeaseTtlSeconds: opts.leaseTtlSeconds ?? 10,
      logger: silentLogger,
      // The task metrics the operator's dispatcher keeps (prom-client), as shipped; BENCH_DISPATCHER_METRICS=0
      // leaves them out, to measure what they cost.
      ...(process.env.BENCH_DISPATCHER_METRICS !== '0' && { metrics: new DispatcherMetrics(new Registry()) }),
    });
    sys = new AgentflowSystem(dir, etcd, store, dispatcher, sec);
    if (opts.leaderElection) {
      sys.elector = new LeaderElector({ store, name: 'bench-operator', identity: 'bench', logger: silentLogger });
      sys.leadership = await sys.elector.campaign();
    }
    await dispatcher.start();
    await sys.addAgents(opts);
    return sys;
  }

  /** Starts agent processes and waits until every agent is registered with the dispatcher. */
  async addAgents(opts: AgentflowOptions): Promise<void> {
    const perProcess = opts.agentsPerProcess ?? 1;
    const first = this.children.size;
    const want = this.dispatcher.agents().length + opts.processes * perProcess;
    for (let i = first; i < first + opts.processes; i++) {
      const name = `agent-${i}`;
      const cfg: AgentProcessConfig = {
        name,
        dispatcher: `127.0.0.1:${this.dispatcher.port}`,
        ...this.sec.agentCredentials(name, { podBound: perProcess === 1 }),
        agents: perProcess,
        capacity: opts.capacity,
        // The dispatcher keeps an agent's lease only while it hears from it within the TTL: beat well inside it.
        heartbeatMs: Math.min(5_000, Math.floor((this.dispatcher.agentLeaseTtlSeconds * 1000) / 4)),
        holdMs: opts.holdMs ?? 0,
        reportStarts: opts.reportStarts ?? false,
        startConcurrency: 32,
        ...(i === 0 && opts.cpuProfileFile && { cpuProfileFile: opts.cpuProfileFile }),
      };
      const child = new Child(
        name,
        'bench/lib/agent-process.ts',
        cfg,
        (m, from) => {
          if (m.type === 'start') this.emit('start', m, from.name);
        },
        AGENT_FLAGS,
      );
      this.children.set(name, child);
      this.workerNames.push(name);
    }
    this.readyReports.push(...(await Promise.all([...this.children.values()].slice(first).map((c) => c.ready))));
    while (this.dispatcher.agents().length < want) await new Promise((r) => setTimeout(r, 10));
  }

  private onTask(e: TaskEvent): void {
    if (e.type === 'committed') {
      const out = e.result.output;
      if (!isTaskOutput(out)) throw new Error(`task ${e.ref.workflow}/${e.ref.task}: unexpected output ${out}`);
      this.emit('done', { ...out, observedAt: now(), attempt: e.result.attempt });
    } else if (e.type === 'lost') {
      this.emit('lost', { id: `${e.ref.workflow}/${e.ref.task}`, at: now() });
    }
  }

  /** Concurrency key and rate limits of the n-th task of a batch (the limits scenario); none by default. */
  limitsOf: ((n: number) => Pick<TaskSpec, 'concurrency' | 'rateLimits'>) | undefined;

  send(tasks: { id: string }[]): void {
    tasks.forEach(({ id }, n) => {
      const slash = id.indexOf('/');
      this.dispatcher.submit({
        ref: { namespace: NAMESPACE, workflow: id.slice(0, slash), task: id.slice(slash + 1) },
        pool: POOL,
        handler: 'task',
        input: { id, sentAt: now() },
        ...this.limitsOf?.(n),
      });
    });
  }

  roles(): Role[] {
    return [
      { role: 'driver + dispatcher', pids: [process.pid] },
      { role: 'agents', pids: [...this.children.values()].map((c) => c.pid) },
      { role: 'etcd', pids: this.etcd.pid ? [this.etcd.pid] : [] },
    ];
  }

  /** etcd's WAL fsync and backend commit counters (Prometheus text from /metrics). */
  async storeCounters(): Promise<Record<string, number>> {
    const text = await (await fetch(`${this.etcd.endpoint}/metrics`)).text();
    const metric = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? Number.NaN);
    return {
      walFsyncs: metric('etcd_disk_wal_fsync_duration_seconds_count'),
      walFsyncSeconds: metric('etcd_disk_wal_fsync_duration_seconds_sum'),
      backendCommits: metric('etcd_disk_backend_commit_duration_seconds_count'),
      claimTxns: this.dispatcher.counters.claimTxns,
      commitTxns: this.dispatcher.counters.commitTxns,
    };
  }

  /** Reads etcd: results (each key written once?), attempt history and claims left for the workflow. */
  async audit(phase: string): Promise<Record<string, number>> {
    const under = async (kind: string) => (await this.store.list(`${this.store.key(kind, NAMESPACE, phase)}/`)).entries;
    const results = await under('results');
    const done = results.filter((e) => !isClaimEntry(e));
    return {
      recorded: done.length,
      // The task's key is created by the claim (version 1) and written once more by the commit: version 2.
      recordedMoreThanOnce: done.filter((e) => e.version > 2).length,
      recordedByALaterAttempt: done.filter((e) => (JSON.parse(e.value) as { attempt: number }).attempt > 1).length,
      failedAttemptRecords: (await under('attempts')).length,
      claimsLeft: results.length - done.length,
    };
  }

  /** Starts the CPU profile of the first agent process (see cpuProfileFile); it is written when the process stops. */
  profileAgent(): void {
    this.children.get('agent-0')?.signal('SIGUSR2');
  }

  killWorker(name: string): void {
    this.children.get(name)?.kill();
  }

  async stop(): Promise<void> {
    await Promise.all([...this.children.values()].map((c) => c.stop()));
    await this.dispatcher.stop(1_000);
    await this.elector?.resign();
    this.store.close();
    await this.etcd.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
