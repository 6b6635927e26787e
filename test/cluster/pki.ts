import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * A throw-away PKI for one local control plane, made with the openssl CLI:
 * a CA, the API server's serving certificate, client certificates for users
 * and components, and the service-account signing key pair.
 */
export class Pki {
  readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
  }

  get caCert(): string {
    return join(this.dir, 'ca.crt');
  }
  get caKey(): string {
    return join(this.dir, 'ca.key');
  }

  init(): void {
    if (existsSync(this.caCert)) return;
    openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', this.caKey]);
    openssl([
      'req',
      '-x509',
      '-new',
      '-key',
      this.caKey,
      '-sha256',
      '-days',
      '3650',
      '-subj',
      '/CN=agentflow-local-ca',
      '-out',
      this.caCert,
    ]);
    // Service-account tokens are signed with RSA (kube-apiserver's default expectations).
    openssl(['genrsa', '-out', join(this.dir, 'sa.key'), '2048']);
    openssl(['rsa', '-in', join(this.dir, 'sa.key'), '-pubout', '-out', join(this.dir, 'sa.pub')]);
  }

  get serviceAccountKey(): string {
    return join(this.dir, 'sa.key');
  }
  get serviceAccountPub(): string {
    return join(this.dir, 'sa.pub');
  }

  /** Serving certificate for 127.0.0.1/localhost and the in-cluster service names. */
  serving(name: string, extraIps: string[] = [], extraNames: string[] = []): { cert: string; key: string } {
    const sans = [
      'DNS:localhost',
      'DNS:kubernetes',
      'DNS:kubernetes.default',
      'DNS:kubernetes.default.svc',
      'DNS:kubernetes.default.svc.cluster.local',
      'IP:127.0.0.1',
      'IP:10.0.0.1',
      ...extraIps.map((ip) => `IP:${ip}`),
      ...extraNames.map((n) => `DNS:${n}`),
    ];
    return this.issue(name, `/CN=${name}`, `subjectAltName=${sans.join(',')}\nextendedKeyUsage=serverAuth`);
  }

  /**
   * The process kubelet's serving certificate and the CA its clients must
   * present certificates from. Node addresses are allocated at run time, so
   * the API server does not verify this certificate (kubeadm's default too).
   */
  kubeletTls(): { cert: Buffer; key: Buffer; ca: Buffer } {
    const { cert, key } = this.serving('kubelet-serving');
    return { cert: readFileSync(cert), key: readFileSync(key), ca: readFileSync(this.caCert) };
  }

  /** Client certificate: CN is the user name, each O a group. */
  client(name: string, user: string, groups: string[] = []): { cert: string; key: string } {
    const subj = `/CN=${user}${groups.map((g) => `/O=${g}`).join('')}`;
    return this.issue(name, subj, 'extendedKeyUsage=clientAuth');
  }

  private issue(name: string, subject: string, ext: string): { cert: string; key: string } {
    const key = join(this.dir, `${name}.key`);
    const cert = join(this.dir, `${name}.crt`);
    if (existsSync(cert)) return { cert, key };
    const csr = join(this.dir, `${name}.csr`);
    const extFile = join(this.dir, `${name}.ext`);
    writeFileSync(extFile, `basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n${ext}\n`);
    openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', key]);
    openssl(['req', '-new', '-key', key, '-subj', subject, '-out', csr]);
    openssl([
      'x509',
      '-req',
      '-in',
      csr,
      '-CA',
      this.caCert,
      '-CAkey',
      this.caKey,
      '-CAcreateserial',
      '-days',
      '3650',
      '-sha256',
      '-extfile',
      extFile,
      '-out',
      cert,
    ]);
    return { cert, key };
  }
}

function openssl(args: string[]): void {
  try {
    execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    const stderr = (err as { stderr?: Buffer }).stderr?.toString() ?? '';
    throw new Error(`openssl ${args[0]} failed: ${stderr || (err as Error).message}`);
  }
}
