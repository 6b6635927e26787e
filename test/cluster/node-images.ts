import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { cacheDir, repoRoot } from './binaries.ts';

// Container images for real nodes, built without a registry: buildah assembles each from scratch out
// of files on this machine (a Go binary, Debian's static busybox), writes it as an OCI archive, and
// the archive is cached under ~/.cache/agentflow/images keyed on its inputs' content, so only the
// first run builds it. Each node's containerd imports the archives into its k8s.io namespace.

const run = promisify(execFile);

/** containerd's sandbox image on real nodes (its config's sandbox_image). */
export const PAUSE_IMAGE = 'localhost/pause:3.10';
/** A shell and small servers for test pods (busybox applets: sh, httpd, nc...). */
export const BUSYBOX_IMAGE = 'localhost/busybox:agentflow';

export interface NodeImage {
  ref: string;
  /** The OCI archive, for `ctr images import`. */
  archive: string;
}

function hashOf(parts: (string | Buffer)[]): string {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest('hex').slice(0, 16);
}

/**
 * Builds (or finds in the cache) an image holding `files` (destination path -> host file) with
 * `entrypoint`. The archive is written under a temporary name and renamed, so test files building
 * the same image at once never read half of one.
 */
async function image(ref: string, files: Record<string, string>, entrypoint: string[]): Promise<NodeImage> {
  const inputs: (string | Buffer)[] = [ref, JSON.stringify(entrypoint)];
  for (const [dest, src] of Object.entries(files).sort()) inputs.push(dest, readFileSync(src));
  const dir = join(cacheDir(), 'images');
  const archive = join(dir, `${ref.replace(/[^a-z0-9.]+/gi, '_')}-${hashOf(inputs)}.tar`);
  if (existsSync(archive)) return { ref, archive };
  mkdirSync(dir, { recursive: true });
  // Storage of its own, thrown away after: nothing shared between builds, nothing left in /var/lib.
  const work = mkdtempSync(join(dir, 'build-'));
  const b = (args: string[]) =>
    run('buildah', ['--root', join(work, 'root'), '--runroot', join(work, 'run'), '--storage-driver', 'vfs', ...args], {
      maxBuffer: 16 << 20,
    });
  try {
    const ctr = (await b(['from', 'scratch'])).stdout.trim();
    for (const [dest, src] of Object.entries(files)) await b(['copy', '--chmod', '0755', ctr, src, dest]);
    await b(['config', '--entrypoint', JSON.stringify(entrypoint), '--cmd', '', ctr]);
    await b(['commit', '--quiet', ctr, ref]);
    const tmp = `${archive}.tmp-${process.pid}`;
    await b(['push', '--quiet', ref, `oci-archive:${tmp}:${ref}`]);
    renameSync(tmp, archive);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  return { ref, archive };
}

/** The pause image: test/cluster/pause built static with the Go toolchain. */
export async function pauseImage(): Promise<NodeImage> {
  const src = join(repoRoot, 'test/cluster/pause');
  const id = hashOf([readFileSync(join(src, 'go.mod')), readFileSync(join(src, 'main.go'))]);
  const bin = join(cacheDir(), 'bin', `pause-${id}`, 'pause');
  if (!existsSync(bin)) {
    mkdirSync(join(cacheDir(), 'bin', `pause-${id}`), { recursive: true });
    const tmp = `${bin}.tmp-${process.pid}`;
    await run('go', ['build', '-trimpath', '-ldflags', '-s -w', '-o', tmp, '.'], {
      cwd: src,
      env: { ...process.env, CGO_ENABLED: '0', GOFLAGS: '-mod=readonly' },
    });
    renameSync(tmp, bin);
  }
  return image(PAUSE_IMAGE, { '/pause': bin }, ['/pause']);
}

/** Debian's static busybox as /bin/busybox (run applets as `/bin/busybox <applet>`). */
export async function busyboxImage(): Promise<NodeImage> {
  const bin = '/bin/busybox';
  if (!existsSync(bin)) throw new Error(`${bin} not found: install Debian's busybox-static (npm run setup does)`);
  return image(BUSYBOX_IMAGE, { '/bin/busybox': bin }, ['/bin/busybox']);
}
