import type { TSchema } from '@sinclair/typebox';
import { stringify } from 'yaml';
import { AgentPoolSchema } from './agentpool.ts';
import { CronWorkflowSchema } from './cron-workflow.ts';
import { WorkflowSchema } from './workflow.ts';
import { WorkflowTemplateSchema } from './workflow-template.ts';

export const GROUP = 'agentflow.io';
export const VERSION = 'v1alpha1';
export const API_VERSION = `${GROUP}/${VERSION}`;

interface CrdNames {
  kind: string;
  plural: string;
  singular: string;
  shortNames: string[];
}

interface PrinterColumn {
  name: string;
  type: 'integer' | 'number' | 'string' | 'boolean' | 'date';
  jsonPath: string;
  description?: string;
  priority?: number;
}

interface CrdSource {
  names: CrdNames;
  schema: TSchema;
  columns: PrinterColumn[];
  scale?: { specReplicasPath: string; statusReplicasPath: string; labelSelectorPath: string };
  /** Whether it has a status subresource (default true). */
  status?: boolean;
}

const SOURCES: CrdSource[] = [
  {
    names: { kind: 'AgentPool', plural: 'agentpools', singular: 'agentpool', shortNames: ['ap'] },
    schema: AgentPoolSchema,
    columns: [
      { name: 'Ready', type: 'integer', jsonPath: '.status.readyReplicas', description: 'Agent pods that are Ready' },
      {
        name: 'Agents',
        type: 'integer',
        jsonPath: '.status.connectedAgents',
        description: 'Agents connected to the dispatcher',
      },
      { name: 'Slots', type: 'integer', jsonPath: '.status.capacity', description: 'Task slots of connected agents' },
      { name: 'Inflight', type: 'integer', jsonPath: '.status.inflight', description: 'Task slots in use' },
      { name: 'Queued', type: 'integer', jsonPath: '.status.queued', description: 'Task slots waiting for an agent' },
      { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' },
    ],
    scale: {
      specReplicasPath: '.spec.replicas',
      statusReplicasPath: '.status.replicas',
      labelSelectorPath: '.status.selector',
    },
  },
  {
    names: { kind: 'Workflow', plural: 'workflows', singular: 'workflow', shortNames: ['awf'] },
    schema: WorkflowSchema,
    columns: [
      { name: 'Phase', type: 'string', jsonPath: '.status.phase', description: 'Where the workflow is in its life' },
      {
        name: 'Progress',
        type: 'string',
        jsonPath: '.status.progressSummary',
        description: 'Succeeded tasks / all tasks',
      },
      { name: 'Pool', type: 'string', jsonPath: '.spec.pool', description: 'Default AgentPool' },
      { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' },
      {
        name: 'Message',
        type: 'string',
        jsonPath: '.status.message',
        description: 'Why it failed, what it waits for, or how far it got',
        priority: 1,
      },
    ],
  },
  {
    names: {
      kind: 'WorkflowTemplate',
      plural: 'workflowtemplates',
      singular: 'workflowtemplate',
      shortNames: ['awft'],
    },
    schema: WorkflowTemplateSchema,
    status: false,
    columns: [
      { name: 'Pool', type: 'string', jsonPath: '.spec.pool', description: 'Default AgentPool' },
      { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' },
    ],
  },
  {
    names: { kind: 'CronWorkflow', plural: 'cronworkflows', singular: 'cronworkflow', shortNames: ['acwf'] },
    schema: CronWorkflowSchema,
    columns: [
      { name: 'Schedule', type: 'string', jsonPath: '.spec.schedule', description: 'When runs start' },
      { name: 'Timezone', type: 'string', jsonPath: '.spec.timeZone', description: 'Time zone of the schedule' },
      { name: 'Suspend', type: 'boolean', jsonPath: '.spec.suspend', description: 'No run starts while true' },
      {
        name: 'Last Schedule',
        type: 'date',
        jsonPath: '.status.lastScheduleTime',
        description: 'Scheduled time of the latest run',
      },
      { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' },
      {
        name: 'Next',
        type: 'date',
        jsonPath: '.status.nextScheduleTime',
        description: 'When the next run is due',
        priority: 1,
      },
    ],
  },
];

/** The name of every CRD agentflow defines (`<plural>.agentflow.io`). */
export const CRD_NAMES: readonly string[] = SOURCES.map((s) => `${s.names.plural}.${GROUP}`);

/**
 * A TypeBox schema as a Kubernetes structural schema: TypeBox's symbols are
 * dropped, JSON Schema's numeric exclusiveMinimum becomes OpenAPI v3's
 * boolean form, and the root only requires spec (the API server owns
 * apiVersion, kind and metadata).
 */
export function toStructural(schema: TSchema): Record<string, unknown> {
  const plain = JSON.parse(JSON.stringify(schema)) as Record<string, unknown>;
  const walk = (node: unknown): void => {
    if (Array.isArray(node)) {
      for (const child of node) walk(child);
      return;
    }
    if (!node || typeof node !== 'object') return;
    const n = node as Record<string, unknown>;
    for (const bound of ['Minimum', 'Maximum'] as const) {
      const key = `exclusive${bound}`;
      if (typeof n[key] === 'number') {
        n[bound.toLowerCase()] = n[key];
        n[key] = true;
      }
    }
    for (const v of Object.values(n)) walk(v);
  };
  walk(plain);
  const props = plain.properties as Record<string, Record<string, unknown>>;
  props.metadata = { type: 'object' };
  plain.required = ['spec'];
  return plain;
}

export function customResourceDefinitions(): Record<string, unknown>[] {
  return SOURCES.map((s) => ({
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: {
      name: `${s.names.plural}.${GROUP}`,
      labels: { 'app.kubernetes.io/name': 'agentflow', 'app.kubernetes.io/part-of': 'agentflow' },
    },
    spec: {
      group: GROUP,
      scope: 'Namespaced',
      names: { ...s.names, listKind: `${s.names.kind}List`, categories: ['agentflow'] },
      versions: [
        {
          name: VERSION,
          served: true,
          storage: true,
          schema: { openAPIV3Schema: toStructural(s.schema) },
          subresources: { ...(s.status !== false && { status: {} }), ...(s.scale ? { scale: s.scale } : {}) },
          additionalPrinterColumns: s.columns,
        },
      ],
    },
  }));
}

const HEADER = '# Generated by `npm run generate` from src/api/*.ts; do not edit.\n';

/** deploy/crds/<group>_<plural>.yaml → content. */
export function renderCrdFiles(): Map<string, string> {
  const files = new Map<string, string>();
  for (const crd of customResourceDefinitions()) {
    const plural = (crd.spec as { names: { plural: string } }).names.plural;
    files.set(`deploy/crds/${GROUP}_${plural}.yaml`, `${HEADER}${stringify(crd, { lineWidth: 0 })}`);
  }
  return files;
}

/**
 * charts/agentflow/templates/crds/<plural>.yaml → content: the same CRDs,
 * rendered only with crds.enabled and kept on uninstall with crds.keep
 * (cert-manager's pattern: CRDs as templates, so upgrades update them).
 */
export function renderChartCrdFiles(): Map<string, string> {
  const files = new Map<string, string>();
  for (const crd of customResourceDefinitions()) {
    const plural = (crd.spec as { names: { plural: string } }).names.plural;
    const name = (crd.metadata as { name: string }).name;
    // Helm would execute the ${{ }} of our expression syntax in descriptions:
    // escape braces in one pass, so no replacement re-scans another's output.
    const escaped = stringify(crd, { lineWidth: 0 }).replace(/\{\{|\}\}/g, (m) => `{{ "${m}" }}`);
    const yaml = escaped.replace(
      `metadata:\n  name: ${name}\n`,
      `metadata:\n  name: ${name}\n  {{- if .Values.crds.keep }}\n  annotations:\n    helm.sh/resource-policy: keep\n  {{- end }}\n`,
    );
    files.set(
      `charts/agentflow/templates/crds/${plural}.yaml`,
      `${HEADER.replace('# ', '{{- /* ').replace('\n', ' */}}\n')}{{- if .Values.crds.enabled }}\n${yaml}{{- end }}\n`,
    );
  }
  return files;
}
