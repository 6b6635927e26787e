import 'reflect-metadata';
import { X509Certificate } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import { describe, expect, it } from 'vitest';
import {
  createCa,
  isDueForRenewal,
  isSignedBy,
  issueServingCert,
  parseSans,
  renewalTime,
} from '../../../src/operator/tls/certs.ts';
import { TlsConfigError, TlsMaterialError } from '../../../src/operator/tls/errors.ts';
import { PushIdentityProvider } from '../../../src/operator/tls/identity-provider.ts';
import {
  advanceManaged,
  createMaterial,
  KEYS,
  type ManagedPolicy,
  materialData,
  readMaterial,
  type TlsMaterial,
} from '../../../src/operator/tls/material.ts';

const T0 = new Date('2030-01-01T00:00:00Z');
const at = (seconds: number) => new Date(T0.getTime() + seconds * 1000);
const SANS = parseSans(['agentflow-dispatcher.agentflow-system.svc', 'localhost', '127.0.0.1', '::1']);
const b64 = (s: string) => Buffer.from(s).toString('base64');

describe('certificates', () => {
  it('issues an ECDSA P-256 CA that may sign certificates only', async () => {
    const ca = await createCa({ validitySeconds: 3600, now: T0 });
    const cert = new X509Certificate(ca.certPem);
    expect(cert.ca).toBe(true);
    expect(cert.verify(cert.publicKey)).toBe(true);
    expect(cert.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    const parsed = new x509.X509Certificate(ca.certPem);
    const usage = parsed.getExtension(x509.KeyUsagesExtension);
    expect(usage?.critical).toBe(true);
    expect((usage?.usages ?? 0) & x509.KeyUsageFlags.keyCertSign).toBeTruthy();
    expect(parsed.getExtension(x509.BasicConstraintsExtension)?.pathLength).toBe(0);
  });

  it('issues a serving certificate for exactly its SANs, chained to the CA', async () => {
    const ca = await createCa({ validitySeconds: 3600, now: T0 });
    const issued = await issueServingCert(ca, { sans: SANS, validitySeconds: 600, now: T0 });
    const leaf = new X509Certificate(issued.certPem);
    const caCert = new X509Certificate(ca.certPem);
    expect(leaf.ca).toBe(false);
    expect(leaf.verify(caCert.publicKey)).toBe(true);
    expect(leaf.checkIssued(caCert)).toBe(true);
    expect(isSignedBy(leaf, caCert)).toBe(true);
    expect(leaf.keyUsage).toEqual(['1.3.6.1.5.5.7.3.1']); // serverAuth only
    expect(leaf.checkHost('agentflow-dispatcher.agentflow-system.svc')).toBe(
      'agentflow-dispatcher.agentflow-system.svc',
    );
    expect(leaf.checkHost('localhost')).toBe('localhost');
    expect(leaf.checkHost('evil.example.com')).toBeUndefined();
    expect(leaf.checkIP('127.0.0.1')).toBe('127.0.0.1');
    expect(leaf.checkIP('::1')).toBe('::1');
    expect(leaf.checkIP('10.0.0.1')).toBeUndefined();
    expect(leaf.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    expect(leaf.validToDate).toEqual(at(600));
    // Backdated a little for peers whose clocks lag, never beyond the requested life.
    expect(leaf.validFromDate.getTime()).toBeLessThanOrEqual(T0.getTime());
    expect(leaf.validFromDate.getTime()).toBeGreaterThanOrEqual(at(-300).getTime());
    // A certificate from another CA does not verify against this one.
    const other = new X509Certificate((await createCa({ validitySeconds: 3600, now: T0 })).certPem);
    expect(isSignedBy(leaf, other)).toBe(false);
  });

  it('is due for renewal at two thirds of its life', async () => {
    const ca = await createCa({ validitySeconds: 30_000, now: T0 });
    const leaf = new X509Certificate(
      (await issueServingCert(ca, { sans: SANS, validitySeconds: 3000, now: T0 })).certPem,
    );
    const life = leaf.validToDate.getTime() - leaf.validFromDate.getTime();
    expect(renewalTime(leaf).getTime()).toBe(leaf.validFromDate.getTime() + (life * 2) / 3);
    expect(isDueForRenewal(leaf, new Date(renewalTime(leaf).getTime() - 1000))).toBe(false);
    expect(isDueForRenewal(leaf, renewalTime(leaf))).toBe(true);
  });

  it('refuses SANs that are neither DNS names nor IP addresses, naming the entry', () => {
    expect(() => parseSans([])).toThrow(TlsConfigError);
    expect(() => parseSans(['ok.example', 'not a name'])).toThrow(/sans\[1\].*"not a name"/);
    expect(() => parseSans(['under_score.example'])).toThrow(/sans\[0\]/);
    expect(parseSans(['B.example', 'b.example', '0:0:0:0:0:0:0:1', '10.0.0.1'])).toEqual({
      dns: ['b.example'],
      ips: ['10.0.0.1', '::1'],
    });
  });
});

const POLICY: ManagedPolicy = { sans: SANS, certValiditySeconds: 100, caValiditySeconds: 1200 };
const SECRET = 'agentflow-system/agentflow-dispatcher-tls';

describe('managed rotation', () => {
  it('changes nothing while everything is fresh', async () => {
    const m = await createMaterial(POLICY, T0);
    expect(await advanceManaged(m, POLICY, at(10))).toBeUndefined();
  });

  it('renews the serving certificate at two thirds of its life, from the same CA', async () => {
    const m = await createMaterial(POLICY, T0);
    expect(await advanceManaged(m, POLICY, at(60))).toBeUndefined();
    const next = await advanceManaged(m, POLICY, at(67));
    expect(next?.serving).toBe('Expiring');
    expect(next?.caCreated).toBe(false);
    const leaf = next?.material.serving.leaf as X509Certificate;
    expect(leaf.serialNumber).not.toBe(m.serving.leaf.serialNumber);
    expect(isSignedBy(leaf, m.signer?.cert as X509Certificate)).toBe(true);
    expect(next?.material.trust.map((c) => c.fingerprint256)).toEqual(m.trust.map((c) => c.fingerprint256));
  });

  it('renews when asked, or when the SANs or the validity are no longer what is configured', async () => {
    const m = await createMaterial(POLICY, T0);
    expect((await advanceManaged(m, POLICY, at(1), true))?.serving).toBe('Requested');
    const moreSans = { ...POLICY, sans: parseSans(['localhost', 'dispatcher.example']) };
    const renewed = await advanceManaged(m, moreSans, at(1));
    expect(renewed?.serving).toBe('SansChanged');
    expect(renewed?.material.serving.leaf.checkHost('dispatcher.example')).toBe('dispatcher.example');
    expect((await advanceManaged(m, { ...POLICY, certValiditySeconds: 50 }, at(1)))?.serving).toBe('ValidityChanged');
  });

  it('rotates the CA with an overlap: agents trust the new CA well before it signs, and nothing served outlives its CA', async () => {
    const step = 10;
    const overlap = POLICY.caValiditySeconds / 3 - POLICY.certValiditySeconds;
    let m: TlsMaterial = await createMaterial(POLICY, T0);
    const trustedSince = new Map<string, number>([[m.trust[0]?.fingerprint256 as string, 0]]);
    let rotations = 0;
    let maxTrusted = 1;
    let issuer = m.signer?.cert.fingerprint256;
    for (let t = step; t <= 2.5 * POLICY.caValiditySeconds; t += step) {
      const now = at(t);
      const adv = await advanceManaged(m, POLICY, now);
      if (adv) m = adv.material;
      for (const c of m.trust) if (!trustedSince.has(c.fingerprint256)) trustedSince.set(c.fingerprint256, t);
      if (adv?.caCreated) rotations++;
      maxTrusted = Math.max(maxTrusted, m.trust.length);

      const leaf = m.serving.leaf;
      expect(leaf.validFromDate.getTime()).toBeLessThanOrEqual(now.getTime());
      expect(leaf.validToDate.getTime()).toBeGreaterThan(now.getTime());
      const signer = m.trust.find((ca) => isSignedBy(leaf, ca));
      expect(signer, `at t=${t} the serving certificate chains to the bundle`).toBeDefined();
      expect((signer as X509Certificate).validToDate.getTime()).toBeGreaterThanOrEqual(leaf.validToDate.getTime());
      expect(m.trust.every((ca) => ca.validToDate.getTime() > now.getTime())).toBe(true);
      expect(m.trust.length).toBeLessThanOrEqual(2);
      const fp = (signer as X509Certificate).fingerprint256;
      if (fp !== issuer) {
        // The first certificate a new CA signs comes long after agents were given that CA.
        expect(t - (trustedSince.get(fp) as number)).toBeGreaterThanOrEqual(overlap - step);
        issuer = fp;
      }
    }
    expect(rotations).toBe(3);
    expect(maxTrusted).toBe(2);
  });

  it('replaces an expired CA at once when the operator was away for longer than its life', async () => {
    const m = await createMaterial(POLICY, T0);
    const adv = await advanceManaged(m, POLICY, at(5000));
    expect(adv?.caCreated).toBe(true);
    expect(adv?.material.trust).toHaveLength(1);
    expect(isSignedBy(adv?.material.serving.leaf as X509Certificate, adv?.material.trust[0] as X509Certificate)).toBe(
      true,
    );
  });
});

describe('Secret contents', () => {
  it('round-trips managed material, the next CA included', async () => {
    let m = await createMaterial(POLICY, T0);
    m = (await advanceManaged(m, POLICY, at(801)))?.material as TlsMaterial;
    expect(m.next).toBeDefined();
    const data = materialData(m, { 'user.note': b64('kept') });
    expect(data['user.note']).toBe(b64('kept'));
    const back = readMaterial(data, { secret: SECRET, mode: 'managed', now: at(801) });
    expect(back.trust.map((c) => c.fingerprint256)).toEqual(m.trust.map((c) => c.fingerprint256));
    expect(back.signer?.cert.fingerprint256).toBe(m.signer?.cert.fingerprint256);
    expect(back.next?.cert.fingerprint256).toBe(m.next?.cert.fingerprint256);
    expect(back.serving.leaf.serialNumber).toBe(m.serving.leaf.serialNumber);
    // Once the next CA signs, its key moves to ca.key and ca-next.key goes.
    const after = materialData((await advanceManaged(m, POLICY, at(1150)))?.material as TlsMaterial, data);
    expect(after[KEYS.nextCaKey]).toBeUndefined();
  });

  async function userSecret(opts: { now?: Date; validitySeconds?: number } = {}) {
    const ca = await createCa({ validitySeconds: 36_000, now: opts.now ?? T0 });
    const s = await issueServingCert(ca, {
      sans: SANS,
      validitySeconds: opts.validitySeconds ?? 3600,
      now: opts.now ?? T0,
    });
    return { 'tls.crt': b64(s.certPem), 'tls.key': b64(s.keyPem), 'ca.crt': b64(ca.certPem) };
  }
  const refused = (data: Record<string, string>, mode: 'managed' | 'secret' = 'secret', now = at(10)) => {
    try {
      readMaterial(data, { secret: SECRET, mode, now });
    } catch (err) {
      expect(err).toBeInstanceOf(TlsMaterialError);
      return err as TlsMaterialError;
    }
    throw new Error('the material was accepted');
  };

  it('accepts a complete, current, trusted Secret', async () => {
    const m = readMaterial(await userSecret(), { secret: SECRET, mode: 'secret', now: at(10) });
    expect(m.serving.leaf.checkHost('localhost')).toBe('localhost');
    expect(m.trust).toHaveLength(1);
  });

  it('names the Secret and the key that is missing or broken', async () => {
    const good = await userSecret();
    const missing = refused({ ...good, 'tls.key': '' });
    expect([missing.problem, missing.key, missing.secret]).toEqual(['MissingKey', 'tls.key', SECRET]);
    expect(missing.message).toBe(`Secret ${SECRET} key tls.key: is missing`);
    const { 'ca.crt': _ca, ...noCa } = good;
    expect(refused(noCa).key).toBe('ca.crt');
    const garbage = refused({
      ...good,
      'tls.crt': b64('-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----'),
    });
    expect([garbage.problem, garbage.key]).toEqual(['InvalidPem', 'tls.crt']);
    expect(refused({ ...good, 'tls.key': b64('not a key') }).problem).toBe('InvalidPem');
  });

  it('refuses a key that does not belong to the certificate', async () => {
    const a = await userSecret();
    const b = await userSecret();
    const err = refused({ ...a, 'tls.key': b['tls.key'] as string });
    expect([err.problem, err.key]).toEqual(['KeyMismatch', 'tls.key']);
  });

  it('refuses, in secret mode, an expired certificate or one ca.crt does not vouch for', async () => {
    const expired = refused(await userSecret({ validitySeconds: 5 }), 'secret', at(60));
    expect([expired.problem, expired.key]).toEqual(['Expired', 'tls.crt']);
    const early = refused(await userSecret({ now: at(1000) }), 'secret', at(0));
    expect(early.problem).toBe('NotYetValid');
    const a = await userSecret();
    const b = await userSecret();
    const untrusted = refused({ ...a, 'ca.crt': b['ca.crt'] as string });
    expect([untrusted.problem, untrusted.key]).toEqual(['UntrustedChain', 'tls.crt']);
  });

  it('requires, in managed mode, a CA key that matches ca.crt', async () => {
    const data = materialData(await createMaterial(POLICY, T0));
    const { [KEYS.caKey]: _key, ...noKey } = data;
    expect(refused(noKey, 'managed').key).toBe('ca.key');
    const other = materialData(await createMaterial(POLICY, T0));
    const mismatch = refused({ ...data, [KEYS.caKey]: other[KEYS.caKey] as string }, 'managed');
    expect([mismatch.problem, mismatch.key]).toEqual(['KeyMismatch', 'ca.key']);
    // An expired serving certificate is no refusal in managed mode: rotation replaces it.
    expect(readMaterial(data, { secret: SECRET, mode: 'managed', now: at(500) }).serving).toBeDefined();
  });
});

describe('PushIdentityProvider', () => {
  it('delivers the current identity to a new listener after it registered, then every update', async () => {
    const ca = await createCa({ validitySeconds: 3600 });
    const one = await issueServingCert(ca, { sans: SANS, validitySeconds: 600 });
    const two = await issueServingCert(ca, { sans: SANS, validitySeconds: 600 });
    const p = new PushIdentityProvider();
    p.update(one.certPem, one.keyPem);
    const seen: string[] = [];
    p.addIdentityCertificateListener((u) => seen.push(new X509Certificate(u?.certificate as Buffer).serialNumber));
    expect(seen).toEqual([]); // not synchronously: grpc-js registers its watcher only afterwards
    await new Promise((r) => process.nextTick(r));
    p.update(two.certPem, two.keyPem);
    expect(seen).toEqual([
      new X509Certificate(one.certPem).serialNumber,
      new X509Certificate(two.certPem).serialNumber,
    ]);
  });

  it('refuses a certificate and key that do not belong together, keeping the previous pair', async () => {
    const ca = await createCa({ validitySeconds: 3600 });
    const one = await issueServingCert(ca, { sans: SANS, validitySeconds: 600 });
    const two = await issueServingCert(ca, { sans: SANS, validitySeconds: 600 });
    const p = new PushIdentityProvider();
    const seen: unknown[] = [];
    p.addIdentityCertificateListener((u) => seen.push(u));
    expect(() => p.update(one.certPem, two.keyPem)).toThrow();
    await new Promise((r) => process.nextTick(r));
    expect(seen).toEqual([]);
  });
});
