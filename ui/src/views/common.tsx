// Pieces every page uses: phase badges, errors, the clock, links.
import { useEffect, useState } from 'preact/hooks';
import { type ApiError, explain } from '../api.ts';

export function Phase({ phase, testid }: { phase: string | undefined; testid?: string }) {
  const p = phase ?? 'Pending';
  return (
    <span class={`badge phase-${p}`} data-phase={p} data-testid={testid}>
      {p}
    </span>
  );
}

/** A failed request, said so that the user knows what to do; the server's own words below. */
export function ErrorBox({
  error,
  what,
}: {
  error: ApiError;
  what: { verb: string; resource: string; namespace: string };
}) {
  const text = explain(error, what);
  return (
    <div class="error" role="alert" data-testid="error" data-status={String(error.status)}>
      <strong>{text}</strong>
      {error.status !== 0 && error.status !== 404 && error.status !== 503 && (
        <div class="detail">
          {error.status} {error.reason}: {error.message}
        </div>
      )}
    </div>
  );
}

/** Re-renders every `ms` (ages and running durations). */
export function useNow(ms: number): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(t);
  }, [ms]);
  return now;
}

const enc = encodeURIComponent;
export const href = {
  workflows: (ns: string) => `#/ns/${enc(ns)}/workflows`,
  workflow: (ns: string, name: string, task?: string) =>
    `#/ns/${enc(ns)}/workflows/${enc(name)}${task ? `?task=${enc(task)}` : ''}`,
  pools: (ns: string) => `#/ns/${enc(ns)}/pools`,
};

export type Route =
  | { page: 'workflows'; ns: string }
  | { page: 'workflow'; ns: string; name: string; task: string | undefined }
  | { page: 'pools'; ns: string };

export function parseRoute(hash: string, defaultNs: string): Route {
  const [path = '', query = ''] = hash.replace(/^#/, '').split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  const q = new URLSearchParams(query);
  if (parts[0] !== 'ns' || !parts[1]) return { page: 'workflows', ns: defaultNs };
  const ns = parts[1];
  if (parts[2] === 'pools') return { page: 'pools', ns };
  if (parts[2] === 'workflows' && parts[3])
    return { page: 'workflow', ns, name: parts[3], task: q.get('task') ?? undefined };
  return { page: 'workflows', ns };
}
