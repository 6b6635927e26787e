import { type Clock, Limits, NOT_SHARED_PREFIX, type RateLimitDef } from './limits.ts';
import type { PlacementPolicy } from './placement.ts';
import { PoolQueue, type QueuedTask } from './task-queue.ts';
import { poolNamespaceOf, type TaskSpec } from './types.ts';

/** What the scheduler sees of a connected agent (AgentConn is one). */
export interface SlotHolder {
  readonly agentId: string;
  readonly capacity: number;
  /** Slots in use; the scheduler reserves by adding to it. */
  used: number;
  /** Slots it may still take (0 while draining or closed). */
  readonly free: number;
  readonly handlers: ReadonlySet<string>;
}

/** One queued attempt as the scheduler holds it. */
export interface Schedulable {
  readonly key: string;
  readonly spec: TaskSpec;
  readonly attempt: number;
  readonly cost: number;
  enqueuedAt: number;
  /** Place in line, fixed at the first enqueue. */
  seq?: number;
}

export interface Pick<T extends Schedulable, A extends SlotHolder> {
  task: T;
  agent: A;
}

const poolKey = (namespace: string, pool: string) => `${namespace}/${pool}`;

export interface SchedulerOptions<T> {
  /** A concurrency key or rate limit holds a queued task, and why (see Limits). */
  held?(task: T, message: string): void;
  /** Held tasks went back to a ready line on their own (a refill timer, new pool limits): dispatch. */
  woken?(): void;
  clock?: Clock;
}

/**
 * The ready queues of every pool and the choice of agent for each task. Knows nothing of etcd or
 * streams: a dispatch turn asks it for picks (each agent's slots reserved as it goes), and gives back
 * what could not be claimed.
 */
export class Scheduler<T extends Schedulable, A extends SlotHolder> {
  private readonly queues = new Map<string, PoolQueue>();
  private readonly queued = new Map<QueuedTask, T>();
  private readonly byKey = new Map<string, QueuedTask>();
  private readonly policy: PlacementPolicy;
  private seq = 0;
  private firstPool = 0;
  /** Concurrency keys and rate limits: tasks they hold wait there, out of the ready lines. */
  private readonly limits: Limits<T>;
  /** The namespaces each shared pool serves and their weights (its spec.sharing), by pool. */
  private readonly shares = new Map<string, ReadonlyMap<string, number>>();
  private readonly opts: SchedulerOptions<T>;

  constructor(policy: PlacementPolicy, opts: SchedulerOptions<T> = {}) {
    this.policy = policy;
    this.opts = opts;
    this.limits = new Limits<T>({
      ready: (task) => {
        const q = this.byKey.get(task.key);
        if (q && this.queued.get(q) === task) this.queueFor(poolNamespaceOf(task.spec), task.spec.pool).push(q);
      },
      ...(opts.held && { held: opts.held }),
      ...(opts.woken && { woken: opts.woken }),
      ...(opts.clock && { clock: opts.clock }),
    });
  }

  private queueFor(namespace: string, pool: string): PoolQueue {
    const k = poolKey(namespace, pool);
    let q = this.queues.get(k);
    if (!q) {
      q = new PoolQueue(namespace);
      q.setWeights(this.shares.get(k));
      this.queues.set(k, q);
    }
    return q;
  }

  /**
   * The namespaces a pool serves besides its own, with their weights (its spec.sharing; undefined:
   * its own namespace only). Tasks of a namespace it stops serving stay queued, held, and are told
   * why; those of a namespace it starts serving are dispatched.
   */
  setSharing(namespace: string, pool: string, weights: ReadonlyMap<string, number> | undefined): void {
    const k = poolKey(namespace, pool);
    if (weights) this.shares.set(k, weights);
    else this.shares.delete(k);
    const q = this.queues.get(k);
    if (!q) return;
    q.setWeights(weights);
    let admitted = false;
    for (const ns of q.namespaces()) {
      if (!q.admits(ns)) for (const t of q.queuedOf(ns)) this.tellNotShared(this.queued.get(t));
      else if (ns !== namespace) admitted = true;
    }
    if (admitted) this.opts.woken?.();
  }

  private tellNotShared(task: T | undefined): void {
    if (!task) return;
    this.opts.held?.(
      task,
      `${NOT_SHARED_PREFIX}${poolNamespaceOf(task.spec)}/${task.spec.pool}: it is not shared with namespace ${task.spec.ref.namespace} (its spec.sharing.namespaces)`,
    );
  }

  /** Puts a task in its pool's line; a task queued again keeps the place it first had. */
  enqueue(task: T): void {
    if (this.byKey.has(task.key)) throw new Error(`task ${task.key} is already queued`);
    task.seq ??= this.seq++;
    const q: QueuedTask = {
      spec: task.spec,
      attempt: task.attempt,
      cost: task.cost,
      priority: task.spec.priority ?? 0,
      // A task queued again (its agent died, its claim was refused) keeps its first place in line,
      // ahead of work that arrived after it, instead of waiting behind the whole backlog.
      seq: task.seq,
      enqueuedAt: task.enqueuedAt,
    };
    this.queued.set(q, task);
    this.byKey.set(task.key, q);
    // A task a limit holds waits in that limit's queue, not in the line.
    if (Limits.limited(task.spec) && !this.limits.admit(task)) return;
    const line = this.queueFor(poolNamespaceOf(task.spec), task.spec.pool);
    line.push(q);
    if (!line.admits(task.spec.ref.namespace)) this.tellNotShared(task);
  }

  /** Takes a queued task out of line (cancelled, or adopted from its agent); false if it was not queued. */
  remove(task: T): boolean {
    const q = this.byKey.get(task.key);
    if (!q || this.queued.get(q) !== task) return false;
    this.queued.delete(q);
    this.byKey.delete(task.key);
    if (Limits.limited(task.spec)) {
      // Out of the line first: what its removal wakes must not find it there.
      this.queues.get(poolKey(poolNamespaceOf(task.spec), task.spec.pool))?.remove((t) => t === q);
      this.limits.remove(task);
    } else this.queueFor(poolNamespaceOf(task.spec), task.spec.pool).remove((t) => t === q);
    return true;
  }

  /**
   * The attempt of a picked (or adopted) task is over, or its pick was given back before it ran: its
   * concurrency key's slot is free again, and with `refund` (it never ran) the rate-limit tokens its
   * pick took go back. Idempotent; nothing for a task without limits.
   */
  release(task: T, refund = false): void {
    if (Limits.limited(task.spec)) this.limits.release(task, refund);
  }

  /**
   * When the picked task's Assign may go out (performance.now() ms): later than now only while its
   * rate limits' earlier Assigns are still closer together than the rate allows (see Limits.sendAt).
   */
  sendAt(task: T, now: number): number {
    return Limits.limited(task.spec) ? this.limits.sendAt(task) : now;
  }

  /** An attempt adopted from a re-registering agent runs: it counts against its concurrency key. */
  adopted(task: T): void {
    if (Limits.limited(task.spec)) this.limits.adopted(task);
  }

  /** The rate limits a pool declares (its spec.rateLimits; undefined once the pool is gone). */
  setRateLimits(namespace: string, pool: string, defs: readonly RateLimitDef[] | undefined): void {
    this.limits.setRateLimits(namespace, pool, defs);
  }

  /** Why a queued task is held by a limit now, or undefined. */
  heldReason(task: T): string | undefined {
    return this.isQueued(task) && Limits.limited(task.spec) ? this.limits.reason(task) : undefined;
  }

  /** Attempts of a namespace's concurrency key holding a slot now. */
  runningOf(namespace: string, key: string): number {
    return this.limits.runningOf(namespace, key);
  }

  close(): void {
    this.limits.close();
  }

  isQueued(task: T): boolean {
    const q = this.byKey.get(task.key);
    return q !== undefined && this.queued.get(q) === task;
  }

  /**
   * Up to `max` picks across pools: for each queued task (priority, then round-robin between
   * workflows) an agent of its pool that serves its handler and has room, chosen by the policy.
   * Each pick's cost is added to its agent's `used` at once so the next pick sees it; the caller
   * gives it back (agent.used -= cost) for any pick it does not go on with.
   */
  take(agentsOf: (namespace: string, pool: string) => Iterable<A> | undefined, max: number): Pick<T, A>[] {
    const out: Pick<T, A>[] = [];
    if (max <= 0) return out;
    // Each turn starts at the next pool: a pool with a deep backlog and many free slots cannot fill
    // turn after turn while the pools after it wait.
    const pools = [...this.queues];
    const start = pools.length > 0 ? this.firstPool++ % pools.length : 0;
    for (let i = 0; i < pools.length; i++) {
      const [k, queue] = pools[(start + i) % pools.length] as [string, PoolQueue];
      if (out.length >= max) break;
      if (queue.size === 0) continue;
      const slash = k.indexOf('/');
      const agents = agentsOf(k.slice(0, slash), k.slice(slash + 1));
      if (!agents) continue;
      const list = [...agents];
      if (list.length === 0) continue;
      const chosen = new Map<QueuedTask, A>();
      const held: QueuedTask[] = [];
      const taken = queue.take(
        (t) => {
          const limited = Limits.limited(t.spec);
          if (limited && this.limits.check(this.queued.get(t) as T)) return 'hold';
          let pick: A | undefined;
          const cands: { agentId: string; capacity: number; used: number; agent: A }[] = [];
          for (const a of list) {
            if (a.free >= t.cost && a.handlers.has(t.spec.handler))
              cands.push({ agentId: a.agentId, capacity: a.capacity, used: a.used, agent: a });
          }
          if (cands.length === 1) pick = cands[0]?.agent;
          else if (cands.length > 1) pick = (this.policy(cands) as (typeof cands)[number] | undefined)?.agent;
          if (!pick) return false;
          pick.used += t.cost; // reserve now: the next pick sees it
          chosen.set(t, pick);
          if (limited) this.limits.picked(this.queued.get(t) as T);
          return true;
        },
        max - out.length,
        undefined,
        held,
      );
      for (const t of held) {
        const task = this.queued.get(t) as T;
        const gate = this.limits.check(task);
        if (gate) this.limits.holdAtPick(task, gate);
        else queue.push(t); // (cannot happen: nothing changed since the check)
      }
      for (const t of taken) {
        const task = this.queued.get(t) as T;
        this.queued.delete(t);
        this.byKey.delete(task.key);
        out.push({ task, agent: chosen.get(t) as A });
      }
    }
    this.limits.flush();
    return out;
  }

  /** Slots wanted by the pool's queued tasks (the autoscaler's signal). */
  queuedSlots(namespace: string, pool: string): number {
    return this.queues.get(poolKey(namespace, pool))?.queuedSlots ?? 0;
  }

  /** Handlers of the pool's queued tasks (sorted). */
  wantedHandlers(namespace: string, pool: string): string[] {
    return this.queues.get(poolKey(namespace, pool))?.wantedHandlers() ?? [];
  }

  /** Tasks queued in all pools. */
  get size(): number {
    return this.byKey.size;
  }
}
