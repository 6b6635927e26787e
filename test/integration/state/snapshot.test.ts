import { execFile } from 'node:child_process';
import {
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { SnapshotError, takeSnapshot, verifySnapshot } from '../../../src/backup/snapshot.ts';
import { BackupStatus } from '../../../src/backup/status.ts';
import { silentLogger } from '../../../src/lib/log.ts';
import { Registry } from '../../../src/lib/metrics.ts';
import type { StateStore } from '../../../src/state/index.ts';
import { binaryPath } from '../../cluster/binaries.ts';
import { stateEtcdOf } from '../../cluster/state-etcd.ts';
import { testStore } from './helpers.ts';

// Snapshots through etcd's Snapshot API against the harness's etcd (TLS,
// client-certificate auth): taken by root (etcd allows the API to no one
// else), recorded in etcd, pruned to --retain; a corrupted, truncated or
// foreign file, or one whose sidecar disagrees, is refused by verify and by
// restore with a message naming the problem, and restore never writes into a
// data dir that holds anything.

const execFileP = promisify(execFile);
const dir = mkdtempSync(join(tmpdir(), 'agentflow-snapshot-'));
const prefix = `/snapshot-${process.pid}`;
let root: StateStore;
let operator: StateStore;

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await execFileP(process.execPath, ['src/cli/main.ts', ...args], { encoding: 'utf8', timeout: 60_000 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

function etcdFlags(as: 'root' | 'operator'): string[] {
  const etcd = stateEtcdOf(inject('cluster'));
  const cert = as === 'root' ? etcd.rootCert : etcd.operatorCert;
  return [
    `--etcd-endpoints=${etcd.endpoint}`,
    `--etcd-ca-file=${etcd.caFile}`,
    `--etcd-cert-file=${cert.cert}`,
    `--etcd-key-file=${cert.key}`,
    `--etcd-prefix=${prefix}`,
  ];
}

beforeAll(async () => {
  root = testStore(prefix, 'root');
  operator = testStore(prefix);
  for (let i = 0; i < 20; i++)
    await operator.client.put(operator.key('runs', 'ns', `wf${i}`, 'run')).value(`{"i":${i}}`);
});
afterAll(() => {
  root?.close();
  operator?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('etcd snapshots', () => {
  let good: string;

  it('takes a snapshot as root, checks it, records it in etcd and keeps --retain of them', async () => {
    const out = join(dir, 'out');
    const first = await takeSnapshot(root, out, { retain: 2, now: new Date('2026-01-01T00:00:00Z') });
    const current = Number((await root.client.get('x').exec()).header.revision);
    expect(first.info.revision).toBeGreaterThan(0);
    expect(first.info.revision).toBeLessThanOrEqual(current);
    expect(first.info.file).toBe(`agentflow-20260101T000000Z-r${first.info.revision}.db`);
    const v = await verifySnapshot(join(out, first.info.file));
    expect(v).toMatchObject({ size: first.info.size, sha256: first.info.sha256, revision: first.info.revision });
    // etcd's own tool reads the same revision.
    const status = await execFileP(binaryPath('etcdutl'), [
      'snapshot',
      'status',
      join(out, first.info.file),
      '-w',
      'json',
    ]);
    expect(JSON.parse(status.stdout)).toMatchObject({ revision: first.info.revision });
    expect(JSON.parse((await operator.get(operator.key('backups', 'latest')))?.value ?? '{}')).toMatchObject({
      file: first.info.file,
      revision: first.info.revision,
    });
    await takeSnapshot(root, out, { retain: 2, now: new Date('2026-01-01T01:00:00Z') });
    const third = await takeSnapshot(root, out, { retain: 2, now: new Date('2026-01-01T02:00:00Z') });
    expect(third.removed).toEqual([first.info.file]);
    expect(readdirSync(out).filter((f) => f.endsWith('.db'))).toHaveLength(2);
    expect(readdirSync(out).filter((f) => f.endsWith('.json'))).toHaveLength(2);
    good = join(out, third.info.file);
  });

  it('the command prints the snapshot as JSON; as a user etcd refuses the Snapshot API to, it fails and records why', async () => {
    const ok = await cli(['backup', 'snapshot', '--dir', join(dir, 'cli'), ...etcdFlags('root')]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(JSON.parse(ok.stdout)).toMatchObject({ dir: join(dir, 'cli'), removed: [] });
    const refused = await cli(['backup', 'snapshot', '--dir', join(dir, 'cli-op'), ...etcdFlags('operator')]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/^agentflow backup snapshot: failed: .*permission denied/m);
    const failure = JSON.parse((await operator.get(operator.key('backups', 'lastFailure')))?.value ?? '{}');
    expect(failure.message).toMatch(/permission denied/);
    expect(readdirSync(join(dir, 'cli-op'))).toEqual([]); // no partial file left
    const usage = await cli(['backup', 'snapshot', ...etcdFlags('root')]);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain('--dir (or AGENTFLOW_BACKUP_DIR) is required');
  });

  it('the operator exports what the snapshots recorded (read as its own etcd user) as gauges', async () => {
    const registry = new Registry();
    const status = new BackupStatus(operator, registry, silentLogger);
    await status.refresh();
    const latest = JSON.parse((await operator.get(operator.key('backups', 'latest')))?.value ?? '{}');
    const failure = JSON.parse((await operator.get(operator.key('backups', 'lastFailure')))?.value ?? '{}');
    const text = await registry.metrics();
    expect(text).toContain(`agentflow_backup_last_revision ${latest.revision}`);
    expect(text).toContain(`agentflow_backup_last_size_bytes ${latest.size}`);
    expect(text).toContain(`agentflow_backup_last_success_timestamp_seconds ${Date.parse(latest.takenAt) / 1000}`);
    expect(text).toContain(`agentflow_backup_last_failure_timestamp_seconds ${Date.parse(failure.at) / 1000}`);
  });

  it.each([
    [
      'a flipped byte',
      (f: string) => flipByte(f, 5000),
      'HashMismatch',
      "etcd's SHA-256 at its end does not match its database",
    ],
    ['a cut-short file', (f: string) => truncateSync(f, 5000), 'Truncated', 'cut short'],
    [
      'a file that is no snapshot',
      (f: string) => writeFileSync(f, Buffer.alloc(40_000, 7)),
      'NotAnEtcdSnapshot',
      'is not an etcd snapshot',
    ],
    ['a sidecar that disagrees', (f: string) => editSidecar(f), 'SidecarMismatch', 'but its sidecar recorded'],
  ])('refuses %s in verify and in restore, naming the problem', async (_what, damage, problem, message) => {
    const d = join(dir, `bad-${problem}`);
    mkdirSync(d, { recursive: true });
    const file = join(d, good.split('/').pop() as string);
    copyFileSync(good, file);
    copyFileSync(good.replace(/\.db$/, '.json'), file.replace(/\.db$/, '.json'));
    damage(file);
    const err = await verifySnapshot(file).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SnapshotError);
    expect(err).toMatchObject({ problem });
    const v = await cli(['backup', 'verify', file]);
    expect(v.code).toBe(1);
    expect(v.stderr).toContain(message);
    const dataDir = join(d, 'data');
    const r = await cli(['restore', file, '--data-dir', dataDir, '--etcdutl', binaryPath('etcdutl')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`agentflow restore: refusing to restore: ${file}:`);
    expect(r.stderr).toContain(message);
    expect(() => readdirSync(dataDir)).toThrow(); // nothing written
  });

  it('restores into a fresh data dir with etcdutl, and never into one that holds anything', async () => {
    const busy = join(dir, 'busy');
    mkdirSync(busy);
    writeFileSync(join(busy, 'keep'), 'x');
    const refused = await cli(['restore', good, '--data-dir', busy, '--etcdutl', binaryPath('etcdutl')]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(`--data-dir ${busy} is not empty`);
    const fresh = join(dir, 'fresh');
    const ok = await cli(['restore', good, '--data-dir', fresh, '--etcdutl', binaryPath('etcdutl')]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(readdirSync(join(fresh, 'member')).sort()).toEqual(['snap', 'wal']);
  });
});

function flipByte(file: string, at: number): void {
  const b = readFileSync(file);
  b[at] = (b[at] as number) ^ 0xff;
  writeFileSync(file, b);
}

function editSidecar(file: string): void {
  const side = file.replace(/\.db$/, '.json');
  const info = JSON.parse(readFileSync(side, 'utf8'));
  writeFileSync(side, JSON.stringify({ ...info, size: info.size + 1 }));
}
