import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { binaryPath } from './binaries.ts';
import { writeKubeconfig } from './kubeconfig.ts';
import { ManagedProcess } from './managed-process.ts';
import type { Pki } from './pki.ts';
import { freePort } from './ports.ts';
import type { RestClient } from './rest.ts';
import { alive } from './ui-pid.ts';

// The pod network of a control plane whose pods run on real nodes (test/cluster/real-node.ts):
// what makes pods part of a cluster rather than processes in namespaces.
// - The control plane's address on it, 10.99.0.1 on a bridge of its own (afb0; real nodes take
//   afb1..afb250, each its own /24 of 10.99.0.0/16). Pods route 10.99.0.0/16 to their node's
//   bridge, so they reach this host address, where the API server listens and is advertised: the
//   `kubernetes` Service's endpoint.
// - kube-proxy in iptables mode, one for the machine: every pod's traffic is routed through the
//   host's network namespace, so one set of Service rules serves every real node. Its rules go with
//   it (`kube-proxy --cleanup`).
// - CoreDNS with its kubernetes plugin as cluster DNS, on the host address's port 53 (real nodes'
//   kubelets give pods clusterDNS [10.99.0.1]): Services' and pods' names in cluster.local, and
//   nothing else (no forwarding: there is nowhere to forward to).
// - kube-router's network-policy firewall (its iptables chains and ipsets), one for the machine as
//   kube-proxy is: NetworkPolicies hold for every real node's pods. kube-router firewalls the pods of
//   the Node it runs as, those whose hostIP is one of that Node's addresses; it runs as the pod
//   network's own Node (HOST_NODE), which lists every real node's address and takes no pods. As on
//   any kube-router node, traffic from the machine itself (kubelet probes, the API server) is
//   always let through; between pods, on one node or two, policies hold.
// Nothing here routes off the machine: no masquerade out, no default route in any pod.

const run = promisify(execFile);

export const POD_NETWORK = {
  /** Every real node's pod CIDR is a /24 of this (kube-proxy's --cluster-cidr). */
  cidr: '10.99.0.0/16',
  /** The control plane's address on the pod network. */
  hostIp: '10.99.0.1',
  bridge: 'afb0',
} as const;

/** Who holds the machine's pod network: the pid of the process that runs its control plane. */
const OWNER_FILE = '/run/agentflow/pod-network.pid';

/** The cluster's DNS domain (CoreDNS's zone, real nodes' kubelet clusterDomain). */
export const CLUSTER_DOMAIN = 'cluster.local';

/** The control plane's --service-cluster-ip-range. */
export const SERVICE_CIDR = '10.0.0.0/24';

/** Real nodes take numbers 1..MAX_REAL_NODES (bridge afb<n>, address realNodeIp(n)). */
export const MAX_REAL_NODES = 250;

/** Real node n's address: its bridge's, its pods' gateway, the hostIP of its pods. */
export function realNodeIp(n: number): string {
  return `10.99.${n}.1`;
}

/**
 * The Node that kube-proxy and kube-router run as: the machine's pod network, not a place for pods
 * (cordoned and tainted). Its addresses are the control plane's on the pod network, then every real
 * node's, so kube-router firewalls every real node's pods.
 */
const HOST_NODE = 'agentflow-pod-network';

/** The taint that keeps pods off HOST_NODE. */
const HOST_NODE_TAINT = { key: 'agentflow.dev/pod-network', value: 'true', effect: 'NoSchedule' } as const;

export class PodNetwork {
  private proxy: ManagedProcess | undefined;
  private dns: ManagedProcess | undefined;
  private firewall: ManagedProcess | undefined;
  private dnsReadyPort = 0;
  private readonly dir: string;
  private readonly pki: Pki;
  private healthzPort = 0;
  private owned = false;

  constructor(dir: string, pki: Pki) {
    this.dir = dir;
    this.pki = pki;
  }

  /**
   * Puts the control plane's address on its bridge. There is one pod network per machine: the
   * owner's pid is in OWNER_FILE, so a second run fails saying whose it is, and a bridge left by a
   * run that was killed is replaced.
   */
  async claimAddress(): Promise<void> {
    const owner = Number(existsSync(OWNER_FILE) ? readFileSync(OWNER_FILE, 'utf8') : 0);
    if (owner && owner !== process.pid && alive(owner)) {
      throw new Error(
        `the pod network (${POD_NETWORK.bridge}, ${POD_NETWORK.hostIp}) belongs to another run of the e2e cluster, pid ${owner}: one per machine`,
      );
    }
    mkdirSync(dirname(OWNER_FILE), { recursive: true });
    writeFileSync(OWNER_FILE, String(process.pid));
    this.owned = true;
    await run('ip', ['link', 'del', POD_NETWORK.bridge]).catch(() => undefined);
    await run('ip', ['link', 'add', POD_NETWORK.bridge, 'type', 'bridge']);
    await run('ip', ['addr', 'add', `${POD_NETWORK.hostIp}/24`, 'dev', POD_NETWORK.bridge]);
    await run('ip', ['link', 'set', POD_NETWORK.bridge, 'up']);
    // The Service CIDR goes to the pod network, not the default route: before kube-proxy has a rule
    // for a new Service, a connection to its address must go nowhere rather than off the machine.
    await run('ip', ['route', 'replace', SERVICE_CIDR, 'dev', POD_NETWORK.bridge]);
  }

  /** Starts kube-proxy (without waiting for it) as system:kube-proxy (bootstrap RBAC's system:node-proxier) against `server`. */
  async startProxy(server: string): Promise<void> {
    const kubeconfig = join(this.dir, 'kube-proxy.kubeconfig');
    writeKubeconfig(kubeconfig, server, this.pki.caCert, this.pki.client('kube-proxy', 'system:kube-proxy'));
    this.healthzPort = await freePort();
    const config = join(this.dir, 'kube-proxy.json');
    writeFileSync(
      config,
      JSON.stringify({
        apiVersion: 'kubeproxy.config.k8s.io/v1alpha1',
        kind: 'KubeProxyConfiguration',
        clientConnection: { kubeconfig },
        mode: 'iptables',
        clusterCIDR: POD_NETWORK.cidr,
        bindAddress: POD_NETWORK.hostIp,
        hostnameOverride: HOST_NODE,
        healthzBindAddress: `127.0.0.1:${this.healthzPort}`,
        metricsBindAddress: `127.0.0.1:${await freePort()}`,
        // NodePorts only on the pod network, never on loopback (no route_localnet) or other links.
        nodePortAddresses: [POD_NETWORK.cidr],
        iptables: { localhostNodePorts: false, syncPeriod: '5s', minSyncPeriod: '0s' },
        // Leave the machine's conntrack settings alone.
        conntrack: {
          maxPerCore: 0,
          min: 0,
          tcpEstablishedTimeout: '0s',
          tcpCloseWaitTimeout: '0s',
        },
      }),
    );
    this.proxy = new ManagedProcess({
      name: 'kube-proxy',
      command: binaryPath('kube-proxy'),
      args: [`--config=${config}`, '--v=1'],
      logFile: join(this.dir, 'kube-proxy.log'),
    });
    // Not waited for here: real nodes wait for livezUrl.
    this.proxy.start();
  }

  /**
   * Creates HOST_NODE, which kube-proxy and kube-router run as (startProxy comes after it, or
   * kube-proxy waits 30 s for its Node).
   */
  async createHostNode(admin: RestClient): Promise<void> {
    const addresses: string[] = [POD_NETWORK.hostIp];
    for (let n = 1; n <= MAX_REAL_NODES; n++) addresses.push(realNodeIp(n));
    await admin.post('/api/v1/nodes', {
      metadata: { name: HOST_NODE, labels: { 'kubernetes.io/hostname': HOST_NODE } },
      spec: { unschedulable: true, taints: [HOST_NODE_TAINT] },
    });
    await admin.mergePatch(`/api/v1/nodes/${HOST_NODE}/status`, {
      status: { addresses: addresses.map((address) => ({ type: 'InternalIP', address })) },
    });
  }

  /**
   * Starts kube-router's firewall (without waiting: a policy holds once kube-router has synced the
   * pods it selects; tests that rely on one wait for its rules: firewalled) as
   * agentflow:kube-router, with the read access it needs (kube-router's own ClusterRole, read-only:
   * with no router it writes nothing).
   */
  async startFirewall(server: string, admin: RestClient): Promise<void> {
    const user = 'agentflow:kube-router';
    await grant(admin, user, [
      {
        apiGroups: [''],
        resources: ['namespaces', 'pods', 'services', 'nodes', 'endpoints'],
        verbs: ['get', 'list', 'watch'],
      },
      { apiGroups: ['networking.k8s.io'], resources: ['networkpolicies'], verbs: ['get', 'list', 'watch'] },
      { apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: ['get', 'list', 'watch'] },
    ]);
    const kubeconfig = join(this.dir, 'kube-router.kubeconfig');
    writeKubeconfig(kubeconfig, server, this.pki.caCert, this.pki.client('kube-router', user));
    this.firewall = new ManagedProcess({
      name: 'kube-router',
      command: binaryPath('kube-router'),
      args: [
        `--kubeconfig=${kubeconfig}`,
        `--hostname-override=${HOST_NODE}`,
        '--run-firewall=true',
        '--run-router=false',
        '--run-service-proxy=false',
        `--service-cluster-ip-range=${SERVICE_CIDR}`,
        '--health-port=0',
        '--metrics-port=0',
        '--v=1',
      ],
      logFile: join(this.dir, 'kube-router.log'),
    });
    this.firewall.start();
  }

  /** kube-proxy's /livez (it has no notion of being this node's, as /healthz does). */
  get livezUrl(): string {
    return `http://127.0.0.1:${this.healthzPort}/livez`;
  }

  /**
   * Starts CoreDNS (without waiting: real nodes wait for dnsReadyUrl) as agentflow:coredns, with
   * the read access its kubernetes plugin needs (the ClusterRole kubeadm gives CoreDNS).
   */
  async startDns(server: string, admin: RestClient): Promise<void> {
    const user = 'agentflow:coredns';
    await grant(admin, user, [
      { apiGroups: [''], resources: ['endpoints', 'services', 'pods', 'namespaces'], verbs: ['list', 'watch'] },
      { apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: ['list', 'watch'] },
    ]);
    const kubeconfig = join(this.dir, 'coredns.kubeconfig');
    writeKubeconfig(kubeconfig, server, this.pki.caCert, this.pki.client('coredns', user));
    this.dnsReadyPort = await freePort();
    const corefile = join(this.dir, 'Corefile');
    // A closing brace on its own line: CoreDNS reads `... }` on a line as one more argument.
    writeFileSync(
      corefile,
      [
        '.:53 {',
        `  bind ${POD_NETWORK.hostIp}`,
        '  errors',
        `  health 127.0.0.1:${await freePort()}`,
        `  ready 127.0.0.1:${this.dnsReadyPort}`,
        `  kubernetes ${CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {`,
        `    kubeconfig ${kubeconfig}`,
        '    pods insecure',
        '    fallthrough in-addr.arpa ip6.arpa',
        '  }',
        '  cache 30',
        '}',
        '',
      ].join('\n'),
    );
    this.dns = new ManagedProcess({
      name: 'coredns',
      command: binaryPath('coredns'),
      args: ['-conf', corefile],
      logFile: join(this.dir, 'coredns.log'),
    });
    this.dns.start();
  }

  /** CoreDNS's /ready: 200 once the kubernetes plugin has synced with the API server. */
  get dnsReadyUrl(): string {
    return `http://127.0.0.1:${this.dnsReadyPort}/ready`;
  }

  get pids(): Record<string, number> {
    const out: Record<string, number> = {};
    if (this.proxy?.pid) out['kube-proxy'] = this.proxy.pid;
    if (this.dns?.pid) out.coredns = this.dns.pid;
    if (this.firewall?.pid) out['kube-router'] = this.firewall.pid;
    return out;
  }

  logTail(lines = 40): string {
    return this.proxy?.logTail(lines) ?? '(not started)';
  }

  /** Stops CoreDNS, kube-proxy and kube-router, removes their iptables rules and ipsets, and the bridge. */
  async stop(): Promise<void> {
    await Promise.all([this.dns?.stop(5_000), this.proxy?.stop(5_000), this.firewall?.stop(5_000)]);
    if (this.proxy) {
      await run(binaryPath('kube-proxy'), ['--cleanup', '--v=0']).catch(() => undefined);
    }
    if (this.firewall) {
      await run(binaryPath('kube-router'), ['--cleanup-config']).catch(() => undefined);
    }
    await run('ip', ['link', 'del', POD_NETWORK.bridge]).catch(() => undefined);
    if (this.owned) rmSync(OWNER_FILE, { force: true });
  }
}

/** A ClusterRole named as `user` with these rules, bound to that user. */
async function grant(admin: RestClient, user: string, rules: unknown[]): Promise<void> {
  await admin.post('/apis/rbac.authorization.k8s.io/v1/clusterroles', { metadata: { name: user }, rules });
  await admin.post('/apis/rbac.authorization.k8s.io/v1/clusterrolebindings', {
    metadata: { name: user },
    roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: user },
    subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: user }],
  });
}

/**
 * Whether kube-router has firewalled this pod (its rules are in the filter table). kube-router writes
 * a pod's rules and the policies that select it in one iptables-restore, so from then on they hold.
 */
export async function firewalled(namespace: string, pod: string): Promise<boolean> {
  const { stdout } = await run('iptables-save', ['-t', 'filter']);
  return stdout.includes(`destined to POD name:${pod} namespace: ${namespace}`);
}
