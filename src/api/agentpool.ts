import type { V1PodTemplateSpec } from '@kubernetes/client-node';
import { type Static, Type } from '@sinclair/typebox';
import { Conditions, DnsLabel, ObjectMeta, StringEnum } from './schema-helpers.ts';
import { Sharing } from './sharing.ts';

// AgentPool: who the agents are, how many, and how many task slots each has.

/**
 * Defaults of the spec, each defined once: the schema fills them in and says
 * them in its descriptions (kubectl explain prints descriptions, not
 * `default:`); the operator reads them for specs the API server did not default.
 */
export const DEFAULT_POOL = {
  replicas: 1,
  minReplicas: 0,
  targetUtilization: 80,
  scaleDownDelaySeconds: 300,
  capacity: 1,
  drainTimeoutSeconds: 300,
  strategy: 'Spread',
  scheduler: 'agentflow',
  stateScope: 'Workflow',
} as const;

const Container = Type.Object({
  name: DnsLabel('Container name.'),
  image: Type.String({ minLength: 1, maxLength: 1024, description: 'Container image.' }),
});

const PodTemplate = Type.Unsafe<V1PodTemplateSpec>({
  type: 'object',
  description: 'Pod template for the agent pods (a PodTemplateSpec). At least one container with an image.',
  'x-kubernetes-preserve-unknown-fields': true,
  required: ['spec'],
  properties: {
    metadata: {
      type: 'object',
      'x-kubernetes-preserve-unknown-fields': true,
      properties: {
        labels: { type: 'object', additionalProperties: { type: 'string' }, maxProperties: 64 },
        annotations: { type: 'object', additionalProperties: { type: 'string' }, maxProperties: 64 },
      },
    },
    spec: {
      type: 'object',
      'x-kubernetes-preserve-unknown-fields': true,
      required: ['containers'],
      properties: {
        containers: {
          type: 'array',
          minItems: 1,
          maxItems: 16,
          items: { ...Container, 'x-kubernetes-preserve-unknown-fields': true },
        },
      },
    },
  },
});

/** Rate limits one AgentPool may declare. */
export const MAX_POOL_RATE_LIMITS = 32;

const RateLimit = Type.Object(
  {
    name: DnsLabel('Name tasks use in rateLimits[].name.'),
    perSecond: Type.Optional(
      Type.Number({ exclusiveMinimum: 0, maximum: 100_000, description: 'Tokens added per second.' }),
    ),
    perMinute: Type.Optional(
      Type.Number({ exclusiveMinimum: 0, maximum: 6_000_000, description: 'Tokens added per minute.' }),
    ),
    burst: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 100_000,
        description:
          'Most tokens a bucket holds: attempts that may start at once after a quiet spell. Default: 1 (starts evenly spaced).',
      }),
    ),
  },
  {
    description:
      'A token bucket per key: each attempt of a task naming the limit takes one token before it starts. Exactly one of perSecond and perMinute.',
    'x-kubernetes-validations': [
      {
        rule: 'has(self.perSecond) != has(self.perMinute)',
        message: 'a rate limit needs exactly one of perSecond and perMinute',
        fieldPath: '.perSecond',
      },
    ],
  },
);

export const AgentPoolSpec = Type.Object(
  {
    replicas: Type.Optional(
      Type.Integer({
        minimum: 0,
        maximum: 10_000,
        default: DEFAULT_POOL.replicas,
        description: `Desired number of agent pods (ignored while autoscaling is set: the autoscaler chooses). Default: ${DEFAULT_POOL.replicas}.`,
      }),
    ),
    autoscaling: Type.Optional(
      Type.Object(
        {
          minReplicas: Type.Integer({
            minimum: 0,
            maximum: 10_000,
            default: DEFAULT_POOL.minReplicas,
            description: `Fewest agent pods; 0 scales to zero when idle. Default: ${DEFAULT_POOL.minReplicas}.`,
          }),
          maxReplicas: Type.Integer({ minimum: 1, maximum: 10_000, description: 'Most agent pods.' }),
          targetUtilization: Type.Optional(
            Type.Integer({
              minimum: 1,
              maximum: 100,
              default: DEFAULT_POOL.targetUtilization,
              description: `Percent of task slots busy or queued that the autoscaler aims for. Default: ${DEFAULT_POOL.targetUtilization}.`,
            }),
          ),
          scaleDownDelaySeconds: Type.Optional(
            Type.Integer({
              minimum: 0,
              maximum: 86_400,
              default: DEFAULT_POOL.scaleDownDelaySeconds,
              description: `Seconds the pool must be under target before it scales down. Default: ${DEFAULT_POOL.scaleDownDelaySeconds}.`,
            }),
          ),
        },
        {
          description: 'Queue-depth autoscaling between minReplicas and maxReplicas.',
          'x-kubernetes-validations': [
            {
              rule: 'self.minReplicas <= self.maxReplicas',
              message: 'minReplicas must be less than or equal to maxReplicas',
              fieldPath: '.minReplicas',
            },
          ],
        },
      ),
    ),
    agent: Type.Object(
      {
        capacity: Type.Integer({
          minimum: 1,
          maximum: 1024,
          default: DEFAULT_POOL.capacity,
          description: `Task slots per agent: tasks one agent runs at once. Default: ${DEFAULT_POOL.capacity}.`,
        }),
        handlers: Type.Optional(
          Type.Unsafe<string[]>({
            type: 'array',
            maxItems: 128,
            'x-kubernetes-list-type': 'set',
            items: { type: 'string', minLength: 1, maxLength: 253, pattern: '^[A-Za-z0-9][A-Za-z0-9_.:/-]*$' },
            description: 'Handler names the agents serve; empty means whatever each agent registers.',
          }),
        ),
        drainTimeoutSeconds: Type.Optional(
          Type.Integer({
            minimum: 0,
            maximum: 86_400,
            default: DEFAULT_POOL.drainTimeoutSeconds,
            description: `Seconds a draining agent may spend finishing in-flight tasks before its pod is deleted. Default: ${DEFAULT_POOL.drainTimeoutSeconds}.`,
          }),
        ),
      },
      { description: 'What every agent of the pool offers.' },
    ),
    template: PodTemplate,
    placement: Type.Optional(
      Type.Object(
        {
          strategy: Type.Optional(
            StringEnum(['Spread', 'BinPack'] as const, {
              description: `Spread: least allocated node first. BinPack: most allocated node that fits. Default: ${DEFAULT_POOL.strategy}.`,
              default: DEFAULT_POOL.strategy,
            }),
          ),
          maxPerNode: Type.Optional(
            Type.Integer({
              minimum: 1,
              maximum: 10_000,
              description: 'At most this many agent pods of the pool per node. Default: no limit.',
            }),
          ),
          scheduler: Type.Optional(
            StringEnum(['agentflow', 'default'] as const, {
              description: `agentflow: the operator binds pods by capacity. default: kube-scheduler does. Default: ${DEFAULT_POOL.scheduler}.`,
              default: DEFAULT_POOL.scheduler,
            }),
          ),
        },
        { description: 'How agent pods are placed on nodes.' },
      ),
    ),
    state: Type.Optional(
      Type.Object(
        {
          scope: Type.Optional(
            StringEnum(['Workflow', 'Pool', 'Namespace'] as const, {
              description: `Default scope of the shared state agents read and write. Default: ${DEFAULT_POOL.stateScope}.`,
              default: DEFAULT_POOL.stateScope,
            }),
          ),
        },
        { description: 'Shared state in etcd.' },
      ),
    ),
    rateLimits: Type.Optional(
      Type.Array(RateLimit, {
        maxItems: MAX_POOL_RATE_LIMITS,
        'x-kubernetes-list-type': 'map',
        'x-kubernetes-list-map-keys': ['name'],
        description:
          "Named rate limits the pool's tasks take tokens of (a task's rateLimits[].name), each a token bucket per (limit, key), enforced by the dispatcher: e.g. {name: openai-calls, perSecond: 10}.",
      }),
    ),
    sharing: Type.Optional(Sharing),
  },
  { description: 'Desired state of the AgentPool.' },
);

export const AgentPoolStatus = Type.Object(
  {
    observedGeneration: Type.Optional(Type.Integer({ minimum: 0 })),
    replicas: Type.Optional(Type.Integer({ minimum: 0, description: 'Agent pods that exist.' })),
    readyReplicas: Type.Optional(Type.Integer({ minimum: 0, description: 'Agent pods that are Ready.' })),
    connectedAgents: Type.Optional(
      Type.Integer({ minimum: 0, description: 'Agents holding a stream to the dispatcher.' }),
    ),
    capacity: Type.Optional(Type.Integer({ minimum: 0, description: 'Total task slots of connected agents.' })),
    inflight: Type.Optional(Type.Integer({ minimum: 0, description: 'Task slots in use.' })),
    queued: Type.Optional(
      Type.Integer({ minimum: 0, description: 'Task slots wanted by tasks waiting for an agent.' }),
    ),
    selector: Type.Optional(Type.String({ description: 'Label selector of the agent pods (scale subresource).' })),
    conditions: Type.Optional(Conditions),
  },
  { description: 'Observed state of the AgentPool.' },
);

export const AgentPoolSchema = Type.Object(
  {
    apiVersion: Type.String(),
    kind: Type.String(),
    metadata: ObjectMeta,
    spec: AgentPoolSpec,
    status: Type.Optional(AgentPoolStatus),
  },
  {
    description: 'A pool of long-lived agent pods that run workflow tasks.',
    'x-kubernetes-validations': [
      {
        // Pods are named <pool>-<10 chars>; a pod name must be a DNS label to be a hostname.
        rule: 'self.metadata.name.size() <= 52',
        message: 'metadata.name must be at most 52 characters (agent pod names add 11)',
      },
    ],
  },
);

export type AgentPoolSpec = Static<typeof AgentPoolSpec>;
export type AgentPoolStatus = Static<typeof AgentPoolStatus>;
export type AgentPool = Static<typeof AgentPoolSchema>;
