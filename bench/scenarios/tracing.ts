// Tracing: what OpenTelemetry costs per task attempt, off (the default: no
// OTEL_* variable, no SDK loaded) and on (the SDK exporting over OTLP/HTTP to a
// sink on loopback), against what a task costs in all (throughput.json's CPU
// per task, the latest run's). Measured on the code the operator and the agent
// run per attempt: the agent's handler span (src/agent/attempt.ts), the engine's
// attempt span (src/workflow/run-traces.ts), the dispatcher's traceparent and
// the checks on the way, in one process, CPU time per attempt.
//
// Off must cost nothing measurable: the figure is a few hundred nanoseconds
// per attempt, well under 1 % of a task. On is the price of the spans
// themselves (two per attempt, batched, encoded as protobuf and POSTed).
import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ROOT_CONTEXT, SpanStatusCode, trace } from '@opentelemetry/api';
import type { TaskEvent, TaskSpec } from '../../src/dispatcher/types.ts';
import {
  attemptSpanContext,
  parseTraceparent,
  runTraceId,
  startTracing,
  traceparentOf,
  tracer,
  tracingEnabled,
} from '../../src/lib/tracing.ts';
import type { WorkflowRun } from '../../src/workflow/run.ts';
import { RunTraces } from '../../src/workflow/run-traces.ts';
import type { BenchConfig } from '../lib/config.ts';
import { printTable, writeJson } from '../lib/report.ts';
import { round } from '../lib/stats.ts';

const ATTEMPTS = 20_000;
const ROUNDS = 5;
const YIELD_EVERY = 64;

/** A run as RunTraces reads it (only these fields). */
const fakeRun = {
  namespace: 'bench',
  name: 'wf',
  uid: 'bench-uid',
  traceId: runTraceId('bench-uid'),
  finished: false,
  record: () => ({ handler: 'noop', pool: 'agents', startedAt: new Date().toISOString() }),
} as unknown as WorkflowRun;

/** One attempt's tracing work on every side, as the processes do it. */
function attempt(traces: RunTraces, i: number): void {
  const task = `t.${i}`;
  // Engine: the TaskSpec carries the trace id only when tracing is on (run.ts specOf).
  const spec = {
    ref: { namespace: 'bench', workflow: 'wf', task },
    pool: 'agents',
    handler: 'noop',
    input: null,
    attempt: 1,
    ...(tracingEnabled() && { traceId: fakeRun.traceId }),
  } as TaskSpec;
  traces.submitted(spec, Date.now());
  // Dispatcher: Assign.traceparent.
  const traceparent = spec.traceId ? traceparentOf(attemptSpanContext(spec.traceId, task, 1)) : '';
  // Agent: the handler span (Attempt's constructor and endSpan).
  const parent = parseTraceparent(traceparent);
  const span = tracer().startSpan(
    'handler noop',
    {
      attributes: {
        'agentflow.namespace': 'bench',
        'agentflow.workflow': 'wf',
        'agentflow.task': task,
        'agentflow.attempt': 1,
        'agentflow.handler': 'noop',
      },
    },
    parent ? trace.setSpanContext(ROOT_CONTEXT, parent) : ROOT_CONTEXT,
  );
  if (i % 50 === 0) span.setStatus({ code: SpanStatusCode.ERROR, message: 'x' });
  span.end();
  // Engine: started and committed events (the attempt span).
  const ref = spec.ref;
  traces.event(fakeRun, { type: 'started', ref, attempt: 1, agentId: 'a' } as TaskEvent, Date.now());
  traces.event(
    fakeRun,
    { type: 'committed', ref, agentId: 'a', result: { ok: true, attempt: 1, output: null } } as unknown as TaskEvent,
    Date.now(),
  );
  traces.changed(fakeRun);
}

/**
 * CPU microseconds per attempt over `n` attempts, median of ROUNDS. The loop yields to the event
 * loop every YIELD_EVERY attempts, as the processes do between messages, so that the exporter's
 * batches go out meanwhile and their CPU (protobuf encoding, HTTP) is counted.
 */
async function measure(n: number): Promise<number> {
  const traces = new RunTraces();
  for (let i = 0; i < 2_000; i++) attempt(traces, i); // warm-up
  const perAttempt: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    const before = process.cpuUsage();
    for (let i = 0; i < n; i++) {
      attempt(traces, i);
      if (i % YIELD_EVERY === 0) await new Promise((resolve) => setImmediate(resolve));
    }
    const used = process.cpuUsage(before);
    perAttempt.push((used.user + used.system) / n);
  }
  perAttempt.sort((a, b) => a - b);
  return perAttempt[Math.floor(perAttempt.length / 2)] as number;
}

/** The latest throughput run's CPU per task, all processes (ms), if there is one. */
function taskCpuMs(): number | undefined {
  const file = 'bench/results/throughput.json';
  if (!existsSync(file)) return undefined;
  const doc = JSON.parse(readFileSync(file, 'utf8')) as {
    systems?: { agentflow?: { cpuMsPerTaskTotal?: number } };
  };
  return doc.systems?.agentflow?.cpuMsPerTaskTotal;
}

export async function tracing(_cfg: BenchConfig): Promise<void> {
  const off = await measure(ATTEMPTS);

  // On: the SDK with its OTLP/HTTP exporter, to a sink that takes every request.
  let requests = 0;
  let bytes = 0;
  const sink = createServer((req, res) => {
    requests++;
    req.on('data', (c: Buffer) => {
      bytes += c.length;
    });
    req.on('end', () => res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end());
  });
  await new Promise<void>((r) => sink.listen(0, '127.0.0.1', r));
  process.env.OTEL_EXPORTER_OTLP_ENDPOINT = `http://127.0.0.1:${(sink.address() as AddressInfo).port}`;
  process.env.OTEL_BSP_SCHEDULE_DELAY = '200';
  process.env.OTEL_BSP_MAX_QUEUE_SIZE = String(4 * ATTEMPTS);
  process.env.OTEL_BSP_MAX_EXPORT_BATCH_SIZE = '2048';
  const t = await startTracing('agentflow-bench');
  if (!t) throw new Error('tracing did not start');
  const before = process.cpuUsage();
  const on = await measure(ATTEMPTS);
  // The export of what is left, counted below. This burst (two spans per attempt, as fast as one
  // process can make them) outruns the exporter's 30 concurrent requests: the SDK drops batches
  // then, as it would in production, and says so.
  let exportError: string | undefined;
  await t.shutdown().catch((err: Error) => {
    exportError = err.message;
  });
  const flushedCpu = process.cpuUsage(before);
  const onWithExport = (flushedCpu.user + flushedCpu.system) / (ROUNDS * ATTEMPTS + 2_000);
  await new Promise<void>((r) => sink.close(() => r()));
  delete process.env.OTEL_EXPORTER_OTLP_ENDPOINT;

  const task = taskCpuMs();
  const pct = (us: number) => (task ? round((us / 1000 / task) * 100, 2) : undefined);
  printTable(
    'Tracing: CPU per task attempt (one process doing the operator, dispatcher and agent parts)',
    ['', 'µs per attempt', '% of a task'],
    [
      ['off (no OTEL_* variable)', round(off, 3), pct(off) ?? '-'],
      ['on (median round)', round(on, 3), pct(on) ?? '-'],
      ['on, all rounds and the final flush', round(onWithExport, 3), pct(onWithExport) ?? '-'],
    ],
  );
  const file = writeJson(
    'tracing',
    { attempts: ATTEMPTS, rounds: ROUNDS },
    {
      unit: 'CPU microseconds per task attempt (user + system), median round',
      off: round(off, 3),
      on: round(on, 3),
      onWithExport: round(onWithExport, 3),
      taskCpuMs: task,
      offPercentOfTask: pct(off),
      onPercentOfTask: pct(onWithExport),
      export: { requests, bytes, spans: 2 * (ROUNDS * ATTEMPTS + 2_000), ...(exportError && { error: exportError }) },
    },
  );
  console.log(`wrote ${file}`);
}
