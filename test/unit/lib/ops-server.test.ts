import { Agent, request as httpRequest } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../../src/lib/log.ts';
import { Counter, Gauge, Registry } from '../../../src/lib/metrics.ts';
import { type HealthCheck, type OpsServer, startOpsServer } from '../../../src/lib/ops-server.ts';

const servers: OpsServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function start(
  checks: { healthz?: Record<string, HealthCheck>; readyz?: Record<string, HealthCheck> },
  extra: { registry?: Registry; checkTimeoutMs?: number; lines?: string[] } = {},
) {
  const registry = extra.registry ?? new Registry();
  const lines = extra.lines;
  const server = await startOpsServer({
    host: '127.0.0.1',
    port: 0,
    registry,
    checks: { healthz: checks.healthz ?? {}, readyz: checks.readyz ?? {} },
    ...(lines ? { logger: createLogger({}, { write: (l) => lines.push(l) }) } : {}),
    ...(extra.checkTimeoutMs !== undefined ? { checkTimeoutMs: extra.checkTimeoutMs } : {}),
  });
  servers.push(server);
  const get = async (path: string, init?: RequestInit) => {
    const res = await fetch(`http://127.0.0.1:${server.port}${path}`, init);
    return { status: res.status, body: await res.text(), type: res.headers.get('content-type'), headers: res.headers };
  };
  return { server, registry, get };
}

describe('startOpsServer health endpoints', () => {
  it('answers 200 "ok" when every check passes', async () => {
    const { server, get } = await start({
      healthz: { ping: () => true },
      readyz: { informers: () => true, etcd: async () => true },
    });
    expect(server.port).toBeGreaterThan(0);
    expect(await get('/healthz')).toMatchObject({ status: 200, body: 'ok', type: 'text/plain; charset=utf-8' });
    expect(await get('/readyz')).toMatchObject({ status: 200, body: 'ok' });
  });

  it('answers 503 listing every check when one fails by false, reason, throw or timeout', async () => {
    const { get } = await start(
      {
        readyz: {
          ping: () => true,
          informers: () => 'informer agentpools has not synced',
          leader: () => false,
          etcd: async () => {
            throw new Error('connect ECONNREFUSED\n127.0.0.1:2379');
          },
          slow: () => new Promise<boolean>(() => undefined),
        },
      },
      { checkTimeoutMs: 50 },
    );
    const res = await get('/readyz');
    expect(res.status).toBe(503);
    expect(res.type).toBe('text/plain; charset=utf-8');
    expect(res.body).toBe(
      [
        '[+]ping ok',
        '[-]informers failed: informer agentpools has not synced',
        '[-]leader failed: check returned false',
        '[-]etcd failed: connect ECONNREFUSED 127.0.0.1:2379',
        '[-]slow failed: timed out after 50ms',
        'readyz check failed',
        '',
      ].join('\n'),
    );
  });

  it('lists the checks on success with ?verbose', async () => {
    const { get } = await start({ healthz: { ping: () => true, log: () => true } });
    expect(await get('/healthz?verbose')).toMatchObject({
      status: 200,
      body: '[+]ping ok\n[+]log ok\nhealthz check passed\n',
    });
    expect(await get('/healthz?verbose=1')).toMatchObject({
      status: 200,
      body: '[+]ping ok\n[+]log ok\nhealthz check passed\n',
    });
  });

  it('skips checks named by ?exclude and runs one check at /<endpoint>/<name>', async () => {
    const { get } = await start({ readyz: { ping: () => true, etcd: () => 'no quorum' } });
    expect(await get('/readyz?exclude=etcd')).toMatchObject({ status: 200, body: 'ok' });
    expect(await get('/readyz?exclude=etcd&verbose')).toMatchObject({
      status: 200,
      body: '[+]ping ok\n[+]etcd excluded: ok\nreadyz check passed\n',
    });
    expect(await get('/readyz/ping')).toMatchObject({ status: 200, body: 'ok' });
    expect(await get('/readyz/etcd')).toMatchObject({ status: 503, body: '[-]etcd failed: no quorum\n' });
    expect(await get('/readyz/nope')).toMatchObject({ status: 404, body: 'readyz check "nope" not found\n' });
  });

  it('logs a failing check once and again when it recovers', async () => {
    const lines: string[] = [];
    let healthy = false;
    const { get } = await start({ readyz: { etcd: () => healthy || 'no leader' } }, { lines });
    await get('/readyz');
    await get('/readyz');
    healthy = true;
    await get('/readyz');
    await get('/readyz');
    const events = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.endpoint === 'readyz');
    expect(events.map(({ level, msg, check, reason }) => ({ level, msg, check, reason }))).toEqual([
      { level: 'warn', msg: 'Health check failed', check: 'etcd', reason: 'no leader' },
      { level: 'info', msg: 'Health check recovered', check: 'etcd', reason: undefined },
    ]);
  });
});

describe('startOpsServer /metrics and routing', () => {
  it('serves the registry with the exposition content type', async () => {
    const registry = new Registry();
    new Counter({ name: 'agentflow_tasks_total', help: 'Tasks.', labelNames: ['pool'], registers: [registry] }).inc(
      { pool: 'a' },
      3,
    );
    const { get } = await start({}, { registry });
    const res = await get('/metrics');
    expect(res.status).toBe(200);
    expect(res.type).toBe('text/plain; version=0.0.4; charset=utf-8');
    expect(res.body).toBe(
      '# HELP agentflow_tasks_total Tasks.\n# TYPE agentflow_tasks_total counter\nagentflow_tasks_total{pool="a"} 3\n',
    );
  });

  it('answers 500 with the reason when a collect callback throws', async () => {
    const registry = new Registry();
    new Gauge({
      name: 'depth',
      help: 'D.',
      registers: [registry],
      collect: () => {
        throw new Error('queue closed');
      },
    });
    const { get } = await start({}, { registry });
    expect(await get('/metrics')).toMatchObject({
      status: 500,
      body: 'rendering metrics failed: queue closed\n',
    });
  });

  it('answers HEAD with headers and no body', async () => {
    const { get } = await start({ healthz: { ping: () => true } });
    const res = await get('/healthz', { method: 'HEAD' });
    expect(res.status).toBe(200);
    expect(res.body).toBe('');
    expect(res.headers.get('content-length')).toBe('2');
  });

  it('answers 404 for unknown paths and 405 for other methods', async () => {
    const { get } = await start({ healthz: { ping: () => true } });
    expect(await get('/')).toMatchObject({ status: 404, body: '404 page not found\n' });
    expect(await get('/metricsx')).toMatchObject({ status: 404, body: '404 page not found\n' });
    expect(await get('/metrics/extra')).toMatchObject({ status: 404 });
    const post = await get('/healthz', { method: 'POST', body: 'x' });
    expect(post).toMatchObject({ status: 405, body: 'method not allowed\n' });
    expect(post.headers.get('allow')).toBe('GET, HEAD');
    expect(await get('/metrics', { method: 'DELETE' })).toMatchObject({ status: 405 });
  });
});

describe('startOpsServer lifecycle', () => {
  it('closes promptly with a keep-alive connection open and refuses new connections', async () => {
    const { server } = await start({ healthz: { ping: () => true } });
    const agent = new Agent({ keepAlive: true });
    const socketClosed = new Promise<void>((resolve) => {
      const req = httpRequest({ host: '127.0.0.1', port: server.port, path: '/healthz', agent }, (res) => res.resume());
      req.on('socket', (socket) => socket.once('close', () => resolve()));
      req.end();
    });
    // Wait until the response arrived and the socket sits idle in the agent's pool.
    await new Promise<void>((resolve) => {
      const poll = () => (Object.keys(agent.freeSockets).length > 0 ? resolve() : setTimeout(poll, 5));
      poll();
    });
    const started = performance.now();
    await server.close();
    await socketClosed;
    expect(performance.now() - started).toBeLessThan(1_000);
    await expect(fetch(`http://127.0.0.1:${server.port}/healthz`)).rejects.toThrow('fetch failed');
    await server.close(); // idempotent
    agent.destroy();
  });

  it('closes promptly while a request waits on a check that never settles', async () => {
    const { server } = await start({ readyz: { stuck: () => new Promise<boolean>(() => undefined) } });
    const pending = fetch(`http://127.0.0.1:${server.port}/readyz`);
    await new Promise((resolve) => setTimeout(resolve, 20));
    const started = performance.now();
    await server.close();
    expect(performance.now() - started).toBeLessThan(1_000);
    await expect(pending).rejects.toThrow('fetch failed');
  });

  it('rejects when the port is taken', async () => {
    const { server } = await start({});
    await expect(
      startOpsServer({
        host: '127.0.0.1',
        port: server.port,
        registry: new Registry(),
        checks: { healthz: {}, readyz: {} },
      }),
    ).rejects.toThrow('EADDRINUSE');
  });
});
