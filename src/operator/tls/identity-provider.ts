// A grpc-js CertificateProvider fed from memory. grpc-js hands each update to
// tls.Server#setSecureContext, which changes what new handshakes present and
// leaves established connections, and the streams on them, as they are.
import { createSecureContext } from 'node:tls';
import type { experimental } from '@grpc/grpc-js';

type Provider = experimental.CertificateProvider;
type IdentityListener = experimental.IdentityCertificateUpdateListener;
type Identity = experimental.IdentityCertificateUpdate;

export class PushIdentityProvider implements Provider {
  private latest: Identity | undefined;
  private readonly listeners = new Set<IdentityListener>();

  /**
   * Serves `certPem` (leaf first, then intermediates) with `keyPem` from the
   * next handshake on. Throws, and changes nothing, if Node's TLS refuses the
   * pair: grpc-js would otherwise log the failure and drop every new connection.
   */
  update(certPem: string, keyPem: string): void {
    const update: Identity = { certificate: Buffer.from(certPem), privateKey: Buffer.from(keyPem) };
    createSecureContext({ cert: update.certificate, key: update.privateKey });
    this.latest = update;
    for (const l of this.listeners) l(update);
  }

  addIdentityCertificateListener(listener: IdentityListener): void {
    this.listeners.add(listener);
    // Deferred, as grpc-js's own FileWatcherCertificateProvider does: the
    // server registers its watcher only after this call returns, so a
    // synchronous delivery would be recorded but never reach the server.
    process.nextTick(() => {
      if (this.latest && this.listeners.has(listener)) listener(this.latest);
    });
  }

  removeIdentityCertificateListener(listener: IdentityListener): void {
    this.listeners.delete(listener);
  }

  // The dispatcher does not ask agents for client certificates: agents prove who they are with tokens.
  addCaCertificateListener(): void {}
  removeCaCertificateListener(): void {}
}
