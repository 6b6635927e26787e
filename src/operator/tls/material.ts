// The dispatcher's TLS material as kept in its Secret: reading and checking
// it, writing it back, and deciding (as a pure function of the material, the
// policy and the clock) what the managed PKI must do next. Two operator
// replicas looking at the same Secret at the same time decide the same thing.
import type { KeyObject, X509Certificate } from 'node:crypto';
import {
  type CertAndKey,
  certificateSans,
  createCa,
  isDueForRenewal,
  isExpired,
  isSignedBy,
  isSupportedCaKey,
  issueServingCert,
  parseCertificates,
  parsePrivateKey,
  type SubjectAltNames,
  sameSans,
  toPemBundle,
} from './certs.ts';
import { TlsMaterialError } from './errors.ts';

/** The Secret's data keys: kubernetes.io/tls plus the CA, as cert-manager lays them out. */
export const KEYS = {
  cert: 'tls.crt',
  key: 'tls.key',
  ca: 'ca.crt',
  /** Managed mode: the key of the CA that signs serving certificates now. */
  caKey: 'ca.key',
  /** Managed mode, during a CA rotation only: the key of the CA that signs next. */
  nextCaKey: 'ca-next.key',
} as const;

export interface ServingIdentity {
  /** tls.crt as given: the leaf, then any intermediates. */
  chainPem: string;
  keyPem: string;
  leaf: X509Certificate;
}

export interface CaWithKey {
  cert: X509Certificate;
  keyPem: string;
}

export interface TlsMaterial {
  /** Every CA agents must trust now, oldest first (ca.crt). */
  trust: X509Certificate[];
  serving: ServingIdentity;
  /** Managed mode: the CA that signs serving certificates. */
  signer?: CaWithKey;
  /** Managed mode, during a CA rotation: the CA already trusted that will take over signing. */
  next?: CaWithKey;
}

export type TlsMode = 'managed' | 'secret';

/**
 * Reads and checks a Secret's data (base64 values, as the API returns them).
 * Secret mode serves what it is given, so it must be complete, current and
 * chain to ca.crt; managed mode repairs an expired or untrusted serving
 * certificate itself, so there only the structure is checked.
 */
export function readMaterial(
  data: Record<string, string> | undefined,
  opts: { secret: string; mode: TlsMode; now: Date },
): TlsMaterial {
  const text = (key: string, required: boolean): string | undefined => {
    const b64 = data?.[key];
    if (b64 === undefined || b64 === '') {
      if (required) throw new TlsMaterialError('MissingKey', opts.secret, key, 'is missing');
      return undefined;
    }
    return Buffer.from(b64, 'base64').toString('utf8');
  };
  const certs = (key: string): X509Certificate[] => {
    const pem = text(key, true) as string;
    let parsed: X509Certificate[];
    try {
      parsed = parseCertificates(pem);
    } catch (err) {
      throw new TlsMaterialError(
        'InvalidPem',
        opts.secret,
        key,
        `holds a certificate that does not parse: ${msg(err)}`,
      );
    }
    if (parsed.length === 0) throw new TlsMaterialError('InvalidPem', opts.secret, key, 'holds no PEM certificate');
    return parsed;
  };
  const privateKey = (key: string, required: boolean): { pem: string; key: KeyObject } | undefined => {
    const pem = text(key, required);
    if (pem === undefined) return undefined;
    try {
      return { pem, key: parsePrivateKey(pem) };
    } catch (err) {
      throw new TlsMaterialError('InvalidPem', opts.secret, key, `is not a PEM private key: ${msg(err)}`);
    }
  };

  const chain = certs(KEYS.cert);
  const leaf = chain[0] as X509Certificate;
  const servingKey = privateKey(KEYS.key, true) as { pem: string; key: KeyObject };
  if (!leaf.checkPrivateKey(servingKey.key)) {
    throw new TlsMaterialError('KeyMismatch', opts.secret, KEYS.key, `does not match the certificate in ${KEYS.cert}`);
  }
  const trust = sortByAge(dedupe(certs(KEYS.ca)));
  const material: TlsMaterial = {
    trust,
    serving: { chainPem: text(KEYS.cert, true) as string, keyPem: servingKey.pem, leaf },
  };

  if (opts.mode === 'managed') {
    const caKey = (key: string, required: boolean): CaWithKey | undefined => {
      const k = privateKey(key, required);
      if (!k) return undefined;
      if (!isSupportedCaKey(k.key)) {
        throw new TlsMaterialError('UnsupportedKey', opts.secret, key, 'is not an ECDSA P-256 key');
      }
      const cert = trust.find((c) => c.checkPrivateKey(k.key));
      if (!cert) throw new TlsMaterialError('KeyMismatch', opts.secret, key, `matches no certificate in ${KEYS.ca}`);
      return { cert, keyPem: k.pem };
    };
    material.signer = caKey(KEYS.caKey, true) as CaWithKey;
    const next = caKey(KEYS.nextCaKey, false);
    if (next) material.next = next;
    return material;
  }

  if (opts.now.getTime() < leaf.validFromDate.getTime()) {
    throw new TlsMaterialError('NotYetValid', opts.secret, KEYS.cert, `is not valid before ${leaf.validFrom}`);
  }
  if (isExpired(leaf, opts.now)) {
    throw new TlsMaterialError('Expired', opts.secret, KEYS.cert, `expired at ${leaf.validTo}`);
  }
  if (!chainsTo(leaf, chain.slice(1), trust)) {
    throw new TlsMaterialError(
      'UntrustedChain',
      opts.secret,
      KEYS.cert,
      `is not signed by any certificate in ${KEYS.ca} (directly or through the intermediates in ${KEYS.cert}); agents given ${KEYS.ca} would refuse it`,
    );
  }
  return material;
}

/** Secret data (base64) for `material`, keeping keys of `previous` that are not ours. */
export function materialData(material: TlsMaterial, previous: Record<string, string> = {}): Record<string, string> {
  const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');
  const data: Record<string, string> = { ...previous };
  delete data[KEYS.nextCaKey];
  data[KEYS.cert] = b64(material.serving.chainPem);
  data[KEYS.key] = b64(material.serving.keyPem);
  data[KEYS.ca] = b64(toPemBundle(material.trust));
  if (material.signer) data[KEYS.caKey] = b64(material.signer.keyPem);
  if (material.next) data[KEYS.nextCaKey] = b64(material.next.keyPem);
  return data;
}

export interface ManagedPolicy {
  sans: SubjectAltNames;
  certValiditySeconds: number;
  caValiditySeconds: number;
}

/** Why a new serving certificate was issued. */
export type ServingRenewalReason =
  | 'Created'
  | 'Requested'
  | 'Expiring'
  | 'SansChanged'
  | 'ValidityChanged'
  | 'SignerChanged';

export interface Advance {
  material: TlsMaterial;
  /** Set when a new serving certificate was issued. */
  serving?: ServingRenewalReason;
  /** A new CA was created (and added to the trust bundle). */
  caCreated: boolean;
}

/** A brand-new PKI: a CA and a serving certificate it signed. */
export async function createMaterial(policy: ManagedPolicy, now: Date): Promise<TlsMaterial> {
  const ca = await createCa({ validitySeconds: policy.caValiditySeconds, now });
  const signer = toCa(ca);
  return { trust: [signer.cert], signer, serving: await issue(signer, policy, now) };
}

/**
 * What the managed PKI must look like at `now`, or undefined if it already does.
 *
 * The CA rotates with an overlap: when every CA we hold a key for is in the
 * last third of its life, a new CA joins the trust bundle but does not sign
 * yet. The old CA keeps signing while it outlives a fresh serving certificate;
 * after that the new one signs. Agents thus see the new CA in their bundle for
 * (caValidity / 3 − certValidity) before any certificate depends on it, and
 * every certificate served chains to a CA that outlives it.
 */
export async function advanceManaged(
  m: TlsMaterial,
  policy: ManagedPolicy,
  now: Date,
  force = false,
): Promise<Advance | undefined> {
  const trust = m.trust.filter((c) => !isExpired(c, now));
  const keyed = sortByAgeKeyed([m.signer, m.next].filter((k): k is CaWithKey => !!k && !isExpired(k.cert, now)));
  let caCreated = false;
  if (!keyed.some((k) => !isDueForRenewal(k.cert, now))) {
    const ca = toCa(await createCa({ validitySeconds: policy.caValiditySeconds, now }));
    keyed.push(ca);
    trust.push(ca.cert);
    caCreated = true;
  }
  const certMs = policy.certValiditySeconds * 1000;
  const signer =
    keyed.find((k) => k.cert.validToDate.getTime() - now.getTime() >= certMs) ?? (keyed[keyed.length - 1] as CaWithKey);
  // Older CAs never sign again: their keys go; their certificates stay trusted until they expire.
  const next = keyed[keyed.indexOf(signer) + 1];

  const leaf = m.serving.leaf;
  let reason: ServingRenewalReason | undefined;
  if (force) reason = 'Requested';
  else if (isDueForRenewal(leaf, now)) reason = 'Expiring';
  else if (!sameSans(certificateSans(leaf), policy.sans)) reason = 'SansChanged';
  else if (leaf.validToDate.getTime() > now.getTime() + certMs + 1000) reason = 'ValidityChanged';
  else if (!isSignedBy(leaf, signer.cert)) reason = 'SignerChanged';
  const serving = reason ? await issue(signer, policy, now) : m.serving;

  const unchanged =
    !reason && !caCreated && sameCerts(trust, m.trust) && sameCa(signer, m.signer) && sameCa(next, m.next);
  if (unchanged) return undefined;
  const material: TlsMaterial = { trust: sortByAge(trust), serving, signer };
  if (next) material.next = next;
  return { material, ...(reason && { serving: reason }), caCreated };
}

async function issue(signer: CaWithKey, policy: ManagedPolicy, now: Date): Promise<ServingIdentity> {
  const issued = await issueServingCert(
    { certPem: signer.cert.toString(), keyPem: signer.keyPem },
    { sans: policy.sans, validitySeconds: policy.certValiditySeconds, now },
  );
  const [leaf] = parseCertificates(issued.certPem);
  return { chainPem: issued.certPem, keyPem: issued.keyPem, leaf: leaf as X509Certificate };
}

function toCa(ca: CertAndKey): CaWithKey {
  return { cert: parseCertificates(ca.certPem)[0] as X509Certificate, keyPem: ca.keyPem };
}

/** Walks leaf → intermediates until a certificate of `trust` signed the last link. */
function chainsTo(leaf: X509Certificate, intermediates: X509Certificate[], trust: X509Certificate[]): boolean {
  let current = leaf;
  const unused = [...intermediates];
  for (;;) {
    if (trust.some((ca) => isSignedBy(current, ca))) return true;
    const i = unused.findIndex((c) => isSignedBy(current, c));
    if (i < 0) return false;
    current = unused.splice(i, 1)[0] as X509Certificate;
  }
}

function dedupe(certs: X509Certificate[]): X509Certificate[] {
  const seen = new Set<string>();
  return certs.filter((c) => !seen.has(c.fingerprint256) && seen.add(c.fingerprint256));
}

function sortByAge(certs: X509Certificate[]): X509Certificate[] {
  return [...certs].sort((a, b) => a.validFromDate.getTime() - b.validFromDate.getTime());
}

function sortByAgeKeyed(cas: CaWithKey[]): CaWithKey[] {
  return [...cas].sort((a, b) => a.cert.validFromDate.getTime() - b.cert.validFromDate.getTime());
}

function sameCerts(a: X509Certificate[], b: X509Certificate[]): boolean {
  const fp = (l: X509Certificate[]) =>
    l
      .map((c) => c.fingerprint256)
      .sort()
      .join(',');
  return fp(a) === fp(b);
}

function sameCa(a: CaWithKey | undefined, b: CaWithKey | undefined): boolean {
  return a?.cert.fingerprint256 === b?.cert.fingerprint256;
}

function msg(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
