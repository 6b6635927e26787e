// The operations port: /healthz and /readyz for the kubelet's probes, /metrics
// for Prometheus. Health output follows kube-apiserver: "ok" when every check
// passes, otherwise 503 with one `[+]name ok` / `[-]name failed: reason` line
// per check; `?verbose` lists the checks on success too, `?exclude=name` skips
// one, and `/healthz/<name>` runs a single check.

import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { type Logger, silentLogger } from './log.ts';
import type { Registry } from './metrics.ts';

/** Passes with `true`; fails with `false`, a string (the reason), a throw, or by outliving the timeout. */
export type HealthCheck = () => boolean | string | Promise<boolean | string>;

export interface OpsServerOptions {
  /** Interface to bind (default: all). */
  host?: string;
  /** 0 picks a free port; the returned server reports the real one. */
  port: number;
  registry: Registry;
  checks: { healthz: Record<string, HealthCheck>; readyz: Record<string, HealthCheck> };
  logger?: Logger;
  /** A check still pending after this long fails (default 5000 ms, above the kubelet's 1 s probe timeout). */
  checkTimeoutMs?: number;
}

export interface OpsServer {
  readonly port: number;
  /** Stops listening and ends every connection, keep-alive ones included. Idempotent. */
  close(): Promise<void>;
}

const TEXT = 'text/plain; charset=utf-8';

interface CheckResult {
  name: string;
  /** undefined when the check passed. */
  failure: string | undefined;
}

export async function startOpsServer(opts: OpsServerOptions): Promise<OpsServer> {
  const log = (opts.logger ?? silentLogger).with({ component: 'ops-server' });
  const timeoutMs = opts.checkTimeoutMs ?? 5_000;
  // Last outcome per endpoint/check, so a failing probe logs once, not every period.
  const failing = new Map<string, boolean>();

  const runChecks = async (endpoint: string, checks: Record<string, HealthCheck>, names: string[]) => {
    const results = await Promise.all(
      names.map(async (name): Promise<CheckResult> => {
        const check = checks[name];
        const failure = check ? await runCheck(check, timeoutMs) : 'no such check';
        const key = `${endpoint}/${name}`;
        if (failure !== undefined && failing.get(key) !== true) {
          log.warn('Health check failed', { endpoint, check: name, reason: failure });
        } else if (failure === undefined && failing.get(key) === true) {
          log.info('Health check recovered', { endpoint, check: name });
        }
        failing.set(key, failure !== undefined);
        return { name, failure };
      }),
    );
    return results;
  };

  const health = async (endpoint: 'healthz' | 'readyz', rest: string, url: URL, res: ServerResponse) => {
    const checks = opts.checks[endpoint];
    if (rest !== '') {
      // /healthz/<name>: one check, as kube-apiserver offers.
      if (!Object.hasOwn(checks, rest)) return send(res, 404, `${endpoint} check "${rest}" not found\n`);
      const [result] = await runChecks(endpoint, checks, [rest]);
      return result?.failure === undefined ? send(res, 200, 'ok') : send(res, 503, `${line(result)}\n`);
    }
    const excluded = new Set(url.searchParams.getAll('exclude'));
    const results = await runChecks(
      endpoint,
      checks,
      Object.keys(checks).filter((name) => !excluded.has(name)),
    );
    const ok = results.every((r) => r.failure === undefined);
    if (ok && !url.searchParams.has('verbose')) return send(res, 200, 'ok');
    const lines = results.map(line);
    for (const name of excluded) if (Object.hasOwn(checks, name)) lines.push(`[+]${name} excluded: ok`);
    lines.push(`${endpoint} check ${ok ? 'passed' : 'failed'}`);
    return send(res, ok ? 200 : 503, `${lines.join('\n')}\n`);
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://ops.invalid');
    const [, first = '', ...more] = url.pathname.split('/');
    const rest = more.join('/');
    const route =
      (first === 'healthz' || first === 'readyz') && more.length <= 1
        ? first
        : first === 'metrics' && more.length === 0
          ? 'metrics'
          : undefined;
    if (route === undefined) return send(res, 404, '404 page not found\n');
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('Allow', 'GET, HEAD');
      return send(res, 405, 'method not allowed\n');
    }
    if (route === 'metrics') {
      let body: string;
      try {
        body = await opts.registry.metrics();
      } catch (err) {
        log.error('Rendering metrics failed', { err });
        return send(res, 500, `rendering metrics failed: ${oneLine(err)}\n`);
      }
      return send(res, 200, body, opts.registry.contentType);
    }
    return health(route, rest, url, res);
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      log.error('Ops request failed', { method: req.method, url: req.url, err });
      if (!res.headersSent) send(res, 500, 'internal server error\n');
      else res.destroy();
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: opts.host, port: opts.port }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (err) => log.error('Ops server error', { err }));
  const { address, port } = server.address() as AddressInfo;
  log.info('Ops server listening', { address, port });

  let closing: Promise<void> | undefined;
  return {
    port,
    close() {
      closing ??= new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        // close() alone waits for keep-alive connections (Prometheus holds one open).
        server.closeAllConnections();
      });
      return closing;
    },
  };
}

async function runCheck(check: HealthCheck, timeoutMs: number): Promise<string | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<{ timedOut: true }>((resolve) => {
    timer = setTimeout(() => resolve({ timedOut: true }), timeoutMs);
    // A probe left waiting must not hold the process open after close().
    timer.unref();
  });
  try {
    const outcome = await Promise.race([
      Promise.resolve()
        .then(check)
        .then((result) => ({ result })),
      timeout,
    ]);
    if ('timedOut' in outcome) return `timed out after ${timeoutMs}ms`;
    if (outcome.result === true) return undefined;
    if (typeof outcome.result === 'string') return outcome.result === '' ? 'no reason given' : oneLine(outcome.result);
    return 'check returned false';
  } catch (err) {
    return oneLine(err);
  } finally {
    clearTimeout(timer);
  }
}

function line(r: CheckResult): string {
  return r.failure === undefined ? `[+]${r.name} ok` : `[-]${r.name} failed: ${r.failure}`;
}

/** A reason fit for one line of the health output. */
function oneLine(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  return text.replace(/\s*\n\s*/g, ' ');
}

function send(res: ServerResponse, status: number, body: string, contentType = TEXT): void {
  res.statusCode = status;
  res.setHeader('Content-Type', contentType);
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.setHeader('Cache-Control', 'no-store');
  res.setHeader('X-Content-Type-Options', 'nosniff');
  if (res.req.method === 'HEAD') res.end();
  else res.end(body);
}
