// What users send into a running workflow through the data API: decisions on
// approval tasks (workflows/<name>/approval) and signals (workflows/<name>/signal).
// RBAC was checked before we get here (update on workflows/approval or
// workflows/signal); this checks the body and answers with the source's outcome.

import type { IncomingMessage } from 'node:http';
import type { ApprovalRequest, SignalRequest } from '../../api/data-api.ts';
import { MAX_SIGNAL_DATA_BYTES, signalNameProblem } from '../../api/signals.ts';
import { APPROVAL_DECISIONS, type ApprovalDecision, MAX_APPROVAL_MESSAGE } from '../../api/workflow.ts';

/** A body refused: the message names the field. */
export class BodyError extends Error {
  readonly code: 400 | 413;
  constructor(code: 400 | 413, message: string) {
    super(message);
    this.code = code;
  }
}

const TASK = /^[a-zA-Z0-9][a-zA-Z0-9._~-]{0,252}$/;
/** Room for the envelope around a signal's data. */
const MAX_BODY_BYTES = MAX_SIGNAL_DATA_BYTES + 4096;

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > MAX_BODY_BYTES) throw new BodyError(413, `body: over ${MAX_BODY_BYTES} bytes`);
    chunks.push(c as Buffer);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (err) {
    throw new BodyError(400, `body: not JSON: ${(err as Error).message}`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new BodyError(400, 'body: must be a JSON object');
  return v as Record<string, unknown>;
}

function unknownFields(body: Record<string, unknown>, known: readonly string[]): void {
  const extra = Object.keys(body).filter((k) => !known.includes(k));
  if (extra.length > 0)
    throw new BodyError(400, `body: unknown field(s) ${extra.join(', ')} (known: ${known.join(', ')})`);
}

export async function readApproval(req: IncomingMessage): Promise<ApprovalRequest> {
  const b = await readJson(req);
  unknownFields(b, ['task', 'decision', 'message']);
  if (typeof b.task !== 'string' || !TASK.test(b.task)) {
    throw new BodyError(400, `body.task: must be the name of an approval task, got ${JSON.stringify(b.task)}`);
  }
  if (!APPROVAL_DECISIONS.includes(b.decision as ApprovalDecision)) {
    throw new BodyError(
      400,
      `body.decision: must be one of ${APPROVAL_DECISIONS.join(', ')}, got ${JSON.stringify(b.decision)}`,
    );
  }
  if (b.message !== undefined && typeof b.message !== 'string') {
    throw new BodyError(400, `body.message: must be a string, got ${typeof b.message}`);
  }
  if (typeof b.message === 'string' && b.message.length > MAX_APPROVAL_MESSAGE) {
    throw new BodyError(400, `body.message: ${b.message.length} characters; at most ${MAX_APPROVAL_MESSAGE}`);
  }
  return {
    task: b.task,
    decision: b.decision as ApprovalDecision,
    ...(typeof b.message === 'string' && { message: b.message }),
  };
}

export async function readSignal(req: IncomingMessage): Promise<SignalRequest & { data: unknown }> {
  const b = await readJson(req);
  unknownFields(b, ['name', 'data']);
  const problem = signalNameProblem(b.name);
  if (problem) throw new BodyError(400, `body.name: ${problem}`);
  const data = b.data === undefined ? null : b.data;
  const bytes = Buffer.byteLength(JSON.stringify(data));
  if (bytes > MAX_SIGNAL_DATA_BYTES) {
    throw new BodyError(413, `body.data: ${bytes} bytes of JSON; at most ${MAX_SIGNAL_DATA_BYTES}`);
  }
  return { name: b.name as string, data };
}
