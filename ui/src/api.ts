// What the UI reads, all from its own origin: `agentflow ui`'s local proxy (or
// `kubectl proxy`) forwards to the Kubernetes API server with the user's
// credentials. Workflows and AgentPools come from the Kubernetes API (list,
// then watch), per-task data and logs from the data API (src/api/data-api.ts).

import type { AgentPool } from '../../src/api/agentpool.ts';
import type { AgentList, WorkflowTaskList } from '../../src/api/data-api.ts';
import { dataPath, UI_WRITE_HEADER, UI_WRITE_VALUE } from '../../src/api/data-api.ts';
import type { Workflow } from '../../src/api/workflow.ts';

export { workflowTasks } from '../../src/api/workflow.ts';

import type { UiConfig } from '../../src/cli/ui-proxy.ts';

export type { AgentList, AgentView, AttemptView, TaskView, WorkflowTaskList } from '../../src/api/data-api.ts';
export type { AgentPool, Workflow };

/** The proxy's own /config.json (src/cli/ui-proxy.ts UI_CONFIG_PATH; ui/build.ts defines it). */
declare const UI_CONFIG_PATH: string;

const GROUP_PATH = '/apis/agentflow.io/v1alpha1';
export const workflowsPath = (ns: string) => `${GROUP_PATH}/namespaces/${encodeURIComponent(ns)}/workflows`;
export const poolsPath = (ns: string) => `${GROUP_PATH}/namespaces/${encodeURIComponent(ns)}/agentpools`;

/** A request that failed: the HTTP status and the Status message the server sent. */
export class ApiError extends Error {
  readonly status: number;
  readonly reason: string;
  readonly path: string;
  constructor(status: number, reason: string, message: string, path: string) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.reason = reason;
    this.path = path;
  }
}

async function errorOf(res: Response, path: string): Promise<ApiError> {
  const text = await res.text().catch(() => '');
  let reason = res.statusText;
  let message = text.trim() || `${res.status} ${res.statusText}`;
  try {
    const st = JSON.parse(text) as { reason?: string; message?: string };
    if (st.reason) reason = st.reason;
    if (st.message) message = st.message;
  } catch {}
  return new ApiError(res.status, reason, message, path);
}

async function send(path: string, signal?: AbortSignal, accept = 'application/json'): Promise<Response> {
  let res: Response;
  try {
    res = await fetch(path, { headers: { Accept: accept }, credentials: 'same-origin', ...(signal && { signal }) });
  } catch (err) {
    if ((err as Error).name === 'AbortError') throw err;
    throw new ApiError(
      0,
      'Unreachable',
      `the UI proxy does not answer (${(err as Error).message}): is \`agentflow ui\` still running?`,
      path,
    );
  }
  if (!res.ok) throw await errorOf(res, path);
  return res;
}

export async function getJson<T>(path: string, signal?: AbortSignal): Promise<T> {
  return (await send(path, signal)).json() as Promise<T>;
}

/** Reads a text body as it arrives (a followed log), chunk by chunk. */
export async function streamText(path: string, onText: (text: string) => void, signal: AbortSignal): Promise<void> {
  const res = await send(path, signal, 'text/plain');
  if (!res.body) {
    onText(await res.text());
    return;
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    if (value) onText(value);
  }
}

export interface KList<T> {
  metadata: { resourceVersion?: string };
  items: T[];
}

export interface KObject {
  metadata?: { name?: string; namespace?: string; resourceVersion?: string; creationTimestamp?: string };
}

export interface WatchEvent<T> {
  type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';
  object: T;
}

/** The API server ended the watch because its resourceVersion is too old: list again. */
class WatchExpired extends Error {}

/**
 * Lists `path` then watches it (newline-delimited JSON events), handing the
 * current set of objects to `onItems` after the list and after every event;
 * reconnects after the server closes the watch, lists again when the version
 * has expired. Stops when the signal aborts; `onError` gets each failure
 * (the loop retries after a pause, so the page recovers when access returns).
 */
export async function listWatch<T extends KObject>(
  path: string,
  query: Record<string, string>,
  onItems: (items: Map<string, T>) => void,
  onError: (err: ApiError | undefined) => void,
  signal: AbortSignal,
): Promise<void> {
  const qs = (extra: Record<string, string>) => `?${new URLSearchParams({ ...query, ...extra })}`;
  while (!signal.aborted) {
    try {
      const list = await getJson<KList<T>>(`${path}${qs({})}`, signal);
      const items = new Map(list.items.map((o) => [o.metadata?.name ?? '', o]));
      let rv = list.metadata.resourceVersion ?? '';
      onError(undefined);
      onItems(new Map(items));
      for (;;) {
        const res = await send(
          `${path}${qs({ watch: 'true', resourceVersion: rv, allowWatchBookmarks: 'true', timeoutSeconds: '300' })}`,
          signal,
        );
        if (!res.body) break;
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let changed = false;
          for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
            const line = buf.slice(0, nl).trim();
            buf = buf.slice(nl + 1);
            if (!line) continue;
            const ev = JSON.parse(line) as WatchEvent<T & { code?: number; message?: string }>;
            if (ev.type === 'ERROR') {
              if (ev.object.code === 410) throw new WatchExpired();
              throw new ApiError(ev.object.code ?? 500, 'WatchError', ev.object.message ?? 'watch failed', path);
            }
            rv = ev.object.metadata?.resourceVersion ?? rv;
            if (ev.type === 'BOOKMARK') continue;
            const name = ev.object.metadata?.name ?? '';
            if (ev.type === 'DELETED') items.delete(name);
            else items.set(name, ev.object);
            changed = true;
          }
          if (changed) onItems(new Map(items));
        }
      }
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof WatchExpired) continue;
      onError(err instanceof ApiError ? err : new ApiError(0, 'Error', (err as Error).message, path));
      await sleep(2000, signal);
    }
  }
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener(
      'abort',
      () => {
        clearTimeout(t);
        resolve();
      },
      { once: true },
    );
  });
}

export const tasksOf = (ns: string, wf: string, signal?: AbortSignal) =>
  getJson<WorkflowTaskList>(dataPath(ns, 'tasks', wf), signal);
export const taskOf = (ns: string, wf: string, task: string, signal?: AbortSignal) =>
  getJson<WorkflowTaskList>(`${dataPath(ns, 'tasks', wf)}?${new URLSearchParams({ task })}`, signal);
export const logPath = (
  ns: string,
  wf: string,
  task: string,
  o: { attempt?: number; follow?: boolean; stream?: boolean },
) =>
  `${dataPath(ns, 'logs', wf)}?${new URLSearchParams({
    task,
    ...(o.attempt !== undefined && { attempt: String(o.attempt) }),
    ...(o.follow && { follow: 'true' }),
    ...(o.stream && { stream: 'true' }),
  })}`;
export const agentsOf = (ns: string, pool: string, signal?: AbortSignal) =>
  getJson<AgentList>(dataPath(ns, 'agents', pool), signal);

/** What the proxy tells the page (nothing behind `kubectl proxy`). */
export async function loadConfig(): Promise<Partial<UiConfig>> {
  try {
    const res = await fetch(UI_CONFIG_PATH, { credentials: 'same-origin' });
    if (!res.ok) return {};
    return (await res.json()) as Partial<UiConfig>;
  } catch {
    return {};
  }
}

/** A failed request in words a user can act on. */
export function explain(err: ApiError, what: { verb: string; resource: string; namespace: string }): string {
  switch (err.status) {
    case 401:
      return 'Your session has ended: open the address that `agentflow ui` printed again.';
    case 403:
      return `You cannot ${what.verb} ${what.resource} in namespace ${what.namespace}.`;
    case 404:
      return `Not found: ${err.message}`;
    case 503:
      return `Not available: ${err.message}`;
    case 0:
      return err.message;
    default:
      return `Request failed (${err.status} ${err.reason}): ${err.message}`;
  }
}

/** Decides an approval task (the proxy forwards this one POST; RBAC decides whether it is allowed). */
export async function decide(
  ns: string,
  workflow: string,
  body: { task: string; decision: 'Approve' | 'Reject'; message?: string },
): Promise<void> {
  const path = dataPath(ns, 'approval', workflow);
  let res: Response;
  try {
    res = await fetch(path, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { Accept: 'application/json', 'Content-Type': 'application/json', [UI_WRITE_HEADER]: UI_WRITE_VALUE },
      body: JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, 'Unreachable', `the UI proxy does not answer (${(err as Error).message})`, path);
  }
  if (!res.ok) throw await errorOf(res, path);
}
