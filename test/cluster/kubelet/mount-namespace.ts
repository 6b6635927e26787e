// Starts a container's command in a mount namespace of its own with its
// volumeMounts bind-mounted in: plans the mounts against the host as it is at
// this start, creates the plan's placeholders on the host (only inside
// directories the kubelet owns), writes the mount script and returns the argv
// that runs it. `unshare` execs the shell, which execs the command, so the
// process the kubelet tracks (and `kill -9`s) is the command itself.

import {
  accessSync,
  chmodSync,
  chownSync,
  constants,
  mkdirSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { delimiter, join } from 'node:path';
import { type MountPlan, type MountRequest, planMounts, renderMountScript } from './mount-plan.ts';

export interface MountNamespaceOptions {
  requests: MountRequest[];
  /** Host directories the kubelet owns for the pod (pod directory, staging root). */
  owned: string[];
  /** Fresh directory for this start (removed and re-created). */
  staging: string;
  workingDir: string;
  argv: string[];
}

/** The argv that runs `argv` with the mounts, and the plan (for tests and messages). */
export function prepareMountNamespace(o: MountNamespaceOptions): { argv: string[]; plan: MountPlan } {
  rmSync(o.staging, { recursive: true, force: true });
  mkdirSync(o.staging, { recursive: true, mode: 0o700 });
  const plan = planMounts(o.requests, { owned: o.owned, staging: o.staging });
  for (const op of plan.hostOps) {
    if (op.op === 'mkdir') {
      mkdirSync(op.path, { recursive: true });
      if (op.like) {
        const st = statSync(op.like);
        chmodSync(op.path, st.mode & 0o7777);
        chownSync(op.path, st.uid, st.gid);
      }
    } else if (op.op === 'touch') writeFileSync(op.path, '', { flag: 'a' });
    else symlinkSync(op.target, op.path);
  }
  const script = join(o.staging, 'mounts.sh');
  writeFileSync(script, renderMountScript(plan, o.workingDir), { mode: 0o600 });
  return {
    argv: [tool('unshare'), '--mount', '--propagation', 'private', '--', '/bin/sh', script, ...o.argv],
    plan,
  };
}

/** argv prefix that runs a command (an exec probe) in a running container's mount namespace and root. */
export function enterMountNamespace(pid: number): string[] {
  return [tool('nsenter'), `--target=${pid}`, '--mount', '--root', '--wd', '--'];
}

/** util-linux tools by absolute path: the container's own PATH may not have them. */
function tool(name: string): string {
  for (const dir of [...(process.env.PATH ?? '').split(delimiter), '/usr/bin', '/bin']) {
    if (!dir) continue;
    try {
      accessSync(join(dir, name), constants.X_OK);
      return join(dir, name);
    } catch {
      // not here
    }
  }
  return name;
}
