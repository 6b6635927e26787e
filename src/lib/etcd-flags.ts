import { readFileSync } from 'node:fs';

// How a command names agentflow's etcd: the same flags, environment variables
// and checks for `agentflow operator` and `agentflow backup` (one place).

/** A bad flag: the command prints it with its usage and exits 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** The etcd flags for node:util parseArgs. */
export const ETCD_FLAG_OPTIONS = {
  'etcd-endpoints': { type: 'string' },
  'etcd-prefix': { type: 'string' },
  'etcd-ca-file': { type: 'string' },
  'etcd-cert-file': { type: 'string' },
  'etcd-key-file': { type: 'string' },
  'etcd-username': { type: 'string' },
  'etcd-password-file': { type: 'string' },
} as const;

export const ETCD_FLAGS_USAGE = `  --etcd-endpoints URLS           agentflow's etcd, comma-separated           [AGENTFLOW_ETCD_ENDPOINTS] (required)
  --etcd-prefix PREFIX            root of agentflow's etcd keys (/agentflow/v1) [AGENTFLOW_ETCD_PREFIX]
  --etcd-ca-file PATH             CA of etcd's TLS certificate (https endpoints) [AGENTFLOW_ETCD_CA_FILE]
  --etcd-cert-file PATH           client certificate for etcd                  [AGENTFLOW_ETCD_CERT_FILE]
  --etcd-key-file PATH            its key                                       [AGENTFLOW_ETCD_KEY_FILE]
  --etcd-username NAME            etcd user for password auth (default: the client certificate's CN) [AGENTFLOW_ETCD_USERNAME]
  --etcd-password-file PATH       file holding that user's password            [AGENTFLOW_ETCD_PASSWORD_FILE]`;

export const DEFAULT_ETCD_PREFIX = '/agentflow/v1';

/** A flag's value, else its environment variable's; empty counts as unset. */
export const flag = (values: Record<string, unknown>, name: string, env: string): string | undefined => {
  const v = values[name] ?? process.env[env];
  return typeof v === 'string' && v !== '' ? v : undefined;
};

export function urls(name: string, v: string): string[] {
  const list = v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const u of list) {
    if (!URL.canParse(u) || !/^https?:$/.test(new URL(u).protocol)) {
      throw new UsageError(`--${name}: "${u}" is not an http(s) URL`);
    }
  }
  if (list.length === 0) throw new UsageError(`--${name}: at least one URL is required`);
  return list;
}

export function readFlagFile(name: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new UsageError(`--${name}: cannot read ${path}: ${(err as Error).message}`);
  }
}

function etcdTls(values: Record<string, unknown>): { ca: Buffer; cert?: Buffer; key?: Buffer } | undefined {
  const ca = flag(values, 'etcd-ca-file', 'AGENTFLOW_ETCD_CA_FILE');
  const cert = flag(values, 'etcd-cert-file', 'AGENTFLOW_ETCD_CERT_FILE');
  const key = flag(values, 'etcd-key-file', 'AGENTFLOW_ETCD_KEY_FILE');
  if (!ca) {
    if (cert || key) throw new UsageError('--etcd-cert-file and --etcd-key-file need --etcd-ca-file');
    return undefined;
  }
  if (Boolean(cert) !== Boolean(key)) throw new UsageError('--etcd-cert-file and --etcd-key-file go together');
  return {
    ca: readFlagFile('etcd-ca-file', ca),
    ...(cert && { cert: readFlagFile('etcd-cert-file', cert) }),
    ...(key && { key: readFlagFile('etcd-key-file', key) }),
  };
}

/**
 * Password auth for an external etcd that uses it. A file, not a flag value,
 * so the password shows in no process listing; one trailing newline (what
 * `echo` and most editors add) is not part of it.
 */
function etcdAuth(values: Record<string, unknown>): { username: string; password: string } | undefined {
  const username = flag(values, 'etcd-username', 'AGENTFLOW_ETCD_USERNAME');
  const passwordFile = flag(values, 'etcd-password-file', 'AGENTFLOW_ETCD_PASSWORD_FILE');
  if (!username && !passwordFile) return undefined;
  if (!passwordFile) throw new UsageError('--etcd-username needs --etcd-password-file');
  if (!username) throw new UsageError('--etcd-password-file needs --etcd-username');
  const password = readFlagFile('etcd-password-file', passwordFile)
    .toString('utf8')
    .replace(/\r?\n$/, '');
  if (password === '') throw new UsageError(`--etcd-password-file: ${passwordFile} is empty`);
  return { username, password };
}

export interface EtcdConnection {
  etcd: string[];
  etcdPrefix: string;
  etcdTls?: { ca: Buffer; cert?: Buffer; key?: Buffer };
  etcdAuth?: { username: string; password: string };
}

/** The etcd a command talks to, from its flags (UsageError naming the flag when one is wrong). */
export function etcdConnection(values: Record<string, unknown>): EtcdConnection {
  const raw = flag(values, 'etcd-endpoints', 'AGENTFLOW_ETCD_ENDPOINTS');
  if (!raw) throw new UsageError('--etcd-endpoints (or AGENTFLOW_ETCD_ENDPOINTS) is required');
  const etcd = urls('etcd-endpoints', raw);
  const prefix = flag(values, 'etcd-prefix', 'AGENTFLOW_ETCD_PREFIX') ?? DEFAULT_ETCD_PREFIX;
  if (!/^\/\S*[^/]$/.test(prefix))
    throw new UsageError(`--etcd-prefix: must start with "/" and not end with one, got "${prefix}"`);
  const tls = etcdTls(values);
  const auth = etcdAuth(values);
  return { etcd, etcdPrefix: prefix, ...(tls && { etcdTls: tls }), ...(auth && { etcdAuth: auth }) };
}
