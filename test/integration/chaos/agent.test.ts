// An agent cut off from the dispatcher (a stalled network path: nothing
// passes, nothing is refused) for longer than its lease, then reconnected:
// its attempts go back to the queue when the lease expires, run again once it
// is back, and commit exactly once; the results it held from before the cut
// are refused, not committed twice. A workflow of another pool runs through.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StateStore } from '../../../src/state/index.ts';
import { BlackholeProxy } from '../../cluster/blackhole-proxy.ts';
import { testStore } from '../state/helpers.ts';
import { expectExactlyOnce, Stack } from './stack.ts';

const AGENT_LEASE_TTL = 4;
const stack = new Stack({ agents: 1, capacity: 8, agentLeaseTtl: AGENT_LEASE_TTL });
let store: StateStore;
let proxy: BlackholeProxy;

beforeAll(async () => {
  await stack.start();
  store = testStore(stack.prefix);
  proxy = new BlackholeProxy('127.0.0.1', stack.dispatcherPort);
  const port = await proxy.start();
  await stack.pool('cut', stack.ns, 1, [{ name: 'AGENTFLOW_DISPATCHER', value: `127.0.0.1:${port}` }]);
}, 120_000);
afterAll(async () => {
  store?.close();
  await proxy?.close();
  await stack.close();
});

describe('chaos: an agent cut off', () => {
  it('past its lease, then reconnected: its tasks run again and commit once; another pool is unaffected', async () => {
    const tasks = Array.from({ length: 8 }, (_, i) => ({ name: `t${i}`, handler: 'work', input: { ms: 3_000, i } }));
    await stack.workflow('cutoff', { pool: 'cut', tasks });
    for (let i = 0; ; i++) {
      const w = await stack.get('cutoff');
      if ((w.status?.progress?.running ?? 0) === 8) break;
      if (i > 300) throw new Error('the cut-off pool never ran its 8 tasks');
      await new Promise((r) => setTimeout(r, 100));
    }
    proxy.partition();
    const cutAt = Date.now();
    await stack.workflow('beside', {
      pool: 'agents',
      tasks: [{ name: 'one', handler: 'work', input: { ms: 200 } }],
    });
    const beside = await stack.finished('beside', 30_000);
    expect(beside.status.phase).toBe('Succeeded');
    // Past the agent's lease (and then some), the path comes back.
    await new Promise((r) => setTimeout(r, AGENT_LEASE_TTL * 1000 * 3));
    proxy.heal();
    const healedAt = Date.now();
    const w = await stack.finished('cutoff', 90_000);
    console.log(
      `agent cut off ${healedAt - cutAt} ms (lease TTL ${AGENT_LEASE_TTL} s): its workflow finished ${Date.now() - healedAt} ms after the path came back; the other pool's in ${beside.status.finishedAt ? 'time' : '?'}`,
    );
    expect(w.status.phase).toBe('Succeeded');
    await expectExactlyOnce(
      store,
      stack.ns,
      'cutoff',
      tasks.map((t) => t.name),
    );
    // The attempts that ran before the cut lost their claims with the lease: every result is a later attempt.
    const results = await store.list(`${store.key('results', stack.ns, 'cutoff')}/`);
    for (const e of results.entries) expect(JSON.parse(e.value).attempt).toBeGreaterThan(1);
  }, 180_000);
});
