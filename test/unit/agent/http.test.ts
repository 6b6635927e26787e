import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { httpHandler } from '../../../src/agent/builtin/http.ts';
import { RetryableError, UnrecoverableError } from '../../../src/agent/errors.ts';
import { MAX_PAYLOAD_BYTES } from '../../../src/lib/proto.ts';
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
