// OpenTelemetry traces, shared by the operator and the agent. The SDK is loaded
// only when the standard OTEL_* variables ask for OTLP traces; otherwise every
// span is @opentelemetry/api's no-op (no SDK code is even imported), so tracing
// off costs nothing measurable (bench/results: `npm run bench -- tracing`).
//
// A workflow run is one trace whose id derives from the run's uid, and each
// task attempt one span whose id derives from the trace id, the task and the
// attempt number. Spans are exported when what they describe ends, by whichever
// process sees it end: a leader that takes over mid-run, or an agent that runs
// an attempt, names the same parents without being told anything but ids.
import { createHash } from 'node:crypto';
import {
  ROOT_CONTEXT,
  type Span,
  type SpanContext,
  type SpanOptions,
  TraceFlags,
  type Tracer,
  trace,
} from '@opentelemetry/api';
import { setSpanStarter, tracingConfigured } from './trace-context.ts';

// One place for each rule: the agent uses these without loading OpenTelemetry (trace-context.ts).
export { parseTraceparent, traceparentOf, traceparentOfSpan, tracingConfigured } from './trace-context.ts';

export const TRACER_NAME = 'agentflow';

let enabled = false;
/** The ids the next span started takes (see startSpanWithId): ids that derive from what the span is. */
let pending: { traceId: string; spanId: string } | undefined;

/** Whether this process exports spans (startTracing found them configured). */
export function tracingEnabled(): boolean {
  return enabled;
}

export interface Tracing {
  /** Exports what is buffered and stops. */
  shutdown(): Promise<void>;
}

/**
 * Starts the OpenTelemetry SDK when tracingConfigured(): a tracer provider
 * with the OTLP/HTTP (protobuf) exporter, which reads the OTEL_EXPORTER_OTLP_*
 * variables itself, behind a batch processor (OTEL_BSP_* variables), with
 * service.name `serviceName` unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES
 * say otherwise. Undefined when tracing is off.
 */
export async function startTracing(serviceName: string): Promise<Tracing | undefined> {
  if (!tracingConfigured()) return undefined;
  const [sdk, { OTLPTraceExporter }, resources] = await Promise.all([
    import('@opentelemetry/sdk-trace'),
    import('@opentelemetry/exporter-trace-otlp-proto'),
    import('@opentelemetry/resources'),
  ]);
  const random = new sdk.RandomIdGenerator();
  const provider = new sdk.TracerProvider({
    resource: resources
      .defaultResource()
      .merge(resources.resourceFromAttributes({ 'service.name': serviceName }))
      .merge(resources.detectResources({ detectors: [resources.envDetector] })),
    idGenerator: {
      generateTraceId: () => pending?.traceId ?? random.generateTraceId(),
      generateSpanId: () => pending?.spanId ?? random.generateSpanId(),
    },
    spanProcessors: [
      new sdk.BatchSpanProcessor({
        exporter: new OTLPTraceExporter(),
        // The SDK no longer reads the standard OTEL_BSP_* variables itself.
        ...positive('OTEL_BSP_SCHEDULE_DELAY', 'scheduledDelayMillis'),
        ...positive('OTEL_BSP_MAX_QUEUE_SIZE', 'maxQueueSize'),
        ...positive('OTEL_BSP_MAX_EXPORT_BATCH_SIZE', 'maxExportBatchSize'),
        ...positive('OTEL_BSP_EXPORT_TIMEOUT', 'exportTimeoutMillis'),
      }),
    ],
  });
  trace.setGlobalTracerProvider(provider);
  enabled = true;
  setSpanStarter((name, options, parent) =>
    tracer().startSpan(name, options, parent ? trace.setSpanContext(ROOT_CONTEXT, parent) : ROOT_CONTEXT),
  );
  return {
    shutdown: async () => {
      enabled = false;
      setSpanStarter(undefined);
      await provider.shutdown();
    },
  };
}

/** `{[option]: n}` for a positive number in the variable, else nothing. */
function positive<K extends string>(variable: string, option: K): Partial<Record<K, number>> {
  const n = Number(process.env[variable]);
  return Number.isFinite(n) && n > 0 ? ({ [option]: n } as Record<K, number>) : {};
}

export function tracer(): Tracer {
  return trace.getTracer(TRACER_NAME);
}

const hex = (text: string, chars: number) => createHash('sha256').update(text).digest('hex').slice(0, chars);

/** The trace of a workflow run (its uid): the same id whichever leader runs it. */
export function runTraceId(uid: string): string {
  return hex(`agentflow-run:${uid}`, 32);
}

/** The span of the run itself, the root of its trace. */
export function runSpanContext(traceId: string): SpanContext {
  return { traceId, spanId: hex(`run:${traceId}`, 16), traceFlags: TraceFlags.SAMPLED, isRemote: true };
}

/** The span of one attempt of one task instance, a child of the run's. */
export function attemptSpanContext(traceId: string, task: string, attempt: number): SpanContext {
  return {
    traceId,
    spanId: hex(`attempt:${traceId}:${task}:${attempt}`, 16),
    traceFlags: TraceFlags.SAMPLED,
    isRemote: true,
  };
}

/**
 * Starts a span with the ids of `self` (the SDK would make random ones), a
 * child of `parent` or, without one, the root of its trace.
 */
export function startSpanWithId(name: string, self: SpanContext, options: SpanOptions, parent?: SpanContext): Span {
  const ctx = parent ? trace.setSpanContext(ROOT_CONTEXT, parent) : ROOT_CONTEXT;
  pending = { traceId: self.traceId, spanId: self.spanId };
  try {
    return tracer().startSpan(name, { ...options, ...(parent ? {} : { root: true }) }, ctx);
  } finally {
    pending = undefined;
  }
}
