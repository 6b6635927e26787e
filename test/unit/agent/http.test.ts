import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { trace } from '@opentelemetry/api';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_HTTP_TIMEOUT_SECONDS, httpHandler } from '../../../src/agent/builtin/http.ts';
import { validateSpec } from '../../../src/agent/builtin/index.ts';
import { AgentConfigError, RetryableError, UnrecoverableError } from '../../../src/agent/errors.ts';
import { MAX_PAYLOAD_BYTES } from '../../../src/lib/proto.ts';
import { attemptSpanContext, runTraceId } from '../../../src/lib/tracing.ts';
import { stubContext } from './task-context-stub.ts';

interface Received {
  method: string | undefined;
  url: string | undefined;
  headers: IncomingMessage['headers'];
  body: string;
}

type Respond = (req: IncomingMessage, res: ServerResponse, body: string) => void;

let server: Server;
let base: string;
/** What the server does with the next request; each test sets it. */
let respond: Respond;
/** Requests the server has read, in order. */
let received: Received[] = [];
/** Resolves when the server has read the current request; re-armed per test. */
let arrived = signal();

function signal(): { promise: Promise<void>; resolve: () => void } {
  let resolve = () => {};
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

beforeAll(async () => {
  server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      received.push({ method: req.method, url: req.url, headers: req.headers, body });
      arrived.resolve();
      respond(req, res, body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

afterEach(() => {
  received = [];
  arrived = signal();
});

const reply =
  (status: number, body = '', headers: Record<string, string> = { 'content-type': 'application/json' }): Respond =>
  (_req, res) => {
    res.writeHead(status, headers);
    res.end(body);
  };

/** The error a handler call rejects with (fails the test if it resolves). */
async function rejection(p: unknown): Promise<unknown> {
  return Promise.resolve(p).then(
    (v) => {
      throw new Error(`expected a rejection, resolved with ${JSON.stringify(v)}`);
    },
    (e: unknown) => e,
  );
}

describe('http handler', () => {
  it('POSTs the task as JSON with the custom headers and returns the JSON answer', async () => {
    respond = reply(200, JSON.stringify({ ok: true, items: [1, 2] }));
    const run = httpHandler({
      kind: 'http',
      url: `${base}/hooks/fetch?x=1`,
      headers: { authorization: 'Bearer s3cret', 'x-team': 'a' },
    });
    const out = await run(stubContext({ a: [1, 2], b: 'two' }));
    expect(out).toEqual({ ok: true, items: [1, 2] });
    expect(received).toHaveLength(1);
    const [req] = received;
    expect(req?.method).toBe('POST');
    expect(req?.url).toBe('/hooks/fetch?x=1');
    expect(req?.headers['content-type']).toBe('application/json');
    expect(req?.headers.accept).toBe('application/json');
    expect(req?.headers.authorization).toBe('Bearer s3cret');
    expect(req?.headers['x-team']).toBe('a');
    expect(JSON.parse(req?.body ?? '')).toEqual({
      taskId: 'wf-1/fetch',
      workflow: 'wf-1',
      namespace: 'team-a',
      attempt: 3,
      input: { a: [1, 2], b: 'two' },
    });
  });

  it("sends the attempt's trace context as the traceparent header, and none for an untraced attempt", async () => {
    respond = reply(200, '{}');
    const run = httpHandler({ kind: 'http', url: `${base}/t` });
    const sc = attemptSpanContext(runTraceId('uid-1'), 'fetch', 3);
    await run(stubContext(null, undefined, undefined, trace.wrapSpanContext(sc)));
    expect(received[0]?.headers.traceparent).toBe(`00-${sc.traceId}-${sc.spanId}-01`);
    await run(stubContext(null));
    expect(received[1]?.headers.traceparent).toBeUndefined();
  });

  it('lets a custom header replace a default one whatever its case', async () => {
    respond = reply(200, 'null');
    await httpHandler({
      kind: 'http',
      url: base,
      headers: { 'Content-Type': 'application/cloudevents+json', ACCEPT: '*/*' },
    })(stubContext({}));
    expect(received[0]?.headers['content-type']).toBe('application/cloudevents+json');
    expect(received[0]?.headers.accept).toBe('*/*');
  });

  it('sends a null input when the task has none', async () => {
    respond = reply(200, '"fine"');
    expect(await httpHandler({ kind: 'http', url: base })(stubContext(undefined))).toBe('fine');
    expect(JSON.parse(received[0]?.body ?? '')).toMatchObject({ input: null });
  });

  it.each([200, 201])('treats an empty %i answer as a null output', async (status) => {
    respond = reply(status, '');
    expect(await httpHandler({ kind: 'http', url: base })(stubContext({}))).toBeNull();
  });

  it('treats a 204 as a null output', async () => {
    respond = reply(204);
    expect(await httpHandler({ kind: 'http', url: base })(stubContext({}))).toBeNull();
  });

  it('fails for good with BAD_OUTPUT when a 2xx body is not JSON', async () => {
    respond = reply(200, 'all done!', { 'content-type': 'text/plain' });
    const err = await rejection(httpHandler({ kind: 'http', url: base })(stubContext({})));
    expect(err).toBeInstanceOf(UnrecoverableError);
    expect(err).toMatchObject({ name: 'UnrecoverableError', code: 'BAD_OUTPUT' });
    expect((err as Error).message).toMatch(/^POST http:\/\/127\.0\.0\.1:\d+ answered 200 with a body that is not JSON/);
    expect((err as Error).message).toMatch(/: all done!$/);
  });

  it('fails for good on a 404, with the code HTTP_404 and the body in the message', async () => {
    respond = reply(404, 'no route for /missing\n', { 'content-type': 'text/plain' });
    const url = `${base}/missing`;
    const err = await rejection(httpHandler({ kind: 'http', url })(stubContext({})));
    expect(err).toBeInstanceOf(UnrecoverableError);
    expect(err).toMatchObject({ code: 'HTTP_404', message: `POST ${url} answered 404: no route for /missing` });
  });

  it('cuts a long error body to an excerpt', async () => {
    respond = reply(400, `${'e'.repeat(600)}TAIL`);
    const err = await rejection(httpHandler({ kind: 'http', url: base })(stubContext({})));
    expect(err).toMatchObject({ code: 'HTTP_400' });
    expect((err as Error).message).toBe(`POST ${base} answered 400: ${'e'.repeat(500)}...`);
  });

  it('leaves the body out of the message when the error answer has none', async () => {
    respond = reply(403);
    const err = await rejection(httpHandler({ kind: 'http', url: base })(stubContext({})));
    expect(err).toMatchObject({ code: 'HTTP_403', message: `POST ${base} answered 403` });
  });

  it.each([
    [400, false],
    [401, false],
    [404, false],
    [422, false],
    [408, true],
    [429, true],
    [500, true],
    [502, true],
    [503, true],
  ])('status %i is retryable: %s', async (status, retryable) => {
    respond = reply(status, '{"error":"nope"}');
    const err = await rejection(httpHandler({ kind: 'http', url: base })(stubContext({})));
    expect(err).toBeInstanceOf(retryable ? RetryableError : UnrecoverableError);
    expect(err).toMatchObject({ code: `HTTP_${status}` });
    expect((err as Error).message).toBe(`POST ${base} answered ${status}: {"error":"nope"}`);
  });

  it('retries when the connection is refused', async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((resolve) => closed.close(resolve));
    const url = `http://127.0.0.1:${port}/`;
    const err = await rejection(httpHandler({ kind: 'http', url })(stubContext({})));
    expect(err).toBeInstanceOf(RetryableError);
    expect(err).toMatchObject({ code: 'HTTP_NETWORK' });
    expect((err as Error).message).toContain(`POST ${url} failed: `);
    expect((err as Error).message).toContain('ECONNREFUSED');
    expect((err as Error).cause).toBeInstanceOf(Error);
  });

  it('retries with HTTP_TIMEOUT when the server does not answer within timeoutSeconds', async () => {
    respond = () => undefined; // never answers
    const started = performance.now();
    const err = await rejection(httpHandler({ kind: 'http', url: base, timeoutSeconds: 0.2 })(stubContext({})));
    const elapsed = performance.now() - started;
    expect(err).toBeInstanceOf(RetryableError);
    expect(err).toMatchObject({ code: 'HTTP_TIMEOUT', message: `POST ${base} timed out after 0.2 s` });
    expect(received).toHaveLength(1);
    expect(elapsed).toBeGreaterThanOrEqual(150);
    expect(elapsed).toBeLessThan(5_000);
  });

  it('times out while the body is still streaming', async () => {
    respond = (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"partial":'); // and never ends
    };
    const err = await rejection(httpHandler({ kind: 'http', url: base, timeoutSeconds: 0.2 })(stubContext({})));
    expect(err).toBeInstanceOf(RetryableError);
    expect(err).toMatchObject({ code: 'HTTP_TIMEOUT' });
  });

  it("rejects with the signal's reason when the task is aborted mid-request", async () => {
    respond = () => undefined; // never answers
    const ac = new AbortController();
    const p = httpHandler({ kind: 'http', url: base, timeoutSeconds: 30 })(stubContext({}, ac.signal));
    await arrived.promise;
    const reason = new Error('task cancelled');
    ac.abort(reason);
    await expect(p).rejects.toBe(reason);
  });

  it('does not send anything when the signal is already aborted', async () => {
    respond = reply(200, '1');
    const ac = new AbortController();
    const reason = new Error('too late');
    ac.abort(reason);
    await expect(httpHandler({ kind: 'http', url: base })(stubContext({}, ac.signal))).rejects.toBe(reason);
    expect(received).toHaveLength(0);
  });

  it('accepts an answer of exactly MAX_PAYLOAD_BYTES', async () => {
    const big = 'a'.repeat(MAX_PAYLOAD_BYTES - 2);
    respond = reply(200, JSON.stringify(big));
    expect(await httpHandler({ kind: 'http', url: base })(stubContext({}))).toBe(big);
  });

  it('fails for good with OUTPUT_TOO_LARGE when the answer is over MAX_PAYLOAD_BYTES', async () => {
    respond = reply(200, JSON.stringify('a'.repeat(MAX_PAYLOAD_BYTES - 1)));
    const err = await rejection(httpHandler({ kind: 'http', url: base })(stubContext({})));
    expect(err).toBeInstanceOf(UnrecoverableError);
    expect(err).toMatchObject({
      code: 'OUTPUT_TOO_LARGE',
      message: `POST ${base} answered with over ${MAX_PAYLOAD_BYTES} bytes; that is the output limit`,
    });
  });

  /** Answers `status` with a body that never ends, until the client hangs up. */
  const endless =
    (status: number): Respond =>
    (_req, res) => {
      const chunk = Buffer.alloc(64 * 1024, 'x');
      res.writeHead(status, { 'content-type': 'application/json' });
      const pump = () => {
        while (!res.destroyed && res.write(chunk));
        if (!res.destroyed) res.once('drain', pump);
      };
      pump();
    };

  it('stops reading an oversized answer that would never end', async () => {
    respond = endless(200);
    const err = await rejection(httpHandler({ kind: 'http', url: base, timeoutSeconds: 10 })(stubContext({})));
    expect(err).toMatchObject({ code: 'OUTPUT_TOO_LARGE' });
  });

  it('reads only an excerpt of an error answer that would never end', async () => {
    respond = endless(503);
    const err = await rejection(httpHandler({ kind: 'http', url: base, timeoutSeconds: 10 })(stubContext({})));
    expect(err).toBeInstanceOf(RetryableError);
    expect(err).toMatchObject({ code: 'HTTP_503', message: `POST ${base} answered 503: ${'x'.repeat(500)}...` });
  });
});

/** A second server on 127.0.0.1 that counts what reaches it: where a redirect points. */
async function elsewhere(): Promise<{ url: string; hits: () => number; close: () => Promise<void> }> {
  let hits = 0;
  const other = createServer((_req, res) => {
    hits++;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('"followed"');
  });
  await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(other.address() as AddressInfo).port}/elsewhere`,
    hits: () => hits,
    close: async () => {
      other.closeAllConnections();
      await new Promise((resolve) => other.close(resolve));
    },
  };
}

describe('http handler redirects', () => {
  it.each([
    301, 302, 303, 307, 308,
  ])('does not follow a %i: the target gets nothing and the task fails for good naming the status and Location', async (status) => {
    const other = await elsewhere();
    try {
      respond = reply(status, 'moved', { location: other.url });
      const err = await rejection(httpHandler({ kind: 'http', url: base })(stubContext({ secret: 'input' })));
      expect(err).toBeInstanceOf(UnrecoverableError);
      expect(err).toMatchObject({
        code: `HTTP_${status}`,
        message:
          `POST ${base} answered ${status}, a redirect to ${other.url}; the http handler follows no redirects, ` +
          'so set url to the final address (not retried)',
      });
      expect(other.hits()).toBe(0);
      expect(received).toHaveLength(1);
    } finally {
      await other.close();
    }
  });

  it('names a relative Location as the absolute URL it points to', async () => {
    respond = reply(302, '', { location: '/v2/run' });
    const err = await rejection(httpHandler({ kind: 'http', url: `${base}/v1/run` })(stubContext({})));
    expect((err as Error).message).toContain(`answered 302, a redirect to ${base}/v2/run;`);
  });

  it('says so when a 3xx has no Location', async () => {
    respond = reply(300, '');
    const err = await rejection(httpHandler({ kind: 'http', url: base })(stubContext({})));
    expect(err).toMatchObject({ code: 'HTTP_300' });
    expect((err as Error).message).toContain('answered 300, a redirect without a Location;');
  });
});

describe('http handler timeout default', () => {
  it('is 30 s', () => {
    expect(DEFAULT_HTTP_TIMEOUT_SECONDS).toBe(30);
  });

  it('applies when the spec sets no timeoutSeconds, and the error says it was the default', async () => {
    respond = () => undefined; // never answers
    const err = await rejection(
      httpHandler({ kind: 'http', url: base }, { defaultTimeoutSeconds: 0.2 })(stubContext({})),
    );
    expect(err).toBeInstanceOf(RetryableError);
    expect(err).toMatchObject({
      code: 'HTTP_TIMEOUT',
      message: `POST ${base} timed out after 0.2 s (the default; set timeoutSeconds to allow more)`,
    });
  });

  it("gives way to the spec's timeoutSeconds", async () => {
    respond = (req, res, body) => {
      setTimeout(() => reply(200, '"late but fine"')(req, res, body), 300);
    };
    const run = httpHandler({ kind: 'http', url: base, timeoutSeconds: 30 }, { defaultTimeoutSeconds: 0.05 });
    expect(await run(stubContext({}))).toBe('late but fine');
  });
});

describe('http handler body limit', () => {
  it('refuses a 2xx whose Content-Length is over the output limit without reading the body', async () => {
    const declared = MAX_PAYLOAD_BYTES + 1;
    respond = (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(declared) });
      res.write('"a'); // and nothing more: only a handler that does not wait for the body can answer
    };
    const err = await rejection(
      httpHandler({ kind: 'http', url: base }, { defaultTimeoutSeconds: 20 })(stubContext({})),
    );
    expect(err).toBeInstanceOf(UnrecoverableError);
    expect(err).toMatchObject({
      code: 'OUTPUT_TOO_LARGE',
      message: `POST ${base} answered with ${declared} bytes (Content-Length); the output limit is ${MAX_PAYLOAD_BYTES}`,
    });
  });
});

describe('http handler spec', () => {
  const problem = (url: string): unknown => {
    try {
      validateSpec('handlers.fetch', { kind: 'http', url });
    } catch (err) {
      return err;
    }
    return undefined;
  };

  it.each(['ftp://files.test/x', 'file:///etc/passwd', 'data:,{}', 'not a url'])('refuses the url %s', (url) => {
    expect(problem(url)).toMatchObject({
      field: 'handlers.fetch.url',
      problem: `must be an http(s) URL, got "${url}"`,
    });
  });

  it('refuses a url with credentials in it, pointing to headers', () => {
    const err = problem('https://bot:hunter2@svc.test/run');
    expect(err).toBeInstanceOf(AgentConfigError);
    expect(err).toMatchObject({
      field: 'handlers.fetch.url',
      problem: 'must not carry credentials (user:password@); send them in headers, e.g. authorization',
    });
  });
});
