// What each pod volume contains, computed the way the kubelet's volume plugins
// do (configmap.MakePayload, secret.MakePayload, downwardapi.CollectData and
// the projected plugin): pure functions of the pod and the API objects it
// references, so the rules can be tested without a cluster.

import { fieldValue, resourceValue } from './env.ts';
import type { DownwardAPIVolumeFile, KeyToPath, Pod, ServiceAccountTokenProjection, Volume } from './types.ts';

/** One file of a volume: its bytes and permission bits. */
export interface FileProjection {
  data: Buffer;
  mode: number;
}

/** Relative path in the volume → file. */
export type Payload = Map<string, FileProjection>;

export const SUPPORTED_VOLUME_TYPES = ['emptyDir', 'configMap', 'secret', 'downwardAPI', 'projected'] as const;
export type VolumeType = (typeof SUPPORTED_VOLUME_TYPES)[number];

/** The API's default for defaultMode of configMap, secret, downwardAPI and projected volumes (0644). */
export const DEFAULT_MODE = 0o644;
/** The API's default lifetime of a projected ServiceAccount token. */
export const DEFAULT_TOKEN_SECONDS = 3600;

export type VolumeErrorReason = 'NotFound' | 'MissingKey' | 'Unsupported' | 'Invalid' | 'ApiError';

/** Why a volume cannot be set up; the kubelet turns it into a FailedMount event. */
export class VolumeSetupError extends Error {
  readonly volume: string;
  readonly reason: VolumeErrorReason;

  constructor(volume: string, reason: VolumeErrorReason, message: string) {
    super(message);
    this.name = 'VolumeSetupError';
    this.volume = volume;
    this.reason = reason;
  }
}

export interface ConfigMapObject {
  data?: Record<string, string>;
  binaryData?: Record<string, string>;
}

export interface SecretObject {
  data?: Record<string, string>;
}

/** A projected token a volume needs, keyed so the token cache can keep it across syncs. */
export interface TokenRef {
  key: string;
  source: ServiceAccountTokenProjection;
}

/** The API objects a volume's content depends on, fetched by the caller (undefined: not found). */
export interface VolumeInputs {
  configMaps: ReadonlyMap<string, ConfigMapObject | undefined>;
  secrets: ReadonlyMap<string, SecretObject | undefined>;
  tokens: ReadonlyMap<string, string>;
}

/** The volume's type: the one source key it sets besides `name`. */
export function volumeType(v: Volume): VolumeType | { unsupported: string } {
  const keys = Object.keys(v).filter((k) => k !== 'name' && v[k] !== undefined && v[k] !== null);
  const known = keys.find((k): k is VolumeType => (SUPPORTED_VOLUME_TYPES as readonly string[]).includes(k));
  if (known) return known;
  return { unsupported: keys[0] ?? 'none' };
}

/** The ConfigMaps, Secrets and tokens a volume reads. */
export function volumeReferences(v: Volume): { configMaps: string[]; secrets: string[]; tokens: TokenRef[] } {
  const out = { configMaps: [] as string[], secrets: [] as string[], tokens: [] as TokenRef[] };
  if (v.configMap) out.configMaps.push(v.configMap.name);
  if (v.secret) out.secrets.push(v.secret.secretName);
  (v.projected?.sources ?? []).forEach((s, i) => {
    if (s.configMap) out.configMaps.push(s.configMap.name);
    if (s.secret) out.secrets.push(s.secret.name);
    if (s.serviceAccountToken) out.tokens.push({ key: tokenKey(v.name, i), source: s.serviceAccountToken });
  });
  return out;
}

export function tokenKey(volume: string, sourceIndex: number): string {
  return `${volume}/${sourceIndex}`;
}

/**
 * The files of a configMap, secret, downwardAPI or projected volume (an
 * emptyDir has no payload). Throws VolumeSetupError with the kubelet's message.
 */
export function buildPayload(v: Volume, pod: Pod, inputs: VolumeInputs): Payload {
  const payload: Payload = new Map();
  if (v.configMap) {
    const mode = checkMode(v.name, v.configMap.defaultMode ?? DEFAULT_MODE, 'defaultMode');
    addConfigMap(payload, v.name, v.configMap, mode, inputs);
  } else if (v.secret) {
    const mode = checkMode(v.name, v.secret.defaultMode ?? DEFAULT_MODE, 'defaultMode');
    addSecret(payload, v.name, { ...v.secret, name: v.secret.secretName }, mode, inputs);
  } else if (v.downwardAPI) {
    const mode = checkMode(v.name, v.downwardAPI.defaultMode ?? DEFAULT_MODE, 'defaultMode');
    addDownward(payload, v.name, v.downwardAPI.items ?? [], mode, pod);
  } else if (v.projected) {
    const mode = checkMode(v.name, v.projected.defaultMode ?? DEFAULT_MODE, 'defaultMode');
    (v.projected.sources ?? []).forEach((s, i) => {
      if (s.configMap) addConfigMap(payload, v.name, s.configMap, mode, inputs);
      else if (s.secret) addSecret(payload, v.name, s.secret, mode, inputs);
      else if (s.downwardAPI) addDownward(payload, v.name, s.downwardAPI.items ?? [], mode, pod);
      else if (s.serviceAccountToken) {
        const token = inputs.tokens.get(tokenKey(v.name, i));
        if (token === undefined) {
          throw new VolumeSetupError(v.name, 'NotFound', `no token for ${s.serviceAccountToken.path}`);
        }
        payload.set(s.serviceAccountToken.path, { data: Buffer.from(token), mode });
      } else {
        const kind = Object.keys(s)[0] ?? 'empty';
        throw new VolumeSetupError(
          v.name,
          'Unsupported',
          `projected source ${kind} is not supported by the process kubelet (configMap, secret, downwardAPI and serviceAccountToken are)`,
        );
      }
    });
  }
  return payload;
}

function checkMode(volume: string, mode: number, field: string): number {
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o777) {
    throw new VolumeSetupError(volume, 'Invalid', `${field} ${mode} is not a file mode between 0 and 0777`);
  }
  return mode;
}

function addConfigMap(
  payload: Payload,
  volume: string,
  ref: { name: string; items?: KeyToPath[]; optional?: boolean },
  defaultMode: number,
  inputs: VolumeInputs,
): void {
  const cm = inputs.configMaps.get(ref.name);
  if (!cm) {
    if (ref.optional) return;
    throw new VolumeSetupError(volume, 'NotFound', `configmap "${ref.name}" not found`);
  }
  const lookup = (key: string): Buffer | undefined => {
    if (cm.data?.[key] !== undefined) return Buffer.from(cm.data[key]);
    if (cm.binaryData?.[key] !== undefined) return Buffer.from(cm.binaryData[key], 'base64');
    return undefined;
  };
  const keys = [...Object.keys(cm.data ?? {}), ...Object.keys(cm.binaryData ?? {})];
  addKeys(payload, volume, keys, lookup, ref, defaultMode, 'configmap references non-existent config key');
}

function addSecret(
  payload: Payload,
  volume: string,
  ref: { name: string; items?: KeyToPath[]; optional?: boolean },
  defaultMode: number,
  inputs: VolumeInputs,
): void {
  const secret = inputs.secrets.get(ref.name);
  if (!secret) {
    if (ref.optional) return;
    throw new VolumeSetupError(volume, 'NotFound', `secret "${ref.name}" not found`);
  }
  const lookup = (key: string): Buffer | undefined =>
    secret.data?.[key] === undefined ? undefined : Buffer.from(secret.data[key], 'base64');
  addKeys(
    payload,
    volume,
    Object.keys(secret.data ?? {}),
    lookup,
    ref,
    defaultMode,
    'references non-existent secret key',
  );
}

/** No items: every key becomes a file of its name; items: only those keys, at their paths. */
function addKeys(
  payload: Payload,
  volume: string,
  keys: string[],
  lookup: (key: string) => Buffer | undefined,
  ref: { items?: KeyToPath[]; optional?: boolean },
  defaultMode: number,
  missingKey: string,
): void {
  if (!ref.items?.length) {
    for (const key of keys) payload.set(key, { data: lookup(key) as Buffer, mode: defaultMode });
    return;
  }
  for (const item of ref.items) {
    const data = lookup(item.key);
    if (data === undefined) {
      if (ref.optional) continue;
      throw new VolumeSetupError(volume, 'MissingKey', `${missingKey}: ${item.key}`);
    }
    const mode = item.mode === undefined ? defaultMode : checkMode(volume, item.mode, `items[${item.key}].mode`);
    payload.set(item.path, { data, mode });
  }
}

function addDownward(
  payload: Payload,
  volume: string,
  items: DownwardAPIVolumeFile[],
  defaultMode: number,
  pod: Pod,
): void {
  for (const item of items) {
    let value: string;
    if (item.fieldRef) value = downwardField(volume, pod, item.fieldRef.fieldPath);
    else if (item.resourceFieldRef) {
      const ref = item.resourceFieldRef;
      const c = pod.spec.containers.find((x) => x.name === ref.containerName);
      if (!c) {
        throw new VolumeSetupError(
          volume,
          'Invalid',
          `resourceFieldRef of ${item.path} names container "${ref.containerName ?? ''}", which the pod does not have`,
        );
      }
      value = resourceValue(pod, c, ref);
    } else {
      throw new VolumeSetupError(
        volume,
        'Invalid',
        `downwardAPI item ${item.path} sets neither fieldRef nor resourceFieldRef`,
      );
    }
    const mode = item.mode === undefined ? defaultMode : checkMode(volume, item.mode, `items[${item.path}].mode`);
    payload.set(item.path, { data: Buffer.from(value), mode });
  }
}

/** The fields a downwardAPI volume may expose (status fields are env-only in the API). */
function downwardField(volume: string, pod: Pod, path: string): string {
  if (path === 'metadata.labels') return formatMap(pod.metadata.labels ?? {});
  if (path === 'metadata.annotations') return formatMap(pod.metadata.annotations ?? {});
  if (/^metadata\.(name|namespace|uid)$/.test(path) || /^metadata\.(labels|annotations)\['.+'\]$/.test(path)) {
    return fieldValue(pod, path, '', '');
  }
  throw new VolumeSetupError(
    volume,
    'Invalid',
    `fieldRef.fieldPath "${path}" is not supported in a downwardAPI volume`,
  );
}

/** The kubelet's fieldpath.FormatMap: `key="value"` lines in key order, no trailing newline. */
export function formatMap(m: Record<string, string>): string {
  return Object.keys(m)
    .sort()
    .map((k) => `${k}=${JSON.stringify(m[k])}`)
    .join('\n');
}
