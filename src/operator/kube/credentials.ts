// Where the operator's Kubernetes credentials come from, without keeping
// @kubernetes/client-node in memory. Importing it costs ~88 MB of RSS (its
// config module pulls in every generated model), yet the operator needs only
// what a kubeconfig resolves to: a server URL, TLS material and auth headers.
// So a short-lived child process loads the kubeconfig with client-node's own
// KubeConfig (the same methods as before: loadFromFile / loadFromDefault,
// applyToHTTPSOptions), sends that plain data back and exits. A process, not a
// worker thread: measured, a worker that imported client-node left ~50 MB in
// this process's RSS after it ended (V8's pooled pages and the thread's malloc
// arena stay; nodejs/node#51868), a child process leaves nothing. Only auth that
// needs client-node on every refresh (exec plugins, auth providers such as
// oidc, gcp, azure) keeps a KubeConfig in this process, as before.

import { fork } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import type { KubeConfig } from '@kubernetes/client-node';

/** TLS options for the https Agent, read once at start (as the client always has). */
export interface TlsMaterial {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  servername?: string;
  rejectUnauthorized?: boolean;
}

export interface KubeAuth {
  tls: TlsMaterial;
  headers: Record<string, string>;
}

/**
 * How a KubeClient reaches the API server. `authenticate()` is called again
 * every refresh period, so rotated credentials are picked up.
 */
export interface KubeCredentials {
  readonly server: URL;
  /**
   * static: fixed headers (a token, client certificates, basic auth);
   * token-file: the bearer token is re-read from `tokenFile` on every refresh;
   * client-node: a KubeConfig in this process computes them (exec and auth-provider plugins).
   */
  readonly mode: 'static' | 'token-file' | 'client-node';
  readonly tokenFile?: string;
  authenticate(): Promise<KubeAuth>;
}

/** Where to find the kubeconfig: a file, else client-node's default (in-cluster, $KUBECONFIG, ~/.kube/config). */
export interface KubeconfigSource {
  kubeconfig?: string | undefined;
}

/**
 * What the child sends back: structured-clone-safe data only. `plugin` names
 * the auth that needs client-node in-process; then nothing else is resolved.
 */
export type ResolvedKubeconfig =
  | {
      kind: 'static';
      server: string;
      skipTLSVerify: boolean;
      tls: { ca?: Uint8Array; cert?: Uint8Array; key?: Uint8Array; servername?: string; rejectUnauthorized?: boolean };
      headers: Record<string, string>;
      /** A bearer token file that rotates (in-cluster service account, a kubeconfig token-file): re-read on refresh. */
      tokenFile?: string;
    }
  | { kind: 'plugin'; server: string; plugin: string };

export type KubeconfigProblem = 'load' | 'no-cluster';

/** The kubeconfig could not be used: `problem` says which step failed, the message what was wrong. */
export class KubeconfigError extends Error {
  readonly problem: KubeconfigProblem;

  constructor(problem: KubeconfigProblem, message: string) {
    super(message);
    this.name = 'KubeconfigError';
    this.problem = problem;
  }
}

export type ResolverReply =
  | { ok: true; value: ResolvedKubeconfig }
  | { ok: false; problem: KubeconfigProblem | 'internal'; message: string };

// Beside this file: .ts when run from source, .js when built.
const CHILD = new URL(`./credentials-child${import.meta.url.slice(import.meta.url.lastIndexOf('.'))}`, import.meta.url);

const RESOLVER_ENV = 'AGENTFLOW_KUBECONFIG_RESOLVER';
const TS_FLAGS = new Set(['--experimental-strip-types', '--experimental-transform-types']);

/** How long resolving may take (the child imports client-node: ~0.5 s). */
export const KUBECONFIG_RESOLVE_TIMEOUT_MS = 30_000;

/** Resolves the kubeconfig in a child process (see the top of this file); client-node stays out of this process unless a plugin needs it. */
export async function resolveKubeCredentials(src: KubeconfigSource = {}): Promise<KubeCredentials> {
  const resolved = await resolveInChild(src);
  if (resolved.kind === 'static') return staticCredentials(resolved);
  // The plugin must run in this process on every refresh: load the kubeconfig here, as before.
  const { loadKubeConfig } = await import('./kubeconfig.ts');
  return kubeConfigCredentials(loadKubeConfig(src));
}

/** The child's answer, as data; a KubeconfigError for a kubeconfig that cannot be used. */
export function resolveInChild(src: KubeconfigSource): Promise<ResolvedKubeconfig> {
  // A resolver that forks again has been started with something other than credentials-child.ts: stop the chain.
  if (process.env[RESOLVER_ENV]) return Promise.reject(new Error('the kubeconfig resolver cannot start another one'));
  return new Promise((resolve, reject) => {
    const child = fork(CHILD, src.kubeconfig ? [src.kubeconfig] : [], {
      env: { ...process.env, [RESOLVER_ENV]: '1' },
      // Structured clone over IPC: TLS material arrives as bytes.
      serialization: 'advanced',
      // Only what running TypeScript may need. Never the parent's other flags: with `-e`/`-p` the
      // child would run the parent's script instead of the resolver (and fork again); `--inspect` would clash.
      execArgv: process.execArgv.filter((a) => TS_FLAGS.has(a)),
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
    });
    let stderr = '';
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (chunk: string) => {
      stderr = (stderr + chunk).slice(-2000);
    });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      settle(() =>
        reject(new Error(`resolving the kubeconfig took longer than ${KUBECONFIG_RESOLVE_TIMEOUT_MS / 1000} s`)),
      );
    }, KUBECONFIG_RESOLVE_TIMEOUT_MS);
    let settled = false;
    function settle(fn: () => void) {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      fn();
    }
    child.once('message', (reply: ResolverReply) =>
      settle(() => {
        if (reply.ok) resolve(reply.value);
        else if (reply.problem === 'internal') reject(new Error(`resolving the kubeconfig failed: ${reply.message}`));
        else reject(new KubeconfigError(reply.problem, reply.message));
      }),
    );
    child.once('error', (err) =>
      settle(() => reject(new Error(`cannot start the kubeconfig resolver: ${err.message}`, { cause: err }))),
    );
    child.once('exit', (code, signal) =>
      settle(() =>
        reject(
          new Error(
            `the kubeconfig resolver exited (${signal ?? `code ${code}`}) before answering${stderr ? `: ${stderr.trim()}` : ''}`,
          ),
        ),
      ),
    );
  });
}

const toBuffer = (u: Uint8Array | undefined) => (u ? Buffer.from(u.buffer, u.byteOffset, u.byteLength) : undefined);

/** Credentials from the child's data; a token file is re-read at every authenticate(). */
export function staticCredentials(r: Extract<ResolvedKubeconfig, { kind: 'static' }>): KubeCredentials {
  const tls: TlsMaterial = {};
  const ca = toBuffer(r.tls.ca);
  const cert = toBuffer(r.tls.cert);
  const key = toBuffer(r.tls.key);
  if (ca) tls.ca = ca;
  if (cert) tls.cert = cert;
  if (key) tls.key = key;
  if (r.tls.servername) tls.servername = r.tls.servername;
  if (r.tls.rejectUnauthorized !== undefined) tls.rejectUnauthorized = r.tls.rejectUnauthorized;
  const server = new URL(r.server);
  const { tokenFile } = r;
  if (tokenFile === undefined) {
    const auth = { tls, headers: r.headers };
    return {
      server,
      mode: 'static',
      authenticate: () => Promise.resolve({ tls: auth.tls, headers: { ...auth.headers } }),
    };
  }
  return {
    server,
    mode: 'token-file',
    tokenFile,
    async authenticate() {
      let token: string;
      try {
        // Trimmed: a trailing newline would make the header invalid (client-go trims too).
        token = (await readFile(tokenFile, 'utf8')).trim();
      } catch (err) {
        throw new Error(`cannot read the bearer token file ${tokenFile}: ${(err as Error).message}`, { cause: err });
      }
      const { Authorization: _previous, ...headers } = r.headers;
      return { tls, headers: token ? { ...headers, Authorization: `Bearer ${token}` } : headers };
    },
  };
}

/**
 * Credentials computed by a KubeConfig in this process on every
 * authenticate(): for plugins, and for callers that already hold a
 * KubeConfig (they have loaded client-node themselves).
 */
export function kubeConfigCredentials(kc: KubeConfig): KubeCredentials {
  const cluster = kc.getCurrentCluster();
  if (!cluster) throw new Error('the kubeconfig has no current cluster');
  return {
    server: new URL(cluster.server),
    mode: 'client-node',
    async authenticate() {
      // Free: whoever built `kc` has loaded client-node already.
      const { authOf } = await import('./kubeconfig.ts');
      return authOf(kc);
    },
  };
}

/** Tells a KubeCredentials from a KubeConfig without loading client-node. */
export function isKubeCredentials(x: KubeConfig | KubeCredentials): x is KubeCredentials {
  return typeof (x as Partial<KubeCredentials>).authenticate === 'function' && 'mode' in x;
}
