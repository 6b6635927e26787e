// A pod's volumes on the node: materialised under the pod directory as
// volumes/kubernetes.io~<plugin>/<name> (the kubelet's layout), written with
// the AtomicWriter, and kept fresh: ConfigMaps and Secrets re-read on every
// full sync, projected ServiceAccount tokens re-requested when the kubelet's
// token manager would (80% of the TTL, or 24 h) or once they are older than the
// configured refresh interval.

import { chmodSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { KubeError, type RestClient } from '../rest.ts';
import { InvalidPayloadPathError, writeAtomically } from './atomic-writer.ts';
import type { Pod, ServiceAccountTokenProjection, Volume } from './types.ts';
import {
  buildPayload,
  type ConfigMapObject,
  DEFAULT_TOKEN_SECONDS,
  type SecretObject,
  SUPPORTED_VOLUME_TYPES,
  type VolumeInputs,
  VolumeSetupError,
  type VolumeType,
  volumeReferences,
  volumeType,
} from './volume-payload.ts';

const PLUGIN_DIRS: Record<VolumeType, string> = {
  emptyDir: 'kubernetes.io~empty-dir',
  configMap: 'kubernetes.io~configmap',
  secret: 'kubernetes.io~secret',
  downwardAPI: 'kubernetes.io~downward-api',
  projected: 'kubernetes.io~projected',
};

/** The kubelet's token manager never keeps a token longer than this. */
export const MAX_TOKEN_TTL_MS = 24 * 3600_000;

export interface CachedToken {
  token: string;
  /** status.expirationTimestamp, ms since the epoch. */
  expiresAt: number;
  /** The lifetime asked for (the API server may grant longer). */
  expirationSeconds: number;
  fetchedAt: number;
}

/**
 * The kubelet's requiresRefresh: once 80% of the requested lifetime has passed
 * (counted back from the expiry) or the token is 24 h old; plus, for tests, once
 * it is `refreshAfterMs` old.
 */
export function tokenNeedsRefresh(t: CachedToken, now: number, refreshAfterMs?: number): boolean {
  const ttlMs = t.expirationSeconds * 1000;
  const issuedAt = t.expiresAt - ttlMs;
  if (now >= issuedAt + MAX_TOKEN_TTL_MS) return true;
  if (now >= t.expiresAt - ttlMs * 0.2) return true;
  return refreshAfterMs !== undefined && now - t.fetchedAt >= refreshAfterMs;
}

export interface PodVolumesOptions {
  client: RestClient;
  /** The pod directory. */
  dir: string;
  tokenRefreshMs?: number;
  now?: () => number;
}

export class PodVolumes {
  private pod: Pod;
  private readonly o: PodVolumesOptions;
  private readonly tokens = new Map<string, CachedToken>();
  /** `configmaps/name` or `secrets/name` → object, undefined when not found; cleared by a full sync. */
  private readonly objects = new Map<string, ConfigMapObject | SecretObject | undefined>();
  private readonly ready = new Set<string>();

  constructor(pod: Pod, o: PodVolumesOptions) {
    this.pod = pod;
    this.o = o;
  }

  /** The pod as the kubelet now sees it (labels and annotations feed downwardAPI files). */
  update(pod: Pod): void {
    this.pod = pod;
  }

  get volumes(): Volume[] {
    return this.pod.spec.volumes ?? [];
  }

  /** Whether any volume changes after set-up (everything but emptyDir). */
  get refreshes(): boolean {
    return this.volumes.some((v) => volumeType(v) !== 'emptyDir');
  }

  /** Every volume has been set up at least once: containers may start. */
  get allReady(): boolean {
    return this.volumes.every((v) => this.ready.has(v.name));
  }

  /** Where a volume lives on the host, and whether containers only read it (API data volumes). */
  hostDir(name: string): { dir: string; readOnly: boolean } | undefined {
    const v = this.volumes.find((x) => x.name === name);
    if (!v) return undefined;
    const type = volumeType(v);
    if (typeof type !== 'string') return undefined;
    return { dir: join(this.root, PLUGIN_DIRS[type], v.name), readOnly: type !== 'emptyDir' };
  }

  /**
   * Sets up or refreshes every volume; `refetch` re-reads ConfigMaps and
   * Secrets (otherwise only due tokens are renewed). Returns one error per
   * volume that failed; a failed refresh leaves the volume's last content.
   */
  async sync(refetch: boolean): Promise<VolumeSetupError[]> {
    if (refetch) this.objects.clear();
    const errors: VolumeSetupError[] = [];
    for (const v of this.volumes) {
      try {
        await this.syncVolume(v);
        this.ready.add(v.name);
      } catch (err) {
        errors.push(asVolumeError(v.name, err));
      }
    }
    return errors;
  }

  /** Removes every volume's files (the pod is gone; tokens and secrets must not linger). */
  remove(): void {
    rmSync(this.root, { recursive: true, force: true });
  }

  private get root(): string {
    return join(this.o.dir, 'volumes');
  }

  private async syncVolume(v: Volume): Promise<void> {
    const type = volumeType(v);
    if (typeof type !== 'string') {
      throw new VolumeSetupError(
        v.name,
        'Unsupported',
        `volume type ${type.unsupported} is not supported by the process kubelet (supported: ${SUPPORTED_VOLUME_TYPES.join(', ')})`,
      );
    }
    const dir = join(this.root, PLUGIN_DIRS[type], v.name);
    if (type === 'emptyDir') {
      mkdirSync(dir, { recursive: true });
      chmodSync(dir, 0o777); // the kubelet's emptyDir is world-writable, as containers may run as any user
      return;
    }
    const refs = volumeReferences(v);
    const configMaps = new Map<string, ConfigMapObject | undefined>();
    const secrets = new Map<string, SecretObject | undefined>();
    const tokens = new Map<string, string>();
    for (const name of refs.configMaps) configMaps.set(name, await this.object('configmaps', name));
    for (const name of refs.secrets) secrets.set(name, await this.object('secrets', name));
    for (const t of refs.tokens) tokens.set(t.key, await this.token(v.name, t.key, t.source));
    const inputs: VolumeInputs = { configMaps, secrets, tokens };
    writeAtomically(dir, buildPayload(v, this.pod, inputs));
  }

  private async object(kind: 'configmaps' | 'secrets', name: string): Promise<ConfigMapObject | undefined> {
    const key = `${kind}/${name}`;
    if (this.objects.has(key)) return this.objects.get(key);
    const obj = await this.o.client.getOrUndefined<ConfigMapObject>(
      `/api/v1/namespaces/${this.namespace}/${kind}/${name}`,
    );
    this.objects.set(key, obj);
    return obj;
  }

  /** A cached token, renewed when due; a failed renewal keeps a token that is still valid. */
  private async token(volume: string, key: string, source: ServiceAccountTokenProjection): Promise<string> {
    const now = (this.o.now ?? Date.now)();
    const cached = this.tokens.get(key);
    if (cached && !tokenNeedsRefresh(cached, now, this.o.tokenRefreshMs)) return cached.token;
    const expirationSeconds = source.expirationSeconds ?? DEFAULT_TOKEN_SECONDS;
    const sa = this.pod.spec.serviceAccountName ?? 'default';
    try {
      const tr = await this.o.client.post<{ status: { token: string; expirationTimestamp: string } }>(
        `/api/v1/namespaces/${this.namespace}/serviceaccounts/${sa}/token`,
        {
          apiVersion: 'authentication.k8s.io/v1',
          kind: 'TokenRequest',
          spec: {
            ...(source.audience ? { audiences: [source.audience] } : {}),
            expirationSeconds,
            boundObjectRef: { apiVersion: 'v1', kind: 'Pod', name: this.pod.metadata.name, uid: this.pod.metadata.uid },
          },
        },
      );
      const fresh: CachedToken = {
        token: tr.status.token,
        expiresAt: Date.parse(tr.status.expirationTimestamp),
        expirationSeconds,
        fetchedAt: now,
      };
      this.tokens.set(key, fresh);
      return fresh.token;
    } catch (err) {
      if (cached && now < cached.expiresAt) return cached.token;
      const why = err instanceof KubeError ? (messageOf(err) ?? err.message) : (err as Error).message;
      throw new VolumeSetupError(volume, 'ApiError', `failed to fetch token: ${why}`);
    }
  }

  private get namespace(): string {
    return this.pod.metadata.namespace ?? 'default';
  }
}

function messageOf(err: KubeError): string | undefined {
  return (err.body as { message?: string } | undefined)?.message;
}

function asVolumeError(volume: string, err: unknown): VolumeSetupError {
  if (err instanceof VolumeSetupError) return err;
  if (err instanceof InvalidPayloadPathError) return new VolumeSetupError(volume, 'Invalid', err.message);
  if (err instanceof KubeError) return new VolumeSetupError(volume, 'ApiError', messageOf(err) ?? err.message);
  return new VolumeSetupError(volume, 'ApiError', (err as Error).message);
}
