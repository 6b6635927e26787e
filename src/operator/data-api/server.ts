// The leader's aggregated API server (data.agentflow.io/v1alpha1): per-task
// tables, task logs and a pool's agents, for the CLI and the web UI. Reached
// only through the Kubernetes API server (an APIService points at the
// agentflow-api Service, which selects the leader): the API server
// authenticates the user, we believe the identity it forwards only on its
// front-proxy client certificate, and every request is authorised with a
// SubjectAccessReview against the Workflow or AgentPool it reads (docs/api.md).

import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import {
  type AgentList,
  type ApprovalList,
  type ApprovalRequest,
  type ApprovalResult,
  type AuditVerification,
  DATA_API_VERSION,
  DATA_GROUP,
  DATA_SUBRESOURCES,
  DATA_VERSION,
  type DataStatus,
  type DataSubresource,
  type LogQuery,
  type MemoCleared,
  type MemoEntryView,
  type MemoList,
  type SignalList,
  type WorkflowTaskList,
} from '../../api/data-api.ts';
import { MAX_MEMO_KEY_LENGTH } from '../../api/workflow.ts';
import type { Logger } from '../../lib/log.ts';
import { type Fence, FencedError, type SharedState } from '../../state/index.ts';
import type { ApprovalRefusal } from '../../workflow/run.ts';
import type { Access, AccessReviewer } from './access.ts';
import { BodyError, readApproval, readSignal } from './control-routes.ts';
import { AuthenticationError, authenticate, type RequestHeaderConfig, type UserInfo } from './request-header.ts';
import { StateRequestError, type StateScope, serveState, writes } from './state-routes.ts';
import { UI_PATH, UiAssets } from './ui-assets.ts';

/** Where the API's answers come from (the leader's engine, dispatcher and etcd). */
export interface DataSource {
  /** undefined: no such Workflow. With `task`, that one task (input and output included) or undefined items. */
  tasks(namespace: string, workflow: string, task?: string): Promise<WorkflowTaskList | undefined>;
  /** undefined: no such AgentPool. */
  agents(namespace: string, pool: string): AgentList | undefined;
  /** undefined: no such Workflow. */
  audit(namespace: string, workflow: string): Promise<AuditVerification | undefined>;
  /** The scope's shared state; undefined when its Workflow or AgentPool does not exist. */
  sharedState(scope: StateScope): SharedState | undefined;
  /** What every write the API makes on a user's behalf is fenced by (the leadership). */
  fences(): Fence[];
  /**
   * Writes an attempt's log lines to `write`; with `follow`, keeps writing until the attempt ends or the
   * signal aborts. Resolves 'no-workflow' / 'no-task' when there is nothing to read.
   */
  logs(
    namespace: string,
    workflow: string,
    query: LogQuery,
    write: (text: string) => void,
    signal: AbortSignal,
  ): Promise<'ok' | 'no-workflow' | 'no-task'>;
  /** Approval tasks waiting for a decision; undefined: no such Workflow. */
  approvals(namespace: string, workflow: string): ApprovalList | undefined;
  /** A decision, answered once it is durable. */
  decide(namespace: string, workflow: string, req: ApprovalRequest, user: UserInfo): Promise<DecideOutcome>;
  /** Sends a signal, answered once it is durable. */
  sendSignal(
    namespace: string,
    workflow: string,
    sig: { name: string; data: unknown },
    user: UserInfo,
  ): Promise<SignalOutcome>;
  /** The workflow's signals; undefined: no such Workflow. */
  signals(namespace: string, workflow: string): Promise<SignalList | undefined>;
  /** The namespace's memoized outputs, newest first, without the outputs. */
  memoList(namespace: string): Promise<MemoList>;
  /** One memoized output, the output included. */
  memoEntry(namespace: string, key: string): Promise<MemoOutcome>;
  /** Clears the namespace's memoized outputs (`key`: that one), fenced by the leadership; how many went. */
  clearMemo(namespace: string, key?: string): Promise<number>;
}

export type DecideOutcome =
  | { ok: true }
  | { ok: false; code: ApprovalRefusal | 'NotLoaded' | 'NoWorkflow'; message: string };
export type SignalOutcome =
  | { ok: true; id: string; revision: number }
  | { ok: false; code: 'NoWorkflow' | 'Finished' | 'TooMany'; message: string };
export type MemoOutcome = { ok: true; entry: MemoEntryView } | { ok: false; code: 'NoMemoEntry'; message: string };

type Outcome = DecideOutcome | SignalOutcome | MemoOutcome;

/** How each refused decision, signal or memo read answers. */
const REFUSALS: Record<Exclude<Outcome, { ok: true }>['code'], [number, DataStatus['reason']]> = {
  NoWorkflow: [404, 'NotFound'],
  UnknownTask: [404, 'NotFound'],
  NotApproval: [400, 'BadRequest'],
  NotWaiting: [409, 'Conflict'],
  NotApprover: [403, 'Forbidden'],
  NotLoaded: [503, 'ServiceUnavailable'],
  Finished: [409, 'Conflict'],
  TooMany: [429, 'TooManyRequests'],
  NoMemoEntry: [404, 'NotFound'],
};

export interface DataApiOptions {
  host?: string;
  port: number;
  /** The serving certificate (chain) and key; setIdentity() swaps them in place. */
  certPem: string;
  keyPem: string;
  requestHeader: RequestHeaderConfig;
  access: AccessReviewer;
  source: DataSource;
  logger: Logger;
}

const NAME = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;
const TASK = /^[a-zA-Z0-9][a-zA-Z0-9._~-]{0,252}$/;
const PREFIX = `/apis/${DATA_GROUP}/${DATA_VERSION}`;

/** A request refused with a Status (the message names the problem). */
class RequestError extends Error {
  readonly code: number;
  readonly reason: DataStatus['reason'];
  constructor(code: number, reason: DataStatus['reason'], message: string) {
    super(message);
    this.code = code;
    this.reason = reason;
  }
}

const bad = (message: string) => new RequestError(400, 'BadRequest', message);

function resourceList() {
  return {
    kind: 'APIResourceList',
    apiVersion: 'v1',
    groupVersion: DATA_API_VERSION,
    resources: [
      ...Object.values(DATA_SUBRESOURCES).map((s) => ({
        name: `${s.resource}/${s.path}`,
        singularName: '',
        namespaced: true,
        kind: s.kind,
        verbs:
          s.path === 'state'
            ? ['get', 'update', 'delete', 'watch']
            : s.path === 'approval' || s.path === 'signal'
              ? ['get', 'create']
              : ['get'],
      })),
      {
        name: 'state',
        singularName: '',
        namespaced: true,
        kind: 'StateList',
        verbs: ['list', 'update', 'delete', 'watch'],
      },
      // A collection path: the API server names its GET `list` and its DELETE `deletecollection`.
      { name: 'memo', singularName: '', namespaced: true, kind: 'MemoList', verbs: ['list', 'deletecollection'] },
    ],
  };
}

/** A decision's, a signal's or a memo read's outcome, or its refusal as a Status. */
function refused<T extends Outcome>(out: T): Extract<T, { ok: true }> {
  if (!out.ok) {
    const [code, reason] = REFUSALS[out.code];
    throw new RequestError(code, reason, out.message);
  }
  return out as Extract<T, { ok: true }>;
}

function groupInfo() {
  const v = { groupVersion: DATA_API_VERSION, version: DATA_VERSION };
  return { kind: 'APIGroup', apiVersion: 'v1', name: DATA_GROUP, versions: [v], preferredVersion: v };
}

function parseBool(q: URLSearchParams, key: string): boolean {
  const v = q.get(key);
  if (v === null || v === 'false' || v === '0') return false;
  if (v === '' || v === 'true' || v === '1') return true;
  throw bad(`query parameter ${key}: must be true or false, not ${JSON.stringify(v)}`);
}

export class DataApiServer {
  private readonly o: DataApiOptions;
  private readonly server: Server;
  private readonly log: Logger;
  private requestHeader: RequestHeaderConfig;
  private readonly streams = new Set<AbortController>();
  private identity: { certPem: string; keyPem: string };
  /** The web UI's files (ui/dist), read once at start. */
  private readonly ui = new UiAssets();

  constructor(o: DataApiOptions) {
    this.o = o;
    this.log = o.logger;
    this.requestHeader = o.requestHeader;
    this.identity = { certPem: o.certPem, keyPem: o.keyPem };
    this.server = createServer(
      { ...this.context(), requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.2' },
      (req, res) => {
        this.handle(req, res).catch((err: Error) => {
          this.log.error('Data API request failed', { error: err, path: req.url });
          this.fail(res, new RequestError(500, 'InternalError', 'internal error'));
        });
      },
    );
  }

  private context() {
    return { cert: this.identity.certPem, key: this.identity.keyPem, ca: this.requestHeader.clientCa };
  }

  /** Serves a new certificate (rotation) for new connections. */
  setIdentity(certPem: string, keyPem: string): void {
    this.identity = { certPem, keyPem };
    this.server.setSecureContext(this.context());
  }

  /** Trusts a new request-header configuration (the API server's ConfigMap changed). */
  setRequestHeader(cfg: RequestHeaderConfig): void {
    this.requestHeader = cfg;
    this.server.setSecureContext(this.context());
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  start(): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.o.port, this.o.host, () => {
        this.server.off('error', reject);
        resolve(this.port);
      });
    });
  }

  /** Stops listening, ends followed logs and every connection. */
  async stop(): Promise<void> {
    for (const s of this.streams) s.abort();
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  private send(res: ServerResponse, code: number, body: unknown): void {
    if (res.headersSent) {
      res.end();
      return;
    }
    const text = JSON.stringify(body);
    res.writeHead(code, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
    res.end(text);
  }

  private fail(res: ServerResponse, err: RequestError): void {
    const status: DataStatus = {
      apiVersion: 'v1',
      kind: 'Status',
      status: 'Failure',
      code: err.code,
      reason: err.reason,
      message: err.message,
    };
    this.send(res, err.code, { ...status, metadata: {} });
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let user: UserInfo;
    try {
      user = authenticate(req, this.requestHeader);
    } catch (err) {
      if (!(err instanceof AuthenticationError)) throw err;
      this.fail(res, new RequestError(401, 'Unauthorized', err.message));
      return;
    }
    try {
      await this.route(req, res, user);
    } catch (err) {
      if (!(err instanceof RequestError)) throw err;
      this.fail(res, err);
    }
  }

  private async route(req: IncomingMessage, res: ServerResponse, user: UserInfo): Promise<void> {
    const url = new URL(req.url ?? '/', 'https://data-api');
    const path = url.pathname.replace(/\/+$/, '');
    if (req.method !== 'GET' && req.method !== 'POST' && !writes(req.method)) {
      throw new RequestError(405, 'MethodNotAllowed', `method ${req.method} is not served`);
    }
    if (path === '/healthz' || path === '/readyz' || path === '/livez') {
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      res.end('ok');
      return;
    }
    if (path === '/apis') {
      this.send(res, 200, { kind: 'APIGroupList', apiVersion: 'v1', groups: [groupInfo()] });
      return;
    }
    if (path === `/apis/${DATA_GROUP}`) return this.send(res, 200, groupInfo());
    if (path === PREFIX) return this.send(res, 200, resourceList());
    // The web UI (cluster-scoped: the API server authorises get/list on resource `ui` before it proxies).
    if (url.pathname === UI_PATH || url.pathname.startsWith(`${UI_PATH}/`))
      return this.ui.serve(req, res, url.pathname);
    if (!path.startsWith(`${PREFIX}/namespaces/`)) throw new RequestError(404, 'NotFound', `no such path: ${path}`);
    const parts = path
      .slice(PREFIX.length + '/namespaces/'.length)
      .split('/')
      .map(decodeURIComponent);
    if (parts.length === 2 && parts[1] === 'state' && parts[0]) {
      const namespace = parts[0];
      if (!NAME.test(namespace)) throw bad(`namespace: ${JSON.stringify(namespace)} is not a valid namespace name`);
      const verb = writes(req.method) ? 'update' : 'get';
      const decision = await this.o.access.review(user, { namespace, verb, resource: 'agentpools' });
      if (!decision.allowed) throw new RequestError(403, 'Forbidden', decision.reason);
      return this.state(req, res, { kind: 'namespace', namespace });
    }
    if (parts.length === 2 && parts[1] === 'memo' && parts[0]) {
      const namespace = parts[0];
      if (!NAME.test(namespace)) throw bad(`namespace: ${JSON.stringify(namespace)} is not a valid namespace name`);
      return this.memo(req, res, namespace, url.searchParams, user);
    }
    const [namespace, resource, name, segment, ...rest] = parts;
    const sub = (Object.keys(DATA_SUBRESOURCES) as DataSubresource[]).find(
      (k) => DATA_SUBRESOURCES[k].resource === resource && DATA_SUBRESOURCES[k].path === segment,
    );
    if (!namespace || !name || !sub || rest.length > 0) {
      throw new RequestError(
        404,
        'NotFound',
        `no such path: ${path} (served: ${Object.values(DATA_SUBRESOURCES)
          .map((s) => `namespaces/<ns>/${s.resource}/<name>/${s.path}`)
          .join(', ')})`,
      );
    }
    if (!NAME.test(namespace)) throw bad(`namespace: ${JSON.stringify(namespace)} is not a valid namespace name`);
    if (!NAME.test(name) || name.length > 253) throw bad(`name: ${JSON.stringify(name)} is not a valid object name`);
    const kind = DATA_SUBRESOURCES[sub].resource;
    const isState = sub === 'workflowState' || sub === 'poolState';
    const isControl = sub === 'approval' || sub === 'signal';
    if ((writes(req.method) && !isState) || (req.method === 'POST' && !isControl)) {
      throw new RequestError(405, 'MethodNotAllowed', `method ${req.method} is not served on ${kind}/${segment}`);
    }
    // Deciding and signalling are writes of their own subresource (as certificatesigningrequests/approval).
    const access: Access =
      req.method === 'POST'
        ? { namespace, verb: 'update', resource: kind, subresource: segment as 'approval' | 'signal', name }
        : { namespace, verb: writes(req.method) ? 'update' : 'get', resource: kind, name };
    const decision = await this.o.access.review(user, access);
    if (!decision.allowed) throw new RequestError(403, 'Forbidden', decision.reason);
    const q = url.searchParams;
    switch (sub) {
      case 'tasks': {
        const task = q.get('task') ?? undefined;
        if (task !== undefined && !TASK.test(task))
          throw bad(`query parameter task: ${JSON.stringify(task)} is not a task name`);
        const list = await this.o.source.tasks(namespace, name, task);
        if (!list) throw new RequestError(404, 'NotFound', `workflows.agentflow.io "${name}" not found`);
        if (task !== undefined && list.items.length === 0) {
          throw new RequestError(404, 'NotFound', `workflow "${name}" has no task "${task}"`);
        }
        return this.send(res, 200, list);
      }
      case 'agents': {
        const list = this.o.source.agents(namespace, name);
        if (!list) throw new RequestError(404, 'NotFound', `agentpools.agentflow.io "${name}" not found`);
        return this.send(res, 200, list);
      }
      case 'logs':
        return this.logs(res, namespace, name, q);
      case 'audit': {
        const v = await this.o.source.audit(namespace, name);
        if (!v) throw new RequestError(404, 'NotFound', `workflows.agentflow.io "${name}" not found`);
        return this.send(res, 200, v);
      }
      case 'workflowState':
        return this.state(req, res, { kind: 'workflow', namespace, workflow: name });
      case 'poolState':
        return this.state(req, res, { kind: 'pool', namespace, pool: name });
      case 'approval':
        return this.approval(req, res, namespace, name, user);
      case 'signal':
        return this.signal(req, res, namespace, name, user);
    }
  }

  private async approval(
    req: IncomingMessage,
    res: ServerResponse,
    namespace: string,
    name: string,
    user: UserInfo,
  ): Promise<void> {
    if (req.method === 'GET') return this.sendList(res, name, this.o.source.approvals(namespace, name));
    const body = await this.body(() => readApproval(req));
    refused(await this.o.source.decide(namespace, name, body, user));
    this.log.info('Approval decided', {
      namespace,
      workflow: name,
      task: body.task,
      decision: body.decision,
      user: user.username,
    });
    const result: ApprovalResult = {
      apiVersion: DATA_API_VERSION,
      kind: 'ApprovalResult',
      metadata: { namespace, name },
      task: body.task,
      decision: body.decision,
      user: user.username,
      message: body.message ?? '',
    };
    return this.send(res, 200, result);
  }

  private async signal(
    req: IncomingMessage,
    res: ServerResponse,
    namespace: string,
    name: string,
    user: UserInfo,
  ): Promise<void> {
    if (req.method === 'GET') return this.sendList(res, name, await this.o.source.signals(namespace, name));
    const body = await this.body(() => readSignal(req));
    const out = refused(await this.o.source.sendSignal(namespace, name, body, user));
    return this.send(res, 201, {
      apiVersion: DATA_API_VERSION,
      kind: 'Signal',
      metadata: { namespace, name },
      signal: body.name,
      id: out.id,
      revision: out.revision,
    });
  }

  /**
   * The namespace's memoized outputs. Reading takes `list workflows` there, clearing `delete workflows`:
   * the entries are what the namespace's workflows produced, and a run takes one instead of running
   * the task, so dropping them is of a weight with deleting workflows (docs/api.md).
   */
  private async memo(
    req: IncomingMessage,
    res: ServerResponse,
    namespace: string,
    q: URLSearchParams,
    user: UserInfo,
  ): Promise<void> {
    if (req.method !== 'GET' && req.method !== 'DELETE') {
      throw new RequestError(405, 'MethodNotAllowed', `method ${req.method} is not served on memo (GET, DELETE)`);
    }
    const clearing = req.method === 'DELETE';
    const decision = await this.o.access.review(user, {
      namespace,
      verb: clearing ? 'delete' : 'list',
      resource: 'workflows',
    });
    if (!decision.allowed) throw new RequestError(403, 'Forbidden', decision.reason);
    const key = q.get('key') ?? undefined;
    if (key !== undefined && key.length === 0)
      throw bad('query parameter key: must not be empty (leave it out for every entry)');
    if (key !== undefined && key.length > MAX_MEMO_KEY_LENGTH) {
      throw bad(
        `query parameter key: ${key.length} characters, more than a memoization key has (${MAX_MEMO_KEY_LENGTH})`,
      );
    }
    if (!clearing) {
      if (key === undefined) return this.send(res, 200, await this.o.source.memoList(namespace));
      return this.send(res, 200, refused(await this.o.source.memoEntry(namespace, key)).entry);
    }
    let deleted: number;
    try {
      deleted = await this.o.source.clearMemo(namespace, key);
    } catch (err) {
      // Leadership moved on between the request and the write: the new leader takes it.
      if (err instanceof FencedError)
        throw new RequestError(503, 'ServiceUnavailable', `this operator no longer leads: send again (${err.message})`);
      throw err;
    }
    this.log.info('Memoized outputs cleared', {
      namespace,
      ...(key !== undefined && { key: key.slice(0, 128) }),
      deleted,
      user: user.username,
    });
    const cleared: MemoCleared = {
      apiVersion: DATA_API_VERSION,
      kind: 'MemoCleared',
      metadata: { namespace },
      ...(key !== undefined && { key }),
      deleted,
    };
    return this.send(res, 200, cleared);
  }

  /** A workflow's list, or 404 when there is no such workflow. */
  private sendList(res: ServerResponse, workflow: string, list: object | undefined): void {
    if (!list) throw new RequestError(404, 'NotFound', `workflows.agentflow.io "${workflow}" not found`);
    this.send(res, 200, list);
  }

  /** A request body read by `read`, its refusals turned into Statuses. */
  private async body<T>(read: () => Promise<T>): Promise<T> {
    try {
      return await read();
    } catch (err) {
      if (!(err instanceof BodyError)) throw err;
      throw new RequestError(err.code, err.code === 413 ? 'RequestEntityTooLarge' : 'BadRequest', err.message);
    }
  }

  private async state(req: IncomingMessage, res: ServerResponse, scope: StateScope): Promise<void> {
    const state = this.o.source.sharedState(scope);
    if (!state) {
      const what =
        scope.kind === 'workflow'
          ? `workflows.agentflow.io "${scope.workflow}"`
          : scope.kind === 'pool'
            ? `agentpools.agentflow.io "${scope.pool}"`
            : `namespace "${scope.namespace}"`;
      throw new RequestError(404, 'NotFound', `${what} not found`);
    }
    const abort = new AbortController();
    this.streams.add(abort);
    res.on('close', () => abort.abort());
    try {
      await serveState(
        req,
        res,
        scope,
        state,
        () => this.o.source.fences(),
        (code, body) => this.send(res, code, body),
        abort.signal,
      );
    } catch (err) {
      if (err instanceof StateRequestError) throw new RequestError(err.code, err.reason, err.message);
      throw err;
    } finally {
      this.streams.delete(abort);
    }
  }

  private async logs(res: ServerResponse, namespace: string, workflow: string, q: URLSearchParams): Promise<void> {
    const task = q.get('task');
    if (!task) throw bad('query parameter task: required (which task instance to read the log of)');
    if (!TASK.test(task)) throw bad(`query parameter task: ${JSON.stringify(task)} is not a task name`);
    const rawAttempt = q.get('attempt');
    let attempt: number | undefined;
    if (rawAttempt !== null) {
      attempt = Number(rawAttempt);
      if (!Number.isInteger(attempt) || attempt < 1) {
        throw bad(`query parameter attempt: must be a whole number ≥ 1, not ${JSON.stringify(rawAttempt)}`);
      }
    }
    const query: LogQuery = {
      task,
      ...(attempt !== undefined && { attempt }),
      follow: parseBool(q, 'follow'),
      timestamps: parseBool(q, 'timestamps'),
      stream: parseBool(q, 'stream'),
    };
    if (query.stream && query.timestamps)
      throw bad('query parameter timestamps: not with stream=true (streamed output has no line times)');
    const abort = new AbortController();
    this.streams.add(abort);
    res.on('close', () => abort.abort());
    try {
      const write = (text: string) => {
        if (!res.headersSent) {
          res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8', 'X-Content-Type-Options': 'nosniff' });
          // A follower learns at once that it is following (an attempt that has logged nothing yet).
          res.flushHeaders();
        }
        if (text) res.write(text);
      };
      const outcome = await this.o.source.logs(namespace, workflow, query, write, abort.signal);
      if (outcome === 'no-workflow')
        throw new RequestError(404, 'NotFound', `workflows.agentflow.io "${workflow}" not found`);
      if (outcome === 'no-task') {
        throw new RequestError(
          404,
          'NotFound',
          `workflow "${workflow}" has no task "${task}"${attempt ? ` with an attempt ${attempt}` : ' that has started'}`,
        );
      }
      if (!res.headersSent) write('');
      // A followed answer ends cleanly only when the attempt is over; one cut short (the leader stops,
      // the client left) is cut, not ended, so a client never mistakes it for the end of the log.
      if (abort.signal.aborted) res.destroy();
      else res.end();
    } finally {
      this.streams.delete(abort);
    }
  }
}
