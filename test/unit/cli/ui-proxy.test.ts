import 'reflect-metadata';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import {
  createServer as createHttpServer,
  type IncomingMessage,
  request,
  type Server,
  type ServerResponse,
} from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { runUiProxy, type UiProxy, uiCookieName } from '../../../src/cli/ui-proxy.ts';
import { CliError } from '../../../src/cli/user/errors.ts';
import { UI_PATH, UiAssets } from '../../../src/operator/data-api/ui-assets.ts';
import { createCa, issueServingCert, parseSans } from '../../../src/operator/tls/certs.ts';

// The `agentflow ui` proxy against a stand-in API server (plain HTTP, and HTTPS with its own CA):
// who gets through (the session token, then its cookie), what it forwards and with which
// credentials, and that streams pass through as they come.

interface Seen {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
}

const dir = mkdtempSync(join(tmpdir(), 'ui-proxy-'));
const seen: Seen[] = [];
/** Streams released by the test: one line now, the next when `release` is called. */
let release: (() => void) | undefined;
let upstreamClosed: Promise<void> | undefined;

function upstreamHandler(req: IncomingMessage, res: ServerResponse): void {
  seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers });
  const url = new URL(req.url ?? '/', 'http://x');
  if (url.pathname === `${UI_PATH}/`) {
    res.writeHead(200, { 'Content-Type': 'text/html', 'Set-Cookie': 'upstream=1' });
    res.end('<p>the UI page</p>');
  } else if (url.pathname.endsWith('/log')) {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.write('line 1\n');
    upstreamClosed = new Promise((resolve) => res.on('close', () => resolve()));
    release = () => res.end('line 2\n');
  } else if (url.pathname === '/apis/agentflow.io/v1alpha1/namespaces/ns1/workflows') {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ kind: 'WorkflowList', items: [] }));
  } else {
    res.writeHead(404, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ kind: 'Status', code: 404, message: 'not here' }));
  }
}

function listen(server: Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
}

function kubeconfig(name: string, server: string, ca?: string): string {
  const path = join(dir, `${name}.kubeconfig`);
  const cluster = { server, ...(ca && { 'certificate-authority-data': Buffer.from(ca).toString('base64') }) };
  writeFileSync(
    path,
    stringify({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'c', cluster }],
      users: [{ name: 'u', user: { token: 'tok-123' } }],
      contexts: [
        { name: 'ctx1', context: { cluster: 'c', user: 'u', namespace: 'ns1' } },
        { name: 'ctx2', context: { cluster: 'c', user: 'u', namespace: 'ns2' } },
      ],
      'current-context': 'ctx1',
    }),
  );
  return path;
}

interface Answer {
  status: number;
  headers: IncomingMessage['headers'];
  body: string;
}

function call(
  port: number,
  path: string,
  o: { method?: string; headers?: Record<string, string>; host?: string; body?: string } = {},
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port,
        path,
        method: o.method ?? 'GET',
        headers: { Host: o.host ?? `127.0.0.1:${port}`, ...o.headers },
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          body += c;
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      },
    );
    req.on('error', reject);
    req.end(o.body);
  });
}

let http: Server;
let httpPort: number;
const proxies: UiProxy[] = [];

async function start(opts: Partial<Parameters<typeof runUiProxy>[0]> = {}) {
  const lines: string[] = [];
  const proxy = await runUiProxy({
    kubeconfig: kubeconfig('http', `http://127.0.0.1:${httpPort}`),
    out: (l) => lines.push(l),
    ...opts,
  });
  proxies.push(proxy);
  const token = new URL(proxy.url).searchParams.get('token') ?? '';
  return { proxy, lines, token, cookie: `${uiCookieName(proxy.port)}=${token}` };
}

beforeAll(async () => {
  http = createHttpServer(upstreamHandler);
  httpPort = await listen(http);
});

afterEach(async () => {
  await Promise.all(proxies.splice(0).map((p) => p.close()));
  seen.length = 0;
});

afterAll(async () => {
  http.closeAllConnections();
  await new Promise((r) => http.close(r));
  rmSync(dir, { recursive: true, force: true });
});

describe('agentflow ui proxy', () => {
  it('prints a loopback URL with a random session token and listens there', async () => {
    const { proxy, lines, token } = await start();
    expect(proxy.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/\?token=[A-Za-z0-9_-]{43}$/);
    expect(new URL(proxy.url).port).toBe(String(proxy.port));
    expect(lines[0]).toContain(proxy.url);
    expect(lines[0]).toContain('context "ctx1"');
    const other = await start();
    expect(other.token).not.toBe(token);
    expect(other.proxy.port).not.toBe(proxy.port);
  });

  it('answers 401 to any request without the token or its cookie, and forwards nothing', async () => {
    const { proxy, token } = await start();
    for (const path of ['/', '/apis/agentflow.io/v1alpha1/namespaces/ns1/workflows', '/config.json']) {
      const r = await call(proxy.port, path);
      expect(r.status, path).toBe(401);
      expect(r.body).toContain('open the full URL it printed');
    }
    expect((await call(proxy.port, '/?token=wrong')).status).toBe(401);
    expect((await call(proxy.port, `/?token=${token}x`)).status).toBe(401);
    const badCookie = await call(proxy.port, '/', {
      headers: { Cookie: `${uiCookieName(proxy.port)}=${token.slice(1)}` },
    });
    expect(badCookie.status).toBe(401);
    // Another session's cookie (another port) does not open this one.
    expect((await call(proxy.port, '/', { headers: { Cookie: `agentflow-ui-1=${token}` } })).status).toBe(401);
    expect(seen).toEqual([]);
  });

  it('trades the token for an HttpOnly SameSite=Strict cookie and drops it from the address', async () => {
    const { proxy, token, cookie } = await start();
    const r = await call(proxy.port, `/?token=${token}&namespace=ns9`);
    expect(r.status).toBe(303);
    expect(r.headers.location).toBe('/?namespace=ns9');
    const set = r.headers['set-cookie']?.[0] ?? '';
    expect(set.split(';')[0]).toBe(cookie);
    expect(set).toMatch(/; HttpOnly/);
    expect(set).toMatch(/; SameSite=Strict/);
    expect(set).toMatch(/; Path=\//);
    expect(seen).toEqual([]);
  });

  it('maps / and what is not the Kubernetes API to the UI served by the API server, with the kubeconfig credentials and without the cookie', async () => {
    const { proxy, cookie } = await start();
    const r = await call(proxy.port, '/', { headers: { Cookie: cookie, Accept: 'text/html' } });
    expect(r.status).toBe(200);
    expect(r.body).toBe('<p>the UI page</p>');
    expect(r.headers['set-cookie'], 'cookies from upstream are not passed on').toBeUndefined();
    expect(seen).toHaveLength(1);
    expect(seen[0]?.url).toBe(`${UI_PATH}/`);
    expect(seen[0]?.headers.authorization).toBe('Bearer tok-123');
    expect(seen[0]?.headers.cookie).toBeUndefined();
    expect(seen[0]?.headers.accept).toBe('text/html');
    // The page's files, by relative URL from /, are the UI's files upstream.
    await call(proxy.port, '/main-ABCD2345.js', { headers: { Cookie: cookie } });
    expect(seen.at(-1)?.url).toBe(`${UI_PATH}/main-ABCD2345.js`);
    seen.splice(1);
    const api = await call(
      proxy.port,
      '/apis/agentflow.io/v1alpha1/namespaces/ns1/workflows?watch=true&resourceVersion=7',
      {
        headers: { Cookie: cookie },
      },
    );
    expect(api.status).toBe(200);
    expect(JSON.parse(api.body)).toEqual({ kind: 'WorkflowList', items: [] });
    expect(seen[1]?.url).toBe('/apis/agentflow.io/v1alpha1/namespaces/ns1/workflows?watch=true&resourceVersion=7');
    // The API server's own errors reach the page as they are.
    const missing = await call(proxy.port, '/apis/data.agentflow.io/v1alpha1/nothing', { headers: { Cookie: cookie } });
    expect(missing.status).toBe(404);
    expect(JSON.parse(missing.body).message).toBe('not here');
  });

  it('serves the namespace and context it starts in as /config.json', async () => {
    const a = await start();
    const ca = await call(a.proxy.port, '/config.json', { headers: { Cookie: a.cookie } });
    expect(JSON.parse(ca.body)).toEqual({ namespace: 'ns1', context: 'ctx1', server: `http://127.0.0.1:${httpPort}` });
    const b = await start({ context: 'ctx2' });
    expect(
      JSON.parse((await call(b.proxy.port, '/config.json', { headers: { Cookie: b.cookie } })).body),
    ).toMatchObject({
      namespace: 'ns2',
      context: 'ctx2',
    });
    const c = await start({ context: 'ctx2', namespace: 'team-a' });
    expect(
      JSON.parse((await call(c.proxy.port, '/config.json', { headers: { Cookie: c.cookie } })).body),
    ).toMatchObject({
      namespace: 'team-a',
    });
    expect(seen).toEqual([]);
  });

  it('forwards only GETs of what the UI reads, and POSTs of approval decisions', async () => {
    const { proxy, cookie } = await start();
    const put = await call(proxy.port, '/apis/agentflow.io/v1alpha1/namespaces/ns1/workflows/wf', {
      method: 'PUT',
      headers: { Cookie: cookie },
    });
    expect(put.status).toBe(405);
    expect(JSON.parse(put.body).message).toContain('GET requests, and POSTs of approval decisions');
    const json = { Cookie: cookie, 'Content-Type': 'application/json', 'X-Agentflow-UI': 'decide' };
    const decision = '/apis/data.agentflow.io/v1alpha1/namespaces/ns1/workflows/wf/approval';
    const refusals: [string, Record<string, string>, number, string][] = [
      ['/apis/agentflow.io/v1alpha1/namespaces/ns1/workflows', json, 403, 'forwards no POST'],
      ['/apis/data.agentflow.io/v1alpha1/namespaces/ns1/workflows/wf/signal', json, 403, 'forwards no POST'],
      [decision, { Cookie: cookie, 'Content-Type': 'application/json' }, 403, 'x-agentflow-ui'],
      [decision, { ...json, 'Content-Type': 'text/plain' }, 415, 'is JSON'],
    ];
    for (const [path, headers, code, says] of refusals) {
      const r = await call(proxy.port, path, { method: 'POST', headers, body: '{}' });
      expect(r.status, `${path} ${JSON.stringify(headers)}`).toBe(code);
      expect(JSON.parse(r.body).message).toContain(says);
    }
    const big = await call(proxy.port, decision, { method: 'POST', headers: json, body: 'x'.repeat(9000) });
    expect(big.status).toBe(413);
    expect(seen).toEqual([]);
    // The one write goes through, with its body, and without the browser's cookie.
    const body = '{"task":"review","decision":"Approve"}';
    await call(proxy.port, decision, { method: 'POST', headers: json, body });
    expect(seen.map((x) => [x.method, x.url])).toEqual([['POST', decision]]);
    expect(seen[0]?.headers.cookie).toBeUndefined();
    expect(seen[0]?.headers['content-length']).toBe(String(body.length));
    seen.length = 0;
    for (const path of [
      '/api/v1/namespaces/ns1/secrets',
      '/api/v1/namespaces/ns1/pods/p/exec',
      '/apis/rbac.authorization.k8s.io/v1/clusterroles',
      '/apis/agentflow.io/v1alpha1/namespaces/ns1/workflows/wf/status/extra',
    ]) {
      const r = await call(proxy.port, path, { headers: { Cookie: cookie } });
      expect(r.status, path).toBe(403);
      expect(JSON.parse(r.body).message).toContain('does not forward');
    }
    expect(seen).toEqual([]);
  });

  it('refuses a Host other than its loopback address (DNS rebinding)', async () => {
    const { proxy, cookie } = await start();
    const r = await call(proxy.port, '/', { headers: { Cookie: cookie }, host: `evil.example:${proxy.port}` });
    expect(r.status).toBe(403);
    expect((await call(proxy.port, '/', { headers: { Cookie: cookie }, host: `localhost:${proxy.port}` })).status).toBe(
      200,
    );
  });

  it('passes a streamed answer through as it comes, and ends it upstream when the browser leaves', async () => {
    const { proxy, cookie } = await start();
    const path = '/apis/data.agentflow.io/v1alpha1/namespaces/ns1/workflows/wf/log?task=t&follow=true';
    const chunks: string[] = [];
    const done = new Promise<void>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port: proxy.port, path, headers: { Cookie: cookie } }, (res) => {
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          chunks.push(c);
          if (chunks.length === 1) {
            // The first line is here while the upstream answer is still open.
            expect(c).toBe('line 1\n');
            release?.();
          }
        });
        res.on('end', () => resolve());
      });
      req.on('error', reject);
      req.end();
    });
    await done;
    expect(chunks.join('')).toBe('line 1\nline 2\n');

    // A browser that goes away mid-stream closes the upstream request (the follow ends there too).
    release = undefined;
    await new Promise<void>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port: proxy.port, path, headers: { Cookie: cookie } }, (res) => {
        res.once('data', () => {
          req.destroy();
          resolve();
        });
      });
      req.on('error', (e: NodeJS.ErrnoException) => (e.code === 'ECONNRESET' ? undefined : reject(e)));
      req.end();
    });
    await upstreamClosed;
  });

  it('says which API server it cannot reach', async () => {
    const dead = createHttpServer();
    const port = await listen(dead);
    await new Promise((r) => dead.close(r));
    const { proxy, cookie } = await start({ kubeconfig: kubeconfig('dead', `http://127.0.0.1:${port}`) });
    const r = await call(proxy.port, '/', { headers: { Cookie: cookie } });
    expect(r.status).toBe(502);
    expect(JSON.parse(r.body).message).toContain(`cannot reach the Kubernetes API server http://127.0.0.1:${port}`);
  });

  it('talks TLS to an API server with the kubeconfig CA', async () => {
    const ca = await createCa({ validitySeconds: 3600 });
    const cert = await issueServingCert(ca, { sans: parseSans(['127.0.0.1']), validitySeconds: 3600 });
    const https = createHttpsServer({ cert: cert.certPem, key: cert.keyPem }, upstreamHandler);
    const port = await listen(https);
    try {
      const { proxy, cookie } = await start({ kubeconfig: kubeconfig('tls', `https://127.0.0.1:${port}`, ca.certPem) });
      const r = await call(proxy.port, '/', { headers: { Cookie: cookie } });
      expect(r.status).toBe(200);
      expect(r.body).toBe('<p>the UI page</p>');
      expect(seen[0]?.headers.authorization).toBe('Bearer tok-123');
      // Without the CA the API server is not trusted.
      const other = await start({ kubeconfig: kubeconfig('tls-noca', `https://127.0.0.1:${port}`) });
      const refused = await call(other.proxy.port, '/', { headers: { Cookie: other.cookie } });
      expect(refused.status).toBe(502);
    } finally {
      https.closeAllConnections();
      await new Promise((r) => https.close(r));
    }
  });

  it('explains a port in use, an unknown context, and stops when its signal aborts', async () => {
    const { proxy } = await start();
    const inUse = await start({ port: proxy.port }).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(inUse).toBeInstanceOf(CliError);
    expect(inUse?.message).toBe(`--port ${proxy.port}: the port is in use on 127.0.0.1`);
    const noCtx = await start({ context: 'nope' }).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(noCtx).toBeInstanceOf(CliError);
    expect(noCtx?.message).toContain('--context "nope"');

    const ac = new AbortController();
    const s = await start({ signal: ac.signal });
    expect((await call(s.proxy.port, '/', { headers: { Cookie: s.cookie } })).status).toBe(200);
    ac.abort();
    await s.proxy.close();
    const after = await call(s.proxy.port, '/').then(
      () => 'answered',
      (e: NodeJS.ErrnoException) => e.code,
    );
    expect(after).toBe('ECONNREFUSED');
  });
});

describe('the UI files the data API serves', () => {
  it('answers 503 naming the build command when ui/dist is missing', () => {
    const ui = new UiAssets(join(dir, 'no-such-dist'));
    const a = ui.answer(`${UI_PATH}/`, undefined);
    expect(a.status).toBe(503);
    expect(String(a.body)).toContain('UI not built: run npm run build:ui');
  });

  it('serves the bundle with its content types, caches hashed files for good and the page never', () => {
    const dist = join(dir, 'dist');
    mkdirSync(dist, { recursive: true });
    writeFileSync(join(dist, 'index.html'), '<!doctype html><title>agentflow</title>');
    writeFileSync(join(dist, 'main-ABCD2345.js'), 'console.log(1)');
    writeFileSync(join(dist, 'main-ABCD2345.js.map'), '{}');
    writeFileSync(join(dist, 'main-WXYZ6789.css'), 'body{}');
    const ui = new UiAssets(dist);
    expect(ui.answer(UI_PATH, undefined)).toMatchObject({ status: 301, headers: { Location: `${UI_PATH}/` } });
    const page = ui.answer(`${UI_PATH}/`, undefined);
    expect(page.status).toBe(200);
    expect(page.headers).toMatchObject({ 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-cache' });
    expect(String(page.headers['Content-Security-Policy'])).toContain("script-src 'self'");
    expect(String(page.body)).toContain('<title>agentflow</title>');
    const js = ui.answer(`${UI_PATH}/main-ABCD2345.js`, undefined);
    expect(js.headers).toMatchObject({
      'Content-Type': 'text/javascript; charset=utf-8',
      'Cache-Control': 'public, max-age=31536000, immutable',
    });
    expect(ui.answer(`${UI_PATH}/main-ABCD2345.js.map`, undefined).headers['Cache-Control']).toContain('immutable');
    expect(ui.answer(`${UI_PATH}/main-WXYZ6789.css`, undefined).headers['Content-Type']).toBe(
      'text/css; charset=utf-8',
    );
    // A client-side route gets the page; a file the bundle does not have is a 404.
    expect(String(ui.answer(`${UI_PATH}/workflows`, undefined).body)).toContain('<title>agentflow</title>');
    expect(ui.answer(`${UI_PATH}/other-ABCD2345.js`, undefined).status).toBe(404);
    expect(ui.answer(`${UI_PATH}/../../secret.js`, undefined).status).toBe(404);
    // Revalidation of the page costs no body.
    expect(ui.answer(`${UI_PATH}/`, String(page.headers.ETag))).toMatchObject({ status: 304, body: '' });
  });
});
