import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ClusterHandle } from '../../cluster/cluster-handle.ts';
import { freePort } from '../../cluster/ports.ts';
import { testCluster, uniqueName } from '../../cluster/testing.ts';
import {
  apply,
  createNamespace,
  installCrds,
  nodes,
  OperatorProcess,
  pool,
  startNodes,
  until,
} from '../operator/helpers.ts';
import { fixturePool, getWorkflow, type Json, phaseIs, readHandlerLog, workflowManifest } from './helpers.ts';

// Shared AgentPools and fair share between namespaces, end to end: a real operator process, real
// agentflow-agent processes in the pods of one pool in the owner's namespace, real etcd and
// kube-apiserver. Tenants' Workflows name the pool as "<owner>/shared"; the handlers note when they
// start (and for which namespace), from which the test measures each tenant's share of the slots.

let cluster: ClusterHandle;
let owner: string;
let tenantA: string;
let tenantB: string;
let stranger: string;
let operator: OperatorProcess;
let handlerLog: string;
const group = uniqueName('g');
const AGENTS = 2;
const CAPACITY = 8;
const SLOTS = AGENTS * CAPACITY;

const sharedPool = (namespaces: { name: string; weight?: number }[]) => {
  const p = fixturePool(owner, 'shared', {
    group,
    replicas: AGENTS,
    capacity: CAPACITY,
    handlersModule: 'test/fixtures/agent/limit-handlers.mjs',
    handlerLog,
  });
  p.spec.sharing = { namespaces };
  return p;
};

const starts = () => readHandlerLog(handlerLog).filter((l) => l.handler === 'hold' && l.event === 'start');

beforeAll(async () => {
  cluster = testCluster();
  await installCrds(cluster);
  owner = await createNamespace(cluster, 'owner');
  tenantA = await createNamespace(cluster, 'tenant-a');
  tenantB = await createNamespace(cluster, 'tenant-b');
  stranger = await createNamespace(cluster, 'stranger');
  handlerLog = join(cluster.info.dir, `handlers-${owner}.jsonl`);
  await startNodes(cluster, nodes(group, [{ suffix: 'a', cpu: '8', memory: '16Gi' }]));
  operator = new OperatorProcess(cluster, {
    name: 'op-share',
    namespace: owner,
    watchNamespaces: [owner, tenantA, tenantB, stranger],
    prefix: `/${uniqueName('share')}`,
    election: uniqueName('share'),
    dispatcherPort: await freePort(),
  });
  await operator.waitFor('Operator is leading');
  await apply(cluster, sharedPool([{ name: tenantA }, { name: tenantB }]));
  await until(
    `${AGENTS} agents connected`,
    () => pool(cluster, owner, 'shared'),
    (x) => x.status?.connectedAgents === AGENTS,
    60_000,
  );
}, 120_000);

afterAll(async () => {
  operator?.kill('SIGTERM');
  await operator?.exited;
  for (const ns of [tenantA, tenantB, stranger, owner])
    await cluster.client.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  await cluster.close();
});

describe('shared AgentPools', () => {
  it("runs another namespace's workflow in the pool's agents, with that workflow's own namespace", async () => {
    await apply(
      cluster,
      workflowManifest(tenantA, 'hello', {
        pool: `${owner}/shared`,
        tasks: [{ name: 'one', handler: 'hold', input: { key: 'hello', ms: 10 } }],
      }),
    );
    const w = await until('hello done', () => getWorkflow(cluster, tenantA, 'hello'), phaseIs('Succeeded', 'Failed'));
    expect(w.status.phase).toBe('Succeeded');
    const ran = starts().filter((l) => l.key === 'hello');
    expect(ran).toHaveLength(1);
    // The handler saw the task as tenant A's (its state and signals are that workflow's), by a qualified id.
    expect(ran[0]).toMatchObject({ namespace: tenantA, workflow: 'hello', task: `${tenantA}/hello/one` });
  });

  it('agents of same-named pools in two namespaces (both pods shared-0) do not displace each other', async () => {
    // Before agent ids were kept per namespace, tenant B's shared-0 registering closed the owner's
    // shared-0 stream and the two took turns knocking each other off.
    const own = fixturePool(tenantB, 'shared', {
      group,
      replicas: 1,
      capacity: 2,
      handlersModule: 'test/fixtures/agent/limit-handlers.mjs',
      handlerLog,
    });
    await apply(cluster, own);
    await until(
      "tenant B's own pool connected",
      () => pool(cluster, tenantB, 'shared'),
      (x) => x.status?.connectedAgents === 1,
      60_000,
    );
    const registered = () => operator.lines.filter((l) => l.msg === 'Agent registered').length;
    const before = registered();
    // Both pools stay fully connected, and nobody re-registers, over several lease sweeps.
    for (let i = 0; i < 6; i++) {
      await new Promise((r) => setTimeout(r, 500));
      expect((await pool(cluster, owner, 'shared')).status?.connectedAgents).toBe(AGENTS);
      expect((await pool(cluster, tenantB, 'shared')).status?.connectedAgents).toBe(1);
    }
    expect(registered()).toBe(before);
    // "shared" in tenant B is its own pool; "<owner>/shared" the owner's: each runs on its own agents.
    await apply(
      cluster,
      workflowManifest(tenantB, 'both', {
        tasks: [
          { name: 'mine', pool: 'shared', handler: 'hold', input: { key: 'both-mine', ms: 10 } },
          { name: 'theirs', pool: `${owner}/shared`, handler: 'hold', input: { key: 'both-theirs', ms: 10 } },
        ],
      }),
    );
    const w = await until('both done', () => getWorkflow(cluster, tenantB, 'both'), phaseIs('Succeeded', 'Failed'));
    expect(w.status.phase).toBe('Succeeded');
    // An agent sees a task of its own namespace by workflow/task, another namespace's qualified.
    expect(starts().find((l) => l.key === 'both-mine')?.task).toBe('both/mine');
    expect(starts().find((l) => l.key === 'both-theirs')?.task).toBe(`${tenantB}/both/theirs`);
    await cluster.client.delete(`/apis/agentflow.io/v1alpha1/namespaces/${tenantB}/agentpools/shared`);
  });

  it('a namespace the pool does not list waits as if the pool did not exist, and runs once it is listed', async () => {
    await apply(
      cluster,
      workflowManifest(stranger, 'probe', {
        pool: `${owner}/shared`,
        tasks: [{ name: 'one', handler: 'hold', input: { key: 'probe', ms: 10 } }],
      }),
    );
    const waiting = await until(
      'probe waiting',
      () => getWorkflow(cluster, stranger, 'probe'),
      (w) => (w.status?.conditions ?? []).some((c: Json) => c.type === 'Waiting' && c.status === 'True'),
    );
    const cond = (waiting.status.conditions as Json[]).find((c) => c.type === 'Waiting');
    expect(cond?.reason).toBe('PoolNotFound');
    expect(cond?.message).toContain(
      `AgentPool "${owner}/shared" does not exist or is not shared with the workflow's namespace`,
    );
    expect(starts().filter((l) => l.key === 'probe')).toHaveLength(0);
    // The pool's owner lists the namespace: the waiting workflow runs.
    await apply(cluster, sharedPool([{ name: tenantA }, { name: tenantB }, { name: stranger }]));
    const done = await until(
      'probe done',
      () => getWorkflow(cluster, stranger, 'probe'),
      phaseIs('Succeeded', 'Failed'),
    );
    expect(done.status.phase).toBe('Succeeded');
    await apply(cluster, sharedPool([{ name: tenantA }, { name: tenantB }]));
  });

  it('refuses a malformed pool reference at admission, naming the field', async () => {
    const err = await apply(
      cluster,
      workflowManifest(tenantA, 'bad-ref', {
        pool: `${owner}/shared/extra`,
        tasks: [{ name: 'one', handler: 'hold' }],
      }),
    ).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(String(err)).toContain('spec.pool');
  });
});

describe('fair share between namespaces', () => {
  it("with tenant A flooding 10,000 tasks, tenant B's 100 get its weight's share of the slots (1:1, then 1:3)", async () => {
    const TASK_MS = 100;
    const FLOOD_WORKFLOWS = 50;
    const PER_WORKFLOW = 200;
    const items = (n: number) => Array.from({ length: n }, (_, i) => i);
    const spec = (key: string, n: number) => ({
      pool: `${owner}/shared`,
      inputs: { items: items(n) },
      tasks: [{ name: 'work', handler: 'hold', forEach: 'inputs.items', input: { key, ms: TASK_MS } }],
    });
    for (let i = 0; i < FLOOD_WORKFLOWS; i++)
      await apply(cluster, workflowManifest(tenantA, `flood-${i}`, spec('flood', PER_WORKFLOW)));
    // A's backlog is deep and every slot busy with A's work before B arrives.
    await until(
      "A's flood running",
      () => starts().filter((l) => l.key === 'flood').length,
      (n) => n >= 4 * SLOTS,
      120_000,
    );
    const submitted = Date.now();
    await apply(cluster, workflowManifest(tenantB, 'small', spec('small', 100)));
    const b = await until(
      "B's 100 tasks done",
      () => getWorkflow(cluster, tenantB, 'small'),
      phaseIs('Succeeded', 'Failed'),
      120_000,
    );
    const finished = Date.now();
    expect(b.status.phase).toBe('Succeeded');
    const log = starts();
    const bStarts = log.filter((l) => l.key === 'small');
    expect(bStarts).toHaveLength(100);
    const first = Math.min(...bStarts.map((l) => l.at as number));
    const last = Math.max(...bStarts.map((l) => l.at as number));
    const aDuring = log.filter((l) => l.key === 'flood' && l.at >= first && l.at <= last).length;
    const share = bStarts.length / (bStarts.length + aDuring);
    // Equal weights: B's share is half the slots while it has work. Round-robin over workflows alone
    // would give it 1 in 51 (its one workflow against A's fifty).
    const fairMs = (100 * TASK_MS) / (SLOTS / 2);
    const waitedMs = finished - submitted;
    const aQueued = FLOOD_WORKFLOWS * PER_WORKFLOW - log.filter((l) => l.key === 'flood').length;
    console.log(
      `fair share: B's 100 tasks took ${waitedMs} ms from apply to Succeeded (first start ${first - submitted} ms, last ${last - submitted} ms); ` +
        `B started ${bStarts.length} and A ${aDuring} in that window: B's share ${(share * 100).toFixed(1)} % (weight share 50 %, per-workflow round-robin ${(100 / (FLOOD_WORKFLOWS + 1)).toFixed(1)} %); ` +
        `at half of ${SLOTS} slots B's work alone takes ${fairMs} ms; ~${aQueued} of A's tasks still queued`,
    );
    expect(share).toBeGreaterThan(0.4);
    expect(share).toBeLessThan(0.6);

    // The owner gives B three times A's weight: B's next 100 get three quarters of the slots.
    await apply(cluster, sharedPool([{ name: tenantA }, { name: tenantB, weight: 3 }]));
    // The pool's status has seen the new generation once the operator's pool informer delivered it,
    // and that informer hands the new weights to the dispatcher as it delivers (not a fixed wait).
    await until(
      'the pool status to observe the new weights',
      () => pool(cluster, owner, 'shared'),
      (x) => x.status?.observedGeneration !== undefined && x.status.observedGeneration === x.metadata.generation,
      30_000,
    );
    const again = Date.now();
    await apply(cluster, workflowManifest(tenantB, 'weighted', spec('weighted', 100)));
    const w = await until(
      "B's weighted 100 done",
      () => getWorkflow(cluster, tenantB, 'weighted'),
      phaseIs('Succeeded', 'Failed'),
      120_000,
    );
    expect(w.status.phase).toBe('Succeeded');
    const log2 = starts();
    const wStarts = log2.filter((l) => l.key === 'weighted').map((l) => l.at as number);
    const [w0, w1] = [Math.min(...wStarts), Math.max(...wStarts)];
    const aDuring2 = log2.filter((l) => l.key === 'flood' && l.at >= w0 && l.at <= w1).length;
    const share3 = wStarts.length / (wStarts.length + aDuring2);
    console.log(
      `fair share, weights 1:3: B's 100 took ${Date.now() - again} ms; B started ${wStarts.length} and A ${aDuring2} in that window: B's share ${(share3 * 100).toFixed(1)} % (weight share 75 %)`,
    );
    expect(share3).toBeGreaterThan(0.65);
    expect(share3).toBeLessThan(0.85);
    // A's flood is cancelled with its workflows (its queue must not outlive the test).
    for (let i = 0; i < FLOOD_WORKFLOWS; i++)
      await cluster.client
        .delete(`/apis/agentflow.io/v1alpha1/namespaces/${tenantA}/workflows/flood-${i}`)
        .catch(() => undefined);
  }, 300_000);
});
