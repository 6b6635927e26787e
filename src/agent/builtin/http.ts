import { MAX_PAYLOAD_BYTES } from '../../lib/proto.ts';
import { RetryableError, UnrecoverableError } from '../errors.ts';
import type { Handler, HttpHandlerSpec, TaskContext } from '../types.ts';

const EXCERPT_CHARS = 500;

/**
 * The `http` built-in: POSTs {taskId, workflow, namespace, attempt, input} as
 * JSON; a 2xx JSON body is the output (empty = null). 4xx is the request's
 * fault and final, except 408 and 429 which say "try again later"; 5xx,
 * network errors and timeouts are retried.
 */
export function httpHandler(spec: HttpHandlerSpec): Handler {
  return (ctx) => post(spec, ctx);
}

async function post(spec: HttpHandlerSpec, ctx: TaskContext): Promise<unknown> {
  ctx.signal.throwIfAborted();
  const timeout = spec.timeoutSeconds !== undefined ? AbortSignal.timeout(spec.timeoutSeconds * 1000) : undefined;
  const signal = timeout ? AbortSignal.any([ctx.signal, timeout]) : ctx.signal;
  const body = JSON.stringify({
    taskId: ctx.taskId,
    workflow: ctx.workflow,
    namespace: ctx.namespace,
    attempt: ctx.attempt,
    input: ctx.input ?? null,
  });
  let status: number;
  let text: string;
  let tooLarge: boolean;
  try {
    // set(), not an object spread: header names are case-insensitive, so "Content-Type" must replace the default.
    const headers = new Headers({ 'content-type': 'application/json', accept: 'application/json' });
    for (const [name, value] of Object.entries(spec.headers ?? {})) headers.set(name, value);
    const res = await fetch(spec.url, { method: 'POST', headers, body, signal });
    status = res.status;
    const ok = status >= 200 && status < 300;
    ({ text, tooLarge } = await readBounded(res, ok ? MAX_PAYLOAD_BYTES : 4 * EXCERPT_CHARS));
  } catch (err) {
    if (ctx.signal.aborted) throw ctx.signal.reason;
    if (timeout?.aborted) {
      throw new RetryableError(`POST ${spec.url} timed out after ${spec.timeoutSeconds} s`, { code: 'HTTP_TIMEOUT' });
    }
    const e = err as Error & { cause?: { message?: string } };
    const detail = e.cause?.message ? `${e.message}: ${e.cause.message}` : e.message;
    throw new RetryableError(`POST ${spec.url} failed: ${detail}`, { code: 'HTTP_NETWORK', cause: err });
  }
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

function excerpt(text: string): string {
  const t = text.trim();
  return t.length > EXCERPT_CHARS ? `${t.slice(0, EXCERPT_CHARS)}...` : t;
}
