// The CLI's way to the cluster: the user's kubeconfig (never etcd), the
// operator's KubeClient for the Kubernetes API (Workflows, AgentPools) and for
// the per-task data API the operator serves through the API server
// (src/api/data-api.ts). @kubernetes/client-node is loaded here, only when a
// command talks to a cluster: `agentflow --help` does not pay for it.
import type { IncomingMessage } from 'node:http';
import type { KubeConfig } from '@kubernetes/client-node';
import type { AgentPool } from '../../api/agentpool.ts';
import {
  type AgentList,
  type ApprovalList,
  type ApprovalRequest,
  type ApprovalResult,
  type AuditVerification,
  DATA_API_VERSION,
  dataNamespaceMemoPath,
  dataNamespaceStatePath,
  dataPath,
  type LogQuery,
  type MemoCleared,
  type MemoList,
  type SignalList,
  type SignalRequest,
  type StateItem,
  type StateList,
  type WorkflowTaskList,
} from '../../api/data-api.ts';
import type { Workflow } from '../../api/workflow.ts';
import type { WorkflowTemplate } from '../../api/workflow-template.ts';
import { VERSION } from '../../lib/version.ts';
import {
  AGENTPOOLS,
  apiVersionOf,
  KubeApiError,
  KubeClient,
  type RequestOptions,
  resourcePath,
  WORKFLOW_TEMPLATES,
  WORKFLOWS,
} from '../../operator/kube/client.ts';
import { CliError } from './errors.ts';

/** The flags every command takes (program-level options). */
/** Whose shared state: a workflow's, a pool's, or the namespace's. */
export type CliStateScope = { kind: 'workflow' | 'pool'; name: string } | { kind: 'namespace' };

export interface ConnectionOptions {
  namespace?: string;
  context?: string;
  kubeconfig?: string;
  /** Milliseconds; 0: no limit. */
  requestTimeout?: number;
}

export const WORKFLOW_API_VERSION = apiVersionOf(WORKFLOWS);
/** How kubectl names the resource in messages and `-o name`: `workflow.agentflow.io/<name>`. */
export const WORKFLOW_RESOURCE = `${WORKFLOWS.kind.toLowerCase()}.${WORKFLOWS.group}`;

export interface List<T> {
  apiVersion?: string;
  kind?: string;
  metadata?: { resourceVersion?: string; continue?: string };
  items: T[];
}

/** What the API server says for a path nothing serves (no CRD, no APIService). */
const NOTHING_SERVED = /the server could not find the requested resource|404 page not found/i;

/** The data API is not there or not up: callers that can do without it (watch, describe) fall back to the status. */
export class DataApiUnavailableError extends CliError {
  readonly status: number;
  constructor(status: number, detail: string) {
    super(
      `the data API ${DATA_API_VERSION} is not available (${detail}): is the agentflow operator running, and its APIService registered? (kubectl get apiservice v1alpha1.data.agentflow.io)`,
    );
    this.name = 'DataApiUnavailableError';
    this.status = status;
  }
}

/** Loads the kubeconfig as kubectl would: --kubeconfig, else $KUBECONFIG, else ~/.kube/config (or in-cluster). */
export async function loadKubeConfig(opts: ConnectionOptions): Promise<{ kc: KubeConfig; namespace: string }> {
  const { KubeConfig } = await import('@kubernetes/client-node');
  const kc = new KubeConfig();
  try {
    if (opts.kubeconfig) kc.loadFromFile(opts.kubeconfig);
    else kc.loadFromDefault();
  } catch (err) {
    const where = opts.kubeconfig
      ? `--kubeconfig ${opts.kubeconfig}`
      : process.env.KUBECONFIG
        ? `KUBECONFIG=${process.env.KUBECONFIG}`
        : 'the default kubeconfig';
    throw new CliError(`cannot load ${where}: ${(err as Error).message}`);
  }
  if (opts.context !== undefined) {
    if (!kc.getContextObject(opts.context)) {
      const known = kc.getContexts().map((c) => c.name);
      throw new CliError(
        `--context ${JSON.stringify(opts.context)}: the kubeconfig has no such context (${known.length ? `it has: ${known.join(', ')}` : 'it has none'})`,
      );
    }
    kc.setCurrentContext(opts.context);
  }
  if (!kc.getCurrentCluster()) {
    const name = kc.getCurrentContext();
    throw new CliError(
      name
        ? `the kubeconfig's context ${JSON.stringify(name)} names no cluster it defines`
        : 'the kubeconfig sets no current-context: pass --context',
    );
  }
  const namespace = opts.namespace || kc.getContextObject(kc.getCurrentContext())?.namespace || 'default';
  return { kc, namespace };
}

export async function connect(opts: ConnectionOptions): Promise<Cluster> {
  const { kc, namespace } = await loadKubeConfig(opts);
  return new Cluster(new KubeClient(kc, { userAgent: `agentflow-cli/${VERSION}` }), namespace, opts.requestTimeout);
}

/** One cluster and namespace as the user's credentials see them. */
export class Cluster {
  readonly client: KubeClient;
  readonly namespace: string;
  readonly timeoutMs: number | undefined;

  constructor(client: KubeClient, namespace: string, timeoutMs?: number) {
    this.client = client;
    this.namespace = namespace;
    this.timeoutMs = timeoutMs;
  }

  close(): void {
    this.client.close();
  }

  private request<T>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    return this.client.request<T>(method, path, {
      ...opts,
      // 0 means no limit (as kubectl's --request-timeout=0); node's socket timeout 0 is none.
      ...(this.timeoutMs !== undefined && { timeoutMs: this.timeoutMs }),
    });
  }

  /** Kubernetes API requests: a path nothing serves means the CRDs are not installed. */
  private async kube<T>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    try {
      return await this.request<T>(method, path, opts);
    } catch (err) {
      if (err instanceof KubeApiError && err.status === 404 && NOTHING_SERVED.test(err.message)) {
        throw new CliError(
          `the server does not serve ${WORKFLOWS.group}/${WORKFLOWS.version}: are agentflow's CRDs installed? (${err.message})`,
        );
      }
      throw err;
    }
  }

  /** Data API requests: 503 or a path nothing serves become DataApiUnavailableError. */
  private async data<T>(path: string, query: Record<string, string | number | boolean | undefined>): Promise<T> {
    try {
      return await this.request<T>('GET', path, { query });
    } catch (err) {
      throw dataApiError(err);
    }
  }

  getWorkflow(name: string): Promise<Workflow> {
    return this.kube<Workflow>('GET', resourcePath(WORKFLOWS, { namespace: this.namespace, name }));
  }

  /** undefined namespace: every namespace. */
  listWorkflows(namespace: string | undefined): Promise<List<Workflow>> {
    return this.kube<List<Workflow>>('GET', resourcePath(WORKFLOWS, namespace === undefined ? {} : { namespace }));
  }

  getTemplate(name: string): Promise<WorkflowTemplate> {
    return this.kube<WorkflowTemplate>('GET', resourcePath(WORKFLOW_TEMPLATES, { namespace: this.namespace, name }));
  }

  createWorkflow(body: unknown): Promise<Workflow> {
    return this.kube<Workflow>('POST', resourcePath(WORKFLOWS, { namespace: this.namespace }), { body });
  }

  patchWorkflow(name: string, patch: unknown): Promise<Workflow> {
    return this.kube<Workflow>('PATCH', resourcePath(WORKFLOWS, { namespace: this.namespace, name }), {
      body: patch,
      contentType: 'application/merge-patch+json',
    });
  }

  listPools(): Promise<List<AgentPool>> {
    return this.kube<List<AgentPool>>('GET', resourcePath(AGENTPOOLS, { namespace: this.namespace }));
  }

  /** The per-task table, or with `task` that one task with its input and output. */
  tasks(workflow: string, task?: string): Promise<WorkflowTaskList> {
    return this.data<WorkflowTaskList>(dataPath(this.namespace, 'tasks', workflow), { task });
  }

  /** A workflow's audit chain, verified by the operator. */
  audit(workflow: string): Promise<AuditVerification> {
    return this.data<AuditVerification>(dataPath(this.namespace, 'audit', workflow), {});
  }

  /** Approval tasks of a workflow waiting for a decision. */
  approvals(workflow: string): Promise<ApprovalList> {
    return this.data<ApprovalList>(dataPath(this.namespace, 'approval', workflow), {});
  }

  /** Decides an approval task (answered once the decision is durable). */
  async decide(workflow: string, body: ApprovalRequest): Promise<ApprovalResult> {
    try {
      return await this.request<ApprovalResult>('POST', dataPath(this.namespace, 'approval', workflow), { body });
    } catch (err) {
      throw dataApiError(err);
    }
  }

  /** Sends a signal (answered once it is durable). */
  async signal(workflow: string, body: SignalRequest): Promise<{ id: string; revision: number }> {
    try {
      return await this.request<{ id: string; revision: number }>(
        'POST',
        dataPath(this.namespace, 'signal', workflow),
        {
          body,
        },
      );
    } catch (err) {
      throw dataApiError(err);
    }
  }

  signals(workflow: string): Promise<SignalList> {
    return this.data<SignalList>(dataPath(this.namespace, 'signal', workflow), {});
  }

  /** Where a scope's shared state is served. */
  statePath(scope: CliStateScope): string {
    if (scope.kind === 'workflow') return dataPath(this.namespace, 'workflowState', scope.name);
    if (scope.kind === 'pool') return dataPath(this.namespace, 'poolState', scope.name);
    return dataNamespaceStatePath(this.namespace);
  }

  stateList(scope: CliStateScope, prefix?: string): Promise<StateList> {
    return this.data<StateList>(this.statePath(scope), { prefix });
  }

  stateGet(scope: CliStateScope, key: string): Promise<StateItem> {
    return this.data<StateItem>(this.statePath(scope), { key });
  }

  async statePut(scope: CliStateScope, key: string, value: unknown, expectedRevision?: number): Promise<StateItem> {
    try {
      return await this.request<StateItem>('PUT', this.statePath(scope), {
        query: { key, expectedRevision },
        body: value,
      });
    } catch (err) {
      throw dataApiError(err);
    }
  }

  async stateDelete(scope: CliStateScope, key: string, expectedRevision?: number): Promise<void> {
    try {
      await this.request('DELETE', this.statePath(scope), { query: { key, expectedRevision } });
    } catch (err) {
      throw dataApiError(err);
    }
  }

  /** State changes as JSON lines (StateEvent), until the signal aborts. */
  async stateWatch(
    scope: CliStateScope,
    q: { key?: string; prefix?: string; resourceVersion?: number },
    signal?: AbortSignal,
  ): Promise<IncomingMessage> {
    try {
      return await this.client.stream(this.statePath(scope), {
        query: { watch: true, key: q.key, prefix: q.prefix, resourceVersion: q.resourceVersion },
        accept: 'application/json',
        ...(signal && { signal }),
      });
    } catch (err) {
      throw dataApiError(err);
    }
  }

  /** The namespace's memoized task outputs, newest first. */
  memoList(): Promise<MemoList> {
    return this.data<MemoList>(dataNamespaceMemoPath(this.namespace), {});
  }

  /** Clears the namespace's memoized outputs, or the one of `key`. */
  async memoClear(key?: string): Promise<MemoCleared> {
    try {
      return await this.request<MemoCleared>('DELETE', dataNamespaceMemoPath(this.namespace), { query: { key } });
    } catch (err) {
      throw dataApiError(err);
    }
  }

  agents(pool: string): Promise<AgentList> {
    return this.data<AgentList>(dataPath(this.namespace, 'agents', pool), {});
  }

  /** An attempt's log as a text stream (LogQuery); with follow it stays open until the attempt ends. */
  async logs(workflow: string, q: LogQuery, signal?: AbortSignal): Promise<IncomingMessage> {
    const query = {
      task: q.task,
      attempt: q.attempt,
      follow: q.follow || undefined,
      timestamps: q.timestamps || undefined,
      stream: q.stream || undefined,
    };
    try {
      return await this.client.stream(dataPath(this.namespace, 'logs', workflow), {
        query,
        accept: 'text/plain',
        ...(signal && { signal }),
        // Without follow the answer is there at once; a followed log may say nothing for a while.
        ...(!q.follow && this.timeoutMs !== undefined && { timeoutMs: this.timeoutMs }),
      });
    } catch (err) {
      throw dataApiError(err);
    }
  }
}

function dataApiError(err: unknown): unknown {
  if (!(err instanceof KubeApiError)) return err;
  if (err.status === 503) return new DataApiUnavailableError(503, err.message.replace(/^\S+ \S+: /, ''));
  if (err.status === 404 && NOTHING_SERVED.test(err.message)) return new DataApiUnavailableError(404, 'not served');
  return err;
}
