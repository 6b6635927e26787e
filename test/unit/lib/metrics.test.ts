import { register as promClientGlobal } from 'prom-client';
import { describe, expect, it } from 'vitest';
import {
  Counter,
  Gauge,
  Histogram,
  LATENCY_BUCKETS,
  Registry,
  registerProcessMetrics,
} from '../../../src/lib/metrics.ts';
import { lintExposition, PromlintError, parseSamples, sumOf } from '../../cluster/promlint.ts';

/**
 * Busy for `ms` of this process's CPU time (so at least as long on the clock): CPU time and
 * event-loop lag both grow by it. Counted in CPU time, not on the clock: on a loaded machine a
 * clock-timed spin got less CPU than the assertion below wants.
 */
const spin = (ms: number) => {
  const start = process.cpuUsage();
  for (;;) {
    const used = process.cpuUsage(start);
    if (used.user + used.system >= ms * 1000) return;
  }
};

describe('Registry (prom-client)', () => {
  it('keeps the series of each registry apart and leaves prom-client’s global registry alone', async () => {
    const [a, b] = [new Registry(), new Registry()];
    const declare = (r: Registry) =>
      new Counter({
        name: 'agentflow_reconcile_total',
        help: 'Reconciles by controller and result.',
        labelNames: ['controller', 'result'],
        registers: [r],
      });
    declare(a).inc({ controller: 'agentpool', result: 'success' }, 2);
    declare(b).inc({ controller: 'agentpool', result: 'success' }, 5);
    expect(await a.metrics()).toBe(
      [
        '# HELP agentflow_reconcile_total Reconciles by controller and result.',
        '# TYPE agentflow_reconcile_total counter',
        'agentflow_reconcile_total{controller="agentpool",result="success"} 2',
        '',
      ].join('\n'),
    );
    expect(await b.metrics()).toContain('agentflow_reconcile_total{controller="agentpool",result="success"} 5\n');
    expect(promClientGlobal.getSingleMetric('agentflow_reconcile_total')).toBeUndefined();
    expect(a.contentType).toBe('text/plain; version=0.0.4; charset=utf-8');
  });

  it('reads a gauge owned by something else at every scrape', async () => {
    const r = new Registry();
    const queue: string[] = [];
    const depth: Gauge = new Gauge({
      name: 'agentflow_workqueue_depth',
      help: 'Keys waiting.',
      registers: [r],
      collect: () => depth.set(queue.length),
    });
    expect(await r.metrics()).toContain('agentflow_workqueue_depth 0\n');
    queue.push('a', 'b');
    expect(await r.metrics()).toContain('agentflow_workqueue_depth 2\n');
  });

  it('buckets latencies in seconds from 1 ms to 10 s with LATENCY_BUCKETS', async () => {
    const r = new Registry();
    const h = new Histogram({
      name: 'agentflow_reconcile_duration_seconds',
      help: 'Time per reconcile.',
      buckets: [...LATENCY_BUCKETS],
      registers: [r],
    });
    h.observe(0.003);
    h.observe(20);
    const samples = parseSamples(await r.metrics());
    const bucket = (le: string) => sumOf(samples, 'agentflow_reconcile_duration_seconds_bucket', { le });
    expect(samples.filter((s) => s.name.endsWith('_bucket')).map((s) => s.labels.le)).toEqual([
      ...LATENCY_BUCKETS.map(String),
      '+Inf',
    ]);
    expect([bucket('0.0025'), bucket('0.005'), bucket('10'), bucket('+Inf')]).toEqual([0, 1, 1, 2]);
    expect(sumOf(samples, 'agentflow_reconcile_duration_seconds_sum')).toBeCloseTo(20.003);
    expect(sumOf(samples, 'agentflow_reconcile_duration_seconds_count')).toBe(2);
  });
});

describe('registerProcessMetrics', () => {
  it('registers the standard process and Node metrics on the registry, read at scrape time', async () => {
    const r = new Registry();
    registerProcessMetrics(r);
    const first = parseSamples(await r.metrics());
    const names = new Set(first.map((s) => s.name));
    for (const name of [
      'process_cpu_seconds_total',
      'process_resident_memory_bytes',
      'process_start_time_seconds',
      'nodejs_eventloop_lag_seconds',
      'nodejs_heap_size_used_bytes',
      'nodejs_active_handles',
    ]) {
      expect(names, name).toContain(name);
    }
    // The gauges prom-client names *_total (a counter's suffix) are left out; their labelled twins stay.
    for (const name of [
      'nodejs_active_handles_total',
      'nodejs_active_requests_total',
      'nodejs_active_resources_total',
    ]) {
      expect(names, name).not.toContain(name);
    }
    expect(sumOf(first, 'process_resident_memory_bytes')).toBeGreaterThan(1_000_000);
    const start = sumOf(first, 'process_start_time_seconds');
    // prom-client rounds the start time to the second, so a process started in this very second may
    // show the next one (seen in a forked test worker started moments before).
    expect(start).toBeLessThanOrEqual(Math.ceil(Date.now() / 1_000));
    expect(start).toBeGreaterThan(Date.now() / 1_000 - 3_600);

    // A scrape resets the lag histogram: stall the loop for 100 ms a little after it.
    await new Promise((resolve) => setTimeout(resolve, 30));
    spin(100);
    await new Promise((resolve) => setTimeout(resolve, 20));
    const next = parseSamples(await r.metrics());
    expect(sumOf(next, 'process_cpu_seconds_total') - sumOf(first, 'process_cpu_seconds_total')).toBeGreaterThan(0.05);
    // The stall since the previous scrape shows as the max lag seen.
    expect(sumOf(next, 'nodejs_eventloop_lag_max_seconds')).toBeGreaterThan(0.05);
  });

  it('can be registered on several registries in one process (one per operator)', async () => {
    const [a, b] = [new Registry(), new Registry()];
    registerProcessMetrics(a);
    registerProcessMetrics(b);
    expect(sumOf(parseSamples(await a.metrics()), 'process_resident_memory_bytes')).toBeGreaterThan(0);
    expect(sumOf(parseSamples(await b.metrics()), 'process_resident_memory_bytes')).toBeGreaterThan(0);
  });
});

describe('naming conventions, checked by Prometheus’ parser and promlint', () => {
  it('finds no problem in the process metrics', async () => {
    const r = new Registry();
    registerProcessMetrics(r);
    expect(await lintExposition(await r.metrics())).toEqual([]);
  });

  it('reports what breaks the conventions, a unit-less histogram included', async () => {
    const r = new Registry();
    const registers = [r];
    new Counter({ name: 'agentflow_retries', help: 'Retries.', registers });
    new Gauge({ name: 'agentflow_agents_total', help: 'Agents.', registers });
    new Histogram({ name: 'agentflow_task_latency_milliseconds', help: 'Latency.', registers });
    new Histogram({ name: 'agentflow_batch_size', help: 'Tasks per batch.', buckets: [1, 10], registers });
    expect(await lintExposition(await r.metrics())).toEqual([
      'agentflow_agents_total: non-counter metrics should not have "_total" suffix',
      'agentflow_batch_size: histogram and summary names should end in a base unit (_seconds, _bytes, _meters, _grams, _joules, _volts, _amperes, _celsius, _ratio)',
      'agentflow_retries: counter metrics should have "_total" suffix',
      'agentflow_task_latency_milliseconds: histogram and summary names should end in a base unit (_seconds, _bytes, _meters, _grams, _joules, _volts, _amperes, _celsius, _ratio)',
      'agentflow_task_latency_milliseconds: use base unit "seconds" instead of "milliseconds"',
    ]);
  });

  it('refuses an exposition that does not parse, naming the line', async () => {
    const text = '# TYPE a_total counter\na_total 1\n# TYPE a_total counter\na_total 2\n';
    await expect(lintExposition(text)).rejects.toThrow(PromlintError);
    await expect(lintExposition(text)).rejects.toThrow(/line 3/);
  });
});
