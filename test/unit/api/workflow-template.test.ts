import { describe, expect, it } from 'vitest';
import { validateWorkflowSpec } from '../../../src/api/validate.ts';
import { runSpecOf, type WorkflowObjectSpec, workflowTasks } from '../../../src/api/workflow.ts';
import {
  MAX_RESOLVED_SPEC_BYTES,
  type Parameter,
  resolveInputs,
  resolveTemplate,
  templateField,
  type WorkflowTemplateSpec,
} from '../../../src/api/workflow-template.ts';

const template: WorkflowTemplateSpec = {
  parameters: [
    { name: 'topic', type: 'string', required: true, description: 'What to research' },
    { name: 'depth', type: 'integer', default: 2 },
    { name: 'style', enum: ['brief', 'long'], default: 'brief' },
    { name: 'sources', type: 'array' },
  ],
  pool: 'researchers',
  priority: 5,
  retryPolicy: { maxAttempts: 2 },
  budget: { maxTokens: 1000 },
  tasks: [
    { name: 'search', handler: 'search', input: { q: '${{ inputs.topic }}', n: '${{ inputs.depth }}' } },
    { name: 'write', handler: 'write', dependsOn: ['search'] },
  ],
};

const ref = (extra: Partial<WorkflowObjectSpec> = {}): WorkflowObjectSpec => ({
  workflowTemplateRef: { name: 'research' },
  ...extra,
});

describe('resolveTemplate', () => {
  it('fills defaults, keeps given inputs and takes the template fields the workflow does not set', () => {
    const r = resolveTemplate(ref({ inputs: { topic: 'etcd' }, priority: 9, suspend: true }), {
      name: 'research',
      spec: template,
    });
    expect(r.problems).toEqual([]);
    expect(r.spec).toEqual({
      pool: 'researchers',
      priority: 9,
      retryPolicy: { maxAttempts: 2 },
      budget: { maxTokens: 1000 },
      inputs: { topic: 'etcd', depth: 2, style: 'brief' },
      suspend: true,
      tasks: template.tasks,
    });
    // The resolved spec is a runnable Workflow spec.
    expect(validateWorkflowSpec(r.spec as never)).toEqual([]);
  });

  it('copies: editing the resolved spec leaves the template as it was', () => {
    const r = resolveTemplate(ref({ inputs: { topic: 'x' } }), { name: 'research', spec: template });
    (r.spec?.tasks[0] as { name: string }).name = 'changed';
    expect(template.tasks[0]?.name).toBe('search');
  });

  it.each<[string, Record<string, unknown> | undefined, string, RegExp]>([
    ['a required parameter missing', undefined, 'spec.inputs.topic', /requires parameter "topic" \(What to research\)/],
    [
      'an input no parameter declares',
      { topic: 'a', topik: 'b' },
      'spec.inputs.topik',
      /no parameter "topik" \(it declares topic, depth, style, sources\)/,
    ],
    ['a string given a number', { topic: 3 }, 'spec.inputs.topic', /must be a string, not number 3/],
    [
      'an integer given a fraction',
      { topic: 'a', depth: 1.5 },
      'spec.inputs.depth',
      /must be an integer, not number 1.5/,
    ],
    [
      'an integer given a string',
      { topic: 'a', depth: '2' },
      'spec.inputs.depth',
      /must be an integer, not string "2"/,
    ],
    [
      'an array given an object',
      { topic: 'a', sources: { a: 1 } },
      'spec.inputs.sources',
      /must be an array, not an object/,
    ],
    ['a value outside the enum', { topic: 'a', style: 'epic' }, 'spec.inputs.style', /must be one of "brief", "long"/],
    ['null for a string', { topic: null }, 'spec.inputs.topic', /must be a string, not null/],
  ])('refuses %s, naming the field', (_, inputs, field, message) => {
    const r = resolveTemplate(ref(inputs ? { inputs: inputs as never } : {}), { name: 'research', spec: template });
    expect(r.spec).toBeUndefined();
    expect(r.problems).toHaveLength(1);
    expect(r.problems[0]).toMatchObject({ field, reason: 'InvalidSpec' });
    expect(r.problems[0]?.message).toMatch(message);
  });

  it('reports every problem at once', () => {
    const r = resolveInputs('t', template.parameters as Parameter[], { depth: 'x', extra: 1 });
    expect(r.problems.map((p) => p.field).sort()).toEqual([
      'spec.inputs.depth',
      'spec.inputs.extra',
      'spec.inputs.topic',
    ]);
  });

  it('refuses a default that does not fit its own parameter', () => {
    const r = resolveInputs('t', [{ name: 'n', type: 'number', default: 'ten' }], {});
    expect(r.problems[0]?.message).toMatch(/the default of parameter "n" of WorkflowTemplate "t" must be a number/);
  });

  it('refuses inputs for a template that declares no parameters', () => {
    const r = resolveInputs('t', [], { a: 1 });
    expect(r.problems[0]?.message).toBe('WorkflowTemplate "t" has no parameter "a" (it declares none)');
  });

  it('compares enum members as JSON values, objects included', () => {
    const p: Parameter = { name: 'o', type: 'object', enum: [{ a: 1, b: [2] }] };
    expect(resolveInputs('t', [p], { o: { b: [2], a: 1 } }).problems).toEqual([]);
    expect(resolveInputs('t', [p], { o: { a: 1, b: [3] } }).problems).toHaveLength(1);
  });

  it('refuses a resolved spec the status could not keep', () => {
    const big = 'x'.repeat(MAX_RESOLVED_SPEC_BYTES);
    const r = resolveTemplate(ref({ inputs: { topic: big } }), { name: 'research', spec: template });
    expect(r.problems[0]).toMatchObject({ field: 'spec.workflowTemplateRef', reason: 'InvalidSpec' });
    expect(r.problems[0]?.message).toMatch(/resolves to is \d+ bytes, over the 524288/);
  });

  it("names a resolved spec's task problems as the template's", () => {
    const p = templateField('research', { field: 'spec.tasks[1].dependsOn[0]', reason: 'InvalidSpec', message: 'm' });
    expect(p.field).toBe('WorkflowTemplate "research" spec.tasks[1].dependsOn[0]');
    expect(templateField('research', { field: 'spec.inputs.a', reason: 'InvalidSpec', message: 'm' }).field).toBe(
      'spec.inputs.a',
    );
  });
});

describe('workflowTasks', () => {
  it("reads a workflow's own tasks, or the template's its run started with", () => {
    expect(workflowTasks({ spec: { tasks: [{ name: 'a', handler: 'h' }] } }).map((t) => t.name)).toEqual(['a']);
    const templated = {
      spec: { workflowTemplateRef: { name: 't' } },
      status: { workflowTemplate: { spec: { tasks: [{ name: 'b', handler: 'h' }], retryPolicy: { maxAttempts: 7 } } } },
    };
    expect(workflowTasks(templated).map((t) => t.name)).toEqual(['b']);
    expect(runSpecOf(templated).retryPolicy?.maxAttempts).toBe(7);
    expect(workflowTasks({ spec: { workflowTemplateRef: { name: 't' } } })).toEqual([]);
  });
});
