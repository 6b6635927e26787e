import { type ChildProcess, spawn } from 'node:child_process';
import { createWriteStream, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parse as parseYaml, stringify } from 'yaml';
import { CRD_NAMES } from '../../../src/api/crds.ts';
import type { ClusterHandle } from '../../cluster/cluster-handle.ts';
import { operatorEtcdFlags } from '../../cluster/state-etcd.ts';
import { uniqueName } from '../../cluster/testing.ts';

export interface LogLine {
  level: string;
  msg: string;
  [k: string]: unknown;
}

/** A real operator process (src/operator/main.ts) with its JSON log lines at hand. */
export class OperatorProcess {
  readonly child: ChildProcess;
  readonly lines: LogLine[] = [];
  readonly name: string;
  private waiters: (() => void)[] = [];
  readonly exited: Promise<number | null>;

  constructor(
    cluster: ClusterHandle,
    o: {
      name: string;
      namespace: string;
      prefix: string;
      election: string;
      leaseTtl?: number;
      /** TTL of agents' leases (how long a dead agent keeps its tasks). */
      agentLeaseTtl?: number;
      /** Where the dispatcher listens and what agent pods dial (pods share the host network). */
      dispatcherPort?: number;
      /** Default: the admin's. */
      kubeconfig?: string;
      /** Namespaces to reconcile (default: `namespace` alone). */
      watchNamespaces?: string[];
      /** A private etcd (plain HTTP, no auth: the chaos suite's cluster) instead of the harness's. */
      etcdEndpoints?: string[];
      /** --waiting-timeout (seconds): how long a workflow waits for a missing pool or handler. */
      waitingTimeout?: number;
      /** Serve the data API on 127.0.0.1 at this port (default: not served, so operators in parallel files do not collide). */
      dataApiPort?: number;
      /** More environment variables (e.g. OTEL_*). */
      env?: Record<string, string>;
    },
  ) {
    this.name = o.name;
    const info = cluster.info;
    const args = [
      'src/operator/main.ts',
      '--kubeconfig',
      o.kubeconfig ?? info.kubeconfig,
      // TLS, as the operator's own etcd user (the client certificate's CN).
      ...(o.etcdEndpoints ? [`--etcd-endpoints=${o.etcdEndpoints.join(',')}`] : operatorEtcdFlags(info)),
      '--etcd-prefix',
      o.prefix,
      '--watch-namespace',
      (o.watchNamespaces ?? [o.namespace]).join(','),
      '--ops-address',
      '127.0.0.1:0',
      '--dispatcher-address',
      `127.0.0.1:${o.dispatcherPort ?? 0}`,
      '--agent-dispatcher',
      o.dispatcherPort ? `127.0.0.1:${o.dispatcherPort}` : 'agentflow-dispatcher.agentflow-system:7070',
      // The test namespace holds the dispatcher's TLS Secret; agents dial 127.0.0.1 (pods share the host network).
      '--namespace',
      o.namespace,
      '--dispatcher-tls-sans',
      '127.0.0.1,localhost',
      '--agent-lease-ttl',
      String(o.agentLeaseTtl ?? 10),
      '--election',
      o.election,
      '--lease-ttl',
      String(o.leaseTtl ?? 2),
      '--log-level',
      'debug',
      ...(o.waitingTimeout !== undefined ? ['--waiting-timeout', String(o.waitingTimeout)] : []),
      '--data-api-address',
      o.dataApiPort ? `127.0.0.1:${o.dataApiPort}` : 'off',
    ];
    this.child = spawn(process.execPath, args, {
      stdio: ['ignore', 'inherit', 'pipe'],
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', POD_NAME: o.name, ...o.env },
    });
    const log = createWriteStream(join(info.dir, `operator-${o.name}.log`));
    createInterface({ input: this.child.stderr as NodeJS.ReadableStream }).on('line', (l) => {
      log.write(`${l}\n`);
      try {
        this.lines.push(JSON.parse(l) as LogLine);
      } catch {
        this.lines.push({ level: 'raw', msg: l });
      }
      for (const w of this.waiters.splice(0)) w();
    });
    this.exited = new Promise((resolve) => this.child.on('exit', (code) => resolve(code)));
  }

  /** Waits for a log line whose msg is `msg` (and whose fields include `fields`). */
  async waitFor(msg: string, timeoutMs = 30_000, fields: Record<string, unknown> = {}): Promise<LogLine> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.lines.find((l) => l.msg === msg && Object.entries(fields).every(([k, v]) => l[k] === v));
      if (hit) return hit;
      if (Date.now() > deadline) {
        const tail = this.lines.slice(-15).map((l) => JSON.stringify(l));
        throw new Error(
          `operator ${this.name}: no "${msg}" log within ${timeoutMs} ms; last lines:\n${tail.join('\n')}`,
        );
      }
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 200);
      });
    }
  }

  has(msg: string): boolean {
    return this.lines.some((l) => l.msg === msg);
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    if (this.child.exitCode === null) this.child.kill(signal);
  }
}

/** Polls until `cond` holds; the error names what was awaited and the last value seen. */
export async function until<T>(
  what: string,
  probe: () => Promise<T> | T,
  cond: (v: T) => boolean,
  timeoutMs = 30_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: T | undefined;
  for (;;) {
    last = await probe();
    if (cond(last)) return last;
    if (Date.now() > deadline) {
      // An API object: its status says what is going on; its metadata (managedFields) only buries it.
      const shown = (last as { status?: unknown } | undefined)?.status ?? last;
      throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(shown)?.slice(0, 3000)}`);
    }
    await new Promise((r) => setTimeout(r, 150));
  }
}

export interface PodView {
  name: string;
  uid: string;
  node?: string;
  phase?: string;
  ready: boolean;
  terminating: boolean;
  hash?: string;
  scheduled?: { status: string; reason?: string; message?: string };
}

// biome-ignore lint/suspicious/noExplicitAny: raw API JSON, read field by field
type Json = Record<string, any>;

export async function pods(cluster: ClusterHandle, namespace: string, pool: string): Promise<PodView[]> {
  const list = await cluster.client.get<{ items: Json[] }>(
    `/api/v1/namespaces/${namespace}/pods?labelSelector=${encodeURIComponent(`agentflow.io/pool=${pool}`)}`,
  );
  return list.items
    .map((p) => {
      const sched = p.status?.conditions?.find((c: { type: string }) => c.type === 'PodScheduled');
      return {
        name: p.metadata.name as string,
        uid: p.metadata.uid as string,
        node: p.spec.nodeName as string | undefined,
        phase: p.status?.phase as string | undefined,
        ready:
          p.status?.conditions?.some(
            (c: { type: string; status: string }) => c.type === 'Ready' && c.status === 'True',
          ) === true,
        terminating: Boolean(p.metadata.deletionTimestamp),
        hash: p.metadata.labels?.['agentflow.io/template-hash'] as string | undefined,
        ...(sched && { scheduled: { status: sched.status, reason: sched.reason, message: sched.message } }),
      };
    })
    .sort((a, b) => a.name.localeCompare(b.name, 'en', { numeric: true }));
}

export async function pool(cluster: ClusterHandle, namespace: string, name: string): Promise<Json> {
  return cluster.client.get(`/apis/agentflow.io/v1alpha1/namespaces/${namespace}/agentpools/${name}`);
}

export interface PoolOptions {
  replicas: number;
  strategy?: 'Spread' | 'BinPack';
  maxPerNode?: number;
  cpu?: string;
  memory?: string;
  /** Node label the pods must match (keeps a test on its own nodes). */
  group: string;
  tolerations?: unknown[];
  command?: string[];
  env?: { name: string; value: string }[];
  capacity?: number;
  drainTimeoutSeconds?: number;
}

export function poolManifest(namespace: string, name: string, o: PoolOptions): Record<string, unknown> {
  return {
    apiVersion: 'agentflow.io/v1alpha1',
    kind: 'AgentPool',
    metadata: { name, namespace },
    spec: {
      replicas: o.replicas,
      agent: { capacity: o.capacity ?? 2, drainTimeoutSeconds: o.drainTimeoutSeconds ?? 5 },
      placement: {
        strategy: o.strategy ?? 'Spread',
        ...(o.maxPerNode !== undefined && { maxPerNode: o.maxPerNode }),
      },
      template: {
        spec: {
          nodeSelector: { 'agentflow.test/group': o.group },
          ...(o.tolerations && { tolerations: o.tolerations }),
          terminationGracePeriodSeconds: 5,
          containers: [
            {
              name: 'agent',
              image: 'agentflow/test-agent:1',
              command: o.command ?? ['sleep', '3600'],
              ...(o.env && { env: o.env }),
              resources: { requests: { cpu: o.cpu ?? '1', memory: o.memory ?? '1Gi' } },
            },
          ],
        },
      },
    },
  };
}

export async function apply(cluster: ClusterHandle, obj: unknown): Promise<void> {
  const r = await cluster.kubectl(['apply', '-f', '-'], { input: stringify(obj) });
  if (r.code !== 0) throw new Error(`kubectl apply failed: ${r.stderr}`);
}

export async function installCrds(cluster: ClusterHandle): Promise<void> {
  const r = await cluster.kubectl(['apply', '--server-side', '--force-conflicts', '-f', 'deploy/crds/']);
  if (r.code !== 0) throw new Error(`installing CRDs failed: ${r.stderr}`);
  const est = await cluster.kubectl([
    'wait',
    '--for=condition=Established',
    ...CRD_NAMES.map((n) => `crd/${n}`),
    '--timeout=30s',
  ]);
  if (est.code !== 0) throw new Error(`CRDs not established: ${est.stderr}`);
}

export async function createNamespace(cluster: ClusterHandle, prefix: string): Promise<string> {
  const ns = uniqueName(prefix);
  await cluster.client.post('/api/v1/namespaces', { metadata: { name: ns } });
  return ns;
}

/** Nodes of one group (a label every test pool selects), named `<group>-<suffix>`. */
export function nodes(
  group: string,
  specs: { suffix: string; cpu: string; memory: string; taints?: unknown[]; unschedulable?: boolean }[],
) {
  return specs.map((s) => ({
    name: `${group}-${s.suffix}`,
    capacity: { cpu: s.cpu, memory: s.memory, pods: '110' },
    labels: { 'agentflow.test/group': group },
    ...(s.taints && { taints: s.taints as never }),
    ...(s.unschedulable && { unschedulable: true }),
  }));
}

/**
 * A kubeconfig with exactly the operator's RBAC (deploy/operator/rbac.yaml):
 * a ServiceAccount in `namespace` bound to the shipped ClusterRole.
 */
export async function operatorKubeconfig(cluster: ClusterHandle, namespace: string): Promise<string> {
  const docs = readFileSync('deploy/operator/rbac.yaml', 'utf8')
    .split(/^---$/m)
    .map((d) => parseYaml(d) as Json);
  const clusterRole = docs.find((d) => d.kind === 'ClusterRole');
  const r = await cluster.kubectl(['apply', '-f', '-'], { input: stringify(clusterRole) });
  if (r.code !== 0) throw new Error(`applying the ClusterRole failed: ${r.stderr}`);
  await cluster.client.post(`/api/v1/namespaces/${namespace}/serviceaccounts`, {
    metadata: { name: 'agentflow-operator' },
  });
  await cluster.client.post('/apis/rbac.authorization.k8s.io/v1/clusterrolebindings', {
    metadata: { name: `agentflow-operator-${namespace}` },
    roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: clusterRole?.metadata.name },
    subjects: [{ kind: 'ServiceAccount', name: 'agentflow-operator', namespace }],
  });
  // The namespaced Role (the dispatcher's TLS Secret), in the namespace the operator runs in.
  const role = docs.find((d) => d.kind === 'Role');
  if (role) {
    const nsRole = { ...role, metadata: { ...role.metadata, namespace } };
    const rr = await cluster.kubectl(['apply', '-f', '-'], { input: stringify(nsRole) });
    if (rr.code !== 0) throw new Error(`applying the Role failed: ${rr.stderr}`);
    await cluster.client.post(`/apis/rbac.authorization.k8s.io/v1/namespaces/${namespace}/rolebindings`, {
      metadata: { name: 'agentflow-operator' },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: role.metadata.name },
      subjects: [{ kind: 'ServiceAccount', name: 'agentflow-operator', namespace }],
    });
  }
  const tr = await cluster.client.post<{ status: { token: string } }>(
    `/api/v1/namespaces/${namespace}/serviceaccounts/agentflow-operator/token`,
    { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenRequest', spec: { expirationSeconds: 3600 } },
  );
  return cluster.tokenKubeconfig(`operator-${namespace}`, tr.status.token);
}

/**
 * Starts a process kubelet for `specs` and waits until each node is Ready and
 * rid of the not-ready taint the node lifecycle controller puts on new nodes,
 * so placement tests see the nodes as a scheduler would in steady state.
 */
export async function startNodes(
  cluster: ClusterHandle,
  specs: ReturnType<typeof nodes>,
  opts: Parameters<ClusterHandle['startKubelet']>[1] = {},
): Promise<void> {
  await cluster.startKubelet(specs, opts);
  for (const n of specs) {
    await until(
      `node ${n.name} Ready without the not-ready taint`,
      () => cluster.client.get<Json>(`/api/v1/nodes/${n.name}`),
      (node) =>
        node.status?.conditions?.some((c: Json) => c.type === 'Ready' && c.status === 'True') === true &&
        !(node.spec?.taints ?? []).some(
          (t: Json) => t.key === 'node.kubernetes.io/not-ready' || t.key === 'node.kubernetes.io/unreachable',
        ),
    );
  }
}
