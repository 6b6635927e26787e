// A scriptable dispatcher for agent runtime tests: a real grpc-js server on
// 127.0.0.1 implementing Connect, whose streams the test drives by hand.
import { Server, ServerCredentials, type ServerDuplexStream } from '@grpc/grpc-js';
import type { AgentSession, Coordination, MemberRecord } from '../../../src/agent/index.ts';
import {
  type AgentMessage__Output,
  agentflowProto,
  type DispatcherMessage,
  KEEPALIVE_OPTIONS,
} from '../../../src/lib/proto.ts';
import type { Held } from '../../../src/state/index.ts';

type Kind = NonNullable<AgentMessage__Output['msg']>;
type Body<K extends Kind> = NonNullable<AgentMessage__Output[K]>;

/** Resolves waiters as items arrive; each waiter takes the next item it has not seen. */
class Feed<T> {
  readonly items: T[] = [];
  private readonly waiters: { match: (t: T) => boolean; from: number; resolve: (t: T) => void }[] = [];

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
    return new Promise((resolve) => this.waiters.push({ match, from, resolve }));
  }
}

export class FakeStream {
  readonly feed = new Feed<AgentMessage__Output>();
  readonly ended: Promise<void>;
  private readonly call: ServerDuplexStream<AgentMessage__Output, DispatcherMessage>;
  private readonly cursors = new Map<Kind, number>();

  constructor(call: ServerDuplexStream<AgentMessage__Output, DispatcherMessage>) {
    this.call = call;
    call.on('data', (m: AgentMessage__Output) => this.feed.push(m));
    this.ended = new Promise((resolve) => {
      call.on('end', () => {
        call.end();
        resolve();
      });
      call.on('cancelled', () => resolve());
      call.on('error', () => resolve());
    });
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

  /** The next Result for `taskId`. */
  async result(taskId: string): Promise<Body<'result'>> {
    const from = this.cursors.get('result') ?? 0;
    const m = await this.feed.find((x) => x.msg === 'result' && x.result?.taskId === taskId, from);
    return m.result as Body<'result'>;
  }

  send(m: DispatcherMessage): void {
    this.call.write(m);
  }

  /** Ends the stream from the dispatcher's side, as a restarting dispatcher would. */
  end(): void {
    this.call.end();
  }
}

export class FakeDispatcher {
  readonly address: string;
  private readonly server: Server;
  private readonly streams = new Feed<FakeStream>();
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
        self?.streams.push(new FakeStream(call));
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

  close(): void {
    this.server.forceShutdown();
  }
}

export class FakeSession implements AgentSession {
  readonly id: string;
  closed = false;
  readonly locked: string[] = [];
  private readonly lostListeners: ((err: Error) => void)[] = [];

  constructor(id: string) {
    this.id = id;
  }

  onLost(listener: (err: Error) => void): void {
    this.lostListeners.push(listener);
  }

  /** Simulates keep-alive failing for longer than the TTL. */
  lose(): void {
    for (const l of this.lostListeners) l(new Error(`lease ${this.id} expired`));
  }

  async lock(name: string): Promise<Held> {
    this.locked.push(name);
    const token = this.locked.length;
    const key = `/locks/${name}/${this.id}`;
    return { key, token, fence: { key, createRevision: token }, release: async () => undefined };
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

/** Coordination without etcd: sessions with ids 1001, 1002, ... */
export class FakeCoordination implements Coordination {
  readonly sessions: FakeSession[] = [];
  readonly members: MemberRecord[] = [];
  closed = false;

  async open(_ttlSeconds: number, member: MemberRecord): Promise<AgentSession> {
    const s = new FakeSession(String(1001 + this.sessions.length));
    this.sessions.push(s);
    this.members.push(member);
    return s;
  }

  state(): never {
    throw new Error('no etcd in unit tests');
  }

  close(): void {
    this.closed = true;
  }
}
