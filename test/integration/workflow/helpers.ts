import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
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

// What the workflow suites share: manifests for pools of real agent processes
// and for Workflows, reading Workflows back, and the JSON lines the fixture
// handlers append to $HANDLER_LOG (what ran, which attempt).

// biome-ignore lint/suspicious/noExplicitAny: raw API JSON
export type Json = Record<string, any>;

/** A pool whose pods run `agentflow-agent` with a fixture handlers module, noting what runs in `handlerLog`. */
export function fixturePool(
  namespace: string,
  name: string,
  o: {
    group: string;
    replicas: number;
    capacity?: number;
    handlersModule: string;
    handlerLog: string;
    /** More environment variables of the agents (e.g. OTEL_*). */
    env?: Record<string, string>;
  },
): Json {
  return poolManifest(namespace, name, {
    replicas: o.replicas,
    group: o.group,
    capacity: o.capacity ?? 8,
    drainTimeoutSeconds: 5,
    cpu: '10m',
    memory: '32Mi',
    command: [process.execPath, resolve('src/agent/main.ts')],
    env: [
      { name: 'AGENTFLOW_HANDLERS_MODULE', value: resolve(o.handlersModule) },
      { name: 'HANDLER_LOG', value: o.handlerLog },
      ...Object.entries(o.env ?? {}).map(([name, value]) => ({ name, value })),
    ],
  }) as Json;
}

export function workflowManifest(
  namespace: string,
  name: string,
  spec: Json,
  annotations?: Record<string, string>,
): Json {
  return {
    apiVersion: 'agentflow.io/v1alpha1',
    kind: 'Workflow',
    metadata: { name, namespace, ...(annotations && { annotations }) },
    spec,
  };
}

export const getWorkflow = (cluster: ClusterHandle, namespace: string, name: string): Promise<Json> =>
  cluster.client.get<Json>(`/apis/agentflow.io/v1alpha1/namespaces/${namespace}/workflows/${name}`);

/** A predicate for `until`: the workflow is in one of these phases. */
export const phaseIs =
  (...phases: string[]) =>
  (w: Json): boolean =>
    phases.includes(w.status?.phase);

/** The lines the fixture handlers appended to their log so far. */
export const readHandlerLog = (path: string): Json[] =>
  existsSync(path)
    ? readFileSync(path, 'utf8')
        .trim()
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Json)
    : [];

type OperatorOptions = ConstructorParameters<typeof OperatorProcess>[1];

/** A namespace with a fixture pool of connected agents and the operator that leads it (operatorWithPool). */
export interface PoolFixture {
  cluster: ClusterHandle;
  ns: string;
  handlerLog: string;
  /** Every operator process started, the first (the leader at the start) first. */
  operators: OperatorProcess[];
  /** Starts another operator of the same election, etcd prefix and dispatcher port: a standby, or the next leader. */
  operator(name: string): OperatorProcess;
  /** Stops the operators and deletes the namespace. */
  close(): Promise<void>;
}

/**
 * The set-up most workflow suites share: CRDs, a namespace, a node, an
 * operator process that leads, and an AgentPool `agents` of `replicas` real
 * agent processes running `handlersModule`, all connected.
 */
export async function operatorWithPool(o: {
  /** Names the namespace (`<name>-<random>`), the operator (`op-<name>`) and the node group. */
  name: string;
  handlersModule: string;
  replicas?: number;
  capacity?: number;
  /** More environment variables of the agents. */
  agentEnv?: Record<string, string>;
  operator?: Partial<Omit<OperatorOptions, 'name' | 'namespace' | 'prefix' | 'election' | 'dispatcherPort'>>;
}): Promise<PoolFixture> {
  const cluster = testCluster();
  await installCrds(cluster);
  const ns = await createNamespace(cluster, o.name);
  const handlerLog = join(cluster.info.dir, `handlers-${ns}.jsonl`);
  const group = uniqueName('g');
  await startNodes(cluster, nodes(group, [{ suffix: 'a', cpu: '8', memory: '16Gi' }]));
  const shared = {
    namespace: ns,
    prefix: `/${uniqueName(o.name)}`,
    election: uniqueName(o.name),
    dispatcherPort: await freePort(),
    ...o.operator,
  };
  const operators: OperatorProcess[] = [];
  const operator = (name: string) => {
    const p = new OperatorProcess(cluster, { ...shared, name });
    operators.push(p);
    return p;
  };
  await operator(`op-${o.name}`).waitFor('Operator is leading');
  const replicas = o.replicas ?? 1;
  await apply(
    cluster,
    fixturePool(ns, 'agents', {
      group,
      replicas,
      capacity: o.capacity ?? 8,
      handlersModule: o.handlersModule,
      handlerLog,
      ...(o.agentEnv && { env: o.agentEnv }),
    }),
  );
  await until(
    `${replicas} agent(s) connected`,
    () => pool(cluster, ns, 'agents'),
    (x) => x.status?.connectedAgents === replicas,
    60_000,
  );
  return {
    cluster,
    ns,
    handlerLog,
    operators,
    operator,
    close: async () => {
      for (const p of operators) p.kill('SIGTERM');
      await Promise.all(operators.map((p) => p.exited));
      await cluster.client.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
      await cluster.close();
    },
  };
}
