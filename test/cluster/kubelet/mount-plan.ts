// How a container's volumeMounts become bind mounts in its own mount namespace
// on the host's file system, without leaving a trace on the host.
//
// A mountPath that exists on the host is simply mounted over (in the
// container's namespace only). One that does not exist needs a directory (or
// file) to mount on, and creating it on the host would pollute the node. So
// the deepest existing ancestor A is *shadowed*: a staging directory in the pod
// directory gets a placeholder for every entry of A, each entry is bind-mounted
// back onto its placeholder (so the container still sees and writes the host's
// files), the missing path is created inside the staging directory, and the
// staging directory is mounted over A. When A is `/` itself, the staging
// directory becomes the container's root (chroot), because a mount over `/`
// is invisible to a process whose root is the old `/`.
//
// The planner is pure over an FsView, so the path rules can be tested on a fake
// tree; hostFs is the real one.

import { lstatSync, readdirSync, readlinkSync } from 'node:fs';
import { posix } from 'node:path';

export type EntryKind = 'dir' | 'file' | 'symlink';

/** Read-only view of the host's file system. */
export interface FsView {
  kind(path: string): EntryKind | 'missing';
  readlink(path: string): string;
  list(path: string): { name: string; kind: EntryKind }[];
}

export const hostFs: FsView = {
  kind(path) {
    try {
      const st = lstatSync(path);
      return st.isSymbolicLink() ? 'symlink' : st.isDirectory() ? 'dir' : 'file';
    } catch {
      return 'missing';
    }
  },
  readlink: (path) => readlinkSync(path),
  list(path) {
    return readdirSync(path, { withFileTypes: true }).map((e) => ({
      name: e.name,
      kind: e.isSymbolicLink() ? 'symlink' : e.isDirectory() ? 'dir' : 'file',
    }));
  },
};

export interface MountRequest {
  /** Volume name, for messages. */
  volume: string;
  /** Absolute path in the container. */
  mountPath: string;
  /** Host path of what to mount (the volume directory, or its subPath). */
  source: string;
  sourceKind: 'dir' | 'file';
  readOnly: boolean;
}

/** A change to the host's file system, always inside the pod directory (owned). */
export type HostOp =
  | { op: 'mkdir'; path: string /** copy mode and owner of this directory */; like?: string }
  | { op: 'touch'; path: string }
  | { op: 'symlink'; path: string; target: string };

/** One step of the mount script, in the container's namespace. */
export type MountStep =
  | {
      op: 'bind';
      source: string;
      target: string;
      recursive: boolean;
      readOnly: boolean;
      /** What the mount is for (error messages). */
      what: string;
    }
  /** Lazily unmounts a staging tree once copied into place, so the container never sees the node's files twice. */
  | { op: 'detach'; target: string; what: string };

export interface MountPlan {
  hostOps: HostOp[];
  steps: MountStep[];
  /** Host directory to chroot into, when `/` had to be shadowed. */
  root?: string;
}

export class MountPlanError extends Error {
  readonly volume: string;
  readonly mountPath: string;

  constructor(volume: string, mountPath: string, problem: string) {
    super(`volume "${volume}" at ${mountPath}: ${problem}`);
    this.name = 'MountPlanError';
    this.volume = volume;
    this.mountPath = mountPath;
  }
}

export interface PlanOptions {
  /** Host directories the kubelet owns for this pod: missing paths inside them are created, never shadowed. */
  owned: string[];
  /**
   * Fresh host directory for this container start's shadows, inside an owned
   * one but outside anything the container uses (its HOME, its volumes): the
   * shadows hold the node's files, which a container must not reach twice.
   */
  staging: string;
  fs?: FsView;
}

const MAX_SYMLINKS = 40;

/** Plans the mounts of one container start; parents are mounted before children. */
export function planMounts(requests: MountRequest[], o: PlanOptions): MountPlan {
  return new Planner(o).plan(requests);
}

class Planner {
  private readonly fs: FsView;
  private readonly o: PlanOptions;
  /** Container path prefix → host path, as the namespace will look after the binds so far. */
  private readonly maps: { ns: string; host: string }[] = [];
  /** What the plan creates on the host before the namespace exists. */
  private readonly created = new Map<string, { kind: EntryKind; link?: string }>();
  private readonly hostOps: HostOp[] = [];
  private readonly steps: MountStep[] = [];
  private root: string | undefined;
  private shadows = 0;

  constructor(o: PlanOptions) {
    this.o = o;
    this.fs = o.fs ?? hostFs;
  }

  plan(requests: MountRequest[]): MountPlan {
    const depth = (p: string) => posix.normalize(p).split('/').filter(Boolean).length;
    const sorted = [...requests].sort((a, b) => depth(a.mountPath) - depth(b.mountPath));
    for (const r of sorted) this.mount(r);
    return { hostOps: this.hostOps, steps: this.steps, ...(this.root ? { root: this.root } : {}) };
  }

  private mount(r: MountRequest): void {
    if (!posix.isAbsolute(r.mountPath)) throw new MountPlanError(r.volume, r.mountPath, 'mountPath must be absolute');
    const mountPath = posix.normalize(r.mountPath);
    const found = this.resolve(r, mountPath);
    let target: string;
    if (found.missing.length === 0) {
      if (found.kind !== r.sourceKind) {
        throw new MountPlanError(
          r.volume,
          r.mountPath,
          `the node has a ${found.kind === 'dir' ? 'directory' : 'file'} there and the volume${r.sourceKind === 'file' ? "'s subPath" : ''} is a ${r.sourceKind === 'dir' ? 'directory' : 'file'}`,
        );
      }
      target = found.at;
    } else {
      if (found.missing.includes('..')) {
        throw new MountPlanError(r.volume, r.mountPath, 'resolves through a missing directory followed by ..');
      }
      if (!this.owned(this.toHost(found.at))) this.shadow(found.at);
      target = found.at;
      found.missing.forEach((c, i) => {
        target = posix.join(target, c);
        const host = this.toHost(target);
        const isFile = i === found.missing.length - 1 && r.sourceKind === 'file';
        this.hostOps.push(isFile ? { op: 'touch', path: host } : { op: 'mkdir', path: host });
        this.created.set(host, { kind: isFile ? 'file' : 'dir' });
      });
    }
    this.steps.push({
      op: 'bind',
      source: r.source,
      target: this.scriptPath(target),
      recursive: false,
      readOnly: r.readOnly,
      what: `volume "${r.volume}" at ${r.mountPath}`,
    });
    this.maps.push({ ns: target, host: r.source });
  }

  /** Walks the container path: the deepest existing directory (symlinks followed) and what is missing below it. */
  private resolve(r: MountRequest, path: string): { at: string; missing: string[]; kind: 'dir' | 'file' } {
    let parts = path.split('/').filter(Boolean);
    let cur = '/';
    let hops = 0;
    while (parts.length > 0) {
      const c = parts.shift() as string;
      if (c === '.') continue;
      if (c === '..') {
        cur = posix.dirname(cur);
        continue;
      }
      const next = posix.join(cur, c);
      const host = this.toHost(next);
      const kind = this.kind(host);
      if (kind === 'missing') return { at: cur, missing: [c, ...parts], kind: 'dir' };
      if (kind === 'symlink') {
        if (++hops > MAX_SYMLINKS) throw new MountPlanError(r.volume, r.mountPath, 'too many levels of symbolic links');
        const link = this.readlink(host);
        parts = [...link.split('/').filter(Boolean), ...parts];
        if (link.startsWith('/')) cur = '/';
        continue;
      }
      if (kind === 'file') {
        if (parts.length > 0) throw new MountPlanError(r.volume, r.mountPath, `${next} is a file, not a directory`);
        return { at: next, missing: [], kind: 'file' };
      }
      cur = next;
    }
    return { at: cur, missing: [], kind: 'dir' };
  }

  /** Replaces directory `at` (host territory) by a staging copy whose entries are bind-mounted back. */
  private shadow(at: string): void {
    const hostDir = this.toHost(at);
    const stage = posix.join(this.o.staging, `shadow-${++this.shadows}`);
    this.hostOps.push({ op: 'mkdir', path: stage, like: hostDir });
    this.created.set(stage, { kind: 'dir' });
    // The entry that leads to the staging area goes first: a recursive bind of
    // it taken later would copy every bind made into the staging area so far.
    const leadsToStaging = (name: string) => `${this.o.staging}/`.startsWith(`${posix.join(hostDir, name)}/`);
    const entries = this.fs
      .list(hostDir)
      .sort((a, b) => Number(leadsToStaging(b.name)) - Number(leadsToStaging(a.name)) || (a.name < b.name ? -1 : 1));
    const back: { ns: string; host: string }[] = [];
    const shadowOfRoot = at === '/';
    // A mount point of its own, so the whole staging tree can be detached once copied over `at`.
    if (!shadowOfRoot) this.steps.push(this.bind(stage, stage, false, `the shadow of ${at}`));
    for (const e of entries) {
      const placeholder = posix.join(stage, e.name);
      const ns = posix.join(at, e.name);
      if (e.kind === 'symlink') {
        const target = this.fs.readlink(posix.join(hostDir, e.name));
        this.hostOps.push({ op: 'symlink', path: placeholder, target });
        this.created.set(placeholder, { kind: 'symlink', link: target });
        continue;
      }
      this.hostOps.push(e.kind === 'dir' ? { op: 'mkdir', path: placeholder } : { op: 'touch', path: placeholder });
      this.created.set(placeholder, { kind: e.kind });
      this.steps.push(this.bind(this.scriptPath(ns), placeholder, e.kind === 'dir', `the node's ${ns}`));
      back.push({ ns, host: this.toHost(ns) });
    }
    if (shadowOfRoot) this.root = stage;
    else {
      this.steps.push(this.bind(stage, this.scriptPath(at), true, `the shadow of ${at}`));
      this.steps.push({ op: 'detach', target: stage, what: `the staging copy of ${at}` });
    }
    this.maps.push({ ns: at, host: stage }, ...back);
  }

  private bind(source: string, target: string, recursive: boolean, what: string): MountStep {
    return { op: 'bind', source, target, recursive, readOnly: false, what };
  }

  private toHost(ns: string): string {
    let best: { ns: string; host: string } | undefined;
    for (const m of this.maps) {
      const under = ns === m.ns || ns.startsWith(m.ns === '/' ? '/' : `${m.ns}/`);
      // Later maps win at equal length: a bind stacks on what was there.
      if (under && (!best || m.ns.length >= best.ns.length)) best = m;
    }
    if (!best) return ns;
    return posix.join(best.host, ns.slice(best.ns.length));
  }

  /** Where a container path is while the mount script runs (before any chroot). */
  private scriptPath(ns: string): string {
    return this.root ? posix.join(this.root, ns) : ns;
  }

  private owned(host: string): boolean {
    return this.o.owned.some((dir) => host === dir || host.startsWith(`${dir}/`));
  }

  private kind(host: string): EntryKind | 'missing' {
    return this.created.get(host)?.kind ?? this.fs.kind(host);
  }

  private readlink(host: string): string {
    return this.created.get(host)?.link ?? this.fs.readlink(host);
  }
}

/** POSIX-shell single quoting. */
export function shellQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

/**
 * The script a container starts with, inside `unshare --mount`: performs the
 * binds, enters the shadow root if any, changes to the working directory and
 * execs the container's command (so its pid is the one the kubelet tracks).
 * Any failure is written to fd 3, which the kubelet reads as a start error.
 */
export function renderMountScript(plan: MountPlan, workingDir: string): string {
  const fail = `fail() { printf '%s\\n' "$*" >&3; exit 128; }`;
  const lines = ["# Written by the process kubelet; runs in the container's own mount namespace.", fail];
  for (const s of plan.steps) {
    const dst = shellQuote(s.target);
    if (s.op === 'detach') {
      lines.push(`umount --recursive --lazy -- ${dst} 2>&3 || fail ${shellQuote(`${s.what}: unmount failed`)}`);
      continue;
    }
    const how = s.recursive ? '--rbind' : '--bind';
    lines.push(
      `mount ${how} -- ${shellQuote(s.source)} ${dst} 2>&3 || fail ${shellQuote(`${s.what}: bind mount failed`)}`,
    );
    if (s.readOnly) {
      lines.push(
        `mount -o remount,bind,ro -- ${dst} 2>&3 || fail ${shellQuote(`${s.what}: cannot make it read-only`)}`,
      );
    }
  }
  const start = [
    `cd -- ${shellQuote(workingDir)} 2>&3 || fail ${shellQuote(`workingDir ${workingDir}: no such directory`)}`,
    `command -v -- "$1" >/dev/null 2>&1 || fail "exec: \\"$1\\": executable file not found in \\$PATH"`,
    'exec 3>&-',
    'exec "$@"',
  ];
  if (plan.root) {
    const inner = [fail, ...start].join('\n');
    lines.push(`exec chroot -- ${shellQuote(plan.root)} /bin/sh -c ${shellQuote(inner)} sh "$@"`);
  } else lines.push(...start);
  return `${lines.join('\n')}\n`;
}
