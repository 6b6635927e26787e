import { Counter, Gauge, Histogram, LATENCY_BUCKETS, type Registry } from '../lib/metrics.ts';
import { type ModelUsage, toUsd } from '../lib/usage.ts';
import type { KeptLease } from '../state/index.ts';

/**
 * How an attempt ended, as `agentflow_tasks_total{outcome}` counts it (one per attempt end):
 * succeeded / failed: its result was committed with an output / an error (a failed attempt may
 * still be retried: the workflow's retry policy decides), or it ran past its deadline (failed);
 * retried: it was lost with its agent and runs again; cancelled: the workflow no longer wants it.
 */
export type AttemptOutcome = 'succeeded' | 'failed' | 'retried' | 'cancelled';
const OUTCOMES: readonly AttemptOutcome[] = ['succeeded', 'failed', 'retried', 'cancelled'];

/**
 * Why a task went back in line (`agentflow_task_requeues_total{reason}`): its attempt's claim went
 * with the agent's lease; its agent stayed disconnected past the orphan timeout, or came back
 * without it; etcd refused its claim (another claim still stands), or the claim could not be written.
 */
export type RequeueReason =
  | 'lease_expired'
  | 'agent_disconnected'
  | 'agent_reconnected'
  | 'claim_refused'
  | 'claim_failed';
const REQUEUE_REASONS: readonly RequeueReason[] = [
  'lease_expired',
  'agent_disconnected',
  'agent_reconnected',
  'claim_refused',
  'claim_failed',
];

/** Seconds, 10 ms to 1 h: how long tasks wait for an agent and run (an agent's model calls take seconds to minutes). */
export const TASK_BUCKETS: readonly number[] = Object.freeze([
  0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
]);

/**
 * Model names the usage counters keep apart per pool (the first seen); usage of any further
 * model is counted under model="other", so an agent reporting arbitrary names cannot grow the
 * series without bound.
 */
export const MAX_USAGE_MODEL_SERIES = 20;
/** The model label of usage past MAX_USAGE_MODEL_SERIES. */
export const OTHER_MODEL_LABEL = 'other';

/** One pool's agents as the agent gauges show them. */
export interface PoolAgents {
  namespace: string;
  pool: string;
  /** Connected agents, draining ones included. */
  agents: number;
  /** Slots free on connected agents that take work (not draining). */
  free: number;
}

/** Where the agent gauges read from at scrape: the leader's dispatcher. */
export interface AgentTable {
  /** Every pool with at least one agent connected. */
  poolAgents(): Iterable<PoolAgents>;
}

interface Inc {
  inc(value?: number): void;
}
interface Observe {
  observe(value: number): void;
}

/** A pool's series, made once (label values resolved once, not per task). */
interface PoolSeries {
  outcomes: Record<AttemptOutcome, Inc>;
  requeues: Record<RequeueReason, Inc>;
  leaseExpiries: Inc;
  attempt: Observe;
  queueWait: Observe;
  /** Usage series by model label (at most MAX_USAGE_MODEL_SERIES + "other"). */
  usage: Map<string, { input: Inc; output: Inc; cost: Inc }>;
}

interface LeaseWatch {
  series: PoolSeries;
  /** The agent drained before it left: its lease running out is expected (a scale-down). */
  drained: boolean;
}

/**
 * The dispatcher's metrics: tasks by pool and outcome, attempt and queue-wait histograms,
 * dispatch latency, agents and free slots per pool, lease expiries and re-queues. Made once per
 * operator (on its registry) and handed to each term's dispatcher, which attaches itself as the
 * source of the agent gauges while it runs. Every method is cheap: a pool's series are resolved
 * the first time the pool is seen and kept.
 */
export class DispatcherMetrics {
  private readonly tasks: Counter<'namespace' | 'pool' | 'outcome'>;
  private readonly requeues: Counter<'namespace' | 'pool' | 'reason'>;
  private readonly leaseExpiries: Counter<'namespace' | 'pool'>;
  private readonly attemptSeconds: Histogram<'pool'>;
  private readonly queueWaitSeconds: Histogram<'pool'>;
  private readonly dispatchSeconds: Histogram;
  private readonly usageTokens: Counter<'namespace' | 'pool' | 'model' | 'kind'>;
  private readonly usageCost: Counter<'namespace' | 'pool' | 'model'>;
  private readonly pools = new Map<string, Map<string, PoolSeries>>();
  private readonly leases = new WeakMap<KeptLease, LeaseWatch>();
  /** Pool names whose histogram series exist. */
  private readonly zeroed = new Set<string>();
  private source: AgentTable | undefined;

  /**
   * `pools`: every AgentPool that exists (the operator's informer cache), so the agent gauges
   * read 0 for a pool without agents rather than leaving it out; without it, only pools with agents.
   */
  constructor(registry: Registry, opts: { pools?: () => Iterable<{ namespace: string; pool: string }> } = {}) {
    const registers = [registry];
    this.tasks = new Counter({
      name: 'agentflow_tasks_total',
      help: 'Task attempts that ended, by outcome: succeeded, failed (error or deadline), retried (lost with its agent), cancelled.',
      labelNames: ['namespace', 'pool', 'outcome'],
      registers,
    });
    this.attemptSeconds = new Histogram({
      name: 'agentflow_task_attempt_duration_seconds',
      help: 'Time from an attempt assigned to an agent to its result received.',
      labelNames: ['pool'],
      buckets: [...TASK_BUCKETS],
      registers,
    });
    this.queueWaitSeconds = new Histogram({
      name: 'agentflow_task_queue_wait_seconds',
      help: 'Time from an attempt queued in the dispatcher to it assigned to an agent.',
      labelNames: ['pool'],
      buckets: [...TASK_BUCKETS],
      registers,
    });
    this.dispatchSeconds = new Histogram({
      name: 'agentflow_dispatch_duration_seconds',
      help: 'Time from a task placed on an agent with a free slot (claim written to etcd) to its assignment written to the agent stream.',
      buckets: [...LATENCY_BUCKETS],
      registers,
    });
    this.leaseExpiries = new Counter({
      name: 'agentflow_agent_lease_expiries_total',
      help: "Agents' leases that ran out: the agent went away without draining and did not come back within the lease TTL.",
      labelNames: ['namespace', 'pool'],
      registers,
    });
    this.usageTokens = new Counter({
      name: 'agentflow_usage_tokens_total',
      help: `Tokens the handlers reported (ctx.usage) in committed results, failed attempts' included, by model (the first ${MAX_USAGE_MODEL_SERIES} per pool; the rest as "${OTHER_MODEL_LABEL}") and kind (input, output).`,
      labelNames: ['namespace', 'pool', 'model', 'kind'],
      registers,
    });
    this.usageCost = new Counter({
      name: 'agentflow_usage_cost_usd_total',
      help: `Cost in US dollars the handlers reported (ctx.usage) in committed results, failed attempts' included, by model (the first ${MAX_USAGE_MODEL_SERIES} per pool; the rest as "${OTHER_MODEL_LABEL}").`,
      labelNames: ['namespace', 'pool', 'model'],
      registers,
    });
    this.requeues = new Counter({
      name: 'agentflow_task_requeues_total',
      help: 'Tasks put back in line, by reason.',
      labelNames: ['namespace', 'pool', 'reason'],
      registers,
    });
    const perPool = (metric: Gauge<'namespace' | 'pool'>, value: (p: PoolAgents) => number) => {
      metric.reset();
      for (const { namespace, pool } of opts.pools?.() ?? []) metric.set({ namespace, pool }, 0);
      for (const p of this.source?.poolAgents() ?? []) metric.set({ namespace: p.namespace, pool: p.pool }, value(p));
    };
    new Gauge({
      name: 'agentflow_agents_connected',
      help: 'Agents connected to the leader, per pool (draining ones included).',
      labelNames: ['namespace', 'pool'],
      registers,
      collect() {
        perPool(this, (p) => p.agents);
      },
    });
    new Gauge({
      name: 'agentflow_agent_slots_free',
      help: 'Free slots on connected agents that take work (not draining), per pool.',
      labelNames: ['namespace', 'pool'],
      registers,
      collect() {
        perPool(this, (p) => p.free);
      },
    });
  }

  /** The agent gauges read `table` from now on (the dispatcher that started). */
  attach(table: AgentTable): void {
    this.source = table;
  }

  /** Stops reading `table` (a dispatcher that stopped), unless another one attached since. */
  detach(table: AgentTable): void {
    if (this.source === table) this.source = undefined;
  }

  /** An attempt was assigned: it waited `queuedMs` in line, of which the last `dispatchMs` went into dispatching it. */
  assigned(namespace: string, pool: string, queuedMs: number, dispatchMs: number): void {
    this.pool(namespace, pool).queueWait.observe(queuedMs / 1000);
    this.dispatchSeconds.observe(dispatchMs / 1000);
  }

  /** An attempt's result arrived `ranMs` after it was assigned. */
  ran(namespace: string, pool: string, ranMs: number): void {
    this.pool(namespace, pool).attempt.observe(ranMs / 1000);
  }

  ended(namespace: string, pool: string, outcome: AttemptOutcome): void {
    this.pool(namespace, pool).outcomes[outcome].inc();
  }

  /** A result was committed with this usage (once per committed result, on the leader). */
  usage(namespace: string, pool: string, models: readonly ModelUsage[] | undefined): void {
    if (!models || models.length === 0) return;
    const series = this.pool(namespace, pool).usage;
    for (const m of models) {
      const label = series.has(m.model) || series.size < MAX_USAGE_MODEL_SERIES ? m.model : OTHER_MODEL_LABEL;
      let s = series.get(label);
      if (!s) {
        s = {
          input: this.usageTokens.labels({ namespace, pool, model: label, kind: 'input' }),
          output: this.usageTokens.labels({ namespace, pool, model: label, kind: 'output' }),
          cost: this.usageCost.labels({ namespace, pool, model: label }),
        };
        series.set(label, s);
      }
      s.input.inc(m.inputTokens);
      s.output.inc(m.outputTokens);
      s.cost.inc(toUsd(m.costNanos));
    }
  }

  requeued(namespace: string, pool: string, reason: RequeueReason): void {
    this.pool(namespace, pool).requeues[reason].inc();
  }

  /** An agent registered with `lease`: its expiry is counted unless the agent drains before it leaves. */
  agentRegistered(lease: KeptLease, namespace: string, pool: string): void {
    const known = this.leases.get(lease);
    if (known) {
      known.drained = false;
      return;
    }
    const watch: LeaseWatch = { series: this.pool(namespace, pool), drained: false };
    this.leases.set(lease, watch);
    lease.once('lost', () => {
      if (!watch.drained) watch.series.leaseExpiries.inc();
    });
  }

  /** The agent holding `lease` disconnected; `drained`: it was draining (its lease will run out on purpose). */
  agentLeft(lease: KeptLease, drained: boolean): void {
    const known = this.leases.get(lease);
    if (known) known.drained = drained;
  }

  /** The pool's series, made (at 0) the first time the pool is seen. */
  private pool(namespace: string, pool: string): PoolSeries {
    let byName = this.pools.get(namespace);
    if (!byName) {
      byName = new Map();
      this.pools.set(namespace, byName);
    }
    let s = byName.get(pool);
    if (s) return s;
    const counter = <L extends string>(c: Counter<'namespace' | 'pool' | L>, label: L, value: string): Inc => {
      const child = c.labels({ namespace, pool, [label]: value } as Record<'namespace' | 'pool' | L, string>);
      child.inc(0);
      return child;
    };
    const outcomes = {} as Record<AttemptOutcome, Inc>;
    for (const o of OUTCOMES) outcomes[o] = counter(this.tasks, 'outcome', o);
    const requeues = {} as Record<RequeueReason, Inc>;
    for (const r of REQUEUE_REASONS) requeues[r] = counter(this.requeues, 'reason', r);
    const leaseExpiries = this.leaseExpiries.labels({ namespace, pool });
    leaseExpiries.inc(0);
    if (!this.zeroed.has(pool)) {
      // The histograms are by pool alone: a pool of the same name in another namespace shares them.
      this.attemptSeconds.zero({ pool });
      this.queueWaitSeconds.zero({ pool });
      this.zeroed.add(pool);
    }
    s = {
      outcomes,
      requeues,
      leaseExpiries,
      attempt: this.attemptSeconds.labels({ pool }),
      queueWait: this.queueWaitSeconds.labels({ pool }),
      usage: new Map(),
    };
    byName.set(pool, s);
    return s;
  }
}
