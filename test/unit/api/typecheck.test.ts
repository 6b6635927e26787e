import { describe, expect, it } from 'vitest';
import { analyzeExpression, type Scope } from '../../../src/api/expressions.ts';
import { formatProblem, validateWorkflowSpec } from '../../../src/api/validate.ts';
import type { WorkflowSpec, WorkflowTask } from '../../../src/api/workflow.ts';
import { evalExpression } from '../../../src/workflow/expressions.ts';

// Validation type-checks every expression before the run starts, as far as
// types are known (literals, spec.inputs, operators), and reports every problem
// of the spec at once, each at its field.

const inputs = {
  count: 3,
  ratio: 0.5,
  name: 'ada',
  flag: true,
  nothing: null,
  xs: [1, 2],
  names: ['a', 'b'],
  obj: { a: 1 },
};
const spec = (tasks: Partial<WorkflowTask>[], extra: Partial<WorkflowSpec> = {}): WorkflowSpec => ({
  pool: 'p',
  inputs,
  tasks: tasks.map((t) => ({ handler: 'h', ...t }) as WorkflowTask),
  ...extra,
});
const messages = (s: WorkflowSpec) => validateWorkflowSpec(s).map(formatProblem);

describe('validateWorkflowSpec reports every expression problem at once', () => {
  it('two bad expressions in different tasks: two problems, each at its field', () => {
    const problems = validateWorkflowSpec(
      spec([
        { name: 'a', input: { q: '${{ inputs.topic + }}' } },
        { name: 'b', dependsOn: ['a'], when: 'tasks.zz.output.ok' },
      ]),
    );
    expect(problems.map((p) => [p.field, p.reason])).toEqual([
      ['spec.tasks[0].input.q', 'InvalidExpression'],
      ['spec.tasks[1].when', 'InvalidExpression'],
    ]);
  });

  it('several problems in one expression, and in one input string', () => {
    expect(
      messages(
        spec([
          { name: 'a' },
          { name: 'b', input: { q: '${{ secret }} and ${{ tasks.a.output }} of ${{ inputs.cont }}' } },
        ]),
      ),
    ).toEqual([
      'spec.tasks[1].input.q: "secret": undeclared reference to "secret" (available: inputs, tasks)',
      'spec.tasks[1].input.q: "tasks.a.output": reads tasks.a.output but "a" is not a dependency of this task (add it to dependsOn)',
      'spec.tasks[1].input.q: "inputs.cont": inputs has no field "cont" (it has: count, ratio, name, flag, nothing, xs, names, obj)',
    ]);
    expect(messages(spec([{ name: 'a', when: 'nope && inputs.count' }]))).toEqual([
      'spec.tasks[0].when: "nope && inputs.count": undeclared reference to "nope" (available: inputs, tasks)',
      'spec.tasks[0].when: "nope && inputs.count": inputs.count is int, but an operand of && must be a bool',
    ]);
  });

  it.each([
    ['inputs.count', 'int'],
    ["'yes'", 'string'],
    ['inputs.names', 'list'],
    ['size(inputs.names)', 'int'],
    ['inputs.name + "?"', 'string'],
  ])('a when that yields no bool (%s) is a problem at spec.tasks[i].when', (when, type) => {
    expect(messages(spec([{ name: 'a' }, { name: 'b', when }]))).toEqual([
      `spec.tasks[1].when: ${JSON.stringify(when)}: must yield a bool, not ${type}`,
    ]);
  });

  it.each([
    ['inputs.name', 'string'],
    ['inputs.count', 'int'],
    ['inputs.obj', 'map'],
    ['size(inputs.xs) > 0', 'bool'],
  ])('a forEach that yields no list (%s) is a problem at spec.tasks[i].forEach', (forEach, type) => {
    expect(messages(spec([{ name: 'a', forEach, input: { x: '${{ item }}' } }]))).toEqual([
      `spec.tasks[0].forEach: ${JSON.stringify(forEach)}: must yield a list, not ${type}`,
    ]);
  });

  it('knows item from a forEach over a known list', () => {
    expect(
      messages(spec([{ name: 'a', forEach: 'inputs.names', when: 'item > 0', input: { n: '${{ item + 1 }}' } }])),
    ).toEqual([
      'spec.tasks[0].when: "item > 0": item > 0: string and int cannot be compared with >',
      'spec.tasks[0].input.n: "item + 1": item + 1: string + int is not defined',
    ]);
  });

  it('leaves alone what only run-time data decides: task outputs, guarded reads, dyn', () => {
    expect(
      messages(
        spec([
          { name: 'a' },
          {
            name: 'b',
            dependsOn: ['a'],
            forEach: 'tasks.a.output.items',
            when: 'tasks.a.output.ok && (has(inputs.extra) ? inputs.extra > 1 : true)',
            input: { x: '${{ item.id + 1 }}', y: '${{ dyn(inputs.count) + tasks.a.output.n }}' },
          },
          { name: 'c', when: 'inputs.flag', forEach: 'inputs.obj.map(k, k)', input: { k: '${{ item + "!" }}' } },
        ]),
      ),
    ).toEqual([]);
  });

  it('type-checks with the inputs a spec without inputs has: none', () => {
    expect(messages(spec([{ name: 'a', when: 'inputs.go' }], { inputs: undefined }))).toEqual([
      'spec.tasks[0].when: "inputs.go": inputs has no field "go" (it is empty)',
    ]);
  });
});

describe('the type check agrees with the interpreter', () => {
  const scope: Scope = { readableTasks: new Set(), allTasks: new Set(), item: false, inputs };
  const fails = (expr: string): boolean => {
    try {
      evalExpression(expr, { inputs, tasks: {} }, 'f');
      return false;
    } catch {
      return true;
    }
  };

  // Each of these fails at run time whatever the task outputs are: validation says so first.
  it.each([
    "inputs.count + 'a'",
    'inputs.count + 1.5',
    'inputs.ratio % 2.0',
    '-inputs.name',
    'inputs.count.x',
    'inputs.names.x',
    'inputs.nothing.x',
    '!inputs.count',
    'inputs.count ? 1 : 2',
    'true && inputs.count',
    'inputs.count.all(x, x)',
    'inputs.name.exists(c, true)',
    'inputs.xs.all(x, x)',
    'inputs.xs.filter(x, x + 1)',
    'inputs.name < 1',
    '[] < []',
    '1 in 2',
    "inputs.obj['b']",
    'inputs.cout',
    'size(inputs.count)',
    "'abc'[0]",
    '1 + inputs.nothing',
    '1u + 1',
    'has(inputs.missing.y)',
  ])('%s: refused by both', (expr) => {
    expect(fails(expr)).toBe(true);
    expect(analyzeExpression(expr, scope).problems).not.toEqual([]);
  });

  it.each([
    'inputs.count + 1',
    'inputs.ratio * 2.0',
    'inputs.count < 2.5',
    "inputs.names.map(n, n + '!')",
    'inputs.obj.a + 1',
    "inputs.obj['a'] * 2",
    'size(inputs.names) > 0',
    'inputs.name.size() == 3',
    'has(inputs.nope)',
    'has(inputs.count.x)',
    'has(inputs.nope) && inputs.nope > 1',
    "inputs.names.filter(n, n.startsWith('a'))",
    "inputs.names.exists_one(n, n == 'a')",
    "timestamp('2020-01-01T00:00:00Z') + duration('1s')",
    "string(inputs.count) + 'x'",
    'inputs.count in inputs.xs',
    "'a' in inputs.obj",
    "[1, 'a'][0]",
    'inputs.count == inputs.name',
    'false < true',
    'inputs.xs + inputs.names',
    'inputs.nothing == null',
    "inputs.name.split('d')[0] + 'x'",
  ])('%s: accepted by both', (expr) => {
    expect(fails(expr)).toBe(false);
    expect(analyzeExpression(expr, scope).problems).toEqual([]);
  });

  it('is stricter than the interpreter in one place: an operand of && or || that is no bool', () => {
    // The interpreter forgives it when the other side decides; it is a mistake whichever way the data falls.
    expect(fails('false && inputs.count')).toBe(false);
    expect(analyzeExpression('false && inputs.count', scope).problems).toEqual([
      'inputs.count is int, but an operand of && must be a bool',
    ]);
  });
});
