import { readFileSync, writeFileSync } from 'node:fs';
import { stringify } from 'yaml';

export interface KubeconfigUser {
  cert?: string;
  key?: string;
  token?: string;
}

/** Writes a single-context kubeconfig with embedded credentials (mode 0600). */
export function writeKubeconfig(
  path: string,
  server: string,
  caFile: string,
  user: KubeconfigUser,
  name = 'agentflow-local',
): void {
  const b64 = (file: string) => readFileSync(file).toString('base64');
  const u: Record<string, string> = {};
  if (user.cert) u['client-certificate-data'] = b64(user.cert);
  if (user.key) u['client-key-data'] = b64(user.key);
  if (user.token) u.token = user.token;
  const doc = {
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name, cluster: { server, 'certificate-authority-data': b64(caFile) } }],
    users: [{ name, user: u }],
    contexts: [{ name, context: { cluster: name, user: name, namespace: 'default' } }],
    'current-context': name,
    preferences: {},
  };
  writeFileSync(path, stringify(doc), { mode: 0o600 });
}
