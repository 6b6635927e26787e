import { createHash } from 'node:crypto';
import type { V1Container, V1EnvVar, V1Pod, V1Volume, V1VolumeMount } from '@kubernetes/client-node';
import { type AgentPool, DEFAULT_POOL } from '../../api/agentpool.ts';
import { AGENT_NODE_OPTIONS } from '../../lib/agent-node-options.ts';

export const POOL_LABEL = 'agentflow.io/pool';
export const HASH_LABEL = 'agentflow.io/template-hash';
/** Set when the operator starts draining an agent pod; the drain deadline runs from it (survives failover). */
export const DRAIN_ANNOTATION = 'agentflow.io/drain-started';
export const SCHEDULER_NAME = 'agentflow';
export const POOL_FINALIZER = 'agentflow.io/pool-cleanup';

/** What agent pods are told about the operator's side. They get no datastore address or credentials. */
export interface AgentEndpoints {
  /** Address agents dial, e.g. the dispatcher Service "agentflow-dispatcher.agentflow-system:7070". */
  dispatcher: string;
  /** ConfigMap (key ca.crt) the operator publishes in every pool namespace: the dispatcher's CA bundle. */
  caConfigMap: string;
  /** Audience of the projected token agents authenticate with. */
  tokenAudience: string;
  /** Lifetime of that token; the kubelet refreshes it at 80% (default 3600, Kubernetes' minimum is 600). */
  tokenExpirationSeconds?: number;
}

/** Where agent pods find their credentials (one projected volume: token + CA bundle). */
export const CREDENTIALS_DIR = '/var/run/secrets/agentflow';
const CREDENTIALS_VOLUME = 'agentflow-credentials';

export const podName = (pool: string, ordinal: number) => `${pool}-${ordinal}`;

/** The ordinal of a pool's pod from its name, or undefined if it is not `<pool>-<n>`. */
export function ordinalOf(pool: string, name: string): number | undefined {
  if (!name.startsWith(`${pool}-`)) return undefined;
  const rest = name.slice(pool.length + 1);
  return /^(0|[1-9]\d{0,5})$/.test(rest) ? Number(rest) : undefined;
}

export const selectorOf = (pool: string) => `${POOL_LABEL}=${pool}`;

/**
 * Hash of everything that shapes an agent pod: a change means the pool's pods
 * are replaced (rolled). Scaling, autoscaling and placement limits do not roll.
 */
export function templateHash(pool: AgentPool, endpoints: AgentEndpoints): string {
  const shaping = {
    template: pool.spec.template,
    agent: pool.spec.agent,
    scheduler: pool.spec.placement?.scheduler ?? 'agentflow',
    endpoints,
  };
  return createHash('sha256').update(stableJson(shaping)).digest('hex').slice(0, 10);
}

function stableJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stableJson).join(',')}]`;
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${stableJson(o[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

/** The pod for ordinal `ordinal` of `pool`: its template plus the agent wiring, owned by the pool. */
export function buildPod(pool: AgentPool, ordinal: number, endpoints: AgentEndpoints, hash: string): V1Pod {
  const name = pool.metadata.name as string;
  const tpl = structuredClone(pool.spec.template);
  const spec = tpl.spec ?? { containers: [] };
  const agent = pool.spec.agent;
  const drainSeconds = agent.drainTimeoutSeconds ?? DEFAULT_POOL.drainTimeoutSeconds;
  const wiring: V1EnvVar[] = [
    { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
    { name: 'POD_NAMESPACE', valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } },
    { name: 'AGENTFLOW_DISPATCHER', value: endpoints.dispatcher },
    { name: 'AGENTFLOW_TOKEN_FILE', value: `${CREDENTIALS_DIR}/token` },
    { name: 'AGENTFLOW_DISPATCHER_CA_FILE', value: `${CREDENTIALS_DIR}/ca/ca.crt` },
    { name: 'AGENTFLOW_POOL', value: name },
    { name: 'AGENTFLOW_CAPACITY', value: String(agent.capacity ?? DEFAULT_POOL.capacity) },
    { name: 'AGENTFLOW_DRAIN_TIMEOUT_SECONDS', value: String(drainSeconds) },
    // Small young-generation semi-spaces: an agent's RSS under load ~90 MB instead of ~160 (src/lib/agent-node-options.ts).
    { name: 'NODE_OPTIONS', value: AGENT_NODE_OPTIONS },
  ];
  const mount: V1VolumeMount = { name: CREDENTIALS_VOLUME, mountPath: CREDENTIALS_DIR, readOnly: true };
  // The template's own env comes after ours: a name set in both is the template's (last wins).
  const withEnv = (c: V1Container): V1Container => ({
    ...c,
    env: [...wiring, ...(c.env ?? [])],
    volumeMounts: [...(c.volumeMounts ?? []).filter((m) => m.name !== CREDENTIALS_VOLUME), mount],
    // Restricted by default (Pod Security "restricted"); a template that says otherwise is taken at its word.
    securityContext: c.securityContext ?? {
      allowPrivilegeEscalation: false,
      capabilities: { drop: ['ALL'] },
      runAsNonRoot: true,
      seccompProfile: { type: 'RuntimeDefault' },
    },
  });
  const credentials: V1Volume = {
    name: CREDENTIALS_VOLUME,
    projected: {
      sources: [
        {
          serviceAccountToken: {
            audience: endpoints.tokenAudience,
            expirationSeconds: endpoints.tokenExpirationSeconds ?? 3600,
            path: 'token',
          },
        },
        { configMap: { name: endpoints.caConfigMap, items: [{ key: 'ca.crt', path: 'ca/ca.crt' }] } },
      ],
    },
  };
  const scheduler = pool.spec.placement?.scheduler ?? 'agentflow';
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      ...tpl.metadata,
      name: podName(name, ordinal),
      namespace: pool.metadata.namespace as string,
      labels: { ...(tpl.metadata?.labels ?? {}), [POOL_LABEL]: name, [HASH_LABEL]: hash },
      ownerReferences: [
        {
          apiVersion: 'agentflow.io/v1alpha1',
          kind: 'AgentPool',
          name,
          uid: pool.metadata.uid as string,
          controller: true,
          blockOwnerDeletion: true,
        },
      ],
    },
    spec: {
      ...spec,
      containers: spec.containers.map(withEnv),
      ...(spec.initContainers && { initContainers: spec.initContainers.map(withEnv) }),
      volumes: [...(spec.volumes ?? []).filter((v) => v.name !== CREDENTIALS_VOLUME), credentials],
      // Agents authenticate with the audience-bound token above and never call the Kubernetes API.
      automountServiceAccountToken: spec.automountServiceAccountToken ?? false,
      securityContext: spec.securityContext ?? { runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } },
      ...(scheduler === 'agentflow' && { schedulerName: SCHEDULER_NAME }),
      // Time for the agent's own SIGTERM drain, plus a margin to exit.
      terminationGracePeriodSeconds: spec.terminationGracePeriodSeconds ?? drainSeconds + 10,
    },
  };
}

export const isTerminal = (p: V1Pod) => p.status?.phase === 'Succeeded' || p.status?.phase === 'Failed';
export const isTerminating = (p: V1Pod) => Boolean(p.metadata?.deletionTimestamp);
export const isReady = (p: V1Pod) =>
  !isTerminating(p) && p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true;
