import { FencedError } from './errors.ts';
import { fenceError } from './fence.ts';
import { decodeJson, type Fence, type Session, type StateStore } from './store.ts';

export interface TaskRef {
  namespace: string;
  workflow: string;
  /** Task instance id within the workflow, e.g. "research.3". */
  task: string;
}

/**
 * Proof that an agent holds attempt `attempt` of a task. `token` is the claim
 * key's createRevision: the fencing token every write about the attempt
 * carries. The claim key is bound to the agent's lease, so it vanishes when
 * the agent dies.
 */
export interface Claim {
  ref: TaskRef;
  attempt: number;
  agentId: string;
  token: number;
}

export interface TaskResult {
  attempt: number;
  agentId: string;
  /** Fencing token of the claim the result was committed under. */
  token: number;
  ok: boolean;
  output?: unknown;
  error?: { message: string; retryable: boolean };
  committedAt: string;
}

interface ClaimValue {
  attempt: number;
  agentId: string;
}

/** Success or a non-retryable failure ends the task; a retryable failure ends only the attempt. */
function isFinal(r: { ok: boolean; error?: { retryable: boolean } }): boolean {
  return r.ok || r.error?.retryable === false;
}

const isClaimValue = (v: unknown): v is ClaimValue =>
  typeof v === 'object' &&
  v !== null &&
  Number.isInteger((v as ClaimValue).attempt) &&
  typeof (v as ClaimValue).agentId === 'string';
const isResult = (v: unknown): v is TaskResult =>
  typeof v === 'object' &&
  v !== null &&
  Number.isInteger((v as TaskResult).attempt) &&
  typeof (v as TaskResult).ok === 'boolean';

/** etcd's default --max-txn-ops: it bounds the compares and each branch's operations. */
export const MAX_TXN_OPS = 128;

/** Results per group-commit transaction: 2 compares and 2 operations each, plus the fences (or one always-true compare). */
export function commitGroupSize(fences: number): number {
  return Math.floor((MAX_TXN_OPS - Math.max(1, fences)) / 2);
}

export const COMMIT_GROUP = commitGroupSize(1);

/** Why a claim or a commit was refused: one value per cause, for callers that must tell them apart. */
export type ClaimRefusalReason =
  /** The caller's own fence (the leader's key) no longer holds. */
  | 'Fenced'
  /** The task already has a committed result. */
  | 'AlreadyCommitted'
  /** The attempt's claim is gone (lease expired, released). */
  | 'ClaimGone'
  /** Another attempt holds the claim now. */
  | 'Superseded'
  /** Someone else holds a claim (claiming). */
  | 'AlreadyClaimed';

export interface ClaimRefusal {
  ok: false;
  error: FencedError;
  reason: ClaimRefusalReason;
}

export type CommitOutcome = { ok: true; revision: number } | ClaimRefusal;
export type ClaimOutcome = { ok: true; claim: Claim } | ClaimRefusal;

/**
 * Task claims and results. A result is committed only by a transaction that
 * compares the claim's createRevision (the fencing token) and that no result
 * exists yet; the same transaction deletes the claim. So a result is committed
 * at most once, and never by an attempt that lost its claim. A retryable
 * failure is recorded under attempts/ instead, so a later attempt can claim.
 */
export class TaskClaims {
  private readonly store: StateStore;

  constructor(store: StateStore) {
    this.store = store;
  }

  claimKey(ref: TaskRef): string {
    return this.store.key('claims', ref.namespace, ref.workflow, ref.task);
  }

  resultKey(ref: TaskRef): string {
    return this.store.key('results', ref.namespace, ref.workflow, ref.task);
  }

  /** Where a retryable failure of one attempt is recorded (it does not block the next attempt). */
  attemptKey(ref: TaskRef, attempt: number): string {
    return this.store.key('attempts', ref.namespace, ref.workflow, ref.task, String(attempt));
  }

  /** Prefix of every claim of a workflow (the dispatcher watches it for lease expiry). */
  claimsPrefix(namespace: string, workflow: string): string {
    return `${this.store.key('claims', namespace, workflow)}/`;
  }

  /**
   * Claims attempt `attempt` for `agentId`, bound to `session`'s lease. Fails
   * (FencedError) if the task already has a claim or a committed result, or if
   * a fence (e.g. the dispatcher's leadership) no longer holds.
   */
  async claim(ref: TaskRef, attempt: number, agentId: string, session: Session, fences: Fence[] = []): Promise<Claim> {
    session.assertAlive();
    const key = this.claimKey(ref);
    const res = await this.store
      .txn(fences)
      .and(key, 'Create', '==', 0)
      .and(this.resultKey(ref), 'Version', '==', 0)
      .then(this.store.client.put(key).value(JSON.stringify({ attempt, agentId })).lease(session.id))
      .commit();
    if (res.succeeded) return { ref, attempt, agentId, token: Number(res.header.revision) };
    throw (await fenceError(this.store, fences)) ?? (await this.explain(ref, undefined)).error;
  }

  /**
   * Claims many tasks in one transaction per group (the dispatcher's hot
   * path). Each item may name its own session lease (the agent it goes to).
   * A refused group is retried item by item so each gets its own answer.
   */
  async claimMany(
    items: { ref: TaskRef; attempt: number; agentId: string; leaseId: string }[],
    fences: Fence[] = [],
  ): Promise<ClaimOutcome[]> {
    const out: ClaimOutcome[] = [];
    const size = commitGroupSize(fences.length);
    for (let i = 0; i < items.length; i += size) {
      const group = items.slice(i, i + size);
      let b = this.store.txn(fences);
      const ops = [];
      for (const it of group) {
        const key = this.claimKey(it.ref);
        b = b.and(key, 'Create', '==', 0).and(this.resultKey(it.ref), 'Version', '==', 0);
        ops.push(
          this.store.client
            .put(key)
            .value(JSON.stringify({ attempt: it.attempt, agentId: it.agentId }))
            .lease(it.leaseId),
        );
      }
      const res = await b.then(...ops).commit();
      if (res.succeeded) {
        const token = Number(res.header.revision);
        for (const it of group)
          out.push({ ok: true, claim: { ref: it.ref, attempt: it.attempt, agentId: it.agentId, token } });
        continue;
      }
      const fenced = await fenceError(this.store, fences);
      for (const it of group) {
        if (fenced) {
          out.push({ ok: false, error: fenced, reason: 'Fenced' });
          continue;
        }
        const single = await this.store
          .txn(fences)
          .and(this.claimKey(it.ref), 'Create', '==', 0)
          .and(this.resultKey(it.ref), 'Version', '==', 0)
          .then(
            this.store.client
              .put(this.claimKey(it.ref))
              .value(JSON.stringify({ attempt: it.attempt, agentId: it.agentId }))
              .lease(it.leaseId),
          )
          .commit();
        if (single.succeeded) {
          out.push({
            ok: true,
            claim: { ref: it.ref, attempt: it.attempt, agentId: it.agentId, token: Number(single.header.revision) },
          });
        } else {
          out.push({ ok: false, ...(await this.explain(it.ref, undefined)) });
        }
      }
    }
    return out;
  }

  /** Drops a claim (the dispatcher cancelling or re-queuing an attempt), only if it is still `claim`. */
  async release(claim: Claim, fences: Fence[] = []): Promise<boolean> {
    const key = this.claimKey(claim.ref);
    const res = await this.store
      .txn(fences)
      .and(key, 'Create', '==', claim.token)
      .then(this.store.client.delete().key(key))
      .commit();
    return res.succeeded;
  }

  async current(ref: TaskRef): Promise<Claim | undefined> {
    const e = await this.store.get(this.claimKey(ref));
    if (!e) return undefined;
    const v = decodeJson(e, isClaimValue, 'a task claim {attempt, agentId}');
    return { ref, attempt: v.attempt, agentId: v.agentId, token: e.createRevision };
  }

  async result(ref: TaskRef): Promise<TaskResult | undefined> {
    const e = await this.store.get(this.resultKey(ref));
    return e ? decodeJson(e, isResult, 'a task result') : undefined;
  }

  /** Commits one result under its claim. Throws FencedError if the claim is no longer current. */
  async commit(
    claim: Claim,
    result: Omit<TaskResult, 'attempt' | 'agentId' | 'token' | 'committedAt'>,
    fences: Fence[] = [],
  ): Promise<number> {
    const [outcome] = await this.commitMany([{ claim, result }], fences);
    if (!outcome?.ok) throw outcome?.error ?? new FencedError(this.claimKey(claim.ref), 'not committed');
    return outcome.revision;
  }

  /**
   * Group commit: many results in one transaction per group (63 without fences). If a
   * group's transaction fails (one stale claim fails the whole group), its
   * items are committed one by one so each gets its own answer.
   */
  async commitMany(
    items: { claim: Claim; result: Omit<TaskResult, 'attempt' | 'agentId' | 'token' | 'committedAt'> }[],
    fences: Fence[] = [],
  ): Promise<CommitOutcome[]> {
    const out: CommitOutcome[] = [];
    const size = commitGroupSize(fences.length);
    for (let i = 0; i < items.length; i += size) {
      const group = items.slice(i, i + size);
      const committedAt = new Date().toISOString();
      let b = this.store.txn(fences);
      const ops = [];
      for (const { claim, result } of group) {
        const claimKey = this.claimKey(claim.ref);
        const resultKey = this.resultKey(claim.ref);
        b = b.and(claimKey, 'Create', '==', claim.token).and(resultKey, 'Version', '==', 0);
        const value: TaskResult = {
          ...result,
          attempt: claim.attempt,
          agentId: claim.agentId,
          token: claim.token,
          committedAt,
        };
        // A retryable failure is history, not the task's result: the next attempt may still claim.
        const target = isFinal(result) ? resultKey : this.attemptKey(claim.ref, claim.attempt);
        ops.push(this.store.client.put(target).value(JSON.stringify(value)), this.store.client.delete().key(claimKey));
      }
      const res = await b.then(...ops).commit();
      if (res.succeeded) {
        for (const _ of group) out.push({ ok: true, revision: Number(res.header.revision) });
        continue;
      }
      const fenced = await fenceError(this.store, fences);
      for (const item of group) {
        if (fenced) {
          out.push({ ok: false, error: fenced, reason: 'Fenced' });
          continue;
        }
        if (group.length === 1) {
          out.push({ ok: false, ...(await this.explain(item.claim.ref, item.claim)) });
          continue;
        }
        const [single] = await this.commitMany([item], fences);
        out.push(single as CommitOutcome);
      }
    }
    return out;
  }

  /** Why a claim or commit was refused, in words an operator can act on. */
  private async explain(
    ref: TaskRef,
    mine: Claim | undefined,
  ): Promise<{ error: FencedError; reason: ClaimRefusalReason }> {
    const key = this.claimKey(ref);
    const result = await this.result(ref);
    const refuse = (reason: ClaimRefusalReason, message: string) => ({ error: new FencedError(key, message), reason });
    if (result) {
      return refuse(
        'AlreadyCommitted',
        `a result is already committed (attempt ${result.attempt} by agent ${result.agentId})`,
      );
    }
    const now = await this.current(ref);
    if (!now)
      return refuse(
        'ClaimGone',
        `attempt ${mine?.attempt ?? '?'} no longer holds the claim (its lease expired or it was released)`,
      );
    if (mine) {
      return refuse(
        'Superseded',
        `superseded: attempt ${mine.attempt} lost the claim to attempt ${now.attempt} of agent ${now.agentId}`,
      );
    }
    return refuse('AlreadyClaimed', `already claimed by attempt ${now.attempt} of agent ${now.agentId}`);
  }
}
