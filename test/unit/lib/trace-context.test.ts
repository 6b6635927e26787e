import {
  INVALID_SPAN_CONTEXT as API_INVALID,
  isSpanContextValid as apiIsValid,
  context,
  defaultTextMapSetter,
  trace,
} from '@opentelemetry/api';
import { parseTraceParent, W3CTraceContextPropagator } from '@opentelemetry/core';
import { describe, expect, it } from 'vitest';
import {
  INVALID_SPAN_CONTEXT,
  isSpanContextValid,
  NonRecordingSpan,
  parseTraceparent,
  SPAN_STATUS_ERROR,
  setSpanStarter,
  startSpan,
  traceparentOf,
  traceparentOfSpan,
} from '../../../src/lib/trace-context.ts';

// The agent's OpenTelemetry-free trace context must read and write exactly what OpenTelemetry's
// own packages do: they are the reference here.
const T = '4bf92f3577b34da6a3ce929d0e0e4736';
const S = '00f067aa0ba902b7';
const headers = [
  `00-${T}-${S}-01`,
  `00-${T}-${S}-00`,
  `00-${T.toUpperCase()}-${S}-01`,
  ` 00-${T}-${S}-01 `,
  `01-${T}-${S}-01-future-fields`,
  `00-${T}-${S}-01-extra`,
  `ff-${T}-${S}-01`,
  `00-${'0'.repeat(32)}-${S}-01`,
  `00-${T}-${'0'.repeat(16)}-01`,
  `00-${T.slice(1)}-${S}-01`,
  `00-${T}-${S}-1`,
  `00-${T}-${S}-zz`,
  `0-${T}-${S}-01`,
  `00_${T}_${S}_01`,
  'nonsense',
  '',
];

describe('parseTraceparent', () => {
  it.each(headers)('reads %j as @opentelemetry/core does', (h) => {
    const ref = parseTraceParent(h);
    expect(parseTraceparent(h)).toEqual(ref ? { ...ref, isRemote: true } : undefined);
  });
  it('takes undefined as no parent', () => expect(parseTraceparent(undefined)).toBeUndefined());
});

describe('isSpanContextValid and traceparentOfSpan', () => {
  const contexts = [
    { traceId: T, spanId: S, traceFlags: 1 },
    { traceId: T, spanId: S, traceFlags: 0 },
    { traceId: T.toUpperCase(), spanId: S, traceFlags: 1 },
    { traceId: '0'.repeat(32), spanId: S, traceFlags: 1 },
    { traceId: T, spanId: '0'.repeat(16), traceFlags: 1 },
    { traceId: `${T}0`, spanId: S, traceFlags: 1 },
    { traceId: T, spanId: 'xyz', traceFlags: 1 },
    { traceId: T.replace('4', 'g'), spanId: S, traceFlags: 1 },
  ];
  it.each(contexts)('judge and write %j as @opentelemetry/api and core do', (sc) => {
    expect(isSpanContextValid(sc)).toBe(apiIsValid(sc));
    const carrier: Record<string, string> = {};
    new W3CTraceContextPropagator().inject(trace.setSpanContext(context.active(), sc), carrier, defaultTextMapSetter);
    expect(traceparentOfSpan(new NonRecordingSpan(sc))).toBe(carrier.traceparent);
    expect(traceparentOf(sc)).toBe(carrier.traceparent ?? '');
  });
  it('gives no header for no span', () => expect(traceparentOfSpan(undefined)).toBeUndefined());
});

describe('startSpan without tracing', () => {
  it('is a span that records nothing and carries the parent’s context, as the no-op tracer’s', () => {
    const parent = parseTraceparent(`00-${T}-${S}-01`);
    const span = startSpan('handler h', { attributes: { a: 1 } }, parent);
    const ref = trace
      .getTracer('ref')
      .startSpan('handler h', {}, trace.setSpanContext(context.active(), parent ?? API_INVALID));
    expect(span.spanContext()).toEqual(ref.spanContext());
    expect(span.isRecording()).toBe(false);
    // Every method a handler may call works and chains.
    expect(
      span.setAttribute('k', 'v').setAttributes({ x: 1 }).addEvent('e').setStatus({ code: SPAN_STATUS_ERROR }),
    ).toBe(span);
    span.recordException(new Error('x'));
    span.end();
    expect(traceparentOfSpan(span)).toBe(`00-${T}-${S}-01`);
    expect(startSpan('root', {}, undefined).spanContext()).toEqual(INVALID_SPAN_CONTEXT);
    expect(INVALID_SPAN_CONTEXT).toEqual(API_INVALID);
  });

  it('uses the starter startTracing installs, until it is removed', () => {
    const made: string[] = [];
    setSpanStarter((name) => {
      made.push(name);
      return new NonRecordingSpan({ traceId: T, spanId: S, traceFlags: 1 });
    });
    try {
      expect(startSpan('handler a', {}, undefined).spanContext().spanId).toBe(S);
    } finally {
      setSpanStarter(undefined);
    }
    expect(made).toEqual(['handler a']);
    expect(startSpan('handler b', {}, undefined).spanContext()).toEqual(INVALID_SPAN_CONTEXT);
  });
});
