import { readFileSync } from 'node:fs';
import { parse } from '@bufbuild/cel';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { type AstNode, estimateCost } from '../../../src/api/expressions.ts';
import { formatProblem, type PoolInfo, validateWorkflowSpec } from '../../../src/api/validate.ts';
import {
  DEFAULT_MAX_FOREACH_ITEMS,
  DEFAULT_MAX_SPAWNED_CHILDREN,
  MAX_EXPRESSION_COST,
  type WorkflowSpec,
  type WorkflowTask,
} from '../../../src/api/workflow.ts';

// What validation refuses before anything runs: an expression whose own text
// (list literals, lists in spec.inputs) makes it cost more than the CEL budget,
// and a task that costs more slots than an agent of its pool has.

const spec = (tasks: Partial<WorkflowTask>[], extra: Partial<WorkflowSpec> = {}): WorkflowSpec => ({
  pool: 'p',
  tasks: tasks.map((t) => ({ handler: 'h', ...t }) as WorkflowTask),
  ...extra,
});
const messages = (s: WorkflowSpec, pools?: Map<string, PoolInfo>) =>
  validateWorkflowSpec(s, pools ? { pools } : {}).map(formatProblem);
const literal = (n: number) => `[${Array.from({ length: n }, (_, i) => i).join(',')}]`;
const estimate = (expr: string, inputs?: unknown) => estimateCost(parse(expr).expr as unknown as AstNode, inputs);

describe('the static cost estimate', () => {
  it('refuses a nested comprehension over literal lists, naming the field, the estimate and the budget', () => {
    const bomb = `${literal(150)}.map(a, ${literal(150)}.map(b, ${literal(150)}.map(c, a + b + c)))`;
    const problems = validateWorkflowSpec(
      spec([{ name: 'a' }, { name: 'b', dependsOn: ['a'], when: `size(${bomb}) > 0` }]),
    );
    expect(problems).toHaveLength(1);
    expect(problems[0]?.field).toBe('spec.tasks[1].when');
    expect(problems[0]?.reason).toBe('InvalidExpression');
    expect(problems[0]?.message).toMatch(
      /^"size\(\[0,1,2,.{90,}… \(\d+ characters\)": estimated cost [\d,]+ is over the budget of 500,000 CEL cost units \(nested comprehensions multiply the sizes of their lists\): iterate over fewer or shorter lists$/,
    );
    const cost = Number(/estimated cost ([\d,]+)/.exec(problems[0]?.message ?? '')?.[1]?.replaceAll(',', ''));
    expect(cost).toBeGreaterThan(150 ** 3 * 10);
  });

  it('uses the sizes of lists in spec.inputs', () => {
    const xs = Array.from({ length: 1000 }, (_, i) => i);
    expect(
      messages(
        spec([{ name: 'a', input: { pairs: '${{ inputs.xs.map(a, inputs.xs.map(b, a * b)) }}' } }], { inputs: { xs } }),
      ),
    ).toEqual([
      'spec.tasks[0].input.pairs: "inputs.xs.map(a, inputs.xs.map(b, a * b))": estimated cost 13,012,005 is over the budget of 500,000 CEL cost units (nested comprehensions multiply the sizes of their lists): iterate over fewer or shorter lists',
    ]);
  });

  it('accepts what is within budget, and what only run-time data could make costly', () => {
    expect(
      messages(
        spec([
          { name: 'a' },
          {
            name: 'b',
            dependsOn: ['a'],
            // 25³ elements: ~270,000 units.
            when: `size(${literal(25)}.map(a, ${literal(25)}.map(b, ${literal(25)}.map(c, a + b + c)))) > 0`,
            // Task outputs count as empty: the run-time meter bounds these.
            forEach: 'tasks.a.output.map(x, tasks.a.output.map(y, [x, y]))',
          },
        ]),
      ),
    ).toEqual([]);
  });

  it('counts every element of a literal visited by each nested comprehension', () => {
    // 1 node for the constant; a comprehension: its range, initial value and result, plus per
    // element its condition and step (here `@result && x > 0`, with > a call of 4 units).
    expect(estimate('true')).toBe(1);
    expect(estimate('[1, 2, 3].all(x, x > 0)')).toBe(1 + 4 + 1 + 1 + 3 * (2 + 1 + 1 + 4 + 1 + 1));
    expect(estimate('[1, 2].all(a, [1, 2, 3].all(b, true))')).toBeGreaterThan(2 * 3 * 5);
    expect(estimate('tasks.a.output.all(x, x > 0)')).toBe(1 + 3 + 1 + 1); // an output's size is not known
    expect(estimate('inputs.m.all(k, true)', { m: { a: 1, b: 2 } })).toBe(1 + 2 + 1 + 1 + 2 * 5);
  });
});

describe('the CPU a task needs against its pool', () => {
  it('refuses a task that costs more slots than an agent of its pool has', () => {
    const pools = new Map<string, PoolInfo>([
      ['p', { capacity: 4 }],
      ['gpu', { capacity: 1 }],
    ]);
    expect(
      messages(
        spec([
          { name: 'fits', cost: 4 },
          { name: 'big', cost: 8 },
          { name: 'gpu', pool: 'gpu', cost: 2 },
        ]),
        pools,
      ),
    ).toEqual([
      'spec.tasks[1].cost: 8 slots is more than an agent of AgentPool "p" has (spec.agent.capacity 4): the task could never run',
      'spec.tasks[2].cost: 2 slots is more than an agent of AgentPool "gpu" has (spec.agent.capacity 1): the task could never run',
    ]);
    expect(validateWorkflowSpec(spec([{ name: 'big', cost: 8 }]), { pools })[0]?.reason).toBe('CostOverCapacity');
  });
});

describe('one definition of each limit, shared by the code, the chart and the CRD', () => {
  it('the chart defaults the operator flags to the constants', () => {
    const values = parseYaml(readFileSync('charts/agentflow/values.yaml', 'utf8')) as {
      operator: { maxForEachItems: number; maxSpawnedChildren: number };
    };
    expect(values.operator.maxForEachItems).toBe(DEFAULT_MAX_FOREACH_ITEMS);
    expect(values.operator.maxSpawnedChildren).toBe(DEFAULT_MAX_SPAWNED_CHILDREN);
  });

  it('the CRD states the forEach cap and the CEL budget', () => {
    const crd = readFileSync('deploy/crds/agentflow.io_workflows.yaml', 'utf8');
    expect(crd).toContain(`at most ${DEFAULT_MAX_FOREACH_ITEMS} items unless the operator's --max-foreach-items`);
    expect(crd).toContain(`One evaluation may cost at most ${MAX_EXPRESSION_COST} CEL cost units.`);
  });
});
