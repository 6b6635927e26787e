import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

/** The pinned versions in scripts/versions.sh (KEY=value lines). */
export function pinnedVersions(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of readFileSync(join(repoRoot, 'scripts/versions.sh'), 'utf8').split('\n')) {
    const m = /^([A-Z_]+)=(\S+)/.exec(line);
    if (m?.[1] && m[2]) out[m[1]] = m[2];
  }
  return out;
}

export function cacheDir(): string {
  return process.env.AGENTFLOW_CACHE ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'agentflow');
}

export type Binary =
  | 'etcd'
  | 'kube-apiserver'
  | 'kube-controller-manager'
  | 'kube-scheduler'
  | 'kubelet'
  | 'kube-proxy'
  | 'kubectl'
  | 'helm'
  | 'etcdutl'
  | 'otelcol'
  | 'coredns'
  | 'kube-router';

/**
 * The binaries built from a pinned module in test/cluster/<name>, and the files whose hash joins the
 * pin in their cache directory's name: <name>_build_id in scripts/versions.sh computes the same.
 */
const PINNED_MODULES = {
  otelcol: { pin: 'OTELCOL_VERSION', files: ['go.mod', 'go.sum', 'main.go', 'components.go'] },
  coredns: { pin: 'COREDNS_VERSION', files: ['go.mod', 'go.sum', 'main.go'] },
  'kube-router': { pin: 'KUBE_ROUTER_VERSION', files: ['go.mod', 'go.sum', 'main.go'] },
} as const;

type PinnedModule = keyof typeof PINNED_MODULES;

function isPinnedModule(name: Binary): name is PinnedModule {
  return name in PINNED_MODULES;
}

function pinnedBuildId(name: PinnedModule): string {
  const { pin, files } = PINNED_MODULES[name];
  const hash = createHash('sha256');
  for (const f of files) hash.update(readFileSync(join(repoRoot, 'test/cluster', name, f)));
  return `${pinnedVersions()[pin]}-${hash.digest('hex').slice(0, 16)}`;
}

/** Absolute path of a Go-built binary from the cache; throws with the fix if missing. */
export function binaryPath(name: Binary): string {
  const v = pinnedVersions();
  const dir =
    name === 'helm'
      ? join(cacheDir(), 'bin', `helm-${v.HELM_VERSION}`)
      : name === 'etcdutl'
        ? join(cacheDir(), 'bin', `etcdutl-${v.ETCDUTL_VERSION}`)
        : isPinnedModule(name)
          ? join(cacheDir(), 'bin', `${name}-${pinnedBuildId(name)}`)
          : join(cacheDir(), 'bin', `kube-${v.KUBE_VERSION}`);
  const path = join(dir, name);
  if (!existsSync(path)) {
    throw new Error(`${name} not found at ${path}; run \`npm run setup\` to build it`);
  }
  return path;
}
