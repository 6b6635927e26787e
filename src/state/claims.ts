import type { ApprovalAsk } from '../api/approvals.ts';
import type { ModelUsage } from '../lib/usage.ts';
import { ItemRefusedError, isolate, MAX_TXN_OPS, pack } from './batch.ts';
import { type BlobRef, Blobs, fill, spill } from './blobs.ts';
import { FencedError } from './errors.ts';
import { fenceError } from './fence.ts';
import type { LeanCompare, LeanOp } from './lean-txn.ts';
import { decodeJson, type Entry, type Fence, type Session, type StateStore, toEntry } from './store.ts';

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
  /** Where an output over INLINE_BYTES is kept (then `output` is absent in etcd; readers fill it in). */
  outputBlob?: BlobRef;
  error?: { message: string; retryable: boolean };
  /**
   * Model usage the attempt reported (ctx.usage), per model. Committed in the same fenced
   * transaction as the result: counted once, and never for a superseded attempt.
   */
  usage?: ModelUsage[];
  /** The attempt ended in ctx.waitForApproval (a retryable-failure record): what it asks a person. */
  park?: ApprovalAsk;
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

/** A claim (bound to its agent's lease), not a result: the two share the task's key. */
export function isClaimEntry(e: Pick<Entry, 'lease'>): boolean {
  return e.lease !== '0' && e.lease !== '';
}

/** Where claims had keys of their own before they shared the task's result key (nothing writes there now). */
export const LEGACY_CLAIMS = 'claims';

export { MAX_TXN_OPS };

/**
 * Results per group-commit transaction: one compare and one put each (a retryable failure: a put and a
 * delete), plus the fences (or one always-true compare).
 */
export function commitGroupSize(fences: number): number {
  return MAX_TXN_OPS - Math.max(1, fences);
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
  | 'AlreadyClaimed'
  /** etcd refused this item itself (a lease it does not have): the agent behind it must be dropped. */
  | 'LeaseNotFound';

export interface ClaimRefusal {
  ok: false;
  error: FencedError;
  reason: ClaimRefusalReason;
}

/**
 * `stored` is set when what was committed differs from what was asked: a
 * result etcd could not take (too large even in chunks) is committed as a
 * non-retryable failure that says why.
 */
export type CommitOutcome = { ok: true; revision: number; stored?: ResultBody } | ClaimRefusal;
type ResultBody = Omit<TaskResult, 'attempt' | 'agentId' | 'token' | 'committedAt'>;
export type ClaimOutcome = { ok: true; claim: Claim } | ClaimRefusal;

/**
 * Task claims and results, one etcd key per task (results/<ns>/<workflow>/<task>):
 *
 * - a claim creates the key, bound to the agent's lease (compare: the key does not exist, so neither
 *   a claim nor a result is there); its createRevision is the fencing token;
 * - the commit of a final result overwrites that key with the result, not bound to any lease (compare:
 *   the key's modRevision is still the token, i.e. it is the claim, untouched). So a result is committed
 *   at most once, never by an attempt that lost its claim, and a commit deletes nothing: no delete
 *   event for the claims watch, one key and two revisions per task;
 * - a retryable failure goes to attempts/…/<attempt> and the claim is deleted, so a later attempt can claim;
 * - a lease that expires deletes the claims bound to it: the dispatcher watches results/ for deletes.
 *
 * So an entry under results/ is a claim while it is bound to a lease, and a result once it is not.
 * Before this layout claims had keys of their own under claims/ (LEGACY_CLAIMS); nothing writes them now.
 */
export class TaskClaims {
  private readonly store: StateStore;

  constructor(store: StateStore) {
    this.store = store;
  }

  /** The task's one key: its claim while an attempt holds it, then its result (the same key). */
  claimKey(ref: TaskRef): string {
    return this.store.key('results', ref.namespace, ref.workflow, ref.task);
  }

  resultKey(ref: TaskRef): string {
    return this.claimKey(ref);
  }

  /** Where a retryable failure of one attempt is recorded (it does not block the next attempt). */
  attemptKey(ref: TaskRef, attempt: number): string {
    return this.store.key('attempts', ref.namespace, ref.workflow, ref.task, String(attempt));
  }

  /** The task a claim key names (the inverse of claimKey), if `key` is a claim key. */
  refOfClaimKey(key: string): TaskRef | undefined {
    const prefix = `${this.store.key('results')}/`;
    if (!key.startsWith(prefix)) return undefined;
    const [namespace, workflow, task, ...rest] = key.slice(prefix.length).split('/');
    if (!namespace || !workflow || !task || rest.length > 0) return undefined;
    return { namespace, workflow, task };
  }

  /**
   * Deletes `key` if it is a claim of the layout before claims shared their result key (claims/…):
   * found on a lease a re-registering agent brings from before an upgrade. Nothing honours such a
   * claim any more (its attempt is not confirmed, and runs again under a new claim), so it only
   * pins its lease. True if `key` was one and is gone.
   */
  async dropLegacyClaim(key: string, fences: Fence[] = []): Promise<boolean> {
    if (!key.startsWith(`${this.store.key(LEGACY_CLAIMS)}/`)) return false;
    const e = await this.store.get(key);
    if (!e) return true;
    const res = await this.store
      .txn(fences)
      .and(key, 'Mod', '==', e.modRevision)
      .then(this.store.client.delete().key(key))
      .commit();
    return res.succeeded;
  }

  /** Where every claim (and result) lives: the dispatcher watches it for deletes (a lease expiring). */
  claimsPrefix(): string {
    return `${this.store.key('results')}/`;
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
      .then(this.store.client.put(key).value(JSON.stringify({ attempt, agentId })).lease(session.id))
      .commit();
    if (res.succeeded) return { ref, attempt, agentId, token: Number(res.header.revision) };
    throw (await fenceError(this.store, fences)) ?? (await this.explain(ref, undefined)).error;
  }

  /**
   * Claims many tasks in as few transactions as etcd's limits allow (the
   * dispatcher's hot path). Each item may name its own session lease (the
   * agent it goes to). A refused group is retried item by item so each gets
   * its own answer; a group etcd rejects outright because of one item (a
   * lease it does not have) is split until that item is alone, and only it
   * fails (reason LeaseNotFound).
   */
  async claimMany(
    items: { ref: TaskRef; attempt: number; agentId: string; leaseId: string }[],
    fences: Fence[] = [],
  ): Promise<ClaimOutcome[]> {
    type Item = (typeof items)[number];
    const out: ClaimOutcome[] = [];
    const groups = pack(items, () => ({ ops: 1, bytes: 0 }), {
      ops: MAX_TXN_OPS - Math.max(1, fences.length),
      bytes: Number.POSITIVE_INFINITY,
    });
    const claimValue = (it: Item) => JSON.stringify({ attempt: it.attempt, agentId: it.agentId });
    const tryGroup = async (group: Item[]): Promise<ClaimOutcome[]> => {
      const compares: LeanCompare[] = [];
      const ops: LeanOp[] = [];
      for (const it of group) {
        const key = this.claimKey(it.ref);
        compares.push({ key, target: 'create', result: 'equal', value: 0 });
        ops.push({ put: { key, value: claimValue(it), lease: it.leaseId } });
      }
      const res = await this.store.leanTxn(fences, compares, ops);
      if (res.succeeded) {
        const token = res.revision;
        return group.map((it) => ({
          ok: true,
          claim: { ref: it.ref, attempt: it.attempt, agentId: it.agentId, token },
        }));
      }
      const fenced = await fenceError(this.store, fences);
      if (fenced) return group.map(() => ({ ok: false, error: fenced, reason: 'Fenced' }) as const);
      if (group.length > 1) return (await Promise.all(group.map((it) => tryGroup([it])))).flat();
      const it = group[0] as Item;
      // Our own claim from an earlier try whose answer was lost (OutcomeUnknown): it is ours.
      const now = await this.store.get(this.claimKey(it.ref));
      if (now && isClaimEntry(now) && now.value === claimValue(it) && now.lease === it.leaseId) {
        return [
          { ok: true, claim: { ref: it.ref, attempt: it.attempt, agentId: it.agentId, token: now.createRevision } },
        ];
      }
      return [{ ok: false, ...(await this.explain(it.ref, undefined)) }];
    };
    for (const group of groups) {
      const outcomes = await isolate(
        group,
        tryGroup,
        (it) => `claim of ${describeRef(it.ref)} for agent ${it.agentId}`,
      );
      for (const [i, o] of outcomes.entries()) {
        if (!(o instanceof ItemRefusedError)) out.push(o);
        else {
          const key = this.claimKey((group[i] as Item).ref);
          out.push({ ok: false, error: new FencedError(key, o.message), reason: 'LeaseNotFound' });
        }
      }
    }
    return out;
  }

  /** Drops a claim (the dispatcher cancelling or re-queuing an attempt), only if it is still `claim`. */
  async release(claim: Claim, fences: Fence[] = []): Promise<boolean> {
    const key = this.claimKey(claim.ref);
    // modRevision still the token: the claim itself, not a result committed under it.
    const res = await this.store
      .txn(fences)
      .and(key, 'Mod', '==', claim.token)
      .then(this.store.client.delete().key(key))
      .commit();
    return res.succeeded;
  }

  /**
   * The claim created at revision `token`, read from etcd's history: proof
   * that an attempt really held the task once (for a result whose claim has
   * since gone with its lease). Undefined if there was none, or if that
   * revision has been compacted away.
   */
  async claimedAt(ref: TaskRef, token: number): Promise<Claim | undefined> {
    if (!Number.isSafeInteger(token) || token <= 0) return undefined;
    let res: Awaited<ReturnType<ReturnType<StateStore['client']['get']>['exec']>>;
    try {
      res = await this.store.client.get(this.claimKey(ref)).revision(String(token)).exec();
    } catch (err) {
      if (/compacted|future revision/i.test((err as Error).message)) return undefined;
      throw err;
    }
    const kv = res.kvs[0];
    if (!kv || Number(kv.create_revision) !== token) return undefined;
    const v = decodeJson(toEntry(kv), isClaimValue, 'a task claim {attempt, agentId}');
    return { ref, attempt: v.attempt, agentId: v.agentId, token };
  }

  async current(ref: TaskRef): Promise<Claim | undefined> {
    const e = await this.store.get(this.claimKey(ref));
    if (!e || !isClaimEntry(e)) return undefined;
    const v = decodeJson(e, isClaimValue, 'a task claim {attempt, agentId}');
    return { ref, attempt: v.attempt, agentId: v.agentId, token: e.createRevision };
  }

  /**
   * Makes tasks of a workflow claimable again for a retry of the workflow: a
   * committed failure of one of `tasks` moves to its attempt's history key
   * (attempts/…/<attempt>, where retryable failures are kept) and its result
   * key goes, in transactions that compare the result unchanged and the
   * fences. Committed successes stay: a retry never re-runs what succeeded.
   * Returns how many failures were moved.
   */
  async reopen(namespace: string, workflow: string, tasks: ReadonlySet<string>, fences: Fence[]): Promise<number> {
    const prefix = `${this.store.key('results', namespace, workflow)}/`;
    const failures: { key: string; target: string; value: string; modRevision: number }[] = [];
    for (const e of await this.store.listPaged(prefix, 256)) {
      const task = e.key.slice(prefix.length);
      if (!tasks.has(task) || isClaimEntry(e)) continue;
      const r = decodeJson(e, isResult, 'a task result');
      if (r.ok) continue;
      const ref = { namespace, workflow, task };
      failures.push({
        key: e.key,
        target: this.attemptKey(ref, r.attempt),
        value: e.value,
        modRevision: e.modRevision,
      });
    }
    const groups = pack(failures, (f) => ({ ops: 2, bytes: f.value.length + f.key.length + f.target.length + 256 }), {
      ops: MAX_TXN_OPS - Math.max(1, fences.length),
      bytes: this.store.maxTxnBytes,
    });
    for (const group of groups) {
      let b = this.store.txn(fences);
      const ops = [];
      for (const f of group) {
        b = b.and(f.key, 'Mod', '==', f.modRevision);
        ops.push(this.store.client.put(f.target).value(f.value), this.store.client.delete().key(f.key));
      }
      const res = await b.then(...ops).commit();
      if (res.succeeded) continue;
      const fenced = await fenceError(this.store, fences);
      throw fenced ?? new FencedError(prefix, 'a failed result changed while it was being moved aside for a retry');
    }
    return failures.length;
  }

  /**
   * Every ended attempt of a workflow's tasks, by task instance, oldest first: the
   * retryable failures kept under attempts/ and the committed result (outputs left out).
   */
  async history(namespace: string, workflow: string, task?: string): Promise<Map<string, TaskResult[]>> {
    const out = new Map<string, TaskResult[]>();
    const add = (t: string, e: Entry) => {
      if (isClaimEntry(e)) return; // an attempt running now: not history yet
      let r: TaskResult;
      try {
        r = decodeJson(e, isResult, 'a task result');
      } catch {
        return; // a record this reader cannot judge is not history worth failing a listing for
      }
      const { output: _o, outputBlob: _b, ...rest } = r;
      const list = out.get(t) ?? [];
      list.push(rest);
      out.set(t, list);
    };
    const results = this.store.key('results', namespace, workflow);
    const attempts = this.store.key('attempts', namespace, workflow);
    const [rs, as] = await Promise.all(
      task === undefined
        ? [this.store.listPaged(`${results}/`, 1024), this.store.listPaged(`${attempts}/`, 1024)]
        : [
            this.store.get(`${results}/${task}`).then((e) => (e ? [e] : [])),
            this.store.listPaged(`${attempts}/${task}/`, 1024),
          ],
    );
    for (const e of as) {
      const [t] = e.key.slice(attempts.length + 1).split('/');
      if (t) add(t, e);
    }
    for (const e of rs) add(e.key.slice(results.length + 1), e);
    for (const list of out.values()) list.sort((a, b) => a.attempt - b.attempt);
    return out;
  }

  /** The committed result, its output read back from its blob if it has one. */
  async result(ref: TaskRef): Promise<TaskResult | undefined> {
    const e = await this.store.get(this.resultKey(ref));
    if (!e || isClaimEntry(e)) return undefined;
    const r = decodeJson(e, isResult, 'a task result');
    return fill(new Blobs(this.store), ref.namespace, ref.workflow, r, ['output'], e.key);
  }

  /** Commits one result under its claim. Throws FencedError if the claim is no longer current. */
  async commit(claim: Claim, result: ResultBody, fences: Fence[] = []): Promise<number> {
    const [outcome] = await this.commitMany([{ claim, result }], fences);
    if (!outcome?.ok) throw outcome?.error ?? new FencedError(this.claimKey(claim.ref), 'not committed');
    return outcome.revision;
  }

  /**
   * Group commit: many results in as few transactions as etcd's limits
   * (operations and bytes) allow. An output or error over INLINE_BYTES is
   * written as a blob first and the result refers to it. If a group's
   * transaction fails (one stale claim fails the whole group), its items are
   * committed one by one so each gets its own answer; a result etcd refuses
   * even alone is committed as a non-retryable failure naming the problem.
   * Re-committing after an unknown outcome is safe: the compares let it
   * apply once, and a result already committed under the same claim is
   * reported as committed.
   */
  async commitMany(items: { claim: Claim; result: ResultBody }[], fences: Fence[] = []): Promise<CommitOutcome[]> {
    type Prepared = { claim: Claim; result: ResultBody; target: string; value: string };
    const blobs = new Blobs(this.store);
    const committedAt = new Date().toISOString();
    const prepared: Prepared[] = [];
    for (const { claim, result } of items) {
      const { namespace, workflow } = claim.ref;
      const body = await spill(blobs, namespace, workflow, result, ['output'], fences);
      const value: TaskResult = {
        ...body,
        attempt: claim.attempt,
        agentId: claim.agentId,
        token: claim.token,
        committedAt,
      };
      // A retryable failure is history, not the task's result: the next attempt may still claim.
      const target = isFinal(result) ? this.resultKey(claim.ref) : this.attemptKey(claim.ref, claim.attempt);
      prepared.push({ claim, result, target, value: JSON.stringify(value) });
    }
    // A final result overwrites the claim (one put, no lease); a retryable failure is a put under
    // attempts/ and the claim's delete. Either way one compare: the claim is still the token's, untouched.
    const final = (p: Prepared) => p.target === this.claimKey(p.claim.ref);
    const groups = pack(
      prepared,
      (p) => ({ ops: final(p) ? 1 : 2, bytes: p.value.length + 2 * p.target.length + 256 }),
      { ops: MAX_TXN_OPS - Math.max(1, fences.length), bytes: this.store.maxTxnBytes },
    );
    const tryGroup = async (group: Prepared[]): Promise<CommitOutcome[]> => {
      const compares: LeanCompare[] = [];
      const ops: LeanOp[] = [];
      for (const p of group) {
        const claimKey = this.claimKey(p.claim.ref);
        compares.push({ key: claimKey, target: 'mod', result: 'equal', value: p.claim.token });
        ops.push({ put: { key: p.target, value: p.value } });
        if (!final(p)) ops.push({ delete: { key: claimKey } });
      }
      const res = await this.store.leanTxn(fences, compares, ops);
      if (res.succeeded) return group.map(() => ({ ok: true, revision: res.revision }));
      const fenced = await fenceError(this.store, fences);
      if (fenced) return group.map(() => ({ ok: false, error: fenced, reason: 'Fenced' }) as const);
      if (group.length > 1) {
        const out: CommitOutcome[] = [];
        for (const p of group) out.push(...(await tryGroup([p])));
        return out;
      }
      const p = group[0] as Prepared;
      const mine = await this.committedUnder(p.claim, p.target);
      if (mine) return [{ ok: true, revision: mine.revision, stored: mine.stored }];
      return [{ ok: false, ...(await this.explain(p.claim.ref, p.claim)) }];
    };
    const out: CommitOutcome[] = [];
    for (const group of groups) {
      const outcomes = await isolate(group, tryGroup, (p) => `result of ${describeRef(p.claim.ref)}`);
      for (const [i, o] of outcomes.entries()) {
        if (!(o instanceof ItemRefusedError)) {
          out.push(o);
          continue;
        }
        const p = group[i] as Prepared;
        const stored: ResultBody = {
          ok: false,
          error: { message: `the result could not be stored: ${o.message}`, retryable: false },
          // What the attempt used was used all the same.
          ...(p.result.usage && { usage: p.result.usage }),
        };
        const [again] = await this.commitMany([{ claim: p.claim, result: stored }], fences);
        out.push(again?.ok ? { ...again, stored } : (again as CommitOutcome));
      }
    }
    return out;
  }

  /** What `claim` committed to `target`, and at which revision, if it did (an earlier try whose answer was lost). */
  private async committedUnder(
    claim: Claim,
    target: string,
  ): Promise<{ revision: number; stored: ResultBody } | undefined> {
    const e = await this.store.get(target);
    if (!e || isClaimEntry(e)) return undefined;
    const v = decodeJson(e, isResult, 'a task result');
    if (v.token !== claim.token || v.attempt !== claim.attempt) return undefined;
    const {
      attempt: _a,
      agentId: _g,
      token: _t,
      committedAt: _c,
      ...body
    } = await fill(new Blobs(this.store), claim.ref.namespace, claim.ref.workflow, v, ['output'], e.key);
    return { revision: e.modRevision, stored: body };
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

function describeRef(ref: TaskRef): string {
  return `task ${ref.task} of workflow ${ref.namespace}/${ref.workflow}`;
}
