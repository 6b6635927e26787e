// Six parallel tasks answering ~800 KB each (an ordinary long model answer)
// beside a small workflow in another namespace: both finish, the big outputs
// are stored whole, and the small one is not held up by the big one. (Before:
// one commit transaction carried every result, etcd refused it as over
// 1.5 MiB, the batch was retried forever, and every other tenant's results
// waited behind it.)
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type StateStore, TaskClaims } from '../../../src/state/index.ts';
import { testStore } from '../state/helpers.ts';
import { expectExactlyOnce, Stack } from './stack.ts';

const stack = new Stack({ agents: 2, capacity: 4, otherNamespaces: 1 });
let store: StateStore;

beforeAll(async () => {
  await stack.start();
  store = testStore(stack.prefix);
}, 120_000);
afterAll(async () => {
  store?.close();
  await stack.close();
});

describe('chaos: large outputs', () => {
  it('six 800 KB outputs and a small workflow in another namespace both succeed, every task once', async () => {
    const other = stack.others[0] as string;
    await stack.pool('agents', other, 1);
    const big = ['b0', 'b1', 'b2', 'b3', 'b4', 'b5'];
    const started = Date.now();
    await stack.workflow('big', {
      pool: 'agents',
      tasks: [
        ...big.map((name) => ({ name, handler: 'big', input: { kb: 800 } })),
        { name: 'after', handler: 'noop', dependsOn: big, input: { i: 1 } },
      ],
    });
    await new Promise((r) => setTimeout(r, 2_000));
    const smallAt = Date.now();
    await stack.workflow(
      'small',
      { pool: 'agents', tasks: [{ name: 'one', handler: 'noop', input: { i: 2 } }] },
      other,
    );
    const small = await stack.finished('small', 30_000, other);
    const smallMs = Date.now() - smallAt;
    const done = await stack.finished('big', 60_000);
    const bigMs = Date.now() - started;
    console.log(`six 800 KB outputs: workflow finished in ${bigMs} ms; the small one beside it in ${smallMs} ms`);
    expect(small.status.phase).toBe('Succeeded');
    expect(done.status.phase).toBe('Succeeded');
    expect(done.status.progress).toMatchObject({ total: 7, succeeded: 7, failed: 0 });
    const claims = new TaskClaims(store);
    for (const name of big) {
      const r = await claims.result({ namespace: stack.ns, workflow: 'big', task: name });
      expect((r?.output as { text: string }).text.length).toBe(800 * 1024);
      expect((r?.output as { text: string }).text.startsWith(`big/${name}`)).toBe(true);
    }
    await expectExactlyOnce(store, stack.ns, 'big', [...big, 'after']);
    await expectExactlyOnce(store, other, 'small', ['one']);
    // Finished runs leave the leader's memory (their records stay in etcd): 4.8 MB of outputs included.
    const leader = await stack.leader();
    const port = (await leader.waitFor('Ops server listening')).port as number;
    let inMemory = Number.NaN;
    for (let i = 0; i < 100; i++) {
      const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      inMemory = Number(/^agentflow_workflow_runs_in_memory (\d+)/m.exec(text)?.[1]);
      if (inMemory === 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(inMemory).toBe(0);
    // ...and the status a user reads is still there.
    expect((await stack.get('big')).status.phase).toBe('Succeeded');
  }, 180_000);
});
