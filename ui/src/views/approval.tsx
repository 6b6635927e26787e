// The decision box of an approval task that waits (phase Waiting): what it asks, and Approve /
// Reject with a message. The UI proxy forwards this one POST; the data API checks that the user may
// decide (update on workflows/approval, and the task's approvers), and a refusal is shown as it comes.
import { useState } from 'preact/hooks';
import { ApiError, decide } from '../api.ts';
import { ErrorBox } from './common.tsx';

export function ApprovalBox({
  ns,
  workflow,
  task,
  message,
}: {
  ns: string;
  workflow: string;
  task: string;
  message?: string;
}) {
  const [why, setWhy] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<ApiError | undefined>(undefined);
  const [done, setDone] = useState<string | undefined>(undefined);
  const send = (decision: 'Approve' | 'Reject') => {
    setBusy(true);
    setError(undefined);
    decide(ns, workflow, { task, decision, ...(why.trim() && { message: why.trim() }) }).then(
      () => {
        setDone(decision === 'Approve' ? 'Approved' : 'Rejected');
        setBusy(false);
      },
      (err: Error) => {
        setError(err instanceof ApiError ? err : new ApiError(0, 'Error', err.message, ''));
        setBusy(false);
      },
    );
  };
  return (
    <section class="approval" data-testid="approval">
      <h3>Waiting for approval</h3>
      {message && (
        <p class="message" data-testid="approval-message">
          {message}
        </p>
      )}
      {done ? (
        <p data-testid="approval-done">{done}.</p>
      ) : (
        <>
          <textarea
            data-testid="approval-why"
            placeholder="Why (optional; kept in the status and the audit log)"
            value={why}
            onInput={(e) => setWhy((e.target as HTMLTextAreaElement).value)}
          />
          <div class="buttons">
            <button type="button" class="approve" disabled={busy} data-testid="approve" onClick={() => send('Approve')}>
              Approve
            </button>
            <button type="button" class="reject" disabled={busy} data-testid="reject" onClick={() => send('Reject')}>
              Reject
            </button>
          </div>
        </>
      )}
      {error && <ErrorBox error={error} what={{ verb: 'update', resource: 'workflows/approval', namespace: ns }} />}
    </section>
  );
}
