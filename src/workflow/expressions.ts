import {
  type CelFunc,
  type CelInput,
  type CelList,
  CelScalar,
  type CelType,
  type CelValue,
  celEnv,
  celFunc,
  celList,
  celMap,
  celMethod,
  celType,
  isCelError,
  isCelList,
  isCelMap,
  isCelType,
  isCelUint,
  listType,
  parse,
  plan,
} from '@bufbuild/cel';
import { strings } from '@bufbuild/cel/ext';
import {
  type AstNode,
  type Comprehension,
  children,
  ExpressionError,
  formatCost,
  identName,
  iterationCost,
  ownNodes,
  parseTemplate,
  quoteExpression,
} from '../api/expressions.ts';
import { MAX_EXPRESSION_COST } from '../api/workflow.ts';

// Runtime evaluation of the CEL in task inputs, forEach and when (the static
// checks are in src/api/expressions.ts). Values cross the boundary as plain
// JSON: on the way in, an integral JSON number becomes a CEL int (so
// `inputs.n + 1` works) and any other number a double; on the way out, CEL
// values are turned back into JSON (see toJson).
//
// Every evaluation is metered against a cost budget (the cost model is
// described in src/api/expressions.ts), because @bufbuild/cel itself counts
// nothing and cannot be interrupted. The meter is fed from inside the
// interpreter through its public extension points: each comprehension's loop
// condition is wrapped in a function that charges what one element costs (and
// fails once the budget is spent, which ends the loop at once), and every
// function that takes or returns strings, bytes, lists or maps is replaced by a
// wrapper that charges their sizes. Evaluation is synchronous, so the meter of
// the evaluation in progress is a module variable.

/** What an expression can see. */
export interface EvalContext {
  inputs: unknown;
  tasks: Record<string, { output: unknown }>;
  item?: unknown;
  /** index of the forEach item */
  index?: number;
  /** The task's rendered input (concurrency and rate-limit keys only). */
  input?: unknown;
  /**
   * A budget shared by several evaluations (those that start one task); each
   * evaluation also has its own, MAX_EXPRESSION_COST.
   */
  budget?: CostBudget;
}

/** Why an evaluation failed, for callers that treat them differently. */
export type EvaluationFailure = 'Failed' | 'CostBudgetExceeded' | 'TooManyItems';

/** An expression failed at run time: the message names field, expression and reason. */
export class EvaluationError extends Error {
  override name = 'EvaluationError';
  /** Where the expression is, e.g. `spec.tasks[2].input.findings`. */
  readonly field: string;
  /** The expression (for a malformed template, the whole string). */
  readonly expression: string;
  readonly reason: EvaluationFailure;

  constructor(
    field: string,
    expression: string,
    problem: string,
    index?: number,
    options?: ErrorOptions & { reason?: EvaluationFailure },
  ) {
    super(
      `${field}: ${quoteExpression(expression)}: ${problem}${index === undefined ? '' : ` (forEach item ${index})`}`,
      options,
    );
    this.field = field;
    this.expression = expression;
    this.reason = options?.reason ?? 'Failed';
  }
}

/** Cost units left for a group of evaluations (see EvalContext.budget). */
export class CostBudget {
  used = 0;
  readonly total: number;
  constructor(total: number) {
    this.total = total;
  }
  get remaining(): number {
    return Math.max(0, this.total - this.used);
  }
}

// ---------------------------------------------------------------------------
// The meter.

class Meter {
  used = 0;
  readonly limit: number;
  constructor(limit: number) {
    this.limit = limit;
  }
  get exceeded(): boolean {
    return this.used > this.limit;
  }
  get left(): number {
    return this.limit - this.used;
  }
}

/** The meter of the evaluation in progress. */
let meter: Meter | undefined;

/** Thrown inside the interpreter once the budget is spent; the evaluation reports it with its field and budget. */
class OverBudget extends Error {
  constructor() {
    super('over the cost budget');
  }
}

function charge(units: number): void {
  if (!meter) return;
  meter.used += units;
  if (meter.exceeded) throw new OverBudget();
}

const CHARS_PER_UNIT = 16;
/** What one replacement costs strings.replace (measured: ~4 evaluation steps). */
const OCCURRENCE_UNITS = 4;
/** What converting one list element or map entry to JSON costs (measured: ~3 evaluation steps). */
const JSON_ELEMENT_UNITS = 3;

/** A value's size as the cost model counts it, its elements not looked into. */
function size(v: CelValue): number {
  if (typeof v === 'string') return Math.ceil(v.length / CHARS_PER_UNIT);
  if (v instanceof Uint8Array) return Math.ceil(v.byteLength / CHARS_PER_UNIT);
  if (isCelList(v) || isCelMap(v)) return v.size;
  return 0;
}

/**
 * A value's size with its elements' sizes, for what compares values deeply (==,
 * in). Counts no further than `cap`, so that the walk costs no more than the
 * budget it guards (lists can share elements: a small expression can build a
 * value whose deep size is the square of its own).
 */
function deepSize(v: CelValue, cap: number): number {
  let n = 0;
  const stack: CelValue[] = [v];
  while (stack.length > 0 && n <= cap) {
    const x = stack.pop() as CelValue;
    if (isCelList(x)) {
      n += x.size;
      if (n > cap) break;
      for (let i = 0; i < x.size; i++) stack.push(x.get(i) as CelValue);
    } else if (isCelMap(x)) {
      n += x.size;
      if (n > cap) break;
      for (const [, e] of x) stack.push(e);
    } else n += size(x);
  }
  return n;
}

/** Functions whose cost does not grow with a list or map argument. */
const SIZE_FREE = new Set(['size', 'type', 'dyn']);
/** Functions that compare elements: they pay for the whole depth of their arguments. */
const DEEP = new Set(['_==_', '_!=_', '@in']);

function callCost(name: string, inputs: CelValue[]): number {
  const m = meter;
  if (!m) return 0;
  let n = 0;
  if (name === '@in' && isCelMap(inputs[1]))
    n = size(inputs[0] as CelValue); // a key lookup
  else if (DEEP.has(name)) for (const a of inputs) n += deepSize(a, m.left + 1);
  else if (name === 'matches') {
    // RE2 is linear in the text, with a factor of the pattern's size.
    const [text, pattern] = inputs;
    n = (size(text ?? '') + 1) * (size(pattern ?? '') + 1);
  } else for (const a of inputs) if (!(SIZE_FREE.has(name) && (isCelList(a) || isCelMap(a)))) n += size(a);
  return n;
}

const SIZELESS = new Set([
  'int',
  'uint',
  'double',
  'bool',
  'null_type',
  'google.protobuf.Timestamp',
  'google.protobuf.Duration',
]);
const sizeless = (t: CelType | undefined): boolean => t === undefined || SIZELESS.has(t.name);

/**
 * The same function, charging for the sizes of its arguments before it runs and
 * of its result after. Only functions that see strings, bytes, lists, maps or
 * dyn values are wrapped: arithmetic costs its node and nothing more.
 */
function metered(f: CelFunc): CelFunc {
  if (sizeless(f.target) && f.arguments.every(sizeless) && sizeless(f.result)) return f;
  const name = f.name;
  function impl(this: CelValue | undefined, ...args: CelValue[]): CelInput {
    charge(callCost(name, this === undefined ? args : [this, ...args]));
    const result = f.call(0, this, args);
    if (result === undefined) throw new Error(`no overload of ${name} for these arguments`);
    if (isCelError(result)) throw result; // the function's own error, as it made it
    if (!SIZE_FREE.has(name)) charge(size(result));
    return result as CelInput;
  }
  type Impl = Parameters<typeof celMethod>[4];
  return f.target
    ? celMethod(name, f.target, f.arguments, f.result, impl as Impl)
    : celFunc(name, f.arguments, f.result, impl as Parameters<typeof celFunc>[3]);
}

// Functions of our own, called only from the rewritten AST (their names are not
// identifiers, so no expression can call them).
const ITERATE = '@agentflow.iterate';
const RANGE = '@agentflow.range';
const APPEND = '@agentflow.append';
const DYN = CelScalar.DYN;
const LIST = listType(DYN);

/** Lists built by APPEND, with the array behind each (see append). */
const appendable = new WeakMap<CelList, CelValue[]>();

/**
 * `accu + [x]` in the step of map and filter. The library's list concatenation
 * is lazy (a chain of views): a map over n elements yields a chain n deep, which
 * costs O(n²) to read and overflows the stack past ~10,000 elements. The
 * accumulator of a macro (`@result`, a name no expression can write) is used
 * once per step and never seen midway, so it can grow in place: O(1) a step.
 */
function append(accu: CelList, x: CelValue): CelList {
  const backing = appendable.get(accu);
  if (backing) {
    backing.push(x);
    return accu;
  }
  const array = [...accu, x];
  const list = celList(array);
  appendable.set(list, array);
  return list;
}

/** `a + b` on lists, materialised: what a list costs to read must not depend on how it was built. */
function concat(a: CelList, b: CelList): CelList {
  return celList([...a, ...b]);
}

/**
 * strings.replace in linear time, with cel-go's semantics (a negative count
 * replaces all; an empty `old` matches before every character and at the end):
 * the library's rebuilds the whole string per occurrence, O(n²) on an 800 KB
 * model answer.
 */
function replace(this: string, old: string, repl: string, count?: bigint): string {
  let left = count === undefined || count < 0n ? Number.POSITIVE_INFINITY : Number(count);
  if (left === 0) return this;
  if (old === '') {
    const chars = Array.from(this);
    charge(chars.length * OCCURRENCE_UNITS);
    const out: string[] = [];
    for (const c of chars) {
      if (left-- > 0) out.push(repl);
      out.push(c);
    }
    if (left > 0) out.push(repl);
    return out.join('');
  }
  const out: string[] = [];
  let from = 0;
  for (let at = this.indexOf(old); at >= 0 && left > 0; at = this.indexOf(old, from), left--) {
    charge(OCCURRENCE_UNITS); // the sizes charged do not grow with the number of occurrences; the time does
    out.push(this.slice(from, at), repl);
    from = at + old.length;
  }
  out.push(this.slice(from));
  return out.join('');
}

// The library's lowerAscii and upperAscii build their result a character at a
// time, and size() of a string spreads it into an array: ~40 and ~10 ns a
// character, where native string operations take ~1. The same results, natively.
const NON_ASCII = /[\u0080-\uffff]/;
function lowerAscii(this: string): string {
  // On ASCII text toLowerCase changes exactly what lowerAscii does.
  return !NON_ASCII.test(this) ? this.toLowerCase() : this.replace(/[A-Z]+/g, (run) => run.toLowerCase());
}
function upperAscii(this: string): string {
  return !NON_ASCII.test(this) ? this.toUpperCase() : this.replace(/[a-z]+/g, (run) => run.toUpperCase());
}
/** Code points, as [...s].length counts them (a lone surrogate is one). */
const codePoints = (s: string): bigint => BigInt(s.length - (s.match(/[\uD800-\uDBFF][\uDC00-\uDFFF]/g)?.length ?? 0));

const STRING = CelScalar.STRING;
const INT = CelScalar.INT;
const overrides: CelFunc[] = [
  celFunc('_+_', [LIST, LIST], LIST, concat),
  celMethod('replace', STRING, [STRING, STRING], STRING, replace),
  celMethod('replace', STRING, [STRING, STRING, INT], STRING, replace),
  celMethod('lowerAscii', STRING, [], STRING, lowerAscii),
  celMethod('upperAscii', STRING, [], STRING, upperAscii),
  celFunc('size', [STRING], INT, codePoints),
  celMethod('size', STRING, [], INT, function (this: string) {
    return codePoints(this);
  }),
];

const base = celEnv({ funcs: [...strings, ...overrides] });
const env = celEnv({
  // Same ids replace the library's functions (celEnv's documented way to override them).
  funcs: [
    ...Array.from(base.funcs, metered),
    celFunc(ITERATE, [DYN, INT], DYN, (condition: CelValue, units: bigint) => {
      charge(Number(units));
      return condition as CelInput;
    }),
    celFunc(RANGE, [DYN, INT], DYN, (range: CelValue, units: bigint) => {
      charge(size(range) * Number(units));
      return range as CelInput;
    }),
    celFunc(APPEND, [LIST, DYN], LIST, append),
  ],
});

// ---------------------------------------------------------------------------
// Compilation (cached: the engine evaluates one expression for every forEach
// item).

type Bindings = Record<string, CelInput>;
type Program = (bindings: Bindings) => CelValue | Error;
type Compiled = { program: Program; baseCost: number } | { error: string };

const MAX_CACHED = 4096;
const compiled = new Map<string, Compiled>();
let nextId = 1n << 40n; // above any id the parser gives

const call = (fn: string, args: AstNode[]): AstNode => ({
  id: nextId++,
  exprKind: { case: 'callExpr', value: { function: fn, args } },
});
const int = (n: number): AstNode => ({
  id: nextId++,
  exprKind: { case: 'constExpr', value: { constantKind: { case: 'int64Value', value: BigInt(n) } } },
});

/** `@result + [x]` (map) and `p ? @result + [x] : @result` (filter) with APPEND for the `+`. */
function appendInPlace(step: AstNode, accuVar: string): AstNode {
  if (step.exprKind.case !== 'callExpr') return step;
  const c = step.exprKind.value as { function: string; target?: AstNode; args: AstNode[] };
  if (c.target) return step;
  if (c.function === '_?_:_' && c.args.length === 3) {
    c.args = c.args.map((a, i) => (i === 0 ? a : appendInPlace(a, accuVar)));
    return step;
  }
  const [accu, list] = c.args;
  if (c.function !== '_+_' || c.args.length !== 2 || identName(accu) !== accuVar) return step;
  if (list?.exprKind.case !== 'listExpr') return step;
  const l = list.exprKind.value as { elements: AstNode[]; optionalIndices?: number[] };
  const [element] = l.elements;
  if (l.elements.length !== 1 || !element || (l.optionalIndices?.length ?? 0) > 0) return step;
  return call(APPEND, [accu as AstNode, element]);
}

const isTrue = (node: AstNode): boolean => {
  if (node.exprKind.case !== 'constExpr') return false;
  const k = (node.exprKind.value as { constantKind: { case: string; value: unknown } }).constantKind;
  return k.case === 'boolValue' && k.value === true;
};

/** Puts the meter into the AST: see the comment at the top. */
function instrument(node: AstNode | undefined): void {
  if (!node) return;
  if (node.exprKind.case === 'comprehensionExpr') {
    const c = node.exprKind.value as Comprehension;
    const perElement = iterationCost(c);
    // Only an accumulator no expression can name (the macros' @result) may grow in place.
    if (c.accuVar.startsWith('@')) c.loopStep = appendInPlace(c.loopStep, c.accuVar);
    if (isTrue(c.loopCondition)) {
      // map, filter, exists_one visit every element: pay for them all before the first (cheaper
      // than a call per element, and a loop that cannot be afforded does not start).
      c.iterRange = call(RANGE, [c.iterRange, int(perElement)]);
    } else {
      // all and exists may stop early: pay per element visited.
      c.loopCondition = call(ITERATE, [c.loopCondition, int(perElement)]);
    }
    for (const part of [c.iterRange, c.accuInit, c.loopCondition, c.loopStep, c.result]) instrument(part);
    return;
  }
  for (const c of children(node)) instrument(c);
}

function compile(expr: string): Compiled {
  let entry = compiled.get(expr);
  if (entry) return entry;
  try {
    const parsed = parse(expr);
    const root = parsed.expr as unknown as AstNode | undefined;
    // Nodes evaluated once, outside any comprehension's loop: counted before instrument adds its own.
    const baseCost = ownNodes(root);
    instrument(root);
    entry = { program: plan(env, parsed) as Program, baseCost };
  } catch (err) {
    entry = { error: `does not parse: ${(err as Error).message.replace(/^<input>:/, 'at ')}` };
  }
  if (compiled.size >= MAX_CACHED) {
    const oldest = compiled.keys().next();
    if (!oldest.done) compiled.delete(oldest.value);
  }
  compiled.set(expr, entry);
  return entry;
}

// ---------------------------------------------------------------------------
// JSON -> CEL.

// Conversions of objects and arrays, by identity: inputs and task outputs are
// the same objects for every item of a fan-out, so each is converted once.
// Values handed in through EvalContext are therefore treated as immutable.
const converted = new WeakMap<object, CelInput>();

function toCel(value: unknown): CelInput {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return value;
    case 'number':
      // An integral JSON number acts as a CEL int, anything else as a double.
      return Number.isSafeInteger(value) ? BigInt(value) : value;
    case 'bigint':
      return value;
    case 'undefined':
      return null;
    case 'object':
      break;
    default:
      throw new Error(`a ${typeof value} is not a JSON value`);
  }
  if (value === null) return null;
  if (value instanceof Uint8Array) return value;
  const cached = converted.get(value);
  if (cached !== undefined) return cached;
  let result: CelInput;
  if (Array.isArray(value)) {
    result = celList(value.map(toCel));
  } else if (typeof (value as { toJSON?: unknown }).toJSON === 'function') {
    // As JSON.stringify would (a Date becomes its ISO string).
    result = toCel((value as { toJSON: () => unknown }).toJSON());
  } else {
    const map = new Map<string, CelInput>();
    for (const [k, v] of Object.entries(value)) if (v !== undefined) map.set(k, toCel(v));
    result = celMap(map);
  }
  converted.set(value, result);
  return result;
}

/**
 * The variables of one evaluation. Getters on the prototype (cheap to create
 * per evaluation): only the variables an expression reads are converted.
 */
class ContextBindings {
  readonly #ctx: EvalContext;
  constructor(ctx: EvalContext) {
    this.#ctx = ctx;
  }
  get inputs(): CelInput {
    return toCel(this.#ctx.inputs ?? {});
  }
  #tasks: CelInput | undefined;
  get tasks(): CelInput {
    // Built once per evaluation: `tasks` read inside a comprehension is resolved once per element.
    if (this.#tasks) return this.#tasks;
    const map = new Map<string, CelInput>();
    for (const [name, task] of Object.entries(this.#ctx.tasks)) {
      map.set(name, celMap(new Map([['output', toCel(task.output)]])));
    }
    this.#tasks = celMap(map);
    return this.#tasks;
  }
  get item(): CelInput | undefined {
    return this.#ctx.item === undefined ? undefined : toCel(this.#ctx.item);
  }
  get index(): CelInput | undefined {
    return this.#ctx.index === undefined ? undefined : BigInt(this.#ctx.index);
  }
  get input(): CelInput | undefined {
    return this.#ctx.input === undefined ? undefined : toCel(this.#ctx.input);
  }
}

// ---------------------------------------------------------------------------
// CEL -> JSON.

class NotJson extends Error {}

function intToJson(v: bigint): number | string {
  return v >= -Number.MAX_SAFE_INTEGER && v <= Number.MAX_SAFE_INTEGER ? Number(v) : v.toString();
}

/** Seconds and nanoseconds as a decimal with no trailing zeros: 1, 1.5, 0.000000001. */
function secondsText(seconds: bigint, nanos: number): string {
  if (nanos === 0) return seconds.toString();
  return `${seconds}.${String(nanos).padStart(9, '0').replace(/0+$/, '')}`;
}

interface WellKnown {
  desc: { typeName: string };
  message: { seconds: bigint; nanos: number };
}

function isWellKnown(v: object, typeName: string): v is WellKnown {
  const desc = (v as { desc?: { typeName?: unknown } }).desc;
  const message = (v as { message?: { seconds?: unknown; nanos?: unknown } }).message;
  return desc?.typeName === typeName && typeof message?.seconds === 'bigint' && typeof message.nanos === 'number';
}

function timestampToJson({ seconds, nanos }: WellKnown['message']): string {
  const iso = new Date(Number(seconds) * 1000).toISOString(); // YYYY-MM-DDTHH:MM:SS.000Z
  const fraction = nanos === 0 ? '' : `.${String(nanos).padStart(9, '0').replace(/0+$/, '')}`;
  return `${iso.slice(0, 19)}${fraction}Z`;
}

function durationToJson({ seconds, nanos }: WellKnown['message']): string {
  const negative = seconds < 0n || nanos < 0;
  return `${negative ? '-' : ''}${secondsText(seconds < 0n ? -seconds : seconds, Math.abs(nanos))}s`;
}

function mapKey(k: unknown): string {
  if (isCelUint(k)) return k.value.toString();
  return String(k);
}

/** Converts a CEL value to plain JSON; throws NotJson for what JSON cannot hold. */
function toJson(v: CelValue): unknown {
  switch (typeof v) {
    case 'string':
    case 'boolean':
      return v;
    case 'bigint':
      return intToJson(v);
    case 'number':
      if (!Number.isFinite(v)) throw new NotJson(`${v} is not representable in JSON`);
      return Object.is(v, -0) ? 0 : v;
  }
  if (v === null) return null;
  if (isCelUint(v)) return intToJson(v.value);
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64');
  // One unit per element: a small expression can yield a list whose elements share a big list.
  if (isCelList(v)) {
    charge(v.size * JSON_ELEMENT_UNITS);
    // get(i) rather than the list's iterator: a generator step costs as much again.
    const out = new Array<unknown>(v.size);
    for (let i = 0; i < out.length; i++) out[i] = toJson(v.get(i) as CelValue);
    return out;
  }
  if (isCelMap(v)) {
    charge(v.size * JSON_ELEMENT_UNITS);
    return Object.fromEntries(Array.from(v, ([k, e]) => [mapKey(k), toJson(e)]));
  }
  if (isCelType(v)) return v.name;
  if (isWellKnown(v, 'google.protobuf.Timestamp')) return timestampToJson(v.message);
  if (isWellKnown(v, 'google.protobuf.Duration')) return durationToJson(v.message);
  throw new NotJson(`a value of type ${typeName(v)} is not representable in JSON`);
}

function typeName(v: CelValue): string {
  try {
    return celType(v).name;
  } catch {
    return typeof v;
  }
}

// ---------------------------------------------------------------------------
// Evaluation.

/**
 * Runs `fn` (an evaluation and its conversion to JSON) under a fresh meter: the
 * budget of one expression, or what is left of ctx.budget if that is less.
 * Spending it fails with an error that names the expression and the budget.
 */
function withMeter<T>(expr: string, ctx: EvalContext, field: string, fn: () => T): T {
  const shared = ctx.budget?.remaining ?? Number.POSITIVE_INFINITY;
  const m = new Meter(Math.min(MAX_EXPRESSION_COST, shared));
  const outer = meter;
  meter = m;
  try {
    const result = fn();
    if (!m.exceeded) return result;
  } catch (err) {
    if (!m.exceeded) throw err;
  } finally {
    meter = outer;
    if (ctx.budget) ctx.budget.used += Math.min(m.used, m.limit + 1);
  }
  // Over budget, whatever the interpreter made of it (an error value, or one that `||` swallowed).
  const problem =
    shared < MAX_EXPRESSION_COST
      ? `the expressions that start this task exceeded their cost budget of ${formatCost(ctx.budget?.total ?? 0)} CEL cost units, together`
      : `exceeded the cost budget of ${formatCost(MAX_EXPRESSION_COST)} CEL cost units of one expression (it iterates over too much data)`;
  throw new EvaluationError(field, expr, problem, ctx.index, { reason: 'CostBudgetExceeded' });
}

/** Evaluates an expression to its raw CEL value; call under withMeter. */
function evaluate(expr: string, ctx: EvalContext, field: string): CelValue {
  const entry = compile(expr);
  if ('error' in entry) throw new EvaluationError(field, expr, entry.error, ctx.index);
  let result: CelValue | Error;
  try {
    charge(entry.baseCost);
    result = entry.program(new ContextBindings(ctx) as unknown as Bindings);
  } catch (err) {
    result = err as Error;
  }
  if (isCelError(result) || result instanceof Error) {
    throw new EvaluationError(field, expr, result.message, ctx.index, { cause: result });
  }
  return result;
}

function json(value: CelValue, expr: string, ctx: EvalContext, field: string): unknown {
  try {
    return toJson(value);
  } catch (err) {
    if (err instanceof NotJson) throw new EvaluationError(field, expr, err.message, ctx.index);
    throw err;
  }
}

/** Evaluates an expression; the result is plain JSON. */
export function evalExpression(expr: string, ctx: EvalContext, field: string): unknown {
  return withMeter(expr, ctx, field, () => json(evaluate(expr, ctx, field), expr, ctx, field));
}

/** `when`: must yield a bool. */
export function evalCondition(expr: string, ctx: EvalContext, field: string): boolean {
  return withMeter(expr, ctx, field, () => {
    const value = evaluate(expr, ctx, field);
    if (typeof value !== 'boolean') {
      throw new EvaluationError(field, expr, `must yield a bool, not ${typeName(value)}`, ctx.index);
    }
    return value;
  });
}

/** A concurrency or rate-limit key: must yield a string of 1 to maxLength characters. */
export function evalKey(expr: string, ctx: EvalContext, field: string, maxLength: number): string {
  return withMeter(expr, ctx, field, () => {
    const value = evaluate(expr, ctx, field);
    if (typeof value !== 'string') {
      throw new EvaluationError(field, expr, `must yield a string, not ${typeName(value)}`, ctx.index);
    }
    if (value.length === 0 || value.length > maxLength) {
      throw new EvaluationError(
        field,
        expr,
        `must yield a string of 1 to ${maxLength} characters, not one of ${value.length}`,
        ctx.index,
      );
    }
    return value;
  });
}

/**
 * `forEach`: must yield a list of at most maxItems items (checked before the
 * items are converted); returns its items as plain JSON.
 */
export function evalList(
  expr: string,
  ctx: EvalContext,
  field: string,
  maxItems = Number.POSITIVE_INFINITY,
): unknown[] {
  return withMeter(expr, ctx, field, () => {
    const value = evaluate(expr, ctx, field);
    if (!isCelList(value)) {
      throw new EvaluationError(field, expr, `must yield a list, not ${typeName(value)}`, ctx.index);
    }
    if (value.size > maxItems) {
      throw new EvaluationError(
        field,
        expr,
        `yields ${value.size} items, more than the ${maxItems} a forEach may have (the operator's --max-foreach-items)`,
        ctx.index,
        { reason: 'TooManyItems' },
      );
    }
    return json(value, expr, ctx, field) as unknown[];
  });
}

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;

function renderString(s: string, ctx: EvalContext, field: string): unknown {
  if (!s.includes('${{')) return s;
  let parts: ReturnType<typeof parseTemplate>;
  try {
    parts = parseTemplate(s);
  } catch (err) {
    if (err instanceof ExpressionError) throw new EvaluationError(field, s, err.message, ctx.index);
    throw err;
  }
  const [first] = parts;
  if (parts.length === 1 && first && 'expr' in first) return evalExpression(first.expr, ctx, field);
  let out = '';
  for (const part of parts) {
    if ('text' in part) {
      out += part.text;
      continue;
    }
    const value = evalExpression(part.expr, ctx, field);
    out += typeof value === 'string' ? value : JSON.stringify(value);
  }
  return out;
}

/**
 * Renders a task's `input` (any JSON): a string that is exactly "${{ expr }}"
 * becomes the expression's value (any JSON type); "${{ }}" inside a longer
 * string is interpolated as text (strings as-is, other values as JSON);
 * objects/arrays recursively; other values as they are. field = e.g.
 * "spec.tasks[2].input" and nested paths are appended (".findings", "[0]").
 */
export function renderInput(value: unknown, ctx: EvalContext, field: string): unknown {
  if (typeof value === 'string') return renderString(value, ctx, field);
  if (Array.isArray(value)) return value.map((v, i) => renderInput(v, ctx, `${field}[${i}]`));
  if (value !== null && typeof value === 'object') {
    // fromEntries: a "__proto__" key stays an ordinary property.
    return Object.fromEntries(
      Object.entries(value).map(([k, v]) => [
        k,
        renderInput(v, ctx, IDENTIFIER.test(k) ? `${field}.${k}` : `${field}[${JSON.stringify(k)}]`),
      ]),
    );
  }
  return value;
}
