// The part of the operator that loads @kubernetes/client-node (~88 MB RSS):
// imported only by the short-lived kubeconfig resolver process (credentials-child.ts),
// or in-process when an exec or auth-provider plugin needs client-node on
// every refresh, or by callers that hand KubeClient a KubeConfig of their own.
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { KubeConfig, type User } from '@kubernetes/client-node';
import { parse as parseYaml } from 'yaml';
import { type KubeAuth, KubeconfigError, type KubeconfigSource, type ResolvedKubeconfig } from './credentials.ts';

/** The kubeconfig the way the operator has always loaded it; a KubeconfigError names what is wrong. */
export function loadKubeConfig(src: KubeconfigSource): KubeConfig {
  const kc = new KubeConfig();
  try {
    if (src.kubeconfig) kc.loadFromFile(src.kubeconfig);
    else kc.loadFromDefault();
  } catch (err) {
    throw new KubeconfigError('load', (err as Error).message);
  }
  if (!kc.getCurrentCluster()) throw new KubeconfigError('no-cluster', noClusterReason(kc));
  return kc;
}

function noClusterReason(kc: KubeConfig): string {
  const name = kc.getCurrentContext();
  if (!name) return 'it sets no current-context';
  const ctx = kc.getContextObject(name);
  if (!ctx) return `its current-context "${name}" is not among its contexts`;
  return `context "${name}" names cluster "${ctx.cluster}", which it does not define`;
}

/**
 * The auth that must run in-process on every refresh, as client-node picks
 * its authenticator (azure, gcp, exec, then a tokenFile provider, then oidc);
 * undefined when the headers are fixed or come from a token file.
 */
export function pluginOf(user: User | null): string | undefined {
  if (!user) return undefined;
  if (user.exec) return 'exec';
  const ap = user.authProvider as { name?: string; config?: Record<string, unknown> } | undefined | null;
  if (!ap) return undefined;
  const fileOnly = ap.name !== 'azure' && ap.name !== 'gcp' && ap.name !== 'exec' && !ap.config?.exec;
  if (fileOnly && typeof ap.config?.tokenFile === 'string') return undefined;
  return `auth-provider ${ap.name ?? '(unnamed)'}`;
}

/** Per KubeConfig, the copy that lets client-node serve an http: server (see authOf); kept so plugin caches survive. */
const httpCopies = new WeakMap<KubeConfig, KubeConfig>();

/** TLS material and auth headers from client-node's applyToHTTPSOptions. */
export async function authOf(kc: KubeConfig): Promise<KubeAuth> {
  const cluster = kc.getCurrentCluster();
  let use = kc;
  if (cluster && new URL(cluster.server).protocol === 'http:' && !cluster.skipTLSVerify) {
    // client-node refuses http: unless TLS verification is off; over plain HTTP it means nothing.
    let copy = httpCopies.get(kc);
    if (!copy) {
      copy = new KubeConfig();
      copy.loadFromOptions({
        clusters: kc.clusters.map((c) => (c.name === cluster.name ? { ...c, skipTLSVerify: true } : c)),
        users: kc.users,
        contexts: kc.contexts,
        currentContext: kc.currentContext,
      });
      httpCopies.set(kc, copy);
    }
    use = copy;
  }
  const opts: {
    headers?: Record<string, string>;
    ca?: Buffer | string;
    cert?: Buffer | string;
    key?: Buffer | string;
    rejectUnauthorized?: boolean;
    servername?: string;
    auth?: string;
  } = {};
  await use.applyToHTTPSOptions(opts as never);
  const headers: Record<string, string> = { ...(opts.headers ?? {}) };
  if (opts.auth) headers.Authorization = `Basic ${Buffer.from(opts.auth).toString('base64')}`;
  const tls: KubeAuth['tls'] = {};
  // Exec credentials hand back PEM strings; files and -data fields arrive as Buffers.
  if (opts.ca) tls.ca = Buffer.from(opts.ca);
  if (opts.cert) tls.cert = Buffer.from(opts.cert);
  if (opts.key) tls.key = Buffer.from(opts.key);
  if (opts.servername) tls.servername = opts.servername;
  if (opts.rejectUnauthorized !== undefined) tls.rejectUnauthorized = opts.rejectUnauthorized;
  return { tls, headers };
}

/** What the resolver process sends: the kubeconfig resolved to data, or which plugin needs client-node in-process. */
export async function resolveKubeconfig(src: KubeconfigSource): Promise<ResolvedKubeconfig> {
  const kc = loadKubeConfig(src);
  const cluster = kc.getCurrentCluster() as NonNullable<ReturnType<KubeConfig['getCurrentCluster']>>;
  const user = kc.getCurrentUser();
  const plugin = pluginOf(user);
  if (plugin) return { kind: 'plugin', server: cluster.server, plugin };
  let auth: KubeAuth;
  try {
    auth = await authOf(kc);
  } catch (err) {
    // A CA, certificate, key or token file that cannot be read.
    throw new KubeconfigError('load', (err as Error).message);
  }
  const { tls, headers } = auth;
  const tokenFile = user ? tokenFileOf(user, src) : undefined;
  return {
    kind: 'static',
    server: cluster.server,
    skipTLSVerify: cluster.skipTLSVerify,
    tls,
    headers,
    ...(tokenFile && { tokenFile }),
  };
}

/**
 * The file the user's bearer token is read from, when it rotates: a tokenFile
 * auth provider (what loadFromCluster sets up for the in-cluster service
 * account), or a kubeconfig user's `tokenFile` (client-go's spelling, which
 * client-node ignores) or `token-file` (client-node's, read once at load).
 * client-node keeps neither path, so they are looked up in the kubeconfig
 * files. A `token` beside them wins, as in client-node.
 */
function tokenFileOf(user: User, src: KubeconfigSource): string | undefined {
  const ap = user.authProvider as { config?: { tokenFile?: unknown } } | undefined | null;
  if (ap) {
    const tf = ap.config?.tokenFile;
    return !user.token && typeof tf === 'string' ? tf : undefined;
  }
  for (const file of kubeconfigFiles(src)) {
    let doc: unknown;
    try {
      doc = parseYaml(readFileSync(file, 'utf8'));
    } catch {
      continue;
    }
    const users = (doc as { users?: unknown } | null)?.users;
    if (!Array.isArray(users)) continue;
    const entry = users.find((u: { name?: unknown } | null) => u?.name === user.name) as
      | { user?: Record<string, unknown> }
      | undefined;
    if (!entry) continue;
    const fields = entry.user ?? {};
    if (fields.token) return undefined;
    let path: string | undefined;
    // client-go resolves tokenFile against the kubeconfig's directory; client-node reads token-file from the working directory.
    if (typeof fields.tokenFile === 'string' && fields.tokenFile) path = resolve(dirname(file), fields.tokenFile);
    else if (typeof fields['token-file'] === 'string' && fields['token-file']) path = resolve(fields['token-file']);
    if (path === undefined) return undefined;
    try {
      readFileSync(path);
    } catch (err) {
      throw new KubeconfigError('load', `user "${user.name}": cannot read its token file: ${(err as Error).message}`);
    }
    return path;
  }
  return undefined;
}

/** The kubeconfig files loadFromDefault reads, in its order (the first defining a user wins there too). */
function kubeconfigFiles(src: KubeconfigSource): string[] {
  if (src.kubeconfig) return [src.kubeconfig];
  const env = process.env.KUBECONFIG;
  if (env) return env.split(delimiter).filter((f) => f);
  const home = process.env.HOME || homedir();
  const file = join(home, '.kube', 'config');
  return existsSync(file) ? [file] : [];
}
