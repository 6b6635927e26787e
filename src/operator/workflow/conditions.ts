import { type Condition, removeCondition, setCondition } from '../kube/conditions.ts';

// A Workflow's conditions: one meaning per type, so `kubectl wait
// --for=condition=Succeeded` (or Failed) is all a CI job needs, and a reason
// that says what happened.
//
//   Running     True while tasks are dispatched or run (also while some wait for an agent)
//   Succeeded   True once every task succeeded (or was skipped)
//   Failed      True once the run ended without success; reason: TaskFailed, Timeout,
//               Cancelled, ExpressionFailed, SpawnRefused, InvalidSpec, PoolNotFound,
//               HandlerNotServed, NoAgentConnected, CostOverCapacity
//   Suspended   True while spec.suspend holds new tasks back
//   Waiting     True while something the run needs is missing; reason: PoolNotFound, TemplateNotFound,
//               HandlerNotServed, NoAgentConnected, CostOverCapacity. It fails with that
//               reason once it has waited the operator's --waiting-timeout
//   SpecApplied False when the spec was edited after the run started (not applied)
//   BudgetExceeded  True while the usage the handlers reported is over spec.budget; reason: MaxTokens,
//               MaxCostUsd (the limit passed), message: the figure. Present once a workflow has a budget

export const CONDITION_TYPES = [
  'Running',
  'Succeeded',
  'Failed',
  'Suspended',
  'Waiting',
  'SpecApplied',
  'BudgetExceeded',
] as const;

/** Why a workflow waits: each names what is missing. */
export type WaitReason =
  | 'PoolNotFound'
  | 'TemplateNotFound'
  | 'HandlerNotServed'
  | 'NoAgentConnected'
  | 'CostOverCapacity';

export type WorkflowOutcome =
  | { phase: 'Pending' | 'Running' | 'Suspended'; message: string }
  | { phase: 'Succeeded'; message: string }
  | { phase: 'Failed' | 'Cancelled'; reason: string; message: string };

export interface ConditionInput {
  outcome: WorkflowOutcome;
  waiting?: { reason: WaitReason; message: string };
  /** Undefined: leave SpecApplied as it is. */
  specApplied?: { ok: true; message: string } | { ok: false; reason: string; message: string };
  generation?: number;
  /** Undefined: leave BudgetExceeded as it is (a workflow that never had a budget has none). */
  budget?: { over: { limit: 'maxTokens' | 'maxCostUsd'; message: string } | undefined; hasBudget: boolean };
}

/** The BudgetExceeded condition's reason for the limit passed. */
export const budgetReason = (limit: 'maxTokens' | 'maxCostUsd'): string =>
  limit === 'maxTokens' ? 'MaxTokens' : 'MaxCostUsd';

/** The conditions of a workflow, from its previous list (transition times kept where status did not change). */
export function workflowConditions(
  prev: readonly Condition[] | undefined,
  c: ConditionInput,
  now = new Date(),
): Condition[] {
  const g = c.generation !== undefined ? { observedGeneration: c.generation } : {};
  // Completed (True on any end) was replaced by Succeeded and Failed.
  let list = removeCondition([...(prev ?? [])], 'Completed');
  const set = (type: string, status: boolean, reason: string, message: string) => {
    list = setCondition(list, { type, status: status ? 'True' : 'False', reason, message, ...g }, now);
  };
  const o = c.outcome;
  const done = o.phase === 'Succeeded' || o.phase === 'Failed' || o.phase === 'Cancelled';
  set(
    'Running',
    o.phase === 'Running',
    o.phase === 'Running' ? 'TasksRunning' : o.phase === 'Pending' ? 'NotStarted' : o.phase,
    o.phase === 'Running' ? o.message || 'tasks are running' : o.message || `the workflow is ${o.phase}`,
  );
  set(
    'Succeeded',
    o.phase === 'Succeeded',
    o.phase === 'Succeeded' ? 'AllTasksSucceeded' : done ? (o as { reason: string }).reason : 'InProgress',
    o.phase === 'Succeeded' ? o.message || 'every task succeeded' : done ? o.message : 'not finished',
  );
  const failed = o.phase === 'Failed' || o.phase === 'Cancelled';
  set(
    'Failed',
    failed,
    failed ? o.reason : 'NoFailure',
    failed ? o.message : o.phase === 'Succeeded' ? 'every task succeeded' : 'nothing has failed the run',
  );
  set(
    'Suspended',
    o.phase === 'Suspended',
    o.phase === 'Suspended' ? 'Suspended' : 'NotSuspended',
    o.phase === 'Suspended' ? o.message : 'spec.suspend is not set',
  );
  if (c.waiting && !done) set('Waiting', true, c.waiting.reason, c.waiting.message);
  else set('Waiting', false, 'NotWaiting', done ? `the workflow is ${o.phase}` : 'nothing is missing');
  if (c.specApplied) {
    const s = c.specApplied;
    set('SpecApplied', s.ok, s.ok ? 'Applied' : s.reason, s.message);
  }
  if (c.budget) {
    const { over, hasBudget } = c.budget;
    if (over) set('BudgetExceeded', true, budgetReason(over.limit), over.message);
    else
      set(
        'BudgetExceeded',
        false,
        hasBudget ? 'WithinBudget' : 'NoBudget',
        hasBudget ? 'the usage is within spec.budget' : 'spec.budget is not set',
      );
  }
  return list;
}

/** Since when a condition has held True (its lastTransitionTime), if it does. */
export function trueSince(list: readonly Condition[] | undefined, type: string): number | undefined {
  const c = list?.find((x) => x.type === type);
  return c?.status === 'True' ? Date.parse(c.lastTransitionTime) : undefined;
}
