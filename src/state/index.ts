// agentflow's etcd state layer: the only module that talks to etcd.
export { KeptLease, type LeaseHolder, LeaseKeeper, type LeaseKeeperOptions } from './agent-leases.ts';
export {
  AUDIT_APPEND_TRIES,
  AUDIT_BATCH,
  AUDIT_BLOCK_BYTES,
  type AuditEntry,
  type AuditEvent,
  AuditLog,
  auditHash,
  canonicalJson,
  type VerifyResult,
} from './audit.ts';
export {
  type Claim,
  type ClaimOutcome,
  type ClaimRefusal,
  type ClaimRefusalReason,
  COMMIT_GROUP,
  type CommitOutcome,
  commitGroupSize,
  isClaimEntry,
  MAX_TXN_OPS,
  TaskClaims,
  type TaskRef,
  type TaskResult,
} from './claims.ts';
export {
  ConflictError,
  EtcdUnavailableError,
  FencedError,
  LeaseLostError,
  OutcomeUnknownError,
  RequestTooLargeError,
  StateDecodeError,
  StateError,
} from './errors.ts';
export { Elections, type Held, type Leader, Locks, LockTimeoutError } from './lock.ts';
export { type MemberInfo, Membership } from './membership.ts';
export {
  MAX_MEMO_BYTES,
  MAX_MEMO_ENTRIES,
  MAX_MEMO_OUTPUT_BYTES,
  MemoCache,
  type MemoEntry,
  type MemoSummary,
  MemoTooLargeError,
} from './memo-cache.ts';
export {
  type JsonValue,
  MAX_VALUE_BYTES,
  type Scope,
  SharedState,
  type Versioned,
  type WriteOptions,
} from './shared-state.ts';
export { type Entry, type Fence, Session, StateStore, type StoreOptions } from './store.ts';
export { type ChangeEvent, ResumableWatch, type WatchHandlers } from './watch.ts';
export { type RunRecord, type TaskRecord, WorkflowRecords } from './workflow-records.ts';
