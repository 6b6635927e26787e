import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoCache } from '../../../src/state/index.ts';
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
import { testStore } from '../state/helpers.ts';
import { fixturePool, getWorkflow, type Json, phaseIs, readHandlerLog, workflowManifest } from './helpers.ts';

// Memoization end to end: a real operator process, real agentflow-agent processes, real etcd and
// kube-apiserver. The `stamp` handler returns a value no other run returns and notes each start, so
// the test can tell an output that came from the cache (same stamp, no start) from one that ran.
// (Input fields are not named n or y: kubectl reads YAML 1.1, where those keys are booleans.)

let cluster: ClusterHandle;
let ns: string;
let other: string;
let operator: OperatorProcess;
let handlerLog: string;
const prefix = `/${uniqueName('memo')}`;
const group = uniqueName('g');

const starts = (key: string) => readHandlerLog(handlerLog).filter((l) => l.handler === 'stamp' && l.key === key);
const done = (namespace: string, name: string) =>
  until(`${name} finished`, () => getWorkflow(cluster, namespace, name), phaseIs('Succeeded', 'Failed'), 60_000);
const taskOf = (w: Json, name: string): Json => (w.status?.tasks as Json[]).find((t) => t.name === name) as Json;

const memoWorkflow = (namespace: string, name: string, task: Json, inputs: Json = {}) =>
  workflowManifest(namespace, name, {
    pool: 'agents',
    inputs,
    tasks: [{ name: 'summarise', handler: 'stamp', ...task }],
  });

beforeAll(async () => {
  cluster = testCluster();
  await installCrds(cluster);
  ns = await createNamespace(cluster, 'memo');
  other = await createNamespace(cluster, 'memo-other');
  handlerLog = join(cluster.info.dir, `handlers-${ns}.jsonl`);
  await startNodes(cluster, nodes(group, [{ suffix: 'a', cpu: '8', memory: '16Gi' }]));
  operator = new OperatorProcess(cluster, {
    name: 'op-memo',
    namespace: ns,
    watchNamespaces: [ns, other],
    prefix,
    election: uniqueName('memo'),
    dispatcherPort: await freePort(),
  });
  await operator.waitFor('Operator is leading');
  for (const n of [ns, other]) {
    await apply(
      cluster,
      fixturePool(n, 'agents', {
        group,
        replicas: 1,
        capacity: 8,
        handlersModule: 'test/fixtures/agent/limit-handlers.mjs',
        handlerLog,
      }),
    );
    await until(
      `the agent of ${n} connected`,
      () => pool(cluster, n, 'agents'),
      (x) => x.status?.connectedAgents === 1,
      60_000,
    );
  }
}, 120_000);

afterAll(async () => {
  operator?.kill('SIGTERM');
  await operator?.exited;
  for (const n of [ns, other]) await cluster.client.delete(`/api/v1/namespaces/${n}`).catch(() => undefined);
  await cluster.close();
});

describe('memoized tasks', () => {
  it('a second run with the same handler and input takes the cached output without dispatch, marked memoized', async () => {
    const task = { input: { key: 'same', num: 1 }, memoize: { maxAgeSeconds: 600 } };
    await apply(cluster, memoWorkflow(ns, 'first', task));
    const first = await done(ns, 'first');
    expect(first.status.phase).toBe('Succeeded');
    expect(taskOf(first, 'summarise').memoized).toBeUndefined();
    expect(starts('same')).toHaveLength(1);

    await apply(cluster, memoWorkflow(ns, 'second', task));
    const second = await done(ns, 'second');
    expect(second.status.phase).toBe('Succeeded');
    // No agent ran it: the output is the first run's, stamp and all.
    expect(starts('same')).toHaveLength(1);
    expect(second.status.outputs.summarise).toEqual(first.status.outputs.summarise);
    const t = taskOf(second, 'summarise');
    expect(t.memoized).toBe(1);
    expect(t.message).toMatch(/^memoized: output of first\/summarise attempt 1, cached \d{4}-/);
    // Another namespace has its own cache: the same task runs there.
    await apply(cluster, memoWorkflow(other, 'elsewhere', task));
    expect((await done(other, 'elsewhere')).status.phase).toBe('Succeeded');
    expect(starts('same')).toHaveLength(2);
    // A different input is a different key.
    await apply(cluster, memoWorkflow(ns, 'third', { ...task, input: { key: 'same', num: 2 } }));
    const third = await done(ns, 'third');
    expect(taskOf(third, 'summarise').memoized).toBeUndefined();
    expect(starts('same')).toHaveLength(3);
  });

  it('runs again once the cached output is older than maxAgeSeconds', async () => {
    const task = { input: { key: 'aging', num: 1 }, memoize: { maxAgeSeconds: 1 } };
    await apply(cluster, memoWorkflow(ns, 'aging-1', task));
    await done(ns, 'aging-1');
    await new Promise((r) => setTimeout(r, 1_500));
    await apply(cluster, memoWorkflow(ns, 'aging-2', task));
    const w = await done(ns, 'aging-2');
    expect(w.status.phase).toBe('Succeeded');
    expect(taskOf(w, 'summarise').memoized).toBeUndefined();
    expect(starts('aging')).toHaveLength(2);
    // Its fresh output replaced the old entry: a run that takes any entry up to 10 minutes old is
    // memoized from aging-2, not aging-1. (Not maxAgeSeconds 1 again: on a loaded machine more than
    // a second can pass between aging-2's commit and aging-3's lookup. The key leaves the age out.)
    await apply(cluster, memoWorkflow(ns, 'aging-3', { ...task, memoize: { maxAgeSeconds: 600 } }));
    const again = await done(ns, 'aging-3');
    expect(taskOf(again, 'summarise').message).toContain('memoized: output of aging-2/summarise');
    expect(starts('aging')).toHaveLength(2);
  });

  it('a CEL key decides what counts as the same work; forEach items are memoized one by one', async () => {
    const task = {
      forEach: 'inputs.items',
      input: { key: 'cel', num: '${{ item }}', noise: '${{ inputs.noise }}' },
      memoize: { key: "'item-' + string(input.num)" },
    };
    await apply(cluster, memoWorkflow(ns, 'cel-1', task, { items: [1, 2, 3], noise: 'a' }));
    const first = await done(ns, 'cel-1');
    expect(first.status.phase, first.status.message).toBe('Succeeded');
    expect(starts('cel')).toHaveLength(3);
    // Other noise (not in the key), one more item: only the new item runs.
    await apply(cluster, memoWorkflow(ns, 'cel-2', task, { items: [1, 2, 3, 4], noise: 'b' }));
    const w = await done(ns, 'cel-2');
    expect(w.status.phase).toBe('Succeeded');
    expect(starts('cel')).toHaveLength(4);
    expect(taskOf(w, 'summarise').memoized).toBe(3);
  });

  it('the cache lives in etcd per namespace, one entry per key, with where it came from', async () => {
    const store = testStore(prefix);
    try {
      const entries = await new MemoCache(store).list(ns);
      const items = entries.filter((e) => e.key.startsWith('item-'));
      expect(items.map((e) => e.key).sort()).toEqual(['item-1', 'item-2', 'item-3', 'item-4']);
      expect(items.find((e) => e.key === 'item-4')).toMatchObject({
        workflow: 'cel-2',
        task: 'summarise.3',
        attempt: 1,
      });
      expect((await new MemoCache(store).list(other)).map((e) => e.workflow)).toEqual(['elsewhere']);
    } finally {
      store.close();
    }
  });
});
