import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { binaryPath, pinnedVersions } from './binaries.ts';
import type { ClusterInfo } from './cluster-handle.ts';
import { ClusterHandle } from './cluster-handle.ts';
import { EtcdServer } from './etcd.ts';
import { writeKubeconfig } from './kubeconfig.ts';
import { type KubeletOptions, type NodeSpec, ProcessKubelet } from './kubelet/kubelet.ts';
import { ManagedProcess, waitFor } from './managed-process.ts';
import { Pki } from './pki.ts';
import { POD_NETWORK, PodNetwork, SERVICE_CIDR } from './pod-network.ts';
import { freePort } from './ports.ts';
import { StateEtcd } from './state-etcd.ts';

export type { ClusterInfo } from './cluster-handle.ts';

import { RestClient } from './rest.ts';

/** kube-controller-manager controllers the harness runs (no cloud, no volumes). */
export const DEFAULT_CONTROLLERS = [
  'garbage-collector-controller',
  'namespace-controller',
  'serviceaccount-controller',
  'serviceaccount-token-controller',
  'root-ca-certificate-publisher-controller',
  'clusterrole-aggregation-controller',
  'deployment-controller',
  'replicaset-controller',
  'statefulset-controller',
  'job-controller',
  'ttl-after-finished-controller',
  'disruption-controller',
  'endpointslice-controller',
  'pod-garbage-collector-controller',
  'node-lifecycle-controller',
  'taint-eviction-controller',
];

export const DEFAULT_NODES: NodeSpec[] = [
  { name: 'node-a', capacity: { cpu: '4', memory: '8Gi', pods: '110' } },
  { name: 'node-b', capacity: { cpu: '4', memory: '8Gi', pods: '110' } },
];

export interface ControlPlaneOptions {
  /** Runtime directory: PKI, data, logs, kubeconfig. */
  dir: string;
  /** Nodes for the process kubelet; [] runs no kubelet. */
  nodes?: NodeSpec[];
  controllers?: string[];
  /** Run kube-scheduler (default true). */
  scheduler?: boolean;
  /** Start a second etcd for agentflow's own state (default true). */
  stateEtcd?: boolean;
  kubelet?: Omit<KubeletOptions, 'client' | 'nodes' | 'dir' | 'apiServer'>;
  /**
   * A pod network for real nodes (pod-network.ts): the API server also listens on the pod
   * network's host address and advertises it, and kube-proxy runs Services. Needs root.
   */
  podNetwork?: boolean;
}

/**
 * A real local Kubernetes control plane: etcd, kube-apiserver (RBAC, TLS with a
 * generated CA), kube-controller-manager, kube-scheduler and a process kubelet,
 * all on free loopback ports under one directory.
 */
export class ControlPlane {
  readonly pki: Pki;
  readonly etcd: EtcdServer;
  stateEtcd: StateEtcd | undefined;
  kubelet: ProcessKubelet | undefined;
  apiPort = 0;
  private apiserver: ManagedProcess | undefined;
  private controllerManager: ManagedProcess | undefined;
  private scheduler: ManagedProcess | undefined;
  private admin: RestClient | undefined;
  private podNetwork: PodNetwork | undefined;

  readonly opts: ControlPlaneOptions;

  constructor(opts: ControlPlaneOptions) {
    this.opts = opts;
    mkdirSync(opts.dir, { recursive: true });
    this.pki = new Pki(join(opts.dir, 'pki'));
    this.etcd = new EtcdServer({ dir: join(opts.dir, 'etcd'), name: 'kube-etcd', unsafeNoFsync: true });
  }

  get server(): string {
    return `https://127.0.0.1:${this.apiPort}`;
  }
  get kubeconfigPath(): string {
    return join(this.opts.dir, 'kubeconfig');
  }
  get kubeVersion(): string {
    return pinnedVersions().KUBE_VERSION ?? 'unknown';
  }
  /** Admin REST client (system:masters). */
  get client(): RestClient {
    if (!this.admin) throw new Error('control plane not started');
    return this.admin;
  }

  async start(): Promise<ClusterInfo> {
    const dir = this.opts.dir;
    mkdirSync(this.pki.dir, { recursive: true });
    this.pki.init();
    if (this.opts.podNetwork) {
      // First: the API server and agentflow's etcd also listen on its address.
      this.podNetwork = new PodNetwork(dir, this.pki);
      await this.podNetwork.claimAddress();
    }
    const etcdStart = this.etcd.start();
    if (this.opts.stateEtcd !== false) {
      this.stateEtcd = new StateEtcd(join(dir, 'etcd'), this.pki, this.podNetwork ? POD_NETWORK.hostIp : undefined);
    }
    await Promise.all([etcdStart, this.stateEtcd?.start()]);

    this.apiPort = await freePort();
    const serving = this.pki.serving('apiserver', this.podNetwork ? [POD_NETWORK.hostIp] : []);
    const adminCert = this.pki.client('admin', 'kubernetes-admin', ['system:masters']);
    const kubeletClient = this.pki.client('apiserver-kubelet-client', 'kube-apiserver-kubelet-client', [
      'system:masters',
    ]);
    this.pki.kubeletTls();
    // The front proxy's own CA, as kubeadm makes it: a certificate it signs names the API server to
    // aggregated API servers (agentflow's data API), never a user to the API server.
    const frontProxyPki = new Pki(join(this.pki.dir, 'front-proxy'));
    mkdirSync(frontProxyPki.dir, { recursive: true });
    frontProxyPki.init();
    const frontProxy = frontProxyPki.client('front-proxy-client', 'front-proxy-client');
    writeKubeconfig(this.kubeconfigPath, this.server, this.pki.caCert, adminCert);
    const componentKubeconfig = (name: string, user: string) => {
      const c = this.pki.client(name, user);
      const path = join(dir, `${name}.kubeconfig`);
      writeKubeconfig(path, this.server, this.pki.caCert, c);
      return path;
    };

    this.apiserver = new ManagedProcess({
      name: 'kube-apiserver',
      command: binaryPath('kube-apiserver'),
      logFile: join(dir, 'kube-apiserver.log'),
      args: [
        `--etcd-servers=${this.etcd.endpoint}`,
        // With a pod network: every address, so pods reach the one they are routed to (the kubernetes
        // Service's endpoint), and the host still reaches 127.0.0.1.
        `--bind-address=${this.podNetwork ? '0.0.0.0' : '127.0.0.1'}`,
        `--advertise-address=${this.podNetwork ? POD_NETWORK.hostIp : '127.0.0.1'}`,
        `--secure-port=${this.apiPort}`,
        `--cert-dir=${join(dir, 'apiserver-certs')}`,
        `--tls-cert-file=${serving.cert}`,
        `--tls-private-key-file=${serving.key}`,
        `--client-ca-file=${this.pki.caCert}`,
        '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
        `--service-account-key-file=${this.pki.serviceAccountPub}`,
        `--service-account-signing-key-file=${this.pki.serviceAccountKey}`,
        `--service-cluster-ip-range=${SERVICE_CIDR}`,
        '--authorization-mode=Node,RBAC',
        '--allow-privileged=true',
        // `kubectl logs` reaches the process kubelet's log server at the node's InternalIP.
        `--kubelet-client-certificate=${kubeletClient.cert}`,
        `--kubelet-client-key=${kubeletClient.key}`,
        '--kubelet-preferred-address-types=InternalIP',
        // Aggregated APIs (kubeadm's settings): the API server proxies to them with this client
        // certificate and names the user in these headers.
        `--requestheader-client-ca-file=${frontProxyPki.caCert}`,
        '--requestheader-allowed-names=front-proxy-client',
        '--requestheader-username-headers=X-Remote-User',
        '--requestheader-group-headers=X-Remote-Group',
        '--requestheader-extra-headers-prefix=X-Remote-Extra-',
        `--proxy-client-cert-file=${frontProxy.cert}`,
        `--proxy-client-key-file=${frontProxy.key}`,
        '--profiling=false',
        '--v=1',
      ],
    });
    this.apiserver.start();
    this.admin = RestClient.fromKubeconfig(this.kubeconfigPath);
    await waitFor(
      'kube-apiserver /readyz',
      async () => {
        this.apiserver?.assertAlive();
        return (await this.client.get<string>('/readyz')) === 'ok';
      },
      90_000,
      200,
    );

    // The system identities the bootstrap RBAC policy already grants.
    const kcmKubeconfig = componentKubeconfig('kube-controller-manager', 'system:kube-controller-manager');
    this.controllerManager = new ManagedProcess({
      name: 'kube-controller-manager',
      command: binaryPath('kube-controller-manager'),
      logFile: join(dir, 'kube-controller-manager.log'),
      args: [
        `--kubeconfig=${kcmKubeconfig}`,
        `--authentication-kubeconfig=${kcmKubeconfig}`,
        `--authorization-kubeconfig=${kcmKubeconfig}`,
        `--controllers=${(this.opts.controllers ?? DEFAULT_CONTROLLERS).join(',')}`,
        '--use-service-account-credentials=true',
        `--service-account-private-key-file=${this.pki.serviceAccountKey}`,
        `--root-ca-file=${this.pki.caCert}`,
        '--leader-elect=false',
        '--bind-address=127.0.0.1',
        `--secure-port=${await freePort()}`,
        `--cert-dir=${join(dir, 'kcm-certs')}`,
        '--node-monitor-grace-period=20s',
        '--v=1',
      ],
    });
    this.controllerManager.start();

    if (this.opts.scheduler !== false) {
      const schedKubeconfig = componentKubeconfig('kube-scheduler', 'system:kube-scheduler');
      this.scheduler = new ManagedProcess({
        name: 'kube-scheduler',
        command: binaryPath('kube-scheduler'),
        logFile: join(dir, 'kube-scheduler.log'),
        args: [
          `--kubeconfig=${schedKubeconfig}`,
          `--authentication-kubeconfig=${schedKubeconfig}`,
          `--authorization-kubeconfig=${schedKubeconfig}`,
          '--leader-elect=false',
          '--bind-address=127.0.0.1',
          `--secure-port=${await freePort()}`,
          `--cert-dir=${join(dir, 'scheduler-certs')}`,
          '--v=1',
        ],
      });
      this.scheduler.start();
    }

    // Ready when the controllers work: the service-account controller creating
    // `default` in a namespace proves kube-controller-manager is up and authorised.
    await waitFor(
      'kube-controller-manager to create the default service account',
      async () => {
        this.controllerManager?.assertAlive();
        return (await this.client.getOrUndefined('/api/v1/namespaces/default/serviceaccounts/default')) !== undefined;
      },
      60_000,
      200,
    );

    await this.podNetwork?.createHostNode(this.client);
    await this.podNetwork?.startProxy(this.server);
    await this.podNetwork?.startDns(this.server, this.client);
    await this.podNetwork?.startFirewall(this.server, this.client);

    const kubeletKubeconfig = componentKubeconfig('kubelet', 'agentflow:process-kubelet');
    await this.grantKubelet();
    const nodes = this.opts.nodes ?? DEFAULT_NODES;
    if (nodes.length > 0) {
      this.kubelet = new ProcessKubelet({
        ...this.opts.kubelet,
        client: RestClient.fromKubeconfig(kubeletKubeconfig),
        nodes,
        kubeletVersion: this.kubeVersion,
        tls: this.pki.kubeletTls(),
        dir: join(dir, 'kubelet'),
        apiServer: { host: '127.0.0.1', port: this.apiPort, caFile: this.pki.caCert },
      });
      await this.kubelet.start();
    }

    const info = this.info();
    writeFileSync(join(dir, 'cluster.json'), `${JSON.stringify(info, null, 2)}\n`);
    return info;
  }

  /**
   * The process kubelet runs pods of every node from one identity, which the
   * Node authorizer (one identity per node) cannot express, so it gets a
   * ClusterRole with what a kubelet does: nodes, leases, pod status, tokens.
   */
  private async grantKubelet(): Promise<void> {
    const user = 'agentflow:process-kubelet';
    await this.client.post('/apis/rbac.authorization.k8s.io/v1/clusterroles', {
      metadata: { name: user },
      rules: [
        {
          apiGroups: [''],
          resources: ['nodes', 'nodes/status'],
          verbs: ['get', 'list', 'watch', 'create', 'update', 'patch', 'delete'],
        },
        { apiGroups: [''], resources: ['pods'], verbs: ['get', 'list', 'watch', 'delete'] },
        { apiGroups: [''], resources: ['pods/status'], verbs: ['get', 'update', 'patch'] },
        { apiGroups: [''], resources: ['configmaps', 'secrets', 'services'], verbs: ['get', 'list', 'watch'] },
        { apiGroups: [''], resources: ['serviceaccounts/token'], verbs: ['create'] },
        { apiGroups: [''], resources: ['serviceaccounts'], verbs: ['get'] },
        { apiGroups: [''], resources: ['events'], verbs: ['create', 'patch'] },
        { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['get', 'create', 'update'] },
      ],
    });
    await this.client.post('/apis/rbac.authorization.k8s.io/v1/clusterrolebindings', {
      metadata: { name: user },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: user },
      subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: user }],
    });
  }

  info(): ClusterInfo {
    const pids: Record<string, number> = { runner: process.pid };
    for (const p of [this.etcd, this.stateEtcd, this.apiserver, this.controllerManager, this.scheduler]) {
      if (p?.pid) pids[p.name] = p.pid;
    }
    Object.assign(pids, this.podNetwork?.pids);
    const info: ClusterInfo = {
      kubeconfig: this.kubeconfigPath,
      kubeletKubeconfig: join(this.opts.dir, 'kubelet.kubeconfig'),
      caFile: this.pki.caCert,
      apiPort: this.apiPort,
      server: this.server,
      kubeVersion: this.kubeVersion,
      etcdEndpoint: this.etcd.endpoint,
      dir: this.opts.dir,
      pids,
    };
    if (this.podNetwork) {
      info.podNetwork = {
        hostIp: POD_NETWORK.hostIp,
        cidr: POD_NETWORK.cidr,
        proxyLivez: this.podNetwork.livezUrl,
        dnsReady: this.podNetwork.dnsReadyUrl,
        logDir: this.opts.dir,
      };
    }
    if (this.stateEtcd) {
      info.stateEtcdEndpoint = this.stateEtcd.info.endpoint;
      info.stateEtcd = this.stateEtcd.info;
    }
    return info;
  }

  /** kubectl, helm and credentials for this cluster. */
  handle(): ClusterHandle {
    return new ClusterHandle(this.info());
  }

  async stop(): Promise<void> {
    await this.kubelet?.stop();
    await Promise.all([this.scheduler?.stop(5_000), this.controllerManager?.stop(5_000)]);
    await this.podNetwork?.stop();
    await this.apiserver?.stop(10_000);
    await Promise.all([this.etcd.stop(), this.stateEtcd?.stop()]);
    this.admin?.close();
  }

  /** Reads cluster.json of a running control plane (the CLI's `up`). */
  static readInfo(dir: string): ClusterInfo {
    return JSON.parse(readFileSync(join(dir, 'cluster.json'), 'utf8')) as ClusterInfo;
  }
}
