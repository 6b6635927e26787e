// approve, reject, approvals, signal, signals: what users send into a running workflow, through the
// data API (workflows/<name>/approval and workflows/<name>/signal). Deciding takes `update` on
// workflows/approval, signalling `update` on workflows/signal (docs/api.md).

import { signalNameProblem } from '../../../api/signals.ts';
import type { ApprovalDecision } from '../../../api/workflow.ts';
import { UsageError } from '../errors.ts';
import { type DataFormat, formatData, table } from '../format.ts';
import type { Io } from '../io.ts';
import type { Cluster } from '../kube.ts';

export async function decide(
  c: Cluster,
  io: Io,
  workflow: string,
  task: string,
  decision: ApprovalDecision,
  o: { message?: string },
) {
  const r = await c.decide(workflow, { task, decision, ...(o.message !== undefined && { message: o.message }) });
  io.out(`task ${task} of workflow ${workflow} ${decision === 'Approve' ? 'approved' : 'rejected'} by ${r.user}\n`);
  return 0;
}

export async function approvals(c: Cluster, io: Io, workflow: string, o: { output?: DataFormat }) {
  const list = await c.approvals(workflow);
  if (o.output) io.out(formatData(list, o.output));
  else if (list.items.length === 0) io.err(`No task of workflow ${workflow} waits for approval.\n`);
  else
    io.out(
      table(
        ['TASK', 'DEADLINE', 'ON-TIMEOUT', 'MESSAGE'],
        list.items.map((a) => [a.task, a.deadline ?? '-', a.onTimeout ?? '-', a.message]),
      ),
    );
  return 0;
}

/** --data: JSON, else the text as a JSON string (as `state put`). */
export function parseSignalData(raw: string | undefined): unknown {
  if (raw === undefined) return null;
  try {
    return JSON.parse(raw);
  } catch {
    return raw;
  }
}

export async function signal(c: Cluster, io: Io, workflow: string, name: string, o: { data?: string }) {
  const problem = signalNameProblem(name);
  if (problem) throw new UsageError(`SIGNAL: ${problem}`);
  const r = await c.signal(workflow, { name, data: parseSignalData(o.data) });
  io.out(`signal ${name} sent to workflow ${workflow} (id ${r.id})\n`);
  return 0;
}

export async function signals(c: Cluster, io: Io, workflow: string, o: { output?: DataFormat }) {
  const list = await c.signals(workflow);
  if (o.output) io.out(formatData(list, o.output));
  else if (list.items.length === 0) io.err(`No signal was sent to workflow ${workflow}.\n`);
  else
    io.out(
      table(
        ['SIGNAL', 'ID', 'SENT-BY', 'SENT', 'TAKEN-BY', 'DATA'],
        list.items.map((s) => [s.name, s.id, s.sentBy, s.sentAt, s.takenBy ?? '-', JSON.stringify(s.data)]),
      ),
    );
  return 0;
}
