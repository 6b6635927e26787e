// A scriptable dispatcher for agent runtime tests: a real grpc-js server on
// 127.0.0.1 (plaintext) implementing Connect. Tests drive registration and
// assignments by hand; state and lock requests are answered by an in-memory
// FakeState, confined to the workflow of the attempt they name, as the real
// dispatcher confines them.
import { type Metadata, Server, ServerCredentials, type ServerDuplexStream, type status } from '@grpc/grpc-js';
import type { InFlight } from '../../../src/gen/agentflow/v1/InFlight.ts';
import type { LockRequest__Output } from '../../../src/gen/agentflow/v1/LockRequest.ts';
import type { StateRequest__Output } from '../../../src/gen/agentflow/v1/StateRequest.ts';
import {
  type AgentMessage__Output,
  agentflowProto,
  type DispatcherMessage,
  KEEPALIVE_OPTIONS,
} from '../../../src/lib/proto.ts';
import { FakeState, type Scope, type Sink } from './fake-state.ts';

type Kind = NonNullable<AgentMessage__Output['msg']>;
type Body<K extends Kind> = NonNullable<AgentMessage__Output[K]>;
export type RegisterBody = Body<'register'>;

/** Resolves waiters as items arrive; each waiter takes the next item it has not seen. */
class Feed<T> {
  readonly items: T[] = [];
  private readonly waiters: { match: (t: T) => boolean; resolve: (t: T) => void }[] = [];

  push(item: T): void {
    this.items.push(item);
    for (const w of [...this.waiters]) {
      if (w.match(item)) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(item);
      }
    }
  }

  /** The first item at or after index `from` that matches, now or when it arrives. */
  find(match: (t: T) => boolean, from: number): Promise<T> {
    const found = this.items.slice(from).find(match);
    if (found !== undefined) return Promise.resolve(found);
    return new Promise((resolve) => this.waiters.push({ match, resolve }));
  }
}

interface Claim extends Scope {
  token: number;
}

const claimKey = (taskId: string, attempt: number) => `${taskId}@${attempt}`;

export interface AcceptOptions {
  /** Default: the reported in-flight attempts whose claims the fake still holds for them. */
  stillYours?: InFlight[] | ((reg: RegisterBody) => InFlight[]);
  /** Default: FakeDispatcher.agentId, else the Register's pod (as for a pool's pod). */
  agentId?: string;
  /** The lease TTL Registered announces (default 10). */
  leaseTtlSeconds?: number;
  /** The protocol revision Registered announces (default none: 0). */
  protocol?: number;
}

export class FakeStream implements Sink {
  readonly feed = new Feed<AgentMessage__Output>();
  readonly ended: Promise<void>;
  /** The lease Registered gave this stream ('' before). */
  leaseId = '';
  private readonly call: ServerDuplexStream<AgentMessage__Output, DispatcherMessage>;
  private readonly fake: FakeDispatcher;
  private readonly cursors = new Map<Kind, number>();
  private readonly opCursors = new Map<string, number>();

  constructor(call: ServerDuplexStream<AgentMessage__Output, DispatcherMessage>, fake: FakeDispatcher) {
    this.call = call;
    this.fake = fake;
    call.on('data', (m: AgentMessage__Output) => {
      this.feed.push(m);
      if (m.state) fake.onState(this, m.state);
      if (m.lock) fake.onLock(this, m.lock);
    });
    this.ended = new Promise((resolve) => {
      call.on('end', () => {
        call.end();
        resolve();
      });
      call.on('cancelled', () => resolve());
      call.on('error', () => resolve());
    });
    void this.ended.then(() => fake.state.dropSink(this));
  }

  /** The call metadata the agent opened the stream with. */
  get metadata(): Metadata {
    return this.call.metadata;
  }

  /** The `authorization` metadata value, as sent. */
  get authorization(): string | undefined {
    const v = this.call.metadata.get('authorization')[0];
    return v === undefined ? undefined : String(v);
  }

  /** Every message received so far, in order. */
  get messages(): AgentMessage__Output[] {
    return this.feed.items;
  }

  kinds(): Kind[] {
    return this.messages.map((m) => m.msg as Kind);
  }

  /** The next message of `kind` that an earlier next(kind) has not returned. */
  async next<K extends Kind>(kind: K): Promise<Body<K>> {
    const from = this.cursors.get(kind) ?? 0;
    const m = await this.feed.find((x) => x.msg === kind, from);
    this.cursors.set(kind, this.messages.indexOf(m) + 1);
    return m[kind] as Body<K>;
  }

  /** The next state request with operation `op` that an earlier nextState(op) has not returned. */
  nextState(op: StateRequest__Output['op']): Promise<StateRequest__Output> {
    return this.nextOf(`state:${op}`, (m) => (m.state?.op === op ? m.state : undefined));
  }

  /** The next lock request with operation `op` that an earlier nextLock(op) has not returned. */
  nextLock(op: LockRequest__Output['op']): Promise<LockRequest__Output> {
    return this.nextOf(`lock:${op}`, (m) => (m.lock?.op === op ? m.lock : undefined));
  }

  /** State and lock requests received so far with operation `op`. */
  requests(op: StateRequest__Output['op'] | LockRequest__Output['op']): (StateRequest__Output | LockRequest__Output)[] {
    const out: (StateRequest__Output | LockRequest__Output)[] = [];
    for (const m of this.messages) {
      if (m.state?.op === op) out.push(m.state);
      else if (m.lock?.op === op) out.push(m.lock);
    }
    return out;
  }

  private async nextOf<T>(cursor: string, pick: (m: AgentMessage__Output) => T | undefined): Promise<T> {
    const from = this.opCursors.get(cursor) ?? 0;
    const m = await this.feed.find((x) => pick(x) !== undefined, from);
    this.opCursors.set(cursor, this.messages.indexOf(m) + 1);
    return pick(m) as T;
  }

  /** The next Result for `taskId`. */
  async result(taskId: string): Promise<Body<'result'>> {
    const from = this.cursors.get('result') ?? 0;
    const m = await this.feed.find((x) => x.msg === 'result' && x.result?.taskId === taskId, from);
    return m.result as Body<'result'>;
  }

  /** Reads the Register and answers it as the dispatcher does: lease, agent id, namespace and pool. */
  async accept(opts: AcceptOptions = {}): Promise<RegisterBody> {
    const reg = await this.next('register');
    this.leaseId = this.fake.leaseFor(reg.leaseId);
    const stillYours =
      typeof opts.stillYours === 'function'
        ? opts.stillYours(reg)
        : (opts.stillYours ?? reg.inFlight.filter((f) => this.fake.holds(f.taskId, f.attempt, f.token)));
    this.send({
      registered: {
        stillYours,
        leaseId: this.leaseId,
        agentId: opts.agentId ?? this.fake.agentId ?? reg.pod,
        namespace: reg.namespace || this.fake.namespace,
        pool: reg.pool || this.fake.pool,
        leaseTtlSeconds: opts.leaseTtlSeconds ?? 10,
        ...(opts.protocol !== undefined && { protocol: opts.protocol }),
      },
    });
    return reg;
  }

  /** Sends a message; an Assign also gives the attempt its claim (so its state requests are allowed). */
  send(m: DispatcherMessage): void {
    const a = m.assign;
    if (a) {
      this.fake.claims.set(claimKey(a.taskId ?? '', a.attempt ?? 0), {
        namespace: a.namespace ?? '',
        workflow: a.workflow ?? '',
        token: Number(a.token ?? 0),
      });
    }
    // A dispatcher does not write to a stream that is over (what it would have said is lost with it).
    if (!this.call.writableEnded && !this.call.cancelled) this.call.write(m);
  }

  /** Ends the stream cleanly from the dispatcher's side, as a restarting dispatcher would. */
  end(): void {
    this.call.end();
  }

  /** Ends the stream with a status, as the dispatcher refuses a token or a Register. */
  refuse(code: status.UNAUTHENTICATED | status.PERMISSION_DENIED | status.UNAVAILABLE, details: string): void {
    this.call.emit('error', Object.assign(new Error(details), { code, details }));
  }
}

export class FakeDispatcher {
  readonly address: string;
  readonly state = new FakeState();
  /** taskId@attempt -> the claim an Assign gave it; revoke() takes it away. */
  readonly claims = new Map<string, Claim>();
  /** What Registered calls the agent (default: the Register's pod). */
  agentId: string | undefined;
  /** For a Register that leaves them empty. */
  namespace = 'team-a';
  pool = 'writers';
  /** State and lock requests it returns true for get no answer (to test a stream closing under them). */
  withhold: ((m: StateRequest__Output | LockRequest__Output) => boolean) | undefined;
  private readonly server: Server;
  private readonly streams = new Feed<FakeStream>();
  private readonly leases = new Set<string>();
  private nextLease = 7001;
  private handedOut = 0;

  private constructor(server: Server, address: string) {
    this.server = server;
    this.address = address;
  }

  static async start(): Promise<FakeDispatcher> {
    const server = new Server(KEEPALIVE_OPTIONS);
    let self: FakeDispatcher | undefined;
    server.addService(agentflowProto().agentflow.v1.Dispatcher.service, {
      Connect: (call: ServerDuplexStream<AgentMessage__Output, DispatcherMessage>) => {
        if (self) self.streams.push(new FakeStream(call, self));
      },
    });
    const port = await new Promise<number>((resolve, reject) => {
      server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p)));
    });
    self = new FakeDispatcher(server, `127.0.0.1:${port}`);
    return self;
  }

  /** The next stream an agent opens (each call returns a later one). */
  async nextStream(): Promise<FakeStream> {
    const i = this.handedOut++;
    return this.streams.find((s) => this.streams.items.indexOf(s) === i, i);
  }

  /** Every stream opened so far. */
  get opened(): readonly FakeStream[] {
    return this.streams.items;
  }

  /** The agent's previous lease if still alive, else a new one. */
  leaseFor(leaseId: string): string {
    if (this.leases.has(leaseId)) return leaseId;
    const id = String(this.nextLease++);
    this.leases.add(id);
    return id;
  }

  /** The lease ran out: the next Register naming it gets a new one. */
  expireLease(leaseId: string): void {
    this.leases.delete(leaseId);
  }

  holds(taskId: string, attempt: number, token: number): boolean {
    return this.claims.get(claimKey(taskId, attempt))?.token === token;
  }

  /** The claim moved to someone else: the attempt's requests are refused from now on. */
  revoke(taskId: string, attempt = 1): void {
    this.claims.delete(claimKey(taskId, attempt));
  }

  onState(stream: FakeStream, req: StateRequest__Output): void {
    if (this.withhold?.(req)) return;
    const claim = this.claimFor(req);
    if (!claim) {
      stream.send({ state: { id: String(req.id), errorCode: 'PERMISSION_DENIED', errorMessage: denied(req.taskId) } });
      return;
    }
    this.state.state(stream, claim, req);
  }

  onLock(stream: FakeStream, req: LockRequest__Output): void {
    if (this.withhold?.(req)) return;
    const claim = this.claimFor(req);
    if (!claim) {
      stream.send({ lock: { id: String(req.id), errorCode: 'PERMISSION_DENIED', errorMessage: denied(req.taskId) } });
      return;
    }
    this.state.lock(stream, claim, req);
  }

  close(): void {
    this.server.forceShutdown();
  }

  private claimFor(req: { taskId: string; attempt: number; token: number }): Claim | undefined {
    const c = this.claims.get(claimKey(req.taskId, req.attempt));
    return c && c.token === Number(req.token) ? c : undefined;
  }
}

const denied = (taskId: string) => `UNKNOWN_TASK: this agent holds no claim on ${taskId}`;
