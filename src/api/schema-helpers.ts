import { type TSchema, Type } from '@sinclair/typebox';

// Helpers that keep TypeBox inside what a Kubernetes structural schema allows:
// no const/anyOf for enums, additionalProperties (not patternProperties) for
// maps, and x-kubernetes-* extensions passed through as schema options.

export interface CelRule {
  rule: string;
  message?: string;
  messageExpression?: string;
  fieldPath?: string;
  reason?: 'FieldValueInvalid' | 'FieldValueForbidden' | 'FieldValueRequired' | 'FieldValueDuplicate';
}

export const DNS_LABEL = '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$';

/** A DNS-1123 label: the name of a task, a pool or a handler's owner. */
export function DnsLabel(description: string) {
  return Type.String({ description, pattern: DNS_LABEL, minLength: 1, maxLength: 63 });
}

export function StringEnum<const T extends readonly string[]>(
  values: T,
  options: { description: string; default?: T[number] },
) {
  return Type.Unsafe<T[number]>({ type: 'string', enum: [...values], ...options });
}

/** A map with string keys (rendered as additionalProperties). */
export function StringMap<T extends TSchema>(value: T, options: { description: string; maxProperties?: number }) {
  return Type.Unsafe<Record<string, T['static']>>({ type: 'object', additionalProperties: value, ...options });
}

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: JsonValue };

/** Any JSON object, kept as is (no pruning). */
export function FreeObject(description: string, maxProperties?: number) {
  return Type.Unsafe<JsonObject>({
    type: 'object',
    description,
    'x-kubernetes-preserve-unknown-fields': true,
    ...(maxProperties ? { maxProperties } : {}),
  });
}

/** Any JSON value (object, list, string, number, boolean). */
export function FreeValue(description: string) {
  return Type.Unsafe<JsonValue>({ description, 'x-kubernetes-preserve-unknown-fields': true });
}

/** metav1.Condition, as every Kubernetes API reports conditions. */
export const Condition = Type.Object({
  type: Type.String({ description: 'Type of condition in CamelCase.', maxLength: 316 }),
  status: StringEnum(['True', 'False', 'Unknown'] as const, { description: 'Status of the condition.' }),
  observedGeneration: Type.Optional(
    Type.Integer({ minimum: 0, description: 'The .metadata.generation the condition was set from.' }),
  ),
  lastTransitionTime: Type.String({ format: 'date-time', description: 'When the condition last changed status.' }),
  reason: Type.String({ maxLength: 1024, description: "CamelCase reason for the condition's last transition." }),
  message: Type.String({ maxLength: 32768, description: 'Human-readable details about the transition.' }),
});

export const Conditions = Type.Unsafe<Condition[]>({
  ...Type.Array(Condition, { maxItems: 16, description: 'Current state of the object, by condition type.' }),
  'x-kubernetes-list-type': 'map',
  'x-kubernetes-list-map-keys': ['type'],
});

export interface Condition {
  type: string;
  status: 'True' | 'False' | 'Unknown';
  observedGeneration?: number;
  lastTransitionTime: string;
  reason: string;
  message: string;
}

export const ObjectMeta = Type.Unsafe<{
  name?: string;
  namespace?: string;
  uid?: string;
  generation?: number;
  resourceVersion?: string;
  creationTimestamp?: string;
  deletionTimestamp?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  finalizers?: string[];
  ownerReferences?: {
    apiVersion: string;
    kind: string;
    name: string;
    uid: string;
    controller?: boolean;
    blockOwnerDeletion?: boolean;
  }[];
}>({ type: 'object' });
