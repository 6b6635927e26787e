// The per-task data API: what the operator's leader serves as the Kubernetes
// aggregated API `data.agentflow.io/v1alpha1` (registered by an APIService), and
// what the CLI and the web UI read. Per-task records live in etcd, which users
// never reach: this API is their only way to them, authorised against the
// Workflow's own RBAC (docs/api.md). One home for its paths, kinds and limits.

import type { ApprovalDecision, ApprovalTimeoutAction } from './workflow.ts';

/** The aggregated API group and version. */
export const DATA_GROUP = 'data.agentflow.io';
export const DATA_VERSION = 'v1alpha1';
export const DATA_API_VERSION = `${DATA_GROUP}/${DATA_VERSION}`;
/** The APIService's name (`<version>.<group>`, as Kubernetes requires). */
export const DATA_APISERVICE = `${DATA_VERSION}.${DATA_GROUP}`;
/** Default name of the Service in the operator's namespace that the APIService points at. */
export const DEFAULT_DATA_API_SERVICE = 'agentflow-api';
/** Default port the leader serves the API on. */
export const DEFAULT_DATA_API_PORT = 8443;

/** Subresources the API serves, with the Kubernetes resource whose RBAC decides who may read them. */
export const DATA_SUBRESOURCES = {
  /** `workflows/<name>/tasks`: the per-task table; `?task=<instance>` one task with input and output. */
  tasks: { resource: 'workflows', path: 'tasks', kind: 'WorkflowTaskList' },
  /**
   * `workflows/<name>/log?task=<instance>[&attempt=N][&follow=true][&stream=true]`: a task attempt's log, text
   * (with `stream=true` its streamed output instead, see STREAM_RING_BYTES). The path segment is `log`, as
   * pods/log: the API server then treats it as long-running (no 60 s request timeout).
   */
  logs: { resource: 'workflows', path: 'log', kind: 'Log' },
  /** `agentpools/<name>/agents`: the pool's connected agents, slots and work in flight. */
  agents: { resource: 'agentpools', path: 'agents', kind: 'AgentList' },
  /** `workflows/<name>/audit`: the workflow's hash-chained audit log, verified. */
  audit: { resource: 'workflows', path: 'audit', kind: 'AuditVerification' },
  /** `workflows/<name>/state`: the workflow's shared state (see StateQuery); PUT and DELETE write it. */
  workflowState: { resource: 'workflows', path: 'state', kind: 'StateList' },
  /** `agentpools/<name>/state`: the pool's shared state. */
  poolState: { resource: 'agentpools', path: 'state', kind: 'StateList' },
  /**
   * `workflows/<name>/approval`: GET lists the approval tasks waiting for a decision; POST an
   * ApprovalRequest decides one. Deciding takes `update` on workflows/approval (as
   * certificatesigningrequests/approval), and the task's approval.approvers when it lists any.
   */
  approval: { resource: 'workflows', path: 'approval', kind: 'ApprovalList' },
  /**
   * `workflows/<name>/signal`: GET lists the workflow's signals (taken or not); POST a SignalRequest
   * sends one. Sending takes `update` on workflows/signal.
   */
  signal: { resource: 'workflows', path: 'signal', kind: 'SignalList' },
} as const;
export type DataSubresource = keyof typeof DATA_SUBRESOURCES;

/** Path of a subresource, relative to the API server. */
export function dataPath(namespace: string, sub: DataSubresource, name: string): string {
  const { resource, path } = DATA_SUBRESOURCES[sub];
  return `/apis/${DATA_GROUP}/${DATA_VERSION}/namespaces/${encodeURIComponent(namespace)}/${resource}/${encodeURIComponent(name)}/${path}`;
}

/**
 * The namespace's shared state (every pool's agents in it share it): `namespaces/<ns>/state`.
 * Reading it takes `get agentpools` in the namespace, writing it `update agentpools`.
 */
export function dataNamespaceStatePath(namespace: string): string {
  return `/apis/${DATA_GROUP}/${DATA_VERSION}/namespaces/${encodeURIComponent(namespace)}/state`;
}

/**
 * The namespace's memoized task outputs (a task's `memoize`): `namespaces/<ns>/memo`. GET lists them
 * (MemoList, newest first, outputs left out), `GET ?key=<key>` returns one with its output (MemoEntryView,
 * 404 when there is none); DELETE clears them all, or `?key=` the one, and answers MemoCleared. A key
 * is 1 to MAX_MEMO_KEY_LENGTH characters (src/api/workflow.ts), else 400.
 * Reading takes `list workflows` in the namespace, clearing `delete workflows`: the cache holds what
 * the namespace's workflows produced (outputs a run reads instead of running the task), so whoever may
 * see them is who may list workflows, and dropping them is as much as deleting workflows' results.
 */
export function dataNamespaceMemoPath(namespace: string): string {
  return `/apis/${DATA_GROUP}/${DATA_VERSION}/namespaces/${encodeURIComponent(namespace)}/memo`;
}

/** One memoized output as listed: where it came from and its size, not the output. */
export interface MemoItem {
  /** The memoization key as evaluated. */
  key: string;
  workflow: string;
  task: string;
  attempt: number;
  agentId?: string;
  /** RFC 3339: when the attempt that produced it committed. */
  createdAt: string;
  /** The stored entry's size in bytes (output and metadata, as JSON). */
  bytes: number;
}

export interface MemoList {
  apiVersion: typeof DATA_API_VERSION;
  kind: 'MemoList';
  metadata: { namespace: string };
  items: MemoItem[];
}

/** One entry with its output (`GET ?key=`). */
export interface MemoEntryView extends Omit<MemoItem, 'bytes'> {
  apiVersion: typeof DATA_API_VERSION;
  kind: 'MemoEntry';
  metadata: { namespace: string };
  output: unknown;
}

/** The answer to a DELETE: how many entries went (0 for a key that had none). */
export interface MemoCleared {
  apiVersion: typeof DATA_API_VERSION;
  kind: 'MemoCleared';
  metadata: { namespace: string };
  /** The one key cleared; absent when all were. */
  key?: string;
  deleted: number;
}

/**
 * Shared state through the data API, the same keys agents read and write (`ctx.state`):
 * GET lists (`prefix=`), or returns one key (`key=`, 404 when absent), or with `watch=true`
 * streams changes as JSON lines (StateEvent) from `resourceVersion=` (the list's revision) on;
 * PUT `key=` with a JSON body writes it (`expectedRevision=N`: only if its modRevision is still N,
 * 0 = absent; 409 otherwise); DELETE `key=` removes it (also with `expectedRevision`).
 * Reads take `get` on the Workflow or AgentPool, writes `update`.
 */
export interface StateQuery {
  key?: string;
  prefix?: string;
  watch?: boolean;
  resourceVersion?: number;
  expectedRevision?: number;
}

export interface StateItem {
  key: string;
  value: unknown;
  modRevision: number;
  version: number;
}

export interface StateList {
  apiVersion: typeof DATA_API_VERSION;
  kind: 'StateList';
  metadata: { scope: 'workflow' | 'pool' | 'namespace'; namespace: string; name?: string; revision: number };
  items: StateItem[];
}

export interface StateEvent {
  type: 'PUT' | 'DELETE';
  key: string;
  value?: unknown;
  modRevision: number;
}

export interface AuditVerification {
  apiVersion: typeof DATA_API_VERSION;
  kind: 'AuditVerification';
  metadata: { namespace: string; name: string };
  ok: boolean;
  entries: number;
  head?: string;
  /** Every altered, missing or re-hashed entry, by sequence number. */
  problems: { seq: number; problem: string }[];
}

/** One ended attempt of a task, as etcd keeps its result. */
export interface AttemptView {
  attempt: number;
  /** The agent that ran it (its pod name when it runs in a pod). */
  agent: string;
  ok: boolean;
  error?: { message: string; retryable: boolean };
  /** When the result was committed (RFC 3339). */
  finishedAt: string;
}

/** One task instance of a workflow run. */
export interface TaskView {
  /** Instance name: `task`, `task.<index>` for a forEach item, `parent~child` for a spawned child. */
  name: string;
  template: string;
  index?: number;
  parent?: string;
  phase: string;
  /** Latest attempt handed out (0: never ran). */
  attempt: number;
  handler: string;
  pool: string;
  startedAt?: string;
  finishedAt?: string;
  /** finishedAt − startedAt, or now − startedAt while it runs. */
  durationMs?: number;
  message?: string;
  /** The running attempt's latest progress report. */
  progress?: string;
  /** The agent running the current attempt (while it runs), else the one that ran the last attempt. */
  agent?: string;
  /** The node of that agent's pod, when known. */
  node?: string;
  attempts: AttemptView[];
  /** An approval task: what it asks, and until when it waits (RFC 3339), if it does. */
  approval?: { message: string; deadline?: string };
  /** Only with `?task=`: the rendered input and the output. */
  input?: unknown;
  output?: unknown;
  dependsOn?: string[];
}

export interface WorkflowTaskList {
  apiVersion: typeof DATA_API_VERSION;
  kind: 'WorkflowTaskList';
  metadata: { namespace: string; name: string; phase: string; startedAt?: string; finishedAt?: string };
  items: TaskView[];
}

export interface AgentView {
  /** The agent's id (its pod's name). */
  name: string;
  node?: string;
  capacity: number;
  inFlight: number;
  free: number;
  draining: boolean;
  handlers: string[];
}

export interface AgentList {
  apiVersion: typeof DATA_API_VERSION;
  kind: 'AgentList';
  metadata: { namespace: string; pool: string };
  items: AgentView[];
}

/** A Kubernetes-style Status for errors (what `kubectl get --raw` prints). */
export interface DataStatus {
  apiVersion: 'v1';
  kind: 'Status';
  status: 'Failure';
  code: number;
  reason:
    | 'Unauthorized'
    | 'Forbidden'
    | 'NotFound'
    | 'BadRequest'
    | 'Conflict'
    | 'MethodNotAllowed'
    | 'RequestEntityTooLarge'
    | 'InternalError'
    | 'ServiceUnavailable'
    | 'TooManyRequests';
  message: string;
}

/**
 * The log of one attempt kept for `logs`: its last LOG_RING_BYTES of lines (older
 * chunks dropped, the answer then starts with LOG_DROPPED_LINE), written to etcd
 * in chunks of at most LOG_CHUNK_BYTES, one write per attempt per LOG_FLUSH_MS at most.
 */
export const LOG_RING_BYTES = 256 * 1024;
export const LOG_CHUNK_BYTES = 16 * 1024;
export const LOG_FLUSH_MS = 250;
export const LOG_DROPPED_LINE =
  '[agentflow: earlier lines of this attempt were dropped: the log keeps its last 256 KiB]';

/**
 * `logs` answers text/plain, one line per log line: `<text>`, or with
 * `timestamps=true` `<RFC 3339 time> <text>` (as `kubectl logs --timestamps`).
 * A line from an exec handler's stderr is its text as written; a handler's
 * log call reads `<level> <message> <fields as JSON>`. Query parameters:
 */
export interface LogQuery {
  /** Task instance (required). */
  task: string;
  /** Attempt number; default the latest. */
  attempt?: number;
  /**
   * Keep the response open and send lines as they come, until the attempt ends. The response's
   * head comes at once; a clean end of the body means the attempt is over (a cut connection is an
   * error, never a clean end).
   */
  follow?: boolean;
  /** Not with `stream` (streamed output has no line times: 400). */
  timestamps?: boolean;
  /**
   * The attempt's streamed output (`ctx.stream`) instead of its log lines: the text exactly as the
   * handler streamed it (no newline added, no times), its last STREAM_RING_BYTES; with `follow`, each
   * piece within about 100 ms of the handler streaming it.
   */
  stream?: boolean;
}

/** Lines the dispatcher takes from one TaskLog message (the rest are dropped). */
export const LOG_MAX_LINES_PER_MESSAGE = 1024;
/** A line longer than this (UTF-16 units) is cut where it arrives, marked with LOG_CUT_MARKER. */
export const LOG_MAX_LINE_CHARS = 16 * 1024;
export const LOG_CUT_MARKER = '… [cut]';

/**
 * Streamed output (`ctx.stream`) kept per attempt apart from its log lines: its last STREAM_RING_BYTES
 * (older chunks dropped, the answer then starts with STREAM_DROPPED_LINE), in etcd chunks of at most
 * LOG_CHUNK_BYTES, written within STREAM_FLUSH_MS of arriving (log lines: LOG_FLUSH_MS).
 */
export const STREAM_RING_BYTES = 1024 * 1024;
export const STREAM_FLUSH_MS = 50;
export const STREAM_DROPPED_LINE =
  '[agentflow: earlier output of this attempt was dropped: the stream keeps its last 1 MiB]\n';
/** Longest piece `ctx.stream` takes (UTF-8 bytes; RangeError past it). */
export const STREAM_MAX_CHUNK_BYTES = 64 * 1024;
/** Chunks the dispatcher takes from one TaskLog message (the rest are dropped). */
export const STREAM_MAX_CHUNKS_PER_MESSAGE = 1024;
/** A chunk longer than this (UTF-16 units) is cut where it arrives, marked with LOG_CUT_MARKER. */
export const STREAM_MAX_CHUNK_CHARS = STREAM_MAX_CHUNK_BYTES;

/** POST body of `workflows/<name>/approval`. */
export interface ApprovalRequest {
  /** The approval task (its name in spec.tasks). */
  task: string;
  decision: ApprovalDecision;
  /** Why, in the reviewer's words (kept in the task's status, its output and the audit chain). */
  message?: string;
}

/** An approval task waiting for a decision. */
export interface PendingApproval {
  task: string;
  /** What the people who may approve are asked (approval.message, rendered). */
  message: string;
  /** When it stops waiting (approval.timeoutSeconds), and what it does then. */
  deadline?: string;
  onTimeout?: ApprovalTimeoutAction;
  /** approval.approvers, when set (RBAC applies in any case). */
  approvers?: { users?: string[]; groups?: string[] };
}

export interface ApprovalList {
  apiVersion: typeof DATA_API_VERSION;
  kind: 'ApprovalList';
  metadata: { namespace: string; name: string };
  items: PendingApproval[];
}

/** The answer to a decision. */
export interface ApprovalResult {
  apiVersion: typeof DATA_API_VERSION;
  kind: 'ApprovalResult';
  metadata: { namespace: string; name: string };
  task: string;
  decision: ApprovalDecision;
  user: string;
  message: string;
}

/** POST body of `workflows/<name>/signal`. */
export interface SignalRequest {
  /** What handlers wait for (ctx.waitForSignal(name)); see SIGNAL_NAME in src/api/signals.ts. */
  name: string;
  /** Any JSON value, at most MAX_SIGNAL_DATA_BYTES; default null. */
  data?: unknown;
}

export interface SignalView {
  name: string;
  id: string;
  sentBy: string;
  sentAt: string;
  /** The task that took it, if one did. */
  takenBy?: string;
  data: unknown;
}

export interface SignalList {
  apiVersion: typeof DATA_API_VERSION;
  kind: 'SignalList';
  metadata: { namespace: string; name: string; revision: number };
  items: SignalView[];
}

/**
 * The header the web UI sets on its one write (an approval decision) and the UI proxy requires
 * (src/cli/ui-proxy.ts): a cross-site page cannot send it without a CORS preflight.
 */
export const UI_WRITE_HEADER = 'x-agentflow-ui';
export const UI_WRITE_VALUE = 'decide';
