import { isDeepStrictEqual } from 'node:util';
import { type Static, Type } from '@sinclair/typebox';
import { FreeValue, type JsonObject, type JsonValue, ObjectMeta, StringEnum } from './schema-helpers.ts';
import type { Problem } from './validate.ts';
import { SharedSpecFields, taskRules, type WorkflowObjectSpec, type WorkflowSpec, WorkflowTasks } from './workflow.ts';

// WorkflowTemplate: a Workflow's spec with declared parameters, kept in a
// namespace for Workflows (and CronWorkflows) to run by reference. A Workflow
// that names one (spec.workflowTemplateRef) gives inputs for its parameters and
// may override the template's other fields; the operator resolves the two into
// the spec the run runs when the run starts, and keeps that copy
// (status.workflowTemplate): editing the template later changes new runs only.

export const MAX_PARAMETERS = 64;
export const PARAMETER_NAME = '^[A-Za-z_][A-Za-z0-9_]*$';
export const MAX_PARAMETER_NAME = 63;
export const PARAMETER_TYPES = ['string', 'number', 'integer', 'boolean', 'object', 'array'] as const;
export type ParameterType = (typeof PARAMETER_TYPES)[number];
export const DEFAULT_PARAMETER_TYPE: ParameterType = 'string';
/** Most bytes of a resolved spec (as JSON): the Workflow's status keeps a copy of it. */
export const MAX_RESOLVED_SPEC_BYTES = 512 * 1024;

export const Parameter = Type.Object(
  {
    name: Type.String({
      minLength: 1,
      maxLength: MAX_PARAMETER_NAME,
      pattern: PARAMETER_NAME,
      description: 'The key of spec.inputs the parameter is given as (expressions read it as inputs.<name>).',
    }),
    type: Type.Optional(
      StringEnum(PARAMETER_TYPES, {
        default: DEFAULT_PARAMETER_TYPE,
        description: `JSON type the value must have (integer: a whole number). Default: ${DEFAULT_PARAMETER_TYPE}.`,
      }),
    ),
    description: Type.Optional(Type.String({ maxLength: 1024, description: 'What the parameter means, for users.' })),
    required: Type.Optional(Type.Boolean({ description: 'A Workflow must give it in spec.inputs. Default: false.' })),
    default: Type.Optional(FreeValue('Value used when a Workflow gives none (never, for a required parameter).')),
    enum: Type.Optional(
      Type.Array(FreeValue('An allowed value.'), {
        minItems: 1,
        maxItems: 256,
        description: 'The values allowed, if only some are.',
      }),
    ),
  },
  { description: 'One input a Workflow gives the template.' },
);

export const WorkflowTemplateSpec = Type.Object(
  {
    parameters: Type.Optional(
      Type.Array(Parameter, {
        maxItems: MAX_PARAMETERS,
        'x-kubernetes-list-type': 'map',
        'x-kubernetes-list-map-keys': ['name'],
        description: 'The inputs a Workflow that runs the template gives (spec.inputs), checked when its run starts.',
      }),
    ),
    ...SharedSpecFields,
    tasks: WorkflowTasks,
  },
  { description: 'A reusable Workflow spec with parameters.', 'x-kubernetes-validations': taskRules() },
);

export const WorkflowTemplateSchema = Type.Object(
  {
    apiVersion: Type.String(),
    kind: Type.String(),
    metadata: ObjectMeta,
    spec: WorkflowTemplateSpec,
  },
  { description: 'A Workflow spec with parameters, run by Workflows that name it (spec.workflowTemplateRef).' },
);

export type Parameter = Static<typeof Parameter>;
export type WorkflowTemplateSpec = Static<typeof WorkflowTemplateSpec>;
export type WorkflowTemplate = Static<typeof WorkflowTemplateSchema>;

/** What a Workflow's run records of the template it runs. */
export interface TemplateOrigin {
  name: string;
  uid: string;
  generation: number;
}

const SHARED_KEYS = Object.keys(SharedSpecFields) as (keyof typeof SharedSpecFields)[];

function typeOf(v: JsonValue | undefined): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  return typeof v;
}

/** Why a value does not fit a parameter; undefined: it does. */
export function parameterValueProblem(p: Parameter, v: JsonValue): string | undefined {
  const want = p.type ?? DEFAULT_PARAMETER_TYPE;
  const got = typeOf(v);
  const fits =
    want === 'integer'
      ? typeof v === 'number' && Number.isInteger(v)
      : want === 'object'
        ? got === 'object'
        : got === want;
  if (!fits)
    return `must be ${want === 'integer' || want === 'array' || want === 'object' ? `an ${want}` : `a ${want}`}, not ${got === 'object' || got === 'array' ? `an ${got}` : `${got} ${JSON.stringify(v)}`.slice(0, 80)}`;
  if (p.enum && !p.enum.some((e) => isDeepStrictEqual(e, v)))
    return `must be one of ${p.enum.map((e) => JSON.stringify(e)).join(', ')}`.slice(0, 300);
  return undefined;
}

/**
 * Checks a Workflow's spec.inputs against a template's parameters: every input
 * names a parameter, every required parameter is given, every value has its
 * parameter's type (and is one of its enum). Returns the inputs the run runs
 * with (defaults filled in) and every problem.
 */
export function resolveInputs(
  templateName: string,
  parameters: readonly Parameter[],
  inputs: JsonObject | undefined,
): { inputs: JsonObject; problems: Problem[] } {
  const problems: Problem[] = [];
  const add = (field: string, message: string) => problems.push({ field, reason: 'InvalidSpec', message });
  const given = inputs ?? {};
  const byName = new Map(parameters.map((p) => [p.name, p]));
  const declared =
    parameters.length > 0 ? `it declares ${parameters.map((p) => p.name).join(', ')}` : 'it declares none';
  const out: JsonObject = {};
  for (const [k, v] of Object.entries(given)) {
    const p = byName.get(k);
    if (!p) {
      add(`spec.inputs.${k}`, `WorkflowTemplate "${templateName}" has no parameter "${k}" (${declared})`);
      continue;
    }
    const why = parameterValueProblem(p, v);
    if (why) add(`spec.inputs.${k}`, `parameter "${k}" of WorkflowTemplate "${templateName}" ${why}`);
    else out[k] = v;
  }
  for (const p of parameters) {
    if (p.name in given) continue;
    if (p.required) {
      add(
        `spec.inputs.${p.name}`,
        `WorkflowTemplate "${templateName}" requires parameter "${p.name}"${p.description ? ` (${p.description.slice(0, 120)})` : ''}`,
      );
    } else if (p.default !== undefined) {
      const why = parameterValueProblem(p, p.default);
      if (why)
        add(
          `spec.inputs.${p.name}`,
          `the default of parameter "${p.name}" of WorkflowTemplate "${templateName}" ${why}`,
        );
      else out[p.name] = p.default;
    }
  }
  return { inputs: out, problems };
}

/**
 * The spec a Workflow that runs a template runs: the template's fields, each
 * overridden by the Workflow's own where it sets one, with the inputs checked
 * and completed by resolveInputs, and the Workflow's suspend. Problems name
 * the Workflow's fields (spec.inputs.x); the resolved spec's own problems
 * (found later by validateWorkflowSpec) are the template's (see templateField).
 */
export function resolveTemplate(
  wf: WorkflowObjectSpec,
  template: { name: string; spec: WorkflowTemplateSpec },
): { spec?: WorkflowSpec; problems: Problem[] } {
  const { inputs, problems } = resolveInputs(template.name, template.spec.parameters ?? [], wf.inputs);
  if (problems.length > 0) return { problems };
  const spec: Record<string, unknown> = {};
  for (const k of SHARED_KEYS) {
    const v = wf[k] ?? template.spec[k];
    if (v !== undefined) spec[k] = structuredClone(v);
  }
  if (Object.keys(inputs).length > 0) spec.inputs = inputs;
  if (wf.suspend !== undefined) spec.suspend = wf.suspend;
  spec.tasks = structuredClone(template.spec.tasks);
  const bytes = Buffer.byteLength(JSON.stringify(spec));
  if (bytes > MAX_RESOLVED_SPEC_BYTES) {
    return {
      problems: [
        {
          field: 'spec.workflowTemplateRef',
          reason: 'InvalidSpec',
          message: `the spec WorkflowTemplate "${template.name}" resolves to is ${bytes} bytes, over the ${MAX_RESOLVED_SPEC_BYTES} the workflow's status can keep`,
        },
      ],
    };
  }
  return { spec: spec as WorkflowSpec, problems: [] };
}

/** A problem of a resolved spec, located where it comes from: spec.tasks are the template's. */
export function templateField(templateName: string, p: Problem): Problem {
  return p.field.startsWith('spec.tasks') ? { ...p, field: `WorkflowTemplate "${templateName}" ${p.field}` } : p;
}
