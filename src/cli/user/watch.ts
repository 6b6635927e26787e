// `watch`: follows a Workflow until it finishes. Polls the Workflow and the data
// API's task table (the tasks it cannot stream), every POLL_MS or, for a table
// that takes long to fetch, twice the time it took. On a terminal the view is
// redrawn in place; otherwise one line per change (render.ts).
import type { TaskView } from '../../api/data-api.ts';
import type { Workflow } from '../../api/workflow.ts';
import { KubeApiError } from '../../operator/kube/client.ts';
import { EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK } from './errors.ts';
import { clockTime, elapsedMs, formatDuration } from './format.ts';
import type { Io } from './io.ts';
import { type Cluster, DataApiUnavailableError } from './kube.ts';
import {
  ChangeLog,
  FINAL_WORKFLOW_PHASES,
  failureLines,
  progressText,
  renderView,
  type Snapshot,
  tasksFromStatus,
} from './render.ts';

export const POLL_MS = 500;
/** After the data API said it is not there, ask it again this much later (status.tasks meanwhile). */
const DATA_API_RETRY_MS = 10_000;
/** A watch survives the cluster not answering for this long (an API server restart), then gives up. */
const GIVE_UP_MS = 60_000;

const ESC = '\x1b[';

/** The view redrawn in place: the cursor goes back to the frame's first line, each line is rewritten and cleared to its end. */
export class LiveView {
  private readonly io: Io;
  private drawn = 0;
  private last = '';

  constructor(io: Io) {
    this.io = io;
  }

  /** One write per frame, and none when nothing changed: no flicker. */
  draw(lines: readonly string[]): void {
    const body = lines.map((l) => `${l}${ESC}K\n`).join('');
    if (body === this.last) return;
    const up = this.drawn > 0 ? `${ESC}${this.drawn}F` : `${ESC}?25l`;
    this.io.out(`${up}${body}${ESC}J`);
    this.drawn = lines.length;
    this.last = body;
  }

  /** Leaves the last frame on screen and the cursor visible under it. */
  end(): void {
    if (this.drawn > 0) this.io.out(`${ESC}?25h`);
  }
}

export interface WatchOptions {
  /** Instances shown per forEach group on a terminal. */
  groupLimit?: number;
  pollMs?: number;
}

/** Polls until the workflow finishes: 0 Succeeded, 1 Failed or Cancelled (its failing tasks printed). */
export async function watchWorkflow(cluster: Cluster, name: string, io: Io, opts: WatchOptions = {}): Promise<number> {
  const pollMs = opts.pollMs ?? POLL_MS;
  const live = io.isTTY ? new LiveView(io) : undefined;
  const changes = new ChangeLog();
  let dataApiBackoffUntil = 0;
  let note: string | undefined;
  let failingSince: number | undefined;
  let snap: Snapshot | undefined;
  let said: string | undefined;
  // Ctrl-C: the cursor back on, the last frame left as it was, the exit code a shell expects.
  const onSignal = () => {
    live?.end();
    process.exit(EXIT_INTERRUPTED);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    for (;;) {
      const started = Date.now();
      let wf: Workflow;
      try {
        wf = await cluster.getWorkflow(name);
        failingSince = undefined;
      } catch (err) {
        if (!transient(err)) throw err;
        failingSince ??= started;
        if (started - failingSince > GIVE_UP_MS) throw err;
        note = `cannot reach the cluster (${(err as Error).message}); trying again`;
        if (!live) io.err(`${clockTime(started)} ${note}\n`);
        await sleep(Math.max(pollMs, 2000));
        continue;
      }
      let tasks: TaskView[] | undefined;
      let source: Snapshot['source'] = 'status';
      if (Date.now() >= dataApiBackoffUntil) {
        try {
          tasks = (await cluster.tasks(name)).items;
          source = 'api';
          note = undefined;
        } catch (err) {
          if (err instanceof DataApiUnavailableError) {
            dataApiBackoffUntil = Date.now() + DATA_API_RETRY_MS;
            note = `tasks from status.tasks (bounded): ${err.message}`;
          } else if (err instanceof KubeApiError && err.status === 404) {
            // The workflow exists, but the operator has no run of it yet: its status says what there is.
          } else if (!transient(err)) throw err;
        }
      }
      snap = { workflow: wf, tasks: tasks ?? tasksFromStatus(wf), source };
      const now = Date.now();
      if (live) {
        live.draw(
          renderView(
            snap,
            {
              now,
              color: io.color,
              ...(io.columns !== undefined && { width: io.columns }),
              // One row spare: a frame as tall as the terminal would scroll it.
              ...(io.rows !== undefined && { height: io.rows - 1 }),
              ...(opts.groupLimit !== undefined && { groupLimit: opts.groupLimit }),
            },
            note,
          ),
        );
      } else {
        if (note !== said && source === 'status' && note) io.err(`${clockTime(now)} ${note}\n`);
        said = note;
        for (const line of changes.lines(snap, now)) io.out(`${line}\n`);
      }
      if (FINAL_WORKFLOW_PHASES.has(wf.status?.phase ?? '')) break;
      const took = Date.now() - started;
      await sleep(Math.max(pollMs, 2 * took) - took);
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    live?.end();
  }
  return finish(snap, io);
}

/** The closing words: how it ended, and for a failure which tasks failed and why (stderr). */
function finish(snap: Snapshot, io: Io): number {
  const wf = snap.workflow;
  const phase = wf.status?.phase ?? '';
  const d = elapsedMs(wf.status?.startedAt, wf.status?.finishedAt, Date.now());
  const took = d === undefined ? '' : ` in ${formatDuration(d)}`;
  if (!io.isTTY) io.out(`workflow/${wf.metadata?.name} ${phase} ${progressText(wf)}${took}\n`);
  if (phase === 'Succeeded') return EXIT_OK;
  const why = wf.status?.message ? `: ${wf.status.message}` : '';
  io.err(`error: workflow ${wf.metadata?.name} ${phase}${why}\n`);
  for (const line of failureLines(snap)) io.err(`  ${line}\n`);
  return EXIT_FAILED;
}

/** Worth another try: no answer (KubeClient's plain Errors), or the API server busy or restarting. */
function transient(err: unknown): boolean {
  if (err instanceof KubeApiError) return err.status === 429 || err.status >= 500;
  return err instanceof Error && err.constructor === Error;
}

/** Resolves after `ms`, or at once when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted || ms <= 0) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}
