// etcd and leader faults against a private three-member etcd cluster, with
// the whole stack on top: a member killed mid-run, all of etcd stopped for
// 30 s, the leader frozen past its lease. Each case ends with the workflow
// Succeeded, every task committed exactly once and the audit chain verified.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../../src/lib/log.ts';
import { LeaderElector } from '../../../src/operator/leader.ts';
import { StateStore, TaskClaims } from '../../../src/state/index.ts';
import { EtcdCluster } from '../../cluster/etcd.ts';
import { expectExactlyOnce, type Json, Stack } from './stack.ts';

const dir = mkdtempSync(join(tmpdir(), 'agentflow-chaos-etcd-'));
const etcd = new EtcdCluster(dir, 3);
let stack: Stack;
let store: StateStore;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

beforeAll(async () => {
  await etcd.start();
  stack = new Stack({ etcdEndpoints: etcd.endpoints, leaseTtl: 3, agentLeaseTtl: 10, agents: 2, capacity: 8 });
  await stack.start();
  store = new StateStore({ endpoints: etcd.endpoints, prefix: stack.prefix });
}, 180_000);
afterAll(async () => {
  store?.close();
  await stack?.close();
  await etcd.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** A fan-out of `n` tasks of `ms` each, then one that joins them. */
function fanout(n: number, ms: number): Json {
  return {
    pool: 'agents',
    tasks: [
      { name: 'gen', handler: 'range', input: { count: n } },
      { name: 'step', handler: 'work', dependsOn: ['gen'], forEach: 'tasks.gen.output.items', input: { ms } },
      { name: 'join', handler: 'noop', dependsOn: ['step'], input: { i: n } },
    ],
  };
}
const taskNames = (n: number) => ['gen', 'join', ...Array.from({ length: n }, (_, i) => `step.${i}`)];

async function running(name: string): Promise<void> {
  for (let i = 0; i < 300; i++) {
    const w = await stack.get(name);
    if ((w.status?.progress?.running ?? 0) > 0) return;
    if (w.status?.phase === 'Succeeded' || w.status?.phase === 'Failed') {
      throw new Error(`${name} finished (${w.status.phase}) before the fault could be injected`);
    }
    await sleep(100);
  }
  throw new Error(`${name}: nothing running after 30 s`);
}

/** Waits for a log line `msg` that `o` writes after `mark` (o.lines.length when the fault began). */
async function saysAfter(o: Stack['operators'][number], mark: number, msg: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!o.lines.slice(mark).some((l) => l.msg === msg)) {
    if (Date.now() > deadline) throw new Error(`operator ${o.name}: no "${msg}" within ${timeoutMs} ms`);
    await sleep(100);
  }
}

/** How many tasks ran more than once (their committed attempt > 1). */
async function rerun(name: string, tasks: string[]): Promise<number> {
  const claims = new TaskClaims(store);
  let n = 0;
  for (const task of tasks) {
    const r = await claims.result({ namespace: stack.ns, workflow: name, task });
    if ((r?.attempt ?? 1) > 1) n++;
  }
  return n;
}

describe('chaos: etcd and leader faults', () => {
  it('a leader cut off from etcd steps down at its renew deadline, before its lease can expire', async () => {
    // Each elector talks to one member; freezing A's member cuts A off while the other two keep quorum.
    const storeA = new StateStore({
      endpoints: [etcd.endpoints[0] as string],
      prefix: stack.prefix,
      callTimeoutMs: 500,
    });
    const storeB = new StateStore({ endpoints: [etcd.endpoints[1] as string], prefix: stack.prefix });
    try {
      const a = new LeaderElector({
        store: storeA,
        name: 'cut',
        identity: 'a',
        ttlSeconds: 3,
        renewDeadlineMs: 1_500,
        logger: silentLogger,
      });
      const b = new LeaderElector({ store: storeB, name: 'cut', identity: 'b', ttlSeconds: 3, logger: silentLogger });
      const la = await a.campaign();
      const frozenAt = Date.now();
      etcd.members[0]?.signal('SIGSTOP');
      const steppedDown = new Promise<number>((r) =>
        la?.signal.addEventListener('abort', () => r(Date.now() - frozenAt), { once: true }),
      );
      const lb = await b.campaign();
      const electedMs = Date.now() - frozenAt;
      const downMs = await steppedDown;
      console.log(`leader cut off from etcd: stepped down after ${downMs} ms; the other elected after ${electedMs} ms`);
      expect(downMs).toBeLessThan(electedMs);
      expect(downMs).toBeLessThanOrEqual(a.renewDeadlineMs + 1_000);
      expect(lb?.token).toBeGreaterThan(la?.token ?? Number.POSITIVE_INFINITY);
      await b.resign();
    } finally {
      etcd.members[0]?.signal('SIGCONT');
      storeA.close();
      storeB.close();
    }
    await etcd.healthy();
  }, 60_000);

  it('kill -9 of one etcd member mid-run: the workflow succeeds, every task once', async () => {
    await stack.workflow('member', fanout(24, 2_000));
    await running('member');
    const victim = etcd.members[0];
    await victim?.crash();
    const killedAt = Date.now();
    const w = await stack.finished('member', 90_000);
    console.log(
      `etcd member kill -9: workflow finished ${Date.now() - killedAt} ms after; ${await rerun('member', taskNames(24))} tasks re-run`,
    );
    expect(w.status.phase).toBe('Succeeded');
    await expectExactlyOnce(store, stack.ns, 'member', taskNames(24));
    await victim?.start();
    await etcd.healthy();
  }, 150_000);

  it('all of etcd stopped for 30 s mid-run, then restarted: the operators ride it out and nothing is lost', async () => {
    await stack.workflow('outage', fanout(24, 1_500));
    await running('outage');
    const leader = await stack.leader();
    const mark = leader.lines.length;
    await Promise.all(etcd.members.map((m) => m.crash()));
    const downAt = Date.now();
    await saysAfter(leader, mark, 'Stepped down; campaigning again', 15_000);
    const downMs = Date.now() - downAt;
    await sleep(Math.max(0, 30_000 - (Date.now() - downAt)));
    await Promise.all(etcd.members.map((m) => m.start()));
    const upAt = Date.now();
    await etcd.healthy(60_000);
    const next = await stack.leader(60_000);
    const leadingMs = Date.now() - upAt;
    const w = await stack.finished('outage', 120_000);
    const rerunCount = await rerun('outage', taskNames(24));
    console.log(
      `etcd down 30 s: leader stepped down ${downMs} ms in; a leader again ${leadingMs} ms after etcd was back; workflow finished ${Date.now() - upAt} ms after; ${rerunCount} tasks re-run`,
    );
    expect(w.status.phase).toBe('Succeeded');
    for (const o of stack.operators) expect(o.child.exitCode).toBeNull();
    expect(next).toBeDefined();
    await expectExactlyOnce(store, stack.ns, 'outage', taskNames(24));
  }, 240_000);

  it('the leader frozen (SIGSTOP) past its lease, then resumed: the standby takes over, nothing twice', async () => {
    await stack.workflow('frozen', fanout(16, 4_000));
    await running('frozen');
    const leader = await stack.leader();
    const mark = leader.lines.length;
    leader.kill('SIGSTOP');
    const frozenAt = Date.now();
    await sleep(8_000);
    leader.kill('SIGCONT');
    // Waking, it finds its lease expired and steps down without acting on it.
    await saysAfter(leader, mark, 'Stepped down; campaigning again', 20_000);
    const w = await stack.finished('frozen', 120_000);
    console.log(
      `leader frozen 8 s (lease TTL 3 s): workflow finished ${Date.now() - frozenAt} ms after the freeze; ${await rerun('frozen', taskNames(16))} tasks re-run`,
    );
    expect(w.status.phase).toBe('Succeeded');
    await expectExactlyOnce(store, stack.ns, 'frozen', taskNames(16));
  }, 180_000);
});
