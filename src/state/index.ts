// agentflow's etcd state layer: the only module that talks to etcd.
export {
  type Claim,
  COMMIT_GROUP,
  type CommitOutcome,
  commitGroupSize,
  MAX_TXN_OPS,
  TaskClaims,
  type TaskRef,
  type TaskResult,
} from './claims.ts';
export { ConflictError, FencedError, LeaseLostError, StateDecodeError, StateError } from './errors.ts';
export { Elections, type Held, type Leader, Locks, LockTimeoutError } from './lock.ts';
export { type MemberInfo, Membership } from './membership.ts';
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
