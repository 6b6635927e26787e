import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

/**
 * Lazily unmounts every mount at or under `dir`, deepest first (a node's overlay rootfs, tmpfs
 * volumes and network namespaces; what a failed debootstrap left in its chroot).
 */
export function unmountUnder(dir: string): void {
  const mounts = readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[1]?.replace(/\\040/g, ' '))
    .filter((m): m is string => m !== undefined && (m === dir || m.startsWith(`${dir}/`)))
    .sort((a, b) => b.length - a.length);
  for (const m of mounts) {
    try {
      execFileSync('umount', ['-l', m], { stdio: 'ignore' });
    } catch {
      // already gone
    }
  }
}
