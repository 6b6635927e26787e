import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import type { AgentConn } from '../../../src/dispatcher/agent-conn.ts';
import {
  type AgentAuth,
  AgentAuthError,
  type AgentIdentity,
  type RefusalReason,
  type RegisterClaim,
} from '../../../src/dispatcher/auth.ts';
import { StreamCredentials } from '../../../src/dispatcher/credentials.ts';
import {
  type AgentStream,
  acceptStream,
  GRPC_CODE,
  type StreamHandlers,
  WireMessageError,
} from '../../../src/dispatcher/streams.ts';
import type { AgentMessage__Output } from '../../../src/gen/agentflow/v1/AgentMessage.ts';
import type { DispatcherMessage } from '../../../src/gen/agentflow/v1/DispatcherMessage.ts';
import type { Register__Output } from '../../../src/gen/agentflow/v1/Register.ts';
import { silentLogger } from '../../../src/lib/log.ts';

// One Connect stream's life with a stand-in for the gRPC stream and the real credential rules over a
// stand-in verifier: the token before anything, Register first and once, refusals written back,
// denials ending the call with their gRPC status, and the dispatcher told when the stream goes.

/** What acceptStream uses of a grpc-js ServerDuplexStream. */
class FakeStream extends EventEmitter {
  readonly written: DispatcherMessage[] = [];
  ends = 0;
  readonly errors: { code: number | undefined; details: string | undefined }[] = [];
  readonly metadata: { get(key: string): unknown[] };

  constructor(authorization: unknown[]) {
    super();
    this.metadata = { get: (k: string) => (k === 'authorization' ? authorization : []) };
    // grpc-js listens for 'error' itself (it ends the call with that status); so does this stand-in.
    this.on('error', (e: Error & { code?: number; details?: string }) =>
      this.errors.push({ code: e.code, details: e.details }),
    );
  }
  write(m: DispatcherMessage): boolean {
    this.written.push(m);
    return true;
  }
  end(): void {
    this.ends++;
  }
}

const who: AgentIdentity = {
  username: 'system:serviceaccount:research:agents',
  groups: [],
  serviceAccountNamespace: 'research',
  pod: { namespace: 'research', name: 'agents-0', uid: 'u1' },
  expiresAt: Date.now() + 3_600_000,
};

const reg = (o: Partial<Register__Output> = {}): Register__Output => ({
  namespace: 'research',
  pool: 'agents',
  agentId: 'agent-0',
  pod: 'agents-0',
  handlers: ['summarise'],
  capacity: 2,
  leaseId: '',
  inFlight: [],
  runtimeVersion: '1',
  protocol: 0,
  ...o,
});

const registerMsg = (r: Register__Output = reg()): AgentMessage__Output => ({ msg: 'register', register: r });
const heartbeat: AgentMessage__Output = { msg: 'heartbeat', heartbeat: { draining: false } };

const flush = () => new Promise<void>((resolve) => setImmediate(resolve));

interface RigOptions {
  authorization?: unknown[];
  deposed?: boolean;
  register?: (r: Register__Output, who: AgentIdentity) => Promise<AgentConn>;
  message?: (conn: AgentConn, m: AgentMessage__Output) => void;
}

function rig(o: RigOptions = {}) {
  const stream = new FakeStream(o.authorization ?? ['Bearer good']);
  const conn = { agentId: 'agent-0', lastSeen: -1 } as unknown as AgentConn;
  const authenticated: string[] = [];
  const refusedByAuth: { identity?: AgentIdentity; claim?: RegisterClaim; reason: RefusalReason }[] = [];
  const auth: AgentAuth = {
    authenticate: async (token) => {
      authenticated.push(token);
      if (token === 'good') return who;
      if (token === 'down') throw new Error('connect ECONNREFUSED');
      throw new AgentAuthError('InvalidToken', 'the token was not accepted');
    },
    authorize: async () => {
      throw new Error('not used: register is the stand-in');
    },
    refused: (identity, claim, err) =>
      refusedByAuth.push({ ...(identity && { identity }), ...(claim && { claim }), reason: err.reason }),
  };
  const credentials = new StreamCredentials(auth, { unauthenticated: 0, permissionDenied: 0, reauthenticated: 0 });
  const registered: { r: Register__Output; who: AgentIdentity }[] = [];
  const messages: { conn: AgentConn; m: AgentMessage__Output }[] = [];
  const disconnected: AgentConn[] = [];
  const state = { stopped: false };
  const h: StreamHandlers = {
    deposed: () => o.deposed ?? false,
    stopped: () => state.stopped,
    register: async (_st, r, w) => {
      registered.push({ r, who: w });
      return o.register ? o.register(r, w) : conn;
    },
    message: (c, m) => {
      messages.push({ conn: c, m });
      o.message?.(c, m);
    },
    disconnected: (c) => disconnected.push(c),
    counters: { refused: 0, unauthenticated: 0, permissionDenied: 0 },
  };
  acceptStream(stream as unknown as AgentStream, h, credentials, auth, silentLogger);
  return { stream, conn, h, state, authenticated, refusedByAuth, registered, messages, disconnected };
}

async function registeredRig(o: RigOptions = {}) {
  const r = rig(o);
  r.stream.emit('data', registerMsg());
  await flush();
  expect(r.registered.length).toBe(1);
  return r;
}

describe('acceptStream', () => {
  it('turns every stream away UNAVAILABLE once deposed, before reading its token or messages', async () => {
    const r = rig({ deposed: true });
    expect(r.stream.errors).toEqual([
      {
        code: GRPC_CODE.UNAVAILABLE,
        details: 'this dispatcher is no longer the leader; reconnect to the new leader',
      },
    ]);
    r.stream.emit('data', registerMsg());
    await flush();
    expect(r.authenticated).toEqual([]);
    expect(r.registered).toEqual([]);
  });

  it('registers with the verified identity, then hands each message over with its connection', async () => {
    const r = await registeredRig();
    expect(r.authenticated).toEqual(['good']);
    expect(r.registered).toEqual([{ r: reg(), who }]);
    r.stream.emit('data', heartbeat);
    expect(r.messages).toEqual([{ conn: r.conn, m: heartbeat }]);
    expect(r.conn.lastSeen).toBeGreaterThan(0);
    expect(r.stream.written).toEqual([]);
    expect(r.h.counters.refused).toBe(0);
  });

  it.each([
    ['a Heartbeat', heartbeat],
    ['a register message without its Register', { msg: 'register', register: null } as AgentMessage__Output],
  ])('refuses %s as the first message NOT_REGISTERED and ends the stream', async (_what, first) => {
    const r = rig();
    r.stream.emit('data', first);
    await flush();
    expect(r.stream.written).toEqual([
      { error: { code: 'NOT_REGISTERED', message: 'the first message on a stream must be Register', taskId: '' } },
    ]);
    expect(r.stream.ends).toBe(1);
    expect(r.h.counters.refused).toBe(1);
    expect(r.registered).toEqual([]);
  });

  it('registers once when Register is sent twice before the first is done', async () => {
    let release: (c: AgentConn) => void = () => undefined;
    const pending = new Promise<AgentConn>((resolve) => {
      release = resolve;
    });
    const r = rig({ register: () => pending });
    r.stream.emit('data', registerMsg());
    r.stream.emit('data', registerMsg(reg({ agentId: 'again' })));
    await flush();
    release(r.conn);
    await flush();
    expect(r.registered.map((x) => x.r.agentId)).toEqual(['agent-0']);
    expect(r.stream.written).toEqual([]);
    r.stream.emit('data', heartbeat);
    expect(r.messages.length).toBe(1);
  });

  // Found writing the tests: anything else sent while Register was being handled got NOT_REGISTERED and the
  // stream was ended, although the protocol lets an agent re-send results "before or after Registered".
  it('ignores what arrives while its Register is handled, keeps the stream, and reads what comes after', async () => {
    let release: (c: AgentConn) => void = () => undefined;
    const pending = new Promise<AgentConn>((resolve) => {
      release = resolve;
    });
    const r = rig({ register: () => pending });
    r.stream.emit('data', registerMsg());
    r.stream.emit('data', heartbeat);
    await flush();
    expect(r.stream.written).toEqual([]);
    expect(r.stream.ends).toBe(0);
    release(r.conn);
    await flush();
    expect(r.messages).toEqual([]);
    r.stream.emit('data', heartbeat);
    expect(r.messages.length).toBe(1);
  });

  it('writes a WireMessageError back with its code, any other error as INVALID, and keeps the stream', async () => {
    let n = 0;
    const r = await registeredRig({
      message: () => {
        n++;
        if (n === 1) throw new WireMessageError('STALE_ATTEMPT', 'attempt 1 of wf/t is over');
        if (n === 2) throw new Error('something broke');
      },
    });
    r.stream.emit('data', heartbeat);
    r.stream.emit('data', heartbeat);
    r.stream.emit('data', heartbeat);
    expect(r.stream.written).toEqual([
      { error: { code: 'STALE_ATTEMPT', message: 'attempt 1 of wf/t is over', taskId: '' } },
      { error: { code: 'INVALID', message: 'something broke', taskId: '' } },
    ]);
    expect(r.h.counters.refused).toBe(2);
    expect(r.messages.length).toBe(3);
    expect(r.stream.ends).toBe(0);
    expect(r.stream.errors).toEqual([]);
  });

  it('ends the call PERMISSION_DENIED when register denies, counting it and telling the authorizer', async () => {
    const r = rig({
      register: async () => {
        throw new AgentAuthError('HandlerNotGranted', 'Register.handlers: "x" not granted');
      },
    });
    r.stream.emit('data', registerMsg());
    await flush();
    expect(r.stream.errors).toEqual([
      { code: GRPC_CODE.PERMISSION_DENIED, details: 'Register.handlers: "x" not granted' },
    ]);
    expect(r.h.counters).toEqual({ refused: 0, unauthenticated: 0, permissionDenied: 1 });
    expect(r.refusedByAuth).toEqual([
      {
        identity: who,
        claim: { namespace: 'research', pool: 'agents', agentId: 'agent-0', capacity: 2, handlers: ['summarise'] },
        reason: 'HandlerNotGranted',
      },
    ]);
    r.stream.emit('data', heartbeat); // nothing more is read from a denied stream
    expect(r.messages).toEqual([]);
    expect(r.stream.written).toEqual([]);
    expect(r.disconnected).toEqual([]);
  });

  it('ends the call INVALID_ARGUMENT, counted as neither, for an InvalidRegister denial', async () => {
    const r = rig({
      register: async () => {
        throw new AgentAuthError('InvalidRegister', 'Register.pool: required');
      },
    });
    r.stream.emit('data', registerMsg());
    await flush();
    expect(r.stream.errors).toEqual([{ code: GRPC_CODE.INVALID_ARGUMENT, details: 'Register.pool: required' }]);
    expect(r.h.counters).toEqual({ refused: 0, unauthenticated: 0, permissionDenied: 0 });
  });

  it('ends the call UNAUTHENTICATED for a token the verifier rejects, without a Register being read', async () => {
    const r = rig({ authorization: ['Bearer forged'] });
    await flush();
    expect(r.stream.errors).toEqual([{ code: GRPC_CODE.UNAUTHENTICATED, details: 'the token was not accepted' }]);
    expect(r.h.counters.unauthenticated).toBe(1);
    expect(r.refusedByAuth).toEqual([{ reason: 'InvalidToken' }]);
    r.stream.emit('data', registerMsg());
    await flush();
    expect(r.registered).toEqual([]);
    expect(r.stream.errors.length).toBe(1);
  });

  it('ends the call UNAUTHENTICATED when the stream carries no bearer token', async () => {
    const r = rig({ authorization: [] });
    await flush();
    expect(r.authenticated).toEqual([]);
    expect(r.stream.errors).toEqual([
      { code: GRPC_CODE.UNAUTHENTICATED, details: 'no "authorization: Bearer <token>" metadata on the stream' },
    ]);
    expect(r.h.counters.unauthenticated).toBe(1);
  });

  it('ends the call UNAVAILABLE when the verifier cannot be asked, counted as neither denial', async () => {
    const r = rig({ authorization: ['Bearer down'] });
    r.stream.emit('data', registerMsg());
    await flush();
    expect(r.stream.errors).toEqual([
      { code: GRPC_CODE.UNAVAILABLE, details: 'could not verify the token: connect ECONNREFUSED' },
    ]);
    expect(r.h.counters).toEqual({ refused: 0, unauthenticated: 0, permissionDenied: 0 });
    expect(r.registered).toEqual([]);
  });

  it('refuses a Register that register throws a plain error for INVALID, and ends the stream', async () => {
    const r = rig({
      register: async () => {
        throw new Error('Register.capacity: must be 1-1024, got 0');
      },
    });
    r.stream.emit('data', registerMsg());
    await flush();
    expect(r.stream.written).toEqual([
      { error: { code: 'INVALID', message: 'Register.capacity: must be 1-1024, got 0', taskId: '' } },
    ]);
    expect(r.stream.ends).toBe(1);
    expect(r.stream.errors).toEqual([]);
    expect(r.h.counters.refused).toBe(1);
  });

  it.each(['end', 'error', 'cancelled'])('tells the dispatcher of a registered stream gone by %s', async (event) => {
    const r = await registeredRig();
    r.stream.emit(event, ...(event === 'error' ? [new Error('reset')] : []));
    expect(r.disconnected).toEqual([r.conn]);
    expect(r.stream.ends).toBe(event === 'end' ? 1 : 0); // our half is closed when the agent closes its half
    r.stream.emit('data', heartbeat);
    expect(r.messages).toEqual([]);
  });

  it('tells nobody when a stream that never registered goes', async () => {
    const r = rig();
    r.stream.emit('cancelled');
    await flush();
    expect(r.disconnected).toEqual([]);
  });

  it('ignores messages once the dispatcher stopped', async () => {
    const r = await registeredRig();
    r.state.stopped = true;
    r.stream.emit('data', heartbeat);
    expect(r.messages).toEqual([]);
  });

  // Found by this test: the connection of a stream that went during registration was kept, and given work.
  it('tells the dispatcher of a connection whose stream went while it was registering', async () => {
    let release: (c: AgentConn) => void = () => undefined;
    const pending = new Promise<AgentConn>((resolve) => {
      release = resolve;
    });
    const r = rig({ register: () => pending });
    r.stream.emit('data', registerMsg());
    await flush();
    expect(r.registered.length).toBe(1);
    r.stream.emit('cancelled');
    release(r.conn);
    await flush();
    expect(r.disconnected).toEqual([r.conn]);
  });
});
