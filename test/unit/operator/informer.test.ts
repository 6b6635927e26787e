import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { KubeConfig } from '@kubernetes/client-node';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { silentLogger } from '../../../src/lib/log.ts';
import { type KObject, KubeClient, PODS } from '../../../src/operator/kube/client.ts';
import { Informer, type InformerOptions } from '../../../src/operator/kube/informer.ts';

interface Pod extends KObject {
  spec?: { nodeName?: string };
}

const pod = (name: string, rv: string, nodeName?: string): Pod => ({
  metadata: { name, namespace: 'ns', resourceVersion: rv },
  ...(nodeName !== undefined && { spec: { nodeName } }),
});

const podList = (rv: string, items: Pod[], cont?: string) => ({
  kind: 'PodList',
  apiVersion: 'v1',
  metadata: { resourceVersion: rv, ...(cont !== undefined && { continue: cont }) },
  items,
});

const status = (code: number, reason: string, message: string) => ({
  kind: 'Status',
  apiVersion: 'v1',
  metadata: {},
  status: 'Failure',
  code,
  reason,
  message,
});

interface Reply {
  status: number;
  body: unknown;
}

/** One watch request held by the fake API server; the test decides what it streams. */
class WatchConn {
  readonly url: URL;
  readonly at = performance.now();
  private readonly res: ServerResponse;

  constructor(url: URL, res: ServerResponse) {
    this.url = url;
    this.res = res;
  }

  get query(): Record<string, string> {
    return Object.fromEntries(this.url.searchParams);
  }

  /** Sends the response headers and nothing else. */
  open(): void {
    if (this.res.headersSent) return;
    this.res.writeHead(200, { 'Content-Type': 'application/json' });
    this.res.flushHeaders();
  }

  send(type: string, object: unknown): void {
    this.open();
    this.res.write(`${JSON.stringify({ type, object })}\n`);
  }

  end(): void {
    this.open();
    this.res.end();
  }

  fail(code: number, body: unknown): void {
    this.res.writeHead(code, { 'Content-Type': 'application/json' });
    this.res.end(JSON.stringify(body));
  }
}

/** A scripted stand-in for kube-apiserver's pod collection: lists answered by `listReply`, watches held for the test. */
class FakeApi {
  readonly server: Server;
  readonly lists: URL[] = [];
  readonly watches: WatchConn[] = [];
  readonly authorization: (string | undefined)[] = [];
  listReply: (url: URL, n: number) => Reply;
  private waiters: { n: number; resolve: (w: WatchConn) => void }[] = [];

  constructor(listReply: (url: URL, n: number) => Reply) {
    this.listReply = listReply;
    this.server = createServer((req, res) => this.handle(req, res));
  }

  listen(): Promise<number> {
    return new Promise((resolve) => {
      this.server.listen(0, '127.0.0.1', () => resolve((this.server.address() as AddressInfo).port));
    });
  }

  /** The n-th watch request (0-based), once it has arrived. */
  watch(n: number): Promise<WatchConn> {
    const w = this.watches[n];
    if (w) return Promise.resolve(w);
    return new Promise((resolve) => this.waiters.push({ n, resolve }));
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://localhost');
    this.authorization.push(req.headers.authorization);
    if (req.method !== 'GET' || !url.pathname.endsWith('/pods')) {
      res.writeHead(404, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(status(404, 'NotFound', `${req.method} ${url.pathname}`)));
      return;
    }
    if (url.searchParams.get('watch') === 'true') {
      const w = new WatchConn(url, res);
      this.watches.push(w);
      const n = this.watches.length - 1;
      for (const waiter of this.waiters.filter((x) => x.n === n)) waiter.resolve(w);
      this.waiters = this.waiters.filter((x) => x.n !== n);
      return;
    }
    this.lists.push(url);
    const r = this.listReply(url, this.lists.length - 1);
    res.writeHead(r.status, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(r.body));
  }
}

const rvOf = (o: KObject) => o.metadata?.resourceVersion ?? '?';
const keyOf = (o: KObject) => `${o.metadata?.namespace}/${o.metadata?.name}`;

let api: FakeApi | undefined;
let client: KubeClient | undefined;
let informer: Informer<Pod> | undefined;

afterEach(async () => {
  await informer?.stop();
  client?.close();
  await api?.close();
  informer = undefined;
  client = undefined;
  api = undefined;
});

/**
 * A kubeconfig for the fake server. `skipTLSVerify` works around a KubeClient
 * bug: @kubernetes/client-node's applyToHTTPSOptions refuses http: clusters
 * without it (see the 'KubeClient over plain HTTP' test below).
 */
function kubeConfig(port: number, skipTLSVerify: boolean): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: 'c', server: `http://127.0.0.1:${port}`, skipTLSVerify }],
    users: [{ name: 'u', token: 't' }],
    contexts: [{ name: 'x', cluster: 'c', user: 'u' }],
    currentContext: 'x',
  });
  return kc;
}

/** Starts a fake API server and an informer of pods against it; `seen` records what the handlers got. */
async function setup(
  listReply: (url: URL, n: number) => Reply,
  opts: Partial<InformerOptions> = {},
): Promise<{ api: FakeApi; inf: Informer<Pod>; seen: string[] }> {
  api = new FakeApi(listReply);
  const port = await api.listen();
  client = new KubeClient(kubeConfig(port, true));
  informer = new Informer<Pod>(client, PODS, { logger: silentLogger, resyncMs: 0, ...opts });
  const seen: string[] = [];
  informer.on({
    add: (o) => seen.push(`add ${keyOf(o)}@${rvOf(o)}`),
    update: (a, b) => seen.push(`update ${keyOf(b)}@${rvOf(a)}->${rvOf(b)}`),
    delete: (o) => seen.push(`delete ${keyOf(o)}@${rvOf(o)}`),
  });
  return { api, inf: informer, seen };
}

const storeOf = (inf: Informer<Pod>) =>
  Object.fromEntries(
    inf
      .list()
      .map((o) => [keyOf(o), rvOf(o)] as const)
      .sort(([a], [b]) => a.localeCompare(b)),
  );

const until = (fn: () => void, timeout = 2000) => vi.waitFor(fn, { timeout, interval: 5 });

describe('Informer', () => {
  it('lists page by page, syncs, applies watch events and resumes from a bookmark', async () => {
    const { api, inf, seen } = await setup(
      (url) =>
        url.searchParams.get('continue') === 'tok-1'
          ? { status: 200, body: podList('10', [pod('p3', '3')]) }
          : { status: 200, body: podList('10', [pod('p1', '1'), pod('p2', '2')], 'tok-1') },
      { pageSize: 2 },
    );
    const synced = inf.waitForSync();
    inf.start();
    expect(inf.hasSynced).toBe(false);
    await synced;
    expect(inf.hasSynced).toBe(true);
    expect(api.lists.map((u) => [u.pathname, Object.fromEntries(u.searchParams)])).toEqual([
      ['/api/v1/pods', { limit: '2' }],
      ['/api/v1/pods', { limit: '2', continue: 'tok-1' }],
    ]);
    expect(api.authorization[0]).toBe('Bearer t');
    expect(seen).toEqual(['add ns/p1@1', 'add ns/p2@2', 'add ns/p3@3']);
    expect(storeOf(inf)).toEqual({ 'ns/p1': '1', 'ns/p2': '2', 'ns/p3': '3' });
    // Lists omit kind/apiVersion on items; the informer fills them in.
    expect(inf.get('ns/p1')).toMatchObject({ kind: 'Pod', apiVersion: 'v1' });

    const w0 = await api.watch(0);
    expect(w0.url.pathname).toBe('/api/v1/pods');
    const { timeoutSeconds, ...rest } = w0.query;
    expect(rest).toEqual({ watch: 'true', resourceVersion: '10', allowWatchBookmarks: 'true' });
    // Spread over 5-10 min.
    expect(Number(timeoutSeconds)).toBeGreaterThanOrEqual(300);
    expect(Number(timeoutSeconds)).toBeLessThan(600);

    w0.send('ADDED', { ...pod('p4', '11'), kind: 'Pod', apiVersion: 'v1' });
    w0.send('MODIFIED', { ...pod('p1', '12', 'node-a'), kind: 'Pod', apiVersion: 'v1' });
    w0.send('DELETED', { ...pod('p2', '13'), kind: 'Pod', apiVersion: 'v1' });
    await until(() => expect(seen).toHaveLength(6));
    expect(seen.slice(3)).toEqual(['add ns/p4@11', 'update ns/p1@1->12', 'delete ns/p2@2']);
    expect(storeOf(inf)).toEqual({ 'ns/p1': '12', 'ns/p3': '3', 'ns/p4': '11' });
    expect(inf.get('ns/p1')?.spec?.nodeName).toBe('node-a');
    expect(inf.get('ns/p2')).toBeUndefined();

    w0.send('BOOKMARK', { kind: 'Pod', apiVersion: 'v1', metadata: { resourceVersion: '20' } });
    w0.end();
    const w1 = await api.watch(1);
    expect(w1.query.resourceVersion).toBe('20');
    // The bookmark changed nothing else.
    expect(seen).toHaveLength(6);
    expect(inf.size).toBe(3);
    expect(api.lists).toHaveLength(2);
    expect(inf.stats).toMatchObject({ lists: 1, watches: 2, errors: 0, relistsAfterGone: 0, stalls: 0 });
  });

  it('watches a namespace with selectors', async () => {
    const { api, inf } = await setup(() => ({ status: 200, body: podList('7', [pod('p1', '1')]) }), {
      namespace: 'team-a',
      labelSelector: 'app=web',
      fieldSelector: 'spec.nodeName=n1',
    });
    inf.start();
    await inf.waitForSync();
    const w0 = await api.watch(0);
    const list = api.lists[0];
    expect(list?.pathname).toBe('/api/v1/namespaces/team-a/pods');
    expect(Object.fromEntries(list?.searchParams ?? [])).toEqual({
      labelSelector: 'app=web',
      fieldSelector: 'spec.nodeName=n1',
      limit: '500',
    });
    expect(w0.url.pathname).toBe('/api/v1/namespaces/team-a/pods');
    expect(w0.query).toMatchObject({
      labelSelector: 'app=web',
      fieldSelector: 'spec.nodeName=n1',
      resourceVersion: '7',
    });
  });

  it('re-watches from the last resourceVersion without re-listing when the server ends the watch', async () => {
    const { api, inf, seen } = await setup(() => ({ status: 200, body: podList('10', [pod('p1', '1')]) }));
    inf.start();
    const w0 = await api.watch(0);
    expect(w0.query.resourceVersion).toBe('10');
    w0.send('ADDED', pod('p2', '11'));
    w0.end();
    const w1 = await api.watch(1);
    expect(w1.query.resourceVersion).toBe('11');
    w1.send('MODIFIED', pod('p2', '12', 'node-b'));
    w1.end();
    const w2 = await api.watch(2);
    expect(w2.query.resourceVersion).toBe('12');
    expect(api.lists).toHaveLength(1);
    expect(seen).toEqual(['add ns/p1@1', 'add ns/p2@11', 'update ns/p2@11->12']);
    expect(storeOf(inf)).toEqual({ 'ns/p1': '1', 'ns/p2': '12' });
    expect(inf.stats).toMatchObject({ lists: 1, watches: 3, errors: 0, relistsAfterGone: 0 });
  });

  it('re-lists after a 410 ERROR event and delivers the differences', async () => {
    const { api, inf, seen } = await setup((_url, n) =>
      n === 0
        ? { status: 200, body: podList('10', [pod('p1', '1'), pod('p2', '2'), pod('p3', '3')]) }
        : { status: 200, body: podList('30', [pod('p1', '1'), pod('p2', '22'), pod('p4', '23')]) },
    );
    inf.start();
    await inf.waitForSync();
    const w0 = await api.watch(0);
    w0.send('ERROR', status(410, 'Expired', 'too old resource version: 10 (25)'));
    w0.end();
    const w1 = await api.watch(1);
    expect(api.lists).toHaveLength(2);
    expect(w1.query.resourceVersion).toBe('30');
    expect(seen).toEqual([
      'add ns/p1@1',
      'add ns/p2@2',
      'add ns/p3@3',
      'update ns/p2@2->22',
      'add ns/p4@23',
      'delete ns/p3@3',
    ]);
    expect(storeOf(inf)).toEqual({ 'ns/p1': '1', 'ns/p2': '22', 'ns/p4': '23' });
    expect(inf.stats).toMatchObject({ lists: 2, relistsAfterGone: 1, errors: 0 });
  });

  it('re-lists when the watch request is answered with HTTP 410', async () => {
    const { api, inf, seen } = await setup((_url, n) =>
      n === 0
        ? { status: 200, body: podList('10', [pod('p1', '1'), pod('p2', '2')]) }
        : { status: 200, body: podList('40', [pod('p2', '2'), pod('p5', '35')]) },
    );
    inf.start();
    const w0 = await api.watch(0);
    w0.fail(410, status(410, 'Expired', 'too old resource version: 10 (35)'));
    const w1 = await api.watch(1);
    expect(api.lists).toHaveLength(2);
    expect(w1.query.resourceVersion).toBe('40');
    expect(seen).toEqual(['add ns/p1@1', 'add ns/p2@2', 'add ns/p5@35', 'delete ns/p1@1']);
    expect(storeOf(inf)).toEqual({ 'ns/p2': '2', 'ns/p5': '35' });
    expect(inf.stats).toMatchObject({ lists: 2, relistsAfterGone: 1, errors: 1 });
  });

  it('restarts a watch that has gone silent', async () => {
    const { api, inf, seen } = await setup(() => ({ status: 200, body: podList('10', [pod('p1', '1')]) }), {
      stallMs: 300,
    });
    inf.start();
    const w0 = await api.watch(0);
    w0.open(); // headers, then nothing
    const w1 = await api.watch(1);
    expect(w1.at - w0.at).toBeGreaterThanOrEqual(250);
    expect(w1.query.resourceVersion).toBe('10');
    expect(inf.stats.stalls).toBeGreaterThanOrEqual(1);
    expect(api.lists).toHaveLength(1);
    w1.send('ADDED', pod('p2', '11'));
    await until(() => expect(seen).toEqual(['add ns/p1@1', 'add ns/p2@11']));
    expect(storeOf(inf)).toEqual({ 'ns/p1': '1', 'ns/p2': '11' });
  });

  it('keeps a watch that delivers bookmarks within stallMs', async () => {
    const { api, inf } = await setup(() => ({ status: 200, body: podList('10', []) }), { stallMs: 400 });
    inf.start();
    const w0 = await api.watch(0);
    // 500 ms in all, longer than stallMs, but never 400 ms without a bookmark.
    for (let i = 1; i <= 5; i++) {
      await new Promise((r) => setTimeout(r, 100));
      w0.send('BOOKMARK', { kind: 'Pod', apiVersion: 'v1', metadata: { resourceVersion: String(10 + i) } });
    }
    expect(api.watches).toHaveLength(1);
    expect(inf.stats.stalls).toBe(0);
    w0.end();
    const w1 = await api.watch(1);
    expect(w1.query.resourceVersion).toBe('15');
  });

  it('retries a failing list with back-off until it syncs', async () => {
    const { api, inf, seen } = await setup((_url, n) =>
      n < 2
        ? { status: 500, body: status(500, 'InternalError', 'etcdserver: leader changed') }
        : { status: 200, body: podList('10', [pod('p1', '1')]) },
    );
    inf.start();
    await inf.waitForSync();
    expect(api.lists).toHaveLength(3);
    expect(inf.stats.errors).toBe(2);
    expect(inf.stats.lists).toBe(1);
    expect(seen).toEqual(['add ns/p1@1']);
    const w0 = await api.watch(0);
    expect(w0.query.resourceVersion).toBe('10');
  });

  it('backs off and re-watches after a non-410 ERROR event', async () => {
    const { api, inf, seen } = await setup(() => ({ status: 200, body: podList('10', [pod('p1', '1')]) }));
    inf.start();
    const w0 = await api.watch(0);
    w0.send('ADDED', pod('p2', '11'));
    w0.send('ERROR', status(500, 'InternalError', 'etcd is unhappy'));
    w0.send('ADDED', pod('p3', '12')); // after the error: must not be applied
    w0.end();
    const w1 = await api.watch(1);
    expect(w1.query.resourceVersion).toBe('11');
    expect(api.lists).toHaveLength(1);
    expect(inf.stats.errors).toBe(1);
    expect(seen).toEqual(['add ns/p1@1', 'add ns/p2@11']);
    expect(storeOf(inf)).toEqual({ 'ns/p1': '1', 'ns/p2': '11' });
  });

  it('keeps delivering to other handlers when one throws', async () => {
    const { api, inf, seen } = await setup(() => ({ status: 200, body: podList('10', [pod('p1', '1')]) }));
    inf.on({
      add: () => {
        throw new Error('handler bug');
      },
    });
    const late: string[] = [];
    inf.on({ add: (o) => late.push(keyOf(o)) });
    inf.start();
    const w0 = await api.watch(0);
    w0.send('ADDED', pod('p2', '11'));
    await until(() => expect(late).toEqual(['ns/p1', 'ns/p2']));
    expect(seen).toEqual(['add ns/p1@1', 'add ns/p2@11']);
    expect(inf.stats.errors).toBe(0);
    expect(api.watches).toHaveLength(1);
  });

  it('re-announces every object as an update on resync', async () => {
    const { inf, seen } = await setup(() => ({ status: 200, body: podList('10', [pod('p1', '1'), pod('p2', '2')]) }), {
      resyncMs: 50,
    });
    inf.start();
    await inf.waitForSync();
    await until(() => expect(seen.length).toBeGreaterThanOrEqual(4));
    expect(seen.slice(0, 4)).toEqual(['add ns/p1@1', 'add ns/p2@2', 'update ns/p1@1->1', 'update ns/p2@2->2']);
  });
});

describe('KubeClient over plain HTTP', () => {
  // KubeClient promises plain HTTP for http: servers (a local proxy, tests), but
  // prepare() calls kc.applyToHTTPSOptions, which in @kubernetes/client-node 2.x
  // throws 'HTTP protocol is not allowed when skipTLSVerify is not set or false'
  // for http: clusters, so every request fails (and an informer never syncs).
  it('talks to an http:// server from a kubeconfig without skipTLSVerify', async () => {
    api = new FakeApi(() => ({ status: 200, body: podList('3', [pod('p1', '1')]) }));
    const port = await api.listen();
    client = new KubeClient(kubeConfig(port, false));
    const list = await client.get<{ items: Pod[] }>('/api/v1/pods', { limit: 5 });
    expect(list.items.map((p) => p.metadata?.name)).toEqual(['p1']);
    expect(api.authorization).toEqual(['Bearer t']);
  });
});
