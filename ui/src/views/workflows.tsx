// The workflow list of a namespace, live (list, then watch).
import { useEffect, useState } from 'preact/hooks';
import { type ApiError, listWatch, type Workflow, workflowsPath } from '../api.ts';
import { age } from '../format.ts';
import { ErrorBox, href, Phase, useNow } from './common.tsx';

/** The workflows of `ns` as the API server has them, kept current by a watch; undefined until the first list. */
export function useWorkflows(
  ns: string,
  fieldSelector?: string,
): { items: Map<string, Workflow> | undefined; error: ApiError | undefined } {
  const [items, setItems] = useState<Map<string, Workflow> | undefined>(undefined);
  const [error, setError] = useState<ApiError | undefined>(undefined);
  useEffect(() => {
    setItems(undefined);
    setError(undefined);
    const ac = new AbortController();
    void listWatch<Workflow>(workflowsPath(ns), fieldSelector ? { fieldSelector } : {}, setItems, setError, ac.signal);
    return () => ac.abort();
  }, [ns, fieldSelector]);
  return { items, error };
}

type Counts = NonNullable<NonNullable<Workflow['status']>['progress']>;

/** Succeeded of total as a bar; `counts` (from the task table) is fresher than the Workflow's status. */
export function Progress({ wf, counts }: { wf: Workflow; counts?: Counts | undefined }) {
  const p = counts ?? wf.status?.progress;
  if (!p || p.total === 0) return <span class="muted">–</span>;
  const pct = (n: number) => `${(100 * n) / p.total}%`;
  return (
    <span
      class="progress"
      data-testid="progress"
      title={`${p.succeeded} succeeded, ${p.failed} failed, ${p.running} running, ${p.queued} queued of ${p.total}`}
    >
      <span class="bar">
        <span class="seg phase-Succeeded" style={{ width: pct(p.succeeded) }} />
        <span class="seg phase-Failed" style={{ width: pct(p.failed) }} />
        <span class="seg phase-Running" style={{ width: pct(p.running) }} />
      </span>
      <span class="count">
        {p.succeeded}/{p.total}
      </span>
    </span>
  );
}

export function WorkflowList({ ns }: { ns: string }) {
  const { items, error } = useWorkflows(ns);
  const now = useNow(5000);
  const list = [...(items?.values() ?? [])].sort((a, b) =>
    (b.metadata.creationTimestamp ?? '').localeCompare(a.metadata.creationTimestamp ?? ''),
  );
  return (
    <section class="page">
      <h1>
        Workflows <span class="muted">in {ns}</span>
      </h1>
      {error && <ErrorBox error={error} what={{ verb: 'read', resource: 'workflows', namespace: ns }} />}
      {!items && !error && <p class="muted">Loading…</p>}
      {items && list.length === 0 && (
        <p class="muted" data-testid="empty">
          No workflows in namespace {ns}.
        </p>
      )}
      {items && list.length > 0 && (
        <table class="table" data-testid="workflow-list">
          <thead>
            <tr>
              <th>Name</th>
              <th>Phase</th>
              <th>Progress</th>
              <th>Age</th>
              <th>Message</th>
            </tr>
          </thead>
          <tbody>
            {list.map((wf) => {
              const name = wf.metadata.name ?? '';
              return (
                <tr
                  key={name}
                  data-testid="workflow-row"
                  data-workflow={name}
                  data-phase={wf.status?.phase ?? 'Pending'}
                >
                  <td>
                    <a href={href.workflow(ns, name)} data-testid="workflow-link">
                      {name}
                    </a>
                  </td>
                  <td>
                    <Phase phase={wf.status?.phase} />
                  </td>
                  <td>
                    <Progress wf={wf} />
                  </td>
                  <td>{age(wf.metadata.creationTimestamp, now)}</td>
                  <td class="message">{wf.status?.message ?? ''}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
    </section>
  );
}
