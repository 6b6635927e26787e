import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { WorkflowSpec } from '../../../src/api/workflow.ts';
import type { Dispatcher } from '../../../src/dispatcher/index.ts';
import { startTracing, type Tracing } from '../../../src/lib/tracing.ts';
import type { StateStore } from '../../../src/state/index.ts';
import type { WorkflowEngine } from '../../../src/workflow/engine.ts';
import { startCollector } from '../../cluster/otel-collector.ts';
import { testCluster, uniqueName } from '../../cluster/testing.ts';
import { testStore } from '../state/helpers.ts';
import { engineWithoutAgents } from './engine-helpers.ts';

// The engine's spans against the real etcd and a real OpenTelemetry Collector, without agents or a
// kube-apiserver, with a clock that ticks on every read. A file of its own: OpenTelemetry takes one
// global tracer provider per process, so a test that shuts tracing down to export ends it for the file.

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

const exported = async (name: string) => {
  await tracing?.shutdown();
  tracing = undefined;
  await collector.waitForSpans((s) => s.some((x) => x.name === name), 10_000);
  return collector.spans();
};

describe('engine traces, clock ticks', () => {
  // Found by CI (traces.test.ts, once in ~100 runs): the event that ends a run was handed to the
  // run first, which read the clock for finishedAt, and to the traces after, which read it again:
  // across a millisecond tick the last attempt's span ended after the run's. Here the clock ticks
  // on every read, so the old order fails every time.
  it("ends the last attempt's span no later than the run's, however the clock ticks", async () => {
    const ns = uniqueName('traces');
    const run = await engine.ensure({ namespace: ns, name: 'wf', uid: 'uid-tick', spec });
    expect(dispatcher.isTracked({ namespace: ns, workflow: 'wf', task: 'only' })).toBe(true);
    let t = Date.now();
    const clock = vi.spyOn(Date, 'now').mockImplementation(() => ++t);
    try {
      dispatcher.emit('task', {
        type: 'committed',
        ref: { namespace: ns, workflow: 'wf', task: 'only' },
        agentId: 'agent-a',
        result: {
          attempt: 1,
          agentId: 'agent-a',
          token: 1,
          ok: true,
          output: 1,
          committedAt: new Date().toISOString(),
        },
      });
    } finally {
      clock.mockRestore();
    }
    expect(run.phase).toBe('Succeeded');
    const spans = await exported(`workflow ${ns}/wf`);
    const root = spans.find((x) => x.name === `workflow ${ns}/wf`);
    const attempt = spans.find((x) => x.parentSpanId === root?.spanId);
    expect(attempt?.name).toMatch(/only/);
    expect(Number(attempt?.endTimeUnixNano)).toBeLessThanOrEqual(Number(root?.endTimeUnixNano));
  });
});
