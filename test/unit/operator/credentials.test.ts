import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingHttpHeaders, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { stringify } from 'yaml';
import { KubeClient } from '../../../src/operator/kube/client.ts';
import { KubeconfigError, resolveKubeCredentials } from '../../../src/operator/kube/credentials.ts';
import { Pki } from '../../cluster/pki.ts';

// The operator resolves its kubeconfig in a short-lived child process (so that
// @kubernetes/client-node's ~88 MB stay out of the leader) and gets back plain
// data: server, TLS material, auth headers, and the token file to re-read.
// Real kubeconfig files in a temp dir, real HTTP(S) servers on loopback.

const dir = mkdtempSync(join(tmpdir(), 'agentflow-credentials-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let n = 0;
/** Writes a one-context kubeconfig; `user` and `cluster` are its YAML fields. */
function kubeconfig(cluster: Record<string, unknown>, user: Record<string, unknown>): string {
  const path = join(dir, `kubeconfig-${++n}`);
  writeFileSync(
    path,
    stringify({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'c', cluster }],
      users: [{ name: 'u', user }],
      contexts: [{ name: 'x', context: { cluster: 'c', user: 'u' } }],
      'current-context': 'x',
    }),
  );
  return path;
}

const b64 = (file: string) => readFileSync(file).toString('base64');

/** A server that answers every request with `{}` and remembers the headers (and client certificate subject). */
async function recordingServer(
  make: () => Server,
): Promise<{ url: string; seen: IncomingHttpHeaders[]; cns: string[] }> {
  const seen: IncomingHttpHeaders[] = [];
  const cns: string[] = [];
  const server = make();
  server.on('request', (req, res) => {
    seen.push(req.headers);
    const peer = (req.socket as TLSSocket).getPeerCertificate?.();
    if (peer?.subject) cns.push(String(peer.subject.CN));
    res.setHeader('Content-Type', 'application/json');
    res.end('{}');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  servers.push(server);
  const { port } = server.address() as AddressInfo;
  return { url: `127.0.0.1:${port}`, seen, cns };
}

const servers: Server[] = [];
const clients: KubeClient[] = [];
afterEach(async () => {
  vi.useRealTimers();
  for (const c of clients.splice(0)) c.close();
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

describe('resolveKubeCredentials', () => {
  it('client certificates: TLS material from files and -data fields, and a client that presents them', async () => {
    const pki = new Pki(mkdtempSync(join(dir, 'pki-')));
    pki.init();
    const serving = pki.serving('apiserver');
    const client = pki.client('operator', 'system:agentflow-operator');
    const { url, cns } = await recordingServer(() =>
      createHttpsServer({
        cert: readFileSync(serving.cert),
        key: readFileSync(serving.key),
        ca: readFileSync(pki.caCert),
        requestCert: true,
        rejectUnauthorized: true,
      }),
    );
    const path = kubeconfig(
      { server: `https://${url}`, 'certificate-authority-data': b64(pki.caCert), 'tls-server-name': 'localhost' },
      { 'client-certificate': client.cert, 'client-key-data': b64(client.key) },
    );

    const creds = await resolveKubeCredentials({ kubeconfig: path });
    expect(creds.mode).toBe('static');
    expect(creds.server.href).toBe(`https://${url}/`);
    const { tls, headers } = await creds.authenticate();
    expect(tls.ca?.equals(readFileSync(pki.caCert))).toBe(true);
    expect(tls.cert?.equals(readFileSync(client.cert))).toBe(true);
    expect(tls.key?.equals(readFileSync(client.key))).toBe(true);
    expect(tls.servername).toBe('localhost');
    expect(headers).toEqual({});

    const kube = new KubeClient(creds);
    clients.push(kube);
    await kube.get('/api/v1/namespaces');
    expect(cns).toEqual(['system:agentflow-operator']);
  });

  it('a token: a fixed bearer header', async () => {
    const creds = await resolveKubeCredentials({
      kubeconfig: kubeconfig(
        { server: 'https://127.0.0.1:6443', 'insecure-skip-tls-verify': true },
        { token: 's3cret' },
      ),
    });
    expect(creds.mode).toBe('static');
    expect(await creds.authenticate()).toEqual({
      tls: { rejectUnauthorized: false },
      headers: { Authorization: 'Bearer s3cret' },
    });
  });

  it('basic auth and impersonation: the headers client-node would send', async () => {
    const creds = await resolveKubeCredentials({
      kubeconfig: kubeconfig({ server: 'https://127.0.0.1:6443' }, { username: 'ann', password: 'pw', as: 'bob' }),
    });
    expect((await creds.authenticate()).headers).toEqual({
      Authorization: `Basic ${Buffer.from('ann:pw').toString('base64')}`,
      'Impersonate-User': 'bob',
    });
  });

  it('a kubeconfig token-file: re-read on every refresh, so a rotated token is sent within 30 s', async () => {
    const tokenFile = join(dir, 'token-a');
    writeFileSync(tokenFile, 'first\n');
    const { url, seen } = await recordingServer(() => createHttpServer());
    const creds = await resolveKubeCredentials({ kubeconfig: kubeconfig({ server: `http://${url}` }, { tokenFile }) });
    expect(creds.mode).toBe('token-file');
    expect(creds.tokenFile).toBe(tokenFile);

    vi.useFakeTimers({ toFake: ['Date'] });
    const kube = new KubeClient(creds);
    clients.push(kube);
    await kube.get('/api/v1/pods');
    writeFileSync(tokenFile, 'second');
    await kube.get('/api/v1/pods');
    vi.advanceTimersByTime(31_000);
    await kube.get('/api/v1/pods');
    expect(seen.map((h) => h.authorization)).toEqual(['Bearer first', 'Bearer first', 'Bearer second']);
  });

  it('the in-cluster service account (a tokenFile auth provider and a CA file): the token file is re-read', async () => {
    const tokenFile = join(dir, 'sa-token');
    const caFile = join(dir, 'sa-ca.crt');
    writeFileSync(tokenFile, 'sa-1');
    writeFileSync(caFile, 'not really a certificate');
    // What client-node's loadFromCluster builds from /var/run/secrets/kubernetes.io/serviceaccount.
    const creds = await resolveKubeCredentials({
      kubeconfig: kubeconfig(
        { server: 'https://10.0.0.1:443', 'certificate-authority': caFile },
        { 'auth-provider': { name: 'tokenFile', config: { tokenFile } } },
      ),
    });
    expect(creds.mode).toBe('token-file');
    expect((await creds.authenticate()).headers).toEqual({ Authorization: 'Bearer sa-1' });
    writeFileSync(tokenFile, 'sa-2');
    const { tls, headers } = await creds.authenticate();
    expect(headers).toEqual({ Authorization: 'Bearer sa-2' });
    expect(tls.ca?.toString()).toBe('not really a certificate');
  });

  it('names the token file when it disappears', async () => {
    const tokenFile = join(dir, 'token-gone');
    writeFileSync(tokenFile, 't');
    const creds = await resolveKubeCredentials({
      kubeconfig: kubeconfig({ server: 'https://127.0.0.1:6443' }, { tokenFile }),
    });
    rmSync(tokenFile);
    await expect(creds.authenticate()).rejects.toThrow(`cannot read the bearer token file ${tokenFile}`);
  });

  it('an http: server without insecure-skip-tls-verify: plain HTTP, with the token', async () => {
    const { url, seen } = await recordingServer(() => createHttpServer());
    const creds = await resolveKubeCredentials({ kubeconfig: kubeconfig({ server: `http://${url}` }, { token: 't' }) });
    expect(creds.mode).toBe('static');
    expect(creds.server.protocol).toBe('http:');
    const kube = new KubeClient(creds);
    clients.push(kube);
    await kube.get('/api/v1/nodes');
    expect(seen[0]?.authorization).toBe('Bearer t');
  });

  it('an exec plugin: falls back to client-node in this process, which runs the plugin on refresh', async () => {
    const plugin = join(dir, 'plugin.mjs');
    const calls = join(dir, 'plugin-calls');
    writeFileSync(calls, '');
    writeFileSync(
      plugin,
      `import { appendFileSync } from 'node:fs';
appendFileSync(${JSON.stringify(calls)}, 'x');
process.stdout.write(JSON.stringify({ apiVersion: 'client.authentication.k8s.io/v1', kind: 'ExecCredential',
  status: { token: 'from-exec' } }));
`,
    );
    const { url, seen } = await recordingServer(() => createHttpServer());
    const creds = await resolveKubeCredentials({
      kubeconfig: kubeconfig(
        { server: `http://${url}` },
        {
          exec: {
            apiVersion: 'client.authentication.k8s.io/v1',
            command: process.execPath,
            args: [plugin],
            interactiveMode: 'Never',
          },
        },
      ),
    });
    expect(creds.mode).toBe('client-node');
    // The resolver only classified it: the plugin has not run yet.
    expect(readFileSync(calls, 'utf8')).toBe('');
    const kube = new KubeClient(creds);
    clients.push(kube);
    await kube.get('/api/v1/nodes');
    expect(seen[0]?.authorization).toBe('Bearer from-exec');
    expect(readFileSync(calls, 'utf8')).toBe('x');
  });

  it.each([
    ['an oidc auth provider', { 'auth-provider': { name: 'oidc', config: { 'id-token': 'x', 'client-id': 'y' } } }],
    ['a gcp auth provider', { 'auth-provider': { name: 'gcp', config: { 'access-token': 'x' } } }],
  ])('%s: falls back to client-node in this process', async (_what, user) => {
    const creds = await resolveKubeCredentials({ kubeconfig: kubeconfig({ server: 'https://127.0.0.1:6443' }, user) });
    expect(creds.mode).toBe('client-node');
  });
});

describe('resolveKubeCredentials errors name the problem', () => {
  const problem = async (kubeconfigPath: string) => {
    try {
      await resolveKubeCredentials({ kubeconfig: kubeconfigPath });
    } catch (err) {
      expect(err).toBeInstanceOf(KubeconfigError);
      return { problem: (err as KubeconfigError).problem, message: (err as Error).message };
    }
    throw new Error('resolved');
  };

  it('a missing file', async () => {
    const missing = join(dir, 'no-such-kubeconfig');
    expect(await problem(missing)).toEqual({
      problem: 'load',
      message: `ENOENT: no such file or directory, open '${missing}'`,
    });
  });

  it('bad YAML', async () => {
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'clusters: [unclosed\n');
    const p = await problem(bad);
    expect(p.problem).toBe('load');
    // client-node's YAML parser names the line and quotes it.
    expect(p.message).toContain('clusters: [unclosed');
  });

  it('an entry without its required field', async () => {
    const bad = join(dir, 'no-server.yaml');
    writeFileSync(bad, stringify({ clusters: [{ name: 'c', cluster: {} }] }));
    expect(await problem(bad)).toEqual({ problem: 'load', message: 'clusters[0].cluster.server is missing' });
  });

  it('no current context, or one that names nothing', async () => {
    const none = join(dir, 'no-context.yaml');
    writeFileSync(none, stringify({ clusters: [{ name: 'c', cluster: { server: 'https://h' } }] }));
    expect(await problem(none)).toEqual({ problem: 'no-cluster', message: 'it sets no current-context' });
    const dangling = join(dir, 'dangling.yaml');
    writeFileSync(
      dangling,
      stringify({ contexts: [{ name: 'x', context: { cluster: 'gone' } }], 'current-context': 'x' }),
    );
    expect(await problem(dangling)).toEqual({
      problem: 'no-cluster',
      message: 'context "x" names cluster "gone", which it does not define',
    });
  });
});

describe('agentflow-operator with a kubeconfig', () => {
  const run = (args: string[]) =>
    spawnSync(process.execPath, ['src/operator/main.ts', ...args], {
      encoding: 'utf8',
      env: { PATH: process.env.PATH ?? '', HOME: dir },
      timeout: 30_000,
    });
  const flags = ['--etcd-endpoints', 'https://127.0.0.1:1', '--agent-dispatcher', 'd:7070'];

  it('exits 2 naming the flag, the file and the problem when the kubeconfig cannot be used', () => {
    const missing = join(dir, 'nope');
    const r = run(['--kubeconfig', missing, ...flags]);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain(
      `agentflow-operator: --kubeconfig: cannot load ${missing}: ENOENT: no such file or directory`,
    );
    const none = join(dir, 'cli-no-context.yaml');
    writeFileSync(none, stringify({ clusters: [{ name: 'c', cluster: { server: 'https://h' } }] }));
    const r2 = run(['--kubeconfig', none, ...flags]);
    expect(r2.status).toBe(2);
    expect(r2.stderr).toContain(`--kubeconfig: no cluster in ${none}: it sets no current-context`);
    // Two operator processes, each resolving its kubeconfig in a child: ~1.7 s each alone, and over
    // vitest's 5 s default on a loaded 2-core CI machine; the spawns' own timeout bounds it.
  }, 60_000);
});

describe('the resolver keeps client-node out of the calling process', () => {
  it('loads @kubernetes/client-node only in the child when the credentials are static', () => {
    const path = kubeconfig({ server: 'https://127.0.0.1:6443' }, { token: 't' });
    const script = `
import { registerHooks } from 'node:module';
const loaded = [];
registerHooks({ load(url, ctx, next) { loaded.push(url); return next(url, ctx); } });
const { resolveKubeCredentials } = await import('./src/operator/kube/credentials.ts');
const creds = await resolveKubeCredentials({ kubeconfig: ${JSON.stringify(path)} });
await import('./src/operator/operator.ts');
console.log(JSON.stringify({ mode: creds.mode, clientNode: loaded.filter((u) => u.includes('@kubernetes/client-node')).length }));
`;
    // Synchronous: vitest's timeout cannot end it, so the spawn's own does (the operator's whole module
    // graph: ~2.4 s alone, over 5 s on a loaded CI machine).
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 25_000 });
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual({ mode: 'static', clientNode: 0 });
  });
});
