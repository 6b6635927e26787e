export {
  type AgentAuth,
  AgentAuthError,
  type AgentIdentity,
  type Grant,
  REFUSAL_STATUS,
  type RefusalReason,
  type RegisterClaim,
} from './auth.ts';
export { Dispatcher, type DispatcherOptions } from './dispatcher.ts';
export {
  type Candidate,
  leastLoaded,
  mostCapacity,
  type PlacementPolicy,
  type PolicyName,
  roundRobin,
} from './placement.ts';
export { IllegalTransitionError, type TaskEventName, type TaskPhase, type WireErrorCode } from './task-state.ts';
export { type PoolStats, parseWireTaskId, type TaskEvent, type TaskSpec, taskKey, wireTaskId } from './types.ts';
