// submit: creates a Workflow from a YAML or JSON file (or stdin), with inputs set from -p.
import { readFile } from 'node:fs/promises';
import { parseAllDocuments } from 'yaml';
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
  filename: string;
  param?: [string, unknown][];
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
  if (o.param?.length) spec.inputs = { ...(spec.inputs ?? {}), ...Object.fromEntries(o.param) };
  return { ...doc, apiVersion: WORKFLOW_API_VERSION, kind: 'Workflow', metadata, spec };
}

export async function submit(conn: ConnectionOptions, io: Io, o: SubmitOptions): Promise<number> {
  const where = o.filename === '-' ? 'stdin' : o.filename;
  let text: string;
  try {
    text = o.filename === '-' ? await io.readStdin() : await readFile(o.filename, 'utf8');
  } catch (err) {
    throw new CliError(`-f ${o.filename}: ${(err as Error).message}`);
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
    if (body.metadata) body.metadata.namespace = cluster.namespace;
    const created = await cluster.createWorkflow(body);
    const name = created.metadata?.name ?? '';
    io.out(`${WORKFLOW_RESOURCE}/${name} created\n`);
    return o.watch ? await watchWorkflow(cluster, name, io) : 0;
  } finally {
    cluster.close();
  }
}
