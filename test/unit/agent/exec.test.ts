import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execHandler } from '../../../src/agent/index.ts';
import { errorOutcome } from '../../../src/agent/outcome.ts';
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
