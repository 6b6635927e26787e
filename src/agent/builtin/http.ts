import { MAX_PAYLOAD_BYTES } from '../../lib/proto.ts';
import { traceparentOfSpan } from '../../lib/trace-context.ts';
import { RetryableError, UnrecoverableError } from '../errors.ts';
import type { Handler, HttpHandlerSpec, TaskContext } from '../types.ts';

const EXCERPT_CHARS = 500;

/** Without one, a service that takes the request and never answers holds the slot until the task's deadline, if any. */
export const DEFAULT_HTTP_TIMEOUT_SECONDS = 30;

export interface HttpRunOptions {
  /** The timeout when the spec sets no timeoutSeconds (default DEFAULT_HTTP_TIMEOUT_SECONDS). */
  defaultTimeoutSeconds?: number;
}

/**
 * The `http` built-in: POSTs {taskId, workflow, namespace, attempt, input} as
 * JSON; a 2xx JSON body is the output (empty = null). 4xx is the request's
 * fault and final, except 408 and 429 which say "try again later"; 5xx,
 * network errors and timeouts are retried. Redirects are not followed: the
 * target is a service the pool's author chose, and a 3xx means the URL is
 * wrong (or the service is sending the task, with its headers, elsewhere).
 */
export function httpHandler(spec: HttpHandlerSpec, opts: HttpRunOptions = {}): Handler {
  const timeoutSeconds = spec.timeoutSeconds ?? opts.defaultTimeoutSeconds ?? DEFAULT_HTTP_TIMEOUT_SECONDS;
  const timeoutText =
    spec.timeoutSeconds === undefined
      ? `${timeoutSeconds} s (the default; set timeoutSeconds to allow more)`
      : `${timeoutSeconds} s`;
  return (ctx) => post(spec, ctx, timeoutSeconds, timeoutText);
}

async function post(
  spec: HttpHandlerSpec,
  ctx: TaskContext,
  timeoutSeconds: number,
  timeoutText: string,
): Promise<unknown> {
  ctx.signal.throwIfAborted();
  const timeout = AbortSignal.timeout(timeoutSeconds * 1000);
  const signal = AbortSignal.any([ctx.signal, timeout]);
  const body = JSON.stringify({
    taskId: ctx.taskId,
    workflow: ctx.workflow,
    namespace: ctx.namespace,
    attempt: ctx.attempt,
    input: ctx.input ?? null,
  });
  let status: number;
  let refusal: UnrecoverableError | undefined;
  let text = '';
  let tooLarge = false;
  try {
    // set(), not an object spread: header names are case-insensitive, so "Content-Type" must replace the default.
    const headers = new Headers({ 'content-type': 'application/json', accept: 'application/json' });
    for (const [name, value] of Object.entries(spec.headers ?? {})) headers.set(name, value);
    // The attempt's trace context (W3C Trace Context): the service's spans join the workflow's trace.
    const traceparent = traceparentOfSpan(ctx.span);
    if (traceparent) headers.set('traceparent', traceparent);
    const res = await fetch(spec.url, { method: 'POST', headers, body, signal, redirect: 'manual' });
    status = res.status;
    refusal = refuse(spec.url, res);
    if (refusal) await res.body?.cancel().catch(() => undefined);
    else ({ text, tooLarge } = await readBounded(res, status < 300 ? MAX_PAYLOAD_BYTES : 4 * EXCERPT_CHARS));
  } catch (err) {
    if (ctx.signal.aborted) throw ctx.signal.reason;
    if (timeout.aborted) {
      throw new RetryableError(`POST ${spec.url} timed out after ${timeoutText}`, { code: 'HTTP_TIMEOUT' });
    }
    const e = err as Error & { cause?: { message?: string } };
    const detail = e.cause?.message ? `${e.message}: ${e.cause.message}` : e.message;
    throw new RetryableError(`POST ${spec.url} failed: ${detail}`, { code: 'HTTP_NETWORK', cause: err });
  }
  if (refusal) throw refusal;
  return outcome(spec.url, status, text, tooLarge);
}

async function readBounded(res: Response, limit: number): Promise<{ text: string; tooLarge: boolean }> {
  if (!res.body) return { text: '', tooLarge: false };
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let bytes = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    bytes += value.byteLength;
    if (bytes > limit) {
      chunks.push(value);
      await reader.cancel().catch(() => undefined);
      return { text: Buffer.concat(chunks).toString('utf8'), tooLarge: true };
    }
    chunks.push(value);
  }
  return { text: Buffer.concat(chunks).toString('utf8'), tooLarge: false };
}

function outcome(url: string, status: number, text: string, tooLarge: boolean): unknown {
  const code = `HTTP_${status}`;
  if (status >= 200 && status < 300) {
    if (tooLarge) {
      throw new UnrecoverableError(
        `POST ${url} answered with over ${MAX_PAYLOAD_BYTES} bytes; that is the output limit`,
        {
          code: 'OUTPUT_TOO_LARGE',
        },
      );
    }
    if (text.trim() === '') return null;
    try {
      return JSON.parse(text);
    } catch (err) {
      throw new UnrecoverableError(
        `POST ${url} answered ${status} with a body that is not JSON (${(err as Error).message}): ${excerpt(text)}`,
        { code: 'BAD_OUTPUT' },
      );
    }
  }
  const message = `POST ${url} answered ${status}${text.trim() ? `: ${excerpt(text)}` : ''}`;
  if (status >= 500 || status === 408 || status === 429) throw new RetryableError(message, { code });
  throw new UnrecoverableError(message, { code });
}

/** Answers refused before their body is read; final, since the same request would get the same answer. */
function refuse(url: string, res: Response): UnrecoverableError | undefined {
  const { status } = res;
  if (status >= 300 && status < 400) {
    const location = res.headers.get('location');
    const to =
      location === null
        ? 'without a Location'
        : `to ${excerpt(URL.canParse(location, url) ? new URL(location, url).href : location)}`;
    return new UnrecoverableError(
      `POST ${url} answered ${status}, a redirect ${to}; the http handler follows no redirects, ` +
        'so set url to the final address (not retried)',
      { code: `HTTP_${status}` },
    );
  }
  const declared = Number(res.headers.get('content-length') ?? Number.NaN);
  if (status < 300 && declared > MAX_PAYLOAD_BYTES) {
    return new UnrecoverableError(
      `POST ${url} answered with ${declared} bytes (Content-Length); the output limit is ${MAX_PAYLOAD_BYTES}`,
      { code: 'OUTPUT_TOO_LARGE' },
    );
  }
  return undefined;
}

function excerpt(text: string): string {
  const t = text.trim();
  return t.length > EXCERPT_CHARS ? `${t.slice(0, EXCERPT_CHARS)}...` : t;
}
