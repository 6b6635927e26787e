// The whole system as a user runs it, for the chaos suite: operators (leader
// and standby) on an etcd, agent pods on process-kubelet nodes, Workflows
// applied with kubectl. Faults are injected into real processes (kill -9,
// SIGSTOP, a stopped etcd); every case ends by checking in etcd that each task
// has exactly one committed result and that the audit chain verifies.
import { resolve } from 'node:path';
import { expect } from 'vitest';
import { AuditLog, type StateStore } from '../../../src/state/index.ts';
import type { ClusterHandle } from '../../cluster/cluster-handle.ts';
import { freePort } from '../../cluster/ports.ts';
import { testCluster, uniqueName } from '../../cluster/testing.ts';
import {
  apply,
  createNamespace,
  installCrds,
  nodes,
  OperatorProcess,
  pool,
  poolManifest,
  startNodes,
  until,
} from '../operator/helpers.ts';

// biome-ignore lint/suspicious/noExplicitAny: raw API JSON
export type Json = Record<string, any>;

export interface StackOptions {
  /** etcd for the operators: the harness's (undefined) or a private cluster's endpoints. */
  etcdEndpoints?: string[];
  /** Election lease TTL (s). */
  leaseTtl?: number;
  agentLeaseTtl?: number;
  agents?: number;
  capacity?: number;
  operators?: number;
  /** Further namespaces the operators watch (another tenant's), created with the stack. */
  otherNamespaces?: number;
}

export class Stack {
  cluster!: ClusterHandle;
  ns!: string;
  readonly prefix = `/${uniqueName('chaos')}`;
  readonly election = uniqueName('chaos');
  readonly group = uniqueName('cg');
  readonly operators: OperatorProcess[] = [];
  /** The other tenants' namespaces (otherNamespaces). */
  readonly others: string[] = [];
  dispatcherPort = 0;
  private readonly o: StackOptions;

  constructor(o: StackOptions = {}) {
    this.o = o;
  }

  async start(): Promise<void> {
    this.cluster = testCluster();
    await installCrds(this.cluster);
    this.ns = await createNamespace(this.cluster, 'chaos');
    for (let i = 0; i < (this.o.otherNamespaces ?? 0); i++)
      this.others.push(await createNamespace(this.cluster, 'tenant'));
    await startNodes(this.cluster, nodes(this.group, [{ suffix: 'a', cpu: '8', memory: '16Gi' }]));
    this.dispatcherPort = await freePort();
    // Names unique per stack: several chaos files share one control plane (and its log directory).
    for (let i = 0; i < (this.o.operators ?? 2); i++) this.operator(`${this.election}-op-${i + 1}`);
    await this.leader(30_000);
    await this.pool('agents', this.ns, this.o.agents ?? 2);
  }

  operator(name: string): OperatorProcess {
    const o = new OperatorProcess(this.cluster, {
      name,
      namespace: this.ns,
      prefix: this.prefix,
      election: this.election,
      dispatcherPort: this.dispatcherPort,
      watchNamespaces: [this.ns, ...this.others],
      leaseTtl: this.o.leaseTtl ?? 3,
      agentLeaseTtl: this.o.agentLeaseTtl ?? 10,
      ...(this.o.etcdEndpoints && { etcdEndpoints: this.o.etcdEndpoints }),
    });
    this.operators.push(o);
    return o;
  }

  /**
   * An operator whose latest word is that it leads (alive, and not in `except`:
   * a frozen process cannot say it stepped down).
   */
  async leader(timeoutMs = 30_000, except: OperatorProcess[] = []): Promise<OperatorProcess> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      for (const o of this.operators) {
        if (except.includes(o) || o.child.exitCode !== null || o.child.signalCode !== null) continue;
        const said = o.lines.filter(
          (l) => l.msg === 'Operator is leading' || l.msg === 'Stepped down; campaigning again',
        );
        if (said[said.length - 1]?.msg === 'Operator is leading') return o;
      }
      if (Date.now() > deadline) throw new Error(`no operator leading within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /** A pool of agent pods in `namespace`, waited on until all are connected. */
  async pool(
    name: string,
    namespace: string,
    replicas: number,
    env: { name: string; value: string }[] = [],
  ): Promise<void> {
    const m = poolManifest(namespace, name, {
      replicas,
      group: this.group,
      capacity: this.o.capacity ?? 8,
      drainTimeoutSeconds: 5,
      cpu: '10m',
      memory: '32Mi',
      command: [process.execPath, resolve('src/agent/main.ts')],
      env: [{ name: 'AGENTFLOW_HANDLERS_MODULE', value: resolve('test/fixtures/agent/workflow-handlers.mjs') }, ...env],
    });
    await apply(this.cluster, m);
    await until(
      `${replicas} agents of ${namespace}/${name} connected`,
      () => pool(this.cluster, namespace, name),
      (p) => p.status?.connectedAgents === replicas,
      60_000,
    );
  }

  async workflow(name: string, spec: Json, namespace = this.ns): Promise<void> {
    await apply(this.cluster, {
      apiVersion: 'agentflow.io/v1alpha1',
      kind: 'Workflow',
      metadata: { name, namespace },
      spec,
    });
  }

  get(name: string, namespace = this.ns): Promise<Json> {
    return this.cluster.client.get<Json>(`/apis/agentflow.io/v1alpha1/namespaces/${namespace}/workflows/${name}`);
  }

  async finished(name: string, timeoutMs: number, namespace = this.ns): Promise<Json> {
    return until(
      `workflow ${namespace}/${name} finished`,
      () => this.get(name, namespace),
      (w) => ['Succeeded', 'Failed'].includes(w.status?.phase),
      timeoutMs,
    );
  }

  async close(): Promise<void> {
    for (const o of this.operators) {
      o.kill('SIGCONT');
      o.kill('SIGKILL');
    }
    for (const n of [this.ns, ...this.others]) {
      await this.cluster?.client.delete(`/api/v1/namespaces/${n}`).catch(() => undefined);
    }
    await this.cluster?.close();
  }
}

/**
 * What every chaos case ends with, read from etcd: each task named has
 * exactly one committed result (version 1: written once), no claim is left,
 * and the workflow's audit chain verifies.
 */
export async function expectExactlyOnce(
  store: StateStore,
  namespace: string,
  workflow: string,
  tasks: string[],
): Promise<void> {
  // A task's key is its claim (version 1, bound to a lease) until the commit overwrites it with the
  // result, once (version 2, no lease): a claim left, or a result written again, shows here.
  const results = await store.list(`${store.key('results', namespace, workflow)}/`);
  const names = results.entries.map((e) => e.key.split('/').pop()).sort();
  expect(names).toEqual([...tasks].sort());
  for (const e of results.entries) {
    expect({ key: e.key, version: e.version, lease: e.lease }).toEqual({ key: e.key, version: 2, lease: '0' });
  }
  const verdict = await new AuditLog(store, namespace, workflow).verify();
  expect(verdict).toMatchObject({ ok: true });
}
