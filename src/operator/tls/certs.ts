// Certificate issuance and inspection for the dispatcher's own small PKI:
// ECDSA P-256 keys, a CA that signs nothing but serving certificates, and
// serving certificates for the dispatcher's DNS names and IP addresses.
// node:crypto can verify certificates but not issue them; @peculiar/x509
// builds them on Node's WebCrypto. It resolves its algorithm registry through
// tsyringe, which refuses to load without the Reflect metadata polyfill: that
// import must stay first.
import 'reflect-metadata';
import { createPrivateKey, KeyObject, webcrypto, X509Certificate } from 'node:crypto';
import { isIP, SocketAddress } from 'node:net';
import * as x509 from '@peculiar/x509';
import { TlsConfigError } from './errors.ts';

// Passed explicitly rather than set as the library's process-wide default.
const crypto = webcrypto;

const KEY_ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGNING_ALGORITHM = { name: 'ECDSA', hash: 'SHA-256' } as const;

/** A certificate and its private key, both PEM (the key PKCS#8). */
export interface CertAndKey {
  certPem: string;
  keyPem: string;
}

/** What a serving certificate is issued for, sorted and de-duplicated. */
export interface SubjectAltNames {
  dns: string[];
  ips: string[];
}

const DNS_NAME = /^(\*\.)?([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$/;

/** Splits SANs into DNS names and IP addresses; refuses anything that is neither, naming the entry. */
export function parseSans(sans: readonly string[], field = 'sans'): SubjectAltNames {
  if (sans.length === 0) throw new TlsConfigError(field, 'must name at least one DNS name or IP address');
  const dns = new Set<string>();
  const ips = new Set<string>();
  sans.forEach((raw, i) => {
    const s = raw.trim();
    if (isIP(s)) ips.add(normalizeIp(s));
    else if (s.length <= 253 && DNS_NAME.test(s.toLowerCase())) dns.add(s.toLowerCase());
    else throw new TlsConfigError(`${field}[${i}]`, `${JSON.stringify(raw)} is neither a DNS name nor an IP address`);
  });
  return { dns: [...dns].sort(), ips: [...ips].sort() };
}

function normalizeIp(ip: string): string {
  return isIP(ip) === 6 ? new SocketAddress({ address: ip, family: 'ipv6' }).address : ip;
}

/** The DNS names and IP addresses a certificate's subjectAltName extension lists. */
export function certificateSans(cert: X509Certificate): SubjectAltNames {
  const dns = new Set<string>();
  const ips = new Set<string>();
  // Node prints the extension as "DNS:a, IP Address:1.2.3.4"; names of ours never hold ", ".
  for (const entry of (cert.subjectAltName ?? '').split(', ')) {
    if (entry.startsWith('DNS:')) dns.add(entry.slice(4).toLowerCase());
    else if (entry.startsWith('IP Address:') && isIP(entry.slice(11))) ips.add(normalizeIp(entry.slice(11)));
  }
  return { dns: [...dns].sort(), ips: [...ips].sort() };
}

export function sameSans(a: SubjectAltNames, b: SubjectAltNames): boolean {
  return a.dns.join(',') === b.dns.join(',') && a.ips.join(',') === b.ips.join(',');
}

/**
 * notBefore is set slightly in the past so that a peer whose clock lags a
 * little still accepts a certificate issued just now; by at most 5 minutes and
 * a twentieth of the validity, so a short-lived certificate keeps its shape.
 * Seconds only: X.509 times have no finer resolution.
 */
export function validityWindow(now: Date, validitySeconds: number): { notBefore: Date; notAfter: Date } {
  const start = Math.floor(now.getTime() / 1000);
  const backdate = Math.min(300, Math.floor(validitySeconds / 20));
  return { notBefore: new Date((start - backdate) * 1000), notAfter: new Date((start + validitySeconds) * 1000) };
}

/** When a certificate is due for renewal: with a third of its life left. */
export function renewalTime(cert: X509Certificate): Date {
  const from = cert.validFromDate.getTime();
  const to = cert.validToDate.getTime();
  return new Date(from + ((to - from) * 2) / 3);
}

export function isDueForRenewal(cert: X509Certificate, now: Date): boolean {
  return now.getTime() >= renewalTime(cert).getTime();
}

export function isExpired(cert: X509Certificate, now: Date): boolean {
  return now.getTime() >= cert.validToDate.getTime();
}

/** Whether `cert` names `ca` as its issuer and carries a valid signature of `ca`'s key. */
export function isSignedBy(cert: X509Certificate, ca: X509Certificate): boolean {
  return cert.checkIssued(ca) && cert.verify(ca.publicKey);
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/** The certificates of a PEM bundle, in order; throws if a block does not parse. */
export function parseCertificates(pem: string): X509Certificate[] {
  return (pem.match(PEM_CERT) ?? []).map((block) => new X509Certificate(block));
}

/** A bundle of certificates as PEM, one block after the other, newline-terminated. */
export function toPemBundle(certs: readonly X509Certificate[]): string {
  return certs.map((c) => c.toString().trim()).join('\n') + (certs.length ? '\n' : '');
}

/** A fresh self-signed CA that may sign end-entity certificates only (pathLen 0). */
export async function createCa(opts: { validitySeconds: number; now?: Date }): Promise<CertAndKey> {
  const now = opts.now ?? new Date();
  const keys = (await crypto.subtle.generateKey(KEY_ALGORITHM, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  // Distinct subjects per CA: during a rotation two CAs sit side by side in one bundle.
  const name = `CN=agentflow-dispatcher-ca-${Math.floor(now.getTime() / 1000)}, O=agentflow`;
  const cert = await x509.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: serialNumber(),
      name,
      keys,
      signingAlgorithm: SIGNING_ALGORITHM,
      ...validityWindow(now, opts.validitySeconds),
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, crypto),
      ],
    },
    crypto,
  );
  return { certPem: cert.toString('pem'), keyPem: exportKey(keys.privateKey) };
}

/** A serving certificate (serverAuth) for `sans`, signed by `ca`. */
export async function issueServingCert(
  ca: CertAndKey,
  opts: { sans: SubjectAltNames; validitySeconds: number; now?: Date },
): Promise<CertAndKey> {
  const now = opts.now ?? new Date();
  const caCert = new x509.X509Certificate(ca.certPem);
  const caKey = await importSigningKey(ca.keyPem);
  const keys = (await crypto.subtle.generateKey(KEY_ALGORITHM, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.create(
    {
      serialNumber: serialNumber(),
      subject: 'CN=agentflow-dispatcher, O=agentflow',
      issuer: caCert.subjectName,
      publicKey: keys.publicKey,
      signingKey: caKey,
      signingAlgorithm: SIGNING_ALGORITHM,
      ...validityWindow(now, opts.validitySeconds),
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
        new x509.SubjectAlternativeNameExtension([
          ...opts.sans.dns.map((value) => ({ type: 'dns' as const, value })),
          ...opts.sans.ips.map((value) => ({ type: 'ip' as const, value })),
        ]),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, crypto),
        await x509.AuthorityKeyIdentifierExtension.create(caCert.publicKey, false, crypto),
      ],
    },
    crypto,
  );
  return { certPem: cert.toString('pem'), keyPem: exportKey(keys.privateKey) };
}

/** Parses a PEM private key (PKCS#8, SEC1 or PKCS#1); throws if it does not parse. */
export function parsePrivateKey(pem: string): KeyObject {
  return createPrivateKey(pem);
}

/** Whether a CA key can sign here: ECDSA P-256, the only kind this PKI issues. */
export function isSupportedCaKey(key: KeyObject): boolean {
  return key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1';
}

async function importSigningKey(pem: string): Promise<webcrypto.CryptoKey> {
  const key = parsePrivateKey(pem);
  if (!isSupportedCaKey(key)) throw new Error('the CA key is not an ECDSA P-256 key');
  const der = key.export({ type: 'pkcs8', format: 'der' });
  return crypto.subtle.importKey('pkcs8', der, KEY_ALGORITHM, false, ['sign']);
}

function exportKey(key: webcrypto.CryptoKey): string {
  return KeyObject.from(key).export({ type: 'pkcs8', format: 'pem' }).toString();
}

/** 16 random bytes, the top bit clear so the DER integer stays positive and 16 bytes long. */
function serialNumber(): string {
  const bytes = webcrypto.getRandomValues(new Uint8Array(16));
  bytes[0] = ((bytes[0] ?? 0) & 0x7f) | 0x01;
  return Buffer.from(bytes).toString('hex');
}
