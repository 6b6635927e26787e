import { unparse } from '@bufbuild/cel';
import type { AstNode, Comprehension } from './expressions.ts';

// A static type check of the CEL in task inputs, forEach and when, run at
// validation. @bufbuild/cel (0.6) has a checker, but it is not exported and
// types only constants and identifiers, so agentflow infers what it can itself.
// It knows a type only where the expression or the spec says it: literals,
// spec.inputs (literal JSON, so `inputs.count` is an int when count is 3),
// `item` when the forEach list is known, and what operators and the standard
// functions return. Task outputs, and whatever is built from them, are dyn
// (unknown) and never reported. Only what the interpreter would refuse is
// reported (each case is checked against it in test/unit/api/typecheck.test.ts),
// with one exception: an operand of && or || known not to be a bool, which the
// interpreter forgives when the other side decides the result.

/** A CEL type, by the names the interpreter's messages use. */
export type CelKind =
  | 'bool'
  | 'int'
  | 'uint'
  | 'double'
  | 'string'
  | 'bytes'
  | 'null_type'
  | 'list'
  | 'map'
  | 'type'
  | 'google.protobuf.Timestamp'
  | 'google.protobuf.Duration';

/** What is known of a value's type; undefined stands for dyn (unknown). */
export interface StaticType {
  kind: CelKind;
  /** A list's element type, when every element has it. */
  elem?: StaticType;
  /** The JSON value itself, for what comes from spec.inputs. */
  json?: { value: unknown };
}

type T = StaticType | undefined;

/** The CEL type of a JSON value as the engine converts it (an integral number is an int). */
export function typeOfJson(value: unknown): StaticType | undefined {
  switch (typeof value) {
    case 'string':
      return { kind: 'string', json: { value } };
    case 'boolean':
      return { kind: 'bool', json: { value } };
    case 'number':
      return { kind: Number.isSafeInteger(value) ? 'int' : 'double', json: { value } };
    case 'object':
      if (value === null) return { kind: 'null_type', json: { value } };
      if (Array.isArray(value)) {
        const elems = value.map(typeOfJson);
        const first = elems[0];
        const same = first && elems.every((e) => e?.kind === first.kind);
        return { kind: 'list', ...(same && { elem: { kind: first.kind } }), json: { value } };
      }
      return { kind: 'map', json: { value } };
    default:
      return undefined;
  }
}

export interface TypeEnv {
  /** spec.inputs when known (`{}` for a spec without inputs); undefined: unknown. */
  inputs?: unknown;
  /** The type of `item`, when the task's forEach list is known. */
  item?: StaticType;
}

const NUMERIC = new Set<CelKind>(['int', 'uint', 'double']);
const ORDERED = new Set<CelKind>([
  'int',
  'uint',
  'double',
  'string',
  'bytes',
  'bool',
  'google.protobuf.Timestamp',
  'google.protobuf.Duration',
]);
const TS: CelKind = 'google.protobuf.Timestamp';
const DUR: CelKind = 'google.protobuf.Duration';
const RESULT: Record<string, CelKind> = {
  size: 'int',
  int: 'int',
  uint: 'uint',
  double: 'double',
  string: 'string',
  bytes: 'bytes',
  bool: 'bool',
  type: 'type',
  timestamp: TS,
  duration: DUR,
  contains: 'bool',
  startsWith: 'bool',
  endsWith: 'bool',
  matches: 'bool',
  '@in': 'bool',
  _in_: 'bool',
  '_==_': 'bool',
  '_!=_': 'bool',
  '_<_': 'bool',
  '_<=_': 'bool',
  '_>_': 'bool',
  '_>=_': 'bool',
  '!_': 'bool',
  '_&&_': 'bool',
  '_||_': 'bool',
  lowerAscii: 'string',
  upperAscii: 'string',
  trim: 'string',
  replace: 'string',
  substring: 'string',
  charAt: 'string',
  format: 'string',
  join: 'string',
  quote: 'string',
  indexOf: 'int',
  lastIndexOf: 'int',
};
const SYMBOL: Record<string, string> = {
  '_+_': '+',
  '_-_': '-',
  '_*_': '*',
  '_/_': '/',
  '_%_': '%',
  '_<_': '<',
  '_<=_': '<=',
  '_>_': '>',
  '_>=_': '>=',
};

/** A sub-expression as the user wrote it, more or less, for a message. */
function describer(sourceInfo: unknown): (node: AstNode) => string {
  return (node) => {
    try {
      // With the parse's sourceInfo, unparse prints macros as written rather than as comprehensions.
      const text = unparse({ $typeName: 'cel.expr.ParsedExpr', expr: node, sourceInfo } as never);
      return text.length <= 60 ? text : `${text.slice(0, 57)}...`;
    } catch {
      return 'an expression';
    }
  };
}

const isIdent = (node: AstNode | undefined, name: string): boolean =>
  node?.exprKind.case === 'identExpr' && (node.exprKind.value as { name: string }).name === name;

/** A list of names for a message: `a, b, c` or `a, b, c, ... (12)`. */
function some(names: string[]): string {
  return names.length <= 8 ? names.join(', ') : `${names.slice(0, 8).join(', ')}, ... (${names.length})`;
}

/**
 * Infers the type of an expression and reports what is known to go wrong with
 * it: an operator or function applied to types it does not take, a field read
 * of a value that has no fields (or of spec.inputs that it does not have), a
 * macro over what is not a list or map, a condition that is not a bool.
 */
export function inferType(
  parsed: { expr?: AstNode; sourceInfo?: unknown },
  env: TypeEnv,
): { type: StaticType | undefined; problems: string[] } {
  const describe = describer(parsed.sourceInfo);
  const problems: string[] = [];
  const report = (p: string) => {
    if (!problems.includes(p)) problems.push(p);
  };
  const needBool = (node: AstNode, t: T, what: string) => {
    if (t && t.kind !== 'bool') report(`${describe(node)} is ${t.kind}, but ${what} must be a bool`);
  };

  // guarded: the node may not be evaluated (a branch, the other side of && or ||,
  // the body of a macro), so reading a field spec.inputs lacks is not reported there.
  const infer = (node: AstNode | undefined, locals: ReadonlyMap<string, T>, guarded: boolean): T => {
    if (!node) return undefined;
    const { case: kind, value } = node.exprKind;
    switch (kind) {
      case 'constExpr':
        return constType((value as { constantKind: { case: string } }).constantKind.case);
      case 'identExpr': {
        const name = (value as { name: string }).name;
        if (locals.has(name)) return locals.get(name);
        if (name === 'inputs') return env.inputs === undefined ? { kind: 'map' } : typeOfJson(env.inputs);
        if (name === 'item') return env.item;
        if (name === 'tasks') return { kind: 'map' };
        return undefined;
      }
      case 'selectExpr': {
        const sel = value as { operand?: AstNode; field: string; testOnly?: boolean };
        const operand = infer(sel.operand, locals, guarded);
        // has() of anything is a bool (false for a value without fields): only its operand can fail.
        if (sel.testOnly) return { kind: 'bool' };
        return field(sel.operand as AstNode, operand, sel.field, guarded);
      }
      case 'listExpr': {
        const elems = (value as { elements: AstNode[] }).elements.map((e) => infer(e, locals, guarded));
        const first = elems[0];
        const same = first && elems.every((e) => e?.kind === first.kind);
        return { kind: 'list', ...(same && { elem: { kind: first.kind } }) };
      }
      case 'structExpr': {
        const s = value as {
          messageName?: string;
          entries: { keyKind: { case: string; value?: unknown }; value?: AstNode }[];
        };
        for (const e of s.entries) {
          if (e.keyKind.case === 'mapKey') infer(e.keyKind.value as AstNode, locals, guarded);
          infer(e.value, locals, guarded);
        }
        return s.messageName ? undefined : { kind: 'map' };
      }
      case 'comprehensionExpr':
        return comprehension(value as Comprehension, locals, guarded);
      case 'callExpr':
        return call(node, value as { function: string; target?: AstNode; args: AstNode[] }, locals, guarded);
      default:
        return undefined;
    }
  };

  const field = (operandNode: AstNode, operand: T, name: string, guarded: boolean): T => {
    if (!operand) return undefined;
    if (operand.kind !== 'map') {
      if (operand.kind !== 'type') report(`${describe(operandNode)} is ${operand.kind}, which has no field "${name}"`);
      return undefined;
    }
    const obj = operand.json?.value as Record<string, unknown> | undefined;
    if (obj === undefined) return undefined;
    if (!Object.hasOwn(obj, name)) {
      if (!guarded) {
        const keys = Object.keys(obj);
        report(
          `${describe(operandNode)} has no field "${name}" (${keys.length ? `it has: ${some(keys)}` : 'it is empty'})`,
        );
      }
      return undefined;
    }
    return typeOfJson(obj[name]);
  };

  const comprehension = (c: Comprehension, locals: ReadonlyMap<string, T>, guarded: boolean): T => {
    const range = infer(c.iterRange, locals, guarded);
    if (range && range.kind !== 'list' && range.kind !== 'map') {
      report(`${describe(c.iterRange)} is ${range.kind}: a macro (all, exists, map, filter) needs a list or a map`);
    }
    const inner = new Map(locals);
    const keyOrIndex: T =
      range?.kind === 'list' ? { kind: 'int' } : range?.kind === 'map' ? { kind: 'string' } : undefined;
    if (c.iterVar2) {
      inner.set(c.iterVar, keyOrIndex);
      inner.set(c.iterVar2, range?.kind === 'list' ? range.elem : undefined);
    } else {
      inner.set(
        c.iterVar,
        range?.kind === 'list' ? range.elem : range?.kind === 'map' ? { kind: 'string' } : undefined,
      );
    }
    inner.set(c.accuVar, infer(c.accuInit, locals, guarded));
    // The macros' steps: `@result && p` (all), `@result || p` (exists), `p ? ... : @result`
    // (filter, exists_one): p is the user's condition.
    const step = c.loopStep.exprKind;
    if (step.case === 'callExpr') {
      const s = step.value as { function: string; args: AstNode[] };
      const [a, b, e] = s.args;
      if ((s.function === '_&&_' || s.function === '_||_') && isIdent(a, c.accuVar) && b) {
        needBool(b, infer(b, inner, true), `the condition of ${s.function === '_&&_' ? 'all()' : 'exists()'}`);
        return { kind: 'bool' };
      }
      if (s.function === '_?_:_' && a && b && isIdent(e, c.accuVar)) {
        needBool(a, infer(a, inner, true), 'the condition of filter() or exists_one()');
        infer(b, inner, true);
        return infer(c.result, inner, true);
      }
    }
    infer(c.loopStep, inner, true);
    return infer(c.result, inner, true);
  };

  const call = (
    node: AstNode,
    c: { function: string; target?: AstNode; args: AstNode[] },
    locals: ReadonlyMap<string, T>,
    guarded: boolean,
  ): T => {
    const fn = c.function;
    const branchy = fn === '_&&_' || fn === '_||_' || fn === '_?_:_';
    const target = c.target ? infer(c.target, locals, guarded) : undefined;
    const args = c.args.map((a, i) => infer(a, locals, guarded || (branchy && !(fn === '_?_:_' && i === 0))));
    const [a, b] = args;
    const [na, nb] = c.args as [AstNode, AstNode];
    switch (fn) {
      case '_&&_':
      case '_||_':
        for (const [i, n] of c.args.entries()) needBool(n, args[i], `an operand of ${fn === '_&&_' ? '&&' : '||'}`);
        return { kind: 'bool' };
      case '!_':
        needBool(na, a, 'the operand of !');
        return { kind: 'bool' };
      case '_?_:_': {
        needBool(na, a, 'the condition of ?:');
        const [, x, y] = args;
        return x && y && x.kind === y.kind ? { kind: x.kind } : undefined;
      }
      case '_+_':
      case '_-_':
      case '_*_':
      case '_/_':
      case '_%_':
        return arithmetic(node, fn, a, b);
      case '-_':
        if (a && !['int', 'double', DUR].includes(a.kind)) report(`-${describe(na)}: ${a.kind} cannot be negated`);
        return a ? { kind: a.kind } : undefined;
      case '_<_':
      case '_<=_':
      case '_>_':
      case '_>=_':
        if (a && b && !(NUMERIC.has(a.kind) && NUMERIC.has(b.kind)) && (a.kind !== b.kind || !ORDERED.has(a.kind))) {
          report(`${describe(node)}: ${a.kind} and ${b.kind} cannot be compared with ${SYMBOL[fn]}`);
        }
        return { kind: 'bool' };
      case '@in':
        if (b && b.kind !== 'list' && b.kind !== 'map')
          report(`${describe(node)}: "in" needs a list or a map, not ${b.kind}`);
        return { kind: 'bool' };
      case '_[_]':
        if (!a) return undefined;
        if (a.kind === 'list') return a.elem;
        if (a.kind === 'map') {
          const key = nb?.exprKind.case === 'constExpr' ? constValue(nb) : undefined;
          return typeof key === 'string' ? field(na, a, key, guarded) : undefined;
        }
        report(`${describe(node)}: ${a.kind} cannot be indexed`);
        return undefined;
      case 'size': {
        const arg = c.target ? target : a;
        const argNode = c.target ?? na;
        if (arg && !['string', 'bytes', 'list', 'map'].includes(arg.kind)) {
          report(`size(${describe(argNode)}): ${arg.kind} has no size`);
        }
        return { kind: 'int' };
      }
      case 'split':
        return { kind: 'list', elem: { kind: 'string' } };
      case 'dyn':
        return undefined;
      default: {
        const kind = RESULT[fn];
        return kind ? { kind } : undefined;
      }
    }
  };

  const arithmetic = (node: AstNode, fn: string, a: T, b: T): T => {
    if (!a || !b) return fn === '_+_' && (a?.kind === 'list' || b?.kind === 'list') ? { kind: 'list' } : undefined;
    const x = a.kind;
    const y = b.kind;
    let out: CelKind | undefined;
    if (x === y) {
      const ok: Record<string, CelKind[]> = {
        '_+_': ['int', 'uint', 'double', 'string', 'bytes', 'list', DUR],
        '_-_': ['int', 'uint', 'double', DUR],
        '_*_': ['int', 'uint', 'double'],
        '_/_': ['int', 'uint', 'double'],
        '_%_': ['int', 'uint'],
      };
      if (ok[fn]?.includes(x)) out = x;
      else if (fn === '_-_' && x === TS) out = DUR;
    } else if (fn === '_+_' && ((x === TS && y === DUR) || (x === DUR && y === TS))) out = TS;
    else if (fn === '_-_' && x === TS && y === DUR) out = TS;
    if (!out) {
      const hint =
        NUMERIC.has(x) && NUMERIC.has(y)
          ? ' (CEL does not mix int, uint and double: convert one with int(), uint() or double())'
          : '';
      report(`${describe(node)}: ${x} ${SYMBOL[fn]} ${y} is not defined${hint}`);
      return undefined;
    }
    if (out === 'list') return { kind: 'list', ...(a.elem && a.elem.kind === b.elem?.kind && { elem: a.elem }) };
    return { kind: out };
  };

  const type = infer(parsed.expr, new Map(), false);
  return { type, problems };
}

function constType(kind: string): T {
  switch (kind) {
    case 'boolValue':
      return { kind: 'bool' };
    case 'int64Value':
      return { kind: 'int' };
    case 'uint64Value':
      return { kind: 'uint' };
    case 'doubleValue':
      return { kind: 'double' };
    case 'stringValue':
      return { kind: 'string' };
    case 'bytesValue':
      return { kind: 'bytes' };
    case 'nullValue':
      return { kind: 'null_type' };
    default:
      return undefined;
  }
}

function constValue(node: AstNode): unknown {
  return (node.exprKind.value as { constantKind: { value?: unknown } }).constantKind.value;
}
