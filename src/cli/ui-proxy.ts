// `agentflow ui`: a local reverse proxy on 127.0.0.1 that lets a browser use
// the web UI with the user's own Kubernetes credentials, without ever holding
// them. The UI's files come from the operator (through the API server, under
// /apis/data.agentflow.io/v1alpha1/ui/), and so does everything it shows: the
// proxy adds the kubeconfig's credentials to each request and forwards it to
// the API server, which authenticates the user and applies RBAC as for kubectl.
//
// Security model (docs/ui.md): the proxy listens on loopback only and answers
// only requests that carry its per-session secret: the printed URL holds it as
// ?token=, the first request with it gets it back as an HttpOnly SameSite=Strict
// cookie (and a redirect that drops it from the address bar), every other
// request without that cookie gets 401. It forwards GETs of the paths the UI
// reads (ALLOWED below) and one write: a POST of an approval decision
// (DECISION_PATH), JSON of at most MAX_DECISION_BYTES, carrying the header
// UI_WRITE_HEADER (a cross-site page cannot send it without a CORS preflight,
// which the proxy never grants). So a page that somehow ran in it could decide
// an approval the user may decide, and nothing else: not write a Workflow, not
// read Secrets. A Host header other than the loopback address it listens on is
// refused (DNS rebinding).

import { spawn } from 'node:child_process';
import { randomBytes, timingSafeEqual } from 'node:crypto';
import {
  type ClientRequest,
  createServer,
  Agent as HttpAgent,
  request as httpRequest,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import type { AddressInfo } from 'node:net';
import { DATA_GROUP, UI_WRITE_HEADER, UI_WRITE_VALUE } from '../api/data-api.ts';
import { VERSION } from '../lib/version.ts';
import { UI_PATH } from '../operator/data-api/ui-assets.ts';
import { type KubeCredentials, kubeConfigCredentials } from '../operator/kube/credentials.ts';
import { CliError } from './user/errors.ts';
import { loadKubeConfig } from './user/kube.ts';

export interface UiProxyOptions {
  kubeconfig?: string;
  context?: string;
  /** The namespace the UI opens on; default the kubeconfig context's, else `default`. */
  namespace?: string;
  /** Default: a random free port. */
  port?: number;
  /** Open the URL in the user's browser. */
  open?: boolean;
  /** Where the proxy tells the user what it does (the URL first). */
  out: (line: string) => void;
  /** Aborting it closes the proxy. */
  signal?: AbortSignal;
}

export interface UiProxy {
  /** http://127.0.0.1:PORT/?token=SECRET */
  url: string;
  port: number;
  close(): Promise<void>;
}

/** What the proxy hands the page at /config.json. */
export interface UiConfig {
  namespace: string;
  context: string;
  server: string;
}

const HOST = '127.0.0.1';
/** Served by the proxy itself (not forwarded): the namespace and context the UI starts with. */
export const UI_CONFIG_PATH = '/config.json';
/** The cookie carrying the session secret; the port is part of its name, as cookies are per host, not per port. */
export const uiCookieName = (port: number) => `agentflow-ui-${port}`;
/** Auth headers are recomputed this often (rotated tokens, exec plugins), as KubeClient does. */
const AUTH_REFRESH_MS = 30_000;

/** GET paths the proxy forwards: the Workflow and AgentPool API, the data API (and the UI's files), the namespace list. */
const ALLOWED: readonly RegExp[] = [
  /^\/apis\/agentflow\.io\/v1alpha1\/namespaces\/[^/]+\/(workflows|agentpools)(\/[^/]+)?$/,
  new RegExp(`^/apis/${DATA_GROUP.replace(/\./g, '\\.')}/`),
  /^\/api\/v1\/namespaces$/,
];

/** The one path the proxy forwards a POST to: a decision on an approval task. */
const DECISION_PATH = new RegExp(
  `^/apis/${DATA_GROUP.replace(/\./g, '\\.')}/v1alpha1/namespaces/[^/]+/workflows/[^/]+/approval$`,
);
const MAX_DECISION_BYTES = 8 * 1024;

/** Whether the proxy forwards a POST of this path. */
export function isDecision(pathname: string): boolean {
  return DECISION_PATH.test(pathname);
}

/** Response headers that belong to one connection, or that the browser must not get from the API server. */
const DROPPED_RESPONSE_HEADERS = new Set([
  'connection',
  'keep-alive',
  'transfer-encoding',
  'upgrade',
  'proxy-authenticate',
  'proxy-connection',
  'te',
  'trailer',
  'set-cookie',
  'www-authenticate',
]);
/** Request headers the browser's request passes on (never its cookie: that is the proxy's secret). */
const FORWARDED_REQUEST_HEADERS = ['accept', 'if-none-match', 'if-modified-since', 'accept-language'] as const;

/**
 * Where a browser path goes upstream: the Kubernetes API (/api/..., /apis/...) as it is, anything
 * else is a file of the UI (`/` its page, `/main-<hash>.js` its script: the page loads them by
 * relative URLs), so the UI lives at the proxy's root.
 */
export function upstreamPath(pathname: string): string {
  return pathname.startsWith('/api/') || pathname.startsWith('/apis/') ? pathname : `${UI_PATH}${pathname}`;
}

/** Whether the proxy forwards a GET of this path. */
export function isForwarded(pathname: string): boolean {
  return ALLOWED.some((r) => r.test(pathname));
}

/** The value of cookie `name` in a Cookie header. */
export function cookieValue(header: string | undefined, name: string): string | undefined {
  for (const part of (header ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

function sameSecret(given: string | undefined, secret: Buffer): boolean {
  if (given === undefined) return false;
  const b = Buffer.from(given);
  return b.length === secret.length && timingSafeEqual(b, secret);
}

/** A Kubernetes Status, as the API server answers errors (the UI shows its message). */
function status(res: ServerResponse, code: number, reason: string, message: string): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = JSON.stringify({ kind: 'Status', apiVersion: 'v1', status: 'Failure', code, reason, message });
  res.writeHead(code, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(body),
    'Cache-Control': 'no-store',
  });
  res.end(body);
}

interface Upstream {
  server: URL;
  /** The agent (TLS material) and the auth headers of this moment. */
  prepare(): Promise<{ agent: HttpAgent | HttpsAgent; headers: Record<string, string> }>;
  close(): void;
}

function upstreamOf(credentials: KubeCredentials): Upstream {
  const { server } = credentials;
  let agent: HttpAgent | HttpsAgent | undefined;
  let auth: { headers: Record<string, string>; at: number } | undefined;
  return {
    server,
    async prepare() {
      if (!agent || !auth || Date.now() - auth.at > AUTH_REFRESH_MS) {
        const { tls, headers } = await credentials.authenticate();
        auth = { headers, at: Date.now() };
        agent ??=
          server.protocol === 'http:'
            ? new HttpAgent({ keepAlive: true, maxSockets: 32 })
            : new HttpsAgent({ keepAlive: true, maxSockets: 32, ...tls });
      }
      return { agent, headers: auth.headers };
    },
    close() {
      agent?.destroy();
    },
  };
}

/**
 * Starts the proxy for the kubeconfig's current (or `context`) cluster and user, prints its
 * URL with `out`, and resolves once it listens. Errors that the user can fix (kubeconfig,
 * port in use) are CliErrors.
 */
export async function runUiProxy(opts: UiProxyOptions): Promise<UiProxy> {
  const { kc, namespace } = await loadKubeConfig({
    ...(opts.kubeconfig !== undefined && { kubeconfig: opts.kubeconfig }),
    ...(opts.context !== undefined && { context: opts.context }),
    ...(opts.namespace !== undefined && { namespace: opts.namespace }),
  });
  const upstream = upstreamOf(kubeConfigCredentials(kc));
  // Fail now, not at the first click, when the credentials cannot be computed (unreadable files, a failing plugin).
  try {
    await upstream.prepare();
  } catch (err) {
    throw new CliError(`cannot use the kubeconfig's credentials: ${(err as Error).message}`);
  }
  const config: UiConfig = { namespace, context: kc.getCurrentContext(), server: upstream.server.origin };
  const secret = randomBytes(32).toString('base64url');
  const secretBytes = Buffer.from(secret);
  const inFlight = new Set<ClientRequest>();
  let port = 0;

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((err: Error) => status(res, 500, 'InternalError', `the UI proxy failed: ${err.message}`));
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const host = req.headers.host ?? '';
    if (host !== `${HOST}:${port}` && host !== `localhost:${port}` && host !== `[::1]:${port}`) {
      return status(res, 403, 'Forbidden', `the agentflow UI proxy answers only to ${HOST}:${port}, not ${host}`);
    }
    const url = new URL(req.url ?? '/', `http://${HOST}:${port}`);
    const cookieName = uiCookieName(port);
    const token = url.searchParams.get('token');
    if (token !== null) {
      if (!sameSecret(token, secretBytes)) return unauthorized(res);
      // Into a cookie, and out of the address bar (and so out of the history and any Referer).
      url.searchParams.delete('token');
      res.writeHead(303, {
        'Set-Cookie': `${cookieName}=${secret}; Path=/; HttpOnly; SameSite=Strict`,
        Location: `${url.pathname}${url.search}`,
        'Cache-Control': 'no-store',
        'Content-Length': 0,
      });
      res.end();
      return;
    }
    if (!sameSecret(cookieValue(req.headers.cookie, cookieName), secretBytes)) return unauthorized(res);
    if (req.method === 'POST') return decision(req, res, url);
    if (req.method !== 'GET') {
      return status(
        res,
        405,
        'MethodNotAllowed',
        `the agentflow UI proxy forwards GET requests, and POSTs of approval decisions, not ${req.method}`,
      );
    }
    if (url.pathname === UI_CONFIG_PATH) {
      const body = JSON.stringify(config);
      res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' });
      res.end(body);
      return;
    }
    const path = upstreamPath(url.pathname);
    if (!isForwarded(path)) {
      return status(
        res,
        403,
        'Forbidden',
        `the agentflow UI proxy does not forward ${path}: only workflows, agentpools, the ${DATA_GROUP} API and the namespace list`,
      );
    }
    await forward(req, res, `${path}${url.search}`);
  }

  /** The proxy's one write: an approval decision, checked before it goes anywhere. */
  async function decision(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    if (!isDecision(url.pathname) || url.search !== '') {
      return status(res, 403, 'Forbidden', `the agentflow UI proxy forwards no POST to ${url.pathname}`);
    }
    if (req.headers[UI_WRITE_HEADER] !== UI_WRITE_VALUE) {
      return status(res, 403, 'Forbidden', `a decision must carry the header ${UI_WRITE_HEADER}: ${UI_WRITE_VALUE}`);
    }
    if (!String(req.headers['content-type'] ?? '').startsWith('application/json')) {
      return status(res, 415, 'UnsupportedMediaType', 'a decision is JSON (Content-Type: application/json)');
    }
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of req) {
      size += (c as Buffer).length;
      if (size > MAX_DECISION_BYTES) {
        return status(res, 413, 'RequestEntityTooLarge', `a decision is at most ${MAX_DECISION_BYTES} bytes`);
      }
      chunks.push(c as Buffer);
    }
    await forward(req, res, url.pathname, { method: 'POST', body: Buffer.concat(chunks) });
  }

  async function forward(
    req: IncomingMessage,
    res: ServerResponse,
    pathAndQuery: string,
    write?: { method: 'POST'; body: Buffer },
  ): Promise<void> {
    const { agent, headers: auth } = await upstream.prepare();
    const headers: Record<string, string> = { ...auth, 'User-Agent': `agentflow-ui/${VERSION}` };
    if (write) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = String(write.body.length);
    }
    for (const h of FORWARDED_REQUEST_HEADERS) {
      const v = req.headers[h];
      if (typeof v === 'string') headers[h] = v;
    }
    const target = new URL(pathAndQuery, upstream.server);
    const send = upstream.server.protocol === 'http:' ? httpRequest : httpsRequest;
    const up = send(target, { method: write?.method ?? 'GET', agent, headers });
    inFlight.add(up);
    // The browser went away (a closed pane ends a followed log): end the upstream request too.
    res.on('close', () => {
      inFlight.delete(up);
      if (!res.writableFinished) up.destroy();
    });
    up.on('response', (answer) => {
      res.writeHead(answer.statusCode ?? 502, responseHeaders(answer.headers));
      // Streams (watches, followed logs) go out as they come: nothing is buffered here.
      res.flushHeaders();
      answer.on('data', (chunk: Buffer) => res.write(chunk));
      answer.on('end', () => res.end());
      answer.on('error', () => res.destroy());
      answer.on('aborted', () => res.destroy());
    });
    up.on('error', (err) => {
      if (res.destroyed) return;
      status(
        res,
        502,
        'ServiceUnavailable',
        `cannot reach the Kubernetes API server ${upstream.server.origin}: ${err.message}`,
      );
    });
    up.end(write?.body);
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      reject(
        new CliError(
          err.code === 'EADDRINUSE'
            ? `--port ${opts.port}: the port is in use on ${HOST}`
            : `cannot listen on ${HOST}:${opts.port ?? 0}: ${err.message}`,
        ),
      );
    });
    server.listen(opts.port ?? 0, HOST, () => resolve());
  });
  port = (server.address() as AddressInfo).port;
  const url = `http://${HOST}:${port}/?token=${secret}`;

  let closed: Promise<void> | undefined;
  const close = () => {
    closed ??= new Promise<void>((resolve) => {
      opts.signal?.removeEventListener('abort', onAbort);
      for (const r of inFlight) r.destroy();
      server.close(() => resolve());
      server.closeAllConnections();
      upstream.close();
    });
    return closed;
  };
  const onAbort = () => {
    void close();
  };
  if (opts.signal?.aborted) onAbort();
  else opts.signal?.addEventListener('abort', onAbort, { once: true });

  opts.out(`agentflow UI for context "${config.context}" (namespace ${namespace}): ${url}`);
  opts.out(
    'The address holds a secret that lets its holder act as you in the cluster: keep it to yourself. Ctrl-C stops the proxy.',
  );
  if (opts.open) openBrowser(url, opts.out);
  return { url, port, close };
}

function responseHeaders(h: IncomingHttpHeaders): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(h)) {
    if (v !== undefined && !DROPPED_RESPONSE_HEADERS.has(k)) out[k] = v;
  }
  return out;
}

function unauthorized(res: ServerResponse): void {
  const body =
    'agentflow ui: this address needs the secret the `agentflow ui` command printed: open the full URL it printed (…/?token=…).\n';
  res.writeHead(401, {
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
    'Cache-Control': 'no-store',
  });
  res.end(body);
}

/** The platform's "open this URL" command; a failure only says so. */
function openBrowser(url: string, out: (line: string) => void): void {
  const [cmd, args] =
    process.platform === 'darwin'
      ? ['open', [url]]
      : process.platform === 'win32'
        ? ['cmd', ['/c', 'start', '""', url]]
        : ['xdg-open', [url]];
  const child = spawn(cmd, args as string[], { stdio: 'ignore', detached: true });
  child.on('error', (err) => out(`could not open a browser (${cmd}: ${err.message}): open the address above yourself`));
  child.unref();
}
