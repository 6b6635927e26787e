// `agentflow backup snapshot|verify` and `agentflow restore`: snapshots of
// agentflow's etcd through etcd's Snapshot API, their integrity check, and a
// restore into a fresh etcd data directory with etcd's own `etcdutl snapshot
// restore`. Exit codes: 0 done, 1 failed (the message says why), 2 bad usage.
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { ETCD_FLAG_OPTIONS, ETCD_FLAGS_USAGE, etcdConnection, flag, UsageError } from '../lib/etcd-flags.ts';
import { VERSION_LINE } from '../lib/version.ts';
import { StateStore } from '../state/index.ts';
import { recordFailure, SnapshotError, takeSnapshot, verifySnapshot } from './snapshot.ts';

/** Default of --retain: a day of hourly snapshots. */
export const DEFAULT_RETAIN = 24;
/**
 * How far a restore moves etcd's revision on (etcdutl --bump-revision): past
 * every revision clients saw before the restore, so no fencing token (a claim's
 * createRevision) or watch position from the lost history is ever handed out again.
 */
export const RESTORE_BUMP_REVISION = 1_000_000_000;

const BACKUP_USAGE = `Usage: agentflow backup snapshot --dir DIR [--retain N] [etcd flags]
       agentflow backup verify SNAPSHOT

snapshot  takes a snapshot of agentflow's etcd through etcd's Snapshot API into DIR
          (agentflow-<time>-r<revision>.db and a .json sidecar with revision, size and
          sha256), records it in etcd (backups/latest), keeps the newest N (${DEFAULT_RETAIN}).
          With etcd auth on, the Snapshot API needs etcd's root user.
verify    checks a snapshot: a bbolt database, etcd's SHA-256 at its end, and its sidecar.

Flags of snapshot (each also read from the environment variable in brackets):
  --dir DIR                       where snapshots go                           [AGENTFLOW_BACKUP_DIR]
  --retain N                      snapshots kept, 1-1000 (${DEFAULT_RETAIN})                   [AGENTFLOW_BACKUP_RETAIN]
${ETCD_FLAGS_USAGE}
`;

const RESTORE_USAGE = `Usage: agentflow restore SNAPSHOT --data-dir DIR [flags]

Verifies SNAPSHOT (as "agentflow backup verify" does), then restores it into DIR, which must
not exist or be empty, with etcd's own "etcdutl snapshot restore". The revision is moved on by
${RESTORE_BUMP_REVISION} (--bump-revision, --mark-compacted) so nothing handed out before the
restore is handed out again. Start etcd on DIR afterwards with the same --name and
--initial-cluster, then the operator: it resumes every workflow from what the snapshot holds.

Flags:
  --data-dir DIR                  the new etcd data directory (required)
  --name NAME                     the etcd member's name (default)
  --initial-cluster LIST          name=peerURL,... of the restored cluster (NAME=http://localhost:2380)
  --initial-advertise-peer-urls URLS  this member's peer URLs (http://localhost:2380)
  --initial-cluster-token TOKEN   (etcd-cluster)
  --etcdutl PATH                  etcdutl to run (etcdutl on PATH)             [AGENTFLOW_ETCDUTL]
`;

export async function backupMain(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  try {
    switch (sub) {
      case 'snapshot':
        return await snapshotCommand(rest);
      case 'verify':
        return await verifyCommand(rest);
      case '--version':
        process.stdout.write(VERSION_LINE);
        return 0;
      case undefined:
      case '-h':
      case '--help':
      case 'help':
        process.stdout.write(BACKUP_USAGE);
        return sub === undefined ? 2 : 0;
      default:
        throw new UsageError(`unknown backup command "${sub}"`);
    }
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`agentflow backup: ${err.message}\n\n${BACKUP_USAGE}`);
    return 2;
  }
}

type Options = NonNullable<NonNullable<Parameters<typeof parseArgs>[0]>['options']>;

function parse(
  argv: string[],
  options: Options,
): { values: Record<string, string | boolean | undefined>; positionals: string[] } {
  try {
    return parseArgs({ args: argv, options, allowPositionals: true, strict: true }) as {
      values: Record<string, string | boolean | undefined>;
      positionals: string[];
    };
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

async function snapshotCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, {
    dir: { type: 'string' },
    retain: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
    ...ETCD_FLAG_OPTIONS,
  });
  if (values.help) {
    process.stdout.write(BACKUP_USAGE);
    return 0;
  }
  if (positionals.length > 0) throw new UsageError(`unexpected argument "${positionals[0]}"`);
  const dir = flag(values, 'dir', 'AGENTFLOW_BACKUP_DIR');
  if (!dir) throw new UsageError('--dir (or AGENTFLOW_BACKUP_DIR) is required');
  const retainRaw = flag(values, 'retain', 'AGENTFLOW_BACKUP_RETAIN') ?? String(DEFAULT_RETAIN);
  const retain = Number(retainRaw);
  if (!/^\d+$/.test(retainRaw) || retain < 1 || retain > 1000)
    throw new UsageError(`--retain: must be an integer 1-1000, got "${retainRaw}"`);
  const c = etcdConnection(values);
  const store = new StateStore({
    endpoints: c.etcd,
    prefix: c.etcdPrefix,
    // A snapshot streams the whole database: give it time, not a unary call's deadline.
    callTimeoutMs: 120_000,
    ...(c.etcdTls && { tls: c.etcdTls }),
    ...(c.etcdAuth && { auth: c.etcdAuth }),
  });
  try {
    const { info, removed } = await takeSnapshot(store, dir, { retain });
    process.stdout.write(`${JSON.stringify({ ...info, dir, removed })}\n`);
    return 0;
  } catch (err) {
    const message = (err as Error).message;
    const recorded = await recordFailure(store, message);
    process.stderr.write(
      `agentflow backup snapshot: failed: ${message}${recorded ? '' : ' (and could not record the failure in etcd)'}\n`,
    );
    return 1;
  } finally {
    store.close();
  }
}

async function verifyCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, { help: { type: 'boolean', short: 'h' } });
  if (values.help) {
    process.stdout.write(BACKUP_USAGE);
    return 0;
  }
  if (positionals.length !== 1) throw new UsageError('verify takes exactly one SNAPSHOT file');
  const file = positionals[0] as string;
  try {
    const v = await verifySnapshot(file);
    const taken = v.info ? `, taken ${v.info.takenAt}` : ' (no sidecar)';
    process.stdout.write(`${file}: ok: revision ${v.revision}, ${v.size} bytes, sha256 ${v.sha256}${taken}\n`);
    return 0;
  } catch (err) {
    if (!(err instanceof SnapshotError)) throw err;
    process.stderr.write(`agentflow backup verify: ${err.message}\n`);
    return 1;
  }
}

export async function restoreMain(argv: string[]): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  let positionals: string[];
  try {
    ({ values, positionals } = parse(argv, {
      'data-dir': { type: 'string' },
      name: { type: 'string' },
      'initial-cluster': { type: 'string' },
      'initial-advertise-peer-urls': { type: 'string' },
      'initial-cluster-token': { type: 'string' },
      etcdutl: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
      version: { type: 'boolean' },
    }));
    if (values.version) {
      process.stdout.write(VERSION_LINE);
      return 0;
    }
    if (values.help) {
      process.stdout.write(RESTORE_USAGE);
      return 0;
    }
    if (positionals.length !== 1) throw new UsageError('restore takes exactly one SNAPSHOT file');
    if (typeof values['data-dir'] !== 'string' || values['data-dir'] === '')
      throw new UsageError('--data-dir is required');
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`agentflow restore: ${err.message}\n\n${RESTORE_USAGE}`);
    return 2;
  }
  const file = positionals[0] as string;
  const dataDir = values['data-dir'] as string;
  try {
    await verifySnapshot(file);
  } catch (err) {
    if (!(err instanceof SnapshotError)) throw err;
    process.stderr.write(`agentflow restore: refusing to restore: ${err.message}\n`);
    return 1;
  }
  if (existsSync(dataDir) && readdirSync(dataDir).length > 0) {
    process.stderr.write(
      `agentflow restore: --data-dir ${dataDir} is not empty: restore into a fresh directory (etcd's data must not be mixed with a restore)\n`,
    );
    return 1;
  }
  const name = (values.name as string | undefined) ?? 'default';
  const peer = (values['initial-advertise-peer-urls'] as string | undefined) ?? 'http://localhost:2380';
  const args = [
    'snapshot',
    'restore',
    file,
    `--data-dir=${dataDir}`,
    `--name=${name}`,
    `--initial-cluster=${(values['initial-cluster'] as string | undefined) ?? `${name}=${peer}`}`,
    `--initial-advertise-peer-urls=${peer}`,
    `--initial-cluster-token=${(values['initial-cluster-token'] as string | undefined) ?? 'etcd-cluster'}`,
    `--bump-revision=${RESTORE_BUMP_REVISION}`,
    '--mark-compacted',
  ];
  const etcdutl = (values.etcdutl as string | undefined) ?? process.env.AGENTFLOW_ETCDUTL ?? 'etcdutl';
  const code = await new Promise<number>((resolve) => {
    const child = spawn(etcdutl, args, { stdio: ['ignore', 'inherit', 'inherit'] });
    child.on('error', (err) => {
      process.stderr.write(`agentflow restore: cannot run ${etcdutl}: ${err.message} (pass --etcdutl PATH)\n`);
      resolve(127);
    });
    child.on('exit', (c, sig) => resolve(c ?? (sig ? 128 : 1)));
  });
  if (code !== 0) {
    if (code !== 127) process.stderr.write(`agentflow restore: etcdutl snapshot restore failed (exit ${code})\n`);
    return 1;
  }
  process.stdout.write(
    `restored ${file} into ${dataDir}: start etcd with --data-dir=${dataDir} --name=${name}, then the operator\n`,
  );
  return 0;
}
