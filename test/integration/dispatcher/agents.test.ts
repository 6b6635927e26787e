import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Dispatcher, type TaskEvent } from '../../../src/dispatcher/index.ts';
import { type StateStore, TaskClaims } from '../../../src/state/index.ts';
import { testCluster } from '../../cluster/testing.ts';
import { JsonLinesChild, testStore } from '../state/helpers.ts';
import { type SecureDispatcherSetup, secureDispatcher } from './secure.ts';

// The dispatcher with real agent processes (the SDK's createAgent) on real
// etcd and gRPC, with TLS and token authentication on (TokenReview and
// SubjectAccessReview against the real kube-apiserver): credits hold, a
// killed agent's task runs again elsewhere with exactly one committed result,
// and a dispatcher restart loses nothing.

const AGENT = 'test/fixtures/agent/run-agent.ts';
const TTL = 2;
const stores: StateStore[] = [];
const children: JsonLinesChild[] = [];
const dispatchers: Dispatcher[] = [];
const cluster = testCluster();
let sec: SecureDispatcherSetup;
let token = '';

beforeAll(async () => {
  sec = await secureDispatcher(cluster, 'disp');
  await sec.pool('pool');
  token = await sec.serviceAccount('agents', { connect: ['pool'] });
});

afterEach(async () => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
  for (const d of dispatchers.splice(0)) await d.stop(500);
});
afterAll(async () => {
  for (const s of stores) s.close();
  sec.close();
  await cluster.close();
});

async function setup(
  prefix: string,
  port = 0,
): Promise<{ store: StateStore; dispatcher: Dispatcher; events: TaskEvent[] }> {
  const store = testStore(prefix);
  stores.push(store);
  const dispatcher = new Dispatcher({
    store,
    address: `127.0.0.1:${port}`,
    orphanTimeoutMs: 60_000,
    auth: sec.auth,
    credentials: sec.credentials,
    agentLeaseTtlSeconds: TTL,
  });
  dispatchers.push(dispatcher);
  const events: TaskEvent[] = [];
  dispatcher.on('task', (e) => events.push(e));
  await dispatcher.start();
  return { store, dispatcher, events };
}

async function agent(
  port: number,
  prefix: string,
  id: string,
  capacity: number,
  workMs: number,
  firstAttemptMs?: number,
): Promise<JsonLinesChild> {
  void prefix;
  const args = [`127.0.0.1:${port}`, sec.caFile, token, sec.namespace, 'pool', id, String(capacity), String(workMs)];
  if (firstAttemptMs !== undefined) args.push(String(firstAttemptMs));
  const c = new JsonLinesChild(AGENT, args);
  children.push(c);
  await c.next('ready', 20_000);
  return c;
}

const ref = (task: string) => ({ namespace: sec.namespace, workflow: 'wf', task });
// External agents are named after their ServiceAccount plus the suffix they register with.
const idOf = (suffix: string) => `agents.${suffix}`;

async function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const committed = (events: TaskEvent[]) =>
  events.filter((e): e is Extract<TaskEvent, { type: 'committed' }> => e.type === 'committed');

describe('dispatcher with real agents', () => {
  it('3 agents of capacity 4 never hold more than 4 tasks each', async () => {
    const prefix = `/test-agents-cap-${Date.now()}`;
    const { dispatcher, events } = await setup(prefix);
    for (const id of ['a1', 'a2', 'a3']) await agent(dispatcher.port, prefix, id, 4, 40);
    await until('3 agents', () => dispatcher.agents().length === 3);
    let maxUsed = 0;
    const sampler = setInterval(() => {
      for (const a of dispatcher.agents()) maxUsed = Math.max(maxUsed, a.used);
    }, 2);
    for (let i = 0; i < 60; i++) dispatcher.submit({ ref: ref(`t${i}`), pool: 'pool', handler: 'work', input: { i } });
    await until('60 results', () => committed(events).length === 60, 30_000);
    clearInterval(sampler);
    const outputs = committed(events).map((e) => e.result.output as { agentId: string; maxConcurrent: number });
    for (const o of outputs) expect(o.maxConcurrent).toBeLessThanOrEqual(4);
    expect(Math.max(...outputs.map((o) => o.maxConcurrent))).toBe(4); // the credits were used, not just respected
    expect(maxUsed).toBeLessThanOrEqual(4);
    expect(new Set(outputs.map((o) => o.agentId))).toEqual(new Set(['a1', 'a2', 'a3'].map(idOf)));
  });

  it('8 attempts × 250 compare-and-swap increments through ctx.state end at exactly 2000', async () => {
    const prefix = `/test-agents-cas-${Date.now()}`;
    const { store, dispatcher, events } = await setup(prefix);
    for (const id of ['c1', 'c2', 'c3', 'c4']) await agent(dispatcher.port, prefix, id, 2, 0);
    await until('4 agents', () => dispatcher.agents().length === 4);
    // Eight loops on one key retry about three times per increment: 250 each proves exactly-once as
    // well as 500 did, in half the time (500 took 50 s idle and passed 120 s on a loaded machine).
    for (let i = 0; i < 8; i++)
      dispatcher.submit({ ref: ref(`c${i}`), pool: 'pool', handler: 'count', input: { key: 'counter', n: 250 } });
    await until('8 results', () => committed(events).length === 8, 120_000);
    const counter = await store.get(store.key('state', 'workflow', sec.namespace, 'wf', 'counter'));
    expect(counter?.value).toBe('2000');
    expect(counter?.version).toBe(2000); // every increment applied exactly once
    const conflicts = committed(events).reduce((s, e) => s + (e.result.output as { conflicts: number }).conflicts, 0);
    console.log(`CAS through the dispatcher: 2000 increments, ${conflicts} conflicts retried`);
  }, 150_000);

  it('lock holders on different agents never overlap and fencing tokens only grow', async () => {
    const prefix = `/test-agents-lock-${Date.now()}`;
    const { dispatcher, events } = await setup(prefix);
    for (const id of ['l1', 'l2', 'l3']) await agent(dispatcher.port, prefix, id, 2, 0);
    await until('3 agents', () => dispatcher.agents().length === 3);
    for (let i = 0; i < 5; i++)
      dispatcher.submit({ ref: ref(`l${i}`), pool: 'pool', handler: 'exclusive', input: { rounds: 40 } });
    await until('5 results', () => committed(events).length === 5, 90_000);
    const outs = committed(events).map((e) => e.result.output as { tokens: number[]; overlaps: number });
    expect(outs.reduce((s, o) => s + o.overlaps, 0)).toBe(0);
    const all = outs.flatMap((o) => o.tokens);
    expect(all).toHaveLength(200);
    expect(new Set(all).size).toBe(200); // every holding has its own token
    for (const o of outs)
      for (let i = 1; i < o.tokens.length; i++) expect(o.tokens[i]).toBeGreaterThan(o.tokens[i - 1] as number);
  }, 120_000);

  it('an agent whose lease etcd dropped (as after an etcd outage longer than the TTL) gets a new one and works on', async () => {
    const prefix = `/test-agents-lease-${Date.now()}`;
    const { store, dispatcher, events } = await setup(prefix);
    const c = await agent(dispatcher.port, prefix, 'v1', 2, 50);
    await c.next('connected');
    await until('1 agent', () => dispatcher.agents().length === 1);
    const before = (await store.list(`${store.prefix}/members/`)).entries.find((e) => e.key.endsWith('/agents.v1'));
    expect(before).toBeDefined();
    // What etcd does when a lease expires: everything bound to it goes.
    await store.client.leaseClient.leaseRevoke({ ID: before?.lease ?? '0' });
    await c.next('connected', TTL * 1000 + 10_000); // re-registered
    const after = (await store.list(`${store.prefix}/members/`)).entries.find((e) => e.key.endsWith('/agents.v1'));
    expect(after?.lease).toBeDefined();
    expect(after?.lease).not.toBe(before?.lease);
    dispatcher.submit({ ref: ref('after-outage'), pool: 'pool', handler: 'work', input: null });
    await until('the task after the lost lease', () => committed(events).some((e) => e.ref.task === 'after-outage'));
  });

  it('kill -9 of an agent mid-task: the task runs again on another agent after the lease TTL, one result committed', async () => {
    const prefix = `/test-agents-kill-${Date.now()}`;
    const { store, dispatcher, events } = await setup(prefix);
    const agents = new Map<string, Awaited<ReturnType<typeof agent>>>();
    for (const id of ['k1', 'k2']) agents.set(id, await agent(dispatcher.port, prefix, id, 2, 100, 60_000));
    await until('2 agents', () => dispatcher.agents().length === 2);
    dispatcher.submit({ ref: ref('victim'), pool: 'pool', handler: 'work', input: null });
    let holder = '';
    await until('the first attempt to start', () => {
      holder = dispatcher.agents().find((a) => a.used > 0)?.agentId ?? '';
      return holder !== '';
    });
    const victim = agents.get(holder.replace(/^agents\./, '')) as JsonLinesChild;
    await victim.next('started');
    const killedAt = Date.now();
    victim.kill('SIGKILL');
    await until('the result', () => committed(events).length === 1, TTL * 1000 + 15_000);
    const elapsed = Date.now() - killedAt;
    const [done] = committed(events);
    const survivor = holder === idOf('k1') ? idOf('k2') : idOf('k1');
    expect(done?.result).toMatchObject({ attempt: 2, agentId: survivor, ok: true });
    expect(events.find((e) => e.type === 'lost')).toMatchObject({
      attempt: 1,
      agentId: holder,
      reason: 'the agent lease expired',
    });
    expect(elapsed).toBeGreaterThanOrEqual(TTL * 1000 - 500);
    expect(await new TaskClaims(store).result(ref('victim'))).toMatchObject({ attempt: 2, agentId: survivor });
    console.log(`agent failover: result committed ${elapsed} ms after kill -9 (lease TTL ${TTL} s)`);
  });

  it('a dispatcher restart loses no result: agents reconnect, keep their attempts, and every task commits once', async () => {
    const prefix = `/test-agents-restart-${Date.now()}`;
    const first = await setup(prefix);
    const port = first.dispatcher.port;
    for (const id of ['r1', 'r2']) await agent(port, prefix, id, 4, 600);
    await until('2 agents', () => first.dispatcher.agents().length === 2);
    const N = 20;
    for (let i = 0; i < N; i++)
      first.dispatcher.submit({ ref: ref(`r${i}`), pool: 'pool', handler: 'work', input: null });
    await until('8 attempts running', () => first.dispatcher.agents().reduce((s, a) => s + a.used, 0) === 8);
    const committedBefore = committed(first.events).map((e) => e.ref.task);
    await first.dispatcher.stop(500);
    dispatchers.splice(dispatchers.indexOf(first.dispatcher), 1);

    const second = await setup(prefix, port);
    await until('agents to reconnect', () => second.dispatcher.agents().length === 2, 15_000);
    // The engine re-submits what has neither a result nor a live claim (it keeps those records in etcd).
    const claims = new TaskClaims(second.store);
    for (let i = 0; i < N; i++) {
      const r = ref(`r${i}`);
      // Claim first, then result: a re-sent result committing between the two reads would otherwise
      // look like neither (result read before the commit, claim read after it) and be submitted twice.
      // A commit needs a claim and none can appear until we submit, so this order cannot race.
      if (!(await claims.current(r)) && !(await claims.result(r)))
        second.dispatcher.submit({ ref: r, pool: 'pool', handler: 'work', input: null });
    }
    await until(
      `${N} results in etcd`,
      async () => {
        for (let i = 0; i < N; i++) if (!(await claims.result(ref(`r${i}`)))) return false;
        return true;
      },
      30_000,
    );
    const results = await Promise.all([...Array(N).keys()].map((i) => claims.result(ref(`r${i}`))));
    // Attempts in flight during the restart were kept (attempt 1), not re-run.
    expect(results.every((r) => r?.ok && r.attempt === 1)).toBe(true);
    const afterRestart = committed(second.events).map((e) => e.ref.task);
    expect(new Set([...committedBefore, ...afterRestart]).size).toBe(N);
    expect(committedBefore.length + afterRestart.length).toBe(N);
  });
});

describe('rate-limited Assigns go out paced', () => {
  // Two tasks of a 4/s limit (burst 1) admitted while no slot is free: when slots free, both are picked
  // in consecutive turns (the bucket kept the token the wait earned). Their Assigns must still go out
  // a quarter-second apart, whatever their claim transactions did; a cancel meanwhile stops the second.
  const limited = (task: string) =>
    ({ ref: ref(task), pool: 'pool', handler: 'work', input: null, rateLimits: [{ name: 'calls' }] }) as const;

  async function bunched(prefix: string) {
    const { dispatcher, events } = await setup(prefix);
    dispatcher.setRateLimits(sec.namespace, 'pool', [{ name: 'calls', perSecond: 4 }]);
    const startedAt = new Map<string, number>();
    dispatcher.on('task', (e) => {
      if (e.type === 'started') startedAt.set(e.ref.task, Date.now());
    });
    const c = await agent(dispatcher.port, prefix, 'p1', 2, 800);
    await until('1 agent', () => dispatcher.agents().length === 1);
    for (const b of ['busy0', 'busy1']) dispatcher.submit({ ref: ref(b), pool: 'pool', handler: 'work', input: null });
    await until('both slots busy', () => startedAt.size === 2);
    for (const t of ['l0', 'l1', 'l2']) dispatcher.submit(limited(t));
    return { dispatcher, events, startedAt, c };
  }

  it('two picks in a row of a 4/s limit start 250 ms apart', async () => {
    const { events, startedAt } = await bunched(`/test-agents-pace-${Date.now()}`);
    await until('3 limited results', () =>
      ['l0', 'l1', 'l2'].every((t) => committed(events).some((e) => e.ref.task === t)),
    );
    const gap = (startedAt.get('l1') as number) - (startedAt.get('l0') as number);
    console.log(`pacing: l1 went out ${gap} ms after l0 (4/s)`);
    expect(gap).toBeGreaterThanOrEqual(250 - 10 - 2); // 1/rate, less the pacing slack and a clock tick
  });

  it('a task cancelled while its Assign waits for its slot never starts, and its slot comes back', async () => {
    const { dispatcher, events, startedAt, c } = await bunched(`/test-agents-pace-cancel-${Date.now()}`);
    await until('l0 sent', () => startedAt.has('l0'));
    await new Promise((r) => setTimeout(r, 100)); // l1: claimed (or being claimed), its Assign paced
    expect(startedAt.has('l1')).toBe(false);
    await dispatcher.cancel(ref('l1'), 'cancelled by the test');
    await until('l0 and l2 committed', () =>
      ['l0', 'l2'].every((t) => committed(events).some((e) => e.ref.task === t)),
    );
    await until('every slot free', () => dispatcher.agents()[0]?.used === 0);
    expect(startedAt.has('l1')).toBe(false);
    expect(committed(events).some((e) => e.ref.task === 'l1')).toBe(false);
    expect(dispatcher.isTracked(ref('l1'))).toBe(false);
    const agentStarts: string[] = [];
    for (
      let m = await c.next('started', 50).catch(() => undefined);
      m;
      m = await c.next('started', 50).catch(() => undefined)
    )
      agentStarts.push(String(m.taskId));
    expect(agentStarts).toHaveLength(4); // busy0, busy1, l0, l2
    expect(agentStarts.some((t) => t.endsWith('l1'))).toBe(false);
  });
});
