// Prometheus metrics, on prom-client (https://github.com/siimon/prom-client).
// Callers declare metrics with prom-client's classes, re-exported here, and
// name the registry they belong to (`registers: [registry]`): every operator
// makes its own Registry and never touches prom-client's global default one,
// so several operators in one process (the tests) keep separate series. The
// ops server serves `await registry.metrics()` with `registry.contentType`
// (text format 0.0.4). Values owned by something else (a queue's depth, the
// agents connected) are read at scrape time in a metric's `collect`.

import { collectDefaultMetrics, type Registry } from 'prom-client';

export { Counter, Gauge, Histogram, Registry } from 'prom-client';

/** Seconds, 1 ms to 10 s: request, reconcile and dispatch latencies (client_golang's DefBuckets and 1 ms, 2.5 ms). */
export const LATENCY_BUCKETS: readonly number[] = Object.freeze([
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
]);

/**
 * prom-client's default gauges that break the naming conventions: a gauge must not end in
 * `_total`. Each is the sum over its labelled twin (`nodejs_active_handles{type}`, …), which stays.
 */
const MISNAMED_DEFAULTS = [
  'nodejs_active_handles_total',
  'nodejs_active_requests_total',
  'nodejs_active_resources_total',
];

/**
 * Registers prom-client's standard process metrics on `registry`, read at scrape time:
 * `process_cpu_seconds_total` (and its user/system parts), `process_resident_memory_bytes`,
 * `process_start_time_seconds`, open and max file descriptors, `nodejs_eventloop_lag_seconds`
 * (and its min/max/mean/percentiles since the previous scrape), `nodejs_heap_size_used_bytes`,
 * heap spaces, GC durations and `nodejs_version_info`; less MISNAMED_DEFAULTS.
 */
export function registerProcessMetrics(registry: Registry): void {
  collectDefaultMetrics({ register: registry });
  for (const name of MISNAMED_DEFAULTS) registry.removeSingleMetric(name);
}
