import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import type { ClusterHandle } from '../../cluster/cluster-handle.ts';
import { poolManifest } from '../operator/helpers.ts';

// What the workflow suites share: manifests for pools of real agent processes
// and for Workflows, reading Workflows back, and the JSON lines the fixture
// handlers append to $HANDLER_LOG (what ran, which attempt).

// biome-ignore lint/suspicious/noExplicitAny: raw API JSON
export type Json = Record<string, any>;

/** A pool whose pods run `agentflow-agent` with a fixture handlers module, noting what runs in `handlerLog`. */
export function fixturePool(
  namespace: string,
  name: string,
  o: { group: string; replicas: number; capacity?: number; handlersModule: string; handlerLog: string },
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
