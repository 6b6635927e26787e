// Shared state stays linearizable under etcd faults: eight attempts on four
// agents do random get / put / CAS on four keys through ctx.state while etcd
// is killed -9 and restarted, then frozen longer than the call timeout. The
// history is checked by porcupine (tools/lincheck). An operation whose outcome
// the SDK reported unknown is resolved from etcd's own revision history
// (values are unique): applied → kept with an open end; not applied → dropped.
// A write the SDK reported as not applied must indeed be absent.
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SharedState, StateStore } from '../../../src/state/index.ts';
import { EtcdServer } from '../../cluster/etcd.ts';
import { checkLinearizable, type LinOp } from '../../cluster/lincheck.ts';
import { Stack } from './stack.ts';

const dir = mkdtempSync(join(tmpdir(), 'agentflow-lin-'));
const historyDir = join(dir, 'history');
mkdirSync(historyDir);
const etcd = new EtcdServer({ dir, name: 'lin', unsafeNoFsync: true });
let stack: Stack;
let store: StateStore;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const KEYS = 4;

beforeAll(async () => {
  await etcd.start();
  stack = new Stack({ etcdEndpoints: [etcd.endpoint], leaseTtl: 3, agentLeaseTtl: 15, agents: 4, capacity: 2 });
  await stack.start();
  await stack.pool('lin', stack.ns, 4, [
    { name: 'AGENTFLOW_HANDLERS_MODULE', value: resolve('test/fixtures/agent/lin-handlers.mjs') },
  ]);
  store = new StateStore({ endpoints: [etcd.endpoint], prefix: stack.prefix });
}, 180_000);
afterAll(async () => {
  store?.close();
  await stack?.close();
  etcd.signal('SIGCONT');
  await etcd.stop();
  rmSync(dir, { recursive: true, force: true });
});

interface Recorded {
  op: 'get' | 'put' | 'cas';
  key: string;
  value?: string;
  expect?: string;
  call: number;
  return: number;
  ok?: boolean;
  error?: string;
  message?: string;
}

describe('chaos: linearizable shared state', () => {
  it('get/put/CAS through ctx.state under etcd kill -9 and a freeze past the call timeout is linearizable', async () => {
    const base = process.hrtime.bigint().toString();
    await stack.workflow('lin', {
      pool: 'lin',
      tasks: Array.from({ length: 8 }, (_, i) => ({
        name: `w${i}`,
        handler: 'linwork',
        input: { ops: 150, keys: KEYS, dir: historyDir, base, pauseMs: 40 },
      })),
    });
    await sleep(2_000);
    await etcd.crash();
    await sleep(1_500);
    await etcd.start();
    await sleep(2_000);
    etcd.signal('SIGSTOP');
    await sleep(7_000); // past the operator's 5 s call timeout (and its 2 s renew deadline)
    etcd.signal('SIGCONT');
    const w = await stack.finished('lin', 150_000);
    expect(w.status.phase).toBe('Succeeded');

    // What etcd holds: every value each key ever had, oldest revision last.
    const state = new SharedState(store, { kind: 'workflow', namespace: stack.ns, workflow: 'lin' });
    const written = new Map<string, Set<string>>();
    for (let k = 0; k < KEYS; k++) {
      const key = `k${k}`;
      const values = (await state.history(key, 1_000_000)).map((v) => String(v.value));
      // An acknowledged write applied twice would show its unique value at two revisions.
      expect(values.length).toBe(new Set(values).size);
      written.set(key, new Set(values));
    }

    const history: LinOp[] = [];
    const counts = { ops: 0, unknown: 0, unknownApplied: 0, notApplied: 0, failedReads: 0 };
    let client = 0;
    for (const file of readdirSync(historyDir)) {
      client++;
      const lines = readFileSync(join(historyDir, file), 'utf8').trim().split('\n');
      for (const line of lines) {
        const r = JSON.parse(line) as Recorded;
        counts.ops++;
        const applied = r.value !== undefined && (written.get(r.key)?.has(r.value) ?? false);
        if (r.op === 'get') {
          if (r.error) counts.failedReads++;
          else
            history.push({
              op: 'get',
              client,
              key: r.key,
              call: r.call,
              return: r.return,
              output: { value: r.value ?? '' },
            });
          continue;
        }
        const value = r.value as string;
        if (!r.error) {
          // Acknowledged: a successful write is in etcd's history; a refused CAS is not.
          expect({ op: r.op, value, applied }).toEqual({ op: r.op, value, applied: r.op === 'put' || r.ok === true });
          history.push(
            r.op === 'put'
              ? { op: 'put', client, key: r.key, value, call: r.call, return: r.return, output: {} }
              : {
                  op: 'cas',
                  client,
                  key: r.key,
                  value,
                  expect: r.expect ?? '',
                  call: r.call,
                  return: r.return,
                  output: { ok: r.ok === true },
                },
          );
          continue;
        }
        if (r.error === 'StateOutcomeUnknownError') {
          counts.unknown++;
          if (!applied) continue; // never happened: no constraint
          counts.unknownApplied++;
          // It happened at some point after its call: an open end, outcome known to be "applied".
          history.push(
            r.op === 'put'
              ? { op: 'put', client, key: r.key, value, call: r.call, return: null, output: null }
              : {
                  op: 'cas',
                  client,
                  key: r.key,
                  value,
                  expect: r.expect ?? '',
                  call: r.call,
                  return: null,
                  output: null,
                },
          );
          client++; // later operations of this caller must not look concurrent-but-ordered with the open one
          continue;
        }
        // Reported as not applied (etcd unreachable, leadership gone, attempt over): it must not be in etcd.
        counts.notApplied++;
        expect({ value, error: r.error, applied }).toEqual({ value, error: r.error, applied: false });
      }
    }
    console.log(
      `linearizability: ${counts.ops} operations from ${readdirSync(historyDir).length} attempts; ${counts.unknown} outcome-unknown (${counts.unknownApplied} applied per etcd), ${counts.notApplied} refused as not applied, ${counts.failedReads} failed reads`,
    );
    expect(history.length).toBeGreaterThan(500);
    const verdict = await checkLinearizable(history, { viz: join(tmpdir(), 'agentflow-lincheck.html') });
    expect(verdict.output).toContain('linearizable');
    expect(verdict.linearizable).toBe(true);
  }, 300_000);
});
