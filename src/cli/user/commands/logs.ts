// logs: a task attempt's log (the data API's text/plain `logs`), or every task's,
// each line prefixed `[task]`; -f follows them live, from one attempt to the next,
// until the task (or, without TASK, the workflow) finishes. --stream: a task's
// streamed output (ctx.stream) instead, printed exactly as streamed.
import type { IncomingMessage } from 'node:http';
import type { TaskView } from '../../../api/data-api.ts';
import { workflowTasks } from '../../../api/workflow.ts';
import { KubeApiError } from '../../../operator/kube/client.ts';
import type { Io } from '../io.ts';
import type { Cluster } from '../kube.ts';
import { FINAL_TASK_PHASES, FINAL_WORKFLOW_PHASES } from '../render.ts';
import { sleep } from '../watch.ts';

/** How often a follower looks for a task's next attempt, or a workflow's tasks that started. */
const POLL_MS = 1000;
/** Followed at once, at most: a fan-out of thousands streams a few at a time. */
const MAX_STREAMS = 32;

export interface LogsOptions {
  follow?: boolean;
  attempt?: number;
  timestamps?: boolean;
  /** The streamed output, not the log lines (needs a task). */
  stream?: boolean;
}

/** Reads a stream of text, printed or counted as it arrives. */
type Reader = (res: IncomingMessage, skip: number) => Promise<number>;

/** Feeds a text stream to `onText` as it arrives, its first `skip` characters left out; resolves with the characters seen. */
export function readText(res: IncomingMessage, onText: (text: string) => void, skip = 0): Promise<number> {
  return new Promise((resolve) => {
    let seen = 0;
    res.setEncoding('utf8');
    res.on('data', (chunk: string) => {
      const from = Math.max(0, skip - seen);
      seen += chunk.length;
      if (from < chunk.length) onText(from === 0 ? chunk : chunk.slice(from));
    });
    let ended = false;
    const done = () => {
      if (ended) return;
      ended = true;
      resolve(seen);
    };
    res.on('end', done);
    res.on('error', done);
    res.on('aborted', done);
    res.on('close', done);
  });
}

/** Feeds a text stream to `onLine` line by line, the first `skip` lines left out; resolves with the lines seen. */
export function readLines(res: IncomingMessage, onLine: (line: string) => void, skip = 0): Promise<number> {
  return new Promise((resolve) => {
    let seen = 0;
    let buf = '';
    const emit = (line: string) => {
      seen++;
      if (seen > skip) onLine(line);
    };
    res.setEncoding('utf8');
    res.on('data', (chunk: string) => {
      buf += chunk;
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        emit(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
      }
    });
    // However the stream ends (done, cut by the API server's timeout, the connection lost), the
    // follower asks the task whether its attempt ended, and streams again if not.
    let ended = false;
    const done = () => {
      if (ended) return;
      ended = true;
      if (buf) emit(buf);
      buf = '';
      resolve(seen);
    };
    res.on('end', done);
    res.on('error', done);
    res.on('aborted', done);
    res.on('close', done);
  });
}

async function taskNow(cluster: Cluster, workflow: string, task: string): Promise<TaskView | undefined> {
  const list = await cluster.tasks(workflow, task);
  return list.items.find((t) => t.name === task) ?? list.items[0];
}

/**
 * The task's row, waiting while the run does not have it yet but will: the workflow was just
 * created (its run is not loaded), or the task is a forEach item or child not made yet. A name
 * that no task of the spec has, or a workflow that finished without it, is the 404 it was.
 */
async function taskOnceThere(cluster: Cluster, workflow: string, task: string): Promise<TaskView | undefined> {
  for (;;) {
    try {
      return await taskNow(cluster, workflow, task);
    } catch (err) {
      if (!(err instanceof KubeApiError) || err.status !== 404) throw err;
      const wf = await cluster.getWorkflow(workflow);
      const template = task.split(/[.~]/)[0];
      const known = workflowTasks(wf).some((t) => t.name === template);
      if (!known || FINAL_WORKFLOW_PHASES.has(wf.status?.phase ?? '')) throw err;
      await sleep(POLL_MS);
    }
  }
}

/**
 * Follows one task: its latest attempt (or `attempt`) to its end, then each
 * later attempt, until the task is done. A stream that ends while its attempt
 * still runs (the API server cuts long requests) is opened again, the lines
 * already printed skipped.
 */
async function followTask(
  cluster: Cluster,
  workflow: string,
  task: string,
  o: LogsOptions,
  read: Reader,
): Promise<void> {
  let view = await taskOnceThere(cluster, workflow, task);
  while (view && view.attempt < 1 && !FINAL_TASK_PHASES.has(view.phase)) {
    await sleep(POLL_MS);
    view = await taskNow(cluster, workflow, task);
  }
  if (!view || view.attempt < 1) return;
  let attempt = o.attempt ?? view.attempt;
  for (;;) {
    let printed = 0;
    for (;;) {
      const res = await cluster.logs(workflow, {
        task,
        attempt,
        follow: true,
        ...(o.timestamps && { timestamps: true }),
        ...(o.stream && { stream: true }),
      });
      printed = await read(res, printed);
      view = await taskNow(cluster, workflow, task);
      const stillRunning = view && view.attempt === attempt && view.phase === 'Running';
      if (!stillRunning) break;
      await sleep(250);
    }
    if (o.attempt !== undefined || !view) return;
    // The attempt ended: the next one, once it is handed out, unless the task is done.
    while (view && view.attempt === attempt && !FINAL_TASK_PHASES.has(view.phase)) {
      await sleep(POLL_MS);
      view = await taskNow(cluster, workflow, task);
    }
    if (!view || view.attempt === attempt) return;
    attempt++;
  }
}

/** A task's log printed once: the latest attempt, or `attempt`. */
async function printTask(
  cluster: Cluster,
  workflow: string,
  task: string,
  o: LogsOptions,
  read: Reader,
): Promise<void> {
  const res = await cluster.logs(workflow, {
    task,
    ...(o.attempt !== undefined && { attempt: o.attempt }),
    ...(o.timestamps && { timestamps: true }),
    ...(o.stream && { stream: true }),
  });
  await read(res, 0);
}

const lines =
  (onLine: (line: string) => void): Reader =>
  (res, skip) =>
    readLines(res, onLine, skip);

/** A slot for one of MAX_STREAMS streams. */
class Slots {
  private free: number;
  private readonly waiting: (() => void)[] = [];
  constructor(n: number) {
    this.free = n;
  }
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.free > 0) this.free--;
    else await new Promise<void>((resolve) => this.waiting.push(resolve));
    try {
      return await fn();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.free++;
    }
  }
}

const byStart = (a: TaskView, b: TaskView) => (a.startedAt ?? '').localeCompare(b.startedAt ?? '');

/** `[task] line`, as kubectl logs --prefix. */
export const prefixed = (task: string, line: string) => `[${task}] ${line}`;

export async function logs(cluster: Cluster, io: Io, workflow: string, task: string | undefined, o: LogsOptions) {
  if (task !== undefined) {
    const read: Reader = o.stream
      ? (res, skip) => readText(res, (text) => io.out(text), skip)
      : lines((line) => io.out(`${line}\n`));
    if (o.follow) await followTask(cluster, workflow, task, o, read);
    else await printTask(cluster, workflow, task, o, read);
    return 0;
  }
  await cluster.getWorkflow(workflow); // a workflow that does not exist says so as kubectl would
  if (!o.follow) {
    const tasks = (await cluster.tasks(workflow)).items.filter((t) => t.attempt > 0).sort(byStart);
    for (const t of tasks) {
      try {
        await printTask(
          cluster,
          workflow,
          t.name,
          o,
          lines((line) => io.out(`${prefixed(t.name, line)}\n`)),
        );
      } catch (err) {
        // A task with no log kept (its records are gone, or it ran before logs were kept): nothing to print.
        if (!(err instanceof KubeApiError && err.status === 404)) throw err;
      }
    }
    return 0;
  }
  // Following every task: each one that has started gets a follower; new ones as they start,
  // until the workflow has finished and every follower is done.
  const slots = new Slots(MAX_STREAMS);
  const followers = new Map<string, Promise<void>>();
  let failure: unknown;
  for (;;) {
    const wf = await cluster.getWorkflow(workflow);
    const finished = FINAL_WORKFLOW_PHASES.has(wf.status?.phase ?? '');
    let tasks: TaskView[];
    try {
      tasks = (await cluster.tasks(workflow)).items;
    } catch (err) {
      if (!(err instanceof KubeApiError && err.status === 404)) throw err;
      tasks = []; // no run of it yet
    }
    for (const t of tasks.filter((x) => x.attempt > 0 && !followers.has(x.name)).sort(byStart)) {
      const follower = slots
        .run(() =>
          followTask(
            cluster,
            workflow,
            t.name,
            o,
            lines((line) => io.out(`${prefixed(t.name, line)}\n`)),
          ),
        )
        .catch((err: unknown) => {
          failure ??= err;
        });
      followers.set(t.name, follower);
    }
    if (failure !== undefined) throw failure;
    if (finished) break;
    await sleep(POLL_MS);
  }
  await Promise.all(followers.values());
  if (failure !== undefined) throw failure;
  return 0;
}
