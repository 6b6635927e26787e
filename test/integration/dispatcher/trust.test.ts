import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentAuth } from '../../../src/dispatcher/auth.ts';
import { Dispatcher, type TaskEvent } from '../../../src/dispatcher/index.ts';
import { type StateStore, TaskClaims } from '../../../src/state/index.ts';
import { testCluster } from '../../cluster/testing.ts';
import { JsonLinesChild, testStore } from '../state/helpers.ts';
import { RawAgent } from './raw-agent.ts';
import { type SecureDispatcherSetup, secureDispatcher } from './secure.ts';

// Agents are untrusted: every stream is TLS, proves a Kubernetes identity
// (TokenReview, audience "agentflow"), and may join only what RBAC and the
// AgentPool grant; state and locks are confined to the workflow of an attempt
// the agent holds. Real kube-apiserver, real etcd, real gRPC.

const cluster = testCluster();
let sec: SecureDispatcherSetup;
let other: SecureDispatcherSetup;
let store: StateStore;
let dispatcher: Dispatcher;
let granted = '';
let ungranted = '';
let otherNsToken = '';
const agents: RawAgent[] = [];

const UNAUTHENTICATED = 16;
const PERMISSION_DENIED = 7;

beforeAll(async () => {
  store = testStore();
  sec = await secureDispatcher(cluster, 'trust');
  // A second tenant: its own namespace, pool and ServiceAccount.
  other = await secureDispatcher(cluster, 'victim');
  await sec.pool('mine', { capacity: 4, handlers: ['work', 'count', 'exclusive'] });
  await sec.pool('theirs', { capacity: 4 });
  await other.pool('researchers', { capacity: 4 });
  granted = await sec.serviceAccount('agent', { connect: ['mine'] });
  ungranted = await sec.serviceAccount('stranger');
  otherNsToken = await other.serviceAccount('victim-agent', { connect: ['researchers'] });
  dispatcher = new Dispatcher({ store, auth: sec.auth, credentials: sec.credentials, agentLeaseTtlSeconds: 3 });
  await dispatcher.start();
});

afterAll(async () => {
  for (const a of agents) a.close();
  await dispatcher.stop(1_000);
  sec.close();
  other.close();
  store.close();
  await cluster.close();
});

function connect(o: ConstructorParameters<typeof RawAgent>[1] = {}): RawAgent {
  const a = new RawAgent(dispatcher.port, { caFile: sec.caFile, ...o });
  agents.push(a);
  return a;
}

const register = (o: Partial<{ namespace: string; pool: string; capacity: number; handlers: string[] }> = {}) => ({
  register: {
    namespace: o.namespace ?? sec.namespace,
    pool: o.pool ?? 'mine',
    agentId: 'x',
    pod: '',
    handlers: o.handlers ?? ['work'],
    capacity: o.capacity ?? 2,
    leaseId: '',
    inFlight: [],
    runtimeVersion: 'test',
  },
});

describe('who may connect', () => {
  it('a stream with no token is refused UNAUTHENTICATED and never registered', async () => {
    const a = connect();
    a.send(register());
    const st = await a.closed();
    expect(st.code).toBe(UNAUTHENTICATED);
    expect(st.details).toContain('no "authorization: Bearer <token>"');
    expect(a.count('registered')).toBe(0);
  });

  it('a forged token and a token for another audience are refused UNAUTHENTICATED', async () => {
    const forged = connect({ token: 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln' });
    forged.send(register());
    expect((await forged.closed()).code).toBe(UNAUTHENTICATED);
    const wrongAudience = await sec.serviceAccount('api-client', {
      connect: ['mine'],
      audience: 'https://kubernetes.default.svc',
    });
    const a = connect({ tokenFile: wrongAudience });
    a.send(register());
    const st = await a.closed();
    expect(st.code).toBe(UNAUTHENTICATED);
    expect(st.details).toContain('audience "agentflow"');
  });

  it('a plaintext connection and a client that does not trust the CA get nowhere', async () => {
    const plain = connect({ plaintext: true, tokenFile: granted });
    plain.send(register());
    const st = await plain.closed();
    expect(st.code).toBe(14); // UNAVAILABLE: no TLS handshake, no call
    expect(plain.count('registered')).toBe(0);
    const otherCa = connect({ caFile: other.caFile, tokenFile: granted });
    otherCa.send(register());
    expect((await otherCa.closed()).code).toBe(14);
  });

  it('a ServiceAccount granted `connect` on the pool is accepted; one without the grant is refused', async () => {
    const ok = connect({ tokenFile: granted });
    ok.send(register());
    expect(await ok.next('registered')).toMatchObject({ agentId: 'agent.x', namespace: sec.namespace, pool: 'mine' });
    ok.close();
    const no = connect({ tokenFile: ungranted });
    no.send(register());
    const st = await no.closed();
    expect(st.code).toBe(PERMISSION_DENIED);
    expect(st.details).toBe(
      `system:serviceaccount:${sec.namespace}:stranger may not connect to agentpools/mine in namespace ${sec.namespace}` +
        ' (grant the verb "connect" on resource "agentpools" in group "agentflow.io")',
    );
    expect(dispatcher.counters.permissionDenied).toBeGreaterThan(0);
  });

  it('an agent granted pool X cannot register for pool Y, nor for a pool of another namespace', async () => {
    const y = connect({ tokenFile: granted });
    y.send(register({ pool: 'theirs' }));
    expect((await y.closed()).code).toBe(PERMISSION_DENIED);
    // The victim's pool in the victim's namespace: the attack of the issue, refused.
    const cross = connect({ tokenFile: granted });
    cross.send(register({ namespace: other.namespace, pool: 'researchers' }));
    const st = await cross.closed();
    expect(st.code).toBe(PERMISSION_DENIED);
    expect(st.details).toContain(`in namespace ${other.namespace}`);
    expect(cross.count('assign')).toBe(0);
  });

  it('capacity and handlers beyond what the pool grants are refused, naming the field', async () => {
    const big = connect({ tokenFile: granted });
    big.send(register({ capacity: 5 }));
    const st = await big.closed();
    expect(st.code).toBe(PERMISSION_DENIED);
    expect(st.details).toBe('Register.capacity: 5 is more than AgentPool mine grants (spec.agent.capacity 4)');
    const h = connect({ tokenFile: granted });
    h.send(register({ handlers: ['work', 'exfiltrate'] }));
    const st2 = await h.closed();
    expect(st2.details).toBe(
      `Register.handlers: "exfiltrate" not in AgentPool mine's spec.agent.handlers (work, count, exclusive)`,
    );
  });
});

describe('what a connected agent may touch', () => {
  it('state and locks only in the workflow of an attempt it holds', async () => {
    const claims = new TaskClaims(store);
    const a = connect({ tokenFile: granted });
    a.send(register());
    await a.next('registered');
    // The victim tenant's task, queued in the other namespace: never offered to this agent.
    dispatcher.submit({
      ref: { namespace: other.namespace, workflow: 'secret', task: 't' },
      pool: 'researchers',
      handler: 'work',
      input: { secret: 42 },
    });
    dispatcher.submit({
      ref: { namespace: sec.namespace, workflow: 'wf1', task: 'mine' },
      pool: 'mine',
      handler: 'work',
      input: null,
    });
    const assign = await a.next('assign');
    expect(assign).toMatchObject({ taskId: 'wf1/mine', namespace: sec.namespace });
    await expect(a.next('assign', 500)).rejects.toThrow('no assign');
    const me = { taskId: 'wf1/mine', attempt: 1, token: assign.token };

    // Its own workflow: works, and lands in that workflow's scope.
    a.send({ state: { id: 1, ...me, op: 'PUT', key: 'k', valueJson: '"v"' } });
    expect(await a.next('state')).toMatchObject({ id: 1, errorCode: '' });
    const written = await store.get(store.key('state', 'workflow', sec.namespace, 'wf1', 'k'));
    expect(written?.value).toBe('"v"');

    // Another workflow's task, a task it does not hold, a stale token: refused, nothing read or written.
    const denied = [
      { taskId: 'secret/t', attempt: 1, token: assign.token },
      { taskId: 'wf2/other', attempt: 1, token: assign.token },
      { taskId: 'wf1/mine', attempt: 1, token: assign.token + 1 },
    ];
    let id = 10;
    for (const who of denied) {
      for (const op of ['GET', 'PUT', 'LIST', 'WATCH'] as const) {
        a.send({ state: { id: ++id, ...who, op, key: 'k', valueJson: '"x"' } });
        expect(await a.next('state')).toMatchObject({ id, errorCode: 'PERMISSION_DENIED' });
      }
      a.send({ lock: { id: ++id, ...who, op: 'ACQUIRE', name: 'l' } });
      expect(await a.next('lock')).toMatchObject({ id, errorCode: 'PERMISSION_DENIED' });
    }
    // A key path cannot climb out of the workflow's scope.
    a.send({ state: { id: ++id, ...me, op: 'GET', key: '../../wf2/k' } });
    expect(await a.next('state')).toMatchObject({ id, errorCode: 'INVALID' });
    // A fence naming another workflow's lock is refused (it would leak whether that lock exists).
    a.send({
      state: {
        id: ++id,
        ...me,
        op: 'PUT',
        key: 'k',
        valueJson: '1',
        fences: [{ key: `${store.prefix}/locks/workflow/${other.namespace}/secret/l/1`, createRevision: 1 }],
      },
    });
    expect(await a.next('state')).toMatchObject({ id, errorCode: 'PERMISSION_DENIED' });
    expect(await store.get(store.key('state', 'workflow', other.namespace, 'secret', 'k'))).toBeUndefined();

    // A lock in its own workflow, fenced writes with it, release.
    a.send({ lock: { id: ++id, ...me, op: 'ACQUIRE', name: 'l', timeoutMs: 2_000 } });
    const lock = await a.next('lock');
    expect(lock.errorCode).toBe('');
    expect(lock.key).toContain(`/locks/workflow/${sec.namespace}/wf1/l/`);
    a.send({
      state: {
        id: ++id,
        ...me,
        op: 'PUT',
        key: 'k',
        valueJson: '2',
        fences: [{ key: lock.key, createRevision: lock.lockToken }],
      },
    });
    expect(await a.next('state')).toMatchObject({ errorCode: '' });
    a.send({ lock: { id: ++id, ...me, op: 'RELEASE', lockToken: lock.lockToken } });
    expect(await a.next('lock')).toMatchObject({ errorCode: '' });
    // A fence that no longer holds: FENCED, not written.
    a.send({
      state: {
        id: ++id,
        ...me,
        op: 'PUT',
        key: 'k',
        valueJson: '3',
        fences: [{ key: lock.key, createRevision: lock.lockToken }],
      },
    });
    expect(await a.next('state')).toMatchObject({ errorCode: 'FENCED' });
    expect((await store.get(store.key('state', 'workflow', sec.namespace, 'wf1', 'k')))?.value).toBe('2');

    // The victim's task stays queued and unclaimed.
    expect(await claims.current({ namespace: other.namespace, workflow: 'secret', task: 't' })).toBeUndefined();
  });

  it("another namespace's task only when its pool is shared with it, by a qualified id, in that workflow's scope", async () => {
    const claims = new TaskClaims(store);
    const a = connect({ tokenFile: granted });
    a.send({ register: { ...register().register, agentId: 'sharer' } });
    const { agentId } = await a.next('registered');
    const foreign = { namespace: other.namespace, workflow: 'tenant-wf', task: 't' };
    // Naming the victim's queued task by its full id gets the agent nothing.
    for (const taskId of [`${other.namespace}/secret/t`, `${other.namespace}/tenant-wf/t`]) {
      a.send({ state: { id: 900, taskId, attempt: 1, token: 1, op: 'GET', key: 'k' } });
      expect(await a.next('state')).toMatchObject({ id: 900, errorCode: 'PERMISSION_DENIED' });
      a.send({ result: { taskId, attempt: 1, token: 1, outputJson: '"forged"' } });
      expect(await a.next('error')).toMatchObject({ code: 'UNKNOWN_TASK', taskId });
    }
    // A task of the other namespace for pool "mine": held until the pool is shared with its namespace.
    const held: TaskEvent[] = [];
    const onTask = (e: TaskEvent) => {
      if (e.type === 'held' && e.ref.workflow === 'tenant-wf') held.push(e);
    };
    dispatcher.on('task', onTask);
    dispatcher.submit({ ref: foreign, pool: 'mine', poolNamespace: sec.namespace, handler: 'work', input: { n: 1 } });
    await expect(a.next('assign', 500)).rejects.toThrow('no assign');
    await new Promise((r) => setTimeout(r, 50));
    expect(held[0]?.type === 'held' && held[0].message).toBe(
      `waiting on AgentPool ${sec.namespace}/mine: it is not shared with namespace ${other.namespace} (its spec.sharing.namespaces)`,
    );
    dispatcher.setSharing(sec.namespace, 'mine', { namespaces: [{ name: other.namespace }] });
    const assign = await a.next('assign');
    expect(assign).toMatchObject({ taskId: `${other.namespace}/tenant-wf/t`, namespace: other.namespace });
    const me = { taskId: assign.taskId, attempt: 1, token: assign.token };
    // Its state is the tenant's workflow's, not the pool's namespace's.
    a.send({ state: { id: 901, ...me, op: 'PUT', key: 'k', valueJson: '"tenant"' } });
    expect(await a.next('state')).toMatchObject({ id: 901, errorCode: '' });
    expect((await store.get(store.key('state', 'workflow', other.namespace, 'tenant-wf', 'k')))?.value).toBe(
      '"tenant"',
    );
    expect(await store.get(store.key('state', 'workflow', sec.namespace, 'tenant-wf', 'k'))).toBeUndefined();
    // The claim and the result name the agent with its namespace: the other namespace's "sharer" is not it.
    expect((await claims.current(foreign))?.agentId).toBe(`${sec.namespace}/${agentId}`);
    const committed = new Promise<TaskEvent>((resolve) => {
      const on = (e: TaskEvent) => {
        if (e.type === 'committed' && e.ref.workflow === 'tenant-wf') {
          dispatcher.off('task', on);
          resolve(e);
        }
      };
      dispatcher.on('task', on);
    });
    a.send({ result: { ...me, outputJson: '"done"' } });
    expect(await a.next('ack')).toMatchObject({ taskId: me.taskId, status: 'COMMITTED' });
    expect(await committed).toMatchObject({ agentId: `${sec.namespace}/${agentId}` });
    expect((await claims.result(foreign))?.agentId).toBe(`${sec.namespace}/${agentId}`);
    dispatcher.off('task', onTask);
    dispatcher.setSharing(sec.namespace, 'mine', undefined);
    a.close();
  });

  it('a Reauth with a fresh token of the same identity keeps the stream; another identity ends it', async () => {
    const a = connect({ tokenFile: granted });
    a.send(register());
    await a.next('registered');
    const fresh = await sec.serviceAccountToken('agent');
    const before = dispatcher.counters.reauthenticated;
    a.send({ reauth: { token: fresh } });
    for (let i = 0; i < 50 && dispatcher.counters.reauthenticated === before; i++)
      await new Promise((r) => setTimeout(r, 50));
    expect(dispatcher.counters.reauthenticated).toBe(before + 1);
    expect(a.ended).toBe(false);
    a.send({ reauth: { token: readFileSync(otherNsToken, 'utf8').trim() } });
    const st = await a.closed();
    expect(st.code).toBe(PERMISSION_DENIED);
    expect(st.details).toContain('Reauth: the token is for');
  });
});

describe('token expiry on an open stream', () => {
  // Kubernetes issues no token shorter than 10 minutes, so the verified identity's expiry is cut to
  // 1.5 s after each (real) TokenReview: the dispatcher's clock on the stream is what is under test.
  let short: Dispatcher;
  const events: TaskEvent[] = [];
  let child: JsonLinesChild | undefined;
  beforeAll(async () => {
    const auth: AgentAuth = {
      authenticate: async (t) => ({ ...(await sec.auth.authenticate(t)), expiresAt: Date.now() + 1_500 }),
      authorize: (i, c) => sec.auth.authorize(i, c),
    };
    short = new Dispatcher({ store, auth, credentials: sec.credentials, agentLeaseTtlSeconds: 3 });
    short.on('task', (e) => events.push(e));
    await short.start();
  });
  afterAll(async () => {
    child?.kill('SIGKILL');
    await short.stop(500);
  });

  it('a stream whose token expires without a Reauth ends UNAUTHENTICATED', async () => {
    const a = new RawAgent(short.port, { caFile: sec.caFile, tokenFile: granted });
    agents.push(a);
    a.send(register());
    await a.next('registered');
    const started = Date.now();
    const st = await a.closed(10_000);
    expect(st.code).toBe(UNAUTHENTICATED);
    expect(st.details).toContain("the stream's token expired");
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it('an agent whose token file keeps being rotated keeps its stream and its running task', async () => {
    const tokenFile = `${sec.dir}/rotating.token`;
    writeFileSync(tokenFile, await sec.serviceAccountToken('agent'));
    child = new JsonLinesChild(
      'test/fixtures/agent/run-agent.ts',
      [`127.0.0.1:${short.port}`, sec.caFile, tokenFile, sec.namespace, 'mine', 'rot', '2', '5000'],
      { CREDENTIAL_CHECK_MS: '200' },
    );
    await child.next('connected', 20_000);
    const rotator = setInterval(() => {
      sec.serviceAccountToken('agent').then(
        (t) => writeFileSync(tokenFile, t),
        () => undefined,
      );
    }, 500);
    try {
      short.submit({
        ref: { namespace: sec.namespace, workflow: 'wf', task: 'long' },
        pool: 'mine',
        handler: 'work',
        input: null,
      });
      const deadline = Date.now() + 20_000;
      while (!events.some((e) => e.type === 'committed') && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 100));
    } finally {
      clearInterval(rotator);
    }
    const done = events.find((e) => e.type === 'committed');
    expect(done).toMatchObject({ result: { ok: true, attempt: 1 } });
    // The 5 s task outlived three 1.5 s tokens on one stream: re-authenticated, never re-connected.
    expect(short.counters.reauthenticated).toBeGreaterThanOrEqual(3);
    await expect(child.next('connected', 200)).rejects.toThrow();
  });
});
