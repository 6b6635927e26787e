export { Dispatcher, type DispatcherOptions } from './dispatcher.ts';
export {
  type Candidate,
  leastLoaded,
  mostCapacity,
  type PlacementPolicy,
  type PolicyName,
  roundRobin,
} from './placement.ts';
export { type PoolStats, parseWireTaskId, type TaskEvent, type TaskSpec, taskKey, wireTaskId } from './types.ts';
