import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { WorkflowSpec } from '../../../src/api/workflow.ts';
import type { Dispatcher } from '../../../src/dispatcher/index.ts';
import { startTracing, type Tracing } from '../../../src/lib/tracing.ts';
import type { StateStore } from '../../../src/state/index.ts';
import type { WorkflowEngine } from '../../../src/workflow/engine.ts';
import { startCollector } from '../../cluster/otel-collector.ts';
import { testCluster, uniqueName } from '../../cluster/testing.ts';
import { testStore } from '../state/helpers.ts';
import { engineWithoutAgents } from './engine-helpers.ts';

// The engine's run spans against the real etcd and a real OpenTelemetry Collector, without agents or
// a kube-apiserver: what happens to a run's span when the run is loaded again from etcd.

let store: StateStore;
let dispatcher: Dispatcher;
let engine: WorkflowEngine;
let collector: Awaited<ReturnType<typeof startCollector>>;
let tracing: Tracing | undefined;

beforeAll(async () => {
  collector = await startCollector(testCluster().info.dir);
  process.env.OTEL_EXPORTER_OTLP_ENDPOINT = collector.httpEndpoint;
  tracing = await startTracing('agentflow-operator');
  store = testStore();
  ({ dispatcher, engine } = engineWithoutAgents(store));
}, 120_000);

afterAll(async () => {
  await engine?.stop();
  await dispatcher?.stop(100);
  store?.close();
  await tracing?.shutdown();
  await collector?.stop();
  delete process.env.OTEL_EXPORTER_OTLP_ENDPOINT;
});

const spec = { tasks: [{ name: 'only', pool: 'p', handler: 'work' }] } as unknown as WorkflowSpec;

describe('engine traces', () => {
  // Found by CI: the operator evicts a finished run once its final status is written, and a reconcile
  // of the workflow as the informer saw it a moment before (still Running) loads the run from etcd
  // again. The run it loaded was already finished, and already traced: its span went out twice.
  it("exports a finished run's span once, though the run is loaded again from etcd after it left memory", async () => {
    expect(tracing).toBeDefined();
    const ns = uniqueName('traces');
    const run = await engine.ensure({ namespace: ns, name: 'wf', uid: 'uid-1', spec });
    run.stop('cancelled by the test');
    engine.changed(run);
    await engine.flush();
    expect(engine.evict(ns, 'wf')).toBe(true);

    const again = await engine.ensure({ namespace: ns, name: 'wf', uid: 'uid-1', spec });
    expect(again).not.toBe(run);
    expect(again.phase).toBe('Cancelled');
    await tracing?.shutdown();
    tracing = undefined;
    const roots = await collector.waitForSpans((s) => s.some((x) => x.name === `workflow ${ns}/wf`), 10_000);
    // The shutdown sent both spans, had there been two, in one export: the collector wrote them together.
    expect(collector.spans().filter((x) => x.name === `workflow ${ns}/wf`)).toHaveLength(1);
    expect(roots.find((x) => x.name === `workflow ${ns}/wf`)?.attributes['agentflow.phase']).toBe('Cancelled');
  });
});
