import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_POOL } from '../../../src/api/agentpool.ts';
import { CRD_NAMES } from '../../../src/api/crds.ts';
import { DEFAULT_PRIORITY, DEFAULT_RETRY, DEFAULT_TASK_COST } from '../../../src/api/workflow.ts';
import type { ClusterHandle } from '../../cluster/cluster-handle.ts';
import { waitFor } from '../../cluster/managed-process.ts';
import { testCluster } from '../../cluster/testing.ts';

// `kubectl explain` against the real API server: it prints a field's
// description but not the schema's `default:`, so every default a user relies
// on has to be in the description, from the same constant the engine reads.

let cluster: ClusterHandle;

beforeAll(async () => {
  cluster = testCluster();
  const crds = await cluster.kubectl(['apply', '--server-side', '--force-conflicts', '-f', 'deploy/crds/']);
  expect(crds.stderr).toBe('');
  const est = await cluster.kubectl([
    'wait',
    '--for=condition=Established',
    ...CRD_NAMES.map((n) => `crd/${n}`),
    '--timeout=30s',
  ]);
  expect(est.code).toBe(0);
});

afterAll(async () => {
  await cluster.close();
});

/** kubectl explain's output with its line wrapping undone. */
async function explain(field: string): Promise<string> {
  let out = '';
  // The API server publishes a new CRD's OpenAPI a moment after it is Established.
  await waitFor(
    `kubectl explain ${field}`,
    async () => {
      const r = await cluster.kubectl(['explain', field]);
      out = r.stdout;
      return r.code === 0 && out.includes('DESCRIPTION');
    },
    30_000,
    250,
  );
  return out.replace(/\s+/g, ' ');
}

const cases: [string, string][] = [
  ['workflow.spec.retryPolicy.maxAttempts', `Default: ${DEFAULT_RETRY.maxAttempts}.`],
  ['workflow.spec.retryPolicy.backoff.initialSeconds', `Default: ${DEFAULT_RETRY.initialSeconds}.`],
  ['workflow.spec.retryPolicy.backoff.factor', `Default: ${DEFAULT_RETRY.factor}.`],
  ['workflow.spec.retryPolicy.backoff.maxSeconds', `Default: ${DEFAULT_RETRY.maxSeconds}.`],
  ['workflow.spec.tasks.retryPolicy.maxAttempts', `Default: ${DEFAULT_RETRY.maxAttempts}.`],
  ['workflow.spec.tasks.timeoutSeconds', 'Default: none (no deadline).'],
  ['workflow.spec.timeoutSeconds', 'Default: none (no deadline).'],
  ['workflow.spec.tasks.cost', `Default: ${DEFAULT_TASK_COST}.`],
  ['workflow.spec.priority', `Default: ${DEFAULT_PRIORITY}.`],
  ['workflow.spec.parallelism', 'Default: no limit.'],
  ['workflow.spec.ttlSecondsAfterFinished', 'Default: none (kept until deleted).'],
  ['agentpool.spec.replicas', `Default: ${DEFAULT_POOL.replicas}.`],
  ['agentpool.spec.agent.capacity', `Default: ${DEFAULT_POOL.capacity}.`],
  ['agentpool.spec.agent.drainTimeoutSeconds', `Default: ${DEFAULT_POOL.drainTimeoutSeconds}.`],
  ['agentpool.spec.autoscaling.minReplicas', `Default: ${DEFAULT_POOL.minReplicas}.`],
  ['agentpool.spec.autoscaling.targetUtilization', `Default: ${DEFAULT_POOL.targetUtilization}.`],
  ['agentpool.spec.autoscaling.scaleDownDelaySeconds', `Default: ${DEFAULT_POOL.scaleDownDelaySeconds}.`],
  ['agentpool.spec.placement.strategy', `Default: ${DEFAULT_POOL.strategy}.`],
  ['agentpool.spec.placement.scheduler', `Default: ${DEFAULT_POOL.scheduler}.`],
];

describe('kubectl explain shows the defaults', () => {
  it.each(cases)('%s', async (field, text) => {
    expect(await explain(field)).toContain(text);
  });
});
