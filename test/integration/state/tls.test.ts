import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StateStore } from '../../../src/state/index.ts';
import { EtcdServer } from '../../cluster/etcd.ts';
import { Pki } from '../../cluster/pki.ts';

// agentflow's etcd over TLS with client certificates (the chart's external
// etcd with a TLS secret): a store with the CA and a client certificate
// works; one without a client certificate is refused.

let dir: string;
let etcd: EtcdServer;
let pki: Pki;
const stores: StateStore[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'agentflow-etcd-tls-'));
  mkdirSync(join(dir, 'pki'));
  pki = new Pki(join(dir, 'pki'));
  pki.init();
  const serving = pki.serving('etcd');
  etcd = new EtcdServer({
    dir: join(dir, 'etcd'),
    unsafeNoFsync: true,
    tls: { certFile: serving.cert, keyFile: serving.key, caFile: pki.caCert },
  });
  await etcd.start();
});

afterAll(async () => {
  for (const s of stores) s.close();
  await etcd?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('etcd over TLS', () => {
  it('works with the CA and a client certificate', async () => {
    const client = pki.client('agentflow-operator', 'agentflow-operator');
    const store = new StateStore({
      endpoints: [etcd.endpoint],
      prefix: '/tls',
      tls: { ca: readFileSync(pki.caCert), cert: readFileSync(client.cert), key: readFileSync(client.key) },
    });
    stores.push(store);
    expect(etcd.endpoint.startsWith('https://')).toBe(true);
    await store.client.put('/tls/k').value('v');
    expect(await store.get('/tls/k')).toMatchObject({ key: '/tls/k', value: 'v' });
  });

  it('is refused without a client certificate', async () => {
    const store = new StateStore({
      endpoints: [etcd.endpoint],
      prefix: '/tls',
      callTimeoutMs: 2_000,
      tls: { ca: readFileSync(pki.caCert) },
    });
    stores.push(store);
    await expect(store.get('/tls/k')).rejects.toThrow();
  });
});
