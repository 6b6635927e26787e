import { describe, isRecord, onlyKeys, stringRecord } from '../check.ts';
import { AgentConfigError } from '../errors.ts';
import type { Handler, HandlerSpec } from '../types.ts';
import { execHandler } from './exec.ts';
import { ENV_NAME, TASK_IDENTITY_VARS } from './exec-env.ts';
import { httpHandler } from './http.ts';

/** Checks a built-in handler spec from options or a config file; `field` prefixes every error. */
export function validateSpec(field: string, v: unknown): HandlerSpec {
  if (!isRecord(v)) {
    throw new AgentConfigError(field, `must be a handler function or {kind: exec|http, ...}, got ${describe(v)}`);
  }
  if (v.kind === 'exec') {
    onlyKeys(field, v, ['kind', 'command', 'env', 'inheritEnv', 'cwd']);
    const { command, cwd } = v;
    if (!Array.isArray(command) || command.length === 0 || !command.every((c) => typeof c === 'string' && c !== '')) {
      throw new AgentConfigError(
        `${field}.command`,
        `must be a non-empty list of non-empty strings, got ${describe(command)}`,
      );
    }
    if (cwd !== undefined && (typeof cwd !== 'string' || cwd === '')) {
      throw new AgentConfigError(`${field}.cwd`, `must be a non-empty string, got ${describe(cwd)}`);
    }
    const env = stringRecord(`${field}.env`, v.env);
    for (const name of Object.keys(env ?? {})) envName(`${field}.env.${name}`, name);
    const inheritEnv = inheritedNames(`${field}.inheritEnv`, v.inheritEnv, env ?? {});
    return {
      kind: 'exec',
      command: command as string[],
      ...(env && { env }),
      ...(inheritEnv && { inheritEnv }),
      ...(cwd !== undefined && { cwd }),
    };
  }
  if (v.kind === 'http') {
    onlyKeys(field, v, ['kind', 'url', 'headers', 'timeoutSeconds']);
    const { url, timeoutSeconds } = v;
    if (typeof url !== 'string' || !URL.canParse(url) || !/^https?:$/.test(new URL(url).protocol)) {
      throw new AgentConfigError(`${field}.url`, `must be an http(s) URL, got ${describe(url)}`);
    }
    const parsed = new URL(url);
    // fetch refuses such a URL on every attempt, and the URL is quoted in task errors.
    if (parsed.username !== '' || parsed.password !== '') {
      throw new AgentConfigError(
        `${field}.url`,
        'must not carry credentials (user:password@); send them in headers, e.g. authorization',
      );
    }
    if (timeoutSeconds !== undefined && !(typeof timeoutSeconds === 'number' && timeoutSeconds > 0)) {
      throw new AgentConfigError(`${field}.timeoutSeconds`, `must be a number > 0, got ${describe(timeoutSeconds)}`);
    }
    const headers = stringRecord(`${field}.headers`, v.headers);
    if (headers) {
      try {
        new Headers(headers);
      } catch (err) {
        throw new AgentConfigError(`${field}.headers`, (err as Error).message);
      }
    }
    return {
      kind: 'http',
      url,
      ...(headers && { headers }),
      ...(timeoutSeconds !== undefined && { timeoutSeconds }),
    };
  }
  throw new AgentConfigError(`${field}.kind`, `must be "exec" or "http", got ${describe(v.kind)}`);
}

function envName(field: string, name: string): void {
  if (!ENV_NAME.test(name)) {
    throw new AgentConfigError(
      field,
      `must be an environment variable name (letters, digits, "_", "-", ".", not starting with a digit), got ${describe(name)}`,
    );
  }
  if ((TASK_IDENTITY_VARS as readonly string[]).includes(name)) {
    throw new AgentConfigError(field, `${name} is set by the agent to the task's identity on every attempt`);
  }
}

function inheritedNames(field: string, v: unknown, env: Record<string, string>): string[] | undefined {
  if (v === undefined) return undefined;
  if (!Array.isArray(v)) throw new AgentConfigError(field, `must be a list of variable names, got ${describe(v)}`);
  v.forEach((name: unknown, i) => {
    if (typeof name !== 'string')
      throw new AgentConfigError(`${field}[${i}]`, `must be a string, got ${describe(name)}`);
    envName(`${field}[${i}]`, name);
    if (Object.hasOwn(env, name)) {
      throw new AgentConfigError(`${field}[${i}]`, `${JSON.stringify(name)} is also set in env; keep one of the two`);
    }
  });
  return v as string[];
}

/** The handler function for an options entry: a function as is, a spec as its built-in runner. */
export function toHandler(field: string, v: unknown): Handler {
  if (typeof v === 'function') return v as Handler;
  const spec = validateSpec(field, v);
  return spec.kind === 'exec' ? execHandler(spec) : httpHandler(spec);
}
