import {
  type CelInput,
  type CelValue,
  celEnv,
  celList,
  celMap,
  celType,
  isCelError,
  isCelList,
  isCelMap,
  isCelType,
  isCelUint,
  parse,
  plan,
} from '@bufbuild/cel';
import { strings } from '@bufbuild/cel/ext';
import { ExpressionError, parseTemplate } from '../api/expressions.ts';

// Runtime evaluation of the CEL in task inputs, forEach and when (the static
// checks are in src/api/expressions.ts). Values cross the boundary as plain
// JSON: on the way in, an integral JSON number becomes a CEL int (so
// `inputs.n + 1` works) and any other number a double; on the way out, CEL
// values are turned back into JSON (see toJson).

/** What an expression can see. */
export interface EvalContext {
  inputs: unknown;
  tasks: Record<string, { output: unknown }>;
  item?: unknown;
  /** index of the forEach item */
  index?: number;
}

/** An expression failed at run time: the message names field, expression and reason. */
export class EvaluationError extends Error {
  override name = 'EvaluationError';
  /** Where the expression is, e.g. `spec.tasks[2].input.findings`. */
  readonly field: string;
  /** The expression (for a malformed template, the whole string). */
  readonly expression: string;

  constructor(field: string, expression: string, reason: string, index?: number, options?: ErrorOptions) {
    super(`${field}: ${expression}: ${reason}${index === undefined ? '' : ` (forEach item ${index})`}`, options);
    this.field = field;
    this.expression = expression;
  }
}

// ---------------------------------------------------------------------------
// Compilation (cached: the engine evaluates one expression for every forEach
// item).

type Bindings = Record<string, CelInput>;
type Program = (bindings: Bindings) => CelValue | Error;
type Compiled = { program: Program } | { error: string };

const env = celEnv({ funcs: strings });
const MAX_CACHED = 4096;
const compiled = new Map<string, Compiled>();

function compile(expr: string): Compiled {
  let entry = compiled.get(expr);
  if (entry) return entry;
  try {
    entry = { program: plan(env, parse(expr)) as Program };
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
  get tasks(): CelInput {
    const map = new Map<string, CelInput>();
    for (const [name, task] of Object.entries(this.#ctx.tasks)) {
      map.set(name, celMap(new Map([['output', toCel(task.output)]])));
    }
    return celMap(map);
  }
  get item(): CelInput | undefined {
    return this.#ctx.item === undefined ? undefined : toCel(this.#ctx.item);
  }
  get index(): CelInput | undefined {
    return this.#ctx.index === undefined ? undefined : BigInt(this.#ctx.index);
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
  if (isCelList(v)) return Array.from(v, toJson);
  if (isCelMap(v)) return Object.fromEntries(Array.from(v, ([k, e]) => [mapKey(k), toJson(e)]));
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

/** Evaluates an expression to its raw CEL value. */
function evaluate(expr: string, ctx: EvalContext, field: string): CelValue {
  const entry = compile(expr);
  if ('error' in entry) throw new EvaluationError(field, expr, entry.error, ctx.index);
  let result: CelValue | Error;
  try {
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
  return json(evaluate(expr, ctx, field), expr, ctx, field);
}

/** `when`: must yield a bool. */
export function evalCondition(expr: string, ctx: EvalContext, field: string): boolean {
  const value = evaluate(expr, ctx, field);
  if (typeof value !== 'boolean') {
    throw new EvaluationError(field, expr, `must yield a bool, not ${typeName(value)}`, ctx.index);
  }
  return value;
}

/** `forEach`: must yield a list; returns its items as plain JSON. */
export function evalList(expr: string, ctx: EvalContext, field: string): unknown[] {
  const value = evaluate(expr, ctx, field);
  if (!isCelList(value)) {
    throw new EvaluationError(field, expr, `must yield a list, not ${typeName(value)}`, ctx.index);
  }
  return json(value, expr, ctx, field) as unknown[];
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
