// The operator's Kubernetes transport. Credentials (credentials.ts) supply the
// server, TLS material and auth headers, resolved by @kubernetes/client-node
// from the kubeconfig; requests and watch streams go over node:https
// here, so that watches have timeouts and stall detection we control (the
// client's own Watch can hang forever on a half-dead TCP connection:
// kubernetes-client/javascript#596, #364) and so that every resource, status
// subresource and patch type is reachable the same way.
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent, type AgentOptions, request as httpsRequest } from 'node:https';
import type { KubeConfig } from '@kubernetes/client-node';
import { isKubeCredentials, type KubeCredentials, kubeConfigCredentials } from './credentials.ts';

export interface ResourceType {
  group: string;
  version: string;
  plural: string;
  kind: string;
  namespaced: boolean;
}

export const PODS: ResourceType = { group: '', version: 'v1', plural: 'pods', kind: 'Pod', namespaced: true };
export const NODES: ResourceType = { group: '', version: 'v1', plural: 'nodes', kind: 'Node', namespaced: false };
export const EVENTS: ResourceType = { group: '', version: 'v1', plural: 'events', kind: 'Event', namespaced: true };
export const AGENTPOOLS: ResourceType = {
  group: 'agentflow.io',
  version: 'v1alpha1',
  plural: 'agentpools',
  kind: 'AgentPool',
  namespaced: true,
};
export const WORKFLOWS: ResourceType = {
  group: 'agentflow.io',
  version: 'v1alpha1',
  plural: 'workflows',
  kind: 'Workflow',
  namespaced: true,
};

export const CRON_WORKFLOWS: ResourceType = {
  group: 'agentflow.io',
  version: 'v1alpha1',
  plural: 'cronworkflows',
  kind: 'CronWorkflow',
  namespaced: true,
};
export const WORKFLOW_TEMPLATES: ResourceType = {
  group: 'agentflow.io',
  version: 'v1alpha1',
  plural: 'workflowtemplates',
  kind: 'WorkflowTemplate',
  namespaced: true,
};

/** What every object has, loosely typed: timestamps arrive as strings, whatever the generated types say. */
export interface KObject {
  apiVersion?: string;
  kind?: string;
  metadata?: {
    name?: string;
    namespace?: string;
    uid?: string;
    resourceVersion?: string;
    generation?: number;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    finalizers?: string[];
    deletionTimestamp?: unknown;
  };
}

export const apiVersionOf = (rt: ResourceType) => (rt.group ? `${rt.group}/${rt.version}` : rt.version);

/** The REST path of a collection, an object or one of its subresources. */
export function resourcePath(
  rt: ResourceType,
  where: { namespace?: string | undefined; name?: string; subresource?: string } = {},
): string {
  let p = rt.group ? `/apis/${rt.group}/${rt.version}` : `/api/${rt.version}`;
  if (rt.namespaced && where.namespace) p += `/namespaces/${encodeURIComponent(where.namespace)}`;
  p += `/${rt.plural}`;
  if (where.name !== undefined) p += `/${encodeURIComponent(where.name)}`;
  if (where.subresource) p += `/${where.subresource}`;
  return p;
}

/** A Kubernetes API error: the HTTP status and the Status object's reason and message. */
export class KubeApiError extends Error {
  readonly status: number;
  readonly reason: string;
  readonly details: unknown;

  constructor(status: number, reason: string, message: string, details?: unknown) {
    super(message);
    this.name = 'KubeApiError';
    this.status = status;
    this.reason = reason;
    this.details = details;
  }
}

export const isNotFound = (e: unknown) => e instanceof KubeApiError && e.status === 404;
export const isConflict = (e: unknown) => e instanceof KubeApiError && e.status === 409;
export const isAlreadyExists = (e: unknown) =>
  e instanceof KubeApiError && e.status === 409 && e.reason === 'AlreadyExists';
export const isGone = (e: unknown) => e instanceof KubeApiError && e.status === 410;

/** Raised when a watch delivers nothing, not even a bookmark, for too long. */
export class WatchStalledError extends Error {
  constructor(path: string, ms: number) {
    super(`watch ${path} delivered nothing for ${Math.round(ms / 1000)} s; restarting it`);
    this.name = 'WatchStalledError';
  }
}

export interface WatchEvent<T> {
  type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';
  object: T;
}

export type Query = Record<string, string | number | boolean | undefined>;

export interface RequestOptions {
  query?: Query;
  body?: unknown;
  /** Default application/json; patches name their type. */
  contentType?: string;
  timeoutMs?: number;
  signal?: AbortSignal;
}

const AUTH_REFRESH_MS = 30_000;
const DEFAULT_TIMEOUT_MS = 30_000;

/** What a KubeClient is built from: resolved credentials, or a KubeConfig the caller loaded itself. */
export type KubeSource = KubeConfig | KubeCredentials;

export class KubeClient {
  readonly server: URL;
  private readonly credentials: KubeCredentials;
  private readonly userAgent: string;
  private agent: Agent | HttpAgent | undefined;
  /** http: servers (a local proxy, tests) get plain HTTP; everything else TLS. */
  private readonly send: typeof httpsRequest;
  private auth: { headers: Record<string, string>; at: number } | undefined;

  constructor(source: KubeSource, opts: { userAgent?: string } = {}) {
    this.credentials = isKubeCredentials(source) ? source : kubeConfigCredentials(source);
    this.server = this.credentials.server;
    this.userAgent = opts.userAgent ?? 'agentflow-operator';
    this.send = (this.server.protocol === 'http:' ? httpRequest : httpsRequest) as typeof httpsRequest;
  }

  close(): void {
    this.agent?.destroy();
    this.agent = undefined;
  }

  /** TLS material once, auth headers refreshed every 30 s (rotated service-account tokens, exec plugins). */
  private async prepare(): Promise<{ agent: Agent | HttpAgent; headers: Record<string, string> }> {
    if (!this.agent || !this.auth || Date.now() - this.auth.at > AUTH_REFRESH_MS) {
      const { tls, headers } = await this.credentials.authenticate();
      this.auth = { headers, at: Date.now() };
      if (!this.agent) {
        this.agent =
          this.server.protocol === 'http:'
            ? new HttpAgent({ keepAlive: true, maxSockets: 64 })
            : new Agent({ keepAlive: true, maxSockets: 64, ...tls } satisfies AgentOptions);
      }
    }
    return { agent: this.agent, headers: this.auth.headers };
  }

  private url(path: string, query?: Query): URL {
    const u = new URL(path, this.server);
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined) u.searchParams.set(k, String(v));
    return u;
  }

  async request<T = unknown>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    const { agent, headers } = await this.prepare();
    const url = this.url(path, opts.query);
    const payload = opts.body === undefined ? undefined : Buffer.from(JSON.stringify(opts.body));
    const what = `${method} ${url.pathname}`;
    return new Promise<T>((resolve, reject) => {
      const req = this.send(url, {
        method,
        agent: agent as Agent,
        headers: {
          ...headers,
          Accept: 'application/json',
          'User-Agent': this.userAgent,
          ...(payload && { 'Content-Type': opts.contentType ?? 'application/json', 'Content-Length': payload.length }),
        },
        timeout: opts.timeoutMs ?? DEFAULT_TIMEOUT_MS,
        ...(opts.signal && { signal: opts.signal }),
      });
      req.on('response', (res) => {
        readAll(res)
          .then((text) => {
            const status = res.statusCode ?? 0;
            let parsed: unknown;
            try {
              parsed = text ? JSON.parse(text) : undefined;
            } catch {
              parsed = text;
            }
            if (status >= 200 && status < 300) resolve(parsed as T);
            else reject(apiError(what, status, parsed, text));
          })
          .catch(reject);
      });
      req.on('timeout', () =>
        req.destroy(new Error(`${what}: no answer within ${opts.timeoutMs ?? DEFAULT_TIMEOUT_MS} ms`)),
      );
      req.on('error', (err) => reject(err.name === 'AbortError' ? err : new Error(`${what}: ${err.message}`)));
      req.end(payload);
    });
  }

  get<T>(path: string, query?: Query): Promise<T> {
    return this.request<T>('GET', path, query ? { query } : {});
  }

  create<T>(path: string, body: unknown, query?: Query): Promise<T> {
    return this.request<T>('POST', path, { body, ...(query && { query }) });
  }

  replace<T>(path: string, body: unknown): Promise<T> {
    return this.request<T>('PUT', path, { body });
  }

  mergePatch<T>(path: string, body: unknown): Promise<T> {
    return this.request<T>('PATCH', path, { body, contentType: 'application/merge-patch+json' });
  }

  jsonPatch<T>(path: string, ops: unknown[]): Promise<T> {
    return this.request<T>('PATCH', path, { body: ops, contentType: 'application/json-patch+json' });
  }

  delete<T>(path: string, body?: unknown): Promise<T> {
    return this.request<T>('DELETE', path, body === undefined ? {} : { body });
  }

  /**
   * A GET whose body the caller reads as it arrives (a followed log, text): resolves with the
   * response once the server answers 2xx, rejects with a KubeApiError otherwise. No timeout once
   * it has answered; the caller reads it to its end, or aborts the signal to stop.
   */
  async stream(
    path: string,
    opts: { query?: Query; accept?: string; signal?: AbortSignal; timeoutMs?: number } = {},
  ): Promise<IncomingMessage> {
    const { agent, headers } = await this.prepare();
    const url = this.url(path, opts.query);
    const what = `GET ${url.pathname}`;
    return new Promise<IncomingMessage>((resolve, reject) => {
      const req = this.send(url, {
        method: 'GET',
        agent: agent as Agent,
        headers: { ...headers, Accept: opts.accept ?? '*/*', 'User-Agent': this.userAgent },
        ...(opts.signal && { signal: opts.signal }),
      });
      const timer =
        opts.timeoutMs === undefined || opts.timeoutMs <= 0
          ? undefined
          : setTimeout(() => req.destroy(new Error(`${what}: no answer within ${opts.timeoutMs} ms`)), opts.timeoutMs);
      req.on('response', (res) => {
        clearTimeout(timer);
        const status = res.statusCode ?? 0;
        if (status >= 200 && status < 300) return resolve(res);
        readAll(res)
          .then((text) => {
            let parsed: unknown = text;
            try {
              parsed = JSON.parse(text);
            } catch {}
            reject(apiError(what, status, parsed, text));
          })
          .catch(reject);
      });
      req.on('error', (err) => {
        clearTimeout(timer);
        reject(err.name === 'AbortError' ? err : new Error(`${what}: ${err.message}`));
      });
      req.end();
    });
  }

  /**
   * Streams a watch until the server ends it (resolves), the signal aborts
   * (resolves), it fails (rejects), or nothing at all arrives for `stallMs`
   * (rejects with WatchStalledError). An ERROR event is handed to `onEvent`.
   */
  async watch<T>(
    path: string,
    query: Query,
    onEvent: (e: WatchEvent<T>) => void,
    opts: { signal?: AbortSignal; stallMs: number },
  ): Promise<void> {
    const { agent, headers } = await this.prepare();
    const url = this.url(path, { ...query, watch: true });
    const what = `watch ${url.pathname}`;
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const finish = (err?: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(stall);
        opts.signal?.removeEventListener('abort', onAbort);
        if (err) reject(err);
        else resolve();
      };
      const req = this.send(url, {
        method: 'GET',
        agent: agent as Agent,
        headers: { ...headers, Accept: 'application/json', 'User-Agent': this.userAgent },
      });
      let stall: NodeJS.Timeout = setTimeout(onStall, opts.stallMs);
      function onStall() {
        const err = new WatchStalledError(url.pathname, opts.stallMs);
        req.destroy(err);
        finish(err);
      }
      const alive = () => {
        clearTimeout(stall);
        stall = setTimeout(onStall, opts.stallMs);
      };
      const onAbort = () => {
        req.destroy();
        finish();
      };
      if (opts.signal?.aborted) return onAbort();
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      req.on('response', (res) => {
        if (res.statusCode !== 200) {
          readAll(res)
            .then((text) => {
              let parsed: unknown = text;
              try {
                parsed = JSON.parse(text);
              } catch {}
              finish(apiError(what, res.statusCode ?? 0, parsed, text));
            })
            .catch((err: Error) => finish(err));
          return;
        }
        let buf = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          alive();
          buf += chunk;
          for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
            const line = buf.slice(0, nl).trim();
            buf = buf.slice(nl + 1);
            if (!line) continue;
            let ev: WatchEvent<T>;
            try {
              ev = JSON.parse(line) as WatchEvent<T>;
            } catch (err) {
              req.destroy();
              finish(new Error(`${what}: undecodable event: ${(err as Error).message}`));
              return;
            }
            try {
              onEvent(ev);
            } catch (err) {
              // The consumer refused the event (e.g. an ERROR event): end this watch as failed.
              req.destroy();
              finish(err as Error);
              return;
            }
            if (settled) return;
          }
        });
        res.on('end', () => finish());
        res.on('error', (err) => finish(err));
        res.on('aborted', () => finish(new Error(`${what}: the server closed the stream mid-event`)));
      });
      req.on('error', (err) => finish(settled ? undefined : new Error(`${what}: ${err.message}`)));
      req.end();
    });
  }
}

function readAll(res: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    res.on('data', (c: Buffer) => chunks.push(c));
    res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    res.on('error', reject);
  });
}

function apiError(what: string, status: number, parsed: unknown, text: string): KubeApiError {
  const st = (typeof parsed === 'object' && parsed !== null ? parsed : {}) as {
    reason?: string;
    message?: string;
    details?: unknown;
  };
  return new KubeApiError(
    status,
    st.reason ?? String(status),
    `${what}: ${status} ${st.message ?? text.slice(0, 500)}`,
    st.details,
  );
}
