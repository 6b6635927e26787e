// Whether a pod gets the default ServiceAccount token, and the volume that
// carries it. On a real cluster the ServiceAccount admission plugin decides
// (it reads the pod's and the ServiceAccount's automountServiceAccountToken)
// and injects a `kube-api-access-*` projected volume mounted at SA_MOUNT_PATH;
// the kubelet only mounts it. The process kubelet reads that decision from the
// admitted pod, and injects the same volume itself if the API server did not
// (admission plugin off) but the ServiceAccount allows it.

import { KubeError, type RestClient } from '../rest.ts';
import type { Container, Pod, Volume } from './types.ts';

export const SA_MOUNT_PATH = '/var/run/secrets/kubernetes.io/serviceaccount';
export const SA_VOLUME_NAME = 'kube-api-access-kubelet';

export interface AutomountDecision {
  /** The pod gets the default token (volume, and the harness's KUBECONFIG). */
  automount: boolean;
  /** The kubelet must add the kube-api-access volume itself. */
  inject: boolean;
}

/** Whether some container already has a mount at the ServiceAccount path. */
export function mountsServiceAccount(pod: Pod): boolean {
  return allContainers(pod).some((c) => c.volumeMounts?.some((m) => trimSlash(m.mountPath) === SA_MOUNT_PATH));
}

export async function decideAutomount(pod: Pod, client: RestClient): Promise<AutomountDecision> {
  if (pod.spec.automountServiceAccountToken === false) return { automount: false, inject: false };
  if (mountsServiceAccount(pod)) return { automount: true, inject: false };
  const ns = pod.metadata.namespace ?? 'default';
  const name = pod.spec.serviceAccountName ?? 'default';
  try {
    const sa = await client.get<{ automountServiceAccountToken?: boolean }>(
      `/api/v1/namespaces/${ns}/serviceaccounts/${name}`,
    );
    const automount = sa.automountServiceAccountToken !== false;
    return { automount, inject: automount };
  } catch (err) {
    // Not allowed to read it (or gone): the admission plugin already decided,
    // and since it mounted nothing, the ServiceAccount turned the token off.
    if (err instanceof KubeError && (err.status === 403 || err.status === 404))
      return { automount: false, inject: false };
    throw err;
  }
}

/** The pod with the kube-api-access volume the admission plugin would have added (token, ca.crt, namespace). */
export function withServiceAccountVolume(pod: Pod): Pod {
  const volume: Volume = {
    name: SA_VOLUME_NAME,
    projected: {
      defaultMode: 0o644,
      sources: [
        { serviceAccountToken: { expirationSeconds: 3607, path: 'token' } },
        { configMap: { name: 'kube-root-ca.crt', items: [{ key: 'ca.crt', path: 'ca.crt' }] } },
        {
          downwardAPI: {
            items: [{ path: 'namespace', fieldRef: { apiVersion: 'v1', fieldPath: 'metadata.namespace' } }],
          },
        },
      ],
    },
  };
  const mount = (c: Container): Container =>
    c.volumeMounts?.some((m) => trimSlash(m.mountPath) === SA_MOUNT_PATH)
      ? c
      : {
          ...c,
          volumeMounts: [...(c.volumeMounts ?? []), { name: SA_VOLUME_NAME, mountPath: SA_MOUNT_PATH, readOnly: true }],
        };
  return {
    ...pod,
    spec: {
      ...pod.spec,
      volumes: [...(pod.spec.volumes ?? []), volume],
      containers: pod.spec.containers.map(mount),
      ...(pod.spec.initContainers ? { initContainers: pod.spec.initContainers.map(mount) } : {}),
    },
  };
}

function allContainers(pod: Pod): Container[] {
  return [...(pod.spec.initContainers ?? []), ...pod.spec.containers];
}

function trimSlash(p: string): string {
  return p.length > 1 ? p.replace(/\/+$/, '') : p;
}
