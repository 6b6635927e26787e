import { type ApprovalAsk, approvalAskProblem } from '../api/approvals.ts';
import {
  LOG_CUT_MARKER,
  LOG_MAX_LINE_CHARS,
  LOG_MAX_LINES_PER_MESSAGE,
  STREAM_MAX_CHUNK_CHARS,
  STREAM_MAX_CHUNKS_PER_MESSAGE,
} from '../api/data-api.ts';
import { DNS_LABEL } from '../api/schema-helpers.ts';
import { APPROVAL_TIMEOUT_ACTIONS, type ApprovalTimeoutAction } from '../api/workflow.ts';
import type { LogLine__Output } from '../gen/agentflow/v1/LogLine.ts';
import type { Register__Output } from '../gen/agentflow/v1/Register.ts';
import type { Result__Output } from '../gen/agentflow/v1/Result.ts';
import type { SpawnTasks__Output } from '../gen/agentflow/v1/SpawnTasks.ts';
import type { StreamChunk__Output } from '../gen/agentflow/v1/StreamChunk.ts';
import { MAX_PAYLOAD_BYTES } from '../lib/proto.ts';
import { MAX_USAGE_MODELS, type ModelUsage, toNanos, UsageTally, usageProblem } from '../lib/usage.ts';
import type { TaskRef } from '../state/index.ts';
import type { RegisterClaim } from './auth.ts';
import type { WireRefusal } from './task-state.ts';
import { parseWireTaskId, type SpawnedChild } from './types.ts';

// What the dispatcher checks in an agent's messages before anything changes because of them. Pure
// functions: each answers the parsed value or a WireRefusal naming the field and the problem.

const NAME = new RegExp(DNS_LABEL);
/** Most handler names one Register may list. */
export const MAX_HANDLERS = 128;
/** Most attempts one Register may report in flight. */
export const MAX_IN_FLIGHT = 4 * 1024;
/** Most slots one agent may offer. */
export const MAX_CAPACITY = 1024;
/** Longest error message kept from a failed attempt. */
export const MAX_ERROR_MESSAGE = 4096;

const isLabel = (s: string) => s.length > 0 && s.length <= 63 && NAME.test(s);

/** Why a Register is malformed (its first bad field), or undefined when it may go on to authorization. */
export function checkRegister(r: Register__Output): string | undefined {
  if (r.namespace !== '' && !isLabel(r.namespace))
    return `Register.namespace: "${r.namespace}" is not a DNS-1123 label`;
  if (r.pool !== '' && !isLabel(r.pool)) return `Register.pool: "${r.pool}" is not a DNS-1123 label`;
  if (r.agentId.length > 253 || r.agentId.includes('/'))
    return `Register.agentId: "${r.agentId.slice(0, 64)}" must be at most 253 characters without "/"`;
  if (!Number.isInteger(r.capacity) || r.capacity < 1 || r.capacity > MAX_CAPACITY)
    return `Register.capacity: must be 1-${MAX_CAPACITY}, got ${r.capacity}`;
  if (r.leaseId !== '' && !/^[1-9][0-9]{0,19}$/.test(r.leaseId))
    return `Register.leaseId: "${r.leaseId.slice(0, 32)}" is not an etcd lease id`;
  if (r.handlers.length === 0 || r.handlers.length > MAX_HANDLERS)
    return `Register.handlers: 1-${MAX_HANDLERS} handler names required, got ${r.handlers.length}`;
  if (r.inFlight.length > MAX_IN_FLIGHT)
    return `Register.inFlight: at most ${MAX_IN_FLIGHT} attempts, got ${r.inFlight.length}`;
  return undefined;
}

/** What a Register asks to be, for the authorizer. */
export function claimOf(r: Register__Output): RegisterClaim {
  return { namespace: r.namespace, pool: r.pool, agentId: r.agentId, capacity: r.capacity, handlers: r.handlers };
}

/** The outcome a Result carries, as the commit stores it. */
export type ResultOutcome = {
  ok: boolean;
  output?: unknown;
  error?: { message: string; retryable: boolean };
  /** The attempt ended in ctx.waitForApproval: what it asks (the engine holds the task for a person). */
  park?: ApprovalAsk;
  /** Model usage of the attempt, per model (absent: none reported). */
  usage?: ModelUsage[];
};

/** The task a wire id names in the agent's namespace, or the refusal. */
export function refOf(namespace: string, taskId: string): TaskRef | WireRefusal {
  return (
    parseWireTaskId(namespace, taskId) ?? {
      code: 'INVALID',
      message: `task id "${taskId}" is not workflow/task or namespace/workflow/task`,
    }
  );
}

/** A Result's usage (bounded, each figure checked, a model named twice summed), or why it cannot be taken. */
function resultUsage(r: Result__Output): { usage?: ModelUsage[] } | WireRefusal {
  const list = r.usage ?? [];
  if (list.length === 0) return {};
  if (list.length > MAX_USAGE_MODELS)
    return {
      code: 'INVALID',
      message: `Result.usage of ${r.taskId}: at most ${MAX_USAGE_MODELS} models, got ${list.length}`,
    };
  const tally = new UsageTally();
  for (const [i, u] of list.entries()) {
    const problem = usageProblem(`Result.usage[${i}]`, u);
    if (problem) return { code: 'INVALID', message: `${problem.message} (task ${r.taskId})` };
    const added = tally.add({
      model: u.model,
      inputTokens: u.inputTokens,
      outputTokens: u.outputTokens,
      costNanos: toNanos(u.costUsd),
    });
    if (!added.ok) return { code: 'INVALID', message: `Result.usage[${i}].${added.message} (task ${r.taskId})` };
  }
  return { usage: tally.list() };
}

/** A Result's outcome (output parsed, error bounded, usage checked), or why it cannot be taken. */
export function parseResult(r: Result__Output): ResultOutcome | WireRefusal {
  const usage = resultUsage(r);
  if (isRefusal(usage)) return usage;
  const outcome = parseOutcome(r);
  return isRefusal(outcome) ? outcome : { ...outcome, ...usage };
}

function parseOutcome(r: Result__Output): ResultOutcome | WireRefusal {
  if (r.outcome === 'outputJson') {
    const json = r.outputJson ?? '';
    // Bytes >= UTF-16 length: only a long string needs the exact count.
    if (json.length > MAX_PAYLOAD_BYTES / 3 && Buffer.byteLength(json) > MAX_PAYLOAD_BYTES)
      return { code: 'PAYLOAD_TOO_LARGE', message: `output of ${r.taskId} is over ${MAX_PAYLOAD_BYTES} bytes` };
    try {
      return { ok: true, output: JSON.parse(json || 'null') };
    } catch {
      return { code: 'INVALID', message: `outputJson of ${r.taskId} is not JSON` };
    }
  }
  if (r.outcome === 'error' && r.error)
    return { ok: false, error: { message: r.error.message.slice(0, MAX_ERROR_MESSAGE), retryable: r.error.retryable } };
  if (r.outcome === 'awaitApproval' && r.awaitApproval) {
    const w = r.awaitApproval;
    if (w.onTimeout !== '' && !APPROVAL_TIMEOUT_ACTIONS.includes(w.onTimeout as ApprovalTimeoutAction)) {
      return {
        code: 'INVALID',
        message: `Result.awaitApproval.onTimeout of ${r.taskId}: must be one of ${APPROVAL_TIMEOUT_ACTIONS.join(', ')}, got ${JSON.stringify(w.onTimeout.slice(0, 32))}`,
      };
    }
    const park: ApprovalAsk = {
      ordinal: w.ordinal,
      message: w.message,
      ...(w.timeoutSeconds > 0 && { timeoutSeconds: w.timeoutSeconds }),
      ...(w.onTimeout !== '' && { onTimeout: w.onTimeout as ApprovalTimeoutAction }),
      ...((w.users.length > 0 || w.groups.length > 0) && {
        approvers: { ...(w.users.length > 0 && { users: w.users }), ...(w.groups.length > 0 && { groups: w.groups }) },
      }),
    };
    const problem = approvalAskProblem('Result.awaitApproval', park);
    if (problem) return { code: 'INVALID', message: `${problem} (task ${r.taskId})` };
    // History, not the task's result (as a retryable failure): the task runs again once decided.
    return { ok: false, error: { message: `waiting for approval ${park.ordinal}`, retryable: true }, park };
  }
  return { code: 'INVALID', message: `Result for ${r.taskId} has neither outputJson nor error` };
}

/** The children of a SpawnTasks, or why they cannot be taken (named by field). */
export function spawnedChildren(s: SpawnTasks__Output): SpawnedChild[] | WireRefusal {
  if (s.children.length === 0) return { code: 'INVALID', message: 'SpawnTasks.children: at least one child required' };
  const children: SpawnedChild[] = [];
  const seen = new Map<string, number>();
  for (const [i, c] of s.children.entries()) {
    const field = `SpawnTasks.children[${i}]`;
    if (!isLabel(c.name)) return { code: 'INVALID', message: `${field}.name: "${c.name}" is not a DNS-1123 label` };
    const first = seen.get(c.name);
    if (first !== undefined)
      return { code: 'INVALID', message: `${field}.name: "${c.name}" repeats children[${first}]` };
    if (c.handler.length === 0 || c.handler.length > 253)
      return { code: 'INVALID', message: `${field}.handler: required, at most 253 characters` };
    if (Buffer.byteLength(c.inputJson) > MAX_PAYLOAD_BYTES)
      return { code: 'PAYLOAD_TOO_LARGE', message: `${field}.inputJson: over ${MAX_PAYLOAD_BYTES} bytes` };
    let input: unknown;
    try {
      input = JSON.parse(c.inputJson || 'null');
    } catch {
      return { code: 'INVALID', message: `${field}.inputJson: not JSON` };
    }
    seen.set(c.name, i);
    children.push({ name: c.name, handler: c.handler, input, cost: c.cost || 1 });
  }
  return children;
}

/** Why an AgentMail cannot be relayed on size grounds, or undefined. */
export function checkMailPayload(payloadJson: string): WireRefusal | undefined {
  if (Buffer.byteLength(payloadJson) > MAX_PAYLOAD_BYTES)
    return { code: 'PAYLOAD_TOO_LARGE', message: `mail payload over ${MAX_PAYLOAD_BYTES} bytes` };
  return undefined;
}

export function isRefusal(v: unknown): v is WireRefusal {
  return typeof v === 'object' && v !== null && 'code' in v && 'message' in v && !('spec' in v);
}

/**
 * The lines of a TaskLog as the dispatcher keeps them: at most
 * LOG_MAX_LINES_PER_MESSAGE, each cut at LOG_MAX_LINE_CHARS, times an agent
 * cannot know (before 2000, more than a day ahead) replaced by now.
 */
export function logLines(lines: readonly LogLine__Output[], now = Date.now()): { timeMs: number; text: string }[] {
  return lines.slice(0, LOG_MAX_LINES_PER_MESSAGE).map((l) => {
    const t = Number(l.timeMs);
    const text = String(l.text ?? '');
    return {
      timeMs: Number.isFinite(t) && t > 946_684_800_000 && t < now + 86_400_000 ? t : now,
      text: text.length > LOG_MAX_LINE_CHARS ? `${text.slice(0, LOG_MAX_LINE_CHARS)}${LOG_CUT_MARKER}` : text,
    };
  });
}

/**
 * The streamed output of a TaskLog as the dispatcher keeps it: the text of at most
 * STREAM_MAX_CHUNKS_PER_MESSAGE chunks, in order, each cut at STREAM_MAX_CHUNK_CHARS (marked with
 * LOG_CUT_MARKER: the SDK never sends a longer one); '' when there is none.
 */
export function streamText(chunks: readonly StreamChunk__Output[] | undefined): string {
  if (!chunks || chunks.length === 0) return '';
  let out = '';
  for (const c of chunks.slice(0, STREAM_MAX_CHUNKS_PER_MESSAGE)) {
    const text = String(c.text ?? '');
    out += text.length > STREAM_MAX_CHUNK_CHARS ? `${text.slice(0, STREAM_MAX_CHUNK_CHARS)}${LOG_CUT_MARKER}` : text;
  }
  return out;
}
