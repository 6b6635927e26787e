// The pane of a selected task instance (input, output, attempts, agent, timing,
// its streamed output and its log, both followed live while it runs), or of a
// forEach group (its instances).
import { useEffect, useLayoutEffect, useRef, useState } from 'preact/hooks';
import { ApiError, logPath, streamText, type TaskView, taskOf } from '../api.ts';
import type { DagNode } from '../dag.ts';
import { countsText, duration, isRunning, json, phaseCounts, time } from '../format.ts';
import { ApprovalBox } from './approval.tsx';
import { ErrorBox, Phase } from './common.tsx';

interface PaneProps {
  ns: string;
  workflow: string;
  selected: string;
  /** Set when the selection is a forEach group. */
  node: DagNode | undefined;
  /** The selected instance's row of the task table (kept current by the page's polling). */
  summary: TaskView | undefined;
  select: (task: string | undefined) => void;
}

export function TaskPane(p: PaneProps) {
  return (
    <aside class="pane" data-testid="task-pane" data-task={p.selected}>
      <button type="button" class="close" title="Close" onClick={() => p.select(undefined)} data-testid="pane-close">
        ×
      </button>
      {p.node ? <GroupPane node={p.node} select={p.select} /> : <TaskDetail {...p} />}
    </aside>
  );
}

function GroupPane({ node, select }: { node: DagNode; select: (task: string) => void }) {
  return (
    <div data-testid="group-pane">
      <h2>
        {node.id} ×{node.instances.length} <Phase phase={node.phase} />
      </h2>
      <p class="muted">{countsText(phaseCounts(node.instances)) || 'No instances yet.'}</p>
      <table class="table compact">
        <thead>
          <tr>
            <th>Instance</th>
            <th>Phase</th>
            <th>Attempt</th>
            <th>Agent</th>
            <th>Duration</th>
          </tr>
        </thead>
        <tbody>
          {node.instances.map((t) => (
            <tr
              key={t.name}
              class="clickable"
              onClick={() => select(t.name)}
              data-testid="group-instance"
              data-task={t.name}
            >
              <td>
                <button type="button" class="link">
                  {t.name}
                </button>
              </td>
              <td>
                <Phase phase={t.phase} />
              </td>
              <td>{t.attempt}</td>
              <td>{t.agent ?? '–'}</td>
              <td>{duration(t.durationMs)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function TaskDetail({ ns, workflow, selected, summary }: PaneProps) {
  const [detail, setDetail] = useState<TaskView | undefined>(undefined);
  const [error, setError] = useState<ApiError | undefined>(undefined);
  const [attempt, setAttempt] = useState<number | undefined>(undefined);
  const phase = summary?.phase;
  const latest = summary?.attempt;
  useEffect(() => {
    setDetail(undefined);
    setAttempt(undefined);
  }, [selected]);
  // Input and output: read again whenever the instance moves on (a new attempt, a new phase).
  useEffect(() => {
    const ac = new AbortController();
    taskOf(ns, workflow, selected, ac.signal).then(
      (list) => {
        setDetail(list.items[0]);
        setError(undefined);
      },
      (err: Error) => {
        if (!ac.signal.aborted) setError(err instanceof ApiError ? err : new ApiError(0, 'Error', err.message, ''));
      },
    );
    return () => ac.abort();
  }, [ns, workflow, selected, phase, latest]);
  const t = summary ?? detail;
  return (
    <div data-testid="task-detail">
      <h2>
        {selected} <Phase phase={t?.phase} testid="pane-phase" />
      </h2>
      {error && <ErrorBox error={error} what={{ verb: 'read', resource: 'workflows', namespace: ns }} />}
      {t && (
        <dl class="facts">
          <dt>Handler</dt>
          <dd>{t.handler}</dd>
          <dt>Pool</dt>
          <dd>{t.pool}</dd>
          <dt>Agent</dt>
          <dd data-testid="task-agent">{t.agent ?? '–'}</dd>
          <dt>Node</dt>
          <dd data-testid="task-node">{t.node ?? '–'}</dd>
          <dt>Attempt</dt>
          <dd data-testid="task-attempt">{t.attempt}</dd>
          <dt>Started</dt>
          <dd>{time(t.startedAt)}</dd>
          <dt>Finished</dt>
          <dd>{time(t.finishedAt)}</dd>
          <dt>Duration</dt>
          <dd data-testid="task-duration">{duration(t.durationMs)}</dd>
          {t.progress && (
            <>
              <dt>Progress</dt>
              <dd>{t.progress}</dd>
            </>
          )}
          {t.message && (
            <>
              <dt>Message</dt>
              <dd class="message" data-testid="task-message">
                {t.message}
              </dd>
            </>
          )}
        </dl>
      )}
      {t?.phase === 'Waiting' && (
        <ApprovalBox ns={ns} workflow={workflow} task={selected} message={detail?.approval?.message} />
      )}
      <h3>Input</h3>
      <pre class="json" data-testid="task-input">
        {detail ? json(detail.input) : '…'}
      </pre>
      <h3>Output</h3>
      <pre class="json" data-testid="task-output">
        {detail ? (detail.output === null || detail.output === undefined ? '(none yet)' : json(detail.output)) : '…'}
      </pre>
      <h3>Attempts</h3>
      {t && t.attempts.length > 0 ? (
        <table class="table compact" data-testid="attempts">
          <thead>
            <tr>
              <th>#</th>
              <th>Agent</th>
              <th>OK</th>
              <th>Error</th>
              <th>Finished</th>
            </tr>
          </thead>
          <tbody>
            {t.attempts.map((a) => (
              <tr
                key={a.attempt}
                class={`clickable${(attempt ?? latest) === a.attempt ? ' selected' : ''}`}
                data-testid="attempt-row"
                data-attempt={String(a.attempt)}
                data-ok={String(a.ok)}
                title="Show this attempt's log"
                onClick={() => setAttempt(a.attempt)}
              >
                <td>{a.attempt}</td>
                <td>{a.agent}</td>
                <td class={a.ok ? 'ok' : 'bad'}>{a.ok ? '✓' : '✗'}</td>
                <td class="message">{a.error ? `${a.error.message}${a.error.retryable ? ' (retryable)' : ''}` : ''}</td>
                <td>{time(a.finishedAt)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : (
        <p class="muted">No attempt has ended yet.</p>
      )}
      {t && (
        <LogView
          ns={ns}
          workflow={workflow}
          task={selected}
          attempt={attempt}
          latest={latest ?? 0}
          live={isRunning(phase) && (attempt === undefined || attempt === latest)}
          onLatest={() => setAttempt(undefined)}
          stream
        />
      )}
      {t && (
        <LogView
          ns={ns}
          workflow={workflow}
          task={selected}
          attempt={attempt}
          latest={latest ?? 0}
          live={isRunning(phase) && (attempt === undefined || attempt === latest)}
          onLatest={() => setAttempt(undefined)}
        />
      )}
    </div>
  );
}

function LogView(p: {
  ns: string;
  workflow: string;
  task: string;
  /** undefined: the latest. */
  attempt: number | undefined;
  latest: number;
  live: boolean;
  onLatest: () => void;
  /** The attempt's streamed output (ctx.stream) rather than its log lines; shown only once there is some. */
  stream?: boolean;
}) {
  const [text, setText] = useState('');
  const [state, setState] = useState<'none' | 'loading' | 'following' | 'done'>('loading');
  const [error, setError] = useState<ApiError | undefined>(undefined);
  const pre = useRef<HTMLPreElement>(null);
  const stick = useRef(true);
  const shown = p.attempt ?? p.latest;
  useEffect(() => {
    setError(undefined);
    if (shown === 0) {
      setText('');
      setState('none');
      return;
    }
    const ac = new AbortController();
    let buf = '';
    if (p.live) {
      // Followed: the whole log so far, then each line as it is written, until the attempt ends.
      setText('');
      setState('following');
    } else setState('loading');
    const path = logPath(p.ns, p.workflow, p.task, {
      ...(p.attempt !== undefined && { attempt: p.attempt }),
      follow: p.live,
      ...(p.stream && { stream: true }),
    });
    streamText(
      path,
      (chunk) => {
        buf += chunk;
        if (p.live) setText(buf);
      },
      ac.signal,
    ).then(
      () => {
        setText(buf);
        setState('done');
      },
      (err: Error) => {
        if (ac.signal.aborted) return;
        if (err instanceof ApiError && err.status === 404) {
          setText('');
          setState('none');
        } else {
          setError(err instanceof ApiError ? err : new ApiError(0, 'Error', err.message, path));
          setState('done');
        }
      },
    );
    return () => ac.abort();
  }, [p.ns, p.workflow, p.task, p.attempt, shown, p.live, p.stream]);
  // Keep the newest line in view, unless the reader scrolled up.
  useLayoutEffect(() => {
    const el = pre.current;
    if (el && stick.current) el.scrollTop = el.scrollHeight;
  }, [text]);
  // Most handlers stream nothing: no empty box for them.
  if (p.stream && !text && !error) return null;
  return (
    <div class={p.stream ? 'log stream' : 'log'} data-testid={p.stream ? 'stream-view' : 'log-view'}>
      <h3>
        {p.stream ? 'Streamed output' : 'Log'}
        {shown ? ` · attempt ${shown}` : ''}
        {state === 'following' && (
          <span class="live" data-testid={p.stream ? 'stream-following' : 'log-following'}>
            ● following
          </span>
        )}
        {!p.stream && p.attempt !== undefined && p.attempt !== p.latest && (
          <button type="button" class="link" onClick={p.onLatest}>
            show the latest attempt
          </button>
        )}
      </h3>
      {error && <ErrorBox error={error} what={{ verb: 'read', resource: 'workflows', namespace: p.ns }} />}
      {state === 'none' ? (
        <p class="muted" data-testid="log-empty">
          No log: the task has not started.
        </p>
      ) : (
        <pre
          ref={pre}
          class="logtext"
          data-testid={p.stream ? 'task-stream' : 'task-log'}
          data-state={state}
          onScroll={(e) => {
            const el = e.currentTarget;
            stick.current = el.scrollTop + el.clientHeight >= el.scrollHeight - 8;
          }}
        >
          {text || (state === 'loading' ? '…' : state === 'following' ? '' : '(empty)')}
        </pre>
      )}
    </div>
  );
}
