import { EventEmitter } from 'node:events';
import { Server, type ServerCredentials } from '@grpc/grpc-js';
import { type SharingSpec, shareWeights } from '../api/sharing.ts';
import type { AgentMessage__Output } from '../gen/agentflow/v1/AgentMessage.ts';
import type { Register__Output } from '../gen/agentflow/v1/Register.ts';
import type { Result__Output } from '../gen/agentflow/v1/Result.ts';
import type { SpawnTasks__Output } from '../gen/agentflow/v1/SpawnTasks.ts';
import { type Logger, silentLogger } from '../lib/log.ts';
import { agentflowProto, KEEPALIVE_OPTIONS } from '../lib/proto.ts';
import { attemptSpanContext, traceparentOf } from '../lib/tracing.ts';
import { PROTOCOL_BATCHING, PROTOCOL_VERSION } from '../lib/wire-batch.ts';
import {
  type Claim,
  type ClaimRefusalReason,
  COMMIT_GROUP,
  type CommitOutcome,
  type Fence,
  isClaimEntry,
  type KeptLease,
  LeaseKeeper,
  Membership,
  ResumableWatch,
  type StateStore,
  TaskClaims,
  type TaskRef,
  type TaskResult,
} from '../state/index.ts';
import { TaskLogWriter } from '../state/task-logs.ts';
import { AgentConn } from './agent-conn.ts';
import type { AgentAuth, AgentIdentity, Grant } from './auth.ts';
import { StreamCredentials } from './credentials.ts';
import { GroupCommitter } from './group-committer.ts';
import type { RateLimitDef } from './limits.ts';
import { relayMail } from './mail.ts';
import type { DispatcherMetrics, PoolAgents, RequeueReason } from './metrics.ts';
import { OrphanResults } from './orphans.ts';
import { type PlacementPolicy, POLICIES, type PolicyName } from './placement.ts';
import { confirmInFlight, judgeUntracked } from './recovery.ts';
import { Scheduler } from './scheduler.ts';
import { StateService } from './state-service.ts';
import { type AgentStream, acceptStream, WireMessageError } from './streams.ts';
import { allows, move, newEntry, type TaskEntry, type WireRefusal } from './task-state.ts';
import {
  agentKey,
  agentKeyOfClaimant,
  claimantId,
  type PoolStats,
  poolLabel,
  poolNamespaceOf,
  type SpawnOutcome,
  type TaskEvent,
  type TaskSpec,
  taskKey,
  wireTaskId,
} from './types.ts';
import {
  checkRegister,
  claimOf,
  isRefusal,
  logLines,
  parseResult,
  type ResultOutcome,
  refOf,
  spawnedChildren,
  streamText,
} from './wire-checks.ts';

export interface DispatcherOptions {
  store: StateStore;
  /** Verifies every agent's token and decides what it may register as. */
  auth: AgentAuth;
  /**
   * The server's TLS identity (the operator's DispatcherTls). Plaintext only
   * where a caller passes ServerCredentials.createInsecure() on purpose (the
   * benchmark's baseline); nothing in the operator does.
   */
  credentials: ServerCredentials;
  /** Where to listen (default 127.0.0.1:0). */
  address?: string;
  /** TTL of the leases the dispatcher keeps for agents: how long a dead agent keeps its tasks (default 10). */
  agentLeaseTtlSeconds?: number;
  policy?: PolicyName | PlacementPolicy;
  /** Leadership fences every etcd write must carry (the operator's election). */
  fences?: () => Fence[];
  logger?: Logger;
  /** An agent whose stream stays broken this long loses its assignments (default 30 s). */
  orphanTimeoutMs?: number;
  /** Most claims or commits in one etcd round trip (default 512; split into txns of 63). */
  maxBatch?: number;
  /** Task and agent metrics (the operator's); none when absent. */
  metrics?: DispatcherMetrics;
}

type Entry = TaskEntry;

/** Whether the entry's attempt is this agent's (its claim names the agent: see claimantId). */
const holds = (e: Entry, c: AgentConn) =>
  e.agentId !== undefined && e.agentId === claimantId(c.namespace, c.agentId, e.spec.ref);

/** Whether the agent is of the task's pool (the pool's namespace is the agent's). */
const servedBy = (spec: TaskSpec, c: AgentConn) => spec.pool === c.pool && poolNamespaceOf(spec) === c.namespace;

/** The pool label of an agent's pool as the task's metrics show it (see poolLabel). */
const connPoolLabel = (ref: TaskRef, c: AgentConn) =>
  ref.namespace === c.namespace ? c.pool : `${c.namespace}/${c.pool}`;

/** A result whose claim went with the agent's lease, kept until its attempt is queued again. */
interface Orphan {
  conn: AgentConn;
  r: Result__Output;
  result: ResultOutcome;
}

interface PendingCommit {
  ref: TaskRef;
  claim: Claim;
  result: ResultOutcome;
  conn: AgentConn;
  wireAttempt: number;
  wireTaskId: string;
}

/**
 * The dispatcher: agents hold one gRPC stream each; ready tasks are claimed in
 * etcd for an agent (bound to the agent's lease), assigned within the agent's
 * credits, and their results committed only under a still-current claim.
 */
export class Dispatcher extends EventEmitter<{ task: [TaskEvent] }> {
  private readonly store: StateStore;
  private readonly claims: TaskClaims;
  private readonly auth: AgentAuth;
  private readonly serverCredentials: ServerCredentials;
  private readonly credentials: StreamCredentials;
  private readonly leases: LeaseKeeper;
  private readonly membership: Membership;
  private readonly stateService: StateService;
  private readonly taskLogs: TaskLogWriter;
  private sweeper: NodeJS.Timeout | undefined;
  private readonly log: Logger;
  private readonly metrics: DispatcherMetrics | undefined;
  private readonly fences: () => Fence[];
  private readonly orphanTimeoutMs: number;
  private readonly maxBatch: number;
  private readonly address: string;
  private server: Server | undefined;
  private watch: ResumableWatch | undefined;
  private readonly conns = new Map<string, AgentConn>();
  private readonly byPool = new Map<string, Set<AgentConn>>();
  private readonly scheduler: Scheduler<Entry, AgentConn>;
  private readonly entries = new Map<string, Entry>();
  /** Claimed attempts whose Assign waits for its rate limits' send slot (see sendPaced), by entry. */
  private readonly paced = new Map<Entry, { conn: AgentConn; claim: Claim; timer: NodeJS.Timeout }>();
  private readonly orphanTimers = new Map<string, NodeJS.Timeout>();
  private readonly committer: GroupCommitter<PendingCommit, CommitOutcome>;
  private dispatching = false;
  private dispatchAgain = false;
  /** Results of attempts whose claim had gone, waiting (briefly) for the engine to queue that attempt again. */
  private readonly orphans = new OrphanResults<Orphan>((o) => this.refuseOrphan(o));
  private stopped = false;
  /** Set once a leadership fence failed (see depose). */
  private deposed = false;
  readonly counters = {
    assigned: 0,
    committed: 0,
    superseded: 0,
    lost: 0,
    timedOut: 0,
    refused: 0,
    unauthenticated: 0,
    permissionDenied: 0,
    reauthenticated: 0,
    claimTxns: 0,
    commitTxns: 0,
    /** Results whose claim had gone (an agent back after its lease expired) committed instead of re-run. */
    orphansCommitted: 0,
  };
  /** Milliseconds from submit to Assign written, most recent last (bounded). */
  readonly dispatchLatencies: number[] = [];
  port = 0;

  constructor(opts: DispatcherOptions) {
    super();
    this.store = opts.store;
    this.claims = new TaskClaims(opts.store);
    this.log = (opts.logger ?? silentLogger).with({ component: 'dispatcher' });
    const p = opts.policy ?? 'least-loaded';
    this.scheduler = new Scheduler<Entry, AgentConn>(typeof p === 'function' ? p : POLICIES[p](), {
      // After the current turn: the engine hears of it as of any other event, never inside its own submit.
      held: (e, message) =>
        queueMicrotask(() => {
          if (this.entries.get(e.key) === e && e.phase === 'queued')
            this.emit('task', { type: 'held', ref: e.spec.ref, attempt: e.attempt, message });
        }),
      woken: () => this.kick(),
    });
    this.fences = opts.fences ?? (() => []);
    this.metrics = opts.metrics;
    this.orphanTimeoutMs = opts.orphanTimeoutMs ?? 30_000;
    this.maxBatch = opts.maxBatch ?? 512;
    this.address = opts.address ?? '127.0.0.1:0';
    this.auth = opts.auth;
    this.serverCredentials = opts.credentials;
    this.credentials = new StreamCredentials(opts.auth, this.counters);
    this.leases = new LeaseKeeper(opts.store, {
      ttlSeconds: opts.agentLeaseTtlSeconds ?? 10,
      onError: (err) => this.log.warn('Keeping agent leases alive failed; retrying', { err }),
      // The agent is gone for good: forget the locks it held (etcd dropped them with the lease).
      onExpired: (lease) => {
        if (lease.owner && this.conns.get(lease.owner)?.lease !== lease) this.stateService.forgetAgent(lease.owner);
      },
    });
    this.membership = new Membership(opts.store);
    this.stateService = new StateService(opts.store, this.fences, this.log);
    this.taskLogs = new TaskLogWriter(opts.store, this.fences, this.log.with({ part: 'task-logs' }));
    this.committer = new GroupCommitter<PendingCommit, CommitOutcome>({
      commit: async (batch) => {
        const out = await this.claims.commitMany(
          batch.map((c) => ({ claim: c.claim, result: c.result })),
          this.fences(),
        );
        this.counters.commitTxns += Math.ceil(batch.length / COMMIT_GROUP); // at least: groups are also bounded by bytes
        return out;
      },
      settled: (c, o) => this.committed(c, o),
      maxBatch: this.maxBatch,
      logger: this.log,
    });
  }

  /** TTL of agents' leases, in seconds. */
  get agentLeaseTtlSeconds(): number {
    return this.leases.ttlSeconds;
  }

  async start(): Promise<number> {
    const claimsPrefix = this.claims.claimsPrefix();
    const { revision } = await this.store.list(`${claimsPrefix}.none`);
    // Claims share their task's result key, and a commit overwrites the claim without deleting it:
    // a delete under results/ is a claim gone (its lease expired, it was released) or records removed.
    // Keys only: deleting a finished workflow's results must not send their values here.
    this.watch = await new ResumableWatch(
      this.store,
      claimsPrefix,
      revision + 1,
      {
        onEvent: (e) => {
          if (e.type === 'delete') this.onClaimGone(e.key, e.modRevision);
        },
        onResync: (entries, at) => {
          const live = new Set(entries.filter(isClaimEntry).map((x) => `${x.key}@${x.createRevision}`));
          for (const entry of this.entries.values()) {
            if (entry.phase === 'assigned' && entry.claim && !live.has(`${entry.key}@${entry.claim.token}`)) {
              this.onClaimGone(entry.key, at);
            }
          }
        },
        onError: (err) => this.log.warn('Claims watch interrupted; resuming', { err }),
      },
      { onlyDeletes: true, previousValues: false, keysOnlyResync: true },
    ).start();
    const server = new Server(KEEPALIVE_OPTIONS);
    server.addService(agentflowProto().agentflow.v1.Dispatcher.service, {
      Connect: (stream: AgentStream) =>
        acceptStream(
          stream,
          {
            deposed: () => this.deposed,
            stopped: () => this.stopped,
            register: (st, r, who) => this.onRegister(st, r, who),
            message: (conn, m) => this.onMessage(conn, m),
            disconnected: (conn) => this.onDisconnect(conn),
            counters: this.counters,
          },
          this.credentials,
          this.auth,
          this.log,
        ),
    });
    this.port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(this.address, this.serverCredentials, (err, port) => (err ? reject(err) : resolve(port))),
    );
    this.server = server;
    this.leases.start();
    this.metrics?.attach(this);
    // An agent is alive while it is heard from: keep its lease only then.
    this.sweeper = setInterval(() => this.sweepLeases(), Math.max(200, (this.leases.ttlSeconds * 1000) / 4));
    this.sweeper.unref();
    this.log.info('Dispatcher listening', { address: this.address.replace(/:0$/, `:${this.port}`) });
    return this.port;
  }

  /** Stop taking work, end the streams, shut the server down (force after graceMs). */
  async stop(graceMs = 5_000): Promise<void> {
    this.stopped = true;
    this.metrics?.detach(this);
    this.orphans.close();
    this.committer.stop();
    await this.taskLogs
      .stop()
      .catch((err: Error) => this.log.warn('Could not write the last task logs', { error: err }));
    if (this.sweeper) clearInterval(this.sweeper);
    this.scheduler.close();
    for (const t of this.orphanTimers.values()) clearTimeout(t);
    for (const e of this.entries.values()) if (e.timer) clearTimeout(e.timer);
    for (const p of this.paced.values()) clearTimeout(p.timer);
    this.paced.clear();
    for (const c of this.conns.values()) {
      c.close();
      await this.stateService.closeStream(c);
    }
    // Leases are not revoked: the agents reconnect to the next leader, which adopts them.
    this.leases.close();
    await this.watch?.close();
    const server = this.server;
    if (!server) return;
    await new Promise<void>((resolve) => {
      const force = setTimeout(() => {
        server.forceShutdown();
        resolve();
      }, graceMs);
      server.tryShutdown(() => {
        clearTimeout(force);
        resolve();
      });
    });
  }

  // ---- the engine's side ----

  /** Queues a ready task. Resubmitting a task that is queued or running is refused. */
  submit(spec: TaskSpec): void {
    const key = taskKey(spec.ref);
    if (this.entries.has(key)) throw new Error(`task ${key} is already queued or running`);
    const attempt = spec.attempt ?? 1;
    const cost = spec.cost ?? 1;
    if (!Number.isInteger(cost) || cost < 1)
      throw new RangeError(`task ${key}: cost must be an integer >= 1, got ${cost}`);
    const entry = newEntry(key, spec, attempt, cost);
    this.entries.set(key, entry);
    this.enqueue(entry);
    const orphan = this.orphans.take(key);
    if (orphan && !this.commitOrphan(entry, orphan)) this.refuseOrphan(orphan);
  }

  /** Whether the task is queued or running here (also when adopted from a reconnecting agent). */
  isTracked(ref: TaskRef): boolean {
    return this.entries.has(taskKey(ref));
  }

  /** Cancels a queued or running task: running attempts get Cancel and lose their claim. */
  async cancel(ref: TaskRef, reason: string): Promise<void> {
    const entry = this.entries.get(taskKey(ref));
    if (!entry) return;
    if (entry.phase === 'queued') {
      this.scheduler.remove(entry);
      this.entries.delete(entry.key);
      this.metrics?.ended(entry.spec.ref.namespace, poolLabel(entry.spec), 'cancelled');
      return;
    }
    if (entry.phase === 'assigned') {
      this.metrics?.ended(entry.spec.ref.namespace, poolLabel(entry.spec), 'cancelled');
      await this.takeBack(entry, reason);
    } else if (entry.phase === 'claiming' && entry.cancelled === undefined) {
      // Its claim is being written or its Assign paced: it does not go out (see dropUnsent).
      entry.cancelled = reason;
      this.metrics?.ended(entry.spec.ref.namespace, poolLabel(entry.spec), 'cancelled');
      const p = this.paced.get(entry);
      if (p) {
        clearTimeout(p.timer);
        this.paced.delete(entry);
        this.dropUnsent(entry, p.conn, p.claim);
      }
    }
  }

  /**
   * Why a queued task waits for a concurrency key or rate limit (e.g. "waiting on rate limit
   * openai-calls (key acme): next slot in 3.2 s"), as of now; undefined if none holds it.
   */
  heldReason(ref: TaskRef): string | undefined {
    const entry = this.entries.get(taskKey(ref));
    return entry?.phase === 'queued' ? this.scheduler.heldReason(entry) : undefined;
  }

  /**
   * After a failover, the concurrency key of an attempt adopted from its agent before the engine
   * resumed its run (an adopted attempt is known only by its claim): from now on it counts.
   */
  adoptedLimits(spec: TaskSpec): void {
    const entry = this.entries.get(taskKey(spec.ref));
    if (!entry?.adopted || !spec.concurrency || entry.spec.concurrency) return;
    (entry.spec as TaskSpec).concurrency = spec.concurrency;
    this.scheduler.adopted(entry);
  }

  /** The rate limits an AgentPool declares (spec.rateLimits; undefined once it is deleted). */
  setRateLimits(namespace: string, pool: string, limits: readonly RateLimitDef[] | undefined): void {
    this.scheduler.setRateLimits(namespace, pool, limits);
  }

  /**
   * The namespaces an AgentPool serves and their weights, from its spec.sharing (undefined once it
   * is deleted: its own namespace only).
   */
  setSharing(namespace: string, pool: string, sharing: SharingSpec | undefined): void {
    this.scheduler.setSharing(namespace, pool, sharing ? shareWeights(namespace, sharing) : undefined);
  }

  /** The agent running a task's current attempt, if one is. */
  assignedAgent(ref: TaskRef): string | undefined {
    const e = this.entries.get(taskKey(ref));
    return e && e.phase !== 'queued' ? e.agentId : undefined;
  }

  /** Tells an agent to finish its work and take no more. */
  drainAgent(namespace: string, agentId: string, timeoutSeconds: number): boolean {
    const conn = this.conns.get(agentKey(namespace, agentId));
    if (!conn) return false;
    conn.draining = true;
    conn.send({ drain: { timeoutSeconds } });
    return true;
  }

  poolStats(namespace: string, pool: string): PoolStats {
    const agents = [...(this.byPool.get(`${namespace}/${pool}`) ?? [])];
    const live = agents.filter((a) => !a.draining);
    return {
      connectedAgents: agents.length,
      capacity: live.reduce((s, a) => s + a.capacity, 0),
      inflight: agents.reduce((s, a) => s + a.used, 0),
      queued: this.scheduler.queuedSlots(namespace, pool),
      handlers: [...new Set(live.flatMap((a) => [...a.handlers]))].sort(),
      wanted: this.scheduler.wantedHandlers(namespace, pool),
    };
  }

  /** Agents and free slots of every pool with an agent connected (read by the metrics at scrape). */
  *poolAgents(): Generator<PoolAgents> {
    for (const set of this.byPool.values()) {
      let free = 0;
      let first: AgentConn | undefined;
      for (const a of set) {
        first ??= a;
        if (!a.draining) free += Math.max(0, a.capacity - a.used);
      }
      if (first) yield { namespace: first.namespace, pool: first.pool, agents: set.size, free };
    }
  }

  agents(): {
    agentId: string;
    pod: string;
    namespace: string;
    pool: string;
    capacity: number;
    used: number;
    draining: boolean;
    handlers: string[];
  }[] {
    return [...this.conns.values()].map((c) => ({
      handlers: [...c.handlers].sort(),
      agentId: c.agentId,
      pod: c.pod,
      namespace: c.namespace,
      pool: c.pool,
      capacity: c.capacity,
      used: c.used,
      draining: c.draining,
    }));
  }

  // ---- queue and dispatch ----

  /** Puts a queued entry in its pool's line (its place fixed at the first enqueue). */
  private enqueue(entry: Entry): void {
    if (entry.phase !== 'queued') throw new Error(`task ${entry.key}: enqueue in phase ${entry.phase}`);
    entry.agentId = undefined;
    entry.claim = undefined;
    this.scheduler.enqueue(entry);
    this.kick();
  }

  private kick(): void {
    if (this.stopped) return;
    if (this.dispatching) {
      this.dispatchAgain = true;
      return;
    }
    this.dispatching = true;
    setImmediate(() => void this.dispatchLoop());
  }

  /**
   * One claim transaction per turn: whatever became assignable while the
   * previous turn waited on etcd goes into the next (natural group commit).
   */
  private async dispatchLoop(): Promise<void> {
    try {
      do {
        this.dispatchAgain = false;
        const batch: { entry: Entry; conn: AgentConn }[] = [];
        const placedAt = performance.now();
        for (const { task: entry, agent: conn } of this.scheduler.take(
          (ns, pool) => this.byPool.get(`${ns}/${pool}`),
          this.maxBatch,
        )) {
          if (this.entries.get(entry.key) !== entry || entry.phase !== 'queued') {
            conn.used -= entry.cost;
            this.scheduler.release(entry, true);
            continue;
          }
          move(entry, 'reserve');
          entry.agentId = claimantId(conn.namespace, conn.agentId, entry.spec.ref);
          batch.push({ entry, conn });
        }
        if (batch.length > 0) await this.claimBatch(batch, placedAt);
      } while (this.dispatchAgain && !this.stopped);
    } catch (err) {
      this.log.error('Dispatch failed; retrying', { err });
      setTimeout(() => this.kick(), 500);
    } finally {
      this.dispatching = false;
      if (this.dispatchAgain) this.kick();
    }
  }

  /** `placedAt`: when the turn placed these tasks on agents with free slots. */
  private async claimBatch(batch: { entry: Entry; conn: AgentConn }[], placedAt: number): Promise<void> {
    let outcomes: Awaited<ReturnType<TaskClaims['claimMany']>>;
    try {
      outcomes = await this.claims.claimMany(
        batch.map(({ entry, conn }) => ({
          ref: entry.spec.ref,
          attempt: entry.attempt,
          agentId: entry.agentId as string,
          leaseId: conn.leaseId,
        })),
        this.fences(),
      );
      this.counters.claimTxns += Math.ceil(batch.length / 63);
    } catch (err) {
      for (const { entry, conn } of batch) {
        conn.used -= entry.cost;
        if (entry.phase === 'claiming') {
          this.scheduler.release(entry, true);
          move(entry, 'claimRefused');
          if (entry.cancelled !== undefined) this.forgetCancelled(entry);
          else {
            this.metrics?.requeued(entry.spec.ref.namespace, poolLabel(entry.spec), 'claim_failed');
            this.enqueue(entry);
          }
        }
      }
      throw err;
    }
    const now = performance.now();
    batch.forEach(({ entry, conn }, i) => {
      const o = outcomes[i];
      if (entry.phase !== 'claiming') {
        // Adopted from a re-registering agent while we were claiming it: that attempt runs.
        conn.used -= entry.cost;
        if (o?.ok) void this.claims.release(o.claim, this.fences()).catch(() => undefined);
        return;
      }
      if (!o?.ok) {
        conn.used -= entry.cost;
        this.scheduler.release(entry, true);
        if (o?.reason === 'LeaseNotFound') {
          // Only this agent's claims fail (the rest of the batch committed): it must re-register for a live lease.
          conn.log.warn('Dropping an agent whose lease etcd does not have', { why: o.error.message });
          conn.closeWith('UNAVAILABLE', 'the lease this stream was registered with is gone; register again');
        }
        this.claimRefused(entry, o ?? { reason: 'AlreadyClaimed', message: 'no answer' });
        return;
      }
      if (this.unsendable(entry, conn, o.claim)) return;
      const at = this.scheduler.sendAt(entry, now);
      if (at > now + 1) {
        // Its rate limits' earlier Assigns went out closer together than the rate (their claim
        // transactions returned unevenly): this one waits for its slot, claim written, still claiming.
        const timer = setTimeout(() => this.sendPaced(entry, placedAt), at - now);
        this.paced.set(entry, { conn, claim: o.claim, timer });
        return;
      }
      this.assign(entry, conn, o.claim, now, placedAt);
    });
  }

  /** A paced Assign's slot came: it goes out unless its agent, the task or this dispatcher went meanwhile. */
  private sendPaced(entry: Entry, placedAt: number): void {
    const p = this.paced.get(entry);
    if (!p) return;
    this.paced.delete(entry);
    const { conn, claim } = p;
    // Stopped or deposed: the written claim is left to expire, as an Assign lost in flight would be.
    if (this.stopped) return;
    if (entry.phase !== 'claiming') {
      // Adopted from a re-registering agent while it waited: that attempt runs.
      conn.used -= entry.cost;
      void this.claims.release(claim, this.fences()).catch(() => undefined);
      return;
    }
    if (!this.unsendable(entry, conn, claim)) this.assign(entry, conn, claim, performance.now(), placedAt);
  }

  /**
   * Whether a claimed attempt must not go out after all: cancelled meanwhile (dropped), or its agent
   * or entry gone (claim given back, queued again). Handled here when true.
   */
  private unsendable(entry: Entry, conn: AgentConn, claim: Claim): boolean {
    if (entry.cancelled !== undefined) this.dropUnsent(entry, conn, claim);
    else if (conn.closed || this.entries.get(entry.key) !== entry) this.giveBack(entry, conn, claim);
    else return false;
    return true;
  }

  /** The agent went away while we claimed (or paced): give the claim back and queue again. */
  private giveBack(entry: Entry, conn: AgentConn, claim: Claim): void {
    conn.used -= entry.cost;
    this.scheduler.release(entry, true);
    void this.claims.release(claim, this.fences()).catch(() => undefined);
    move(entry, 'claimRefused');
    if (this.entries.get(entry.key) === entry) {
      this.metrics?.requeued(entry.spec.ref.namespace, poolLabel(entry.spec), 'agent_disconnected');
      this.enqueue(entry);
    }
  }

  /** Cancelled while its claim was written or its Assign paced: it never went out, so it is simply over. */
  private dropUnsent(entry: Entry, conn: AgentConn, claim: Claim): void {
    conn.used -= entry.cost;
    this.scheduler.release(entry, true);
    void this.claims.release(claim, this.fences()).catch(() => undefined);
    move(entry, 'settle');
    if (this.entries.get(entry.key) === entry) this.entries.delete(entry.key);
    this.kick();
  }

  /** Cancelled while claiming, and the claim did not go through: nothing ran, nothing to queue. */
  private forgetCancelled(entry: Entry): void {
    if (this.entries.get(entry.key) === entry) this.entries.delete(entry.key);
    this.kick();
  }

  /** The claim is written: the attempt is the agent's, and the Assign goes out. */
  private assign(entry: Entry, conn: AgentConn, claim: Claim, now: number, placedAt: number): void {
    move(entry, 'claimed');
    entry.claim = claim;
    entry.assignedAt = now;
    conn.assigned.add(entry.key);
    const timeout = entry.spec.timeoutSeconds;
    const deadline = timeout ? Date.now() + timeout * 1000 : 0;
    conn.send({
      assign: {
        taskId: wireTaskId(entry.spec.ref, conn.namespace),
        namespace: entry.spec.ref.namespace,
        workflow: entry.spec.ref.workflow,
        attempt: entry.attempt,
        handler: entry.spec.handler,
        inputJson: JSON.stringify(entry.spec.input ?? null),
        deadlineUnixMs: deadline,
        token: claim.token,
        cost: entry.cost,
        ...(entry.spec.traceId && {
          traceparent: traceparentOf(attemptSpanContext(entry.spec.traceId, entry.spec.ref.task, entry.attempt)),
        }),
        ...(entry.spec.approvals?.length && {
          approvals: entry.spec.approvals.map((d) => ({
            ordinal: d.ordinal,
            approved: d.approved,
            user: d.user ?? '',
            message: d.message ?? '',
            decidedAtUnixMs: Date.parse(d.decidedAt),
            timedOut: d.timedOut ?? false,
          })),
        }),
      },
    });
    this.counters.assigned++;
    this.recordLatency(now - entry.enqueuedAt);
    this.metrics?.assigned(entry.spec.ref.namespace, poolLabel(entry.spec), now - entry.enqueuedAt, now - placedAt);
    this.emit('task', {
      type: 'started',
      ref: entry.spec.ref,
      attempt: entry.attempt,
      agentId: entry.agentId as string,
    });
    if (timeout) entry.timer = setTimeout(() => void this.onDeadline(entry), timeout * 1000 + 1_000);
  }

  private claimRefused(entry: Entry, refusal: { reason: ClaimRefusalReason; error?: Error; message?: string }): void {
    move(entry, 'claimRefused');
    if (refusal.reason === 'Fenced') {
      this.depose(refusal.error?.message ?? 'the leadership fence no longer holds');
      return;
    }
    if (refusal.reason === 'AlreadyCommitted') {
      // Done before (e.g. committed just before a dispatcher restart): report it, do not run it again.
      this.entries.delete(entry.key);
      this.claims.result(entry.spec.ref).then(
        (result) => {
          if (result) this.emit('task', { type: 'committed', ref: entry.spec.ref, result, agentId: result.agentId });
        },
        (err: Error) => this.log.error('Could not read a committed result to report it', { task: entry.key, err }),
      );
      return;
    }
    if (entry.cancelled !== undefined) {
      this.forgetCancelled(entry);
      return;
    }
    // Someone still holds a claim (an agent of a previous dispatcher): try again once it settles.
    this.log.debug('Claim refused; retrying later', {
      task: entry.key,
      reason: refusal.reason,
      why: refusal.error?.message ?? refusal.message,
    });
    this.metrics?.requeued(entry.spec.ref.namespace, poolLabel(entry.spec), 'claim_refused');
    setTimeout(() => {
      if (this.entries.get(entry.key) === entry && entry.phase === 'queued' && !this.scheduler.isQueued(entry))
        this.enqueue(entry);
    }, 1_000);
  }

  private recordLatency(ms: number): void {
    this.dispatchLatencies.push(ms);
    if (this.dispatchLatencies.length > 100_000) this.dispatchLatencies.splice(0, 50_000);
  }

  // ---- streams ----

  private async onRegister(stream: AgentStream, r: Register__Output, identity: AgentIdentity): Promise<AgentConn> {
    const malformed = checkRegister(r);
    if (malformed) throw new Error(malformed);
    const grant = await this.auth.authorize(identity, claimOf(r));
    const lease = await this.leaseFor(grant, r.leaseId);
    const key = agentKey(grant.namespace, grant.agentId);
    lease.owner = key;
    await this.membership.register(
      lease,
      grant.namespace,
      grant.pool,
      { agentId: grant.agentId, pod: grant.pod ?? '', handlers: grant.handlers, capacity: grant.capacity },
      this.fences(),
    );
    const old = this.conns.get(key);
    if (old) this.detach(old);
    this.metrics?.agentRegistered(lease, grant.namespace, grant.pool);
    const conn = new AgentConn(
      { ...grant, pod: grant.pod ?? '', batching: r.protocol >= PROTOCOL_BATCHING },
      lease,
      identity,
      stream,
      this.log.with({ agentId: grant.agentId, pool: grant.pool, namespace: grant.namespace }),
    );
    this.credentials.watchExpiry(conn);
    // etcd dropped the lease (it expired while etcd was unreachable, or was revoked): claims for this
    // agent would fail from now on. End the stream; the agent registers again and gets a new lease.
    const onLeaseLost = () => {
      if (conn.closed || this.conns.get(conn.key) !== conn) return;
      conn.log.warn('Agent lease lost while connected; closing the stream so the agent gets a new one');
      conn.closeWith('UNAVAILABLE', "the agent's lease expired; register again");
      this.onDisconnect(conn);
    };
    lease.once('lost', onLeaseLost);
    conn.onClose(() => lease.off('lost', onLeaseLost));
    const orphan = this.orphanTimers.get(key);
    if (orphan) {
      clearTimeout(orphan);
      this.orphanTimers.delete(key);
    }
    const { held, reported } = await confirmInFlight(this.claims, grant.namespace, grant.agentId, r.inFlight);
    for (const { inf, ref, key: taskKey, claim, cost } of held) {
      let entry = this.entries.get(taskKey);
      if (entry && entry.phase === 'queued') {
        // The engine handed the task out again (e.g. after a leader change) before its agent came
        // back: the running attempt wins; take the queued copy out of line.
        this.scheduler.remove(entry);
        entry.attempt = inf.attempt;
      } else if (entry && entry.phase === 'claiming') {
        entry.attempt = inf.attempt; // its claim will be refused; the outcome is ignored below
      }
      if (!entry) {
        const spec: TaskSpec = {
          ref,
          pool: grant.pool,
          ...(ref.namespace !== grant.namespace && { poolNamespace: grant.namespace }),
          handler: '',
          input: null,
          cost,
        };
        entry = newEntry(taskKey, spec, inf.attempt, cost, { adopted: true });
        this.entries.set(taskKey, entry);
      } else if (entry.phase !== 'committing') {
        // (A commit in flight decides for itself.)
        move(entry, 'adopt');
      }
      entry.agentId = claim.agentId;
      entry.claim = claim;
      conn.used += cost;
      conn.assigned.add(taskKey);
      this.scheduler.adopted(entry); // it runs: it counts against its concurrency key
    }
    const stillYours = held.map((h) => h.inf);
    // Claims on the agent's adopted lease for attempts it no longer has (neither running nor holding
    // a result): e.g. etcd restored from a snapshot taken while it ran them, or its container
    // restarted under the same lease. Nobody will ever finish them, and while the lease is kept they
    // would block their tasks for good: release them (only if still the same claim).
    if (r.leaseId !== '' && lease.id === r.leaseId) {
      for (const key of await this.leases.keysOf(lease.id)) {
        if (await this.claims.dropLegacyClaim(key, this.fences())) {
          conn.log.info('Released a claim of the old layout (claims/) on the agent lease', { key });
          continue;
        }
        const ref = this.claims.refOfClaimKey(key);
        if (!ref || reported.has(taskKey(ref)) || this.entries.get(taskKey(ref))?.claim) continue;
        const claim = await this.claims.current(ref);
        if (claim?.agentId !== claimantId(grant.namespace, grant.agentId, ref)) continue;
        if (await this.claims.release(claim, this.fences()))
          conn.log.info('Released a claim the agent no longer holds', { task: taskKey(ref), attempt: claim.attempt });
      }
    }
    // Attempts we assigned that the agent does not know (the Assign was lost with the old stream).
    for (const entry of this.entries.values()) {
      if (holds(entry, conn) && entry.phase === 'assigned' && !reported.has(entry.key) && entry.claim) {
        this.requeueLost(entry, 'the agent reconnected without it', 'agent_reconnected').catch((err: Error) =>
          this.log.error('Re-queueing failed', { task: entry.key, err }),
        );
      }
    }
    this.conns.set(conn.key, conn);
    const poolKey = `${conn.namespace}/${conn.pool}`;
    let set = this.byPool.get(poolKey);
    if (!set) {
      set = new Set();
      this.byPool.set(poolKey, set);
    }
    set.add(conn);
    conn.send({
      registered: {
        stillYours,
        leaseId: lease.id,
        agentId: grant.agentId,
        namespace: grant.namespace,
        pool: grant.pool,
        leaseTtlSeconds: lease.ttlSeconds,
        protocol: PROTOCOL_VERSION,
      },
    });
    conn.log.info('Agent registered', {
      capacity: conn.capacity,
      handlers: [...conn.handlers],
      adopted: stillYours.length,
      leaseId: lease.id,
      user: identity.username,
    });
    this.kick();
    return conn;
  }

  /** The agent's previous lease if it is alive and bound to this very agent; else a new one. */
  private async leaseFor(grant: Grant, leaseId: string): Promise<KeptLease> {
    if (leaseId !== '') {
      const bound = await this.membership.leaseOf(grant.namespace, grant.pool, grant.agentId);
      if (bound === leaseId) {
        const adopted = await this.leases.adopt(leaseId);
        if (adopted) return adopted;
      }
    }
    const current = this.conns.get(agentKey(grant.namespace, grant.agentId));
    // The same agent identity again (e.g. its container restarted): keep the lease its claims hang on.
    if (current && !current.lease.lost) return current.lease;
    return this.leases.grant();
  }

  /** Keep each connected agent's lease alive while it is heard from; let it lapse when it goes silent. */
  private sweepLeases(): void {
    const silentAfter = this.leases.ttlSeconds * 1000;
    const now = performance.now();
    for (const c of this.conns.values()) {
      if (now - c.lastSeen > silentAfter) this.leases.pause(c.lease);
      else this.leases.resume(c.lease);
    }
  }

  private detach(conn: AgentConn): void {
    conn.close();
    this.byPool.get(`${conn.namespace}/${conn.pool}`)?.delete(conn);
    if (this.conns.get(conn.key) === conn) this.conns.delete(conn.key);
  }

  private onDisconnect(conn: AgentConn): void {
    if (conn.closed && this.conns.get(conn.key) !== conn) return;
    this.detach(conn);
    // Not heard from any more: the lease runs out after its TTL unless the agent comes back.
    this.leases.pause(conn.lease);
    this.metrics?.agentLeft(conn.lease, conn.draining);
    this.stateService.closeStream(conn).catch((err: Error) => conn.log.warn('Closing watches failed', { err }));
    conn.log.info('Agent stream closed', { assigned: conn.assigned.size });
    if (conn.assigned.size === 0 || this.stopped) return;
    // The agent may be alive (its lease says so) and reconnect; if it does not, its work goes elsewhere.
    this.orphanTimers.set(
      conn.key,
      setTimeout(() => {
        this.orphanTimers.delete(conn.key);
        if (this.conns.has(conn.key)) return;
        for (const key of conn.assigned) {
          const entry = this.entries.get(key);
          if (entry && holds(entry, conn) && entry.phase === 'assigned')
            this.requeueLost(entry, 'the agent stayed disconnected', 'agent_disconnected').catch((err: Error) =>
              this.log.error('Re-queueing failed', { task: entry.key, err }),
            );
        }
      }, this.orphanTimeoutMs),
    );
  }

  private onMessage(conn: AgentConn, m: AgentMessage__Output): void {
    switch (m.msg) {
      case 'result':
        if (m.result) this.onResult(conn, m.result);
        return;
      case 'results':
        for (const r of m.results?.results ?? []) this.onResult(conn, r);
        return;
      case 'heartbeat':
        if (m.heartbeat?.draining && !conn.draining) {
          conn.draining = true;
          conn.log.info('Agent is draining');
        }
        return;
      case 'progress': {
        const p = m.progress;
        if (!p) return;
        const entry = this.ownEntry(conn, p.taskId, p.attempt, p.token);
        if (isRefusal(entry)) {
          this.wireError(conn, entry, p.taskId);
          return;
        }
        this.emit('task', {
          type: 'progress',
          ref: entry.spec.ref,
          attempt: entry.attempt,
          fraction: p.fraction,
          message: p.message.slice(0, 1024),
        });
        return;
      }
      case 'log': {
        const l = m.log;
        if (!l) return;
        const entry = this.ownEntry(conn, l.taskId, l.attempt, Number(l.token));
        if (isRefusal(entry)) {
          // A late end after the result (or a stale attempt) is not worth an error: the log is best effort.
          if (entry.code !== 'UNKNOWN_TASK' && entry.code !== 'STALE_ATTEMPT') this.wireError(conn, entry, l.taskId);
          else conn.log.debug('Task log lines dropped', { taskId: l.taskId, attempt: l.attempt, why: entry.message });
          return;
        }
        this.taskLogs.append(
          { ...entry.spec.ref, attempt: entry.attempt },
          logLines(l.lines),
          l.end,
          streamText(l.chunks),
        );
        return;
      }
      case 'spawn':
        if (m.spawn) this.onSpawn(conn, m.spawn);
        return;
      case 'mail': {
        if (!m.mail) return;
        const refused = relayMail(conn, m.mail, (id) => this.conns.get(agentKey(conn.namespace, id)));
        if (refused) this.wireError(conn, refused, '');
        return;
      }
      case 'drained':
        conn.log.info('Agent drained');
        conn.draining = true;
        return;
      case 'reauth':
        if (m.reauth)
          this.credentials.reauth(conn, m.reauth.token).catch((err: Error) => conn.log.error('Reauth failed', { err }));
        return;
      case 'state': {
        const q = m.state;
        const ref = q && this.scopeOf(conn, 'state', q);
        if (q && ref)
          this.stateService.state(conn, ref, q).catch((err: Error) => conn.log.error('State request failed', { err }));
        return;
      }
      case 'lock': {
        const q = m.lock;
        const ref = q && this.scopeOf(conn, 'lock', q);
        if (q && ref)
          this.stateService
            .lock(conn, conn.lease, ref, q)
            .catch((err: Error) => conn.log.error('Lock request failed', { err }));
        return;
      }
      default:
        throw new WireMessageError('INVALID', `unexpected message ${m.msg ?? '(empty)'}`);
    }
  }

  /**
   * SpawnTasks: checked here, added by the engine, and answered with a SpawnAck only once the engine
   * settles it: ok after the children's records are durable in etcd, or a refusal. The answer goes to
   * the agent's stream at that time (a newer one after a reconnect; none while it is away: the agent
   * re-sends until answered, and the engine takes a copy without adding the children twice). A
   * deposed or stopping dispatcher answers nothing, so the agent takes the request to the new leader.
   */
  private onSpawn(conn: AgentConn, s: SpawnTasks__Output): void {
    const { key } = conn;
    const { requestId, parentTaskId, attempt } = s;
    let answered = false;
    const answer = (o: SpawnOutcome) => {
      if (answered || this.deposed || this.stopped) return;
      answered = true;
      if (!o.ok) this.counters.refused++;
      const errorCode = o.ok ? '' : o.code;
      const errorMessage = o.ok ? '' : o.message;
      this.conns.get(key)?.send({ spawnAck: { requestId, parentTaskId, attempt, errorCode, errorMessage } });
    };
    const entry = this.ownEntry(conn, s.parentTaskId, s.attempt, s.token);
    if (isRefusal(entry)) {
      answer({ ok: false, ...entry });
      return;
    }
    const children = spawnedChildren(s);
    if (!Array.isArray(children)) {
      answer({ ok: false, ...children });
      return;
    }
    this.emit('task', { type: 'spawn', ref: entry.spec.ref, attempt: entry.attempt, children, settle: answer });
  }

  /**
   * The workflow a state or lock request may act in: that of the agent's current attempt it names.
   * Otherwise the request is answered PERMISSION_DENIED here and undefined returned.
   */
  private scopeOf(
    conn: AgentConn,
    kind: 'state' | 'lock',
    q: { id: number | string; taskId: string; attempt: number; token: number },
  ): TaskRef | undefined {
    const entry = this.ownEntry(conn, q.taskId, q.attempt, q.token);
    if (!isRefusal(entry)) return entry.spec.ref;
    const answer = {
      id: String(q.id),
      errorCode: 'PERMISSION_DENIED',
      errorMessage: `${entry.code}: ${entry.message}`,
    };
    conn.send(kind === 'state' ? { state: answer } : { lock: answer });
    return undefined;
  }

  /** The entry this agent may speak about, or the refusal saying why not. */
  private ownEntry(conn: AgentConn, taskId: string, attempt: number, token: number): Entry | WireRefusal {
    const ref = refOf(conn.namespace, taskId);
    if (isRefusal(ref)) return ref;
    const entry = this.entries.get(taskKey(ref));
    if (!entry || !holds(entry, conn) || entry.phase === 'queued')
      return { code: 'UNKNOWN_TASK', message: `this agent holds no claim on ${taskId}` };
    if (!servedBy(entry.spec, conn))
      return { code: 'WRONG_POOL', message: `${taskId} belongs to pool ${poolLabel(entry.spec)}, not ${conn.pool}` };
    if (entry.attempt !== attempt || entry.claim?.token !== token) {
      return {
        code: 'STALE_ATTEMPT',
        message: `${taskId} is at attempt ${entry.attempt} (token ${entry.claim?.token}), not ${attempt} (token ${token})`,
      };
    }
    return entry;
  }

  private wireError(conn: AgentConn, refusal: WireRefusal, taskId: string): void {
    this.counters.refused++;
    conn.send({ error: { code: refusal.code, message: refusal.message, taskId } });
  }

  private onResult(conn: AgentConn, r: Result__Output): void {
    const ref = refOf(conn.namespace, r.taskId);
    if (isRefusal(ref)) {
      this.wireError(conn, ref, r.taskId);
      return;
    }
    const result = parseResult(r);
    if (isRefusal(result)) {
      this.wireError(conn, result, r.taskId);
      return;
    }
    const late = `${r.taskId}@${r.attempt}`;
    const held = conn.cancelling.get(late);
    if (held !== undefined) {
      conn.cancelling.delete(late);
      conn.used -= held;
      this.ack(conn, r, 'SUPERSEDED', 'the attempt was cancelled or replaced');
      this.kick();
      return;
    }
    const key = taskKey(ref);
    const entry = this.entries.get(key);
    if (entry && !servedBy(entry.spec, conn) && !entry.adopted) {
      // Another namespace's task is as unknown as one that does not exist: no probing across tenants.
      const refusal: WireRefusal =
        ref.namespace === conn.namespace
          ? { code: 'WRONG_POOL', message: `${r.taskId} belongs to pool ${poolLabel(entry.spec)}, not ${conn.pool}` }
          : { code: 'UNKNOWN_TASK', message: `this agent holds no claim on ${r.taskId}` };
      this.wireError(conn, refusal, r.taskId);
      return;
    }
    if (entry && holds(entry, conn)) {
      if (entry.phase === 'committing') return; // a re-send while the commit is in flight
      if (entry.attempt !== r.attempt || entry.claim?.token !== r.token || entry.phase !== 'assigned') {
        this.ack(conn, r, 'SUPERSEDED', 'the attempt was cancelled or replaced');
        return;
      }
      move(entry, 'resultReceived');
      if (entry.assignedAt !== undefined)
        this.metrics?.ran(ref.namespace, poolLabel(entry.spec), performance.now() - entry.assignedAt);
      const commit = { ref, claim: entry.claim, result, conn, wireAttempt: r.attempt, wireTaskId: r.taskId };
      // Its log's last lines are written first: once the task is over, `logs` shows all of it.
      const logged = this.taskLogs.flushFor({ ...ref, attempt: entry.attempt });
      if (!logged) this.committer.add(commit);
      else
        logged.then(
          () => this.committer.add(commit),
          (err: Error) => {
            this.log.warn('Could not write a task log before its result', { task: r.taskId, error: err });
            this.committer.add(commit);
          },
        );
      return;
    }
    // Not ours in memory (e.g. we restarted): the claim in etcd decides.
    judgeUntracked(this.claims, ref, r, claimantId(conn.namespace, conn.agentId, ref))
      .then((v) => {
        switch (v.kind) {
          case 'commit':
            this.committer.add({ ref, claim: v.claim, result, conn, wireAttempt: r.attempt, wireTaskId: r.taskId });
            return;
          case 'committed':
            this.ack(conn, r, 'COMMITTED', 'already committed');
            return;
          case 'superseded':
            this.ack(conn, r, 'SUPERSEDED', 'the attempt no longer holds the claim');
            return;
          case 'orphan': {
            // When that same attempt is (or soon is) queued again, commit it rather than run it again.
            const orphan: Orphan = { conn, r, result };
            const entry = this.entries.get(key);
            if (entry ? this.commitOrphan(entry, orphan) : this.orphans.park(key, orphan)) return;
            break;
          }
          case 'unknown':
            break;
        }
        this.wireError(conn, { code: 'UNKNOWN_TASK', message: `this agent holds no claim on ${r.taskId}` }, r.taskId);
      })
      .catch((err: Error) => {
        // etcd did not answer: say nothing (a refusal would make the agent drop the result); the agent
        // keeps it and re-sends it after its next reconnect.
        conn.log.warn('Could not look up the claim of a result; it stays with the agent', { taskId: r.taskId, err });
      });
  }

  private refuseOrphan(o: Orphan): void {
    if (o.conn.closed) return; // it re-sends on its next stream and gets its answer then
    this.wireError(o.conn, { code: 'UNKNOWN_TASK', message: `this agent holds no claim on ${o.r.taskId}` }, o.r.taskId);
  }

  /**
   * Commits an orphaned result if `entry` waits for exactly that attempt in the agent's pool: claims it for
   * the agent (bound to its current lease) and commits, as if it had been assigned and just answered.
   * False if the entry wants something else (another attempt, already dispatched).
   */
  private commitOrphan(entry: Entry, o: Orphan): boolean {
    const { conn, r } = o;
    if (entry.phase !== 'queued' || entry.attempt !== r.attempt || !servedBy(entry.spec, conn)) return false;
    if (conn.closed || this.deposed || this.stopped) return false;
    this.scheduler.remove(entry);
    move(entry, 'reserve');
    const ref = entry.spec.ref;
    const agentId = claimantId(conn.namespace, conn.agentId, ref);
    entry.agentId = agentId;
    const back = (why: RequeueReason) => {
      if (this.entries.get(entry.key) !== entry || entry.phase !== 'claiming') return;
      move(entry, 'claimRefused');
      this.metrics?.requeued(ref.namespace, poolLabel(entry.spec), why);
      this.enqueue(entry);
    };
    this.claims
      .claimMany([{ ref, attempt: r.attempt, agentId, leaseId: conn.leaseId }], this.fences())
      .then(([out]) => {
        if (this.entries.get(entry.key) !== entry || entry.phase !== 'claiming') {
          if (out?.ok) void this.claims.release(out.claim, this.fences()).catch(() => undefined);
          return;
        }
        if (!out?.ok) {
          back('claim_refused');
          if (out?.reason === 'Fenced') this.depose(out.error.message);
          else this.refuseOrphan(o);
          return;
        }
        move(entry, 'claimed');
        entry.claim = out.claim;
        this.emit('task', { type: 'started', ref, attempt: r.attempt, agentId });
        move(entry, 'resultReceived');
        this.counters.orphansCommitted++;
        conn.log.info('Committing a result whose claim had gone with the lease, instead of running it again', {
          taskId: r.taskId,
          attempt: r.attempt,
        });
        this.committer.add({
          ref,
          claim: out.claim,
          result: o.result,
          conn,
          wireAttempt: r.attempt,
          wireTaskId: r.taskId,
        });
      })
      .catch((err: Error) => {
        // etcd did not answer: the task goes back to the queue; the agent keeps the result and re-sends it.
        back('claim_failed');
        conn.log.warn('Could not claim an orphaned result; its task is queued again', { taskId: r.taskId, err });
      });
    return true;
  }

  private ack(
    conn: AgentConn,
    r: { taskId: string; attempt: number },
    status: 'COMMITTED' | 'SUPERSEDED',
    message: string,
  ): void {
    if (status === 'SUPERSEDED') this.counters.superseded++;
    conn.send({ ack: { taskId: r.taskId, attempt: r.attempt, status, message } });
  }

  /** What a group commit's outcome means for the attempt, its agent and the engine. */
  private committed(c: PendingCommit, o: CommitOutcome | undefined): void {
    if (o && !o.ok && o.reason === 'Fenced') {
      // Our leadership is gone, not the attempt's claim: the agent must keep the result for the next leader.
      this.depose(o.error.message);
      return;
    }
    if (this.deposed) return;
    const entry = this.entries.get(taskKey(c.ref));
    if (o?.ok) {
      this.counters.committed++;
      this.metrics?.ended(
        c.ref.namespace,
        connPoolLabel(c.ref, c.conn),
        (o.stored ?? c.result).ok ? 'succeeded' : 'failed',
      );
      this.metrics?.usage(c.ref.namespace, connPoolLabel(c.ref, c.conn), (o.stored ?? c.result).usage);
      this.ack(c.conn, { taskId: c.wireTaskId, attempt: c.wireAttempt }, 'COMMITTED', '');
      if (entry) this.settle(entry, c.conn);
      const result: TaskResult = {
        ...(o.stored ?? c.result),
        attempt: c.claim.attempt,
        agentId: c.claim.agentId,
        token: c.claim.token,
        committedAt: new Date().toISOString(),
      };
      this.emit('task', { type: 'committed', ref: c.ref, result, agentId: c.claim.agentId });
      return;
    }
    this.ack(
      c.conn,
      { taskId: c.wireTaskId, attempt: c.wireAttempt },
      'SUPERSEDED',
      o ? o.error.message : 'not committed',
    );
    if (entry && entry.phase === 'committing') this.settle(entry, c.conn);
  }

  /** The attempt is over: free its slot and forget it. */
  private settle(entry: Entry, conn?: AgentConn): void {
    if (allows(entry.phase, 'settle')) move(entry, 'settle');
    else if (entry.phase !== 'settled') {
      // Refused, not applied: a settle from the wrong phase is a bug worth seeing, not a crash mid-batch.
      this.log.error('Refused an illegal task transition', { task: entry.key, phase: entry.phase, event: 'settle' });
      return;
    }
    if (entry.timer) clearTimeout(entry.timer);
    this.scheduler.release(entry);
    const agent = conn ?? this.agentOf(entry);
    if (agent?.assigned.delete(entry.key)) agent.used -= entry.cost;
    if (this.entries.get(entry.key) === entry) this.entries.delete(entry.key);
    this.kick();
  }

  /** The connection of the agent the entry's claim names, if it is connected. */
  private agentOf(entry: Entry): AgentConn | undefined {
    return entry.agentId ? this.conns.get(agentKeyOfClaimant(entry.spec.ref, entry.agentId)) : undefined;
  }

  // ---- failures ----

  /**
   * The leadership fence failed: another leader may be running. Acknowledge nothing more, dispatch
   * nothing more, and end every stream UNAVAILABLE so agents take their unacknowledged results and
   * running attempts to the new leader (which adopts their leases). The operator stops this process
   * when it sees its lease lost; until then this dispatcher is inert.
   */
  private depose(why: string): void {
    if (this.deposed) return;
    this.deposed = true;
    this.stopped = true;
    this.committer.stop();
    this.log.error('Leadership fence failed; closing every agent stream so agents go to the new leader', {
      why,
      agents: this.conns.size,
    });
    for (const c of this.conns.values()) {
      c.closeWith('UNAVAILABLE', 'this dispatcher is no longer the leader; reconnect to the new leader');
    }
  }

  /**
   * A task's key was deleted at `revision`: if an attempt we track as assigned held it, its claim
   * vanished (a claim exists from its token on, and only a delete after that removes it): ours to
   * re-queue. A delete from before the token was of an earlier claim of the task.
   */
  private onClaimGone(key: string, revision: number): void {
    const entry = this.entries.get(key);
    if (!entry) return;
    if (entry.phase !== 'assigned' || !entry.claim || revision <= entry.claim.token) return;
    const agentId = entry.agentId ?? '';
    this.metrics?.ended(entry.spec.ref.namespace, poolLabel(entry.spec), 'retried');
    this.metrics?.requeued(entry.spec.ref.namespace, poolLabel(entry.spec), 'lease_expired');
    if (entry.adopted) {
      this.settle(entry);
      this.emit('task', { type: 'orphanLost', ref: entry.spec.ref, attempt: entry.attempt, agentId });
      return;
    }
    this.counters.lost++;
    this.log.warn('Attempt lost with its agent lease; re-queueing', { task: key, attempt: entry.attempt, agentId });
    const agent = this.agentOf(entry);
    if (agent?.assigned.delete(key)) agent.used -= entry.cost;
    if (entry.timer) clearTimeout(entry.timer);
    this.scheduler.release(entry);
    this.emit('task', {
      type: 'lost',
      ref: entry.spec.ref,
      attempt: entry.attempt,
      agentId,
      reason: 'the agent lease expired',
    });
    move(entry, 'lost');
    entry.attempt++;
    entry.enqueuedAt = performance.now();
    entry.assignedAt = undefined;
    this.enqueue(entry);
  }

  /**
   * Takes an attempt back from its agent: releases the claim (so a late result
   * is refused), sends Cancel, and keeps the agent's slot taken until its
   * Result for the attempt arrives. The entry leaves the dispatcher's books.
   */
  private async takeBack(entry: Entry, reason: string): Promise<void> {
    const claim = entry.claim;
    const agent = this.agentOf(entry);
    if (entry.timer) clearTimeout(entry.timer);
    // Its key's slot is free once the claim goes (below): a late result of it can no longer commit.
    this.scheduler.release(entry);
    if (this.entries.get(entry.key) === entry) this.entries.delete(entry.key);
    move(entry, 'takeBack');
    if (agent?.assigned.delete(entry.key)) {
      const id = wireTaskId(entry.spec.ref, agent.namespace);
      agent.cancelling.set(`${id}@${entry.attempt}`, entry.cost);
      agent.send({ cancel: { taskId: id, attempt: entry.attempt, reason } });
    }
    if (claim) await this.claims.release(claim, this.fences()).catch(() => undefined);
  }

  /** Takes an attempt away from a live-but-unreachable agent and queues the next attempt. */
  private async requeueLost(entry: Entry, reason: string, why: RequeueReason): Promise<void> {
    const agentId = entry.agentId ?? '';
    const attempt = entry.attempt;
    this.metrics?.ended(entry.spec.ref.namespace, poolLabel(entry.spec), 'retried');
    this.metrics?.requeued(entry.spec.ref.namespace, poolLabel(entry.spec), why);
    await this.takeBack(entry, reason);
    if (entry.adopted) {
      this.emit('task', { type: 'orphanLost', ref: entry.spec.ref, attempt, agentId });
      return;
    }
    this.counters.lost++;
    this.emit('task', { type: 'lost', ref: entry.spec.ref, attempt, agentId, reason });
    const next = newEntry(entry.key, entry.spec, attempt + 1, entry.cost, {
      ...(entry.seq !== undefined && { seq: entry.seq }),
    });
    if (!this.entries.has(entry.key)) {
      this.entries.set(entry.key, next);
      this.enqueue(next);
    }
  }

  private async onDeadline(entry: Entry): Promise<void> {
    if (entry.phase !== 'assigned' || this.entries.get(entry.key) !== entry) return;
    this.counters.timedOut++;
    this.metrics?.ended(entry.spec.ref.namespace, poolLabel(entry.spec), 'failed');
    const agentId = entry.agentId ?? '';
    await this.takeBack(entry, `deadline of ${entry.spec.timeoutSeconds}s exceeded`);
    this.emit('task', { type: 'timedOut', ref: entry.spec.ref, attempt: entry.attempt, agentId });
  }
}
