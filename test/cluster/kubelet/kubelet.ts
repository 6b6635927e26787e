import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KubeError, type RestClient, type WatchEvent } from '../rest.ts';
import { LogServer } from './log-server.ts';
import { type ImageEntry, PodWorker } from './pod-worker.ts';
import { parseQuantity } from './quantity.ts';
import type { Container, NodeSpec, Pod } from './types.ts';

export type { ImageEntry } from './pod-worker.ts';
export type { NodeSpec } from './types.ts';

export interface KubeletOptions {
  client: RestClient;
  nodes: NodeSpec[];
  dir: string;
  apiServer: { host: string; port: number; caFile: string };
  /** Image (with or without tag) → local entry point, for containers that set no command. */
  images?: Record<string, ImageEntry>;
  /** CrashLoopBackOff base and cap (the real kubelet uses 10 s and 5 min). */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /** How often node leases are renewed and node status is reported. */
  heartbeatMs?: number;
  kubeletVersion?: string;
  /** Serving certificate for the kubelet API (logs); the API server's client certificate must chain to `ca`. */
  tls?: { cert: Buffer; key: Buffer; ca: Buffer };
  /**
   * Directory shared by every kubelet on this machine (default: one under the
   * OS temp dir); a node's address block is claimed there with an exclusive
   * file create holding the claimer's pid, so kubelets in different processes
   * and different clusters never hand out the same node or pod IP. A claim
   * whose process is gone is taken over.
   */
  slotDir?: string;
  /**
   * Renew every projected ServiceAccount token once it is this many seconds
   * old, on top of the kubelet's own rule (80% of its lifetime, or 24 h), so a
   * test can watch a token rotate within seconds. Default: only the kubelet's rule.
   */
  tokenRefreshSeconds?: number;
  /**
   * How often configMap, secret and downwardAPI content of mounted volumes is
   * re-read and rewritten (the real kubelet syncs about every 60 s). Default 10.
   */
  volumeSyncSeconds?: number;
}

interface NodeState {
  spec: NodeSpec;
  /** 127.A.B: node IP 127.A.B.1, pod IPs 127.A.B.2-254. */
  prefix: string;
  ip: string;
  usedIps: Set<number>;
  alive: boolean;
}

const now = () => new Date().toISOString();
const microNow = () => new Date().toISOString().replace('Z', '000Z');

/**
 * The process kubelet: registers Nodes with the stated capacity, keeps their
 * Ready condition and node Lease fresh, and runs the pods bound to them as
 * local processes, reporting pod status like a kubelet. No containers and no
 * network namespaces: each node owns a loopback block 127.A.B.0/24, each pod
 * gets its own address in it as pod IP and runs in a directory of its own.
 *
 * Volumes (emptyDir, configMap, secret, downwardAPI, projected with
 * serviceAccountToken) are materialised under the pod directory
 * (`pods/<ns>_<name>_<uid>/volumes/kubernetes.io~<plugin>/<volume>`, written
 * atomically through a `..data` symlink swap and kept fresh). A container with
 * volumeMounts runs in a mount namespace of its own (`unshare --mount`, so the
 * kubelet must run as root) where each mount is a bind mount; a mountPath the
 * host lacks is made inside that namespace only (see mount-plan.ts), so the
 * host never sees it. Network, pids and everything else are the host's.
 */
export class ProcessKubelet {
  private readonly nodes = new Map<string, NodeState>();
  private readonly workers = new Map<string, PodWorker>();
  private readonly abort = new AbortController();
  private heartbeat: NodeJS.Timeout | undefined;
  private watching: Promise<void> | undefined;
  private resourceVersion = '';
  private logServer: LogServer | undefined;

  private readonly o: KubeletOptions;
  /** Address-block claim files, released on stop. */
  private readonly claimed: string[] = [];

  constructor(o: KubeletOptions) {
    this.o = o;
    mkdirSync(join(o.dir, 'pods'), { recursive: true });
    for (const [field, v] of [
      ['tokenRefreshSeconds', o.tokenRefreshSeconds],
      ['volumeSyncSeconds', o.volumeSyncSeconds],
    ] as const) {
      if (v !== undefined && !(v > 0))
        throw new Error(`KubeletOptions.${field} must be a positive number of seconds, not ${v}`);
    }
    for (const spec of o.nodes) this.addNodeState(spec);
  }

  private addNodeState(spec: NodeSpec): NodeState {
    const slots = this.o.slotDir ?? defaultSlotDir();
    mkdirSync(slots, { recursive: true });
    for (let slot = 0; slot < 240 * 256; slot++) {
      const file = join(slots, String(slot));
      if (!claimSlot(file, spec.name)) continue; // another live node has it
      this.claimed.push(file);
      const prefix = `127.${10 + Math.floor(slot / 256)}.${slot % 256}`;
      const n: NodeState = { spec, prefix, ip: `${prefix}.1`, usedIps: new Set(), alive: true };
      this.nodes.set(spec.name, n);
      return n;
    }
    throw new Error('no free node address block in 127.10.0.0-127.249.255.0');
  }

  get client(): RestClient {
    return this.o.client;
  }

  async start(): Promise<void> {
    if (this.o.tls) {
      this.logServer = new LogServer(this.o.tls, {
        logFile: (ns, pod, container, previous) => this.find(ns, pod)?.logPath(container, previous),
        running: (ns, pod, container) => this.find(ns, pod)?.isRunning(container) ?? false,
      });
      await this.logServer.start();
    }
    for (const n of this.nodes.values()) await this.registerNode(n);
    this.heartbeat = setInterval(() => void this.beat(), this.o.heartbeatMs ?? 10_000);
    await this.relist();
    this.watching = this.watchLoop();
  }

  async stop(): Promise<void> {
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.abort.abort();
    await this.watching?.catch(() => undefined);
    await Promise.all([...this.workers.values()].map((w) => w.vanished()));
    await this.logServer?.stop();
    for (const f of this.claimed.splice(0)) rmSync(f, { force: true });
  }

  /** Adds a node at run time (tests build clusters of particular shapes). */
  async addNode(spec: NodeSpec): Promise<void> {
    const n = this.addNodeState(spec);
    await this.registerNode(n);
    await this.relist();
  }

  /**
   * Simulates a node dying: heartbeats stop and its pod processes are killed
   * with SIGKILL, with no status written (as if the machine lost power).
   */
  async killNode(name: string): Promise<void> {
    const n = this.nodes.get(name);
    if (!n) throw new Error(`unknown node ${name}`);
    n.alive = false;
    for (const w of this.workers.values()) {
      if (w.nodeName === name) {
        w.kill(undefined, 'SIGKILL');
        await w.vanished();
      }
    }
  }

  pods(): { namespace: string; name: string; node: string; podIP: string }[] {
    return [...this.workers.values()].map((w) => ({
      namespace: w.namespace,
      name: w.name,
      node: w.nodeName,
      podIP: w.podIP,
    }));
  }

  /** The process id of a running container of a pod (for kill -9 in tests). */
  pid(namespace: string, name: string, container?: string): number | undefined {
    return this.find(namespace, name)?.pid(container);
  }

  kill(namespace: string, name: string, signal: NodeJS.Signals = 'SIGKILL', container?: string): boolean {
    return this.find(namespace, name)?.kill(container, signal) ?? false;
  }

  /** What a container printed (the kubelet's log files; `kubectl logs` needs a kubelet server). */
  logs(namespace: string, name: string, container?: string): string {
    return this.find(namespace, name)?.logs(container) ?? '';
  }

  private find(namespace: string, name: string): PodWorker | undefined {
    for (const w of this.workers.values()) if (w.namespace === namespace && w.name === name) return w;
    return undefined;
  }

  private nodeObject(n: NodeState): unknown {
    return {
      apiVersion: 'v1',
      kind: 'Node',
      metadata: {
        name: n.spec.name,
        labels: {
          'kubernetes.io/hostname': n.spec.name,
          'kubernetes.io/os': 'linux',
          'kubernetes.io/arch': process.arch === 'x64' ? 'amd64' : process.arch,
          'node.kubernetes.io/instance-type': 'process-kubelet',
          ...n.spec.labels,
        },
      },
      spec: { taints: n.spec.taints ?? [], unschedulable: n.spec.unschedulable ?? false },
    };
  }

  private nodeStatus(n: NodeState): unknown {
    const t = now();
    const cond = (type: string, status: string, reason: string, message: string) => ({
      type,
      status,
      reason,
      message,
      lastHeartbeatTime: t,
      lastTransitionTime: t,
    });
    return {
      status: {
        capacity: n.spec.capacity,
        allocatable: n.spec.allocatable ?? n.spec.capacity,
        conditions: [
          cond('MemoryPressure', 'False', 'KubeletHasSufficientMemory', 'kubelet has sufficient memory available'),
          cond('DiskPressure', 'False', 'KubeletHasNoDiskPressure', 'kubelet has no disk pressure'),
          cond('PIDPressure', 'False', 'KubeletHasSufficientPID', 'kubelet has sufficient PID available'),
          cond('Ready', 'True', 'KubeletReady', 'process kubelet is posting ready status'),
        ],
        addresses: [
          { type: 'InternalIP', address: n.ip },
          { type: 'Hostname', address: n.spec.name },
        ],
        daemonEndpoints: { kubeletEndpoint: { Port: this.logServer?.port ?? 0 } },
        nodeInfo: {
          machineID: n.spec.name,
          systemUUID: n.spec.name,
          bootID: `${process.pid}`,
          kernelVersion: process.version,
          osImage: 'agentflow process kubelet',
          containerRuntimeVersion: 'process://1',
          kubeletVersion: this.o.kubeletVersion ?? 'v0.0.0-process',
          kubeProxyVersion: '',
          operatingSystem: 'linux',
          architecture: process.arch === 'x64' ? 'amd64' : process.arch,
        },
      },
    };
  }

  private async registerNode(n: NodeState): Promise<void> {
    try {
      await this.o.client.post('/api/v1/nodes', this.nodeObject(n));
    } catch (err) {
      if (!(err instanceof KubeError && err.status === 409)) throw err;
      await this.o.client.mergePatch(`/api/v1/nodes/${n.spec.name}`, this.nodeObject(n));
    }
    // Existing conditions' transition times matter to node-lifecycle; a fresh
    // registration reports all four anew.
    await this.o.client.mergePatch(`/api/v1/nodes/${n.spec.name}/status`, this.nodeStatus(n));
    await this.renewLease(n);
  }

  private async renewLease(n: NodeState): Promise<void> {
    const path = `/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/${n.spec.name}`;
    const lease = await this.o.client.getOrUndefined<{
      metadata: { resourceVersion: string };
      spec: Record<string, unknown>;
    }>(path);
    const spec = { holderIdentity: n.spec.name, leaseDurationSeconds: 40, renewTime: microNow() };
    if (!lease) {
      await this.o.client.post('/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases', {
        metadata: { name: n.spec.name },
        spec,
      });
    } else {
      await this.o.client.put(path, { ...lease, spec: { ...lease.spec, ...spec } });
    }
  }

  private async beat(): Promise<void> {
    for (const n of this.nodes.values()) {
      if (!n.alive) continue;
      try {
        await this.renewLease(n);
        await this.o.client.mergePatch(`/api/v1/nodes/${n.spec.name}/status`, this.nodeStatus(n));
      } catch {
        // API server briefly unavailable: the next beat retries
      }
    }
  }

  private async relist(): Promise<void> {
    const list = await this.o.client.get<{ metadata: { resourceVersion: string }; items: Pod[] }>('/api/v1/pods');
    this.resourceVersion = list.metadata.resourceVersion;
    const seen = new Set<string>();
    for (const pod of list.items) {
      if (pod.metadata.uid) seen.add(pod.metadata.uid);
      this.handle(pod);
    }
    for (const [uid, w] of this.workers) if (!seen.has(uid)) void w.vanished();
  }

  private async watchLoop(): Promise<void> {
    while (!this.abort.signal.aborted) {
      try {
        let expired = false;
        await this.o.client.watch<Pod>(
          `/api/v1/pods?resourceVersion=${this.resourceVersion}&allowWatchBookmarks=true&timeoutSeconds=300`,
          (e: WatchEvent<Pod>) => {
            if (e.type === 'ERROR') {
              expired = true; // 410 Gone: the resourceVersion is too old
              return;
            }
            this.resourceVersion = e.object.metadata.resourceVersion ?? this.resourceVersion;
            if (e.type === 'BOOKMARK') return;
            if (e.type === 'DELETED') {
              const w = e.object.metadata.uid ? this.workers.get(e.object.metadata.uid) : undefined;
              if (w) void w.vanished();
              return;
            }
            this.handle(e.object);
          },
          this.abort.signal,
        );
        if (expired) await this.relist();
      } catch {
        if (this.abort.signal.aborted) return;
        await new Promise((r) => setTimeout(r, 500 + Math.random() * 500));
        await this.relist().catch(() => undefined);
      }
    }
  }

  private handle(pod: Pod): void {
    const uid = pod.metadata.uid;
    const node = pod.spec.nodeName ? this.nodes.get(pod.spec.nodeName) : undefined;
    if (!uid || !node?.alive) return;
    const existing = this.workers.get(uid);
    if (existing) {
      existing.update(pod);
      return;
    }
    const phase = pod.status?.phase;
    if (phase === 'Succeeded' || phase === 'Failed') return;
    const podIP = this.allocateIp(node);
    const w = new PodWorker(pod, podIP, {
      client: this.o.client,
      podsDir: join(this.o.dir, 'pods'),
      apiServer: this.o.apiServer,
      images: this.o.images ?? {},
      backoffBaseMs: this.o.backoffBaseMs ?? 1_000,
      backoffMaxMs: this.o.backoffMaxMs ?? 30_000,
      mountsDir: join(this.o.dir, 'mounts'),
      volumeSyncMs: (this.o.volumeSyncSeconds ?? 10) * 1000,
      ...(this.o.tokenRefreshSeconds !== undefined ? { tokenRefreshMs: this.o.tokenRefreshSeconds * 1000 } : {}),
      hostIP: node.ip,
      event: (p, type, reason, message) => void this.event(p, node.spec.name, type, reason, message),
      onGone: (id) => {
        this.workers.delete(id);
        node.usedIps.delete(Number(podIP.split('.')[3]));
      },
    });
    this.workers.set(uid, w);
    const shortfall = this.admit(node, pod);
    if (shortfall) void w.reject(shortfall.reason, shortfall.message);
    else void w.run();
  }

  /** The lowest free pod address of the node; freed when the pod is gone. */
  private allocateIp(n: NodeState): string {
    for (let host = 2; host <= 254; host++) {
      if (!n.usedIps.has(host)) {
        n.usedIps.add(host);
        return `${n.prefix}.${host}`;
      }
    }
    throw new Error(`node ${n.spec.name} has no free pod address (253 pods at most)`);
  }

  /** The kubelet's admission check: a pod must fit the node's allocatable. */
  private admit(n: NodeState, pod: Pod): { reason: string; message: string } | undefined {
    const alloc = n.spec.allocatable ?? n.spec.capacity;
    const used: Record<string, number> = {};
    const add = (p: Pod['spec'], into: Record<string, number>) => {
      into.pods = (into.pods ?? 0) + 1;
      for (const [k, v] of Object.entries(podRequests(p))) into[k] = (into[k] ?? 0) + v;
    };
    for (const w of this.workers.values()) {
      if (w.nodeName === n.spec.name && w.active && w.uid !== pod.metadata.uid) add(w.spec, used);
    }
    const want: Record<string, number> = {};
    add(pod.spec, want);
    for (const [res, amount] of Object.entries(want)) {
      if (amount === 0) continue;
      const cap = alloc[res] === undefined ? 0 : parseQuantity(alloc[res]);
      const have = used[res] ?? 0;
      if (have + amount > cap + 1e-9) {
        const reason = res === 'pods' ? 'OutOfpods' : `OutOf${res}`;
        return {
          reason,
          message: `Pod was rejected: Node didn't have enough resource: ${res}, requested: ${amount}, used: ${have}, capacity: ${cap}`,
        };
      }
    }
    return undefined;
  }

  private async event(pod: Pod, node: string, type: string, reason: string, message: string): Promise<void> {
    const t = now();
    try {
      await this.o.client.post(`/api/v1/namespaces/${pod.metadata.namespace}/events`, {
        metadata: { generateName: `${pod.metadata.name}.` },
        involvedObject: {
          apiVersion: 'v1',
          kind: 'Pod',
          namespace: pod.metadata.namespace,
          name: pod.metadata.name,
          uid: pod.metadata.uid,
        },
        type,
        reason,
        message,
        source: { component: 'kubelet', host: node },
        reportingComponent: 'kubelet',
        reportingInstance: node,
        firstTimestamp: t,
        lastTimestamp: t,
        count: 1,
      });
    } catch {
      // events are best effort, as in the kubelet
    }
  }
}

/** Effective requests: max(sum of containers, any init container) + overhead. */
export function podRequests(spec: Pod['spec']): Record<string, number> {
  // A resource with a limit and no request is requested at its limit (API defaulting).
  const requests = (c: Container) => Object.entries({ ...c.resources?.limits, ...c.resources?.requests });
  const sum: Record<string, number> = {};
  for (const c of spec.containers) {
    for (const [k, v] of requests(c)) sum[k] = (sum[k] ?? 0) + parseQuantity(v);
  }
  for (const c of spec.initContainers ?? []) {
    for (const [k, v] of requests(c)) sum[k] = Math.max(sum[k] ?? 0, parseQuantity(v));
  }
  for (const [k, v] of Object.entries(spec.overhead ?? {})) sum[k] = (sum[k] ?? 0) + parseQuantity(v);
  return sum;
}

/** Machine-wide, so that concurrent clusters (tests, `npm run demo`) never share pod IPs. */
export function defaultSlotDir(): string {
  return join(tmpdir(), 'agentflow-node-slots');
}

/** Claims an address block: exclusive create with our pid; a claim of a dead process is taken over. */
function claimSlot(file: string, node: string): boolean {
  const mine = `${process.pid} ${node}`;
  try {
    writeFileSync(file, mine, { flag: 'wx' });
    return true;
  } catch {
    // Taken: by a live process, or left behind by one that died without stopping its kubelet.
  }
  let owner = 0;
  try {
    owner = Number.parseInt(readFileSync(file, 'utf8'), 10);
  } catch {
    return false;
  }
  if (owner > 0 && owner !== process.pid && processAlive(owner)) return false;
  if (owner === process.pid) return false; // another node of this process
  // Stale: take it over. Rename is atomic, so two claimers cannot both win.
  const tmp = `${file}.${process.pid}`;
  writeFileSync(tmp, mine);
  try {
    renameSync(tmp, file);
  } catch {
    rmSync(tmp, { force: true });
    return false;
  }
  return readFileSync(file, 'utf8') === mine;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
