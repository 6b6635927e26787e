import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { binaryPath, repoRoot } from './binaries.ts';
import { writeKubeconfig } from './kubeconfig.ts';
import { type KubeletOptions, type NodeSpec, ProcessKubelet } from './kubelet/kubelet.ts';
import { Pki } from './pki.ts';
import { RestClient } from './rest.ts';
import type { StateEtcdInfo } from './state-etcd.ts';

/** What a running control plane publishes (cluster.json, vitest's provide). */
export interface ClusterInfo {
  kubeconfig: string;
  kubeletKubeconfig: string;
  caFile: string;
  server: string;
  apiPort: number;
  kubeVersion: string;
  etcdEndpoint: string;
  /** agentflow's etcd (https): the same as stateEtcd.endpoint. */
  stateEtcdEndpoint?: string;
  /** agentflow's etcd with its CA and client certificates (TLS and auth are on; see state-etcd.ts). */
  stateEtcd?: StateEtcdInfo;
  dir: string;
  pids: Record<string, number>;
  /** Its pod network for real nodes (pod-network.ts), when it has one: the e2e project's. */
  podNetwork?: {
    hostIp: string;
    cidr: string;
    /** kube-proxy's /livez and CoreDNS's /ready; their logs (kube-proxy.log, coredns.log) are in logDir. */
    proxyLivez: string;
    dnsReady: string;
    logDir: string;
  };
  /** A cluster someone else runs (AGENTFLOW_E2E_KUBECONFIG, e.g. kind): no process kubelet, no agentflow etcd of ours. */
  external?: boolean;
}

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Everything a test (in any process) needs to use a running control plane:
 * an admin client, kubectl, helm, credentials for ordinary users, and process
 * kubelets serving nodes of the shape the test wants.
 */
export class ClusterHandle {
  private admin: RestClient | undefined;
  private kubelets: ProcessKubelet[] = [];
  private readonly nodeNames: string[] = [];

  readonly info: ClusterInfo;

  constructor(info: ClusterInfo) {
    this.info = info;
  }

  /** Admin REST client (system:masters). */
  get client(): RestClient {
    this.admin ??= RestClient.fromKubeconfig(this.info.kubeconfig);
    return this.admin;
  }

  /** Starts a process kubelet for `nodes` (names must be unique in the cluster). */
  async startKubelet(nodes: NodeSpec[], opts: Partial<Omit<KubeletOptions, 'nodes'>> = {}): Promise<ProcessKubelet> {
    const kubelet = new ProcessKubelet({
      client: RestClient.fromKubeconfig(this.info.kubeletKubeconfig),
      dir: join(this.info.dir, 'kubelets', nodes.map((n) => n.name).join('+')),
      apiServer: { host: '127.0.0.1', port: this.info.apiPort, caFile: this.info.caFile },
      kubeletVersion: this.info.kubeVersion,
      tls: new Pki(join(this.info.dir, 'pki')).kubeletTls(),
      ...opts,
      nodes,
    });
    await kubelet.start();
    this.kubelets.push(kubelet);
    this.nodeNames.push(...nodes.map((n) => n.name));
    return kubelet;
  }

  /**
   * A kubeconfig for an ordinary (non-admin) user, authenticated by a client
   * certificate signed by the cluster CA: RBAC decides what it may do.
   */
  userKubeconfig(user: string, groups: string[] = []): string {
    const safe = user.replace(/[^a-zA-Z0-9.-]/g, '_');
    const pki = new Pki(join(this.info.dir, 'pki'));
    const cert = pki.client(`user-${safe}`, user, groups);
    const path = join(this.info.dir, `user-${safe}.kubeconfig`);
    writeKubeconfig(path, this.info.server, this.info.caFile, cert);
    return path;
  }

  /** A kubeconfig that authenticates with a bearer token (e.g. a ServiceAccount's). */
  tokenKubeconfig(name: string, token: string): string {
    const path = join(this.info.dir, `token-${name.replace(/[^a-zA-Z0-9.-]/g, '_')}.kubeconfig`);
    writeKubeconfig(path, this.info.server, this.info.caFile, { token });
    return path;
  }

  /** Path of the real kubectl binary (tests hand it to pods). */
  get kubectlPath(): string {
    return binaryPath('kubectl');
  }

  /** Runs the real kubectl against this cluster. Never throws on a non-zero exit. */
  kubectl(args: string[], opts: { kubeconfig?: string; input?: string } = {}): Promise<CommandResult> {
    return runCommand(binaryPath('kubectl'), args, { KUBECONFIG: opts.kubeconfig ?? this.info.kubeconfig }, opts.input);
  }

  /** Runs the real helm with its state kept under the cluster directory. */
  helm(args: string[], opts: { kubeconfig?: string } = {}): Promise<CommandResult> {
    const home = join(this.info.dir, 'helm');
    return runCommand(binaryPath('helm'), args, {
      KUBECONFIG: opts.kubeconfig ?? this.info.kubeconfig,
      HELM_CACHE_HOME: join(home, 'cache'),
      HELM_CONFIG_HOME: join(home, 'config'),
      HELM_DATA_HOME: join(home, 'data'),
    });
  }

  /**
   * Stops this handle's kubelets and deletes their Node objects: a later test
   * file on the same control plane must not see (and schedule onto) nodes
   * nobody runs any more, which would look Ready until the node lifecycle
   * controller's grace period ran out.
   */
  async close(): Promise<void> {
    const kubelets = this.kubelets.splice(0);
    await Promise.all(kubelets.map((k) => k.stop()));
    for (const name of this.nodeNames.splice(0)) {
      await this.client.delete(`/api/v1/nodes/${name}`).catch(() => undefined);
    }
    this.admin?.close();
  }
}

export function runCommand(
  cmd: string,
  args: string[],
  env: Record<string, string>,
  input?: string,
): Promise<CommandResult> {
  return new Promise((resolve) => {
    const child = execFile(
      cmd,
      args,
      { env: { ...process.env, ...env }, cwd: repoRoot, maxBuffer: 64 * 1024 * 1024 },
      (err, stdout, stderr) => {
        const code = err
          ? typeof (err as { code?: unknown }).code === 'number'
            ? (err as { code: number }).code
            : 1
          : 0;
        resolve({ code, stdout, stderr });
      },
    );
    if (input !== undefined) child.stdin?.end(input);
  });
}
