import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { trace } from '@opentelemetry/api';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { validateSpec } from '../../../src/agent/builtin/index.ts';
import { AgentConfigError, type ExecHandlerSpec, execHandler } from '../../../src/agent/index.ts';
import { errorOutcome } from '../../../src/agent/outcome.ts';
import { attemptSpanContext, runTraceId } from '../../../src/lib/tracing.ts';
import { stubContext } from './task-context-stub.ts';

const node = process.execPath;
/** A node one-liner as an exec spec. */
const script = (code: string, env?: Record<string, string>) => ({
  kind: 'exec' as const,
  command: [node, '-e', code],
  ...(env && { env }),
});

/** What the agent would send for the handler's outcome. */
async function settle(
  p: unknown,
): Promise<{ output?: unknown; error?: { code: string; retryable: boolean; message: string } }> {
  try {
    return { output: await p };
  } catch (err) {
    const o = errorOutcome(err);
    return 'error' in o ? { error: o.error } : {};
  }
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agentflow-exec-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('exec handler', () => {
  it('feeds the input as JSON on stdin and returns stdout parsed as JSON, with the task in the environment', async () => {
    const run = execHandler(
      script(
        `let s='';process.stdin.on('data',d=>s+=d).on('end',()=>console.log(JSON.stringify({in:JSON.parse(s),` +
          `task:process.env.AGENTFLOW_TASK_ID,attempt:process.env.AGENTFLOW_ATTEMPT,wf:process.env.AGENTFLOW_WORKFLOW,` +
          `extra:process.env.EXTRA,cwd:process.cwd()})))`,
        { EXTRA: 'yes' },
      ),
    );
    const out = await run(stubContext({ a: [1, 2] }));
    expect(out).toEqual({
      in: { a: [1, 2] },
      task: 'wf-1/fetch',
      attempt: '3',
      wf: 'wf-1',
      extra: 'yes',
      cwd: process.cwd(),
    });
  });

  it("gives the command the attempt's trace context as TRACEPARENT, and none for an untraced attempt", async () => {
    const run = execHandler(script('console.log(JSON.stringify(process.env.TRACEPARENT ?? null))'));
    const sc = attemptSpanContext(runTraceId('uid-1'), 'fetch', 3);
    expect(await run(stubContext(null, undefined, undefined, trace.wrapSpanContext(sc)))).toBe(
      `00-${sc.traceId}-${sc.spanId}-01`,
    );
    expect(await run(stubContext(null))).toBeNull();
  });

  it('runs in cwd when given', async () => {
    const run = execHandler({ ...script('console.log(JSON.stringify(process.cwd()))'), cwd: dir });
    expect(await run(stubContext(null))).toBe(dir);
  });

  it('treats empty stdout as a null output', async () => {
    expect(await settle(execHandler(script(''))(stubContext({})))).toEqual({ output: null });
  });

  it('fails for good, naming the problem, when stdout is not JSON', async () => {
    const { error } = await settle(execHandler(script('console.log("done!")'))(stubContext({})));
    expect(error).toMatchObject({ code: 'BAD_OUTPUT', retryable: false });
    expect(error?.message).toMatch(/stdout of command .* is not JSON.*done!/);
  });

  it.each([
    [3, true],
    [75, true],
    [64, false],
    [65, false],
    [78, false],
    [79, true],
  ])('exit code %i is retryable: %s, and the error carries the code and the end of stderr', async (code, retryable) => {
    const noise = 'x'.repeat(5000);
    const { error } = await settle(
      execHandler(script(`process.stderr.write(${JSON.stringify(noise)} + "the real reason");process.exit(${code})`))(
        stubContext({}),
      ),
    );
    expect(error).toMatchObject({ code: `EXIT_${code}`, retryable });
    expect(error?.message).toContain(`exited with code ${code}`);
    expect(error?.message).toMatch(/the real reason$/);
    // The last ~2 KiB of stderr, not all 5 KB.
    expect(error?.message.length).toBeLessThan(2300);
  });

  it('fails for good when the command does not exist', async () => {
    const { error } = await settle(
      execHandler({ kind: 'exec', command: [join(dir, 'no-such-binary')] })(stubContext({})),
    );
    expect(error).toMatchObject({ code: 'EXEC_FAILED', retryable: false });
  });

  it('on abort terminates the command and rejects with the abort reason', async () => {
    const pidFile = join(dir, 'sleeper.pid');
    const ac = new AbortController();
    const p = execHandler(
      script(`require('fs').writeFileSync(${JSON.stringify(pidFile)}, String(process.pid));setInterval(()=>{},1000)`),
    )(stubContext({}, ac.signal));
    const pid = Number(await waitForFile(pidFile));
    expect(isAlive(pid)).toBe(true);
    const reason = new Error('cancelled');
    ac.abort(reason);
    await expect(p).rejects.toBe(reason);
    expect(isAlive(pid)).toBe(false);
  });

  it('kills a command that ignores SIGTERM once the grace is over', async () => {
    const pidFile = join(dir, 'stubborn.pid');
    const ac = new AbortController();
    const p = execHandler(
      script(
        `process.on('SIGTERM',()=>{});require('fs').writeFileSync(${JSON.stringify(pidFile)}, String(process.pid));setInterval(()=>{},1000)`,
      ),
      { killGraceMs: 100 },
    )(stubContext({}, ac.signal));
    const pid = Number(await waitForFile(pidFile));
    ac.abort(new Error('stop'));
    await expect(p).rejects.toThrow('stop');
    expect(isAlive(pid)).toBe(false);
  });
});

/** Sets variables in the agent's own environment for one test; afterEach puts the old values back. */
const saved = new Map<string, string | undefined>();
function setAgentEnv(vars: Record<string, string | undefined>): void {
  for (const [name, value] of Object.entries(vars)) {
    if (!saved.has(name)) saved.set(name, process.env[name]);
    if (value === undefined) delete process.env[name];
    else process.env[name] = value;
  }
}
afterEach(() => {
  for (const [name, value] of saved) {
    if (value === undefined) delete process.env[name];
    else process.env[name] = value;
  }
  saved.clear();
});

/** A command that prints its whole environment as JSON. */
const printEnv = (extra: Partial<ExecHandlerSpec> = {}): ExecHandlerSpec => ({
  ...script('console.log(JSON.stringify(process.env))'),
  ...extra,
});

describe('exec handler environment', () => {
  it("gives the command only PATH, HOME, LANG, TZ, the task identity, env and inheritEnv: none of the agent's settings", async () => {
    setAgentEnv({
      AGENTFLOW_TOKEN_FILE: '/var/run/secrets/agentflow/token',
      AGENTFLOW_DISPATCHER: 'agentflow-dispatcher:7070',
      KUBECONFIG: '/home/agent/.kube/config',
      MY_SECRET: `s3cret-${Math.random()}`,
      SHARED_CACHE: '/cache',
      LANG: 'C.UTF-8',
      TZ: 'Europe/Paris',
    });
    const env = (await execHandler(
      printEnv({ env: { EXTRA: 'yes' }, inheritEnv: ['SHARED_CACHE', 'NOT_SET_IN_THE_AGENT'] }),
    )(stubContext({}))) as Record<string, string>;
    expect(Object.keys(env).sort()).toEqual(
      [
        'AGENTFLOW_ATTEMPT',
        'AGENTFLOW_NAMESPACE',
        'AGENTFLOW_TASK_ID',
        'AGENTFLOW_WORKFLOW',
        'EXTRA',
        'HOME',
        'LANG',
        'PATH',
        'SHARED_CACHE',
        'TZ',
      ].sort(),
    );
    expect(env).toMatchObject({
      PATH: process.env.PATH,
      LANG: 'C.UTF-8',
      TZ: 'Europe/Paris',
      AGENTFLOW_TASK_ID: 'wf-1/fetch',
      AGENTFLOW_WORKFLOW: 'wf-1',
      AGENTFLOW_NAMESPACE: 'team-a',
      AGENTFLOW_ATTEMPT: '3',
      EXTRA: 'yes',
      SHARED_CACHE: '/cache',
    });
  });

  it('gives a standard PATH when the agent has none, and lets env replace it', async () => {
    setAgentEnv({ PATH: undefined });
    const env = (await execHandler(printEnv())(stubContext({}))) as Record<string, string>;
    expect(env.PATH).toBe('/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin');
    const own = (await execHandler(printEnv({ env: { PATH: '/opt/tools/bin' } }))(stubContext({}))) as Record<
      string,
      string
    >;
    expect(own.PATH).toBe('/opt/tools/bin');
  });

  it('finds a bare command name on the PATH the command gets', async () => {
    // `node` by name, through a PATH that has its directory only because env says so.
    setAgentEnv({ PATH: '/nonexistent' });
    const run = execHandler({
      kind: 'exec',
      command: ['node', '-e', 'console.log(1)'],
      env: { PATH: join(process.execPath, '..') },
    });
    expect(await run(stubContext({}))).toBe(1);
  });

  it("gives each attempt its own writable HOME, not the agent's, and removes it afterwards", async () => {
    const writeHome = script(
      `const fs=require('fs'),p=require('path');fs.writeFileSync(p.join(process.env.HOME,'.cache'),'x');` +
        `console.log(JSON.stringify(process.env.HOME))`,
    );
    const first = (await execHandler(writeHome)(stubContext({}))) as string;
    const second = (await execHandler(writeHome)(stubContext({}))) as string;
    expect(first).not.toBe(homedir());
    expect(first).not.toBe(process.cwd());
    expect(second).not.toBe(first);
    expect(existsSync(first)).toBe(false);
    expect(existsSync(second)).toBe(false);
  });

  it('removes the HOME of an aborted attempt', async () => {
    const homeFile = join(dir, 'aborted.home');
    const ac = new AbortController();
    const p = execHandler(
      script(`require('fs').writeFileSync(${JSON.stringify(homeFile)}, process.env.HOME);setInterval(()=>{},1000)`),
    )(stubContext({}, ac.signal));
    const home = await waitForFile(homeFile);
    expect(existsSync(home)).toBe(true);
    ac.abort(new Error('cancelled'));
    await expect(p).rejects.toThrow('cancelled');
    expect(existsSync(home)).toBe(false);
  });

  it('uses a HOME given in env or inheritEnv as it is, and leaves it in place', async () => {
    const env = (await execHandler(printEnv({ env: { HOME: dir } }))(stubContext({}))) as Record<string, string>;
    expect(env.HOME).toBe(dir);
    setAgentEnv({ HOME: dir });
    const inherited = (await execHandler(printEnv({ inheritEnv: ['HOME'] }))(stubContext({}))) as Record<
      string,
      string
    >;
    expect(inherited.HOME).toBe(dir);
    expect(existsSync(dir)).toBe(true);
  });
});

describe('exec handler spec', () => {
  const check = (spec: Record<string, unknown>) =>
    validateSpec('handlers.run', { kind: 'exec', command: ['x'], ...spec });

  it('accepts inheritEnv names and keeps them', () => {
    expect(check({ inheritEnv: ['HTTPS_PROXY', 'my.var', 'CACHE-DIR'], env: { A: '1' } })).toEqual({
      kind: 'exec',
      command: ['x'],
      env: { A: '1' },
      inheritEnv: ['HTTPS_PROXY', 'my.var', 'CACHE-DIR'],
    });
  });

  it.each([
    [{ inheritEnv: 'HOME' }, 'handlers.run.inheritEnv', 'must be a list of variable names, got "HOME"'],
    [{ inheritEnv: ['HOME', 7] }, 'handlers.run.inheritEnv[1]', 'must be a string, got 7'],
    [{ inheritEnv: ['1ST'] }, 'handlers.run.inheritEnv[0]', /^must be an environment variable name .*got "1ST"$/],
    [{ inheritEnv: ['A=B'] }, 'handlers.run.inheritEnv[0]', /^must be an environment variable name .*got "A=B"$/],
    [{ inheritEnv: [''] }, 'handlers.run.inheritEnv[0]', /^must be an environment variable name/],
    [{ env: { 'BAD NAME': 'x' } }, 'handlers.run.env.BAD NAME', /^must be an environment variable name/],
    [
      { inheritEnv: ['AGENTFLOW_TASK_ID'] },
      'handlers.run.inheritEnv[0]',
      "AGENTFLOW_TASK_ID is set by the agent to the task's identity on every attempt",
    ],
    [
      { env: { AGENTFLOW_NAMESPACE: 'other' } },
      'handlers.run.env.AGENTFLOW_NAMESPACE',
      "AGENTFLOW_NAMESPACE is set by the agent to the task's identity on every attempt",
    ],
    [
      { env: { CACHE: '/c' }, inheritEnv: ['CACHE'] },
      'handlers.run.inheritEnv[0]',
      '"CACHE" is also set in env; keep one of the two',
    ],
  ])('refuses %j, naming %s', (spec, field, problem) => {
    let err: unknown;
    try {
      check(spec);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(AgentConfigError);
    expect((err as AgentConfigError).field).toBe(field);
    if (typeof problem === 'string') expect((err as AgentConfigError).problem).toBe(problem);
    else expect((err as AgentConfigError).problem).toMatch(problem);
  });
});

/** The pid file appears once the child is up; its content is the only signal we have from it. */
async function waitForFile(path: string): Promise<string> {
  const { watch } = await import('node:fs/promises');
  const ac = new AbortController();
  const read = () => readFile(path, 'utf8').catch(() => '');
  const watcher = watch(join(path, '..'), { signal: ac.signal });
  try {
    let text = await read();
    if (text) return text;
    for await (const _ of watcher) {
      text = await read();
      if (text) return text;
    }
  } catch (err) {
    if ((err as Error).name !== 'AbortError') throw err;
  } finally {
    ac.abort();
  }
  return read();
}
