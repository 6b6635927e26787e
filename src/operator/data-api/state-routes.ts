// Shared state through the data API: what `agentflow state get|put|list|watch`
// reads and writes, the same keys agents use (ctx.state), scoped to a workflow,
// a pool or a namespace. Writes are the leader's, fenced by its leadership like
// every write it makes; the caller's RBAC (update on the Workflow or AgentPool)
// was checked before we get here.

import type { IncomingMessage, ServerResponse } from 'node:http';
import { DATA_API_VERSION, type StateEvent, type StateItem, type StateList } from '../../api/data-api.ts';
import { RESERVED_STATE_PREFIX } from '../../api/signals.ts';
import { ConflictError, type Fence, type SharedState } from '../../state/index.ts';
import { MAX_VALUE_BYTES } from '../../state/values.ts';

export type StateScope =
  | { kind: 'workflow'; namespace: string; workflow: string }
  | { kind: 'pool'; namespace: string; pool: string }
  | { kind: 'namespace'; namespace: string };

/** A refusal the server turns into a Status. */
export class StateRequestError extends Error {
  readonly code: number;
  readonly reason: 'BadRequest' | 'NotFound' | 'Conflict' | 'RequestEntityTooLarge' | 'MethodNotAllowed';
  constructor(code: StateRequestError['code'], reason: StateRequestError['reason'], message: string) {
    super(message);
    this.code = code;
    this.reason = reason;
  }
}

const bad = (m: string) => new StateRequestError(400, 'BadRequest', m);

function revisionParam(q: URLSearchParams, name: string): number | undefined {
  const raw = q.get(name);
  if (raw === null) return undefined;
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < 0)
    throw bad(`query parameter ${name}: must be a whole number ≥ 0, not ${JSON.stringify(raw)}`);
  return n;
}

/** Calls `fn`, turning the state layer's key and value refusals into 400s that name them. */
async function checked<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof RangeError || err instanceof TypeError) throw bad(err.message);
    if (err instanceof ConflictError) throw new StateRequestError(409, 'Conflict', err.message);
    throw err;
  }
}

async function readBody(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > MAX_VALUE_BYTES + 1024) {
      throw new StateRequestError(413, 'RequestEntityTooLarge', `the value is over ${MAX_VALUE_BYTES} bytes of JSON`);
    }
    chunks.push(c as Buffer);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (text.trim() === '') throw bad('body: a JSON value is required (the value to put)');
  try {
    return JSON.parse(text);
  } catch (err) {
    throw bad(`body: not JSON: ${(err as Error).message}`);
  }
}

/** Keys under agentflow: are agentflow's own (signals): `agentflow signal` writes them, not `state put`. */
function reservedRefused(key: string): void {
  if (key.startsWith(RESERVED_STATE_PREFIX)) {
    throw bad(
      `query parameter key: "${key.slice(0, 128)}" is under ${RESERVED_STATE_PREFIX}, which only agentflow writes (send a signal with \`agentflow signal\`)`,
    );
  }
}

const item = (v: { key: string; value: unknown; modRevision: number; version: number }): StateItem => ({
  key: v.key,
  value: v.value,
  modRevision: v.modRevision,
  version: v.version,
});

export function writes(method: string | undefined): boolean {
  return method === 'PUT' || method === 'DELETE';
}

export async function serveState(
  req: IncomingMessage,
  res: ServerResponse,
  scope: StateScope,
  state: SharedState,
  fences: () => Fence[],
  send: (code: number, body: unknown) => void,
  signal: AbortSignal,
): Promise<void> {
  const q = new URL(req.url ?? '/', 'https://data-api').searchParams;
  const key = q.get('key') ?? undefined;
  const metadata = {
    scope: scope.kind,
    namespace: scope.namespace,
    ...(scope.kind === 'workflow' && { name: scope.workflow }),
    ...(scope.kind === 'pool' && { name: scope.pool }),
  };
  switch (req.method) {
    case 'GET': {
      if (q.get('watch') === 'true' || q.get('watch') === '1') {
        const prefix = key ?? q.get('prefix') ?? '';
        const from = revisionParam(q, 'resourceVersion');
        const start = from ?? (await checked(() => state.list(prefix))).revision;
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.flushHeaders();
        const line = (e: StateEvent) => res.write(`${JSON.stringify(e)}\n`);
        const watch = await checked(() =>
          state.watch(
            prefix,
            start + 1,
            (e) => {
              if (key !== undefined && e.key !== key) return;
              line({
                type: e.type === 'put' ? 'PUT' : 'DELETE',
                key: e.key,
                ...(e.type === 'put' && { value: e.json }),
                modRevision: e.modRevision,
              });
            },
            (items) => {
              for (const v of items)
                if (key === undefined || v.key === key)
                  line({ type: 'PUT', key: v.key, value: v.value, modRevision: v.modRevision });
            },
          ),
        );
        await new Promise<void>((resolve) => {
          if (signal.aborted) resolve();
          signal.addEventListener('abort', () => resolve(), { once: true });
        });
        await watch.close();
        res.destroy(); // a watch ends only when cut
        return;
      }
      if (key !== undefined) {
        const v = await checked(() => state.get(key));
        if (!v) throw new StateRequestError(404, 'NotFound', `no state key "${key}" in this ${scope.kind}'s state`);
        return send(200, item(v));
      }
      const { items, revision } = await checked(() => state.list(q.get('prefix') ?? ''));
      const list: StateList = {
        apiVersion: DATA_API_VERSION,
        kind: 'StateList',
        metadata: { ...metadata, revision },
        items: items.map(item),
      };
      return send(200, list);
    }
    case 'PUT': {
      if (key === undefined) throw bad('query parameter key: required (the key to put)');
      reservedRefused(key);
      const expected = revisionParam(q, 'expectedRevision');
      const value = (await readBody(req)) as never;
      const modRevision = await checked(() =>
        expected === undefined
          ? state.put(key, value, { fences: fences() })
          : state.cas(key, value, expected, { fences: fences() }),
      );
      const now = await state.get(key);
      return send(200, item(now ?? { key, value, modRevision, version: 1 }));
    }
    case 'DELETE': {
      if (key === undefined) throw bad('query parameter key: required (the key to delete)');
      reservedRefused(key);
      const expected = revisionParam(q, 'expectedRevision');
      const deleted = await checked(() => state.delete(key, expected, { fences: fences() }));
      if (!deleted) throw new StateRequestError(404, 'NotFound', `no state key "${key}" in this ${scope.kind}'s state`);
      return send(200, { key, deleted: true });
    }
    default:
      throw new StateRequestError(
        405,
        'MethodNotAllowed',
        `method ${req.method} is not served on state (GET, PUT, DELETE)`,
      );
  }
}
