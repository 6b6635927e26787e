// A stand-in for the API server, over plain HTTP, for the CLI's unit tests: it
// serves Workflows and AgentPools (agentflow.io) and the data API's tasks, log
// and agents paths (src/api/data-api.ts) from the state the test sets, answers
// the namespace's memo cache (namespaces/<ns>/memo), a namespace marked forbidden with 403 Status
// bodies as the API server does,
// and records the requests it got. The e2e tests drive the CLI against the
// real control plane; this one makes exit codes and output checkable in milliseconds.
import { writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import {
  type AgentList,
  DATA_API_VERSION,
  DATA_GROUP,
  DATA_VERSION,
  type MemoItem,
  type TaskView,
} from '../../../src/api/data-api.ts';
import type { Workflow } from '../../../src/api/workflow.ts';

export interface Recorded {
  method: string;
  path: string;
  query: URLSearchParams;
  body?: unknown;
  /** The Authorization header. */
  auth?: string | undefined;
}

export interface FakeState {
  workflows: Map<string, Workflow>; // key ns/name
  templates: Map<string, unknown>; // key ns/name: WorkflowTemplates
  tasks: Map<string, TaskView[]>; // key ns/name
  /** key ns/name/task/attempt: the lines; `open` ones keep a followed stream open until closed. */
  logs: Map<string, { lines: string[]; open?: boolean }>;
  agents: Map<string, AgentList>; // key ns/pool
  memo: Map<string, MemoItem[]>; // key ns
  forbidden: Set<string>; // namespaces
  /** The data API answers 503 (APIService not available). */
  dataApiDown: boolean;
}

export class FakeCluster {
  readonly state: FakeState = {
    workflows: new Map(),
    templates: new Map(),
    tasks: new Map(),
    logs: new Map(),
    agents: new Map(),
    memo: new Map(),
    forbidden: new Set(),
    dataApiDown: false,
  };
  readonly requests: Recorded[] = [];
  /** Called on every request before it is answered: tests move the state along. */
  onRequest: ((r: Recorded) => void) | undefined;
  /** Answered for a PATCH: tests play the operator's answer. */
  onPatch: ((wf: Workflow) => void) | undefined;
  private server: Server | undefined;
  private readonly streams = new Set<ServerResponse>();

  async start(dir: string): Promise<string> {
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((err: Error) => {
        res.writeHead(500).end(err.message);
      });
    });
    await new Promise<void>((resolve) => this.server?.listen(0, '127.0.0.1', resolve));
    const port = (this.server.address() as AddressInfo).port;
    const kubeconfig = join(dir, 'kubeconfig');
    writeFileSync(
      kubeconfig,
      [
        'apiVersion: v1',
        'kind: Config',
        'clusters:',
        `- name: fake\n  cluster:\n    server: http://127.0.0.1:${port}`,
        'users:',
        '- name: alice\n  user:\n    token: alice-token',
        'contexts:',
        '- name: fake\n  context:\n    cluster: fake\n    user: alice\n    namespace: team-a',
        '- name: other\n  context:\n    cluster: fake\n    user: alice',
        'current-context: fake',
        '',
      ].join('\n'),
    );
    return kubeconfig;
  }

  async stop(): Promise<void> {
    for (const s of this.streams) s.end();
    await new Promise<void>((resolve) => {
      this.server?.close(() => resolve());
      this.server?.closeAllConnections();
    });
  }

  /** Ends followed log streams whose entry is no longer open. */
  flushStreams(): void {
    for (const s of this.streams) s.emit('agentflow:flush');
  }

  private send(res: ServerResponse, code: number, body: unknown) {
    res.writeHead(code, { 'Content-Type': 'application/json' }).end(JSON.stringify(body));
  }

  private status(res: ServerResponse, code: number, reason: string, message: string) {
    this.send(res, code, { apiVersion: 'v1', kind: 'Status', status: 'Failure', code, reason, message, metadata: {} });
  }

  private async handle(req: IncomingMessage, res: ServerResponse) {
    const url = new URL(req.url ?? '/', 'http://fake');
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    const r: Recorded = {
      method: req.method ?? 'GET',
      path: url.pathname,
      query: url.searchParams,
      auth: req.headers.authorization,
    };
    if (text) r.body = JSON.parse(text);
    this.requests.push(r);
    this.onRequest?.(r);
    const s = this.state;
    const t = /^\/apis\/agentflow\.io\/v1alpha1\/namespaces\/([^/]+)\/workflowtemplates\/([^/]+)$/.exec(url.pathname);
    if (t && req.method === 'GET') {
      const found = s.templates.get(`${t[1]}/${t[2]}`);
      if (!found) return this.status(res, 404, 'NotFound', `workflowtemplates.agentflow.io "${t[2]}" not found`);
      return this.send(res, 200, found);
    }
    let m = /^\/apis\/agentflow\.io\/v1alpha1\/(?:namespaces\/([^/]+)\/)?(workflows|agentpools)(?:\/([^/]+))?$/.exec(
      url.pathname,
    );
    if (m) {
      const [, ns, plural, name] = m;
      if (ns && s.forbidden.has(ns)) {
        const verb = req.method === 'POST' ? 'create' : req.method === 'PATCH' ? 'patch' : name ? 'get' : 'list';
        return this.status(
          res,
          403,
          'Forbidden',
          `${plural}.agentflow.io${name ? ` "${name}"` : ''} is forbidden: User "alice" cannot ${verb} resource "${plural}" in API group "agentflow.io" in the namespace "${ns}"`,
        );
      }
      if (plural === 'agentpools') {
        const items = [...s.agents.keys()]
          .filter((k) => k.startsWith(`${ns}/`))
          .map((k) => ({ metadata: { name: k.slice(k.indexOf('/') + 1), namespace: ns } }));
        return this.send(res, 200, { kind: 'AgentPoolList', items });
      }
      if (!name && req.method === 'GET') {
        const items = [...s.workflows.entries()].filter(([k]) => !ns || k.startsWith(`${ns}/`)).map(([, v]) => v);
        return this.send(res, 200, { apiVersion: 'agentflow.io/v1alpha1', kind: 'WorkflowList', items });
      }
      if (!name && req.method === 'POST') {
        const wf = structuredClone(r.body) as Workflow;
        const wfName = wf.metadata.name ?? `${(wf.metadata as { generateName?: string }).generateName}x7k2q`;
        wf.metadata = { ...wf.metadata, name: wfName, namespace: ns, creationTimestamp: new Date().toISOString() };
        s.workflows.set(`${ns}/${wfName}`, wf);
        return this.send(res, 201, wf);
      }
      const key = `${ns}/${name}`;
      const wf = s.workflows.get(key);
      if (!wf) return this.status(res, 404, 'NotFound', `workflows.agentflow.io "${name}" not found`);
      if (req.method === 'PATCH') {
        const patch = r.body as { metadata?: { annotations?: Record<string, string> }; spec?: object };
        wf.metadata.annotations = { ...wf.metadata.annotations, ...patch.metadata?.annotations };
        wf.spec = { ...wf.spec, ...patch.spec };
        this.onPatch?.(wf);
      }
      return this.send(res, 200, wf);
    }
    m = new RegExp(`^/apis/${DATA_GROUP}/${DATA_VERSION}/namespaces/([^/]+)/memo$`).exec(url.pathname);
    if (m) {
      const ns = m[1] as string;
      if (s.dataApiDown) return this.status(res, 503, 'ServiceUnavailable', 'service unavailable');
      const verb = req.method === 'DELETE' ? 'delete' : 'list';
      if (s.forbidden.has(ns)) {
        return this.status(
          res,
          403,
          'Forbidden',
          `workflows.agentflow.io is forbidden: User "alice" cannot ${verb} resource "workflows" in API group "agentflow.io" in the namespace "${ns}"`,
        );
      }
      const items = s.memo.get(ns) ?? [];
      const key = url.searchParams.get('key');
      if (req.method === 'GET') {
        return this.send(res, 200, {
          apiVersion: DATA_API_VERSION,
          kind: 'MemoList',
          metadata: { namespace: ns },
          items,
        });
      }
      const kept = items.filter((i) => key !== null && i.key !== key);
      s.memo.set(ns, kept);
      return this.send(res, 200, {
        apiVersion: DATA_API_VERSION,
        kind: 'MemoCleared',
        metadata: { namespace: ns },
        ...(key !== null && { key }),
        deleted: items.length - kept.length,
      });
    }
    m = new RegExp(
      `^/apis/${DATA_GROUP}/${DATA_VERSION}/namespaces/([^/]+)/(workflows|agentpools)/([^/]+)/(tasks|log|agents)$`,
    ).exec(url.pathname);
    if (m) {
      const [, ns, , name, sub] = m as unknown as [string, string, string, string, string];
      if (s.dataApiDown) return this.status(res, 503, 'ServiceUnavailable', 'service unavailable');
      if (s.forbidden.has(ns)) {
        return this.status(res, 403, 'Forbidden', `user "alice" may not get workflows "${name}" in namespace "${ns}"`);
      }
      if (sub === 'agents') {
        const list = s.agents.get(`${ns}/${name}`);
        if (!list) return this.status(res, 404, 'NotFound', `agentpools.agentflow.io "${name}" not found`);
        return this.send(res, 200, list);
      }
      const tasks = s.tasks.get(`${ns}/${name}`);
      if (!tasks) return this.status(res, 404, 'NotFound', `workflows.agentflow.io "${name}" not found`);
      const task = url.searchParams.get('task');
      if (sub === 'tasks') {
        const items = task === null ? tasks : tasks.filter((t) => t.name === task || t.template === task);
        if (task !== null && items.length === 0) {
          return this.status(res, 404, 'NotFound', `workflow "${name}" has no task "${task}"`);
        }
        return this.send(res, 200, {
          apiVersion: `${DATA_GROUP}/${DATA_VERSION}`,
          kind: 'WorkflowTaskList',
          metadata: { namespace: ns, name, phase: 'Running' },
          items,
        });
      }
      const view = tasks.find((t) => t.name === task);
      const attempt = Number(url.searchParams.get('attempt') ?? view?.attempt ?? 0);
      // Streamed output (stream=true) is kept under `<…>/<attempt>/stream`, its pieces sent as they are.
      const stream = url.searchParams.get('stream') === 'true';
      const log = s.logs.get(`${ns}/${name}/${task}/${attempt}${stream ? '/stream' : ''}`);
      if (!view || !log) return this.status(res, 404, 'NotFound', `workflow "${name}" has no task "${task}"`);
      res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8' });
      let sent = 0;
      const flush = () => {
        for (; sent < log.lines.length; sent++) res.write(stream ? log.lines[sent] : `${log.lines[sent]}\n`);
      };
      flush();
      if (url.searchParams.get('follow') !== 'true' || !log.open) return res.end();
      this.streams.add(res);
      res.on('agentflow:flush', () => {
        flush();
        if (!log.open) {
          this.streams.delete(res);
          res.end();
        }
      });
      return;
    }
    this.status(res, 404, 'NotFound', 'the server could not find the requested resource');
  }
}

/** A Workflow object as the API server would return it. */
export function workflow(name: string, ns: string, spec: Partial<Workflow['spec']>, status?: Workflow['status']) {
  return {
    apiVersion: 'agentflow.io/v1alpha1',
    kind: 'Workflow',
    metadata: {
      name,
      namespace: ns,
      uid: `uid-${name}`,
      creationTimestamp: new Date(Date.now() - 90_000).toISOString(),
    },
    spec: { pool: 'default', tasks: [], ...spec },
    ...(status && { status }),
  } as Workflow;
}

/** A task row of the data API. */
export function task(name: string, phase: string, more: Partial<TaskView> = {}): TaskView {
  const dot = /^(.+)\.(\d+)$/.exec(name);
  return {
    name,
    template: dot ? (dot[1] as string) : name,
    ...(dot && { index: Number(dot[2]) }),
    phase,
    attempt: phase === 'Pending' || phase === 'Queued' ? 0 : 1,
    handler: 'h',
    pool: 'default',
    attempts: [],
    ...more,
  };
}
