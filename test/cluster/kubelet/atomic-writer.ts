// The kubelet's AtomicWriter (pkg/volume/util/atomic_writer.go): a volume's
// files live in a timestamped directory `..2006_01_02_15_04_05.NNN`; `..data`
// is a symlink to the current one and each top-level name is a symlink through
// `..data`. An update writes a new timestamped directory and swaps `..data` by
// rename, so a reader sees the old files or the new ones, never a mix or a
// partial file.

import {
  chmodSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import type { Payload } from './volume-payload.ts';

const DATA = '..data';
const DATA_TMP = '..data_tmp';

export class InvalidPayloadPathError extends Error {
  readonly path: string;

  constructor(path: string, problem: string) {
    super(`invalid path ${JSON.stringify(path)} in volume: ${problem}`);
    this.name = 'InvalidPayloadPathError';
    this.path = path;
  }
}

/** The kubelet's validatePath: relative, no `..` element, not starting with `..`. */
export function validatePayloadPath(p: string): void {
  if (p === '') throw new InvalidPayloadPathError(p, 'must not be empty');
  if (p.length > 4096) throw new InvalidPayloadPathError(p, 'must be less than or equal to 4096 characters');
  if (p.startsWith('/')) throw new InvalidPayloadPathError(p, 'must be a relative path');
  if (p.split('/').includes('..')) throw new InvalidPayloadPathError(p, "must not contain '..'");
  if (p.startsWith('..')) throw new InvalidPayloadPathError(p, "must not start with '..'");
}

/**
 * Makes `dir` hold exactly `payload`. Returns false when it already did (no
 * write at all, so an unchanged ConfigMap never disturbs readers).
 */
export function writeAtomically(dir: string, payload: Payload, now: Date = new Date()): boolean {
  for (const p of payload.keys()) validatePayloadPath(p);
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const old = currentDataDir(dir);
  if (old && sameContent(join(dir, old), payload)) return false;

  const ts = now
    .toISOString()
    .replace(/\.\d+Z$/, '')
    .replace('T', '_')
    .replace(/[-:]/g, '_');
  const fresh = mkdtempSync(join(dir, `..${ts}.`));
  chmodSync(fresh, 0o755);
  for (const [p, f] of payload) {
    const file = join(fresh, p);
    mkdirSync(dirname(file), { recursive: true, mode: 0o755 });
    writeFileSync(file, f.data);
    chmodSync(file, f.mode); // explicit: writeFileSync's mode is subject to the umask
  }

  const tmp = join(dir, DATA_TMP);
  rmSync(tmp, { force: true });
  symlinkSync(fresh.slice(dir.length + 1), tmp);
  renameSync(tmp, join(dir, DATA));

  const visible = new Set([...payload.keys()].map(topLevel));
  for (const name of visible) {
    if (!exists(join(dir, name))) symlinkSync(join(DATA, name), join(dir, name));
  }
  if (old) {
    for (const name of readdirSync(join(dir, old))) {
      if (!visible.has(name)) rmSync(join(dir, name), { force: true });
    }
    rmSync(join(dir, old), { recursive: true, force: true });
  }
  return true;
}

function currentDataDir(dir: string): string | undefined {
  try {
    return readlinkSync(join(dir, DATA));
  } catch {
    return undefined;
  }
}

function topLevel(p: string): string {
  return p.split('/')[0] as string;
}

function exists(p: string): boolean {
  try {
    lstatSync(p);
    return true;
  } catch {
    return false;
  }
}

/** Same set of files with the same bytes and modes. */
function sameContent(dir: string, payload: Payload): boolean {
  const files = listFiles(dir);
  if (files.length !== payload.size) return false;
  for (const rel of files) {
    const want = payload.get(rel);
    if (!want) return false;
    const file = join(dir, rel);
    if ((statSync(file).mode & 0o777) !== want.mode) return false;
    if (!readFileSync(file).equals(want.data)) return false;
  }
  return true;
}

function listFiles(dir: string, prefix = ''): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...listFiles(join(dir, e.name), rel));
    else out.push(rel);
  }
  return out;
}
