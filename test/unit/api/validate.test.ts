import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { checkExpression, ExpressionError, parseTemplate } from '../../../src/api/expressions.ts';
import { formatProblem, type PoolInfo, validateWorkflowSpec } from '../../../src/api/validate.ts';
import type { WorkflowSpec, WorkflowTask } from '../../../src/api/workflow.ts';

const spec = (tasks: Partial<WorkflowTask>[], extra: Partial<WorkflowSpec> = {}): WorkflowSpec => ({
  pool: 'p',
  tasks: tasks.map((t) => ({ handler: 'h', ...t }) as WorkflowTask),
  ...extra,
});
const messages = (s: WorkflowSpec, pools?: Map<string, PoolInfo>) =>
  validateWorkflowSpec(s, pools ? { pools } : {}).map(formatProblem);

describe('validateWorkflowSpec: the DAG', () => {
  it('accepts the example workflow against its pool', () => {
    const wf = parseYaml(readFileSync('deploy/examples/workflow-research.yaml', 'utf8')) as { spec: WorkflowSpec };
    const pool = parseYaml(readFileSync('deploy/examples/agentpool.yaml', 'utf8')) as {
      metadata: { name: string };
      spec: { agent: PoolInfo };
    };
    expect(validateWorkflowSpec(wf.spec, { pools: new Map([[pool.metadata.name, pool.spec.agent]]) })).toEqual([]);
  });

  it('reports a two-task cycle as its path', () => {
    expect(
      messages(
        spec([
          { name: 'a', dependsOn: ['b'] },
          { name: 'b', dependsOn: ['a'] },
        ]),
      ),
    ).toEqual(['spec.tasks[0].dependsOn: dependency cycle: a -> b -> a']);
  });

  it('reports a longer cycle once, starting at its first-listed task, and leaves acyclic parts alone', () => {
    const s = spec([
      { name: 'start' },
      { name: 'x', dependsOn: ['start', 'z'] },
      { name: 'y', dependsOn: ['x'] },
      { name: 'z', dependsOn: ['y'] },
      { name: 'end', dependsOn: ['z'] },
    ]);
    expect(messages(s)).toEqual(['spec.tasks[1].dependsOn: dependency cycle: x -> z -> y -> x']);
  });

  it('reports two independent cycles', () => {
    const s = spec([
      { name: 'a', dependsOn: ['b'] },
      { name: 'b', dependsOn: ['a'] },
      { name: 'c', dependsOn: ['d'] },
      { name: 'd', dependsOn: ['c'] },
    ]);
    expect(messages(s)).toHaveLength(2);
  });

  it('reports duplicate names, unknown and self dependencies with their indices', () => {
    expect(messages(spec([{ name: 'a', dependsOn: ['a', 'ghost'] }, { name: 'a' }, { name: 'Bad_Name' }]))).toEqual([
      'spec.tasks[1].name: duplicate task name "a" (also spec.tasks[0])',
      'spec.tasks[2].name: "Bad_Name" is not a DNS-1123 label (lower-case alphanumerics and "-", at most 63)',
      'spec.tasks[0].dependsOn[0]: a task cannot depend on itself',
      'spec.tasks[0].dependsOn[1]: no task named "ghost"',
    ]);
  });

  it('requires at least one task', () => {
    expect(messages({ pool: 'p', tasks: [] })).toEqual(['spec.tasks: at least one task is required']);
  });
});

describe('validateWorkflowSpec: pools and handlers', () => {
  const pools = new Map<string, PoolInfo>([
    ['p', { handlers: ['h', 'summarise'] }],
    ['gpu', {}],
  ]);

  it('reports an unknown pool once, at the field that names it', () => {
    expect(messages(spec([{ name: 'a' }, { name: 'b' }], { pool: 'nope' }), pools)).toEqual([
      'spec.pool: AgentPool "nope" not found in the workflow\'s namespace',
    ]);
    expect(messages(spec([{ name: 'a', pool: 'other' }]), pools)).toEqual([
      'spec.tasks[0].pool: AgentPool "other" not found in the workflow\'s namespace',
    ]);
  });

  it('reports a handler the pool does not serve, listing what it serves', () => {
    expect(messages(spec([{ name: 'a', handler: 'translate' }]), pools)).toEqual([
      'spec.tasks[0].handler: AgentPool "p" serves no handler "translate" (it serves: h, summarise)',
    ]);
  });

  it('accepts any handler on a pool that declares none', () => {
    expect(messages(spec([{ name: 'a', handler: 'anything', pool: 'gpu' }]), pools)).toEqual([]);
  });

  it('requires a pool for every task', () => {
    expect(messages({ tasks: [{ name: 'a', handler: 'h' }] }, pools)).toEqual([
      'spec.tasks[0].pool: no pool: set spec.pool or the task pool',
    ]);
  });
});

describe('validateWorkflowSpec: pools other namespaces share', () => {
  // What the controller passes: the namespace's own pools by name, shared ones as namespace/name.
  const pools = new Map<string, PoolInfo>([
    ['p', { handlers: ['h'] }],
    ['shared/gpu', { handlers: ['h', 'render'], capacity: 2 }],
  ]);
  const notShared = (ref: string) =>
    `AgentPool "${ref}" does not exist or is not shared with the workflow's namespace (the pool's spec.sharing.namespaces)`;

  it('reports a namespace/name pool it was not given once, as missing or not shared, at the field naming it', () => {
    const s = spec([
      { name: 'a', pool: 'other/pool' },
      { name: 'b', pool: 'other/pool' },
    ]);
    expect(validateWorkflowSpec(s, { pools })).toEqual([
      { field: 'spec.tasks[0].pool', reason: 'PoolNotFound', message: notShared('other/pool') },
    ]);
    expect(messages(spec([{ name: 'a' }], { pool: 'other/pool' }), pools)).toEqual([
      `spec.pool: ${notShared('other/pool')}`,
    ]);
  });

  it('accepts a shared pool named in full, and checks handlers and cost against it', () => {
    expect(messages(spec([{ name: 'a', handler: 'render' }], { pool: 'shared/gpu' }), pools)).toEqual([]);
    expect(messages(spec([{ name: 'a', pool: 'shared/gpu', handler: 'h' }, { name: 'b' }]), pools)).toEqual([]);
    expect(messages(spec([{ name: 'a', pool: 'shared/gpu', handler: 'translate', cost: 3 }]), pools)).toEqual([
      'spec.tasks[0].handler: AgentPool "shared/gpu" serves no handler "translate" (it serves: h, render)',
      'spec.tasks[0].cost: 3 slots is more than an agent of AgentPool "shared/gpu" has (spec.agent.capacity 2): the task could never run',
    ]);
  });

  it('does not find a shared pool by its bare name: that names a pool of the workflow’s namespace', () => {
    expect(messages(spec([{ name: 'a' }], { pool: 'gpu' }), pools)).toEqual([
      'spec.pool: AgentPool "gpu" not found in the workflow\'s namespace',
    ]);
  });
});

describe('validateWorkflowSpec: expressions', () => {
  it('accepts reads of inputs, transitive dependencies and item in fan-out tasks', () => {
    const s = spec(
      [
        { name: 'a' },
        {
          name: 'b',
          dependsOn: ['a'],
          forEach: 'tasks.a.output.list',
          input: { x: '${{ item.id }}', y: 'n=${{ size(inputs.list) }}' },
        },
        {
          name: 'c',
          dependsOn: ['b'],
          when: 'tasks.a.output.ok && tasks.b.output.all(r, r.score > 0.5)',
          input: { all: '${{ tasks.b.output.map(r, r.id) }}' },
        },
      ],
      { inputs: { list: [1, 2] } },
    );
    expect(messages(s)).toEqual([]);
  });

  it.each([
    [
      { name: 'b', input: { q: '${{ tasks.a.output }}' } },
      'spec.tasks[1].input.q: "tasks.a.output": reads tasks.a.output but "a" is not a dependency of this task (add it to dependsOn)',
    ],
    [
      { name: 'b', dependsOn: ['a'], input: { q: '${{ tasks.zz.output }}' } },
      'spec.tasks[1].input.q: "tasks.zz.output": no task named "zz"',
    ],
    [
      { name: 'b', dependsOn: ['a'], input: { q: '${{ tasks.a.result }}' } },
      'spec.tasks[1].input.q: "tasks.a.result": tasks.a has no field "result" (only output)',
    ],
    [
      { name: 'b', dependsOn: ['a'], input: { q: '${{ tasks.a }}' } },
      'spec.tasks[1].input.q: "tasks.a": use tasks.a.output to read the output of task "a"',
    ],
    [
      { name: 'b', input: { q: '${{ item }}' } },
      'spec.tasks[1].input.q: "item": item is only defined in tasks with forEach',
    ],
    [
      { name: 'b', input: { q: '${{ secrets.key }}' } },
      'spec.tasks[1].input.q: "secrets.key": undeclared reference to "secrets" (available: inputs, tasks)',
    ],
    [
      { name: 'b', input: { q: '${{ inputs.a + }}' } },
      'spec.tasks[1].input.q: "inputs.a +": does not parse: at 1:10: found + but expecting end of input',
    ],
    [
      { name: 'b', input: { q: 'hello ${{ inputs.a' } },
      'spec.tasks[1].input.q: unterminated ${{ at character 7: add the closing }}',
    ],
    [
      { name: 'b', input: { deep: { list: ['ok', '${{ nope }}'] } } },
      'spec.tasks[1].input.deep.list[1]: "nope": undeclared reference to "nope" (available: inputs, tasks)',
    ],
    [
      { name: 'b', forEach: 'item.list' },
      'spec.tasks[1].forEach: "item.list": item is only defined in tasks with forEach',
    ],
    [
      { name: 'b', when: 'inputs.x ==' },
      'spec.tasks[1].when: "inputs.x ==": does not parse: at 1:10: found = but expecting end of input',
    ],
  ])('reports %o', (task, message) => {
    expect(messages(spec([{ name: 'a' }, task as Partial<WorkflowTask>]))).toEqual([message]);
  });

  it('lets comprehension variables shadow nothing and stay local', () => {
    expect(() =>
      checkExpression('inputs.xs.exists(x, x == 1) && x > 0', {
        readableTasks: new Set(),
        allTasks: new Set(),
        item: false,
      }),
    ).toThrow('undeclared reference to "x"');
  });
});

describe('parseTemplate', () => {
  it('splits text and expressions', () => {
    expect(parseTemplate('a ${{ x }} b ${{y}}')).toEqual([
      { text: 'a ' },
      { expr: 'x', offset: 2 },
      { text: ' b ' },
      { expr: 'y', offset: 13 },
    ]);
    expect(parseTemplate('plain')).toEqual([{ text: 'plain' }]);
  });

  it('refuses an empty expression', () => {
    expect(() => parseTemplate('${{ }}')).toThrow(ExpressionError);
  });
});

describe('validateWorkflowSpec: concurrency and rate-limit keys', () => {
  const spec = (t: Partial<WorkflowTask>): WorkflowSpec => ({
    pool: 'p',
    inputs: { customer: 'acme' },
    tasks: [
      { name: 'a', handler: 'h' },
      { name: 'b', handler: 'h', dependsOn: ['a'], ...t },
    ],
  });
  const problems = (t: Partial<WorkflowTask>) => validateWorkflowSpec(spec(t)).map((p) => `${p.field}: ${p.message}`);

  it('accepts keys over inputs, dependency outputs, the task’s input and index', () => {
    expect(
      problems({
        concurrency: { key: "'customer-' + inputs.customer + string(index) + tasks.a.output.x", max: 1 },
        rateLimits: [{ name: 'calls', key: 'input.tenant' }],
      }),
    ).toEqual([]);
  });

  it('refuses a key that reads what is not in scope, naming the field', () => {
    const [p] = problems({ concurrency: { key: 'nope.x', max: 1 }, rateLimits: [{ name: 'calls', key: 'item' }] });
    expect(p).toBe(
      'spec.tasks[1].concurrency.key: "nope.x": undeclared reference to "nope" (available: inputs, tasks, input, index)',
    );
    expect(problems({ rateLimits: [{ name: 'calls', key: 'item' }] })).toEqual([
      'spec.tasks[1].rateLimits[0].key: "item": item is only defined in tasks with forEach',
    ]);
    // Outside a key, input is no variable.
    expect(problems({ when: 'input.x == 1' })[0]).toContain(
      'undeclared reference to "input" (available: inputs, tasks)',
    );
  });
});
