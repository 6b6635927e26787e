import { EventEmitter } from 'node:events';
import { readFile } from 'node:fs/promises';
import { type ChannelCredentials, credentials, Metadata } from '@grpc/grpc-js';
import type { AgentMessage } from '../gen/agentflow/v1/AgentMessage.ts';
import type { Assign__Output } from '../gen/agentflow/v1/Assign.ts';
import type { DispatcherClient } from '../gen/agentflow/v1/Dispatcher.ts';
import type { DispatcherMessage__Output } from '../gen/agentflow/v1/DispatcherMessage.ts';
import type { InFlight } from '../gen/agentflow/v1/InFlight.ts';
import type { Registered__Output } from '../gen/agentflow/v1/Registered.ts';
import type { Result } from '../gen/agentflow/v1/Result.ts';
import type { TaskError__Output } from '../gen/agentflow/v1/TaskError.ts';
import type { WireError__Output } from '../gen/agentflow/v1/WireError.ts';
import { Backoff } from '../lib/backoff.ts';
import type { Logger } from '../lib/log.ts';
import { agentflowProto, KEEPALIVE_OPTIONS } from '../lib/proto.ts';
import { PROTOCOL_VERSION } from '../lib/wire-batch.ts';
import type { Held } from '../state/lock.ts';
import { Attempt, attemptKey } from './attempt.ts';
import { AttemptLog } from './attempt-log.ts';
import { Connection } from './connection.ts';
import { AgentConfigError } from './errors.ts';
import { KeyedMutex } from './keyed-mutex.ts';
import { LogShipper, logText } from './log-shipper.ts';
import { type AgentOptions, type ResolvedOptions, resolveOptions } from './options.ts';
import type { Outcome } from './outcome.ts';
import { LockTimeoutError, RemoteState } from './remote-state.ts';
import { SpawnRequests } from './spawns.ts';
import { createTaskContext, type MailListener, type TaskHost } from './task-context.ts';
import type { MailMeta } from './types.ts';

/**
 * How soon the channel tries the dispatcher again after a failed connection.
 * grpc-js's own back-off grows to 120 s, and while it waits every new stream
 * fails at once with the old error: after a leader failover an agent stayed
 * away 5 s past the new leader's start and came back after its lease had
 * expired (test/integration/workflow/failover.test.ts, the spawn case, failed
 * about one run in five). Capped at 1 s, like DEFAULT_RECONNECT.
 */
const RECONNECT_CHANNEL_OPTIONS = {
  'grpc.initial_reconnect_backoff_ms': 100,
  'grpc.max_reconnect_backoff_ms': 1_000,
} as const;

export type AgentState = 'idle' | 'starting' | 'running' | 'draining' | 'stopped' | 'failed';

export interface TaskSummary {
  taskId: string;
  attempt: number;
  handler: string;
  namespace: string;
  workflow: string;
}

export interface AgentEvents {
  /** A stream is registered; `stillYours` attempts survived the reconnect. */
  connected: [{ stillYours: number }];
  disconnected: [{ error?: Error }];
  taskStarted: [TaskSummary];
  /** `reported: false` when the claim was gone and no Result was sent. */
  taskFinished: [TaskSummary & { durationMs: number; reported: boolean; error?: TaskError__Output }];
  acked: [{ taskId: string; attempt: number; status: 'COMMITTED' | 'SUPERSEDED' }];
  wireError: [WireError__Output];
  mail: [MailMeta & { payload: unknown }];
  /** The dispatcher refused the agent's credentials or registration (the agent keeps retrying). */
  refused: [{ code: number; details: string }];
  draining: [];
  drained: [];
  stopped: [];
  /** Unexpected trouble the agent survives (a session it cannot reopen, a message it cannot handle); only emitted when someone listens. */
  error: [Error];
}

/** Identifies this SDK in Register. */
export const RUNTIME_VERSION = 'agentflow-agent-ts/0.1.0';

// After a forced abort, handlers that honour their signal get this long to settle so their Results go out.
const ABORT_SETTLE_MS = 1_000;
// How long the dispatcher gets to read our last messages after we half-close the stream.
const END_GRACE_MS = 2_000;

interface Pending {
  result: Result;
  cost: number;
  /** The stream it was last sent on; only a refusal on that stream can be about it. */
  sentOn: Connection | undefined;
}

interface Deferred<T = void> {
  promise: Promise<T>;
  resolve: (v: T) => void;
}

function deferred<T = void>(): Deferred<T> {
  let resolve: (v: T) => void = () => undefined;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/**
 * The agent runtime: one authenticated TLS Connect stream to the dispatcher,
 * which keeps the agent's lease, performs its state and lock operations and
 * assigns it attempts. The agent holds no datastore credentials. See createAgent.
 */
export class Agent extends EventEmitter<AgentEvents> {
  /** The agent's id: the dispatcher's (from the verified identity) once registered. */
  id: string;
  private readonly opts: ResolvedOptions;
  private log: Logger;
  private current: AgentState = 'idle';
  private client: DispatcherClient | undefined;
  private clientCa: string | undefined;
  private leaseId = '';
  private token = '';
  private credentialTimer: NodeJS.Timeout | undefined;
  private readonly remote: RemoteState;
  private conn: Connection | undefined;
  private readonly running = new Map<string, Attempt>();
  private readonly settling = new Set<Promise<void>>();
  private readonly pending = new Map<string, Pending>();
  /** Assigns of an attempt claimed again while its aborted run was still settling. */
  private readonly deferredAssigns = new Map<string, Assign__Output>();
  /** Spawns awaiting their SpawnAck; they go out on whichever stream is registered. */
  private readonly spawns = new SpawnRequests((msg) => {
    if (this.conn?.registered) this.conn.send({ spawn: msg });
  });
  /**
   * What attempts log and stream, on its way to the dispatcher's task logs (dropped without a stream
   * that reads them; streamed chunks dropped too by a dispatcher older than protocol 4).
   */
  private readonly shipper = new LogShipper((log) => {
    if (!this.conn?.registered || !this.conn.taskLogs) return;
    if (log.chunks && !this.conn.streams) {
      const { chunks: _, ...lines } = log;
      if (lines.lines.length > 0 || lines.end) this.conn.send({ log: lines }, true);
      return;
    }
    this.conn.send({ log }, true);
  });
  private readonly mailboxes = new Map<string, Set<MailListener>>();
  private readonly streamBackoff: Backoff;
  private readonly mutex = new KeyedMutex();
  private readonly registeredWaiters = new Set<() => void>();
  private readonly stopped = deferred();
  private heartbeat: NodeJS.Timeout | undefined;
  private heartbeatEvery = 0;
  private starting: Promise<void> | undefined;
  private loop: Promise<void> | undefined;
  private shutdown: Promise<void> | undefined;
  private stopping = false;
  private wake: (() => void) | undefined;
  private drainAt = Number.POSITIVE_INFINITY;
  private drainTimer: NodeJS.Timeout | undefined;
  private readonly drainExpired = deferred();
  private drainOver = false;
  private idle: Deferred | undefined;
  private signalHandler: (() => void) | undefined;
  private signalCount = 0;
  private readonly maxPending: number;

  constructor(options: AgentOptions) {
    super();
    this.opts = resolveOptions(options);
    this.id = this.opts.agentId;
    this.log = this.opts.logger.with({ agentId: this.id, pool: this.opts.pool });
    this.streamBackoff = new Backoff(this.opts.reconnect);
    this.remote = new RemoteState({ registered: (signal) => this.registeredConn(signal) });
    // Credits keep unacknowledged results near `capacity`; this only guards against a dispatcher that never acks.
    this.maxPending = 4 * this.opts.capacity + 64;
  }

  get state(): AgentState {
    return this.current;
  }

  /** Attempts whose handlers are running now. */
  get inFlight(): number {
    return this.running.size;
  }

  /** Results sent and not yet acknowledged. */
  get unacknowledged(): number {
    return this.pending.size;
  }

  /**
   * Reads the credentials and starts connecting to the dispatcher. Resolves
   * once connecting has begun (listen for 'connected' to know the stream is
   * registered); rejects, leaving the agent 'failed', if the token or CA
   * cannot be read.
   */
  start(): Promise<void> {
    if (this.current !== 'idle') return Promise.reject(new Error(`Agent.start: the agent is ${this.current}`));
    this.starting = this.boot();
    return this.starting;
  }

  /**
   * Stops taking work, waits up to `timeoutMs` for in-flight attempts and the
   * acknowledgement of their results, aborts what is left, sends Drained and
   * stops. Calling it again (or stop) can only shorten the wait.
   */
  drain(timeoutMs: number = this.opts.drainTimeoutMs): Promise<void> {
    if (this.current === 'idle') {
      this.setState('stopped');
      this.stopped.resolve();
      return Promise.resolve();
    }
    if (this.current === 'failed' || this.current === 'stopped') return this.stopped.promise;
    this.tightenDrain(timeoutMs);
    this.shutdown ??= this.runShutdown();
    return this.shutdown;
  }

  /** drain() with a grace of `graceMs` (default 0: abort everything now), then stop. */
  stop(opts: { graceMs?: number } = {}): Promise<void> {
    return this.drain(opts.graceMs ?? 0);
  }

  /** Resolves when the agent has stopped (after a drain, a stop or a failed start). */
  untilStopped(): Promise<void> {
    return this.stopped.promise;
  }

  // ---- lifecycle ----

  private setState(next: AgentState): void {
    if (this.current === next) return;
    this.log.debug('Agent state changed', { from: this.current, to: next });
    this.current = next;
  }

  private async boot(): Promise<void> {
    this.setState('starting');
    const o = this.opts;
    try {
      this.token = await this.readToken();
      await this.ensureClient();
    } catch (err) {
      this.log.error('Agent failed to start', { error: err as Error });
      this.setState('failed');
      this.stopped.resolve();
      throw err;
    }
    this.setState('running');
    this.log.info('Agent started', {
      dispatcher: o.dispatcher,
      capacity: o.capacity,
      handlers: [...o.handlers.keys()],
    });
    this.credentialTimer = setInterval(() => void this.checkCredentials(), o.credentialCheckMs);
    this.credentialTimer.unref();
    this.heartbeatEvery = o.heartbeatMs;
    this.heartbeat = setInterval(() => this.sendHeartbeat(), o.heartbeatMs);
    this.heartbeat.unref();
    if (o.installSignalHandlers) this.installSignals();
    this.loop = this.runLoop();
  }

  private installSignals(): void {
    this.signalHandler = () => {
      this.signalCount++;
      // A second signal means "now": whoever sends it has run out of patience.
      if (this.signalCount === 1) {
        this.log.info('Signal received; draining');
        this.drain().catch((err: Error) => this.log.error('Drain failed', { error: err }));
      } else {
        this.log.warn('Second signal received; stopping now');
        this.stop().catch((err: Error) => this.log.error('Stop failed', { error: err }));
      }
    };
    process.on('SIGTERM', this.signalHandler);
    process.on('SIGINT', this.signalHandler);
  }

  private async runShutdown(): Promise<void> {
    await this.starting?.catch(() => undefined);
    if (this.current !== 'running') return this.stopped.promise;
    this.setState('draining');
    this.emit('draining');
    this.log.info('Agent draining', { inFlight: this.running.size, unacknowledged: this.pending.size });
    this.sendHeartbeat();
    this.idle = deferred();
    this.checkIdle();
    const finished = await Promise.race([
      this.idle.promise.then(() => true),
      this.drainExpired.promise.then(() => false),
    ]);
    this.drainOver = true;
    if (!finished && this.running.size > 0) {
      this.log.warn('Drain timed out; aborting the attempts still running', { inFlight: this.running.size });
      for (const a of this.running.values()) a.abort('DRAIN_TIMEOUT', 'the agent is shutting down');
      await atMost(Promise.allSettled([...this.settling]), ABORT_SETTLE_MS);
    }
    if (this.conn?.registered) this.conn.send({ drained: {} });
    this.log.info('Agent drained', { unacknowledged: this.pending.size, abandoned: this.running.size });
    this.emit('drained');
    await this.teardown();
  }

  private tightenDrain(timeoutMs: number): void {
    const at = Date.now() + Math.max(0, timeoutMs);
    if (at >= this.drainAt) return;
    this.drainAt = at;
    if (this.drainTimer) clearTimeout(this.drainTimer);
    this.drainTimer = setTimeout(() => this.drainExpired.resolve(), Math.max(0, timeoutMs));
  }

  private async teardown(): Promise<void> {
    this.stopping = true;
    this.wake?.();
    if (this.heartbeat) clearInterval(this.heartbeat);
    if (this.credentialTimer) clearInterval(this.credentialTimer);
    if (this.drainTimer) clearTimeout(this.drainTimer);
    if (this.signalHandler) {
      process.off('SIGTERM', this.signalHandler);
      process.off('SIGINT', this.signalHandler);
    }
    for (const w of this.registeredWaiters) w();
    this.spawns.rejectAll(new Error('the agent is stopping'));
    this.shipper.clear();
    await this.conn?.end(END_GRACE_MS);
    await this.loop;
    this.client?.close();
    this.setState('stopped');
    this.log.info('Agent stopped');
    this.emit('stopped');
    this.stopped.resolve();
  }

  // ---- credentials and stream ----

  private async readToken(): Promise<string> {
    const t = this.opts.token;
    let token: string;
    if (typeof t === 'function') {
      try {
        token = await t();
      } catch (err) {
        throw new AgentConfigError('token', `the token function failed: ${(err as Error).message}`);
      }
    } else {
      try {
        token = await readFile(t, 'utf8');
      } catch (err) {
        throw new AgentConfigError('token', `cannot read the token file ${t}: ${(err as Error).message}`);
      }
    }
    token = token.trim();
    if (token === '') throw new AgentConfigError('token', 'the token is empty');
    return token;
  }

  private async readCa(): Promise<string> {
    const ca = this.opts.ca;
    if (Buffer.isBuffer(ca)) return ca.toString('utf8');
    try {
      return await readFile(ca, 'utf8');
    } catch (err) {
      throw new AgentConfigError('ca', `cannot read the dispatcher CA file ${ca}: ${(err as Error).message}`);
    }
  }

  /** (Re)creates the gRPC client when the CA bundle changed (the operator rotated its CA). */
  private async ensureClient(): Promise<void> {
    const o = this.opts;
    let creds: ChannelCredentials;
    let ca = '';
    if (o.insecurePlaintext) {
      if (this.client) return;
      creds = credentials.createInsecure();
    } else {
      ca = await this.readCa();
      if (this.client && ca === this.clientCa) return;
      creds = credentials.createSsl(Buffer.from(ca));
    }
    const Client = agentflowProto().agentflow.v1.Dispatcher;
    const old = this.client;
    this.client = new Client(o.dispatcher, creds, {
      ...KEEPALIVE_OPTIONS,
      ...RECONNECT_CHANNEL_OPTIONS,
      ...(o.serverName && { 'grpc.ssl_target_name_override': o.serverName, 'grpc.default_authority': o.serverName }),
    });
    this.clientCa = ca;
    old?.close();
  }

  /** A rotated token goes to the dispatcher at once (Reauth), so the stream outlives the old token. */
  private async checkCredentials(): Promise<void> {
    try {
      const token = await this.readToken();
      if (token !== this.token) {
        this.token = token;
        if (this.conn?.registered) this.conn.send({ reauth: { token } });
        this.log.debug('Token rotated; sent Reauth');
      }
    } catch (err) {
      this.log.warn('Could not re-read the token', { error: err as Error });
    }
  }

  /** Connects, and reconnects with back-off, until the agent stops. */
  private async runLoop(): Promise<void> {
    while (!this.stopping) {
      try {
        this.token = await this.readToken();
        await this.ensureClient();
      } catch (err) {
        this.log.error('Could not read the agent credentials; retrying', { error: err as Error });
        this.emitError(err as Error);
        await this.pause(this.streamBackoff.next());
        continue;
      }
      const conn = this.connect();
      const err = await conn.closed;
      if (this.conn === conn) this.conn = undefined;
      this.remote.streamClosed(conn);
      if (this.stopping) break;
      const code = (err as { code?: number } | undefined)?.code;
      if (code === 16 || code === 7) {
        const details = (err as { details?: string }).details ?? err?.message ?? '';
        this.log.error('The dispatcher refused this agent; retrying', {
          status: code === 16 ? 'UNAUTHENTICATED' : 'PERMISSION_DENIED',
          details,
        });
        this.emit('refused', { code, details });
      } else if (conn.registered || err) {
        this.log.warn('Dispatcher stream closed; reconnecting', { error: err ?? 'ended by the dispatcher' });
      }
      this.emit('disconnected', err ? { error: err } : {});
      await this.pause(this.streamBackoff.next());
    }
  }

  private connect(): Connection {
    const md = new Metadata();
    md.set('authorization', `Bearer ${this.token}`);
    const conn = new Connection(this.client as DispatcherClient, md);
    this.conn = conn;
    conn.on('message', (m) => {
      if (this.conn !== conn) return;
      try {
        this.onMessage(conn, m);
      } catch (err) {
        this.log.error('Could not handle a dispatcher message', { msg: m.msg, error: err as Error });
        this.emitError(err as Error);
      }
    });
    const inFlight = this.inFlightList();
    conn.reported = new Set(inFlight.map((f) => attemptKey(f.taskId ?? '', f.attempt ?? 0)));
    const o = this.opts;
    conn.send({
      register: {
        namespace: o.namespace,
        pool: o.pool,
        // The configured id, not the one the dispatcher derived: it derives it again from the verified identity.
        agentId: o.agentId,
        pod: o.pod,
        handlers: [...o.handlers.keys()],
        capacity: o.capacity,
        leaseId: this.leaseId,
        inFlight,
        runtimeVersion: RUNTIME_VERSION,
        protocol: PROTOCOL_VERSION,
      },
    });
    return conn;
  }

  /**
   * Running attempts, plus finished ones whose results await an Ack: the
   * dispatcher re-queues any assigned attempt a re-registering agent does not
   * list, which would throw a finished result away.
   */
  private inFlightList(): InFlight[] {
    const out: InFlight[] = [];
    for (const a of this.running.values()) {
      if (!a.disowned) out.push({ taskId: a.taskId, attempt: a.attempt, token: a.token, cost: a.cost });
    }
    for (const p of this.pending.values()) {
      out.push({ taskId: p.result.taskId, attempt: p.result.attempt, token: p.result.token, cost: p.cost });
    }
    return out;
  }

  private pause(ms: number): Promise<void> {
    if (this.stopping) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    });
  }

  /**
   * The dispatcher keeps the agent's lease only while it hears from it within a TTL: beat at least
   * three times a TTL, whatever heartbeatMs says, so an idle agent never loses its lease.
   */
  private paceHeartbeat(ttlSeconds: number): void {
    const every =
      ttlSeconds > 0 ? Math.min(this.opts.heartbeatMs, Math.floor((ttlSeconds * 1000) / 3)) : this.opts.heartbeatMs;
    if (every === this.heartbeatEvery || this.stopping) return;
    this.heartbeatEvery = every;
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = setInterval(() => this.sendHeartbeat(), every);
    this.heartbeat.unref();
  }

  private sendHeartbeat(): void {
    const draining = this.current === 'draining';
    if (this.conn?.registered) this.conn.send({ heartbeat: { draining } }, true);
  }

  // ---- dispatcher messages ----

  private onMessage(conn: Connection, m: DispatcherMessage__Output): void {
    switch (m.msg) {
      case 'registered':
        if (m.registered) this.onRegistered(conn, m.registered);
        return;
      case 'state':
        if (m.state) this.remote.onStateResponse(m.state);
        return;
      case 'lock':
        if (m.lock) this.remote.onLockResponse(m.lock);
        return;
      case 'watchEvent':
        if (m.watchEvent) this.remote.onWatchEvent(m.watchEvent);
        return;
      case 'assign':
        if (m.assign) this.onAssign(m.assign);
        return;
      case 'cancel': {
        const c = m.cancel;
        if (!c) return;
        const a = this.running.get(attemptKey(c.taskId, c.attempt));
        if (a) {
          this.log.info('Attempt cancelled by the dispatcher', {
            taskId: c.taskId,
            attempt: c.attempt,
            reason: c.reason,
          });
          a.abort('CANCELLED', c.reason ? `cancelled: ${c.reason}` : 'cancelled by the dispatcher');
        }
        return;
      }
      case 'drain': {
        const seconds = m.drain?.timeoutSeconds ?? 0;
        this.log.info('Dispatcher asked the agent to drain', { timeoutSeconds: seconds });
        this.drain(seconds > 0 ? seconds * 1000 : this.opts.drainTimeoutMs).catch((err: Error) =>
          this.log.error('Drain failed', { error: err }),
        );
        return;
      }
      case 'ack': {
        const a = m.ack;
        if (!a) return;
        if (this.pending.delete(attemptKey(a.taskId, a.attempt))) {
          this.emit('acked', { taskId: a.taskId, attempt: a.attempt, status: a.status });
          this.checkIdle();
        }
        return;
      }
      case 'spawnAck':
        if (m.spawnAck) this.spawns.onAck(m.spawnAck);
        return;
      case 'mail':
        if (m.mail) this.deliverMail(m.mail.workflow, m.mail.topic, m.mail.fromAgent, m.mail.payloadJson);
        return;
      case 'error':
        if (m.error) this.onWireError(conn, m.error);
        return;
      default:
        this.log.warn('Ignoring an unknown dispatcher message', { msg: m.msg });
    }
  }

  private onRegistered(conn: Connection, reg: Registered__Output): void {
    const stillYours = reg.stillYours;
    conn.registered = true;
    this.streamBackoff.reset();
    if (reg.leaseId !== this.leaseId && this.leaseId !== '') {
      this.log.warn('The dispatcher gave this agent a new lease; claims on the old one are gone', {
        old: this.leaseId,
        leaseId: reg.leaseId,
      });
    }
    this.leaseId = reg.leaseId;
    this.paceHeartbeat(reg.leaseTtlSeconds);
    if (reg.agentId && reg.agentId !== this.id) {
      this.id = reg.agentId;
      this.log = this.opts.logger.with({ agentId: this.id, pool: reg.pool });
    }
    this.remote.registered(conn);
    const ours = new Set(stillYours.map((s) => `${attemptKey(s.taskId, s.attempt)}#${s.token}`));
    for (const a of this.running.values()) {
      if (conn.reported.has(a.key) && !ours.has(`${a.key}#${a.token}`)) {
        this.log.warn('Attempt no longer ours after reconnecting; aborting it', {
          taskId: a.taskId,
          attempt: a.attempt,
        });
        a.abort('NOT_YOURS', 'the attempt was given to someone else while the agent was disconnected');
      }
    }
    // Spawns and results go out after Registered: a dispatcher may ignore what arrives while it
    // registers the stream. Spawns first: an attempt's children before its result.
    this.spawns.resendAll();
    for (const p of this.pending.values()) {
      p.sentOn = conn;
      conn.send({ result: p.result });
    }
    this.log.info('Registered with the dispatcher', {
      stillYours: stillYours.length,
      resent: this.pending.size,
      resentSpawns: this.spawns.size,
    });
    if (this.current === 'draining') this.sendHeartbeat();
    for (const w of this.registeredWaiters) w();
    this.emit('connected', { stillYours: stillYours.length });
  }

  private onAssign(a: Assign__Output): void {
    const key = attemptKey(a.taskId, a.attempt);
    const summary = {
      taskId: a.taskId,
      attempt: a.attempt,
      handler: a.handler,
      namespace: a.namespace,
      workflow: a.workflow,
    };
    const running = this.running.get(key);
    const pending = this.pending.get(key);
    if (running || pending) {
      const held = running?.token ?? Number(pending?.result.token ?? 0);
      if (a.token <= held) {
        this.log.warn('Ignoring a duplicate Assign', summary);
        return;
      }
      // A new leader claimed this very attempt again for us (the old claim went with a lease): the
      // work carries on under the new token instead of being ignored (the task would hang) or redone.
      this.log.info('Attempt claimed again under a new token; carrying on under it', { ...summary, token: a.token });
      if (running) {
        // Already given up (aborted as not ours): start afresh under the new claim once it has settled.
        if (running.disowned || running.signal.aborted) this.deferredAssigns.set(key, a);
        else running.reclaim(a.token);
        return;
      }
      if (pending) {
        pending.result = { ...pending.result, token: a.token };
        pending.sentOn = this.conn;
        this.conn?.send({ result: pending.result });
      }
      return;
    }
    const cost = a.cost > 0 ? a.cost : 1;
    const log = this.log.with(attemptFields(summary));
    const report = (error: TaskError__Output) => {
      this.emit('taskStarted', summary);
      this.report({ taskId: a.taskId, attempt: a.attempt, token: a.token, error }, cost);
      logEnd(log, { error }, 0);
      this.emit('taskFinished', { ...summary, durationMs: 0, reported: true, error });
    };
    if (this.drainOver || this.stopping) {
      report({ code: 'AGENT_STOPPING', message: 'the agent is shutting down', retryable: true });
      return;
    }
    const handler = this.opts.handlers.get(a.handler);
    if (!handler) {
      report({
        code: 'UNKNOWN_HANDLER',
        message: `agent ${this.id} has no handler "${a.handler}" (it has: ${[...this.opts.handlers.keys()].join(', ')})`,
        retryable: false,
      });
      return;
    }
    let input: unknown;
    try {
      input = a.inputJson === '' ? null : JSON.parse(a.inputJson);
    } catch (err) {
      report({ code: 'INVALID_INPUT', message: `task input is not JSON: ${(err as Error).message}`, retryable: false });
      return;
    }
    let used = cost;
    for (const r of this.running.values()) used += r.cost;
    if (used > this.opts.capacity) {
      this.log.warn('Assigned beyond capacity; running it anyway (the dispatcher owns the credits)', {
        ...summary,
        used,
        capacity: this.opts.capacity,
      });
    }
    const attempt = new Attempt(a);
    this.running.set(key, attempt);
    const output = new AttemptLog(
      log,
      (level, msg, fields) => this.shipper.line(attempt, logText(level, msg, fields)),
      (text) => this.shipper.chunk(attempt, text),
    );
    const ctx = createTaskContext(attempt, input, this.taskHost, output);
    this.emit('taskStarted', summary);
    log.info('Attempt started', {
      token: a.token,
      cost,
      ...(attempt.deadline && { deadline: attempt.deadline.toISOString() }),
    });
    const settled = attempt
      .run(handler, ctx, output)
      .then((outcome) => this.onSettled(attempt, outcome, summary, log, output))
      .catch((err: Error) => {
        log.error('Could not report an attempt', { error: err });
        this.emitError(err);
      })
      .finally(() => this.settling.delete(settled));
    this.settling.add(settled);
  }

  private onSettled(
    attempt: Attempt,
    outcome: Outcome | undefined,
    summary: TaskSummary,
    log: Logger,
    output: AttemptLog,
  ): void {
    this.running.delete(attempt.key);
    const next = this.deferredAssigns.get(attempt.key);
    if (next) {
      this.deferredAssigns.delete(attempt.key);
      // It has something to say after all: say it under the new claim. Nothing: run the new claim.
      if (outcome) attempt.reclaim(next.token);
      else queueMicrotask(() => this.onAssign(next));
    }
    const durationMs = Math.round(performance.now() - attempt.startedAt);
    const error = outcome && 'error' in outcome ? outcome.error : undefined;
    // The log's last lines and its end go before the result: once the task is over, its log is whole.
    this.shipper.end(attempt, output.shipped > 0);
    if (this.current !== 'stopped' && outcome) {
      this.report({ taskId: attempt.taskId, attempt: attempt.attempt, token: attempt.token, ...outcome }, attempt.cost);
    }
    const reported = outcome !== undefined && this.current !== 'stopped';
    logEnd(log, outcome, durationMs, {
      ...(outcome && !reported && { reported: false }),
      ...(output.droppedLines > 0 && { logLinesDropped: output.droppedLines, logBytesDropped: output.droppedBytes }),
    });
    this.emit('taskFinished', { ...summary, durationMs, reported: outcome !== undefined, ...(error && { error }) });
    this.checkIdle();
  }

  /** Keeps the result until its Ack and sends it if a registered stream is up (else after the next Registered). */
  private report(result: Result, cost: number): void {
    const key = attemptKey(result.taskId ?? '', result.attempt ?? 0);
    if (this.pending.size >= this.maxPending) {
      const [oldest] = this.pending.keys();
      if (oldest !== undefined) {
        this.pending.delete(oldest);
        this.log.error('Too many unacknowledged results; dropping the oldest', {
          dropped: oldest,
          limit: this.maxPending,
        });
      }
    }
    const conn = this.conn?.registered ? this.conn : undefined;
    this.pending.set(key, { result, cost, sentOn: conn });
    conn?.send({ result });
  }

  private onWireError(conn: Connection, e: WireError__Output): void {
    this.log.warn('Dispatcher refused a message', { code: e.code, message: e.message, taskId: e.taskId });
    this.emit('wireError', e);
    // The claim is not (or no longer) ours: re-sending a result for it can never succeed.
    if (e.taskId && (e.code === 'UNKNOWN_TASK' || e.code === 'STALE_ATTEMPT' || e.code === 'WRONG_POOL')) {
      for (const [key, p] of this.pending) {
        if (p.result.taskId === e.taskId && p.sentOn === conn) {
          this.pending.delete(key);
          this.log.warn('Dropping a result the dispatcher will not take', {
            taskId: e.taskId,
            attempt: p.result.attempt,
          });
        }
      }
      this.checkIdle();
    }
  }

  private deliverMail(workflow: string, topic: string, fromAgent: string, payloadJson: string): void {
    let payload: unknown;
    try {
      payload = payloadJson === '' ? null : JSON.parse(payloadJson);
    } catch {
      this.log.warn('Dropping mail whose payload is not JSON', { workflow, topic, fromAgent });
      return;
    }
    const meta: MailMeta = { fromAgent, workflow, topic };
    this.emit('mail', { ...meta, payload });
    const listeners = this.mailboxes.get(mailbox(workflow, topic));
    if (!listeners?.size) {
      this.log.debug('No attempt listens for this mail', { workflow, topic, fromAgent });
      return;
    }
    for (const cb of listeners) {
      try {
        cb(payload, meta);
      } catch (err) {
        this.log.warn('A mail listener threw', { workflow, topic, error: err as Error });
      }
    }
  }

  // ---- helpers for task contexts ----

  private readonly taskHost: TaskHost = {
    progress: (a, fraction, message) => {
      if (this.conn?.registered && !a.finished) {
        this.conn.send({ progress: { taskId: a.taskId, attempt: a.attempt, token: a.token, fraction, message } }, true);
      }
    },
    sendRegistered: (msg, signal) => this.sendRegistered(msg, signal),
    approvalsSupported: () => this.conn?.approvals ?? false,
    spawn: (attempt, children) => this.spawns.request(attempt, children),
    state: (attempt) => this.remote.forAttempt(attempt),
    lock: (attempt, name, opts) => this.lock(attempt, name, opts),
    subscribe: (workflow, topic, cb) => {
      const key = mailbox(workflow, topic);
      let set = this.mailboxes.get(key);
      if (!set) {
        set = new Set();
        this.mailboxes.set(key, set);
      }
      set.add(cb);
      return () => {
        set.delete(cb);
        if (set.size === 0 && this.mailboxes.get(key) === set) this.mailboxes.delete(key);
      };
    },
  };

  private async sendRegistered(msg: AgentMessage, signal: AbortSignal): Promise<void> {
    const conn = await this.registeredConn(signal);
    if (!conn.send(msg)) throw new Error('the dispatcher stream is not accepting messages');
  }

  /** The registered stream, now or once there is one. */
  private async registeredConn(signal: AbortSignal): Promise<Connection> {
    for (;;) {
      signal.throwIfAborted();
      if (this.stopping) throw new Error('the agent is stopping');
      const conn = this.conn;
      if (conn?.registered) return conn;
      await new Promise<void>((resolve) => {
        const done = () => {
          this.registeredWaiters.delete(done);
          signal.removeEventListener('abort', done);
          resolve();
        };
        this.registeredWaiters.add(done);
        signal.addEventListener('abort', done, { once: true });
      });
    }
  }

  private async lock(attempt: Attempt, name: string, opts: { timeoutMs?: number; signal: AbortSignal }): Promise<Held> {
    const deadline = opts.timeoutMs !== undefined ? Date.now() + opts.timeoutMs : undefined;
    const timeout = opts.timeoutMs !== undefined ? AbortSignal.timeout(opts.timeoutMs) : undefined;
    // One lease per agent means one lock key per agent: attempts of this agent queue here first.
    const local = `${attempt.namespace}/${attempt.workflow}/${name}`;
    let releaseLocal: () => void;
    try {
      releaseLocal = await this.mutex.acquire(local, timeout ? AbortSignal.any([opts.signal, timeout]) : opts.signal);
    } catch (err) {
      if (timeout?.aborted && !opts.signal.aborted) throw new LockTimeoutError(`timed out waiting for lock ${name}`);
      throw err;
    }
    try {
      const held = await this.remote.lock(attempt, name, {
        signal: opts.signal,
        ...(deadline !== undefined && { timeoutMs: Math.max(1, deadline - Date.now()) }),
      });
      let released = false;
      return {
        ...held,
        release: async () => {
          if (released) return;
          released = true;
          try {
            await held.release();
          } finally {
            releaseLocal();
          }
        },
      };
    } catch (err) {
      releaseLocal();
      throw err;
    }
  }

  private checkIdle(): void {
    if (this.idle && this.running.size === 0 && this.pending.size === 0) this.idle.resolve();
  }

  private emitError(err: Error): void {
    // EventEmitter throws an unheard 'error'; the log already has it.
    if (this.listenerCount('error') > 0) this.emit('error', err);
  }
}

const mailbox = (workflow: string, topic: string) => `${workflow}\n${topic}`;

/** The fields every line about an attempt carries (the agent's logger adds agentId and pool). */
function attemptFields(s: TaskSummary): Record<string, unknown> {
  const slash = s.taskId.lastIndexOf('/');
  return {
    workflow: s.workflow,
    namespace: s.namespace,
    task: slash >= 0 ? s.taskId.slice(slash + 1) : s.taskId,
    taskId: s.taskId,
    attempt: s.attempt,
    handler: s.handler,
  };
}

/**
 * The attempt's end line: succeeded, failed (retryable or not, with the
 * error's code and message), cancelled (with the reason), or abandoned when
 * its claim went elsewhere and no Result may be sent.
 */
function logEnd(
  log: Logger,
  outcome: Outcome | undefined,
  durationMs: number,
  extra: Record<string, unknown> = {},
): void {
  if (!outcome) {
    log.info("Attempt abandoned: its claim is no longer this agent's, so no result is sent", {
      outcome: 'abandoned',
      durationMs,
      ...extra,
    });
  } else if (!('error' in outcome)) {
    log.info('Attempt succeeded', { outcome: 'succeeded', durationMs, ...extra });
  } else if (outcome.error.code === 'CANCELLED') {
    log.info('Attempt cancelled', { outcome: 'cancelled', reason: outcome.error.message, durationMs, ...extra });
  } else {
    const { code, message, retryable } = outcome.error;
    log.warn(retryable ? 'Attempt failed; the task may be retried' : 'Attempt failed; not retryable', {
      outcome: 'failed',
      retryable,
      code,
      error: message,
      durationMs,
      ...extra,
    });
  }
}

/** Waits for `p`, but no longer than `ms`. */
async function atMost(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([p, new Promise((resolve) => (timer = setTimeout(resolve, ms)))]);
  clearTimeout(timer);
}
