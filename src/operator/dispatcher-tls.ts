// The TLS identity of the dispatcher's gRPC server. In managed mode the
// operator runs its own small PKI in a Secret: created on first start, the
// serving certificate renewed with a third of its life left, the CA rotated
// with an overlap bundle. In secret mode a Secret someone else keeps (the
// user, cert-manager) is served and re-read when it changes. Either way the
// server's certificate is swapped in place: open streams are not dropped.
import { isIP } from 'node:net';
import { experimental, type ServerCredentials } from '@grpc/grpc-js';
import type { Logger } from '../lib/log.ts';
import { isAlreadyExists, isConflict, type KubeClient } from './kube/client.ts';
import type { EventRecorder, EventType } from './kube/events.ts';
import { isExpired, parseSans, type SubjectAltNames, toPemBundle } from './tls/certs.ts';
import { TlsConfigError, TlsMaterialError } from './tls/errors.ts';
import { PushIdentityProvider } from './tls/identity-provider.ts';
import { publishConfigMapKey, type SecretObject, SecretStore } from './tls/kube-store.ts';
import {
  type Advance,
  advanceManaged,
  createMaterial,
  type ManagedPolicy,
  materialData,
  readMaterial,
  type TlsMaterial,
  type TlsMode,
} from './tls/material.ts';

export { TlsConfigError, TlsMaterialError, type TlsMaterialProblem } from './tls/errors.ts';

export type DispatcherTlsMode = TlsMode;

export interface DispatcherTlsOptions {
  client: KubeClient;
  /** The operator's namespace: where the Secret lives. */
  namespace: string;
  /** Default 'agentflow-dispatcher-tls'. */
  secretName?: string;
  /**
   * managed: the operator creates the Secret on first start and rotates it.
   * secret: a Secret the user supplies or cert-manager issues (tls.crt,
   * tls.key, ca.crt), re-read when it changes.
   */
  mode: DispatcherTlsMode;
  /** DNS names and IP addresses of the serving certificate (managed mode). */
  sans: string[];
  /** Default 'agentflow-dispatcher-ca'. */
  caConfigMapName?: string;
  /** Serving certificate lifetime, default 90 days; renewed with a third of it left. */
  certValiditySeconds?: number;
  /** CA lifetime, default 10 years; at least 4 × certValiditySeconds. */
  caValiditySeconds?: number;
  /** How often expiry and the Secret are checked, default 60 s. */
  checkIntervalMs?: number;
  logger: Logger;
  /** Normal CertificateRotated / Warning InvalidCertificate events on the Secret. */
  events?: EventRecorder;
}

export const DEFAULT_SECRET_NAME = 'agentflow-dispatcher-tls';
export const DEFAULT_CA_CONFIGMAP_NAME = 'agentflow-dispatcher-ca';
/** The ConfigMap key agents read their CA bundle from. */
export const CA_CONFIGMAP_KEY = 'ca.crt';
const DAY_SECONDS = 86_400;
const DEFAULT_CERT_VALIDITY_SECONDS = 90 * DAY_SECONDS;
const DEFAULT_CA_VALIDITY_SECONDS = 3650 * DAY_SECONDS;
const DEFAULT_CHECK_INTERVAL_MS = 60_000;
/** Conflicting writers (another replica) are answered by reading again, this many times. */
const SYNC_ATTEMPTS = 5;

type State = 'idle' | 'starting' | 'running' | 'stopped';
const TRANSITIONS: Record<State, readonly State[]> = {
  idle: ['starting', 'stopped'],
  starting: ['running', 'idle', 'stopped'],
  running: ['stopped'],
  stopped: [],
};

export class DispatcherTls {
  /**
   * Server credentials for @grpc/grpc-js whose certificate changes in place
   * on rotation. Until start() has loaded a certificate, the server refuses
   * connections (it never serves plaintext).
   */
  readonly credentials: ServerCredentials;
  readonly caConfigMapName: string;

  private readonly client: KubeClient;
  private readonly store: SecretStore;
  private readonly mode: DispatcherTlsMode;
  private readonly policy: ManagedPolicy | undefined;
  private readonly extraSans: string[];
  private readonly checkIntervalMs: number;
  private readonly log: Logger;
  private readonly events: EventRecorder | undefined;
  private readonly provider = new PushIdentityProvider();
  private readonly caListeners = new Set<(pem: string) => void>();
  private readonly identityListeners = new Set<(certPem: string, keyPem: string) => void>();

  private state: State = 'idle';
  private current: { material: TlsMaterial; object: SecretObject } | undefined;
  /** resourceVersion of the last Secret read, adopted or not: an unchanged Secret is not parsed again. */
  private seenVersion: string | undefined;
  private bundle = '';
  private lastWarning: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(opts: DispatcherTlsOptions) {
    if (!opts.namespace) throw new TlsConfigError('namespace', 'must name the namespace of the Secret');
    if (opts.mode !== 'managed' && opts.mode !== 'secret') {
      throw new TlsConfigError('mode', `must be "managed" or "secret", not ${JSON.stringify(opts.mode)}`);
    }
    const certValiditySeconds = opts.certValiditySeconds ?? DEFAULT_CERT_VALIDITY_SECONDS;
    const caValiditySeconds = opts.caValiditySeconds ?? DEFAULT_CA_VALIDITY_SECONDS;
    if (!Number.isInteger(certValiditySeconds) || certValiditySeconds < 3) {
      throw new TlsConfigError(
        'certValiditySeconds',
        `must be a whole number of seconds ≥ 3, not ${certValiditySeconds}`,
      );
    }
    if (!Number.isInteger(caValiditySeconds) || caValiditySeconds < 4 * certValiditySeconds) {
      throw new TlsConfigError(
        'caValiditySeconds',
        `must be a whole number of seconds ≥ 4 × certValiditySeconds (${4 * certValiditySeconds}), so that a new CA is trusted for a while before it signs; got ${caValiditySeconds}`,
      );
    }
    const checkIntervalMs = opts.checkIntervalMs ?? DEFAULT_CHECK_INTERVAL_MS;
    if (!(checkIntervalMs > 0)) throw new TlsConfigError('checkIntervalMs', `must be > 0, not ${checkIntervalMs}`);

    this.client = opts.client;
    this.mode = opts.mode;
    this.store = new SecretStore(opts.client, opts.namespace, opts.secretName || DEFAULT_SECRET_NAME);
    this.caConfigMapName = opts.caConfigMapName || DEFAULT_CA_CONFIGMAP_NAME;
    const sans: SubjectAltNames | undefined =
      opts.mode === 'managed' || opts.sans.length > 0 ? parseSans(opts.sans) : undefined;
    this.policy = opts.mode === 'managed' && sans ? { sans, certValiditySeconds, caValiditySeconds } : undefined;
    this.extraSans = opts.mode === 'secret' ? opts.sans : [];
    this.checkIntervalMs = checkIntervalMs;
    this.log = opts.logger.with({ component: 'dispatcher-tls', secret: this.store.ref });
    this.events = opts.events;
    // grpc-js's argument order reads (caProvider, identityProvider), but it
    // passes the first to the credentials as the *identity* provider: ours goes
    // first. No CA provider: agents are not asked for client certificates.
    this.credentials = experimental.createCertificateProviderServerCredentials(this.provider, null, false);
  }

  /** Loads (managed mode: or creates) the Secret, then keeps checking it every checkIntervalMs. */
  async start(): Promise<void> {
    this.transition('starting');
    try {
      await this.exclusive(() => (this.mode === 'managed' ? this.syncManaged(false, true) : this.syncSecret(true)));
    } catch (err) {
      if (this.state === 'starting') this.transition('idle');
      throw err;
    }
    if (this.state !== 'starting') return; // stopped meanwhile
    this.transition('running');
    this.schedule();
  }

  stop(): void {
    if (this.state === 'stopped') return;
    this.transition('stopped');
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** PEM of every CA agents must trust now (during a CA rotation, the old and the new). */
  caBundle(): string {
    if (!this.current) throw new Error('DispatcherTls: no certificate loaded yet; await start() first');
    return this.bundle;
  }

  serving(): { certPem: string; notAfter: Date; serial: string } {
    if (!this.current) throw new Error('DispatcherTls: no certificate loaded yet; await start() first');
    const { chainPem, leaf } = this.current.material.serving;
    return { certPem: chainPem, notAfter: leaf.validToDate, serial: leaf.serialNumber };
  }

  /** Issues a new serving certificate now (managed mode). */
  rotate(): Promise<void> {
    if (this.mode !== 'managed') {
      return Promise.reject(
        new TlsConfigError('mode', 'rotate() needs managed mode; in secret mode, renew the Secret and it is re-read'),
      );
    }
    if (this.state !== 'running') return Promise.reject(new Error(`DispatcherTls: cannot rotate while ${this.state}`));
    return this.exclusive(() => this.syncManaged(true, false));
  }

  /**
   * Makes ConfigMap caConfigMapName in `namespace` hold caBundle() under
   * 'ca.crt'. Writes nothing when it already does.
   */
  async publishCa(namespace: string): Promise<void> {
    const result = await publishConfigMapKey(
      this.client,
      { namespace, name: this.caConfigMapName },
      CA_CONFIGMAP_KEY,
      this.caBundle(),
    );
    if (result !== 'unchanged') {
      this.log.info('Published the dispatcher CA bundle', { namespace, configMap: this.caConfigMapName, result });
    }
  }

  /** The serving certificate chain and its key (what the leader's data API serves too). */
  identity(): { certPem: string; keyPem: string } {
    if (!this.current) throw new Error('DispatcherTls: no certificate loaded yet; await start() first');
    const { chainPem, keyPem } = this.current.material.serving;
    return { certPem: chainPem, keyPem };
  }

  /** Called with the new certificate and key whenever the serving identity changes (rotation, a new Secret). */
  onIdentityChange(listener: (certPem: string, keyPem: string) => void): void {
    this.identityListeners.add(listener);
  }

  /** Called with the new bundle whenever caBundle() changes, so every published ConfigMap can follow. */
  onCaChange(listener: (pem: string) => void): void {
    this.caListeners.add(listener);
  }

  private transition(to: State): void {
    if (!TRANSITIONS[this.state].includes(to)) {
      throw new Error(`DispatcherTls: cannot go from ${this.state} to ${to}`);
    }
    this.state = to;
  }

  /** One sync at a time: the periodic check and rotate() never interleave. */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private schedule(): void {
    if (this.state !== 'running') return;
    this.timer = setTimeout(() => {
      const check = () => (this.mode === 'managed' ? this.syncManaged(false, false) : this.syncSecret(false));
      this.exclusive(check).then(
        () => this.schedule(),
        (err: unknown) => {
          this.log.warn('Could not check the dispatcher TLS Secret; will retry', { error: err as Error });
          this.schedule();
        },
      );
    }, this.checkIntervalMs);
    this.timer.unref();
  }

  /**
   * Managed mode: read the Secret (create it if missing), adopt what changed,
   * then renew what is due. Writes carry the resourceVersion read, so of two
   * replicas renewing at once one wins and the other adopts its result.
   */
  private async syncManaged(force: boolean, starting: boolean): Promise<void> {
    const policy = this.policy as ManagedPolicy;
    for (let attempt = 1; ; attempt++) {
      const object = await this.store.get();
      if (!object) {
        // Gone while running (deleted by hand): write back what is served, so agents keep trusting it.
        const material = this.current?.material ?? (await createMaterial(policy, new Date()));
        if (this.current) this.log.warn('The dispatcher TLS Secret is gone; writing it again from memory');
        try {
          const created = await this.store.create(materialData(material));
          this.log.info('Created the dispatcher TLS Secret', { serial: material.serving.leaf.serialNumber });
          this.seenVersion = created.metadata?.resourceVersion;
          this.adopt(material, created);
        } catch (err) {
          if (!isAlreadyExists(err) || attempt >= SYNC_ATTEMPTS) throw err;
          this.log.debug('Another replica created the dispatcher TLS Secret first; reading it');
        }
        continue;
      }
      const version = object.metadata?.resourceVersion;
      if (version !== this.seenVersion) {
        this.seenVersion = version;
        let material: TlsMaterial;
        try {
          material = readMaterial(object.data, { secret: this.store.ref, mode: 'managed', now: new Date() });
        } catch (err) {
          if (starting || !(err instanceof TlsMaterialError)) throw withDeleteHint(err);
          this.warn(object, withDeleteHint(err) as Error);
          return;
        }
        this.adopt(material, object);
      }
      // The Secret holds something we could not adopt: renewing on top of it would hide the problem.
      if (!this.current || this.current.object.metadata?.resourceVersion !== version) return;
      const advance = await advanceManaged(this.current.material, policy, new Date(), force);
      if (!advance) return;
      try {
        const written = await this.store.replace(object, materialData(advance.material, object.data));
        this.seenVersion = written.metadata?.resourceVersion;
        this.adopt(advance.material, written);
        this.report(advance, written);
        return;
      } catch (err) {
        if (!isConflict(err) || attempt >= SYNC_ATTEMPTS) throw err;
        this.log.debug('The dispatcher TLS Secret changed while renewing; reading it again');
      }
    }
  }

  /** Secret mode: adopt the Secret when it changed; a bad one is refused and the last good one kept. */
  private async syncSecret(starting: boolean): Promise<void> {
    const object = await this.store.get();
    if (!object) {
      const err = new TlsMaterialError(
        'SecretNotFound',
        this.store.ref,
        undefined,
        'does not exist; create it with tls.crt, tls.key and ca.crt (or have cert-manager issue it)',
      );
      if (starting) throw err;
      this.warn(undefined, err);
      return;
    }
    const version = object.metadata?.resourceVersion;
    if (version === this.seenVersion) {
      const leaf = this.current?.material.serving.leaf;
      if (leaf && isExpired(leaf, new Date())) {
        this.warn(
          object,
          new TlsMaterialError('Expired', this.store.ref, 'tls.crt', `expired at ${leaf.validTo} and was not renewed`),
        );
      }
      return;
    }
    this.seenVersion = version;
    let material: TlsMaterial;
    try {
      material = readMaterial(object.data, { secret: this.store.ref, mode: 'secret', now: new Date() });
    } catch (err) {
      if (starting || !(err instanceof TlsMaterialError)) throw err;
      this.warn(object, err);
      return;
    }
    const previous = this.current?.material.serving.leaf.serialNumber;
    this.adopt(material, object);
    this.checkCoverage(material);
    if (previous && previous !== material.serving.leaf.serialNumber) {
      const { leaf } = material.serving;
      this.log.info('Reloaded the dispatcher certificate from its Secret', {
        serial: leaf.serialNumber,
        notAfter: leaf.validTo,
      });
      this.event(
        object,
        'Normal',
        'CertificateRotated',
        `Serving certificate ${leaf.serialNumber}, valid until ${leaf.validTo}`,
      );
    }
  }

  /** Serves `material` and remembers it; CA listeners hear of a changed bundle. */
  private adopt(material: TlsMaterial, object: SecretObject): void {
    const before = this.current?.material.serving;
    const { serving } = material;
    if (!before || before.chainPem !== serving.chainPem || before.keyPem !== serving.keyPem) {
      this.provider.update(serving.chainPem, serving.keyPem);
      if (before) {
        for (const listener of this.identityListeners) {
          try {
            listener(serving.chainPem, serving.keyPem);
          } catch (err) {
            this.log.warn('A serving identity listener failed', { error: err as Error });
          }
        }
      }
      this.log.info('Serving the dispatcher certificate', {
        serial: serving.leaf.serialNumber,
        notAfter: serving.leaf.validTo,
      });
    }
    this.current = { material, object };
    this.lastWarning = undefined;
    const bundle = toPemBundle(material.trust);
    if (bundle === this.bundle) return;
    const changed = this.bundle !== '';
    this.bundle = bundle;
    if (!changed) return;
    this.log.info('The dispatcher CA bundle changed', { certificates: material.trust.length });
    for (const listener of this.caListeners) {
      try {
        listener(bundle);
      } catch (err) {
        this.log.warn('A CA bundle listener failed', { error: err as Error });
      }
    }
  }

  private report(advance: Advance, object: SecretObject): void {
    const { leaf } = advance.material.serving;
    if (advance.caCreated) {
      const newest = advance.material.trust[advance.material.trust.length - 1];
      this.log.info('Created a new dispatcher CA; agents trust it alongside the old one until it signs', {
        notAfter: newest?.validTo,
        trusted: advance.material.trust.length,
      });
      this.event(object, 'Normal', 'CertificateAuthorityRotated', `New CA valid until ${newest?.validTo}`);
    }
    if (advance.serving) {
      this.log.info('Rotated the dispatcher serving certificate', {
        reason: advance.serving,
        serial: leaf.serialNumber,
        notAfter: leaf.validTo,
      });
      this.event(
        object,
        'Normal',
        'CertificateRotated',
        `Serving certificate ${leaf.serialNumber} (${advance.serving}), valid until ${leaf.validTo}`,
      );
    }
  }

  /** Secret mode: say so if the certificate does not cover the names agents are told to dial. */
  private checkCoverage(material: TlsMaterial): void {
    const { leaf } = material.serving;
    const uncovered = this.extraSans.filter((s) =>
      isIP(s) ? leaf.checkIP(s) === undefined : leaf.checkHost(s) === undefined,
    );
    if (uncovered.length > 0) {
      this.log.warn('The dispatcher certificate does not cover some configured names; agents dialling them fail', {
        uncovered,
      });
    }
  }

  /** A Warning log line and Event, once per distinct problem. */
  private warn(object: SecretObject | undefined, err: Error): void {
    if (err.message === this.lastWarning) return;
    this.lastWarning = err.message;
    this.log.warn('Refused the dispatcher TLS Secret; still serving the last good certificate', {
      error: err,
      ...(err instanceof TlsMaterialError && { problem: err.problem, key: err.key }),
    });
    if (object) this.event(object, 'Warning', 'InvalidCertificate', err.message);
  }

  private event(object: SecretObject, type: EventType, reason: string, message: string): void {
    this.events?.record({ apiVersion: 'v1', kind: 'Secret', ...object }, type, reason, message);
  }
}

/** In managed mode the way out of a broken Secret is to delete it: say so. */
function withDeleteHint(err: unknown): unknown {
  if (!(err instanceof TlsMaterialError)) return err;
  return new TlsMaterialError(
    err.problem,
    err.secret,
    err.key,
    `${err.detail} (delete the Secret to have the operator issue a new CA and certificate; agents then need the new CA bundle)`,
  );
}
