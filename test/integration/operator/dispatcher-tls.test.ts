import { X509Certificate } from 'node:crypto';
import { checkServerIdentity, connect as tlsConnect } from 'node:tls';
import {
  type ChannelCredentials,
  type Client,
  type ClientDuplexStream,
  credentials,
  makeGenericClientConstructor,
  Server,
  type ServerDuplexStream,
  type ServiceDefinition,
  type ServiceError,
} from '@grpc/grpc-js';
import { KubeConfig } from '@kubernetes/client-node';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../../src/lib/log.ts';
import { DispatcherTls, type DispatcherTlsOptions, TlsMaterialError } from '../../../src/operator/dispatcher-tls.ts';
import { KubeClient } from '../../../src/operator/kube/client.ts';
import { EventRecorder } from '../../../src/operator/kube/events.ts';
import { createCa, issueServingCert, parseSans } from '../../../src/operator/tls/certs.ts';
import type { ClusterHandle } from '../../cluster/cluster-handle.ts';
import { testCluster, uniqueName } from '../../cluster/testing.ts';
import { createNamespace, until } from './helpers.ts';

// The dispatcher's TLS identity against a real kube-apiserver: the Secret is
// created once and shared by replicas, a real gRPC server serves it over TLS,
// and a rotation swaps the certificate under an open stream.

let cluster: ClusterHandle;
let client: KubeClient;
let ns: string;
const cleanups: (() => Promise<void> | void)[] = [];

beforeAll(async () => {
  cluster = testCluster();
  const kc = new KubeConfig();
  kc.loadFromFile(cluster.info.kubeconfig);
  client = new KubeClient(kc);
  ns = await createNamespace(cluster, 'tls');
});

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

afterAll(async () => {
  await cluster.client.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  client.close();
  await cluster.close();
});

// biome-ignore lint/suspicious/noExplicitAny: raw API JSON, read field by field
type Json = Record<string, any>;
interface LogLine {
  level: string;
  msg: string;
  [k: string]: unknown;
}

const SANS = ['localhost', '127.0.0.1', 'agentflow-dispatcher.agentflow-system.svc'];

function instance(o: Partial<DispatcherTlsOptions> & { secretName: string }): { tls: DispatcherTls; logs: LogLine[] } {
  const logs: LogLine[] = [];
  const logger = createLogger({}, { level: 'debug', write: (l) => logs.push(JSON.parse(l) as LogLine) });
  const tls = new DispatcherTls({ client, namespace: ns, mode: 'managed', sans: SANS, logger, ...o });
  cleanups.push(() => tls.stop());
  return { tls, logs };
}

// A tiny JSON-over-gRPC service: a unary Ping and a bidirectional Chat that echoes.
const json = {
  serialize: (v: unknown) => Buffer.from(JSON.stringify(v)),
  deserialize: (b: Buffer) => JSON.parse(b.toString()) as Json,
};
const ECHO = {
  ping: {
    path: '/agentflow.test.Echo/Ping',
    requestStream: false,
    responseStream: false,
    requestSerialize: json.serialize,
    requestDeserialize: json.deserialize,
    responseSerialize: json.serialize,
    responseDeserialize: json.deserialize,
  },
  chat: {
    path: '/agentflow.test.Echo/Chat',
    requestStream: true,
    responseStream: true,
    requestSerialize: json.serialize,
    requestDeserialize: json.deserialize,
    responseSerialize: json.serialize,
    responseDeserialize: json.deserialize,
  },
} satisfies ServiceDefinition;
interface EchoClient extends Client {
  ping(req: Json, opts: { deadline: number }, cb: (err: ServiceError | null, res?: Json) => void): void;
  chat(): ClientDuplexStream<Json, Json>;
}
const EchoClientCtor = makeGenericClientConstructor(ECHO, 'Echo');

async function serve(tls: DispatcherTls): Promise<number> {
  const server = new Server();
  server.addService(ECHO, {
    ping: (_call: unknown, cb: (err: null, res: Json) => void) => cb(null, { pong: true }),
    chat: (call: ServerDuplexStream<Json, Json>) => {
      call.on('data', (m: Json) => call.write({ echo: m.n }));
      call.on('end', () => call.end());
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', tls.credentials, (err, p) => (err ? reject(err) : resolve(p))),
  );
  cleanups.push(() => {
    server.forceShutdown();
  });
  return port;
}

function echoClient(port: number, creds: ChannelCredentials, serverName = 'localhost'): EchoClient {
  const c = new EchoClientCtor(`127.0.0.1:${port}`, creds, {
    'grpc.ssl_target_name_override': serverName,
    'grpc.default_authority': serverName,
  }) as unknown as EchoClient;
  cleanups.push(() => c.close());
  return c;
}

function ping(c: EchoClient): Promise<Json> {
  return new Promise((resolve, reject) =>
    c.ping({}, { deadline: Date.now() + 5000 }, (err, res) => (err ? reject(err) : resolve(res as Json))),
  );
}

/** The serial of the certificate a brand-new TLS connection is shown (verified against `ca`). */
function peerSerial(port: number, ca: string, servername = 'localhost'): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, ca, servername, ALPNProtocols: ['h2'] }, () => {
      const serial = socket.getPeerCertificate().serialNumber;
      socket.destroy();
      resolve(serial);
    });
    socket.on('error', reject);
  });
}

async function secret(name: string): Promise<Json> {
  return cluster.client.get<Json>(`/api/v1/namespaces/${ns}/secrets/${name}`);
}

const serialOf = (pem: string) => new X509Certificate(pem).serialNumber;
const decode = (b64: string) => Buffer.from(b64, 'base64').toString('utf8');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('managed mode', () => {
  it('creates the Secret on first start; a second instance reuses it', async () => {
    const secretName = uniqueName('tls');
    const a = instance({ secretName });
    await a.tls.start();
    const s = await secret(secretName);
    expect(s.type).toBe('kubernetes.io/tls');
    expect(s.metadata.labels['app.kubernetes.io/managed-by']).toBe('agentflow-operator');
    expect(Object.keys(s.data).sort()).toEqual(['ca.crt', 'ca.key', 'tls.crt', 'tls.key']);
    expect(serialOf(decode(s.data['tls.crt']))).toBe(a.tls.serving().serial);
    expect(decode(s.data['ca.crt'])).toBe(a.tls.caBundle());
    expect(a.tls.serving().notAfter.getTime()).toBeGreaterThan(Date.now() + 89 * 86_400_000);

    const b = instance({ secretName });
    await b.tls.start();
    expect(b.tls.serving().serial).toBe(a.tls.serving().serial);
    expect(b.tls.caBundle()).toBe(a.tls.caBundle());
    expect((await secret(secretName)).metadata.resourceVersion).toBe(s.metadata.resourceVersion);
  });

  it('two instances starting at once end with one Secret, served by both', async () => {
    const secretName = uniqueName('tls');
    const a = instance({ secretName });
    const b = instance({ secretName });
    await Promise.all([a.tls.start(), b.tls.start()]);
    const stored = serialOf(decode((await secret(secretName)).data['tls.crt']));
    expect(a.tls.serving().serial).toBe(stored);
    expect(b.tls.serving().serial).toBe(stored);
    expect(a.tls.caBundle()).toBe(b.tls.caBundle());
  });

  it('serves TLS that a client with the CA bundle and the right name accepts; plaintext and wrong CAs fail', async () => {
    const { tls } = instance({ secretName: uniqueName('tls') });
    await tls.start();
    const port = await serve(tls);
    const ca = Buffer.from(tls.caBundle());
    expect(await ping(echoClient(port, credentials.createSsl(ca)))).toEqual({ pong: true });
    expect(
      await ping(echoClient(port, credentials.createSsl(ca), 'agentflow-dispatcher.agentflow-system.svc')),
    ).toEqual({ pong: true });

    await expect(ping(echoClient(port, credentials.createInsecure()))).rejects.toThrow();
    const otherCa = Buffer.from((await createCa({ validitySeconds: 3600 })).certPem);
    await expect(ping(echoClient(port, credentials.createSsl(otherCa)))).rejects.toThrow();
    await expect(ping(echoClient(port, credentials.createSsl(ca), 'evil.example.com'))).rejects.toThrow();
  });

  it('rotates before expiry: an open stream keeps flowing and new connections get the new certificate', async () => {
    const secretName = uniqueName('tls');
    const events = new EventRecorder(client, {
      component: 'agentflow-operator',
      host: 'test',
      logger: createLogger({}, { write: () => undefined }),
    });
    const { tls } = instance({ secretName, certValiditySeconds: 6, checkIntervalMs: 200, events });
    await tls.start();
    const port = await serve(tls);
    const ca = tls.caBundle();
    const first = tls.serving().serial;
    expect(await peerSerial(port, ca)).toBe(first);

    // The stream's channel records every handshake it makes: one means it never reconnected.
    const handshakes: string[] = [];
    const streamCreds = credentials.createSsl(Buffer.from(ca), null, null, {
      checkServerIdentity: (host, cert) => {
        handshakes.push(cert.serialNumber);
        return checkServerIdentity(host, cert);
      },
    });
    const stream = echoClient(port, streamCreds).chat();
    const echoes: number[] = [];
    let streamError: Error | undefined;
    stream.on('data', (m: Json) => echoes.push(m.echo as number));
    stream.on('error', (err: Error) => {
      streamError = err;
    });
    let n = 0;
    const send = () => stream.write({ n: n++ });
    send();
    await until(
      'the first echo',
      () => echoes.length,
      (l) => l >= 1,
      5000,
    );

    let rotatedAt = 0;
    let echoesAtRotation = 0;
    const deadline = Date.now() + 15_000;
    // Keep talking until well past the first certificate's expiry (6 s).
    while (!rotatedAt || Date.now() - rotatedAt < 3000) {
      if (Date.now() > deadline) throw new Error('the serving certificate did not rotate within 15 s');
      send();
      await sleep(200);
      if (!rotatedAt && (await peerSerial(port, ca)) !== first) {
        rotatedAt = Date.now();
        echoesAtRotation = echoes.length;
      }
    }
    stream.end();
    await until(
      'every echo',
      () => echoes.length,
      (l) => l === n,
      5000,
    );
    expect(streamError).toBeUndefined();
    expect(echoes.length).toBeGreaterThan(echoesAtRotation + 5);
    expect(echoes).toEqual([...Array(n).keys()]);
    expect(handshakes).toEqual([first]);

    const now = tls.serving().serial;
    expect(now).not.toBe(first);
    expect(await peerSerial(port, tls.caBundle())).toBe(now);
    expect(await ping(echoClient(port, credentials.createSsl(Buffer.from(tls.caBundle()))))).toEqual({ pong: true });
    expect(serialOf(decode((await secret(secretName)).data['tls.crt']))).toBe(now);

    await events.flush();
    const list = await cluster.client.get<{ items: Json[] }>(
      `/api/v1/namespaces/${ns}/events?fieldSelector=${encodeURIComponent(`involvedObject.name=${secretName}`)}`,
    );
    expect(list.items.some((e) => e.reason === 'CertificateRotated' && e.type === 'Normal')).toBe(true);
  });

  it('rotate() issues a new certificate at once; the other replica adopts it', async () => {
    const secretName = uniqueName('tls');
    const a = instance({ secretName, checkIntervalMs: 200 });
    const b = instance({ secretName, checkIntervalMs: 200 });
    await a.tls.start();
    await b.tls.start();
    const before = a.tls.serving().serial;
    await a.tls.rotate();
    const after = a.tls.serving().serial;
    expect(after).not.toBe(before);
    await until(
      'the other replica to adopt the rotation',
      () => b.tls.serving().serial,
      (s) => s === after,
      5000,
    );
  });

  it('publishCa writes the ConfigMap once and follows the CA through its rotation', async () => {
    const secretName = uniqueName('tls');
    const { tls, logs } = instance({ secretName, certValiditySeconds: 3, caValiditySeconds: 12, checkIntervalMs: 200 });
    const failures: unknown[] = [];
    tls.onCaChange(() => {
      tls.publishCa(ns).catch((err: unknown) => failures.push(err));
    });
    await tls.start();
    const port = await serve(tls);
    const cmName = tls.caConfigMapName;
    const cmPath = `/api/v1/namespaces/${ns}/configmaps/${cmName}`;
    const firstCa = tls.caBundle();
    expect(cmName).toBe('agentflow-dispatcher-ca');

    await tls.publishCa(ns);
    const cm = await cluster.client.get<Json>(cmPath);
    expect(cm.data['ca.crt']).toBe(firstCa);
    expect(cm.metadata.labels['app.kubernetes.io/managed-by']).toBe('agentflow-operator');
    await tls.publishCa(ns);
    expect((await cluster.client.get<Json>(cmPath)).metadata.resourceVersion).toBe(cm.metadata.resourceVersion);

    // Through the CA's rotation (new CA at 8 s, signing from 9 s, old CA gone at 12 s), a client that
    // trusts whatever the ConfigMap holds at that moment always connects.
    const sizes: number[] = [];
    const deadline = Date.now() + 25_000;
    while (sizes.join() !== '1,2,1') {
      if (Date.now() > deadline) throw new Error(`the CA did not rotate within 25 s; bundle sizes seen: ${sizes}`);
      const bundle = (await cluster.client.get<Json>(cmPath)).data['ca.crt'] as string;
      const size = bundle.match(/-----BEGIN CERTIFICATE-----/g)?.length ?? 0;
      if (sizes[sizes.length - 1] !== size) sizes.push(size);
      await peerSerial(port, bundle);
      await sleep(200);
    }
    expect(failures).toEqual([]);
    const finalBundle = (await cluster.client.get<Json>(cmPath)).data['ca.crt'];
    expect(finalBundle).toBe(tls.caBundle());
    expect(finalBundle).not.toBe(firstCa);
    expect(logs.some((l) => l.msg.startsWith('Created a new dispatcher CA'))).toBe(true);
  });

  it('refuses at start a Secret that lacks the CA key, naming it', async () => {
    const secretName = uniqueName('tls');
    const ca = await createCa({ validitySeconds: 3600 });
    const s = await issueServingCert(ca, { sans: parseSans(SANS), validitySeconds: 600 });
    await cluster.client.post(`/api/v1/namespaces/${ns}/secrets`, {
      metadata: { name: secretName },
      type: 'kubernetes.io/tls',
      stringData: { 'tls.crt': s.certPem, 'tls.key': s.keyPem, 'ca.crt': ca.certPem },
    });
    const { tls } = instance({ secretName });
    const err = await tls.start().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(TlsMaterialError);
    expect((err as TlsMaterialError).key).toBe('ca.key');
    expect((err as TlsMaterialError).message).toContain(`${ns}/${secretName}`);
  });
});

describe('secret mode', () => {
  async function userSecret(validitySeconds = 3600) {
    const ca = await createCa({ validitySeconds: 36_000 });
    const s = await issueServingCert(ca, { sans: parseSans(SANS), validitySeconds });
    return { 'tls.crt': s.certPem, 'tls.key': s.keyPem, 'ca.crt': ca.certPem };
  }

  it('serves a Secret it is given and picks up a changed one; a broken change is refused', async () => {
    const secretName = uniqueName('user-tls');
    const path = `/api/v1/namespaces/${ns}/secrets/${secretName}`;
    const one = await userSecret();
    await cluster.client.post(`/api/v1/namespaces/${ns}/secrets`, {
      metadata: { name: secretName },
      type: 'kubernetes.io/tls',
      stringData: one,
    });
    const { tls, logs } = instance({ secretName, mode: 'secret', checkIntervalMs: 200 });
    const caChanges: string[] = [];
    tls.onCaChange((pem) => caChanges.push(pem));
    await tls.start();
    const port = await serve(tls);
    expect(tls.serving().serial).toBe(serialOf(one['tls.crt']));
    expect(tls.caBundle().trim()).toBe(one['ca.crt'].trim());
    expect(await ping(echoClient(port, credentials.createSsl(Buffer.from(one['ca.crt']))))).toEqual({ pong: true });
    await expect(tls.rotate()).rejects.toThrow(/managed mode/);

    // cert-manager renews (here: with a new CA too).
    const two = await userSecret();
    await cluster.client.mergePatch(path, { stringData: two });
    await until(
      'the new certificate',
      () => tls.serving().serial,
      (s) => s === serialOf(two['tls.crt']),
      10_000,
    );
    expect(await peerSerial(port, two['ca.crt'])).toBe(serialOf(two['tls.crt']));
    expect(caChanges).toHaveLength(1);
    expect(caChanges[0]?.trim()).toBe(two['ca.crt'].trim());

    // A key that does not match: refused with a Warning; the last good certificate stays.
    const three = await userSecret();
    await cluster.client.mergePatch(path, { stringData: { 'tls.key': three['tls.key'] } });
    await until(
      'a warning about the key',
      () => logs.find((l) => l.level === 'warn' && l.problem === 'KeyMismatch'),
      (l) => l !== undefined,
      10_000,
    );
    expect(tls.serving().serial).toBe(serialOf(two['tls.crt']));
    expect(await peerSerial(port, two['ca.crt'])).toBe(serialOf(two['tls.crt']));
  });

  it('refuses at start a missing Secret or an expired certificate, naming the Secret and key', async () => {
    const missing = instance({ secretName: uniqueName('absent'), mode: 'secret', sans: [] });
    await expect(missing.tls.start()).rejects.toMatchObject({ problem: 'SecretNotFound' });

    const secretName = uniqueName('expired');
    const old = await userSecret(3);
    await cluster.client.post(`/api/v1/namespaces/${ns}/secrets`, {
      metadata: { name: secretName },
      type: 'kubernetes.io/tls',
      stringData: old,
    });
    await sleep(3500);
    const expired = instance({ secretName, mode: 'secret' });
    const err = await expired.tls.start().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(TlsMaterialError);
    expect(err).toMatchObject({ problem: 'Expired', key: 'tls.crt', secret: `${ns}/${secretName}` });
  });
});
