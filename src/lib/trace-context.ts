// W3C Trace Context without OpenTelemetry's packages: what an agent needs while tracing is off
// (parse an Assign's traceparent, give handlers a span that records nothing, write traceparent
// headers), so that an agent pod loads @opentelemetry/api and /core only to export traces
// (src/lib/tracing.ts, through startTracing, which installs a span starter here). Measured with
// `bash scripts/run.sh node bench/lib/agent-rss.ts`: 1-3 MiB less RSS per agent (idle 78.5 -> 78.0,
// 16 in flight 96.3 -> 95.3 MiB for the image entry; source entry 80.6 -> 77.7, 97.4 -> 95.1).
// The rules follow @opentelemetry/core's W3CTraceContextPropagator and @opentelemetry/api's
// NonRecordingSpan and isSpanContextValid; test/unit/lib/trace-context.test.ts holds them equal.
import type { Span, SpanContext, SpanOptions } from '@opentelemetry/api';

/** Whether the standard variables ask for traces over OTLP (OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT set). */
export function tracingConfigured(env: NodeJS.ProcessEnv = process.env): boolean {
  if (env.OTEL_SDK_DISABLED === 'true') return false;
  const exporter = env.OTEL_TRACES_EXPORTER;
  if (exporter !== undefined && exporter !== '' && exporter !== 'otlp') return false;
  return Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT);
}

const INVALID_TRACE_ID = '0'.repeat(32);
const INVALID_SPAN_ID = '0'.repeat(16);
/** The context of a span of no trace (api's INVALID_SPAN_CONTEXT). */
export const INVALID_SPAN_CONTEXT: SpanContext = { traceId: INVALID_TRACE_ID, spanId: INVALID_SPAN_ID, traceFlags: 0 };

const TRACEPARENT = /^\s?((?!ff)[\da-f]{2})-((?![0]{32})[\da-f]{32})-((?![0]{16})[\da-f]{16})-([\da-f]{2})(-.*)?\s?$/;
const TRACE_ID = /^[\da-fA-F]{32}$/;
const SPAN_ID = /^[\da-fA-F]{16}$/;

/** A traceparent header's span context (remote); undefined for one that is not W3C's format. */
export function parseTraceparent(value: string | undefined): SpanContext | undefined {
  if (!value) return undefined;
  const m = TRACEPARENT.exec(value);
  // Later versions may add fields; version 00 may not.
  if (!m || (m[1] === '00' && m[5])) return undefined;
  return {
    traceId: m[2] as string,
    spanId: m[3] as string,
    traceFlags: Number.parseInt(m[4] as string, 16),
    isRemote: true,
  };
}

/** Whether a span context names a trace and a span (not all zeros, the right number of hex digits). */
export function isSpanContextValid(sc: SpanContext): boolean {
  return (
    TRACE_ID.test(sc.traceId) &&
    sc.traceId !== INVALID_TRACE_ID &&
    SPAN_ID.test(sc.spanId) &&
    sc.spanId !== INVALID_SPAN_ID
  );
}

/** The W3C traceparent header of a span context, `00-<trace>-<span>-<flags>`; '' for one that is not valid. */
export function traceparentOf(sc: SpanContext): string {
  if (!isSpanContextValid(sc)) return '';
  return `00-${sc.traceId}-${sc.spanId}-0${Number(sc.traceFlags || 0).toString(16)}`;
}

/** The traceparent of a span, if its context is valid (a span of no trace has none). */
export function traceparentOfSpan(span: Span | undefined): string | undefined {
  const sc = span?.spanContext();
  return sc && isSpanContextValid(sc) ? traceparentOf(sc) : undefined;
}

/** A span that records nothing and carries `context` (api's NonRecordingSpan). */
export class NonRecordingSpan implements Span {
  private readonly context: SpanContext;

  constructor(context: SpanContext = INVALID_SPAN_CONTEXT) {
    this.context = context;
  }

  spanContext(): SpanContext {
    return this.context;
  }
  setAttribute(): this {
    return this;
  }
  setAttributes(): this {
    return this;
  }
  addEvent(): this {
    return this;
  }
  addLink(): this {
    return this;
  }
  addLinks(): this {
    return this;
  }
  setStatus(): this {
    return this;
  }
  updateName(): this {
    return this;
  }
  end(): void {}
  isRecording(): boolean {
    return false;
  }
  recordException(): void {}
}

/** Starts a span under `parent` (a remote context) or as a root: OpenTelemetry's tracer, once tracing is on. */
export type SpanStarter = (name: string, options: SpanOptions, parent: SpanContext | undefined) => Span;

let starter: SpanStarter | undefined;

/** Installed by startTracing (and removed by its shutdown): spans are then OpenTelemetry's. */
export function setSpanStarter(s: SpanStarter | undefined): void {
  starter = s;
}

/**
 * A span for an agent's handler: OpenTelemetry's while tracing is on, else one that records
 * nothing and carries the parent's context (so a traceparent still flows to what the handler calls),
 * as OpenTelemetry's no-op tracer does.
 */
export function startSpan(name: string, options: SpanOptions, parent: SpanContext | undefined): Span {
  if (starter) return starter(name, options, parent);
  return new NonRecordingSpan(parent && isSpanContextValid(parent) ? parent : INVALID_SPAN_CONTEXT);
}

/** SpanStatusCode.ERROR of @opentelemetry/api (a const enum there: UNSET 0, OK 1, ERROR 2). */
export const SPAN_STATUS_ERROR = 2;
