import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify as toYaml } from 'yaml';
import { loadAgentConfig } from '../../../src/agent/config.ts';
import { AgentConfigError } from '../../../src/agent/errors.ts';
import type { Handler } from '../../../src/agent/index.ts';
import { stubContext } from './task-context-stub.ts';

/** A complete, valid config file's settings. */
const BASE = {
  dispatcher: 'dispatcher.agentflow:7070',
  namespace: 'team-a',
  pool: 'gpu',
  capacity: 4,
  handlers: { fetch: { kind: 'http', url: 'http://fetcher.test/run' } },
};

const { handlers: _, ...BASE_NO_HANDLERS } = BASE;

let dir: string;
let seq = 0;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agentflow-config-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Writes a file under a fresh subdirectory of the temp dir; returns its path. */
async function write(name: string, content: string): Promise<string> {
  const sub = join(dir, `case-${++seq}`);
  await mkdir(sub, { recursive: true });
  const path = join(sub, name);
  await writeFile(path, content);
  return path;
}

const yamlFile = (doc: unknown, name = 'agent.yaml') => write(name, typeof doc === 'string' ? doc : toYaml(doc));

/** The AgentConfigError a load rejects with (fails the test if it resolves or throws something else). */
async function configError(p: Promise<unknown>): Promise<AgentConfigError> {
  const err = await p.then(
    (v) => {
      throw new Error(`expected an AgentConfigError, resolved with ${JSON.stringify(v)}`);
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(AgentConfigError);
  return err as AgentConfigError;
}

interface BadCase {
  name: string;
  /** Config file content: an object (written as YAML), a string (written as is), or none. */
  file?: unknown;
  /** Path of the config file when it must not exist. */
  missingFile?: boolean;
  /** Makes a handlers module next to the config file: its file name and source. */
  module?: [string, string];
  env?: Record<string, string>;
  /** The error's field; PATH stands for the config file's path. */
  field: string;
  problem: string;
}

const BAD: BadCase[] = [
  {
    name: 'an unknown setting in the file',
    file: { ...BASE, colour: 'blue' },
    field: 'PATH: colour',
    problem: 'unknown setting (known: dispatcher, token, ca, serverName,',
  },
  {
    name: 'a non-numeric AGENTFLOW_CAPACITY',
    file: BASE,
    env: { AGENTFLOW_CAPACITY: 'abc' },
    field: 'AGENTFLOW_CAPACITY',
    problem: 'must be an integer 1-1024, got "abc"',
  },
  {
    name: 'a negative AGENTFLOW_CAPACITY',
    file: BASE,
    env: { AGENTFLOW_CAPACITY: '-3' },
    field: 'AGENTFLOW_CAPACITY',
    problem: 'must be an integer 1-1024, got "-3"',
  },
  {
    name: 'capacity 0 in the file',
    file: { ...BASE, capacity: 0 },
    field: 'PATH: capacity',
    problem: 'must be an integer 1-1024, got 0',
  },
  {
    name: 'a capacity over the limit in the file',
    file: { ...BASE, capacity: 1025 },
    field: 'PATH: capacity',
    problem: 'must be an integer 1-1024, got 1025',
  },
  {
    name: 'a bad dispatcher address in the file',
    file: { ...BASE, dispatcher: 'no port here' },
    field: 'PATH: dispatcher',
    problem: 'must be "host:port", got "no port here"',
  },
  {
    name: 'a bad dispatcher address in AGENTFLOW_DISPATCHER',
    file: BASE,
    env: { AGENTFLOW_DISPATCHER: 'http://dispatcher:7070' },
    field: 'AGENTFLOW_DISPATCHER',
    problem: 'must be "host:port", got "http://dispatcher:7070"',
  },
  {
    name: 'a bad AGENTFLOW_NAMESPACE',
    file: BASE,
    env: { AGENTFLOW_NAMESPACE: 'Team_A' },
    field: 'AGENTFLOW_NAMESPACE',
    problem: 'must be a DNS-1123 label',
  },
  {
    name: 'a bad POD_NAMESPACE when the file has no namespace',
    file: { ...BASE, namespace: undefined },
    env: { POD_NAMESPACE: 'Not Valid' },
    field: 'POD_NAMESPACE',
    problem: 'got "Not Valid"',
  },
  {
    name: 'etcd endpoints in the file (agents no longer reach etcd)',
    file: { ...BASE, etcd: ['http://etcd-0:2379'] },
    field: 'PATH: etcd',
    problem: 'unknown setting',
  },
  {
    name: 'a stale AGENTFLOW_ETCD_ENDPOINTS',
    file: BASE,
    env: { AGENTFLOW_ETCD_ENDPOINTS: 'http://etcd:2379' },
    field: 'AGENTFLOW_ETCD_ENDPOINTS',
    problem: 'agents no longer connect to etcd; state and locks go through the dispatcher (remove it)',
  },
  {
    name: 'a stale AGENTFLOW_ETCD_CA_FILE',
    file: BASE,
    env: { AGENTFLOW_ETCD_CA_FILE: '/etc/etcd/ca.crt' },
    field: 'AGENTFLOW_ETCD_CA_FILE',
    problem: 'agents no longer connect to etcd',
  },
  {
    name: 'a token in the file that is not a path',
    file: { ...BASE, token: 42 },
    field: 'PATH: token',
    problem: 'must be a token file path or a function, got 42',
  },
  {
    name: 'a CA in the file that is not a path',
    file: { ...BASE, ca: ['pem'] },
    field: 'PATH: ca',
    problem: 'must be PEM bytes or a CA file path, got an array',
  },
  {
    name: 'a bad AGENTFLOW_DISPATCHER_SERVER_NAME',
    file: BASE,
    env: { AGENTFLOW_DISPATCHER_SERVER_NAME: 'dispatcher/agentflow' },
    field: 'AGENTFLOW_DISPATCHER_SERVER_NAME',
    problem: 'must be a host name, got "dispatcher/agentflow"',
  },
  {
    name: 'an AGENTFLOW_CREDENTIAL_CHECK_MS below the minimum',
    file: BASE,
    env: { AGENTFLOW_CREDENTIAL_CHECK_MS: '10' },
    field: 'AGENTFLOW_CREDENTIAL_CHECK_MS',
    problem: 'must be an integer >= 50, got 10',
  },
  {
    name: 'insecurePlaintext in the file (not a setting the command offers)',
    file: { ...BASE, insecurePlaintext: true },
    field: 'PATH: insecurePlaintext',
    problem: 'unknown setting',
  },
  {
    name: 'an http handler with an ftp:// url',
    file: { ...BASE, handlers: { fetch: { kind: 'http', url: 'ftp://files.test/x' } } },
    field: 'PATH: handlers.fetch.url',
    problem: 'must be an http(s) URL, got "ftp://files.test/x"',
  },
  {
    name: 'an http handler with a zero timeout',
    file: { ...BASE, handlers: { fetch: { kind: 'http', url: 'http://a.test/', timeoutSeconds: 0 } } },
    field: 'PATH: handlers.fetch.timeoutSeconds',
    problem: 'must be a number > 0, got 0',
  },
  {
    name: 'an exec handler with an empty command',
    file: { ...BASE, handlers: { run: { kind: 'exec', command: [] } } },
    field: 'PATH: handlers.run.command',
    problem: 'must be a non-empty list of non-empty strings, got an array',
  },
  {
    name: 'an exec handler with an unknown field',
    file: { ...BASE, handlers: { run: { kind: 'exec', command: ['true'], shell: true } } },
    field: 'PATH: handlers.run.shell',
    problem: 'unknown field (allowed: kind, command, env, inheritEnv, cwd)',
  },
  {
    name: 'handler kind "grpc"',
    file: { ...BASE, handlers: { fetch: { kind: 'grpc', target: 'x:1' } } },
    field: 'PATH: handlers.fetch.kind',
    problem: 'must be "exec" or "http", got "grpc"',
  },
  {
    name: 'handlers that are not a map',
    file: { ...BASE, handlers: ['fetch'] },
    field: 'PATH: handlers',
    problem: 'must be a map of name to {kind: exec|http, ...}, got an array',
  },
  {
    name: 'a reconnect with an unknown key',
    file: { ...BASE, reconnect: { initialMs: 100, maxMs: 1000, jitter: 1 } },
    field: 'PATH: reconnect.jitter',
    problem: 'unknown field',
  },
  {
    name: 'a reconnect whose maxMs is below initialMs',
    file: { ...BASE, reconnect: { initialMs: 500, maxMs: 100 } },
    field: 'PATH: reconnect.maxMs',
    problem: 'must be an integer >= 500, got 100',
  },
  {
    name: 'a handlersModule that does not exist',
    file: { ...BASE_NO_HANDLERS, handlersModule: './no-such-module.mjs' },
    field: 'PATH: handlersModule',
    problem: 'cannot load ',
  },
  {
    name: 'an AGENTFLOW_HANDLERS_MODULE that does not exist',
    file: BASE_NO_HANDLERS,
    env: { AGENTFLOW_HANDLERS_MODULE: join(tmpdir(), 'agentflow-no-such-dir', 'handlers.mjs') },
    field: 'AGENTFLOW_HANDLERS_MODULE',
    problem: `cannot load ${join(tmpdir(), 'agentflow-no-such-dir', 'handlers.mjs')}`,
  },
  {
    name: 'a handlersModule that is not a string',
    file: { ...BASE_NO_HANDLERS, handlersModule: 42 },
    field: 'PATH: handlersModule',
    problem: 'must be a path, got 42',
  },
  {
    name: 'a handlersModule exporting no functions',
    file: { ...BASE_NO_HANDLERS, handlersModule: './consts.mjs' },
    module: ['consts.mjs', 'export const answer = 42;\nexport default "not an object";\n'],
    field: 'PATH: handlersModule',
    problem: 'consts.mjs exports no handler functions',
  },
  {
    name: 'a module export clashing with a handler in the file',
    file: { ...BASE, handlersModule: './clash.mjs' },
    module: ['clash.mjs', 'export function fetch() { return 1; }\n'],
    field: 'PATH: handlers.fetch',
    problem: 'clash.mjs; pick one',
  },
  {
    name: 'no handlers at all',
    file: BASE_NO_HANDLERS,
    field: 'handlers',
    problem: 'no handlers: set handlers in the config file or AGENTFLOW_HANDLERS_MODULE',
  },
  {
    name: 'an empty handlers map',
    file: { ...BASE, handlers: {} },
    field: 'handlers',
    problem: 'no handlers',
  },
  {
    name: 'an unreadable config path',
    missingFile: true,
    field: '--config',
    problem: 'cannot read PATH: ENOENT',
  },
  {
    name: 'YAML that is a list, not a mapping',
    file: '- dispatcher\n- pool\n',
    field: 'PATH',
    problem: 'must hold a mapping of settings, got an array',
  },
  {
    name: 'YAML that is a scalar',
    file: 'just words\n',
    field: 'PATH',
    problem: 'must hold a mapping of settings, got "just words"',
  },
  {
    name: 'text that is neither YAML nor JSON',
    file: 'dispatcher: [unclosed\n',
    field: 'PATH',
    problem: 'is not valid YAML or JSON: ',
  },
];

describe('loadAgentConfig rejects', () => {
  it.each(BAD)('$name', async (c) => {
    let path: string;
    if (c.missingFile) {
      path = join(dir, 'does-not-exist', 'agent.yaml');
    } else {
      path = await yamlFile(c.file);
      if (c.module) await writeFile(join(path, '..', c.module[0]), c.module[1]);
    }
    const err = await configError(loadAgentConfig({ configPath: path, env: c.env ?? {} }));
    expect(err.field).toBe(c.field.replace('PATH', path));
    expect(err.problem).toContain(c.problem.replace('PATH', path));
    expect(err.message).toBe(`${err.field}: ${err.problem}`);
  });

  it('names the environment variable when there is no config file', async () => {
    const mod = await write('ok-handlers.mjs', 'export const ping = () => "pong";\n');
    const err = await configError(
      loadAgentConfig({
        env: {
          AGENTFLOW_DISPATCHER: 'dispatcher:7070',
          AGENTFLOW_NAMESPACE: 'team-a',
          AGENTFLOW_POOL: 'Pool!',
          AGENTFLOW_CAPACITY: '2',
          AGENTFLOW_HANDLERS_MODULE: mod,
        },
      }),
    );
    expect(err.field).toBe('AGENTFLOW_POOL');
    expect(err.problem).toContain('must be a DNS-1123 label');
    expect(err.problem).toContain('got "Pool!"');
  });
});

describe('loadAgentConfig', () => {
  it('reads a YAML file and keeps its handler specs', async () => {
    const creds = {
      token: '/var/run/secrets/tokens/agentflow',
      ca: '/etc/agentflow/ca.crt',
      serverName: 'agentflow-dispatcher.agentflow-system.svc',
    };
    const path = await yamlFile({ ...BASE, ...creds, reconnect: { initialMs: 50, maxMs: 500 } });
    const opts = await loadAgentConfig({ configPath: path, env: {} });
    expect(opts).toEqual({
      ...BASE,
      ...creds,
      reconnect: { initialMs: 50, maxMs: 500 },
      handlers: { fetch: { kind: 'http', url: 'http://fetcher.test/run' } },
    });
    expect(opts).not.toHaveProperty('handlersModule');
  });

  it('reads a JSON file', async () => {
    const path = await write(
      'agent.json',
      JSON.stringify({
        ...BASE,
        pool: 'json-pool',
        handlers: { run: { kind: 'exec', command: ['/bin/echo', 'hi'], cwd: '/tmp' } },
      }),
    );
    const opts = await loadAgentConfig({ configPath: path, env: {} });
    expect(opts.pool).toBe('json-pool');
    expect(opts.capacity).toBe(4);
    expect(opts.handlers).toEqual({ run: { kind: 'exec', command: ['/bin/echo', 'hi'], cwd: '/tmp' } });
  });

  it('lets the environment override the file', async () => {
    const path = await yamlFile(BASE);
    const opts = await loadAgentConfig({
      configPath: path,
      env: {
        AGENTFLOW_DISPATCHER: 'other-dispatcher:9090',
        AGENTFLOW_POOL: 'cpu',
        AGENTFLOW_CAPACITY: ' 16 ',
        AGENTFLOW_AGENT_ID: 'agent-7',
        AGENTFLOW_NAMESPACE: 'team-b',
        AGENTFLOW_TOKEN_FILE: '/run/token',
        AGENTFLOW_DISPATCHER_CA_FILE: '/run/ca.crt',
        AGENTFLOW_DISPATCHER_SERVER_NAME: 'dispatcher.example',
        AGENTFLOW_CREDENTIAL_CHECK_MS: '2000',
      },
    });
    expect(opts).toMatchObject({
      dispatcher: 'other-dispatcher:9090',
      pool: 'cpu',
      capacity: 16,
      agentId: 'agent-7',
      namespace: 'team-b',
      token: '/run/token',
      ca: '/run/ca.crt',
      serverName: 'dispatcher.example',
      credentialCheckMs: 2000,
    });
  });

  it('ignores empty environment variables', async () => {
    const path = await yamlFile(BASE);
    const opts = await loadAgentConfig({ configPath: path, env: { AGENTFLOW_POOL: '', AGENTFLOW_CAPACITY: '' } });
    expect(opts.pool).toBe('gpu');
    expect(opts.capacity).toBe(4);
  });

  it('leaves token, CA, namespace and pool unset when nothing names them (a pool pod: defaults and the dispatcher fill them)', async () => {
    const { namespace: _ns, pool: _pool, ...podFile } = BASE;
    const opts = await loadAgentConfig({ configPath: await yamlFile(podFile), env: {} });
    for (const k of ['token', 'ca', 'serverName', 'namespace', 'pool']) expect(opts).not.toHaveProperty(k);
    expect(opts).toMatchObject({ dispatcher: BASE.dispatcher, capacity: 4 });
  });

  it('uses POD_NAMESPACE only when no namespace is set', async () => {
    const withNs = await yamlFile(BASE);
    const withoutNs = await yamlFile({ ...BASE, namespace: undefined });
    const load = (configPath: string, env: Record<string, string>) =>
      loadAgentConfig({ configPath, env }).then((o) => o.namespace);
    expect(await load(withoutNs, { POD_NAMESPACE: 'from-pod' })).toBe('from-pod');
    expect(await load(withNs, { POD_NAMESPACE: 'from-pod' })).toBe('team-a');
    expect(await load(withoutNs, { POD_NAMESPACE: 'from-pod', AGENTFLOW_NAMESPACE: 'from-env' })).toBe('from-env');
  });

  it('works from the environment alone, with no config file', async () => {
    const mod = await write('env-handlers.mjs', 'export const ping = () => "pong";\n');
    const opts = await loadAgentConfig({
      env: {
        AGENTFLOW_DISPATCHER: 'dns:///dispatcher.agentflow:7070',
        AGENTFLOW_TOKEN_FILE: '/var/run/secrets/agentflow/token',
        AGENTFLOW_NAMESPACE: 'team-a',
        AGENTFLOW_POOL: 'default',
        AGENTFLOW_CAPACITY: '1',
        AGENTFLOW_HANDLERS_MODULE: mod,
      },
    });
    expect(opts).toMatchObject({
      dispatcher: 'dns:///dispatcher.agentflow:7070',
      token: '/var/run/secrets/agentflow/token',
      namespace: 'team-a',
      pool: 'default',
      capacity: 1,
    });
    expect(Object.keys(opts.handlers)).toEqual(['ping']);
    expect(await (opts.handlers.ping as Handler)(stubContext(null))).toBe('pong');
  });

  it('resolves handlersModule against the config file directory and takes only named function exports', async () => {
    const path = await yamlFile({ ...BASE, handlersModule: './lib/handlers.mjs' });
    await mkdir(join(path, '..', 'lib'));
    await writeFile(
      join(path, '..', 'lib', 'handlers.mjs'),
      'export function greet(ctx) { return { hello: ctx.input, task: ctx.taskId }; }\n' +
        'export const shout = async (ctx) => String(ctx.input).toUpperCase();\n' +
        'export const notAHandler = 42;\n',
    );
    // The test runs from the repo root, so a cwd-relative resolve would not find it.
    expect(process.cwd()).not.toBe(join(path, '..'));
    const opts = await loadAgentConfig({ configPath: path, env: {} });
    expect(Object.keys(opts.handlers).sort()).toEqual(['fetch', 'greet', 'shout']);
    expect(opts.handlers.fetch).toEqual({ kind: 'http', url: 'http://fetcher.test/run' });
    expect(await (opts.handlers.greet as Handler)(stubContext('world'))).toEqual({
      hello: 'world',
      task: 'wf-1/fetch',
    });
    expect(await (opts.handlers.shout as Handler)(stubContext('hey'))).toBe('HEY');
  });

  it("takes a TypeScript module's default-export object of functions", async () => {
    const path = await yamlFile({ ...BASE_NO_HANDLERS, handlersModule: 'handlers.ts' });
    await writeFile(
      join(path, '..', 'handlers.ts'),
      'const double = (ctx: { input: unknown }): number => Number(ctx.input) * 2;\n' +
        'export const ignored = () => "named exports lose to a default object";\n' +
        'export default { double, label: "not a function" };\n',
    );
    const opts = await loadAgentConfig({ configPath: path, env: {} });
    expect(Object.keys(opts.handlers)).toEqual(['double']);
    expect(await (opts.handlers.double as Handler)(stubContext(21))).toBe(42);
  });

  it('treats an empty file as no settings', async () => {
    const path = await write('empty.yaml', '');
    const mod = await write('h.mjs', 'export function a() {}\n');
    const opts = await loadAgentConfig({
      configPath: path,
      env: {
        AGENTFLOW_DISPATCHER: 'd:1',
        AGENTFLOW_NAMESPACE: 'ns',
        AGENTFLOW_POOL: 'p',
        AGENTFLOW_CAPACITY: '3',
        AGENTFLOW_HANDLERS_MODULE: mod,
      },
    });
    expect(opts).toMatchObject({ dispatcher: 'd:1', namespace: 'ns', pool: 'p', capacity: 3 });
    expect(Object.keys(opts.handlers)).toEqual(['a']);
  });
});
