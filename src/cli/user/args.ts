// Parsers of flag values, for commander's argParser (its InvalidArgumentError names the flag).
import { InvalidArgumentError } from 'commander';
import { parse as parseYaml } from 'yaml';

/**
 * One `-p key=value`: the value read as a YAML scalar, so `-p n=3` is the number
 * 3, `-p ok=true` a boolean, `-p x=null` null; anything that is no scalar
 * (`a: b`, `[1, 2]`) or not YAML stays the string as typed, and so does an empty value.
 */
export function parseParam(text: string): Param {
  const eq = text.indexOf('=');
  if (eq <= 0) throw new InvalidArgumentError(`expected key=value, got ${JSON.stringify(text)}`);
  const key = text.slice(0, eq);
  const raw = text.slice(eq + 1);
  if (raw === '') return [key, '', raw];
  let value: unknown;
  try {
    value = parseYaml(raw);
  } catch {
    return [key, raw, raw];
  }
  const scalar = value === null || ['string', 'number', 'boolean'].includes(typeof value);
  return [key, scalar ? value : raw, raw];
}

/** One -p: its key, its value read as a YAML scalar, and the text as typed (a string parameter takes that). */
export type Param = [key: string, value: unknown, text: string];

/** A Go-style duration as kubectl's --request-timeout takes it: `30s`, `1m30s`, `500ms`, or bare seconds; 0: none. */
export function parseDuration(text: string): number {
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const unit: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/gy;
  let total = 0;
  let at = 0;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    total += Number(m[1]) * (unit[m[2] as string] as number);
    at = re.lastIndex;
  }
  if (text === '' || at !== text.length) {
    throw new InvalidArgumentError('expected a duration such as 30s, 1m30s, 500ms or 0 (no limit)');
  }
  return total;
}

export function positiveInt(text: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < 1) throw new InvalidArgumentError('expected a whole number of at least 1');
  return n;
}

/** Collects repeated -p flags. */
export function collectParam(text: string, previous: Param[] = []): Param[] {
  return [...previous, parseParam(text)];
}
