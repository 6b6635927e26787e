import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { StateStore } from '../state/index.ts';
import { BOLT_MAGIC, BoltFormatError, snapshotRevision } from './bolt.ts';

// Snapshots of agentflow's etcd through etcd's own Snapshot API (Maintenance.
// Snapshot: a consistent copy of the member's whole backend, streamed), not a
// copy of a data directory. The stream is exactly what `etcdctl snapshot save`
// writes: the bbolt database followed by etcd's SHA-256 of it (32 bytes), which
// `etcdutl snapshot restore` checks. Each file gets a JSON sidecar with the
// revision, size and checksum, and the latest one is recorded in etcd.

/** Why a snapshot was refused: one value per cause. */
export type SnapshotProblem =
  /** No such file, or it cannot be read. */
  | 'Unreadable'
  /** Too short to hold a database and its hash. */
  | 'Truncated'
  /** The bytes do not start with a bbolt database (not an etcd snapshot). */
  | 'NotAnEtcdSnapshot'
  /** etcd's SHA-256 trailer does not match the database: corrupted or cut short. */
  | 'HashMismatch'
  /** The sidecar (.json) disagrees with the file: size or checksum changed since it was taken. */
  | 'SidecarMismatch';

export class SnapshotError extends Error {
  override name = 'SnapshotError';
  readonly problem: SnapshotProblem;
  readonly file: string;

  constructor(file: string, problem: SnapshotProblem, message: string) {
    super(`${file}: ${message}`);
    this.file = file;
    this.problem = problem;
  }
}

/** What the sidecar and etcd's `backups/latest` record say of one snapshot. */
export interface SnapshotInfo {
  /** File name, within the backup directory. */
  file: string;
  /** etcd revision the snapshot is consistent at. */
  revision: number;
  /** Bytes of the file (the database and etcd's 32-byte hash). */
  size: number;
  /** SHA-256 of the whole file, hex. */
  sha256: string;
  takenAt: string;
  clusterId: string;
  memberId: string;
  /** agentflow's key prefix in that etcd. */
  prefix: string;
}

/** Where the latest successful snapshot and the latest failure are recorded (under the store's prefix). */
export const LATEST_KEY = ['backups', 'latest'] as const;
export const FAILURE_KEY = ['backups', 'lastFailure'] as const;
/** A snapshot file name: agentflow-20261201T120000Z-r12345.db */
const FILE_RE = /^agentflow-(\d{8}T\d{6}Z)-r(\d+)\.db$/;
const HASH_BYTES = 32;

const stamp = (d: Date) =>
  d
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d+Z$/, 'Z');

/**
 * Takes a snapshot into `dir` (written under a temporary name, fsynced, then
 * renamed: a crash never leaves a file that looks complete), checks it as
 * verifySnapshot does, writes its sidecar, records it in etcd and keeps only
 * the newest `retain` snapshots. Etcd allows the Snapshot API only to its
 * root user when auth is on.
 */
export async function takeSnapshot(
  store: StateStore,
  dir: string,
  o: { retain: number; now?: Date },
): Promise<{ info: SnapshotInfo; removed: string[] }> {
  await mkdir(dir, { recursive: true });
  const now = o.now ?? new Date();
  const tmp = join(dir, `.agentflow-${stamp(now)}-${process.pid}.part`);
  // The member answering status is the one that streams the snapshot (same connection pool, first host).
  const status = await store.client.maintenance.status();
  const fh = await open(tmp, 'w', 0o600);
  let chunks = 0;
  try {
    const stream = await store.client.maintenance.snapshot();
    await new Promise<void>((resolve, reject) => {
      // Writes are chained: the stream delivers faster than the disk takes them.
      let writing = Promise.resolve();
      stream.on('data', (m) => {
        chunks++;
        const blob = Buffer.from(m.blob);
        writing = writing.then(() => fh.write(blob).then(() => undefined));
        writing.catch(reject);
      });
      stream.on('error', reject);
      stream.on('end', () => writing.then(resolve, reject));
    });
    await fh.sync();
  } catch (err) {
    await fh.close();
    await rm(tmp, { force: true });
    throw err;
  }
  await fh.close();
  if (chunks === 0) {
    await rm(tmp, { force: true });
    throw new Error('etcd sent an empty snapshot stream');
  }
  // What etcd sent must itself be a sound snapshot before it counts as a backup; the size and
  // checksum recorded are those of the file as it lies on disk.
  let checked: { size: number; sha256: string; revision: number };
  try {
    checked = await checkFile(tmp);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  const { size, sha256, revision } = checked;
  const file = `agentflow-${stamp(now)}-r${revision}.db`;
  await rename(tmp, join(dir, file));
  const info: SnapshotInfo = {
    file,
    revision,
    size,
    sha256,
    takenAt: now.toISOString(),
    clusterId: String(status.header.cluster_id),
    memberId: String(status.header.member_id),
    prefix: store.key(),
  };
  await writeFile(join(dir, sidecarName(file)), `${JSON.stringify(info, null, 2)}\n`);
  await store.client.put(store.key(...LATEST_KEY)).value(JSON.stringify(info));
  const removed = await pruneSnapshots(dir, o.retain);
  return { info, removed };
}

/** Records a failed snapshot in etcd (best effort: etcd may be what failed). */
export async function recordFailure(store: StateStore, message: string, at = new Date()): Promise<boolean> {
  try {
    await store.client
      .put(store.key(...FAILURE_KEY))
      .value(JSON.stringify({ at: at.toISOString(), message: message.slice(0, 2048) }));
    return true;
  } catch {
    return false;
  }
}

const sidecarName = (file: string) => file.replace(/\.db$/, '.json');

/** Keeps the newest `retain` snapshots in `dir` (by the time in their names); returns the files removed. */
export async function pruneSnapshots(dir: string, retain: number): Promise<string[]> {
  const snaps = (await readdir(dir)).filter((f) => FILE_RE.test(f)).sort();
  const old = snaps.slice(0, Math.max(0, snaps.length - retain));
  for (const f of old) {
    await rm(join(dir, f), { force: true });
    await rm(join(dir, sidecarName(f)), { force: true });
  }
  return old;
}

/**
 * Checks a snapshot file the way a restore would need it sound: a bbolt
 * database (both meta pages carry bbolt's magic) followed by etcd's SHA-256
 * of it; and, when its sidecar is beside it, the size and checksum the
 * sidecar recorded. Throws a SnapshotError naming the problem.
 */
export async function verifySnapshot(
  file: string,
): Promise<{ size: number; sha256: string; revision: number; info?: SnapshotInfo }> {
  const { size, sha256, revision } = await checkFile(file);
  const sidecar = file.replace(/\.db$/, '.json');
  if (sidecar === file) return { size, sha256, revision };
  let raw: string;
  try {
    raw = await readFile(sidecar, 'utf8');
  } catch {
    return { size, sha256, revision }; // no sidecar: the file's own hash is the check
  }
  let info: SnapshotInfo;
  try {
    info = JSON.parse(raw) as SnapshotInfo;
  } catch (err) {
    throw new SnapshotError(
      file,
      'SidecarMismatch',
      `its sidecar ${basename(sidecar)} is not JSON: ${(err as Error).message}`,
    );
  }
  if (info.size !== size)
    throw new SnapshotError(file, 'SidecarMismatch', `is ${size} bytes, but its sidecar recorded ${info.size}`);
  if (info.sha256 !== sha256)
    throw new SnapshotError(file, 'SidecarMismatch', `has sha256 ${sha256}, but its sidecar recorded ${info.sha256}`);
  if (info.revision !== revision)
    throw new SnapshotError(
      file,
      'SidecarMismatch',
      `holds revision ${revision}, but its sidecar recorded ${info.revision}`,
    );
  return { size, sha256, revision, info };
}

async function checkFile(file: string): Promise<{ size: number; sha256: string; revision: number }> {
  let size: number;
  try {
    size = (await stat(file)).size;
  } catch (err) {
    throw new SnapshotError(
      file,
      'Unreadable',
      `cannot be read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
    );
  }
  // Two bbolt pages of at least 512 bytes and the hash.
  if (size < 1024 + HASH_BYTES)
    throw new SnapshotError(
      file,
      'Truncated',
      `is ${size} bytes: too short for an etcd snapshot (a database and its hash)`,
    );
  const fh = await open(file, 'r');
  try {
    const head = Buffer.alloc(64);
    await fh.read(head, 0, 64, 0);
    const pageSize = head.readUInt32LE(24);
    const second = Buffer.alloc(4);
    const validPage = pageSize >= 512 && pageSize <= 65536 && (pageSize & (pageSize - 1)) === 0;
    if (validPage && size < 2 * pageSize + HASH_BYTES && head.readUInt32LE(16) === BOLT_MAGIC)
      throw new SnapshotError(
        file,
        'Truncated',
        `is ${size} bytes: cut short (an etcd snapshot holds at least two ${pageSize}-byte pages and its hash)`,
      );
    if (validPage) await fh.read(second, 0, 4, pageSize + 16);
    if (head.readUInt32LE(16) !== BOLT_MAGIC || !validPage || second.readUInt32LE(0) !== BOLT_MAGIC)
      throw new SnapshotError(file, 'NotAnEtcdSnapshot', 'is not an etcd snapshot (no bbolt database at its start)');
    const trailer = Buffer.alloc(HASH_BYTES);
    await fh.read(trailer, 0, HASH_BYTES, size - HASH_BYTES);
    const whole = createHash('sha256');
    const db = createHash('sha256');
    await new Promise<void>((resolve, reject) => {
      const s = createReadStream(file);
      let seen = 0;
      s.on('data', (chunk) => {
        const b = chunk as Buffer;
        whole.update(b);
        const dbPart = Math.max(0, Math.min(b.length, size - HASH_BYTES - seen));
        if (dbPart > 0) db.update(b.subarray(0, dbPart));
        seen += b.length;
      });
      s.on('error', reject);
      s.on('end', resolve);
    });
    if (!db.digest().equals(trailer))
      throw new SnapshotError(
        file,
        'HashMismatch',
        "etcd's SHA-256 at its end does not match its database: the file is corrupted or incomplete",
      );
    let revision: number;
    try {
      revision = await snapshotRevision(fh, size - HASH_BYTES);
    } catch (err) {
      if (!(err instanceof BoltFormatError)) throw err;
      throw new SnapshotError(file, 'NotAnEtcdSnapshot', `is not an etcd database: ${err.message}`);
    }
    return { size, sha256: whole.digest('hex'), revision };
  } finally {
    await fh.close();
  }
}
