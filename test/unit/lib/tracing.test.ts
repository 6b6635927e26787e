import { describe, expect, it } from 'vitest';
import {
  attemptSpanContext,
  parseTraceparent,
  runSpanContext,
  runTraceId,
  traceparentOf,
  tracingConfigured,
} from '../../../src/lib/tracing.ts';

describe('tracing ids', () => {
  it('derive from the run, the task and the attempt: the same for every leader, distinct for each', () => {
    const t = runTraceId('8d5c0a4e-uid');
    expect(t).toMatch(/^[0-9a-f]{32}$/);
    expect(runTraceId('8d5c0a4e-uid')).toBe(t);
    expect(runTraceId('other-uid')).not.toBe(t);
    const ids = [
      runSpanContext(t).spanId,
      attemptSpanContext(t, 'a', 1).spanId,
      attemptSpanContext(t, 'a', 2).spanId,
      attemptSpanContext(t, 'a.1', 1).spanId,
    ];
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{16}$/);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('write and read W3C traceparent headers; refuse what is not one', () => {
    const sc = attemptSpanContext(runTraceId('u'), 'write', 3);
    const header = traceparentOf(sc);
    expect(header).toBe(`00-${sc.traceId}-${sc.spanId}-01`);
    expect(parseTraceparent(header)).toMatchObject({ traceId: sc.traceId, spanId: sc.spanId, traceFlags: 1 });
    for (const bad of ['', 'nonsense', `00-${'0'.repeat(32)}-${sc.spanId}-01`, '00-abc-def-01', undefined]) {
      expect(parseTraceparent(bad)).toBeUndefined();
    }
  });
});

describe('tracingConfigured', () => {
  it.each<[Record<string, string>, boolean]>([
    [{}, false],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' }, true],
    [{ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://c:4318/v1/traces' }, true],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_TRACES_EXPORTER: 'none' }, false],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_TRACES_EXPORTER: 'otlp' }, true],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_SDK_DISABLED: 'true' }, false],
  ])('%j -> %s', (env, on) => {
    expect(tracingConfigured(env)).toBe(on);
  });
});
