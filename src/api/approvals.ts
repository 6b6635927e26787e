// Approvals asked by a handler (ctx.waitForApproval): one home for the shapes and bounds the agent
// SDK, the dispatcher's wire checks and the engine share. An approval task of the spec
// (spec.tasks[].approval, src/api/workflow.ts) is the same thing asked by the spec.
//
// How it holds no slot: a handler's wait with no decision yet ends its attempt (Result
// await_approval); the task waits for a person as an approval task does; once decided it runs again,
// its Assign carrying every decision so far, and the same wait (by ordinal) returns at once.

import {
  APPROVAL_TIMEOUT_ACTIONS,
  type ApprovalTimeoutAction,
  MAX_APPROVAL_MESSAGE,
  MAX_APPROVERS,
} from './workflow.ts';

/** Most approval waits one task may make (its decisions travel in every Assign). */
export const MAX_APPROVAL_WAITS = 64;
/** Longest timeout of a handler's wait, as approval.timeoutSeconds. */
export const MAX_APPROVAL_TIMEOUT_SECONDS = 2_592_000;

/** What a handler asks (ctx.waitForApproval), as the engine keeps it. */
export interface ApprovalAsk {
  ordinal: number;
  message: string;
  timeoutSeconds?: number;
  onTimeout?: ApprovalTimeoutAction;
  approvers?: { users?: string[]; groups?: string[] };
}

/** A decision on one wait, as handlers get it back. */
export interface ApprovalVerdict {
  ordinal: number;
  approved: boolean;
  /** Who decided; absent when the timeout did. */
  user?: string;
  message?: string;
  decidedAt: string;
  timedOut?: boolean;
}

/** Why an ask is refused (naming `field`), or undefined. */
export function approvalAskProblem(field: string, a: ApprovalAsk): string | undefined {
  if (!Number.isInteger(a.ordinal) || a.ordinal < 0 || a.ordinal >= MAX_APPROVAL_WAITS)
    return `${field}.ordinal: must be 0-${MAX_APPROVAL_WAITS - 1} (at most ${MAX_APPROVAL_WAITS} waits per task), got ${a.ordinal}`;
  if (typeof a.message !== 'string' || a.message.length > MAX_APPROVAL_MESSAGE)
    return `${field}.message: must be a string of at most ${MAX_APPROVAL_MESSAGE} characters`;
  if (
    a.timeoutSeconds !== undefined &&
    (!Number.isInteger(a.timeoutSeconds) || a.timeoutSeconds < 1 || a.timeoutSeconds > MAX_APPROVAL_TIMEOUT_SECONDS)
  )
    return `${field}.timeoutSeconds: must be a whole number 1-${MAX_APPROVAL_TIMEOUT_SECONDS}, got ${a.timeoutSeconds}`;
  if (a.onTimeout !== undefined && !APPROVAL_TIMEOUT_ACTIONS.includes(a.onTimeout))
    return `${field}.onTimeout: must be one of ${APPROVAL_TIMEOUT_ACTIONS.join(', ')}, got ${JSON.stringify(a.onTimeout)}`;
  for (const k of ['users', 'groups'] as const) {
    const list = a.approvers?.[k];
    if (list === undefined) continue;
    if (!Array.isArray(list) || list.length > MAX_APPROVERS)
      return `${field}.approvers.${k}: at most ${MAX_APPROVERS} names`;
    const bad = list.findIndex((n) => typeof n !== 'string' || n === '' || n.length > 253);
    if (bad >= 0) return `${field}.approvers.${k}[${bad}]: must be a name of 1-253 characters`;
  }
  return undefined;
}
