import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import {
  type EvalContext,
  EvaluationError,
  evalCondition,
  evalExpression,
  evalList,
  renderInput,
} from '../../../src/workflow/expressions.ts';

interface ExampleTask {
  name: string;
  input: Record<string, unknown>;
  forEach?: string;
}
interface ExampleWorkflow {
  spec: { inputs: Record<string, unknown>; tasks: ExampleTask[] };
}

const example = parseYaml(
  readFileSync(new URL('../../../deploy/examples/workflow-research.yaml', import.meta.url), 'utf8'),
) as ExampleWorkflow;

const questions = [
  'What is a warm agent pool?',
  'How fast does a warm pool start a task?',
  'What does an idle warm agent cost?',
];
const research = questions.map((q, i) => ({ question: q, summary: `summary ${i}`, sources: i + 1 }));

/** A context like the engine builds: workflow inputs plus the outputs of finished tasks. */
const ctx: EvalContext = {
  inputs: {
    topic: 'warm agent pools',
    questions: 3,
    ratio: 0.25,
    big: 2 ** 60,
    flag: true,
    nothing: null,
    tags: ['a', 'b'],
    nested: { depth: { value: 7 } },
  },
  tasks: {
    plan: { output: { questions } },
    research: { output: research },
  },
};

/** Catches the EvaluationError that fn throws. */
function evaluationError(fn: () => unknown): EvaluationError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(EvaluationError);
    return err as EvaluationError;
  }
  throw new Error('expected an EvaluationError');
}

function task(name: string): ExampleTask {
  const t = example.spec.tasks.find((x) => x.name === name);
  if (!t) throw new Error(`no task ${name}`);
  return t;
}

describe('the example workflow (plan -> research fan-out -> write)', () => {
  const base: EvalContext = { inputs: example.spec.inputs, tasks: {} };

  it('renders the plan input from the workflow inputs', () => {
    expect(renderInput(task('plan').input, base, 'spec.tasks[0].input')).toEqual({
      topic: 'warm agent pools',
      count: 3,
    });
  });

  it('fans research out over the plan output and renders one input per question', () => {
    const withPlan: EvalContext = { ...base, tasks: { plan: { output: { questions } } } };
    const forEach = task('research').forEach;
    expect(forEach).toBe('tasks.plan.output.questions');
    const items = evalList(forEach ?? '', withPlan, 'spec.tasks[1].forEach');
    expect(items).toEqual(questions);
    const inputs = items.map((item, index) =>
      renderInput(task('research').input, { ...withPlan, item, index }, 'spec.tasks[1].input'),
    );
    expect(inputs).toEqual([
      { question: 'What is a warm agent pool?', context: 'Research for a report on warm agent pools' },
      { question: 'How fast does a warm pool start a task?', context: 'Research for a report on warm agent pools' },
      { question: 'What does an idle warm agent cost?', context: 'Research for a report on warm agent pools' },
    ]);
  });

  it('renders the write input from the research outputs and the plan', () => {
    const done: EvalContext = {
      ...base,
      tasks: { plan: { output: { questions } }, research: { output: research } },
    };
    expect(renderInput(task('write').input, done, 'spec.tasks[2].input')).toEqual({
      title: 'Report: warm agent pools',
      findings: [
        { question: 'What is a warm agent pool?', summary: 'summary 0', sources: 1 },
        { question: 'How fast does a warm pool start a task?', summary: 'summary 1', sources: 2 },
        { question: 'What does an idle warm agent cost?', summary: 'summary 2', sources: 3 },
      ],
      outline: questions,
    });
  });

  it('fails the fan-out when the plan output lacks the list', () => {
    const err = evaluationError(() =>
      evalList('tasks.plan.output.questions', { ...base, tasks: { plan: { output: {} } } }, 'spec.tasks[1].forEach'),
    );
    expect(err.message).toBe('spec.tasks[1].forEach: tasks.plan.output.questions: field not found: questions');
    expect(err.field).toBe('spec.tasks[1].forEach');
    expect(err.expression).toBe('tasks.plan.output.questions');
  });
});

describe('a string that is exactly ${{ expr }} keeps the type of the value', () => {
  it.each<[string, unknown]>([
    ['${{ inputs.questions }}', 3],
    ['${{inputs.questions}}', 3],
    ['${{ inputs.ratio }}', 0.25],
    ['${{ inputs.topic }}', 'warm agent pools'],
    ['${{ inputs.flag }}', true],
    ['${{ !inputs.flag }}', false],
    ['${{ inputs.nothing }}', null],
    ['${{ null }}', null],
    ['${{ inputs.tags }}', ['a', 'b']],
    ['${{ [] }}', []],
    ['${{ {} }}', {}],
    ['${{ inputs.nested }}', { depth: { value: 7 } }],
    ['${{ inputs.nested.depth.value }}', 7],
    ['${{ tasks.plan.output }}', { questions }],
    ['${{ tasks.research.output[1] }}', research[1]],
    ['${{ {"n": inputs.questions, "l": [inputs.flag, null]} }}', { n: 3, l: [true, null] }],
  ])('%s', (template, expected) => {
    expect(renderInput(template, ctx, 'spec.tasks[0].input.x')).toEqual(expected);
  });
});

describe('${{ }} inside a longer string is interpolated as text', () => {
  it.each<[string, string]>([
    ['topic: ${{ inputs.topic }}', 'topic: warm agent pools'],
    ['${{ inputs.topic }}!', 'warm agent pools!'],
    [' ${{ inputs.questions }}', ' 3'],
    ['n=${{ inputs.questions }}', 'n=3'],
    ['r=${{ inputs.ratio }}', 'r=0.25'],
    ['big=${{ 9223372036854775807 }}', 'big=9223372036854775807'],
    ['flag=${{ inputs.flag }}', 'flag=true'],
    ['nothing=${{ inputs.nothing }}', 'nothing=null'],
    ['tags=${{ inputs.tags }}', 'tags=["a","b"]'],
    ['nested=${{ inputs.nested }}', 'nested={"depth":{"value":7}}'],
    ['q=${{ tasks.plan.output.questions[0] }}', 'q=What is a warm agent pool?'],
    ['${{ inputs.questions }} of ${{ inputs.topic }}', '3 of warm agent pools'],
    ['${{ 1 }}${{ 2 }}', '12'],
    ['quoted "${{ "x" }}"', 'quoted "x"'],
    ['no expressions here', 'no expressions here'],
    ['a lone $ and {{ braces }}', 'a lone $ and {{ braces }}'],
    ['', ''],
  ])('%j', (template, expected) => {
    expect(renderInput(template, ctx, 'spec.tasks[0].input.x')).toBe(expected);
  });
});

describe('renderInput walks objects and arrays', () => {
  it('renders nested objects and arrays and keeps literals', () => {
    const input = {
      literal: 'plain',
      number: 42,
      double: 1.5,
      yes: false,
      none: null,
      list: ['${{ inputs.questions }}', 'x-${{ inputs.questions }}', 7, [{ deep: '${{ inputs.tags[1] }}' }]],
      object: { a: { b: '${{ inputs.nested.depth }}' }, empty: {} },
    };
    expect(renderInput(input, ctx, 'spec.tasks[0].input')).toEqual({
      literal: 'plain',
      number: 42,
      double: 1.5,
      yes: false,
      none: null,
      list: [3, 'x-3', 7, [{ deep: 'b' }]],
      object: { a: { b: { value: 7 } }, empty: {} },
    });
  });

  it.each<[unknown, unknown]>([
    [5, 5],
    [true, true],
    [null, null],
    ['text', 'text'],
    [[], []],
    [{}, {}],
  ])('returns the literal %j as it is', (value, expected) => {
    expect(renderInput(value, ctx, 'spec.tasks[0].input')).toEqual(expected);
  });

  it('does not modify the input it renders', () => {
    const input = { a: ['${{ inputs.questions }}'], b: { c: '${{ inputs.topic }}' } };
    const copy = structuredClone(input);
    const out = renderInput(input, ctx, 'spec.tasks[0].input');
    expect(input).toEqual(copy);
    expect(out).toEqual({ a: [3], b: { c: 'warm agent pools' } });
  });

  it('keeps a "__proto__" key as an ordinary property', () => {
    const input = JSON.parse('{"__proto__": "${{ inputs.questions }}"}') as unknown;
    const out = renderInput(input, ctx, 'spec.tasks[0].input') as Record<string, unknown>;
    expect(Object.getPrototypeOf(out)).toBe(Object.prototype);
    expect(Object.keys(out)).toEqual(['__proto__']);
    expect(Object.getOwnPropertyDescriptor(out, '__proto__')?.value).toBe(3);
  });

  it.each<[unknown, string, string]>([
    [{ findings: '${{ tasks.nope.output }}' }, 'spec.tasks[2].input.findings', 'tasks.nope.output'],
    [{ list: ['ok', '${{ inputs.missing }}'] }, 'spec.tasks[2].input.list[1]', 'inputs.missing'],
    [{ 'my-key': 'x ${{ inputs.missing }}' }, 'spec.tasks[2].input["my-key"]', 'inputs.missing'],
    [{ a: [{ b: { c: '${{ 1 / 0 }}' } }] }, 'spec.tasks[2].input.a[0].b.c', '1 / 0'],
  ])('names the nested field of a failing expression: %j', (input, field, expression) => {
    const err = evaluationError(() => renderInput(input, ctx, 'spec.tasks[2].input'));
    expect(err.field).toBe(field);
    expect(err.expression).toBe(expression);
    expect(err.message.startsWith(`${field}: ${expression}: `)).toBe(true);
  });
});

describe('JSON numbers in expressions', () => {
  it.each<[string, unknown]>([
    ['inputs.questions + 1', 4],
    ['inputs.questions * 2', 6],
    ['inputs.questions - 5', -2],
    ['inputs.questions / 2', 1],
    ['inputs.questions % 2', 1],
    ['-inputs.questions', -3],
    ['inputs.questions == 3', true],
    ['inputs.questions > 2 && inputs.questions < 4', true],
    ['inputs.ratio * 2.0', 0.5],
    ['inputs.ratio + 0.5', 0.75],
    ['double(inputs.questions) / 2.0', 1.5],
    ['int(inputs.ratio * 10.0)', 2],
    ['inputs.nested.depth.value * inputs.questions', 21],
    ['size(tasks.plan.output.questions)', 3],
    ['size(tasks.plan.output.questions) * 2', 6],
    ['tasks.research.output.map(r, r.sources).exists(s, s == 2)', true],
    ['tasks.research.output.map(r, r.sources * 10)', [10, 20, 30]],
    ['tasks.research.output.filter(r, r.sources > 1).size()', 2],
    ['inputs.big', 2 ** 60],
  ])('%s = %j', (expr, expected) => {
    expect(evalExpression(expr, ctx, 'spec.tasks[0].input.x')).toEqual(expected);
  });

  it('treats an integral JSON number as int and a fractional one as double', () => {
    expect(evalExpression('type(inputs.questions)', ctx, 'f')).toBe('int');
    expect(evalExpression('type(inputs.ratio)', ctx, 'f')).toBe('double');
    // Not a safe integer: stays a double.
    expect(evalExpression('type(inputs.big)', ctx, 'f')).toBe('double');
  });

  it('rejects int and double mixed without a conversion, as CEL does', () => {
    const err = evaluationError(() => evalExpression('inputs.ratio * 2', ctx, 'spec.tasks[0].input.x'));
    expect(err.message).toBe(
      "spec.tasks[0].input.x: inputs.ratio * 2: found no matching overload for '_*_' applied to '(double, int)'",
    );
  });
});

describe('results are converted to plain JSON', () => {
  it.each<[string, unknown]>([
    // int and uint: numbers while safe, decimal strings beyond.
    ['9007199254740991', 9007199254740991],
    ['-9007199254740991', -9007199254740991],
    ['9007199254740992', '9007199254740992'],
    ['-9007199254740993', '-9007199254740993'],
    ['9223372036854775807', '9223372036854775807'],
    ['inputs.questions * 3000000000000000', 9000000000000000],
    ['inputs.questions * 3002399751580331', '9007199254740993'],
    ['7u', 7],
    ['18446744073709551615u', '18446744073709551615'],
    ['[9007199254740993, 1]', ['9007199254740993', 1]],
    // double
    ['1.5', 1.5],
    ['2.0', 2],
    ['-0.0', 0],
    ['1e300 * 10.0', 1e301],
    // strings
    ['"a" + "b"', 'ab'],
    ['inputs.topic + " / " + tasks.plan.output.questions[2]', 'warm agent pools / What does an idle warm agent cost?'],
    ['"warm".upperAscii()', 'WARM'],
    ['inputs.tags.join("+")', 'a+b'],
    // bytes, timestamps, durations, types
    ['b"hi"', 'aGk='],
    ['bytes("agentflow")', 'YWdlbnRmbG93'],
    ['timestamp("2024-01-02T03:04:05Z")', '2024-01-02T03:04:05Z'],
    ['timestamp("2024-01-02T03:04:05.120Z")', '2024-01-02T03:04:05.12Z'],
    ['timestamp("2024-01-02T03:04:05.000000001Z")', '2024-01-02T03:04:05.000000001Z'],
    ['duration("1.5s")', '1.5s'],
    ['duration("90m")', '5400s'],
    ['duration("-0.25s")', '-0.25s'],
    ['duration("0s")', '0s'],
    ['type("x")', 'string'],
    // maps: keys stringified
    ['{"a": 1, "b": [true, null]}', { a: 1, b: [true, null] }],
    ['{1: "one", 2u: "two", true: "yes"}', { '1': 'one', '2': 'two', true: 'yes' }],
    ['{"t": duration("2s"), "d": 0.5}', { t: '2s', d: 0.5 }],
    // null
    ['null', null],
  ])('%s = %j', (expr, expected) => {
    expect(evalExpression(expr, ctx, 'f')).toEqual(expected);
  });

  it.each<[string, string]>([
    ['1.0 / 0.0', 'Infinity is not representable in JSON'],
    ['-1.0 / 0.0', '-Infinity is not representable in JSON'],
    ['[1.0, 0.0 / 0.0]', 'NaN is not representable in JSON'],
    ['{"x": {"y": 1e308 * 10.0}}', 'Infinity is not representable in JSON'],
  ])('%s is an error: %s', (expr, reason) => {
    const err = evaluationError(() => evalExpression(expr, ctx, 'spec.tasks[0].input.x'));
    expect(err.message).toBe(`spec.tasks[0].input.x: ${expr}: ${reason}`);
  });

  it('rejects a non-JSON double inside an interpolated string too', () => {
    const err = evaluationError(() => renderInput({ s: 'v=${{ 0.0 / 0.0 }}' }, ctx, 'spec.tasks[0].input'));
    expect(err.message).toBe('spec.tasks[0].input.s: 0.0 / 0.0: NaN is not representable in JSON');
  });
});

describe('variables', () => {
  const fan: EvalContext = {
    ...ctx,
    item: { name: 'alpha', size: 2, tags: { tier: 'gold' } },
    index: 4,
  };

  it.each<[string, unknown]>([
    ['item.name', 'alpha'],
    ['item.size + 1', 3],
    ['item.tags.tier', 'gold'],
    ['"task-" + item.name', 'task-alpha'],
    ['has(item.tags)', true],
    ['has(item.missing)', false],
    ['has(item.tags.tier)', true],
    ['has(inputs.topic)', true],
    ['has(inputs.x)', false],
    ['"tier" in item.tags', true],
    ['index', 4],
    ['tasks.research.output.map(r, r.summary)', ['summary 0', 'summary 1', 'summary 2']],
    ['tasks.research.output.all(r, r.sources > 0)', true],
    ['tasks.plan.output.questions.exists_one(q, q.startsWith("How"))', true],
    ['tasks.plan.output.questions[0].contains("warm")', true],
    ['inputs.tags + ["c"]', ['a', 'b', 'c']],
  ])('%s = %j', (expr, expected) => {
    expect(evalExpression(expr, fan, 'f')).toEqual(expected);
  });

  it.each<[unknown, unknown]>([
    ['plain', 'plain'],
    [12, 12],
    [2.5, 2.5],
    [false, false],
    [null, null],
    [
      ['x', 1],
      ['x', 1],
    ],
    [{ k: [1, { z: null }] }, { k: [1, { z: null }] }],
  ])('item %j round-trips unchanged', (item, expected) => {
    expect(evalExpression('item', { ...ctx, item }, 'f')).toEqual(expected);
  });

  it('treats missing workflow inputs as an empty map', () => {
    const noInputs: EvalContext = { inputs: undefined, tasks: {} };
    expect(evalExpression('has(inputs.x)', noInputs, 'f')).toBe(false);
    expect(evalExpression('size(inputs)', noInputs, 'f')).toBe(0);
  });

  it('reads a task that produced no output as null', () => {
    const c: EvalContext = { inputs: {}, tasks: { quiet: { output: undefined } } };
    expect(evalExpression('tasks.quiet.output', c, 'f')).toBeNull();
    expect(evalExpression('tasks.quiet.output == null', c, 'f')).toBe(true);
  });

  it('skips undefined object members as JSON does', () => {
    const c: EvalContext = { inputs: { a: 1, b: undefined }, tasks: {} };
    expect(evalExpression('inputs', c, 'f')).toEqual({ a: 1 });
    expect(evalExpression('has(inputs.b)', c, 'f')).toBe(false);
  });
});

describe('evalCondition (when)', () => {
  it.each<[string, boolean]>([
    ['true', true],
    ['false', false],
    ['inputs.questions > 2', true],
    ['inputs.questions > 3', false],
    ['size(tasks.research.output) == 3', true],
    ['inputs.flag && has(inputs.nested)', true],
    ['inputs.topic.startsWith("cold")', false],
    ['tasks.research.output.exists(r, r.summary == "summary 2")', true],
    ['has(inputs.missing) && inputs.missing > 0', false],
  ])('%s -> %s', (expr, expected) => {
    expect(evalCondition(expr, ctx, 'spec.tasks[2].when')).toBe(expected);
  });

  it.each<[string, string]>([
    ['1', 'int'],
    ['inputs.ratio', 'double'],
    ['inputs.topic', 'string'],
    ['inputs.nothing', 'null_type'],
    ['inputs.tags', 'list'],
    ['inputs.nested', 'map'],
  ])('%s is not a bool (%s)', (expr, type) => {
    const err = evaluationError(() => evalCondition(expr, ctx, 'spec.tasks[2].when'));
    expect(err.message).toBe(`spec.tasks[2].when: ${expr}: must yield a bool, not ${type}`);
    expect(err.field).toBe('spec.tasks[2].when');
  });
});

describe('evalList (forEach)', () => {
  it.each<[string, unknown[]]>([
    ['tasks.plan.output.questions', questions],
    ['inputs.tags', ['a', 'b']],
    ['[]', []],
    ['[1, 2.5, "x", null, [true]]', [1, 2.5, 'x', null, [true]]],
    ['tasks.research.output.map(r, r.summary)', ['summary 0', 'summary 1', 'summary 2']],
    [
      'tasks.research.output.filter(r, r.sources >= 2).map(r, {"q": r.question, "n": r.sources})',
      [
        { q: questions[1], n: 2 },
        { q: questions[2], n: 3 },
      ],
    ],
    ['tasks.research.output', research],
    ['[inputs.questions, inputs.questions * 10]', [3, 30]],
  ])('%s', (expr, expected) => {
    expect(evalList(expr, ctx, 'spec.tasks[1].forEach')).toEqual(expected);
  });

  it.each<[string, string]>([
    ['inputs.nested', 'map'],
    ['inputs.topic', 'string'],
    ['inputs.questions', 'int'],
    ['inputs.flag', 'bool'],
    ['inputs.nothing', 'null_type'],
  ])('%s is not a list (%s)', (expr, type) => {
    const err = evaluationError(() => evalList(expr, ctx, 'spec.tasks[1].forEach'));
    expect(err.message).toBe(`spec.tasks[1].forEach: ${expr}: must yield a list, not ${type}`);
  });
});

describe('run-time errors name the field, the expression and the reason', () => {
  it.each<[string, string]>([
    ['tasks.plan.output.nope', 'field not found: nope'],
    ['inputs.missing', 'field not found: missing'],
    ['inputs.nested.depth.nope', 'field not found: nope'],
    ['inputs.questions / 0', 'int divide by zero'],
    ['inputs.questions % 0', 'int modulus by zero'],
    ['9223372036854775807 + inputs.questions', 'int overflow during _+_'],
    ['inputs.topic + inputs.questions', "found no matching overload for '_+_' applied to '(string, int)'"],
    ['nosuchfunction(1)', 'unbound function: nosuchfunction'],
    ['1 +', 'does not parse: at 1:3: found + but expecting end of input'],
  ])('%s: %s', (expr, reason) => {
    const err = evaluationError(() => evalExpression(expr, ctx, 'spec.tasks[1].input.q'));
    expect(err.message).toBe(`spec.tasks[1].input.q: ${expr}: ${reason}`);
    expect(err.field).toBe('spec.tasks[1].input.q');
    expect(err.expression).toBe(expr);
    expect(err.name).toBe('EvaluationError');
  });

  it('reports an index out of range', () => {
    const err = evaluationError(() => evalExpression('tasks.plan.output.questions[7]', ctx, 'spec.tasks[1].input.q'));
    // The bound @bufbuild/cel 0.6 prints after "[0, " is not the list size, so only the start is pinned.
    expect(err.message.startsWith('spec.tasks[1].input.q: tasks.plan.output.questions[7]: index 7 out of bounds')).toBe(
      true,
    );
  });

  it('names the forEach item in the message', () => {
    const err = evaluationError(() =>
      renderInput({ q: '${{ item.name }}' }, { ...ctx, item: { id: 1 }, index: 2 }, 'spec.tasks[1].input'),
    );
    expect(err.message).toBe('spec.tasks[1].input.q: item.name: field not found: name (forEach item 2)');
    expect(err.field).toBe('spec.tasks[1].input.q');
  });

  it('reports a malformed template with the whole string', () => {
    const err = evaluationError(() => renderInput({ a: 'x ${{ inputs.topic' }, ctx, 'spec.tasks[0].input'));
    expect(err.message).toBe(
      'spec.tasks[0].input.a: x ${{ inputs.topic: unterminated ${{ at character 3: add the closing }}',
    );
    expect(err.expression).toBe('x ${{ inputs.topic');
  });

  it('keeps failing the same way for a cached expression', () => {
    for (let i = 0; i < 3; i++) {
      expect(evaluationError(() => evalExpression('1 +', ctx, `f${i}`)).message).toBe(
        `f${i}: 1 +: does not parse: at 1:3: found + but expecting end of input`,
      );
    }
  });
});

describe('compiled expressions are reused across many items', () => {
  it('renders 10,000 fan-out items with the same expressions', () => {
    const items = Array.from({ length: 10_000 }, (_, i) => ({ name: `q${i}`, weight: i }));
    const shared: EvalContext = { ...ctx, tasks: { list: { output: items } } };
    const input = {
      question: '${{ item.name }}',
      weight: '${{ item.weight * 2 + inputs.questions }}',
      label: '#${{ index }} of ${{ size(tasks.list.output) }}: ${{ item.name }}',
    };
    const forEach = evalList('tasks.list.output', shared, 'spec.tasks[1].forEach');
    expect(forEach).toHaveLength(10_000);
    const rendered = forEach.map((item, index) =>
      renderInput(input, { ...shared, item, index }, 'spec.tasks[1].input'),
    );
    expect(rendered[0]).toEqual({ question: 'q0', weight: 3, label: '#0 of 10000: q0' });
    expect(rendered[9_999]).toEqual({ question: 'q9999', weight: 20_001, label: '#9999 of 10000: q9999' });
    expect(rendered).toEqual(
      items.map((_, i) => ({ question: `q${i}`, weight: i * 2 + 3, label: `#${i} of 10000: q${i}` })),
    );
    const when = forEach.map((item, index) =>
      evalCondition('item.weight % 1000 == 0', { ...shared, item, index }, 'w'),
    );
    expect(when.filter(Boolean)).toHaveLength(10);
  });

  it('sees the values of each evaluation, not those of an earlier one', () => {
    const results = [1, 2, 3].map((n) => evalExpression('inputs.n * 10', { inputs: { n }, tasks: {} }, 'f'));
    expect(results).toEqual([10, 20, 30]);
  });
});
