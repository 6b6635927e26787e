import { parse } from '@bufbuild/cel';
import { inferType, type StaticType } from './expression-types.ts';
import { MAX_EXPRESSION_COST } from './workflow.ts';

// Task inputs, forEach and when use CEL (the language Kubernetes validation
// rules use). In input values, a string that is exactly `${{ expr }}` becomes
// the expression's value (of any JSON type); `${{ expr }}` inside a longer
// string is interpolated as text.

export type TemplatePart = { text: string } | { expr: string; offset: number };

export class ExpressionError extends Error {
  override name = 'ExpressionError';
}

/** Splits a string into literal text and `${{ ... }}` expressions. */
export function parseTemplate(s: string): TemplatePart[] {
  const parts: TemplatePart[] = [];
  let i = 0;
  while (i < s.length) {
    const open = s.indexOf('${{', i);
    if (open < 0) {
      parts.push({ text: s.slice(i) });
      break;
    }
    if (open > i) parts.push({ text: s.slice(i, open) });
    const close = s.indexOf('}}', open + 3);
    if (close < 0) throw new ExpressionError(`unterminated \${{ at character ${open + 1}: add the closing }}`);
    const expr = s.slice(open + 3, close).trim();
    if (!expr) throw new ExpressionError(`empty \${{ }} at character ${open + 1}`);
    parts.push({ expr, offset: open });
    i = close + 2;
  }
  return parts;
}

/** What an expression may refer to. */
export interface Scope {
  /** Names of tasks whose outputs this expression may read (transitive dependencies). */
  readableTasks: ReadonlySet<string>;
  /** Every task of the workflow (for a precise message on a non-dependency). */
  allTasks: ReadonlySet<string>;
  /** `item` is bound (inside a forEach task's input and when). */
  item: boolean;
  /**
   * spec.inputs, when known (`{}` for a spec without inputs): the cost estimate
   * uses the sizes of its lists, the type check the types of its values.
   */
  inputs?: unknown;
  /** The type of `item`, when the forEach list's is known. */
  itemType?: StaticType;
  /** `input` (the task's rendered input) and `index` are bound: a concurrency or rate-limit key. */
  key?: boolean;
}

export interface AstNode {
  id?: bigint;
  exprKind: { case: string | undefined; value?: unknown };
}

export interface Comprehension {
  iterVar: string;
  iterVar2: string;
  accuVar: string;
  iterRange: AstNode;
  accuInit: AstNode;
  loopCondition: AstNode;
  loopStep: AstNode;
  result: AstNode;
}

/** An expression quoted in a message: long ones (a bomb is 2 KB) are cut so the reason after them stays readable. */
export function quoteExpression(expr: string, max = 120): string {
  return expr.length <= max ? expr : `${expr.slice(0, max)}… (${expr.length} characters)`;
}

// ---------------------------------------------------------------------------
// Cost model. @bufbuild/cel (0.6) has no cost tracking: nothing in it counts or
// bounds an evaluation, and it has no interrupt and no evaluation hook. So
// agentflow bounds evaluation itself, in the spirit of the API server's cost
// tracker (cel-go's), in units of about one evaluation step:
// - every AST node evaluated costs 1, a function call CALL_UNITS; a
//   comprehension (all, exists, exists_one, map, filter) evaluates its condition
//   and step once per element it visits;
// - at run time a function call also costs the size of the data it works on:
//   one unit per list element or map entry and per 16 characters (bytes) of a
//   string, for its arguments and its result (src/workflow/expressions.ts);
// - at run time, converting the result to JSON costs 3 units per element, and
//   strings.replace 4 per occurrence (measured against a node's time).
// Units are calibrated on this interpreter: ~35 ns each once the JIT is warm.
// Two checks use it: a static estimate here, at validation, refuses an
// expression whose own text makes it too costly (list literals and lists of
// spec.inputs at their sizes, every comprehension visiting every element, as
// the API server's estimate assumes); lists only known at run time (task
// outputs, item) count as empty there. A run-time meter (the same counts, made
// while evaluating) stops any evaluation that spends the budget, whatever the
// data, within tens of milliseconds. Both budgets are MAX_EXPRESSION_COST.

/** The sub-expressions of a node, comprehensions aside (their parts have different costs). */
export const children = (node: AstNode | undefined): AstNode[] => {
  if (!node) return [];
  const { case: kind, value } = node.exprKind;
  switch (kind) {
    case 'selectExpr':
      return [(value as { operand?: AstNode }).operand].filter((n): n is AstNode => n !== undefined);
    case 'callExpr': {
      const call = value as { target?: AstNode; args: AstNode[] };
      return call.target ? [call.target, ...call.args] : call.args;
    }
    case 'listExpr':
      return (value as { elements: AstNode[] }).elements;
    case 'structExpr':
      return (value as { entries: { keyKind: { case: string; value?: unknown }; value?: AstNode }[] }).entries.flatMap(
        (e) => [...(e.keyKind.case === 'mapKey' ? [e.keyKind.value as AstNode] : []), ...(e.value ? [e.value] : [])],
      );
    default:
      return []; // constants and identifiers; comprehensions are handled by the callers
  }
};

/**
 * Nodes evaluated once whenever `node` is: its own nodes, where a comprehension
 * inside counts its range, initial value and result but not its condition and
 * step (the comprehension pays for those per element itself).
 */
export function ownNodes(node: AstNode | undefined): number {
  if (!node) return 0;
  if (node.exprKind.case === 'comprehensionExpr') {
    const c = node.exprKind.value as Comprehension;
    return 1 + ownNodes(c.iterRange) + ownNodes(c.accuInit) + ownNodes(c.result);
  }
  let n = nodeCost(node);
  for (const c of children(node)) n += ownNodes(c);
  return n;
}

/**
 * Operators the interpreter evaluates itself (logic, choice, indexing): as cheap
 * as any node. Every other call goes through overload resolution, which takes
 * about four times as long (measured on @bufbuild/cel: ~25 ns a node, ~100 ns a call).
 */
const INLINE_CALLS = new Set([
  '_&&_',
  '_||_',
  '_?_:_',
  '@not_strictly_false',
  '__not_strictly_false__',
  '_[_]',
  '_[?_]',
  '_?._',
]);
export const CALL_UNITS = 4;

/** The units of one node itself, its sub-expressions aside. */
function nodeCost(node: AstNode): number {
  if (node.exprKind.case !== 'callExpr') return 1;
  return INLINE_CALLS.has((node.exprKind.value as { function: string }).function) ? 1 : CALL_UNITS;
}

/** What one element visited by a comprehension costs, nested comprehensions aside. */
export function iterationCost(c: Comprehension): number {
  return Math.max(1, ownNodes(c.loopCondition) + ownNodes(c.loopStep));
}

export const identName = (node: AstNode | undefined): string | undefined =>
  node?.exprKind.case === 'identExpr' ? (node.exprKind.value as { name: string }).name : undefined;

/** The size of the list (or map) a node yields, when the expression or spec.inputs says it; else 0. */
function knownSize(node: AstNode, inputs: unknown, locals: ReadonlySet<string>): number {
  const { case: kind, value } = node.exprKind;
  switch (kind) {
    case 'listExpr':
      return (value as { elements: unknown[] }).elements.length;
    case 'structExpr':
      return (value as { entries: unknown[] }).entries.length;
    case 'comprehensionExpr': {
      // map and filter start from [] and yield at most one element per element visited.
      const c = value as Comprehension;
      const init = c.accuInit.exprKind;
      if (init.case === 'listExpr' && (init.value as { elements: unknown[] }).elements.length === 0) {
        return knownSize(c.iterRange, inputs, locals);
      }
      return 0;
    }
    case 'callExpr': {
      const call = value as { function: string; target?: AstNode; args: AstNode[] };
      if (call.function === '_+_' && !call.target && call.args.length === 2) {
        return call.args.reduce((n, a) => n + knownSize(a, inputs, locals), 0);
      }
      return 0;
    }
    case 'selectExpr':
    case 'identExpr': {
      // inputs.a.b: a list of spec.inputs.
      const path: string[] = [];
      let n: AstNode | undefined = node;
      while (n?.exprKind.case === 'selectExpr') {
        const sel = n.exprKind.value as { operand?: AstNode; field: string; testOnly?: boolean };
        if (sel.testOnly) return 0;
        path.unshift(sel.field);
        n = sel.operand;
      }
      if (identName(n) !== 'inputs' || locals.has('inputs')) return 0;
      let v: unknown = inputs;
      for (const f of path) {
        if (v === null || typeof v !== 'object' || Array.isArray(v) || !Object.hasOwn(v, f)) return 0;
        v = (v as Record<string, unknown>)[f];
      }
      if (Array.isArray(v)) return v.length;
      return v !== null && typeof v === 'object' ? Object.keys(v).length : 0;
    }
    default:
      return 0;
  }
}

/**
 * The static cost estimate of an expression (see the cost model above): what it
 * costs when every comprehension visits every element of the lists whose sizes
 * its text (or spec.inputs) gives.
 */
export function estimateCost(root: AstNode, inputs?: unknown): number {
  const cost = (node: AstNode | undefined, locals: ReadonlySet<string>): number => {
    if (!node) return 0;
    if (node.exprKind.case === 'comprehensionExpr') {
      const c = node.exprKind.value as Comprehension;
      const inner = new Set(locals);
      for (const v of [c.iterVar, c.iterVar2, c.accuVar]) if (v) inner.add(v);
      const perElement = cost(c.loopCondition, inner) + cost(c.loopStep, inner);
      return (
        1 +
        cost(c.iterRange, locals) +
        cost(c.accuInit, locals) +
        cost(c.result, inner) +
        knownSize(c.iterRange, inputs, locals) * perElement
      );
    }
    let n = nodeCost(node);
    for (const c of children(node)) n += cost(c, locals);
    return n;
  };
  return cost(root, new Set());
}

/** 1,000,000; an astronomical estimate as 1.2e+30. */
export const formatCost = (n: number): string =>
  n < 1e15 ? String(Math.ceil(n)).replace(/\B(?=(\d{3})+$)/g, ',') : n.toExponential(1);

/** What analyzeExpression finds out about an expression. */
export interface ExpressionAnalysis {
  /** Names of the tasks whose outputs it reads. */
  reads: Set<string>;
  /** Its type, as far as it is known (see src/api/expression-types.ts); undefined: dyn. */
  type: StaticType | undefined;
  /** Everything wrong with it, each a sentence; empty if nothing is. */
  problems: string[];
}

/**
 * Parses a CEL expression and checks, reporting every problem rather than the
 * first: that it refers only to the variables in scope (inputs,
 * tasks.<dependency>.output and, in fan-out tasks, item), that what it does is
 * defined for the types that are known (see src/api/expression-types.ts), that
 * it yields a bool or a list when `expect` says so, and that its estimated cost
 * is within the budget.
 */
export function analyzeExpression(expr: string, scope: Scope, expect?: 'bool' | 'list'): ExpressionAnalysis {
  const reads = new Set<string>();
  const problems: string[] = [];
  const report = (p: string) => {
    if (!problems.includes(p)) problems.push(p);
  };
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(expr);
  } catch (err) {
    report(`does not parse: ${(err as Error).message.replace(/^<input>:/, 'at ')}`);
    return { reads, type: undefined, problems };
  }
  const root = parsed.expr as unknown as AstNode;
  // Reports what the expression reads that is not in scope; returns nothing, so
  // that every problem is found, not just the first.
  const visit = (node: AstNode | undefined, locals: ReadonlySet<string>): void => {
    if (!node) return;
    const { case: kind, value } = node.exprKind;
    switch (kind) {
      case 'identExpr': {
        const name = (value as { name: string }).name;
        if (locals.has(name) || name === 'inputs') return;
        if ((name === 'input' || name === 'index') && scope.key) return;
        if (name === 'item') {
          if (!scope.item) report('item is only defined in tasks with forEach');
        } else if (name === 'tasks') {
          report('use tasks.<name>.output to read a task output');
        } else {
          const available = [
            'inputs',
            'tasks',
            ...(scope.item ? ['item'] : []),
            ...(scope.key ? ['input', 'index'] : []),
          ];
          report(`undeclared reference to "${name}" (available: ${available.join(', ')})`);
        }
        return;
      }
      case 'selectExpr': {
        const sel = value as { operand?: AstNode; field: string };
        const operand = sel.operand;
        if (identName(operand) === 'tasks' && !locals.has('tasks')) {
          // tasks.<name> on its own: its only field is output.
          report(`use tasks.${sel.field}.output to read the output of task "${sel.field}"`);
          return;
        }
        const inner =
          operand?.exprKind.case === 'selectExpr'
            ? (operand.exprKind.value as { operand?: AstNode; field: string })
            : undefined;
        if (inner && identName(inner.operand) === 'tasks' && !locals.has('tasks')) {
          const task = inner.field;
          if (sel.field !== 'output') report(`tasks.${task} has no field "${sel.field}" (only output)`);
          else if (!scope.allTasks.has(task)) report(`no task named "${task}"`);
          else if (!scope.readableTasks.has(task)) {
            report(`reads tasks.${task}.output but "${task}" is not a dependency of this task (add it to dependsOn)`);
          } else reads.add(task);
          return;
        }
        visit(operand, locals);
        return;
      }
      case 'callExpr': {
        const call = value as { target?: AstNode; args: AstNode[] };
        visit(call.target, locals);
        for (const a of call.args) visit(a, locals);
        return;
      }
      case 'listExpr':
        for (const e of (value as { elements: AstNode[] }).elements) visit(e, locals);
        return;
      case 'structExpr':
        for (const entry of (value as { entries: { keyKind: { case: string; value?: unknown }; value: AstNode }[] })
          .entries) {
          if (entry.keyKind.case === 'mapKey') visit(entry.keyKind.value as AstNode, locals);
          visit(entry.value, locals);
        }
        return;
      case 'comprehensionExpr': {
        const c = value as Comprehension;
        visit(c.iterRange, locals);
        visit(c.accuInit, locals);
        const inner = new Set(locals);
        for (const v of [c.iterVar, c.iterVar2, c.accuVar]) if (v) inner.add(v);
        visit(c.loopCondition, inner);
        visit(c.loopStep, inner);
        visit(c.result, inner);
        return;
      }
      default:
        return; // constants
    }
  };
  visit(root, new Set());
  const typed = inferType(parsed as { expr?: AstNode; sourceInfo?: unknown }, {
    inputs: scope.inputs,
    ...(scope.itemType && { item: scope.itemType }),
  });
  for (const p of typed.problems) report(p);
  if (expect && typed.type && typed.type.kind !== expect) {
    report(`must yield a ${expect}, not ${typed.type.kind}`);
  }
  const estimate = estimateCost(root, scope.inputs);
  if (estimate > MAX_EXPRESSION_COST) {
    report(
      `estimated cost ${formatCost(estimate)} is over the budget of ${formatCost(MAX_EXPRESSION_COST)} CEL cost units ` +
        '(nested comprehensions multiply the sizes of their lists): iterate over fewer or shorter lists',
    );
  }
  return { reads, type: typed.type, problems };
}

/**
 * analyzeExpression for callers that want an exception: returns the task names
 * the expression reads; throws ExpressionError naming every problem.
 */
export function checkExpression(expr: string, scope: Scope, expect?: 'bool' | 'list'): Set<string> {
  const { reads, problems } = analyzeExpression(expr, scope, expect);
  if (problems.length > 0) throw new ExpressionError(problems.join('; '));
  return reads;
}
