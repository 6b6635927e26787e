// Model usage (tokens and cost) as handlers report it with ctx.usage, the wire carries it in a
// Result, and etcd keeps it with the committed result: one shape and one set of bounds for the
// SDK, the dispatcher and the engine.

/** Most models one attempt's Result may name (the SDK refuses more; the dispatcher too). */
export const MAX_USAGE_MODELS = 64;
/** Longest model name. */
export const MAX_MODEL_NAME = 128;
/** Costs are summed as integer nano-dollars: exact, whatever the order results arrive in. */
export const NANOS_PER_USD = 1_000_000_000;
/** The most a cost may be, in nano-dollars (a safe integer: sums of sums stay exact). */
const MAX_COST_NANOS = Number.MAX_SAFE_INTEGER;

/** One model's usage within an attempt, as committed with its result. */
export interface ModelUsage {
  model: string;
  inputTokens: number;
  outputTokens: number;
  /** Cost in nano-dollars (an integer; see NANOS_PER_USD). */
  costNanos: number;
}

export const toNanos = (usd: number): number => Math.round(usd * NANOS_PER_USD);
export const toUsd = (nanos: number): number => nanos / NANOS_PER_USD;

const isCount = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;

/**
 * Why one usage report is malformed, naming the field (`${field}.inputTokens` ...), or undefined.
 * Tokens: non-negative safe integers; costUsd: finite and >= 0; model: 1-128 characters.
 */
export function usageProblem(
  field: string,
  u: { model?: unknown; inputTokens?: unknown; outputTokens?: unknown; costUsd?: unknown },
): { kind: 'type' | 'range'; message: string } | undefined {
  if (typeof u.model !== 'string') return { kind: 'type', message: `${field}.model: must be a string` };
  if (u.model.length < 1 || u.model.length > MAX_MODEL_NAME)
    return { kind: 'range', message: `${field}.model: must be 1-${MAX_MODEL_NAME} characters, got ${u.model.length}` };
  for (const k of ['inputTokens', 'outputTokens'] as const) {
    const v = u[k];
    if (v === undefined) continue;
    if (typeof v !== 'number') return { kind: 'type', message: `${field}.${k}: must be a number` };
    if (!isCount(v))
      return { kind: 'range', message: `${field}.${k}: must be a non-negative safe integer, got ${String(v)}` };
  }
  const c = u.costUsd;
  if (c !== undefined) {
    if (typeof c !== 'number') return { kind: 'type', message: `${field}.costUsd: must be a number` };
    if (!Number.isFinite(c) || c < 0 || toNanos(c) > MAX_COST_NANOS)
      return { kind: 'range', message: `${field}.costUsd: must be a finite number >= 0, got ${String(c)}` };
  }
  return undefined;
}

/** Adds `b` into `a` (same model), or says which sum would pass a safe integer. */
function addInto(a: ModelUsage, b: Omit<ModelUsage, 'model'>): string | undefined {
  const input = a.inputTokens + b.inputTokens;
  const output = a.outputTokens + b.outputTokens;
  const cost = a.costNanos + b.costNanos;
  if (!isCount(input)) return 'inputTokens';
  if (!isCount(output)) return 'outputTokens';
  if (!isCount(cost)) return 'costUsd';
  a.inputTokens = input;
  a.outputTokens = output;
  a.costNanos = cost;
  return undefined;
}

/**
 * Usage summed per model, at most `maxModels` of them: past that, further models are summed
 * under `overflow` (undefined: refused, the add answers false). Order: first seen first.
 */
export class UsageTally {
  private readonly byModel = new Map<string, ModelUsage>();
  private readonly maxModels: number;
  private readonly overflow: string | undefined;

  constructor(maxModels = MAX_USAGE_MODELS, overflow?: string) {
    this.maxModels = maxModels;
    this.overflow = overflow;
  }

  /** Adds one report; false (nothing added) when it names one model too many, or a sum would overflow. */
  add(u: ModelUsage): { ok: true } | { ok: false; message: string } {
    let model = u.model;
    if (!this.byModel.has(model) && this.byModel.size >= this.maxModels) {
      if (this.overflow === undefined)
        return { ok: false, message: `at most ${this.maxModels} models per attempt, and "${model}" would be one more` };
      model = this.overflow;
    }
    const have = this.byModel.get(model) ?? { model, inputTokens: 0, outputTokens: 0, costNanos: 0 };
    const bad = addInto(have, u);
    if (bad) return { ok: false, message: `${bad}: the sum for model "${model}" passes the largest safe integer` };
    this.byModel.set(model, have);
    return { ok: true };
  }

  get size(): number {
    return this.byModel.size;
  }

  list(): ModelUsage[] {
    return [...this.byModel.values()].map((m) => ({ ...m }));
  }
}

/** A sum over models. */
export interface UsageTotals {
  inputTokens: number;
  outputTokens: number;
  costNanos: number;
}

export function totalsOf(models: readonly ModelUsage[]): UsageTotals {
  const t = { inputTokens: 0, outputTokens: 0, costNanos: 0 };
  for (const m of models) {
    t.inputTokens += m.inputTokens;
    t.outputTokens += m.outputTokens;
    t.costNanos += m.costNanos;
  }
  return t;
}

/** "12,345" */
export const formatCount = (n: number): string => n.toLocaleString('en-US');
/** "$1.2345" (up to 6 decimals, at least 2). */
export const formatUsd = (nanos: number): string =>
  `$${toUsd(nanos).toLocaleString('en-US', { minimumFractionDigits: 2, maximumFractionDigits: 6 })}`;
