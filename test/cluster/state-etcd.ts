// agentflow's own etcd on the local control plane, locked down as the issue
// asks of every install: client TLS with a client certificate required, and
// etcd auth on, so that every test runs against an etcd that refuses
// anonymous requests. With --client-cert-auth, etcd takes the user name from
// the certificate's CN: the operator is the user `agentflow-operator`, the
// harness and tests that administer etcd are `root`.
import { readFileSync } from 'node:fs';
import { Etcd3, Range } from 'etcd3';
import type { ClusterInfo } from './cluster-handle.ts';
import { EtcdServer } from './etcd.ts';
import { waitFor } from './managed-process.ts';
import type { Pki } from './pki.ts';

export const OPERATOR_USER = 'agentflow-operator';
/** The operator's role: readwrite on every key under "/", as test prefixes are random (/test-…, /wf-…). */
export const OPERATOR_ROLE = 'agentflow-operator';

export interface CertFiles {
  cert: string;
  key: string;
}

/** How to reach the state etcd (ClusterInfo.stateEtcd). */
export interface StateEtcdInfo {
  endpoint: string;
  caFile: string;
  /** CN=agentflow-operator: what the operator (and, for now, agents) connect with. */
  operatorCert: CertFiles;
  /** CN=root: etcd's administrator (users, roles, auth). */
  rootCert: CertFiles;
  /**
   * With a pod network: where pods reach it (the host address), for a selector-less Service such
   * as deploy/operator's `agentflow-etcd.agentflow-system`, whose names its certificate carries.
   */
  podEndpoint?: { ip: string; port: number };
}

/** The names a Service in front of the state etcd may have (deploy/operator's --etcd-endpoints). */
export const STATE_ETCD_SERVICE_NAMES = ['agentflow-etcd.agentflow-system', 'agentflow-etcd.agentflow-system.svc'];

/** The state etcd of a control plane: started over TLS, then auth enabled through its API. */
export class StateEtcd {
  readonly server: EtcdServer;
  private readonly serving: CertFiles;
  private readonly caFile: string;
  readonly operatorCert: CertFiles;
  readonly rootCert: CertFiles;

  private readonly podIp: string | undefined;

  /** `podIp`: also serve pods, at the pod network's host address. */
  constructor(dir: string, pki: Pki, podIp?: string) {
    this.caFile = pki.caCert;
    this.podIp = podIp;
    this.serving = podIp
      ? pki.serving('agentflow-etcd', [podIp], STATE_ETCD_SERVICE_NAMES)
      : pki.serving('agentflow-etcd');
    this.operatorCert = pki.client('agentflow-etcd-operator', OPERATOR_USER);
    this.rootCert = pki.client('agentflow-etcd-root', 'root');
    this.server = new EtcdServer({
      dir,
      name: 'agentflow-etcd',
      unsafeNoFsync: true,
      tls: { certFile: this.serving.cert, keyFile: this.serving.key, caFile: this.caFile },
      ...(podIp && { extraClientIps: [podIp] }),
    });
  }

  get name(): string {
    return this.server.name;
  }
  get pid(): number | undefined {
    return this.server.pid;
  }

  get info(): StateEtcdInfo {
    return {
      endpoint: this.server.endpoint,
      caFile: this.caFile,
      operatorCert: this.operatorCert,
      rootCert: this.rootCert,
      ...(this.podIp && { podEndpoint: { ip: this.podIp, port: this.server.clientPort } }),
    };
  }

  async start(): Promise<void> {
    await this.server.start();
    await enableAuth(this.info);
  }

  stop(): Promise<void> {
    return this.server.stop();
  }
}

/**
 * `etcdctl user add root --no-password; user grant-role root root; role add
 * agentflow-operator; role grant-permission --prefix agentflow-operator
 * readwrite /; user add agentflow-operator --no-password; user grant-role …;
 * auth enable`, through the API as root (no etcdctl is built). On a data
 * directory where auth is already on, nothing is left to do.
 */
async function enableAuth(info: StateEtcdInfo): Promise<void> {
  const root = new Etcd3({ hosts: [info.endpoint], credentials: credentials(info, 'root') });
  try {
    // The listening port comes before a leader: retry the first call until etcd answers.
    let enabled = false;
    await waitFor(
      `${info.endpoint} to answer over TLS`,
      async () => {
        try {
          enabled = (await root.auth.authStatus()).enabled;
          return true;
        } catch {
          return false;
        }
      },
      30_000,
      100,
    );
    if (enabled) return;
    await root.auth.userAdd({ name: 'root', options: { no_password: true } });
    await root.auth.userGrantRole({ user: 'root', role: 'root' });
    await root.role(OPERATOR_ROLE).create();
    await root.role(OPERATOR_ROLE).grant({ permission: 'Readwrite', range: Range.prefix('/') });
    await root.auth.userAdd({ name: OPERATOR_USER, options: { no_password: true } });
    await root.user(OPERATOR_USER).addRole(OPERATOR_ROLE);
    await root.auth.authEnable();
  } finally {
    root.close();
  }
}

function credentials(info: StateEtcdInfo, as: 'operator' | 'root') {
  const c = as === 'root' ? info.rootCert : info.operatorCert;
  return {
    rootCertificate: readFileSync(info.caFile),
    certChain: readFileSync(c.cert),
    privateKey: readFileSync(c.key),
  };
}

// ---- How tests, fixtures and the install reach it: one place for the rule. ----

/** The control plane's state etcd, or an error saying there is none. */
export function stateEtcdOf(info: ClusterInfo): StateEtcdInfo {
  if (!info.stateEtcd) throw new Error('the control plane has no agentflow etcd (ClusterInfo.stateEtcd)');
  return info.stateEtcd;
}

/** StoreOptions (without prefix) for a client of the state etcd: the operator's user unless told otherwise. */
export function stateStoreOptions(
  info: ClusterInfo,
  as: 'operator' | 'root' = 'operator',
): { endpoints: string[]; tls: { ca: Buffer; cert: Buffer; key: Buffer } } {
  const etcd = stateEtcdOf(info);
  const c = credentials(etcd, as);
  return { endpoints: [etcd.endpoint], tls: { ca: c.rootCertificate, cert: c.certChain, key: c.privateKey } };
}

/** agentflow-operator's flags for the state etcd, as the operator's user. */
export function operatorEtcdFlags(info: ClusterInfo): string[] {
  const etcd = stateEtcdOf(info);
  return [
    `--etcd-endpoints=${etcd.endpoint}`,
    `--etcd-ca-file=${etcd.caFile}`,
    `--etcd-cert-file=${etcd.operatorCert.cert}`,
    `--etcd-key-file=${etcd.operatorCert.key}`,
  ];
}

/**
 * The operator's client certificate as AGENTFLOW_ETCD_CA_FILE, _CERT_FILE and
 * _KEY_FILE, for fixture processes that use the state layer directly
 * (test/fixtures/state/holder.ts, read by test/fixtures/etcd-tls.ts). Never
 * for agents: they hold no etcd credentials and refuse these settings.
 */
export function etcdClientEnv(info: ClusterInfo): Record<string, string> {
  const etcd = stateEtcdOf(info);
  return {
    AGENTFLOW_ETCD_CA_FILE: etcd.caFile,
    AGENTFLOW_ETCD_CERT_FILE: etcd.operatorCert.cert,
    AGENTFLOW_ETCD_KEY_FILE: etcd.operatorCert.key,
  };
}
