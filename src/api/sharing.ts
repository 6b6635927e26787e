import { Type } from '@sinclair/typebox';
import { DnsLabel } from './schema-helpers.ts';

// Shared AgentPools: the one place for how a Workflow names another namespace's pool, which
// namespaces a pool serves and with what weight. The CRD schema, the workflow controller and the
// dispatcher all read these.

/** Namespaces one AgentPool may be shared with (spec.sharing.namespaces). */
export const MAX_SHARED_NAMESPACES = 256;
/** The largest weight of a namespace in a shared pool. */
export const MAX_SHARE_WEIGHT = 1000;
/** Weight of a namespace that names none (and of the pool's own namespace, unless spec.sharing.weight). */
export const DEFAULT_SHARE_WEIGHT = 1;

/** `name` (an AgentPool of the workflow's namespace) or `namespace/name` (one another namespace shares). */
// Each part a DNS label of at most 63 characters (the length in the pattern: the whole may be 127).
const LABEL = '[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?';
export const POOL_REF = `^(${LABEL}/)?${LABEL}$`;
const POOL_REF_RE = new RegExp(POOL_REF);

/** A pool reference in a Workflow (spec.pool, spec.tasks[].pool). */
export function PoolRef(description: string) {
  return Type.String({
    description: `${description} "name" for an AgentPool of the workflow's namespace, "namespace/name" for one another namespace shares with it (its spec.sharing).`,
    pattern: POOL_REF,
    minLength: 1,
    maxLength: 127,
  });
}

export interface PoolId {
  namespace: string;
  name: string;
}

/** The pool a reference names, resolved in the workflow's namespace; undefined if malformed. */
export function parsePoolRef(ref: string, namespace: string): PoolId | undefined {
  if (ref.length > 127 || !POOL_REF_RE.test(ref)) return undefined;
  const slash = ref.indexOf('/');
  if (slash < 0) return { namespace, name: ref };
  const [ns, name] = [ref.slice(0, slash), ref.slice(slash + 1)];
  if (ns.length > 63 || name.length > 63) return undefined;
  return { namespace: ns, name };
}

const ShareEntry = Type.Object(
  {
    name: DnsLabel('A namespace whose workflows may use the pool (as "<pool namespace>/<pool name>").'),
    weight: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: MAX_SHARE_WEIGHT,
        default: DEFAULT_SHARE_WEIGHT,
        description: `Its share of the pool's slots while namespaces compete for them, relative to the other weights. Default: ${DEFAULT_SHARE_WEIGHT}.`,
      }),
    ),
  },
  { description: 'A namespace the pool serves, and its weight.' },
);

export const Sharing = Type.Object(
  {
    namespaces: Type.Optional(
      Type.Array(ShareEntry, {
        maxItems: MAX_SHARED_NAMESPACES,
        'x-kubernetes-list-type': 'map',
        'x-kubernetes-list-map-keys': ['name'],
        description:
          "Namespaces besides the pool's own whose Workflows may run tasks on it (pool: <namespace>/<name>). Their tasks run in the pool's agents with the inputs, state and signals of their own workflow; a namespace not listed cannot tell the pool exists.",
      }),
    ),
    weight: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: MAX_SHARE_WEIGHT,
        default: DEFAULT_SHARE_WEIGHT,
        description: `Weight of the pool's own namespace. Default: ${DEFAULT_SHARE_WEIGHT}.`,
      }),
    ),
  },
  {
    description:
      'Share the pool with other namespaces. While their queued tasks compete for its slots, the dispatcher splits the slots between namespaces by weight (deficit round-robin, in slots), round-robin between the workflows of one namespace and by priority inside a workflow: a flood of one namespace cannot starve another.',
  },
);

/** What a pool's spec.sharing says, as the dispatcher and the workflow controller read it. */
export interface SharingSpec {
  namespaces?: readonly { name: string; weight?: number }[];
  weight?: number;
}

/**
 * The namespaces the pool serves and their weights: its own namespace always, plus those it lists.
 * (Its own namespace listed in namespaces[] takes that weight unless spec.sharing.weight is set.)
 */
export function shareWeights(ownNamespace: string, sharing: SharingSpec | undefined): Map<string, number> {
  const out = new Map<string, number>();
  for (const n of sharing?.namespaces ?? []) out.set(n.name, weightOf(n.weight));
  if (sharing?.weight !== undefined || !out.has(ownNamespace)) out.set(ownNamespace, weightOf(sharing?.weight));
  return out;
}

/** A weight as the schema admits it (an object the API server did not validate gets the nearest). */
function weightOf(w: number | undefined): number {
  if (w === undefined || !Number.isFinite(w)) return DEFAULT_SHARE_WEIGHT;
  return Math.min(MAX_SHARE_WEIGHT, Math.max(1, Math.round(w)));
}

/** Whether the pool serves tasks of `namespace`. */
export function sharedWith(ownNamespace: string, sharing: SharingSpec | undefined, namespace: string): boolean {
  return namespace === ownNamespace || (sharing?.namespaces ?? []).some((n) => n.name === namespace);
}
