// submit: creates a Workflow from a YAML or JSON file (or stdin), with inputs set from -p.
import { readFile } from 'node:fs/promises';
import { parseAllDocuments } from 'yaml';
import type { JsonObject, JsonValue } from '../../../api/schema-helpers.ts';
import { MAX_TEMPLATE_NAME } from '../../../api/workflow.ts';
import { DEFAULT_PARAMETER_TYPE, resolveInputs, type WorkflowTemplate } from '../../../api/workflow-template.ts';
import type { Param } from '../args.ts';
import { CliError } from '../errors.ts';
import type { Io } from '../io.ts';
import { type Cluster, type ConnectionOptions, connect, WORKFLOW_API_VERSION, WORKFLOW_RESOURCE } from '../kube.ts';
import { watchWorkflow } from '../watch.ts';

interface WorkflowDoc {
  apiVersion?: unknown;
  kind?: unknown;
  metadata?: { name?: string; generateName?: string; namespace?: string; [k: string]: unknown };
  spec?: { inputs?: Record<string, unknown>; [k: string]: unknown };
  [k: string]: unknown;
}

/** The one Workflow of a file's text; `where` names the file in errors. */
export function parseWorkflowFile(text: string, where: string): WorkflowDoc {
  const docs = parseAllDocuments(text);
  if (!Array.isArray(docs)) throw new CliError(`${where}: not YAML or JSON`);
  const found: WorkflowDoc[] = [];
  for (const d of docs) {
    const problem = d.errors[0];
    if (problem) throw new CliError(`${where}: ${problem.message}`);
    const value: unknown = d.toJS();
    if (value === null || value === undefined) continue;
    if (typeof value !== 'object' || Array.isArray(value)) throw new CliError(`${where}: not a Workflow object`);
    found.push(value as WorkflowDoc);
  }
  if (found.length !== 1) {
    throw new CliError(`${where}: holds ${found.length} objects; submit takes exactly one Workflow`);
  }
  const wf = found[0] as WorkflowDoc;
  if (wf.kind !== undefined && wf.kind !== 'Workflow') {
    throw new CliError(`${where}: is a ${String(wf.kind)}, not a Workflow`);
  }
  if (wf.apiVersion !== undefined && wf.apiVersion !== WORKFLOW_API_VERSION) {
    throw new CliError(`${where}: apiVersion ${String(wf.apiVersion)}; agentflow serves ${WORKFLOW_API_VERSION}`);
  }
  return wf;
}

export interface SubmitOptions {
  filename?: string;
  /** workflowtemplate/<name>: a Workflow that runs that template (spec.workflowTemplateRef). */
  from?: string;
  param?: Param[];
  generateName?: boolean;
  watch?: boolean;
}

/** The object to create: the file's Workflow with the -p inputs and --generate-name applied. */
export function workflowToCreate(doc: WorkflowDoc, o: SubmitOptions, where: string): WorkflowDoc {
  const metadata = { ...(doc.metadata ?? {}) };
  if (o.generateName) {
    const base = metadata.name ?? metadata.generateName?.replace(/-$/, '');
    if (!base) throw new CliError(`${where}: --generate-name needs metadata.name (or generateName) to start from`);
    metadata.generateName = `${base}-`;
    delete metadata.name;
  } else if (!metadata.name && !metadata.generateName) {
    throw new CliError(
      `${where}: the Workflow has no metadata.name (or pass --generate-name with a name to start from)`,
    );
  }
  const spec = { ...(doc.spec ?? {}) };
  if (o.param?.length) spec.inputs = { ...(spec.inputs ?? {}), ...Object.fromEntries(o.param.map(([k, v]) => [k, v])) };
  return { ...doc, apiVersion: WORKFLOW_API_VERSION, kind: 'Workflow', metadata, spec };
}

/** `workflowtemplate/NAME` (also `template/`, `wftmpl/`, `awft/`, `workflowtemplates/`) -> NAME. */
export function templateNameOf(from: string): string {
  const m = /^(?:workflowtemplates?|wftmpl|awft|template)\/(.+)$/.exec(from);
  const name = m?.[1];
  if (!name || !/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(name) || name.length > MAX_TEMPLATE_NAME) {
    throw new CliError(
      `--from ${from}: expected workflowtemplate/<name>, a WorkflowTemplate's name (lower-case alphanumerics, "-" and ".")`,
    );
  }
  return name;
}

/**
 * The Workflow that runs a template with the -p inputs: each value as its
 * parameter's type wants it (a string parameter takes the text as typed, so
 * `-p version=3.10` stays "3.10"), checked against the parameters as the
 * operator will check them, so a wrong input fails here, naming its -p.
 */
export function workflowFromTemplate(template: WorkflowTemplate, o: SubmitOptions): WorkflowDoc {
  const name = template.metadata.name as string;
  const parameters = template.spec.parameters ?? [];
  const inputs: JsonObject = {};
  for (const [key, value, text] of o.param ?? []) {
    const p = parameters.find((x) => x.name === key);
    inputs[key] = ((p?.type ?? DEFAULT_PARAMETER_TYPE) === 'string' ? text : value) as JsonValue;
  }
  const { problems } = resolveInputs(name, parameters, inputs);
  if (problems.length > 0) {
    const lines = problems.map((p) => `  -p ${p.field.replace(/^spec\.inputs\./, '')}: ${p.message}`);
    throw new CliError(`workflowtemplate/${name} refuses the inputs:\n${lines.join('\n')}`);
  }
  return {
    apiVersion: WORKFLOW_API_VERSION,
    kind: 'Workflow',
    metadata: { generateName: `${name}-` },
    spec: { workflowTemplateRef: { name }, ...(Object.keys(inputs).length > 0 && { inputs }) },
  };
}

/** Sends the Workflow (-f) or one that runs a template (--from: program.ts sees that exactly one is given). */
export async function submit(conn: ConnectionOptions, io: Io, o: SubmitOptions): Promise<number> {
  if (o.from !== undefined) {
    const templateName = templateNameOf(o.from);
    const cluster: Cluster = await connect(conn);
    try {
      const template = await cluster.getTemplate(templateName);
      return await create(cluster, workflowFromTemplate(template, o), io, o);
    } finally {
      cluster.close();
    }
  }
  const filename = o.filename as string;
  const where = filename === '-' ? 'stdin' : filename;
  let text: string;
  try {
    text = filename === '-' ? await io.readStdin() : await readFile(filename, 'utf8');
  } catch (err) {
    throw new CliError(`-f ${filename}: ${(err as Error).message}`);
  }
  const body = workflowToCreate(parseWorkflowFile(text, where), o, where);
  const fileNamespace = body.metadata?.namespace;
  if (fileNamespace && conn.namespace && fileNamespace !== conn.namespace) {
    throw new CliError(
      `the Workflow in ${where} is in namespace ${fileNamespace}, not ${conn.namespace} (--namespace): drop one of them or make them agree`,
    );
  }
  const cluster: Cluster = await connect({ ...conn, ...(fileNamespace && { namespace: fileNamespace }) });
  try {
    return await create(cluster, body, io, o);
  } finally {
    cluster.close();
  }
}

/** Creates the Workflow in the cluster's namespace, says so as kubectl does, and follows it with --watch. */
async function create(cluster: Cluster, body: WorkflowDoc, io: Io, o: SubmitOptions): Promise<number> {
  body.metadata = { ...body.metadata, namespace: cluster.namespace };
  const created = await cluster.createWorkflow(body);
  const name = created.metadata?.name ?? '';
  io.out(`${WORKFLOW_RESOURCE}/${name} created\n`);
  return o.watch ? await watchWorkflow(cluster, name, io) : 0;
}
