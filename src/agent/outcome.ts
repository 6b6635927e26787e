import type { ApprovalWait } from '../gen/agentflow/v1/ApprovalWait.ts';
import type { ModelUsage } from '../gen/agentflow/v1/ModelUsage.ts';
import type { TaskError } from '../gen/agentflow/v1/TaskError.ts';
import { MAX_PAYLOAD_BYTES } from '../lib/proto.ts';
import { UnrecoverableError } from './errors.ts';

/** What a settled attempt reports: its output as JSON text, or an error; and the usage it reported. */
export type Outcome = ({ outputJson: string } | { error: Required<TaskError> } | { awaitApproval: ApprovalWait }) & {
  usage?: ModelUsage[];
};

const MAX_ERROR_MESSAGE = 4096;

function failure(code: string, message: string, retryable: boolean): Outcome {
  return { error: { code, message: message.slice(0, MAX_ERROR_MESSAGE), retryable } };
}

/** The handler's return value as a Result outcome; an output the wire cannot carry is a final error. */
export function outputOutcome(value: unknown): Outcome {
  let json: string | undefined;
  try {
    json = JSON.stringify(value === undefined ? null : value);
  } catch (err) {
    return failure('OUTPUT_NOT_JSON', `handler output is not JSON-serialisable: ${(err as Error).message}`, false);
  }
  if (json === undefined) {
    return failure('OUTPUT_NOT_JSON', `handler output is not JSON-serialisable (got a ${typeof value})`, false);
  }
  const bytes = Buffer.byteLength(json);
  if (bytes > MAX_PAYLOAD_BYTES) {
    return failure(
      'OUTPUT_TOO_LARGE',
      `handler output is ${bytes} bytes of JSON; the limit is ${MAX_PAYLOAD_BYTES}`,
      false,
    );
  }
  return { outputJson: json };
}

/**
 * A thrown value as a Result outcome. UnrecoverableError is recognised by name
 * too, since a handlers module may load its own copy of this SDK.
 */
export function errorOutcome(thrown: unknown): Outcome {
  if (thrown instanceof Error) {
    const { code } = thrown as { code?: unknown };
    const final =
      thrown instanceof UnrecoverableError ||
      thrown.name === 'UnrecoverableError' ||
      (thrown as { retryable?: unknown }).retryable === false;
    return failure(
      typeof code === 'string' && code !== '' ? code : final ? 'UNRECOVERABLE' : 'HANDLER_ERROR',
      thrown.message || thrown.name,
      !final,
    );
  }
  let text: string;
  try {
    text = String(thrown);
  } catch {
    text = typeof thrown;
  }
  return failure('HANDLER_ERROR', `handler threw a non-Error value: ${text}`, true);
}
