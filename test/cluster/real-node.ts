import { execFile } from 'node:child_process';
import { chmodSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { binaryPath } from './binaries.ts';
import type { ClusterHandle } from './cluster-handle.ts';
import { ManagedProcess, waitFor } from './managed-process.ts';
import { unmountUnder } from './mounts.ts';
import { BUSYBOX_IMAGE, busyboxImage, type NodeImage, PAUSE_IMAGE, pauseImage } from './node-images.ts';
import { Pki } from './pki.ts';
import { CLUSTER_DOMAIN, MAX_REAL_NODES, POD_NETWORK, realNodeIp, SERVICE_CIDR } from './pod-network.ts';
import { freePort } from './ports.ts';

// A real node beside the process kubelet: the kubelet built from the same k8s.io/kubernetes module as
// the control plane, its own containerd (Debian's package, with its own root, state and socket; a
// kubelet removes sandboxes it does not know, so nodes never share one) running pods with runc, and
// CNI's bridge and host-local plugins. Pods get addresses on a bridge of their own, 10.99.<n>.0/24,
// routed only to the host (no masquerade, no default route out): every address a test reaches is on
// this machine. The node's own address is the pods' gateway on that bridge, 10.99.<n>.1 (a kubelet
// refuses loopback; this kernel has no dummy links; CNI's bridge plugin accepts no other address).
// The node carries a NoSchedule taint, so the shared cluster's other tests never land pods on it; a
// pod for it tolerates REAL_NODE_TAINT and selects the node by name.

const run = promisify(execFile);

export const REAL_NODE_TAINT = { key: 'agentflow.dev/real-node', value: 'true', effect: 'NoSchedule' } as const;

export interface RealNodeOptions {
  name: string;
  /** Images imported into the node's containerd besides the pause image (default: busybox). */
  images?: NodeImage[];
  /**
   * Register with REAL_NODE_TAINT (default true), so that only pods meant for it land on it. Without
   * it the node takes any pod, as a user's node does: for suites that have the cluster to themselves.
   */
  taint?: boolean;
}

export class RealNode {
  readonly name: string;
  /** The node's InternalIP (on its bridge). */
  readonly nodeIp: string;
  readonly podCidr: string;
  readonly dir: string;
  readonly socket: string;
  private readonly index: number;
  private containerd: ManagedProcess | undefined;
  private kubelet: ManagedProcess | undefined;
  private readonly cluster: ClusterHandle;
  private stopped = false;

  private constructor(cluster: ClusterHandle, name: string, index: number) {
    this.cluster = cluster;
    this.name = name;
    this.index = index;
    this.nodeIp = realNodeIp(index);
    this.podCidr = `10.99.${index}.0/24`;
    this.dir = join(cluster.info.dir, 'real-nodes', name);
    this.socket = join(this.dir, 'containerd.sock');
  }

  private get bridge(): string {
    return `afb${this.index}`;
  }

  /** Starts containerd and the kubelet, and resolves once the Node is Ready. */
  static async start(cluster: ClusterHandle, o: RealNodeOptions): Promise<RealNode> {
    const index = await claimIndex();
    const node = new RealNode(cluster, o.name, index);
    try {
      await node.boot(o.images ?? [await busyboxImage()], o.taint ?? true);
    } catch (err) {
      await node.stop().catch(() => undefined);
      throw err;
    }
    return node;
  }

  private async boot(images: NodeImage[], taint: boolean): Promise<void> {
    const d = this.dir;
    const net = this.cluster.info.podNetwork;
    if (net) {
      // Services and cluster DNS work on this node once the machine's kube-proxy is live and CoreDNS
      // has synced (pod-network.ts).
      for (const [what, url, log] of [
        ['kube-proxy live', net.proxyLivez, 'kube-proxy.log'],
        ['CoreDNS ready', net.dnsReady, 'coredns.log'],
      ] as const) {
        await waitFor(what, async () => (await fetch(url).catch(() => undefined))?.status === 200, 60_000, 250).catch(
          (err: Error) => {
            throw new Error(`${err.message} (its log: ${join(net.logDir, log)})`);
          },
        );
      }
    }
    for (const sub of ['containerd/root', 'containerd/state', 'cni/conf', 'cni/ipam', 'kubelet/root', 'kubelet/pods'])
      mkdirSync(join(d, sub), { recursive: true });
    await run('ip', ['addr', 'add', `${this.nodeIp}/24`, 'dev', this.bridge]);
    await run('ip', ['link', 'set', this.bridge, 'up']);

    writeFileSync(
      join(d, 'cni/conf/10-agentflow.conflist'),
      JSON.stringify({
        cniVersion: '1.0.0',
        name: `agentflow-${this.name}`,
        plugins: [
          {
            type: 'bridge',
            bridge: this.bridge,
            isGateway: true,
            isDefaultGateway: false,
            ipMasq: false,
            hairpinMode: true,
            ipam: {
              type: 'host-local',
              ranges: [[{ subnet: this.podCidr, gateway: this.nodeIp }]],
              // Other nodes' pods and Services; nothing else: no default route off the machine.
              routes: [{ dst: POD_NETWORK.cidr }, { dst: SERVICE_CIDR }],
              dataDir: join(d, 'cni/ipam'),
            },
          },
          { type: 'loopback' },
        ],
      }),
    );
    writeFileSync(
      join(d, 'containerd/config.toml'),
      [
        'version = 2',
        `root = "${join(d, 'containerd/root')}"`,
        `state = "${join(d, 'containerd/state')}"`,
        '[grpc]',
        `  address = "${this.socket}"`,
        '[ttrpc]',
        `  address = "${this.socket}.ttrpc"`,
        '[plugins."io.containerd.grpc.v1.cri"]',
        `  sandbox_image = "${PAUSE_IMAGE}"`,
        // This machine withholds CAP_SYS_RESOURCE even from root, so no process may lower its
        // oom_score_adj; the kubelet asks -998 for sandboxes and -997 for Guaranteed pods. Clamp them
        // to containerd's own score (0), as for rootless containerd, instead of failing in runc.
        '  restrict_oom_score_adj = true',
        '  [plugins."io.containerd.grpc.v1.cri".cni]',
        `    bin_dir = "${cniBinDir()}"`,
        `    conf_dir = "${join(d, 'cni/conf')}"`,
        '',
      ].join('\n'),
    );
    this.containerd = new ManagedProcess({
      name: `containerd-${this.name}`,
      command: 'containerd',
      args: ['--config', join(d, 'containerd/config.toml')],
      logFile: join(d, 'containerd.log'),
    });
    this.containerd.start();
    await waitFor(
      `containerd of ${this.name}`,
      async () => {
        this.containerd?.assertAlive();
        return (await this.ctr(['version'])).includes('Server:');
      },
      30_000,
    );
    for (const img of [await pauseImage(), ...images]) await this.ctr(['images', 'import', img.archive]);

    const pki = new Pki(join(this.cluster.info.dir, 'pki'));
    const client = pki.client(`node-${this.name}`, `system:node:${this.name}`, ['system:nodes']);
    const serving = pki.serving(`kubelet-real-${this.name}`, [this.nodeIp]);
    const kubeconfig = join(d, 'kubelet/kubeconfig');
    writeFileSync(
      kubeconfig,
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Config',
        clusters: [
          {
            name: 'local',
            cluster: { server: this.cluster.info.server, 'certificate-authority': this.cluster.info.caFile },
          },
        ],
        users: [{ name: 'node', user: { 'client-certificate': client.cert, 'client-key': client.key } }],
        contexts: [{ name: 'node', context: { cluster: 'local', user: 'node' } }],
        'current-context': 'node',
      }),
    );
    const [port, healthzPort] = [await freePort(), await freePort()];
    writeFileSync(
      join(d, 'kubelet/config.json'),
      JSON.stringify({
        apiVersion: 'kubelet.config.k8s.io/v1beta1',
        kind: 'KubeletConfiguration',
        address: this.nodeIp,
        port,
        readOnlyPort: 0,
        healthzBindAddress: '127.0.0.1',
        healthzPort,
        authentication: {
          anonymous: { enabled: false },
          webhook: { enabled: true },
          x509: { clientCAFile: this.cluster.info.caFile },
        },
        authorization: { mode: 'Webhook' },
        tlsCertFile: serving.cert,
        tlsPrivateKeyFile: serving.key,
        // cgroup v1 (hybrid) here, and this kubelet shares the machine: no QoS hierarchy of its own,
        // no allocatable enforcement, no eviction, no swap or local-storage accounting.
        cgroupDriver: 'cgroupfs',
        failCgroupV1: false,
        cgroupsPerQOS: false,
        enforceNodeAllocatable: [],
        failSwapOn: false,
        localStorageCapacityIsolation: false,
        evictionHard: {},
        imageGCHighThresholdPercent: 100,
        containerRuntimeEndpoint: `unix://${this.socket}`,
        clusterDomain: CLUSTER_DOMAIN,
        // The pod network's CoreDNS, when the cluster has one; otherwise pods get no cluster DNS.
        clusterDNS: net ? [net.hostIp] : [],
        resolvConf: '',
        serializeImagePulls: false,
        registerNode: true,
        registerWithTaints: taint ? [REAL_NODE_TAINT] : [],
        podCIDR: this.podCidr,
      }),
    );
    this.kubelet = new ManagedProcess({
      name: `kubelet-${this.name}`,
      command: binaryPath('kubelet'),
      args: [
        `--config=${join(d, 'kubelet/config.json')}`,
        `--kubeconfig=${kubeconfig}`,
        `--hostname-override=${this.name}`,
        `--node-ip=${this.nodeIp}`,
        `--root-dir=${join(d, 'kubelet/root')}`,
        `--node-labels=agentflow.dev/node-kind=real`,
        '--v=2',
      ],
      logFile: join(d, 'kubelet.log'),
    });
    this.kubelet.start();
    await waitFor(
      `node ${this.name} Ready`,
      async () => {
        this.kubelet?.assertAlive();
        this.containerd?.assertAlive();
        const n = (await this.cluster.client.get(`/api/v1/nodes/${this.name}`)) as {
          status?: { conditions?: { type: string; status: string }[] };
        };
        return n.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false;
      },
      90_000,
      250,
    );
  }

  /**
   * A hostPath PersistentVolume on this node (no StorageClass: claims without one bind to it when
   * the cluster has no default class; with `claim`, only that claim), its directory under the node's, world-writable as a
   * local-path provisioner makes it, since pods run as non-root users that fsGroup cannot reach on
   * hostPath.
   */
  async hostPathVolume(name: string, size: string, claim?: { namespace: string; name: string }): Promise<void> {
    const path = join(this.dir, 'volumes', name);
    mkdirSync(path, { recursive: true, mode: 0o777 });
    chmodSync(path, 0o777);
    await this.cluster.client.post('/api/v1/persistentvolumes', {
      metadata: { name, labels: { 'agentflow.dev/real-node': this.name } },
      spec: {
        capacity: { storage: size },
        accessModes: ['ReadWriteOnce'],
        // Retain: nothing here could delete a hostPath volume; stop() deletes the PV with the node.
        persistentVolumeReclaimPolicy: 'Retain',
        hostPath: { path, type: 'Directory' },
        // Pre-bound, as an administrator reserves a static volume for one claim.
        ...(claim && { claimRef: { namespace: claim.namespace, name: claim.name } }),
        nodeAffinity: {
          required: {
            nodeSelectorTerms: [
              { matchExpressions: [{ key: 'kubernetes.io/hostname', operator: 'In', values: [this.name] }] },
            ],
          },
        },
      },
    });
  }

  /**
   * SIGKILLs every container and sandbox on the node, as a crash of everything on it would (the
   * kubelet and containerd live on: they restart what their pods' restartPolicy says). Returns how
   * many were killed.
   */
  async killContainers(): Promise<number> {
    const ids = await this.runningTasks();
    for (const id of ids) await this.ctr(['tasks', 'kill', '--signal', 'SIGKILL', id]).catch(() => undefined);
    return ids.length;
  }

  /** `ctr` against this node's containerd, in the namespace the kubelet's pods live in. */
  async ctr(args: string[]): Promise<string> {
    return (await run('ctr', ['--address', this.socket, '--namespace', 'k8s.io', ...args], { maxBuffer: 16 << 20 }))
      .stdout;
  }

  /** The log of the kubelet or containerd (for a failing test's message). */
  logTail(which: 'kubelet' | 'containerd', lines = 40): string {
    return (which === 'kubelet' ? this.kubelet : this.containerd)?.logTail(lines) ?? '(not started)';
  }

  /**
   * Deletes the node's pods through the API and waits for the kubelet to stop their sandboxes (which
   * tears their network namespaces down), then stops the kubelet and containerd, kills what a
   * killed kubelet left running, unmounts what is left under the node's directory, removes its
   * links and the Node object. Safe to call on a node that did not finish starting.
   */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    const api = this.cluster.client;
    if (this.kubelet && this.containerd) {
      const pods = (await api
        .get(`/api/v1/pods?fieldSelector=spec.nodeName%3D${this.name}`)
        .catch(() => ({ items: [] }))) as { items: { metadata: { namespace: string; name: string } }[] };
      for (const p of pods.items)
        await api
          .delete(`/api/v1/namespaces/${p.metadata.namespace}/pods/${p.metadata.name}?gracePeriodSeconds=0`)
          .catch(() => undefined);
      await waitFor('the node’s sandboxes stopped', async () => (await this.runningTasks()).length === 0, 30_000).catch(
        () => undefined,
      );
    }
    await this.kubelet?.stop(5_000);
    if (this.containerd) {
      for (const id of await this.runningTasks().catch(() => [])) {
        await this.ctr(['tasks', 'kill', '--signal', 'SIGKILL', id]).catch(() => undefined);
      }
      await this.containerd.stop(5_000);
    }
    killShims(this.socket);
    unmountUnder(this.dir);
    await run('ip', ['link', 'del', this.bridge]).catch(() => undefined);
    await api
      .delete(`/api/v1/persistentvolumes?labelSelector=${encodeURIComponent(`agentflow.dev/real-node=${this.name}`)}`)
      .catch(() => undefined);
    await api.delete(`/api/v1/nodes/${this.name}`).catch(() => undefined);
  }

  private async runningTasks(): Promise<string[]> {
    return (await this.ctr(['tasks', 'ls', '--quiet'])).split('\n').filter(Boolean);
  }
}

/**
 * A busybox httpd pod on `node` (a real node, its taint tolerated): `setup` (shell, run first) writes
 * /www/index.html, which it then serves on port 8080, Ready once it does.
 */
export function busyboxWebPod(o: { name: string; node: string; setup: string; labels?: Record<string, string> }) {
  return {
    metadata: { name: o.name, ...(o.labels && { labels: o.labels }) },
    spec: {
      nodeSelector: { 'kubernetes.io/hostname': o.node },
      tolerations: [{ ...REAL_NODE_TAINT, operator: 'Equal' }],
      automountServiceAccountToken: false,
      terminationGracePeriodSeconds: 1,
      containers: [
        {
          name: 'web',
          image: BUSYBOX_IMAGE,
          imagePullPolicy: 'Never',
          command: ['/bin/busybox', 'sh', '-c', `${o.setup}; exec /bin/busybox httpd -f -p 8080 -h /www`],
          ports: [{ containerPort: 8080 }],
          readinessProbe: { httpGet: { path: '/', port: 8080 }, periodSeconds: 1 },
        },
      ],
    },
  };
}

/** Where CNI's plugins are: Debian's containernetworking-plugins package. */
function cniBinDir(): string {
  return '/usr/lib/cni';
}

/**
 * A free node number: creating its bridge is the claim (`ip link add` fails if another test file's
 * node holds it), so parallel test files never share addresses or bridges. CNI's bridge plugin
 * finds the bridge there and adds the pods' gateway address to it.
 */
async function claimIndex(): Promise<number> {
  const start = 1 + Math.floor(Math.random() * MAX_REAL_NODES);
  for (let i = 0; i < MAX_REAL_NODES; i++) {
    const n = ((start + i) % MAX_REAL_NODES) + 1;
    try {
      await run('ip', ['link', 'add', `afb${n}`, 'type', 'bridge']);
      return n;
    } catch {
      // taken: try the next
    }
  }
  throw new Error(`no free real-node number (bridges afb1..afb${MAX_REAL_NODES} all exist)`);
}

/** containerd's shims outlive it; the ones started for this socket go with the node. */
function killShims(socket: string): void {
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    let cmd: string;
    try {
      cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    } catch {
      continue;
    }
    if (cmd.includes('containerd-shim') && cmd.includes(socket)) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        // gone
      }
    }
  }
}
