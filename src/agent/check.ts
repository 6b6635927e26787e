// Field checks shared by AgentOptions and the config file: every error names the field.
import { AgentConfigError } from './errors.ts';

export const isRecord = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

/** A short, quotable rendering of a bad value for error messages. */
export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return JSON.stringify(v.length > 60 ? `${v.slice(0, 60)}...` : v);
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  return typeof v;
}

export function onlyKeys(field: string, v: Record<string, unknown>, allowed: readonly string[]): void {
  for (const k of Object.keys(v)) {
    if (!allowed.includes(k)) {
      throw new AgentConfigError(`${field}.${k}`, `unknown field (allowed: ${allowed.join(', ')})`);
    }
  }
}

export function stringRecord(field: string, v: unknown): Record<string, string> | undefined {
  if (v === undefined) return undefined;
  if (!isRecord(v)) throw new AgentConfigError(field, `must be a map of strings, got ${describe(v)}`);
  for (const [k, val] of Object.entries(v)) {
    if (typeof val !== 'string') throw new AgentConfigError(`${field}.${k}`, `must be a string, got ${describe(val)}`);
  }
  return v as Record<string, string>;
}

export function integer(field: string, v: unknown, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `${min}-${max}`;
    throw new AgentConfigError(field, `must be an integer ${range}, got ${describe(v)}`);
  }
  return v;
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

export function dnsLabel(field: string, v: unknown): string {
  if (typeof v !== 'string' || !DNS_LABEL.test(v)) {
    throw new AgentConfigError(
      field,
      `must be a DNS-1123 label (lower-case alphanumerics and "-", 1-63), got ${describe(v)}`,
    );
  }
  return v;
}

export function nonEmptyString(field: string, v: unknown): string {
  if (typeof v !== 'string' || v.trim() === '') {
    throw new AgentConfigError(field, `must be a non-empty string, got ${describe(v)}`);
  }
  return v;
}
