import type { RestClient } from '../rest.ts';
import { parseQuantity } from './quantity.ts';
import type { Container, Pod } from './types.ts';

export class EnvError extends Error {
  readonly reason: string;

  constructor(reason: string, message: string) {
    super(message);
    this.reason = reason;
  }
}

interface Lookup {
  data(kind: 'configmaps' | 'secrets', namespace: string, name: string): Promise<Record<string, string> | undefined>;
}

/** Reads ConfigMaps and Secrets (secret values base64-decoded) through the API. */
export function apiLookup(client: RestClient): Lookup {
  return {
    async data(kind, namespace, name) {
      const obj = await client.getOrUndefined<{ data?: Record<string, string> }>(
        `/api/v1/namespaces/${namespace}/${kind}/${name}`,
      );
      if (!obj) return undefined;
      const data = obj.data ?? {};
      if (kind === 'secrets') {
        return Object.fromEntries(Object.entries(data).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')]));
      }
      return data;
    },
  };
}

/**
 * The container's environment as a kubelet computes it: envFrom, then env in
 * order with $(VAR) expansion, downward-API fields and ConfigMap/Secret keys.
 * A missing non-optional reference fails like the real kubelet does
 * (CreateContainerConfigError), naming what is missing.
 */
export async function resolveEnv(
  pod: Pod,
  container: Container,
  lookup: Lookup,
  podIP: string,
  hostIP: string,
): Promise<Record<string, string>> {
  const ns = pod.metadata.namespace ?? 'default';
  const env: Record<string, string> = {};

  for (const src of container.envFrom ?? []) {
    const ref = src.configMapRef ?? src.secretRef;
    if (!ref) continue;
    const kind = src.configMapRef ? 'configmaps' : 'secrets';
    const data = await lookup.data(kind, ns, ref.name);
    if (!data) {
      if (ref.optional) continue;
      throw new EnvError(
        'CreateContainerConfigError',
        `${kind === 'configmaps' ? 'configmap' : 'secret'} "${ref.name}" not found`,
      );
    }
    for (const [k, v] of Object.entries(data)) env[`${src.prefix ?? ''}${k}`] = v;
  }

  for (const v of container.env ?? []) {
    if (v.value !== undefined) {
      env[v.name] = expand(v.value, env);
      continue;
    }
    const from = v.valueFrom;
    if (!from) {
      env[v.name] = '';
      continue;
    }
    if (from.fieldRef) {
      env[v.name] = fieldValue(pod, from.fieldRef.fieldPath, podIP, hostIP);
    } else if (from.resourceFieldRef) {
      env[v.name] = resourceValue(pod, container, from.resourceFieldRef);
    } else {
      const ref = from.configMapKeyRef ?? from.secretKeyRef;
      if (!ref) continue;
      const kind = from.configMapKeyRef ? 'configmaps' : 'secrets';
      const data = await lookup.data(kind, ns, ref.name);
      const value = data?.[ref.key];
      if (value === undefined) {
        if (ref.optional) continue;
        const what = kind === 'configmaps' ? 'configmap' : 'secret';
        throw new EnvError(
          'CreateContainerConfigError',
          data ? `couldn't find key ${ref.key} in ${what} ${ns}/${ref.name}` : `${what} "${ref.name}" not found`,
        );
      }
      env[v.name] = value;
    }
  }
  return env;
}

/** $(VAR) expands to an earlier variable; $$(VAR) escapes; unknown stays as is. */
export function expand(value: string, env: Record<string, string>): string {
  return value.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)/g, (m, name: string | undefined) => {
    if (m === '$$') return '$';
    return name !== undefined && name in env ? (env[name] as string) : m;
  });
}

export function fieldValue(pod: Pod, path: string, podIP: string, hostIP: string): string {
  const m = /^metadata\.(labels|annotations)\['(.+)'\]$/.exec(path);
  if (m?.[1] && m[2]) return pod.metadata[m[1] as 'labels' | 'annotations']?.[m[2]] ?? '';
  switch (path) {
    case 'metadata.name':
      return pod.metadata.name;
    case 'metadata.namespace':
      return pod.metadata.namespace ?? 'default';
    case 'metadata.uid':
      return pod.metadata.uid ?? '';
    case 'spec.nodeName':
      return pod.spec.nodeName ?? '';
    case 'spec.serviceAccountName':
      return pod.spec.serviceAccountName ?? 'default';
    case 'status.podIP':
    case 'status.podIPs':
      return podIP;
    case 'status.hostIP':
    case 'status.hostIPs':
      return hostIP;
    default:
      throw new EnvError('CreateContainerConfigError', `unsupported fieldRef.fieldPath "${path}"`);
  }
}

export function resourceValue(
  pod: Pod,
  self: Container,
  ref: { containerName?: string; resource: string; divisor?: string },
): string {
  const c = ref.containerName ? pod.spec.containers.find((x) => x.name === ref.containerName) : self;
  const [kind, name] = ref.resource.split('.') as ['limits' | 'requests', string];
  const raw = c?.resources?.[kind]?.[name];
  if (raw === undefined) return '0';
  const divisor = parseQuantity(ref.divisor ?? '1');
  return String(Math.ceil(parseQuantity(raw) / divisor));
}
