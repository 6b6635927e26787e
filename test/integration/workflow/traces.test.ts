import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CollectedSpan, startCollector } from '../../cluster/otel-collector.ts';
import { testCluster } from '../../cluster/testing.ts';
import { apply, until } from '../operator/helpers.ts';
import { getWorkflow, operatorWithPool, type PoolFixture, phaseIs, workflowManifest } from './helpers.ts';

// OpenTelemetry traces end to end: a real OpenTelemetry Collector (built from its Go modules, see
// test/cluster/otelcol/) receives OTLP from a real operator and real agents and writes every span
// to a file this test reads. A workflow run is one trace: the run's span at its root, one span per
// task attempt below it, and the agent's handler span below each attempt's.

let fx: PoolFixture;
let collector: Awaited<ReturnType<typeof startCollector>>;

beforeAll(async () => {
  collector = await startCollector(testCluster().info.dir);
  const otel = (service: string) => ({
    OTEL_EXPORTER_OTLP_ENDPOINT: collector.httpEndpoint,
    OTEL_BSP_SCHEDULE_DELAY: '200',
    OTEL_RESOURCE_ATTRIBUTES: `deployment.environment=test,service.namespace=${service}`,
  });
  fx = await operatorWithPool({
    name: 'traces',
    handlersModule: 'test/fixtures/agent/limit-handlers.mjs',
    operator: { env: otel('operator') },
    agentEnv: otel('agents'),
  });
}, 120_000);

afterAll(async () => {
  await fx?.close();
  await collector?.stop();
});

const byName = (spans: CollectedSpan[], name: string) => spans.filter((s) => s.name === name);

describe('traces', () => {
  it('a workflow run is one trace: run span, attempt spans below it, handler spans below those', async () => {
    const { cluster, ns } = fx;
    await apply(
      cluster,
      workflowManifest(ns, 'traced', {
        pool: 'agents',
        tasks: [
          { name: 'first', handler: 'tick', input: { key: 'traced' } },
          { name: 'fan', handler: 'stamp', dependsOn: ['first'], forEach: '[1, 2]', input: { num: '${{ item }}' } },
        ],
      }),
    );
    const wf = await until(
      'traced finished',
      () => getWorkflow(cluster, ns, 'traced'),
      phaseIs('Succeeded', 'Failed'),
      60_000,
    );
    expect(wf.status.phase).toBe('Succeeded');
    const spans = await collector.waitForSpans(
      (s) =>
        byName(s, `workflow ${ns}/traced`).length === 1 && s.filter((x) => x.name.startsWith('handler ')).length >= 3,
      30_000,
    );
    const root = byName(spans, `workflow ${ns}/traced`)[0] as CollectedSpan;
    expect(root.parentSpanId).toBe('');
    expect(root.serviceName).toBe('agentflow-operator');
    expect(root.attributes).toMatchObject({
      'agentflow.workflow': 'traced',
      'agentflow.phase': 'Succeeded',
      'agentflow.uid': wf.metadata.uid,
    });
    const trace = spans.filter((s) => s.traceId === root.traceId);
    const attempts = trace.filter((s) => s.name.startsWith('task '));
    expect(attempts.map((s) => s.name).sort()).toEqual(['task fan.0', 'task fan.1', 'task first']);
    for (const a of attempts) {
      expect(a.parentSpanId).toBe(root.spanId);
      expect(a.serviceName).toBe('agentflow-operator');
      expect(a.attributes['agentflow.attempt']).toBe(1);
      expect(a.events.map((e) => e.name)).toEqual(['queued', 'dispatched', 'committed']);
      expect(Number(a.startTimeUnixNano)).toBeGreaterThanOrEqual(Number(root.startTimeUnixNano));
      expect(Number(a.endTimeUnixNano)).toBeLessThanOrEqual(Number(root.endTimeUnixNano));
      // The agent's span of the handler hangs below the attempt's, in the agent's process.
      const handlers = trace.filter((s) => s.parentSpanId === a.spanId);
      expect(handlers).toHaveLength(1);
      expect(handlers[0]?.serviceName).toBe('agentflow-agent');
      expect(handlers[0]?.name).toBe(`handler ${a.attributes['agentflow.handler']}`);
    }
    // Resource attributes from OTEL_RESOURCE_ATTRIBUTES, and the operator's reconciles.
    expect(root.resource).toMatchObject({ 'deployment.environment': 'test', 'service.namespace': 'operator' });
    expect(spans.some((s) => s.name === 'reconcile workflow' && s.attributes['agentflow.key'] === `${ns}/traced`)).toBe(
      true,
    );

    // A finished run leaves the leader's memory; a later reconcile loads it from etcd again. That
    // is the same run, already traced: its span must not go out a second time. Two pokes, each
    // waited on through its reconcile's span: by the second, the run was evicted and reloaded.
    // (Spans go out in the order they end, so a root span the reload made precedes the reconcile's.)
    for (const poke of ['1', '2']) {
      const since = BigInt(Date.now()) * 1_000_000n;
      await cluster.client.mergePatch(`/apis/agentflow.io/v1alpha1/namespaces/${ns}/workflows/traced`, {
        metadata: { annotations: { 'test.agentflow.io/poke': poke } },
      });
      await collector.waitForSpans(
        (s) =>
          s.some(
            (x) =>
              x.name === 'reconcile workflow' &&
              x.attributes['agentflow.key'] === `${ns}/traced` &&
              BigInt(x.startTimeUnixNano) > since,
          ),
        30_000,
      );
    }
    expect(byName(collector.spans(), `workflow ${ns}/traced`)).toHaveLength(1);
  });

  it('a failed attempt is a span with an error status, and the retry a sibling span', async () => {
    const { cluster, ns } = fx;
    await apply(
      cluster,
      workflowManifest(ns, 'failing', {
        pool: 'agents',
        retryPolicy: { maxAttempts: 2, backoff: { initialSeconds: 0.1 } },
        tasks: [{ name: 'boom', handler: 'fail', input: { key: 'traces-fail' } }],
      }),
    );
    const wf = await until(
      'failing finished',
      () => getWorkflow(cluster, ns, 'failing'),
      phaseIs('Succeeded', 'Failed'),
      60_000,
    );
    expect(wf.status.phase).toBe('Failed');
    // The agent exports its spans on its own schedule: wait for both handler spans too.
    const spans = await collector.waitForSpans((s) => {
      const root = byName(s, `workflow ${ns}/failing`)[0];
      const attempts = s.filter((x) => x.traceId === root?.traceId && x.name === 'task boom');
      return attempts.length === 2 && s.filter((x) => attempts.some((a) => a.spanId === x.parentSpanId)).length === 2;
    }, 30_000);
    const root = byName(spans, `workflow ${ns}/failing`)[0] as CollectedSpan;
    expect(root.status.code).toBe(2); // ERROR
    const attempts = spans.filter((s) => s.traceId === root.traceId && s.name === 'task boom');
    expect(attempts.map((s) => s.attributes['agentflow.attempt']).sort()).toEqual([1, 2]);
    for (const a of attempts) {
      expect(a.parentSpanId).toBe(root.spanId);
      expect(a.status).toMatchObject({ code: 2, message: expect.stringContaining('fixture failure') });
      expect(a.events.map((e) => e.name).at(-1)).toBe('failed');
    }
    const handlerSpans = spans.filter((s) => attempts.some((a) => a.spanId === s.parentSpanId));
    expect(handlerSpans).toHaveLength(2);
    for (const h of handlerSpans) expect(h.status.code).toBe(2);
  });
});
