// A container's volumeMounts as mount requests: which host path (the volume
// directory or its subPath) goes where, read-only or not, as the kubelet's
// makeMounts computes them.

import { existsSync, mkdirSync, realpathSync, statSync } from 'node:fs';
import { join, posix } from 'node:path';
import { EnvError, expand } from './env.ts';
import type { MountRequest } from './mount-plan.ts';
import type { Container } from './types.ts';

export interface VolumeLocation {
  dir: string;
  /** configMap, secret, downwardAPI and projected volumes are always mounted read-only. */
  readOnly: boolean;
}

/** The subPath (or expanded subPathExpr) of a mount; it must stay inside the volume. */
export function subPathOf(
  m: { name: string; subPath?: string; subPathExpr?: string },
  env: Record<string, string>,
): string {
  const sub = m.subPathExpr !== undefined ? expand(m.subPathExpr, env) : (m.subPath ?? '');
  if (sub === '') return '';
  if (posix.isAbsolute(sub) || sub.split('/').includes('..')) {
    throw new EnvError(
      'CreateContainerConfigError',
      `subPath "${sub}" of volume "${m.name}" must be a relative path without '..'`,
    );
  }
  return sub;
}

/**
 * The mount requests of a container. A missing subPath is created as a
 * directory, like the kubelet does; one whose symlinks lead out of the volume
 * is refused.
 */
export function containerMountRequests(
  c: Container,
  env: Record<string, string>,
  locate: (volume: string) => VolumeLocation | undefined,
): MountRequest[] {
  return (c.volumeMounts ?? []).map((m) => {
    const vol = locate(m.name);
    if (!vol) {
      throw new EnvError(
        'CreateContainerConfigError',
        `volumeMount ${m.mountPath} of container "${c.name}" refers to volume "${m.name}", which the pod does not define`,
      );
    }
    let source = vol.dir;
    const sub = subPathOf(m, env);
    if (sub) {
      source = join(vol.dir, sub);
      if (!existsSync(source)) mkdirSync(source, { recursive: true, mode: statSync(vol.dir).mode & 0o7777 });
      const real = realpathSync(source);
      const root = realpathSync(vol.dir);
      if (real !== root && !real.startsWith(`${root}/`)) {
        throw new EnvError(
          'CreateContainerConfigError',
          `subPath "${sub}" of volume "${m.name}" leads out of the volume`,
        );
      }
      source = real;
    }
    return {
      volume: m.name,
      mountPath: m.mountPath,
      source,
      sourceKind: statSync(source).isDirectory() ? 'dir' : 'file',
      readOnly: m.readOnly === true || vol.readOnly,
    };
  });
}
