import { type Budget, DEFAULT_BUDGET_ACTION, MAX_STATUS_USAGE_MODELS, type WorkflowStatus } from '../api/workflow.ts';
import {
  formatCount,
  formatUsd,
  type ModelUsage,
  toNanos,
  totalsOf,
  toUsd,
  UsageTally,
  type UsageTotals,
} from '../lib/usage.ts';
import type { TaskRecord } from '../state/index.ts';

// The engine's usage sums: per task instance (saved in its TaskRecord), per spec task and per
// workflow (recomputed from the records after a failover, so they stay exact), and the budget.

/** Models one instance's record keeps; more are summed as OTHER_MODEL (records stay small). */
const MAX_RECORD_MODELS = 64;
/** Models a run's sum keeps apart; more are summed as OTHER_MODEL. */
const MAX_RUN_MODELS = 1024;
/** Where usage of models past a bound is summed. */
export const OTHER_MODEL = 'other';

export type StatusUsage = NonNullable<WorkflowStatus['usage']>;
type Figures = { inputTokens: number; outputTokens: number; costUsd: number };

const figures = (t: UsageTotals): Figures => ({
  inputTokens: t.inputTokens,
  outputTokens: t.outputTokens,
  costUsd: toUsd(t.costNanos),
});

/**
 * Counts one committed result's usage into an instance's record, unless that attempt was counted
 * already (a result reported again after a failover). Returns what was added (empty: nothing).
 */
export function countAttempt(
  rec: Pick<TaskRecord, 'usage'>,
  attempt: number,
  models: readonly ModelUsage[] | undefined,
): ModelUsage[] {
  if (!models || models.length === 0) return [];
  const u = rec.usage ?? { attempts: [], models: [] };
  if (u.attempts.includes(attempt)) return [];
  const tally = new UsageTally(MAX_RECORD_MODELS, OTHER_MODEL);
  for (const m of u.models) tally.add(m);
  const added: ModelUsage[] = [];
  for (const m of models) if (tally.add(m).ok) added.push(m);
  rec.usage = { attempts: [...u.attempts, attempt].sort((a, b) => a - b), models: tally.list() };
  return added;
}

/** A run's usage: per spec task and in all, kept as results are counted. */
export class RunUsage {
  private readonly all = new UsageTally(MAX_RUN_MODELS, OTHER_MODEL);
  private readonly byTemplate = new Map<string, UsageTotals>();

  add(template: string, models: readonly ModelUsage[]): void {
    if (models.length === 0) return;
    for (const m of models) this.all.add(m);
    const t = this.byTemplate.get(template) ?? { inputTokens: 0, outputTokens: 0, costNanos: 0 };
    const add = totalsOf(models);
    t.inputTokens += add.inputTokens;
    t.outputTokens += add.outputTokens;
    t.costNanos += add.costNanos;
    this.byTemplate.set(template, t);
  }

  get totals(): UsageTotals {
    return totalsOf(this.all.list());
  }

  get empty(): boolean {
    return this.all.size === 0;
  }

  /** status.usage: the totals and the costliest models (ties: more tokens, then by name). */
  status(): StatusUsage | undefined {
    if (this.empty) return undefined;
    const byModel = this.all
      .list()
      .sort(
        (a, b) =>
          b.costNanos - a.costNanos ||
          b.inputTokens + b.outputTokens - (a.inputTokens + a.outputTokens) ||
          (a.model < b.model ? -1 : a.model > b.model ? 1 : 0),
      )
      .slice(0, MAX_STATUS_USAGE_MODELS)
      .map((m) => ({ model: m.model, ...figures(m) }));
    return { ...figures(this.totals), byModel };
  }

  /** A spec task's usage for its summary, if it has any. */
  ofTemplate(template: string): Figures | undefined {
    const t = this.byTemplate.get(template);
    return t ? figures(t) : undefined;
  }
}

/** Why usage is over a budget, in words naming the figure; undefined while within it (or without one). */
export function budgetExceeded(
  t: UsageTotals,
  budget: Budget | undefined,
): { limit: 'maxTokens' | 'maxCostUsd'; message: string } | undefined {
  if (!budget) return undefined;
  const tokens = t.inputTokens + t.outputTokens;
  if (budget.maxTokens !== undefined && tokens > budget.maxTokens) {
    return {
      limit: 'maxTokens',
      message: `used ${formatCount(tokens)} tokens of a budget of ${formatCount(budget.maxTokens)} (spec.budget.maxTokens)`,
    };
  }
  if (budget.maxCostUsd !== undefined && t.costNanos > toNanos(budget.maxCostUsd)) {
    return {
      limit: 'maxCostUsd',
      message: `used ${formatUsd(t.costNanos)} of a budget of ${formatUsd(toNanos(budget.maxCostUsd))} (spec.budget.maxCostUsd)`,
    };
  }
  return undefined;
}

export const budgetAction = (b: Budget | undefined) => b?.action ?? DEFAULT_BUDGET_ACTION;
