// cancel, suspend, resume, retry, resubmit: requests written to the Workflow
// itself (src/api/workflow-control.ts), answered by the operator's controller.
import { randomBytes } from 'node:crypto';
import type { Workflow } from '../../../api/workflow.ts';
import { CANCEL_ANNOTATION, RERUN_ANNOTATION, RETRY_ANNOTATION } from '../../../api/workflow-control.ts';
import { CliError } from '../errors.ts';
import { formatDuration } from '../format.ts';
import type { Io } from '../io.ts';
import { type Cluster, WORKFLOW_RESOURCE } from '../kube.ts';
import { FINAL_WORKFLOW_PHASES } from '../render.ts';
import { sleep, watchWorkflow } from '../watch.ts';

/** How long retry and resubmit wait for the operator's answer unless --timeout says otherwise. */
export const DEFAULT_ANSWER_TIMEOUT_MS = 60_000;
const ANSWER_POLL_MS = 500;

/** A request value no earlier request had: the time, and randomness for two requests in one millisecond. */
export function requestToken(now = Date.now()): string {
  return `${now.toString(36)}-${randomBytes(4).toString('hex')}`;
}

async function unfinished(cluster: Cluster, name: string, what: string): Promise<Workflow> {
  const wf = await cluster.getWorkflow(name);
  const phase = wf.status?.phase;
  if (phase && FINAL_WORKFLOW_PHASES.has(phase)) {
    throw new CliError(`workflow ${name} has finished (${phase}): nothing to ${what}`);
  }
  return wf;
}

export async function cancel(cluster: Cluster, io: Io, name: string) {
  await unfinished(cluster, name, 'cancel');
  await cluster.patchWorkflow(name, { metadata: { annotations: { [CANCEL_ANNOTATION]: new Date().toISOString() } } });
  io.out(`${WORKFLOW_RESOURCE}/${name} cancel requested\n`);
  return 0;
}

export async function setSuspended(cluster: Cluster, io: Io, name: string, suspend: boolean) {
  await unfinished(cluster, name, suspend ? 'suspend' : 'resume');
  await cluster.patchWorkflow(name, { spec: { suspend } });
  io.out(`${WORKFLOW_RESOURCE}/${name} ${suspend ? 'suspended' : 'resumed'}\n`);
  return 0;
}

/** Polls the Workflow until `answered` says the operator has answered, or the time is up. */
async function awaitAnswer<T>(
  cluster: Cluster,
  name: string,
  timeoutMs: number,
  what: string,
  answered: (wf: Workflow) => T | undefined,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = answered(await cluster.getWorkflow(name));
    if (found !== undefined) return found;
    if (Date.now() >= deadline) {
      throw new CliError(
        `the operator has not answered the ${what} of workflow ${name} within ${formatDuration(timeoutMs)} (is it running? see --timeout); the request stays on the Workflow and is answered when it is`,
      );
    }
    await sleep(Math.min(ANSWER_POLL_MS, deadline - Date.now()));
  }
}

export async function retry(cluster: Cluster, io: Io, name: string, o: { watch?: boolean; timeoutMs?: number }) {
  await cluster.getWorkflow(name);
  const token = requestToken();
  await cluster.patchWorkflow(name, { metadata: { annotations: { [RETRY_ANNOTATION]: token } } });
  const answer = await awaitAnswer(cluster, name, o.timeoutMs ?? DEFAULT_ANSWER_TIMEOUT_MS, 'retry', (wf) =>
    wf.status?.lastRetry?.token === token ? wf.status.lastRetry : undefined,
  );
  if (!answer.started) throw new CliError(`retry of workflow ${name} refused: ${answer.message}`);
  io.out(`${WORKFLOW_RESOURCE}/${name} retrying: ${answer.message}\n`);
  return o.watch ? watchWorkflow(cluster, name, io) : 0;
}

export async function resubmit(cluster: Cluster, io: Io, name: string, o: { watch?: boolean; timeoutMs?: number }) {
  await cluster.getWorkflow(name);
  const token = requestToken();
  await cluster.patchWorkflow(name, { metadata: { annotations: { [RERUN_ANNOTATION]: token } } });
  const copy = await awaitAnswer(cluster, name, o.timeoutMs ?? DEFAULT_ANSWER_TIMEOUT_MS, 'resubmit', (wf) =>
    wf.status?.lastRerun?.token === token ? wf.status.lastRerun.name : undefined,
  );
  io.out(`${WORKFLOW_RESOURCE}/${copy} created (a re-run of ${name})\n`);
  return o.watch ? watchWorkflow(cluster, copy, io) : 0;
}
