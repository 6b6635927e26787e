import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { SharedState, StateStore } from '../../../src/state/index.ts';
import { Pki } from '../../cluster/pki.ts';
import { stateEtcdOf } from '../../cluster/state-etcd.ts';
import { uniqueName } from '../../cluster/testing.ts';
import { testStore } from './helpers.ts';

// agentflow's etcd on the local control plane runs as the issue asks of every
// install: client TLS with a required client certificate, and etcd auth on.
// Nobody without a certificate from its CA gets an answer, a certificate
// whose CN is no etcd user gets nothing, and the operator's own user reads
// and writes agentflow's keys but cannot administer etcd.

const info = inject('cluster');
const etcd = stateEtcdOf(info);
const url = new URL(etcd.endpoint);
const ca = readFileSync(etcd.caFile);
const pki = new Pki(join(info.dir, 'pki'));
const stores: StateStore[] = [];
let otherCaDir: string;

const store = (o: Omit<ConstructorParameters<typeof StateStore>[0], 'endpoints'>) => {
  const s = new StateStore({ endpoints: [etcd.endpoint], callTimeoutMs: 3_000, ...o });
  stores.push(s);
  return s;
};
const files = (c: { cert: string; key: string }) => ({ cert: readFileSync(c.cert), key: readFileSync(c.key) });

/** POST /v3/kv/range for every key (the anonymous listing) over https, with what `tls` adds. */
function rangeAll(tls: { cert?: Buffer; key?: Buffer } = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: url.hostname, port: url.port, path: '/v3/kv/range', method: 'POST', ca, ...tls, timeout: 5_000 },
      (res) => {
        let body = '';
        res.on('data', (d: Buffer) => {
          body += d.toString();
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('timed out')));
    // key "\0" with range_end "\0": every key.
    req.end(JSON.stringify({ key: 'AA==', range_end: 'AA==' }));
  });
}

beforeAll(async () => {
  // A key that must never leak: written the way the operator writes.
  const op = testStore('/auth-secret');
  stores.push(op);
  await op.client.put('/auth-secret/k').value('do-not-list');
  otherCaDir = mkdtempSync(join(tmpdir(), 'agentflow-other-ca-'));
});

afterAll(() => {
  for (const s of stores) s.close();
  rmSync(otherCaDir, { recursive: true, force: true });
});

describe('anonymous requests to the state etcd', () => {
  it('a plaintext POST /v3/kv/range gets no answer: etcd closes the connection', async () => {
    const err = await fetch(`http://${url.host}/v3/kv/range`, {
      method: 'POST',
      body: JSON.stringify({ key: 'AA==', range_end: 'AA==' }),
    }).then(
      (res) => new Error(`answered ${res.status}`),
      (e: Error) => e,
    );
    expect(err.message).toBe('fetch failed');
    expect((err.cause as Error | undefined)?.message).toMatch(/other side closed|ECONNRESET/);
  });

  it('an https POST /v3/kv/range without a client certificate fails the TLS handshake', async () => {
    await expect(rangeAll()).rejects.toThrow(/alert certificate required/);
  });

  it('an etcd client with only the CA is refused', async () => {
    const s = store({ prefix: '/auth-secret', tls: { ca } });
    await expect(s.get('/auth-secret/k')).rejects.toThrow(/alert certificate required/);
  });

  it("a client certificate from another CA is refused, even with the CN 'root'", async () => {
    const other = new Pki(otherCaDir);
    other.init();
    const s = store({ prefix: '/auth-secret', tls: { ca, ...files(other.client('forged-root', 'root')) } });
    await expect(s.get('/auth-secret/k')).rejects.toThrow(/alert unknown ca/);
  });
});

describe('etcd users', () => {
  it('a certificate of the right CA whose CN is no etcd user is refused', async () => {
    const stranger = files(pki.client('etcd-stranger', uniqueName('stranger')));
    const s = store({ prefix: '/auth-secret', tls: { ca, ...stranger } });
    await expect(s.get('/auth-secret/k')).rejects.toThrow(/permission denied/);
    await expect(s.client.put('/auth-secret/k').value('forged')).rejects.toThrow(/permission denied/);
    // Over the HTTP gateway etcd ignores a certificate's CN altogether, so it names no user there either.
    const res = await rangeAll(stranger);
    expect(res).toEqual({ status: 400, body: expect.stringContaining('CommonName of client') });
    expect((await rangeAll(files(etcd.operatorCert))).status).toBe(400);
  });

  it("the operator's user reads, writes, watches and leases under agentflow's keys", async () => {
    const prefix = `/${uniqueName('auth-op')}`;
    const s = testStore(prefix);
    stores.push(s);
    const state = new SharedState(s, { kind: 'namespace', namespace: 'ns' });
    const seen: string[] = [];
    const { revision } = await state.list();
    const watch = await state.watch(
      '',
      revision + 1,
      (e) => seen.push(`${e.key}=${JSON.stringify(e.json)}`),
      () => seen.push('resync'),
    );
    await state.put('a', 1);
    expect((await state.get('a'))?.value).toBe(1);
    const session = await s.session(5);
    await s.client.put(s.key('leased')).value('x').lease(session.id);
    expect((await s.get(s.key('leased')))?.lease).toBe(session.id);
    await session.close();
    expect(await s.get(s.key('leased'))).toBeUndefined();
    await s.deletePrefixes([`${prefix}/`]);
    await expect.poll(() => seen, { timeout: 5_000 }).toContain('a=1');
    await watch.close();
  });

  it("the operator's user cannot administer etcd (users, roles, auth)", async () => {
    const s = testStore('/auth-admin');
    stores.push(s);
    await expect(s.client.auth.authDisable()).rejects.toThrow(/permission denied/);
    await expect(s.client.user('intruder').create('pw')).rejects.toThrow(/permission denied/);
    await expect(s.client.role('agentflow-operator').grant({ permission: 'Readwrite', key: 'x' })).rejects.toThrow(
      /permission denied/,
    );
  });
});

describe('password auth (StoreOptions.auth, for external etcds that use it)', () => {
  const user = uniqueName('pw-user');
  const prefix = `/${user}`;
  let root: StateStore;

  beforeAll(async () => {
    root = testStore('/', 'root');
    stores.push(root);
    // A user of its own prefix only: narrower than the harness's operator role.
    await root.client.role(user).create();
    await root.client.role(user).grant({ permission: 'Readwrite', range: root.client.range({ prefix: `${prefix}/` }) });
    await (await root.client.user(user).create('correct horse')).addRole(user);
  });

  afterAll(async () => {
    await root.client.user(user).delete();
    await root.client.role(user).delete();
  });

  // The TLS handshake still needs a certificate of etcd's CA; the password, not its CN, names the user.
  const cert = () => files(pki.client('etcd-password-client', 'nobody-in-particular'));

  it('a user with the right password reads and writes its prefix, and nothing else', async () => {
    const s = store({ prefix, tls: { ca, ...cert() }, auth: { username: user, password: 'correct horse' } });
    await s.client.put(`${prefix}/k`).value('v');
    expect((await s.get(`${prefix}/k`))?.value).toBe('v');
    await expect(s.get('/auth-secret/k')).rejects.toThrow(/permission denied/);
  });

  it('a wrong password is refused', async () => {
    const s = store({ prefix, tls: { ca, ...cert() }, auth: { username: user, password: 'wrong' } });
    await expect(s.get(`${prefix}/k`)).rejects.toThrow(/invalid user ID or password|authentication failed/);
  });
});
