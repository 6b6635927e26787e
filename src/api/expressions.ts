import { parse } from '@bufbuild/cel';

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
}

interface AstNode {
  exprKind: { case: string | undefined; value?: unknown };
}

/**
 * Parses a CEL expression and checks that it refers only to the variables in
 * scope: inputs, tasks.<dependency>.output and (in fan-out tasks) item.
 * Returns the task names it reads. Throws ExpressionError with the reason.
 */
export function checkExpression(expr: string, scope: Scope): Set<string> {
  let root: AstNode;
  try {
    root = parse(expr).expr as unknown as AstNode;
  } catch (err) {
    throw new ExpressionError(`does not parse: ${(err as Error).message.replace(/^<input>:/, 'at ')}`);
  }
  const reads = new Set<string>();
  const visit = (node: AstNode | undefined, locals: ReadonlySet<string>): void => {
    if (!node) return;
    const { case: kind, value } = node.exprKind;
    switch (kind) {
      case 'identExpr': {
        const name = (value as { name: string }).name;
        if (locals.has(name)) return;
        if (name === 'inputs') return;
        if (name === 'item') {
          if (!scope.item) throw new ExpressionError('item is only defined in tasks with forEach');
          return;
        }
        if (name === 'tasks') throw new ExpressionError('use tasks.<name>.output to read a task output');
        throw new ExpressionError(
          `undeclared reference to "${name}" (available: inputs, tasks${scope.item ? ', item' : ''})`,
        );
      }
      case 'selectExpr': {
        const sel = value as { operand?: AstNode; field: string };
        const operand = sel.operand;
        if (
          operand?.exprKind.case === 'identExpr' &&
          (operand.exprKind.value as { name: string }).name === 'tasks' &&
          !locals.has('tasks')
        ) {
          // tasks.<name> on its own: its only field is output.
          throw new ExpressionError(`use tasks.${sel.field}.output to read the output of task "${sel.field}"`);
        }
        const inner =
          operand?.exprKind.case === 'selectExpr'
            ? (operand.exprKind.value as { operand?: AstNode; field: string })
            : undefined;
        const innerOperand = inner?.operand;
        if (
          inner &&
          innerOperand?.exprKind.case === 'identExpr' &&
          (innerOperand.exprKind.value as { name: string }).name === 'tasks' &&
          !locals.has('tasks')
        ) {
          const task = inner.field;
          if (sel.field !== 'output') {
            throw new ExpressionError(`tasks.${task} has no field "${sel.field}" (only output)`);
          }
          if (!scope.allTasks.has(task)) throw new ExpressionError(`no task named "${task}"`);
          if (!scope.readableTasks.has(task)) {
            throw new ExpressionError(
              `reads tasks.${task}.output but "${task}" is not a dependency of this task (add it to dependsOn)`,
            );
          }
          reads.add(task);
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
        const c = value as {
          iterVar: string;
          iterVar2: string;
          accuVar: string;
          iterRange: AstNode;
          accuInit: AstNode;
          loopCondition: AstNode;
          loopStep: AstNode;
          result: AstNode;
        };
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
  return reads;
}
