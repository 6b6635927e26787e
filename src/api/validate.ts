import type { StaticType } from './expression-types.ts';
import { analyzeExpression, parseTemplate, quoteExpression, type Scope } from './expressions.ts';
import { DNS_LABEL } from './schema-helpers.ts';
import { DEFAULT_TASK_COST, type WorkflowSpec, type WorkflowTask } from './workflow.ts';

/** One thing wrong with a manifest, located by its field path. */
export interface Problem {
  /** e.g. spec.tasks[2].input.query */
  field: string;
  /** CamelCase, for a condition's reason. */
  reason:
    | 'InvalidSpec'
    | 'DependencyCycle'
    | 'PoolNotFound'
    | 'TemplateNotFound'
    | 'HandlerNotServed'
    | 'CostOverCapacity'
    | 'InvalidExpression';
  message: string;
}

/** What the controller knows about the pools of the workflow's namespace. */
export interface PoolInfo {
  /** Handlers the pool declares; undefined or empty: any handler. */
  handlers?: string[];
  /** spec.agent.capacity: the task slots of one agent. A task that costs more can never run. */
  capacity?: number;
}

export interface ValidateOptions {
  /**
   * The pools the workflow may use, by reference: those of its namespace by name, those other
   * namespaces share with it as `namespace/name`. Omit to skip the pool and handler checks.
   */
  pools?: ReadonlyMap<string, PoolInfo>;
}

/** "spec.tasks[1].dependsOn: dependency cycle: a -> b -> a" */
export function formatProblem(p: Problem): string {
  return `${p.field}: ${p.message}`;
}

/**
 * Everything about a Workflow spec that the API server's schema cannot judge:
 * dependency cycles, unknown pools and handlers, tasks that cost more slots
 * than an agent of their pool has, and expressions that do not parse, read what
 * is not in scope, apply operators to types they do not take, yield what their
 * field cannot use (a `when` that is not a bool, a `forEach` that is not a
 * list: as far as types are known, see src/api/expression-types.ts) or are
 * estimated over the CEL cost budget (MAX_EXPRESSION_COST).
 * Returns every problem, not just the first: several in one expression included.
 * Repeats the schema's cheap structural checks, since a spec may come from
 * anywhere (an older CRD, a unit test, etcd).
 */
export function validateWorkflowSpec(spec: WorkflowSpec, opts: ValidateOptions = {}): Problem[] {
  const problems: Problem[] = [];
  const add = (field: string, reason: Problem['reason'], message: string) => problems.push({ field, reason, message });
  const tasks: WorkflowTask[] = Array.isArray(spec?.tasks) ? spec.tasks : [];
  if (tasks.length === 0) add('spec.tasks', 'InvalidSpec', 'at least one task is required');

  const index = new Map<string, number>();
  tasks.forEach((t, i) => {
    const f = `spec.tasks[${i}]`;
    if (typeof t.name !== 'string' || !new RegExp(DNS_LABEL).test(t.name) || t.name.length > 63) {
      add(
        `${f}.name`,
        'InvalidSpec',
        `"${t.name}" is not a DNS-1123 label (lower-case alphanumerics and "-", at most 63)`,
      );
    } else if (index.has(t.name)) {
      add(`${f}.name`, 'InvalidSpec', `duplicate task name "${t.name}" (also spec.tasks[${index.get(t.name)}])`);
    } else {
      index.set(t.name, i);
    }
  });
  tasks.forEach((t, i) => {
    const f = `spec.tasks[${i}]`;
    if ((t.handler === undefined) === (t.approval === undefined)) {
      add(
        `${f}.handler`,
        'InvalidSpec',
        'a task needs exactly one of handler (an agent runs it) and approval (a person decides)',
      );
    }
    if (t.approval && (t.forEach !== undefined || t.input !== undefined || t.retryPolicy || t.timeoutSeconds)) {
      add(
        `${f}.approval`,
        'InvalidSpec',
        'an approval task takes no forEach, input, retryPolicy or timeoutSeconds (use approval.timeoutSeconds)',
      );
    }
  });
  tasks.forEach((t, i) => {
    (t.dependsOn ?? []).forEach((d, j) => {
      if (d === t.name) add(`spec.tasks[${i}].dependsOn[${j}]`, 'InvalidSpec', 'a task cannot depend on itself');
      else if (!index.has(d)) add(`spec.tasks[${i}].dependsOn[${j}]`, 'InvalidSpec', `no task named "${d}"`);
    });
  });

  for (const cycle of findCycles(tasks, index)) {
    const first = cycle[0] as string;
    add(
      `spec.tasks[${index.get(first)}].dependsOn`,
      'DependencyCycle',
      `dependency cycle: ${[...cycle, first].join(' -> ')}`,
    );
  }

  if (opts.pools) {
    tasks.forEach((t, i) => {
      if (t.approval) return; // no agent runs it
      const pool = t.pool ?? spec.pool;
      const field = t.pool ? `spec.tasks[${i}].pool` : 'spec.pool';
      if (!pool) {
        add(`spec.tasks[${i}].pool`, 'PoolNotFound', 'no pool: set spec.pool or the task pool');
        return;
      }
      const info = opts.pools?.get(pool);
      if (!info) {
        // One problem per missing pool, not per task that uses it.
        if (!problems.some((p) => p.reason === 'PoolNotFound' && p.message.startsWith(`AgentPool "${pool}"`))) {
          add(
            field,
            'PoolNotFound',
            pool.includes('/')
              ? `AgentPool "${pool}" does not exist or is not shared with the workflow's namespace (the pool's spec.sharing.namespaces)`
              : `AgentPool "${pool}" not found in the workflow's namespace`,
          );
        }
        return;
      }
      if (t.handler !== undefined && info.handlers?.length && !info.handlers.includes(t.handler)) {
        add(
          `spec.tasks[${i}].handler`,
          'HandlerNotServed',
          `AgentPool "${pool}" serves no handler "${t.handler}" (it serves: ${info.handlers.join(', ')})`,
        );
      }
      const cost = t.cost ?? DEFAULT_TASK_COST;
      if (info.capacity !== undefined && cost > info.capacity) {
        add(
          `spec.tasks[${i}].cost`,
          'CostOverCapacity',
          `${cost} slots is more than an agent of AgentPool "${pool}" has (spec.agent.capacity ${info.capacity}): the task could never run`,
        );
      }
    });
  }

  const deps = transitiveDependencies(tasks, index);
  const allTasks = new Set(index.keys());
  tasks.forEach((t, i) => {
    const f = `spec.tasks[${i}]`;
    const readable = deps.get(t.name) ?? new Set<string>();
    const check = (field: string, expr: string, scope: Scope, expect?: 'bool' | 'list') => {
      const analysis = analyzeExpression(expr, scope, expect);
      for (const p of analysis.problems) {
        add(field, 'InvalidExpression', `${JSON.stringify(quoteExpression(expr))}: ${p}`);
      }
      return analysis.type;
    };
    // What the engine binds inputs to (a spec without inputs has none).
    const inputs = spec.inputs ?? {};
    let itemType: StaticType | undefined;
    if (t.forEach !== undefined) {
      const list = check(`${f}.forEach`, t.forEach, { readableTasks: readable, allTasks, item: false, inputs }, 'list');
      itemType = list?.kind === 'list' ? list.elem : undefined;
    }
    const inner: Scope = {
      readableTasks: readable,
      allTasks,
      item: t.forEach !== undefined,
      inputs,
      ...(itemType && { itemType }),
    };
    if (t.when !== undefined) check(`${f}.when`, t.when, inner, 'bool');
    const walk = (value: unknown, path: string): void => {
      if (typeof value === 'string') {
        let parts: ReturnType<typeof parseTemplate>;
        try {
          parts = parseTemplate(value);
        } catch (err) {
          add(path, 'InvalidExpression', (err as Error).message);
          return;
        }
        for (const p of parts) if ('expr' in p) check(path, p.expr, inner);
      } else if (Array.isArray(value)) {
        for (const [k, v] of value.entries()) walk(v, `${path}[${k}]`);
      } else if (value && typeof value === 'object') {
        for (const [k, v] of Object.entries(value)) walk(v, `${path}.${k}`);
      }
    };
    walk(t.input ?? {}, `${f}.input`);
    if (t.approval?.message !== undefined) walk(t.approval.message, `${f}.approval.message`);
    // Keys are evaluated at submit, with the task's rendered input (and index) bound too.
    const keyScope: Scope = { ...inner, item: false, key: true };
    if (t.concurrency) check(`${f}.concurrency.key`, t.concurrency.key, keyScope);
    (t.rateLimits ?? []).forEach((r, k) => {
      if (r.key !== undefined) check(`${f}.rateLimits[${k}].key`, r.key, keyScope);
    });
    if (t.memoize?.key !== undefined) check(`${f}.memoize.key`, t.memoize.key, keyScope);
  });
  return problems;
}

/** Each elementary cycle once, as task names in dependency order, starting from its earliest task. */
function findCycles(tasks: WorkflowTask[], index: Map<string, number>): string[][] {
  const color = new Map<string, 'grey' | 'black'>();
  const stack: string[] = [];
  const cycles: string[][] = [];
  const seen = new Set<string>();
  const dfs = (name: string): void => {
    color.set(name, 'grey');
    stack.push(name);
    const t = tasks[index.get(name) as number];
    for (const d of t?.dependsOn ?? []) {
      if (!index.has(d) || d === name) continue;
      if (color.get(d) === 'grey') {
        const cycle = stack.slice(stack.indexOf(d));
        // Rotate to start at the task listed first, so the report is stable.
        const start = cycle.reduce((a, b) => ((index.get(a) as number) <= (index.get(b) as number) ? a : b));
        const k = cycle.indexOf(start);
        const rotated = [...cycle.slice(k), ...cycle.slice(0, k)];
        const key = rotated.join('>');
        if (!seen.has(key)) {
          seen.add(key);
          cycles.push(rotated);
        }
      } else if (!color.has(d)) {
        dfs(d);
      }
    }
    stack.pop();
    color.set(name, 'black');
  };
  for (const name of index.keys()) if (!color.has(name)) dfs(name);
  return cycles;
}

/** For each task, every task it depends on directly or indirectly. */
function transitiveDependencies(tasks: WorkflowTask[], index: Map<string, number>): Map<string, Set<string>> {
  const memo = new Map<string, Set<string>>();
  const visit = (name: string, path: Set<string>): Set<string> => {
    const known = memo.get(name);
    if (known) return known;
    const out = new Set<string>();
    const t = tasks[index.get(name) as number];
    for (const d of t?.dependsOn ?? []) {
      if (!index.has(d) || path.has(d)) continue; // unknown deps and cycles are reported elsewhere
      out.add(d);
      for (const x of visit(d, new Set([...path, d]))) out.add(x);
    }
    memo.set(name, out);
    return out;
  };
  for (const name of index.keys()) visit(name, new Set([name]));
  return memo;
}
