// Where the dispatcher's TLS material lives in Kubernetes: its Secret (get,
// create, update guarded by resourceVersion) and the CA-bundle ConfigMaps
// agents mount (get, create, update). No patch, list or watch: the RBAC this
// needs stays at those verbs.
import {
  isAlreadyExists,
  isConflict,
  isNotFound,
  type KObject,
  type KubeClient,
  type ResourceType,
  resourcePath,
} from '../kube/client.ts';

export const SECRETS: ResourceType = { group: '', version: 'v1', plural: 'secrets', kind: 'Secret', namespaced: true };
export const CONFIGMAPS: ResourceType = {
  group: '',
  version: 'v1',
  plural: 'configmaps',
  kind: 'ConfigMap',
  namespaced: true,
};

export const MANAGED_BY_LABELS = { 'app.kubernetes.io/managed-by': 'agentflow-operator' } as const;

export interface SecretObject extends KObject {
  type?: string;
  data?: Record<string, string>;
}

export interface ConfigMapObject extends KObject {
  data?: Record<string, string>;
}

export class SecretStore {
  readonly namespace: string;
  readonly name: string;
  private readonly client: KubeClient;

  constructor(client: KubeClient, namespace: string, name: string) {
    this.client = client;
    this.namespace = namespace;
    this.name = name;
  }

  /** `namespace/name`, as errors and logs name it. */
  get ref(): string {
    return `${this.namespace}/${this.name}`;
  }

  async get(): Promise<SecretObject | undefined> {
    try {
      return await this.client.get<SecretObject>(resourcePath(SECRETS, { namespace: this.namespace, name: this.name }));
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  /** Creates the Secret; rejects with a 409 KubeApiError when it already exists. */
  create(data: Record<string, string>): Promise<SecretObject> {
    return this.client.create<SecretObject>(resourcePath(SECRETS, { namespace: this.namespace }), {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name: this.name, namespace: this.namespace, labels: { ...MANAGED_BY_LABELS } },
      type: 'kubernetes.io/tls',
      data,
    });
  }

  /**
   * Replaces the data of `previous`, failing with a 409 KubeApiError if the
   * Secret changed since it was read (its resourceVersion travels along).
   */
  replace(previous: SecretObject, data: Record<string, string>): Promise<SecretObject> {
    const meta = previous.metadata ?? {};
    return this.client.replace<SecretObject>(resourcePath(SECRETS, { namespace: this.namespace, name: this.name }), {
      ...previous,
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { ...meta, labels: { ...(meta.labels ?? {}), ...MANAGED_BY_LABELS } },
      data,
    });
  }
}

export type PublishResult = 'created' | 'updated' | 'unchanged';

const PUBLISH_ATTEMPTS = 5;

/**
 * Makes ConfigMap `namespace/name` hold `value` under `key`, other keys kept.
 * Writes nothing when it already does; a concurrent writer (409) is answered by
 * reading again.
 */
export async function publishConfigMapKey(
  client: KubeClient,
  where: { namespace: string; name: string },
  key: string,
  value: string,
): Promise<PublishResult> {
  const path = resourcePath(CONFIGMAPS, where);
  for (let attempt = 1; ; attempt++) {
    let current: ConfigMapObject | undefined;
    try {
      current = await client.get<ConfigMapObject>(path);
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    try {
      if (!current) {
        await client.create(resourcePath(CONFIGMAPS, { namespace: where.namespace }), {
          apiVersion: 'v1',
          kind: 'ConfigMap',
          metadata: { name: where.name, namespace: where.namespace, labels: { ...MANAGED_BY_LABELS } },
          data: { [key]: value },
        });
        return 'created';
      }
      if (current.data?.[key] === value) return 'unchanged';
      const meta = current.metadata ?? {};
      await client.replace(path, {
        ...current,
        metadata: { ...meta, labels: { ...(meta.labels ?? {}), ...MANAGED_BY_LABELS } },
        data: { ...(current.data ?? {}), [key]: value },
      });
      return 'updated';
    } catch (err) {
      if (attempt >= PUBLISH_ATTEMPTS || !(isConflict(err) || isAlreadyExists(err))) throw err;
    }
  }
}
