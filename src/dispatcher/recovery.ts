import type { InFlight__Output } from '../gen/agentflow/v1/InFlight.ts';
import type { Claim, TaskRef, TaskResult } from '../state/index.ts';
import { claimantId, parseWireTaskId, taskKey } from './types.ts';

// What the dispatcher believes after a restart, a reconnect or a restore comes from etcd, never from the
// agent's word alone: these functions ask the claims (narrowed to what they read, so a unit test can
// stand in for etcd) and say what an agent's report means.

/** The part of TaskClaims recovery reads. */
export interface ClaimBook {
  current(ref: TaskRef): Promise<Claim | undefined>;
  result(ref: TaskRef): Promise<TaskResult | undefined>;
  /** The claim this token created, from etcd's history (an attempt whose lease went while it ran). */
  claimedAt(ref: TaskRef, token: number): Promise<Claim | undefined>;
}

/** An attempt a re-registering agent reported, confirmed by its claim in etcd. */
export interface HeldAttempt {
  inf: InFlight__Output;
  ref: TaskRef;
  key: string;
  claim: Claim;
  cost: number;
}

/**
 * Which of the attempts an agent reports in its Register it still holds: the claim in etcd names this
 * agent, this attempt and this token. `reported` has every well-formed task the agent named (held or
 * not): the dispatcher re-queues what it assigned that is not among them.
 */
export async function confirmInFlight(
  claims: Pick<ClaimBook, 'current'>,
  namespace: string,
  agentId: string,
  inFlight: InFlight__Output[],
): Promise<{ held: HeldAttempt[]; reported: Set<string> }> {
  const held: HeldAttempt[] = [];
  const reported = new Set<string>();
  for (const inf of inFlight) {
    const ref = parseWireTaskId(namespace, inf.taskId);
    if (!ref) continue;
    const key = taskKey(ref);
    reported.add(key);
    const claim = await claims.current(ref);
    if (
      !claim ||
      claim.token !== Number(inf.token) ||
      claim.agentId !== claimantId(namespace, agentId, ref) ||
      claim.attempt !== inf.attempt
    )
      continue;
    held.push({ inf, ref, key, claim, cost: inf.cost > 0 ? inf.cost : 1 });
  }
  return { held, reported };
}

/** What a Result for an attempt this dispatcher does not track means, as etcd tells it. */
export type UntrackedVerdict =
  /** The claim is this agent's for this attempt and token: commit it. */
  | { kind: 'commit'; claim: Claim }
  /** Already committed under this token: acknowledge, so the agent forgets it. */
  | { kind: 'committed' }
  /** The agent held the task once, but it has been replaced: it may forget the result. */
  | { kind: 'superseded' }
  /** Nobody holds it and no result exists, but this agent held exactly this attempt: hold it for the re-queue. */
  | { kind: 'orphan' }
  /** Not this agent's. */
  | { kind: 'unknown' };

export async function judgeUntracked(
  claims: ClaimBook,
  ref: TaskRef,
  r: { attempt: number; token: number | string },
  agentId: string,
): Promise<UntrackedVerdict> {
  const token = Number(r.token);
  const claim = await claims.current(ref);
  if (claim && claim.token === token && claim.attempt === r.attempt && claim.agentId === agentId)
    return { kind: 'commit', claim };
  const done = await claims.result(ref);
  if (done && done.token === token && done.agentId === agentId) return { kind: 'committed' };
  if ((claim && claim.agentId === agentId) || (done && done.agentId === agentId)) return { kind: 'superseded' };
  // Nobody holds the task and it has no result. If etcd's history shows this agent held exactly this
  // attempt under this token (its claim went with its lease while it was away), the work is done.
  const was = !claim && !done ? await claims.claimedAt(ref, token) : undefined;
  if (was && was.agentId === agentId && was.attempt === r.attempt) return { kind: 'orphan' };
  return { kind: 'unknown' };
}
