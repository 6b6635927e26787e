import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RESTORE_BUMP_REVISION } from '../../../src/backup/cli.ts';
import { type Entry, isClaimEntry, StateStore } from '../../../src/state/index.ts';
import { binaryPath } from '../../cluster/binaries.ts';
import { EtcdCluster } from '../../cluster/etcd.ts';
import { until } from '../operator/helpers.ts';
import { expectExactlyOnce, type Json, Stack } from './stack.ts';

// Backup and restore end to end: a 200-task workflow runs on a private etcd;
// `agentflow backup snapshot` (the command the chart's CronJob runs) takes a
// snapshot mid-run; the workflow finishes; etcd's data is destroyed and
// `agentflow restore` (etcd's own etcdutl underneath) restores the snapshot
// into a fresh data dir; a new operator starts on it. The Workflow said
// Succeeded, its records say Running: the operator resumes from the records.
// Every result committed before the snapshot is kept as it was (never re-run);
// the rest is committed exactly once after the restore; the audit chain
// verifies and says where the restore joined it.

const execFileP = promisify(execFile);
const dir = mkdtempSync(join(tmpdir(), 'agentflow-restore-'));
const etcd = new EtcdCluster(dir, 1);
const backups = join(dir, 'backups');
let stack: Stack;
let store: StateStore;
const N = 200;

const cli = (args: string[]) =>
  execFileP(process.execPath, ['src/cli/main.ts', ...args], { encoding: 'utf8', timeout: 120_000 });

/** The committed results of a workflow (a running attempt's claim shares its task's key: left out). */
const results = async (wf: string): Promise<Entry[]> =>
  (await store.list(`${store.key('results', stack.ns, wf)}/`)).entries.filter((e) => !isClaimEntry(e));
const taskNames = ['gen', 'join', ...Array.from({ length: N }, (_, i) => `step.${i}`)];

beforeAll(async () => {
  await etcd.start();
  stack = new Stack({
    etcdEndpoints: etcd.endpoints,
    operators: 1,
    leaseTtl: 3,
    agentLeaseTtl: 5,
    agents: 2,
    capacity: 8,
  });
  await stack.start();
  store = new StateStore({ endpoints: etcd.endpoints, prefix: stack.prefix });
}, 180_000);
afterAll(async () => {
  store?.close();
  await stack?.close();
  await etcd.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('backup and restore', () => {
  it('restores a snapshot taken mid-run: what was committed stays, the rest runs once, the audit verifies', async () => {
    await stack.workflow('big', {
      pool: 'agents',
      tasks: [
        { name: 'gen', handler: 'range', input: { count: N } },
        { name: 'step', handler: 'work', dependsOn: ['gen'], forEach: 'tasks.gen.output.items', input: { ms: 300 } },
        { name: 'join', handler: 'noop', dependsOn: ['step'] },
      ],
    });
    await until(
      'a quarter committed',
      () => results('big'),
      (r) => r.length >= 50,
      60_000,
    );

    // The snapshot, as the CronJob takes it.
    const taken = await cli([
      'backup',
      'snapshot',
      '--dir',
      backups,
      '--retain',
      '3',
      '--etcd-endpoints',
      etcd.endpoints.join(','),
      '--etcd-prefix',
      stack.prefix,
    ]);
    const info = JSON.parse(taken.stdout) as { file: string; revision: number; size: number; sha256: string };
    const snapshot = join(backups, info.file);
    // What the snapshot holds: the results committed at its revision.
    const before = new Map<string, number>();
    for (const e of await results('big')) if (e.modRevision <= info.revision) before.set(e.key, e.modRevision);
    expect(before.size).toBeGreaterThanOrEqual(50);
    expect(before.size).toBeLessThan(N);
    const latest = JSON.parse((await store.get(store.key('backups', 'latest')))?.value ?? '{}');
    expect(latest).toMatchObject({ file: info.file, revision: info.revision, sha256: info.sha256 });

    const done = await stack.finished('big', 120_000);
    expect(done.status.phase).toBe('Succeeded');
    expect((await results('big')).length).toBe(N + 2);

    // Lose etcd: the operator goes, etcd's data goes.
    for (const o of stack.operators) o.kill('SIGKILL');
    await Promise.all(stack.operators.map((o) => o.exited));
    store.close();
    await etcd.stop();
    const member = etcd.members[0] as (typeof etcd.members)[number];
    rmSync(join(dir, `${member.name}.data`), { recursive: true, force: true });

    const verified = await cli(['backup', 'verify', snapshot]);
    expect(verified.stdout).toContain(`ok: revision ${info.revision}, ${info.size} bytes, sha256 ${info.sha256}`);
    const peer = `http://127.0.0.1:${member.peerPort}`;
    await cli([
      'restore',
      snapshot,
      '--data-dir',
      join(dir, `${member.name}.data`),
      '--name',
      member.name,
      '--initial-cluster',
      `${member.name}=${peer}`,
      '--initial-advertise-peer-urls',
      peer,
      '--initial-cluster-token',
      'agentflow-test-cluster',
      '--etcdutl',
      binaryPath('etcdutl'),
    ]);
    await member.start();
    await etcd.healthy();
    store = new StateStore({ endpoints: etcd.endpoints, prefix: stack.prefix });
    // etcd is back at the snapshot: the results committed after it are gone.
    expect((await results('big')).length).toBe(before.size);

    const op = stack.operator(`${stack.election}-op-restored`);
    await op.waitFor('Operator is leading', 60_000);
    await until(
      'the run finished again from its records',
      async () => JSON.parse((await store.get(store.key('runs', stack.ns, 'big', 'run')))?.value ?? '{}'),
      (r: Json) => r.phase === 'Succeeded',
      120_000,
    );
    const again = await stack.finished('big', 30_000);
    expect(again.status.phase).toBe('Succeeded');

    const after = await results('big');
    expect(after.length).toBe(N + 2);
    for (const e of after) {
      const was = before.get(e.key);
      if (was !== undefined)
        expect({ key: e.key, modRevision: e.modRevision }).toEqual({ key: e.key, modRevision: was });
      else expect(e.modRevision, e.key).toBeGreaterThan(RESTORE_BUMP_REVISION);
    }
    await expectExactlyOnce(store, stack.ns, 'big', taskNames);
    const events = await stack.cluster.client.get<{ items: Json[] }>(`/api/v1/namespaces/${stack.ns}/events`);
    expect(events.items.some((e) => e.involvedObject.name === 'big' && e.reason === 'ResumedFromRecords')).toBe(true);
  });
});
