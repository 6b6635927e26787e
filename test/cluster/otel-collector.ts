// A real OpenTelemetry Collector (test/cluster/otelcol: the OTLP receiver and the file exporter,
// built by scripts/setup.sh into <cache>/bin/otelcol-<version>-<hash>/) on free loopback ports.
// Every span it receives, over OTLP/HTTP or OTLP/gRPC, lands in <dir>/spans.jsonl as one
// ExportTraceServiceRequest in OTLP JSON per line; spans() reads them back as a flat list.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { binaryPath } from './binaries.ts';
import { ManagedProcess, waitFor } from './managed-process.ts';
import { canConnect, freePort } from './ports.ts';

export type AttributeValue = string | number | boolean;

export interface CollectedSpan {
  /** Lower-case hex, 32 digits. */
  traceId: string;
  /** Lower-case hex, 16 digits. */
  spanId: string;
  /** Lower-case hex, '' for a root span. */
  parentSpanId: string;
  name: string;
  /** Nanoseconds since the epoch, as a decimal string (they do not fit a double). */
  startTimeUnixNano: string;
  endTimeUnixNano: string;
  /** Ints and doubles are numbers; arrays, maps and bytes become their JSON or base64 text. */
  attributes: Record<string, AttributeValue>;
  events: { name: string; attributes: Record<string, AttributeValue> }[];
  /** The resource's service.name ('' when it has none). */
  serviceName: string;
  /** All the resource's attributes (service.name among them). */
  resource: Record<string, AttributeValue>;
  /** 0 unset, 1 ok, 2 error; message '' when none. */
  status: { code: number; message: string };
  /** 0 unspecified, 1 internal, 2 server, 3 client, 4 producer, 5 consumer. */
  kind: number;
}

export interface Collector {
  /** OTLP/HTTP base URL, `http://127.0.0.1:<port>`: traces go to `${httpEndpoint}/v1/traces`. */
  httpEndpoint: string;
  /** OTLP/gRPC address, `127.0.0.1:<port>` (plaintext). */
  grpcEndpoint: string;
  /** The spans written so far (the exporter flushes every 100 ms). */
  spans(): CollectedSpan[];
  /** Polls spans() until `pred` holds and returns them; throws after `timeoutMs` with what it saw. */
  waitForSpans(pred: (s: CollectedSpan[]) => boolean, timeoutMs: number): Promise<CollectedSpan[]>;
  /** SIGTERM (the exporter flushes what it holds), SIGKILL after 5 s. */
  stop(): Promise<void>;
}

/** Starts a collector whose config, log (otelcol.log) and spans.jsonl live in `dir`. */
export async function startCollector(dir: string): Promise<Collector> {
  mkdirSync(dir, { recursive: true });
  const command = binaryPath('otelcol');
  const grpcPort = await freePort();
  const httpPort = await freePort();
  const spansFile = join(dir, 'spans.jsonl');
  const configFile = join(dir, 'otelcol.yaml');
  // JSON strings are YAML strings; `$$` keeps confmap from expanding a `$` in the path.
  const q = (s: string) => JSON.stringify(s.replaceAll('$', () => '$$'));
  writeFileSync(
    configFile,
    [
      'receivers:',
      '  otlp:',
      '    protocols:',
      '      grpc:',
      `        endpoint: ${q(`127.0.0.1:${grpcPort}`)}`,
      '      http:',
      `        endpoint: ${q(`127.0.0.1:${httpPort}`)}`,
      'exporters:',
      '  file:',
      `    path: ${q(spansFile)}`,
      '    format: json',
      '    flush_interval: 100ms',
      'service:',
      '  telemetry:',
      // Its own metrics would serve on localhost:8888, which parallel collectors would fight over.
      '    metrics:',
      '      level: none',
      '  pipelines:',
      '    traces:',
      '      receivers: [otlp]',
      '      exporters: [file]',
      '',
    ].join('\n'),
  );
  const proc = new ManagedProcess({
    name: 'otelcol',
    command,
    args: [`--config=${configFile}`],
    logFile: join(dir, 'otelcol.log'),
  });
  proc.start();
  try {
    await waitFor(
      `otelcol to listen on 127.0.0.1:${grpcPort} (gRPC) and 127.0.0.1:${httpPort} (HTTP)`,
      async () => {
        proc.assertAlive();
        return (await canConnect(grpcPort)) && (await canConnect(httpPort));
      },
      30_000,
    );
  } catch (err) {
    await proc.stop(2_000);
    const message = (err as Error).message;
    throw new Error(message.includes('last log lines') ? message : `${message}; last log lines:\n${proc.logTail()}`);
  }

  const spans = () => readSpans(spansFile);
  return {
    httpEndpoint: `http://127.0.0.1:${httpPort}`,
    grpcEndpoint: `127.0.0.1:${grpcPort}`,
    spans,
    async waitForSpans(pred, timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const got = spans();
        if (pred(got)) return got;
        if (Date.now() > deadline) {
          throw new Error(
            `timed out after ${timeoutMs} ms waiting for spans; have ${got.length}: ${got.map((s) => s.name).join(', ')}`,
          );
        }
        proc.assertAlive();
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    stop: () => proc.stop(5_000),
  };
}

/** Parses the complete lines of a file exporter's OTLP JSON output (a flush may end mid-line). */
export function readSpans(file: string): CollectedSpan[] {
  if (!existsSync(file)) return [];
  const text = readFileSync(file, 'utf8');
  const out: CollectedSpan[] = [];
  for (const line of text.slice(0, text.lastIndexOf('\n') + 1).split('\n')) {
    if (line.trim() === '') continue;
    const req = JSON.parse(line) as OtlpTraces;
    for (const rs of req.resourceSpans ?? []) {
      const resource = attributes(rs.resource?.attributes);
      const serviceName = String(resource['service.name'] ?? '');
      for (const ss of rs.scopeSpans ?? []) {
        for (const s of ss.spans ?? []) {
          out.push({
            traceId: hexId(s.traceId),
            spanId: hexId(s.spanId),
            parentSpanId: hexId(s.parentSpanId),
            name: s.name ?? '',
            startTimeUnixNano: String(s.startTimeUnixNano ?? '0'),
            endTimeUnixNano: String(s.endTimeUnixNano ?? '0'),
            attributes: attributes(s.attributes),
            events: (s.events ?? []).map((e) => ({ name: e.name ?? '', attributes: attributes(e.attributes) })),
            serviceName,
            resource,
            status: { code: Number(s.status?.code ?? 0), message: s.status?.message ?? '' },
            kind: Number(s.kind ?? 0),
          });
        }
      }
    }
  }
  return out;
}

// The parts of OTLP JSON (opentelemetry-proto's JSON mapping, as pdata writes it) read here.
interface OtlpAnyValue {
  stringValue?: string;
  boolValue?: boolean;
  intValue?: string | number;
  doubleValue?: number | string;
  bytesValue?: string;
  arrayValue?: { values?: OtlpAnyValue[] };
  kvlistValue?: { values?: OtlpKeyValue[] };
}
interface OtlpKeyValue {
  key: string;
  value?: OtlpAnyValue;
}
interface OtlpTraces {
  resourceSpans?: {
    resource?: { attributes?: OtlpKeyValue[] };
    scopeSpans?: {
      spans?: {
        traceId?: string;
        spanId?: string;
        parentSpanId?: string;
        name?: string;
        startTimeUnixNano?: string | number;
        endTimeUnixNano?: string | number;
        attributes?: OtlpKeyValue[];
        events?: { name?: string; attributes?: OtlpKeyValue[] }[];
        status?: { code?: number; message?: string };
        kind?: number;
      }[];
    }[];
  }[];
}

// OTLP JSON writes trace and span ids as hex (not base64 as proto3 JSON would bytes).
function hexId(id: string | undefined): string {
  return (id ?? '').toLowerCase();
}

function attributes(kvs: OtlpKeyValue[] | undefined): Record<string, AttributeValue> {
  const out: Record<string, AttributeValue> = {};
  for (const kv of kvs ?? []) out[kv.key] = scalar(kv.value);
  return out;
}

function scalar(v: OtlpAnyValue | undefined): AttributeValue {
  const plain = plainValue(v);
  return typeof plain === 'string' || typeof plain === 'number' || typeof plain === 'boolean'
    ? plain
    : JSON.stringify(plain);
}

function plainValue(v: OtlpAnyValue | undefined): unknown {
  if (!v) return '';
  if (v.stringValue !== undefined) return v.stringValue;
  if (v.boolValue !== undefined) return v.boolValue;
  if (v.intValue !== undefined) return Number(v.intValue);
  if (v.doubleValue !== undefined) return Number(v.doubleValue);
  if (v.bytesValue !== undefined) return v.bytesValue;
  if (v.arrayValue) return (v.arrayValue.values ?? []).map(plainValue);
  if (v.kvlistValue) {
    return Object.fromEntries((v.kvlistValue.values ?? []).map((kv) => [kv.key, plainValue(kv.value)]));
  }
  return '';
}
