// The agentflow-agent command's configuration: a YAML or JSON file and/or
// AGENTFLOW_* environment variables (the environment wins), plus an optional
// module of handler functions.
import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { validateSpec } from './builtin/index.ts';
import { describe, isRecord, onlyKeys } from './check.ts';
import { AgentConfigError } from './errors.ts';
import { type AgentOptions, resolveOptions } from './options.ts';
import type { Handler, HandlerSpec } from './types.ts';

/** Keys a config file may hold (AgentOptions' serialisable ones, plus handlersModule). */
const FILE_KEYS = [
  'dispatcher',
  'token',
  'ca',
  'serverName',
  'credentialCheckMs',
  'namespace',
  'pool',
  'capacity',
  'agentId',
  'pod',
  'heartbeatMs',
  'drainTimeoutMs',
  'reconnect',
  'handlers',
  'handlersModule',
] as const;

type FileKey = (typeof FILE_KEYS)[number];

export interface ConfigSources {
  /** Path of the config file, if any. */
  configPath?: string;
  env: NodeJS.ProcessEnv;
}

/**
 * Builds checked AgentOptions (without logger) from the file and the
 * environment. Every error is an AgentConfigError naming the field as the
 * user wrote it: "AGENTFLOW_CAPACITY" or "agent.yaml: handlers.fetch.url".
 */
export async function loadAgentConfig(src: ConfigSources): Promise<AgentOptions> {
  const file = src.configPath ? await readConfigFile(src.configPath) : {};
  const where = src.configPath ? `${src.configPath}: ` : '';
  // Option key -> how to name it in an error.
  const names = new Map<string, string>(Object.keys(file).map((k) => [k, `${where}${k}`]));
  const opts: Record<string, unknown> = { ...file };
  delete opts.handlersModule;

  const fromEnv = (envName: string, key: string, parse: (v: string) => unknown = (v) => v) => {
    const v = src.env[envName];
    if (v === undefined || v === '') return;
    opts[key] = parse(v);
    names.set(key, envName);
  };
  fromEnv('AGENTFLOW_DISPATCHER', 'dispatcher');
  fromEnv('AGENTFLOW_TOKEN_FILE', 'token');
  fromEnv('AGENTFLOW_DISPATCHER_CA_FILE', 'ca');
  fromEnv('AGENTFLOW_DISPATCHER_SERVER_NAME', 'serverName');
  fromEnv('AGENTFLOW_CREDENTIAL_CHECK_MS', 'credentialCheckMs', (v) => (/^\d+$/.test(v.trim()) ? Number(v) : v));
  if (opts.namespace === undefined) fromEnv('POD_NAMESPACE', 'namespace');
  fromEnv('AGENTFLOW_NAMESPACE', 'namespace');
  fromEnv('AGENTFLOW_POOL', 'pool');
  fromEnv('AGENTFLOW_CAPACITY', 'capacity', (v) => (/^\d+$/.test(v.trim()) ? Number(v) : v));
  fromEnv('AGENTFLOW_AGENT_ID', 'agentId');
  fromEnv('AGENTFLOW_DRAIN_TIMEOUT_SECONDS', 'drainTimeoutMs', (v) => (/^\d+$/.test(v.trim()) ? Number(v) * 1000 : v));

  for (const gone of [
    'AGENTFLOW_ETCD_ENDPOINTS',
    'AGENTFLOW_ETCD_PREFIX',
    'AGENTFLOW_ETCD_CA_FILE',
    'AGENTFLOW_ETCD_CERT_FILE',
    'AGENTFLOW_ETCD_KEY_FILE',
  ]) {
    if (src.env[gone]) {
      // Agents hold no datastore credentials any more: say so rather than ignore a stale setting.
      throw new AgentConfigError(
        gone,
        'agents no longer connect to etcd; state and locks go through the dispatcher (remove it)',
      );
    }
  }
  const handlers: Record<string, Handler | HandlerSpec> = {};
  if (file.handlers !== undefined) {
    if (!isRecord(file.handlers)) {
      throw new AgentConfigError(
        `${where}handlers`,
        `must be a map of name to {kind: exec|http, ...}, got ${describe(file.handlers)}`,
      );
    }
    for (const [name, spec] of Object.entries(file.handlers))
      handlers[name] = validateSpec(`${where}handlers.${name}`, spec);
  }
  const envModule = src.env.AGENTFLOW_HANDLERS_MODULE;
  const modulePath = envModule ? resolve(envModule) : moduleFromFile(file.handlersModule, src.configPath, where);
  if (modulePath) {
    const field = envModule ? 'AGENTFLOW_HANDLERS_MODULE' : `${where}handlersModule`;
    for (const [name, fn] of Object.entries(await importHandlers(field, modulePath))) {
      if (name in handlers)
        throw new AgentConfigError(`${where}handlers.${name}`, `also exported by ${modulePath}; pick one`);
      handlers[name] = fn;
    }
  }
  opts.handlers = handlers;
  if (Object.keys(handlers).length === 0) {
    throw new AgentConfigError('handlers', 'no handlers: set handlers in the config file or AGENTFLOW_HANDLERS_MODULE');
  }
  const options = opts as unknown as AgentOptions;
  try {
    resolveOptions(options);
  } catch (err) {
    if (!(err instanceof AgentConfigError)) throw err;
    // "AgentOptions.capacity..." -> the name the user wrote it under.
    const [, key = '', ...rest] = err.field.split('.');
    const base = names.get(key) ?? (key === 'handlers' ? `${where}handlers` : key);
    throw new AgentConfigError([base, ...rest].join('.'), err.problem);
  }
  return options;
}

async function readConfigFile(path: string): Promise<Partial<Record<FileKey, unknown>>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new AgentConfigError('--config', `cannot read ${path}: ${(err as Error).message}`);
  }
  let doc: unknown;
  // Loaded only for a config file: agent pods are configured by the environment, and the parser is ~1.5 MiB of RSS.
  const { parse: parseYaml } = await import('yaml');
  try {
    // YAML is a superset of JSON, so one parser reads both.
    doc = parseYaml(text);
  } catch (err) {
    throw new AgentConfigError(path, `is not valid YAML or JSON: ${(err as Error).message}`);
  }
  if (doc === null || doc === undefined) return {};
  if (!isRecord(doc)) throw new AgentConfigError(path, `must hold a mapping of settings, got ${describe(doc)}`);
  for (const k of Object.keys(doc)) {
    if (!(FILE_KEYS as readonly string[]).includes(k)) {
      throw new AgentConfigError(`${path}: ${k}`, `unknown setting (known: ${FILE_KEYS.join(', ')})`);
    }
  }
  const reconnect = doc.reconnect;
  if (reconnect !== undefined) {
    if (!isRecord(reconnect))
      throw new AgentConfigError(`${path}: reconnect`, `must be {initialMs, maxMs}, got ${describe(reconnect)}`);
    onlyKeys(`${path}: reconnect`, reconnect, ['initialMs', 'maxMs']);
  }
  return doc as Partial<Record<FileKey, unknown>>;
}

function moduleFromFile(v: unknown, configPath: string | undefined, where: string): string | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || v === '') {
    throw new AgentConfigError(`${where}handlersModule`, `must be a path, got ${describe(v)}`);
  }
  // Relative to the config file, so the file and its module can move together.
  return resolve(configPath ? dirname(configPath) : '.', v);
}

/** Handler functions of a module: its default export's (if an object), else its named function exports. */
async function importHandlers(field: string, path: string): Promise<Record<string, Handler>> {
  let mod: Record<string, unknown>;
  try {
    mod = (await import(pathToFileURL(path).href)) as Record<string, unknown>;
  } catch (err) {
    throw new AgentConfigError(field, `cannot load ${path}: ${(err as Error).message}`);
  }
  const source = isRecord(mod.default)
    ? mod.default
    : Object.fromEntries(Object.entries(mod).filter(([k]) => k !== 'default'));
  const out: Record<string, Handler> = {};
  for (const [name, v] of Object.entries(source)) if (typeof v === 'function') out[name] = v as Handler;
  if (Object.keys(out).length === 0) {
    throw new AgentConfigError(
      field,
      `${path} exports no handler functions (export default {name: fn}, or named functions)`,
    );
  }
  return out;
}
