import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MAX_PAYLOAD_BYTES } from '../../lib/proto.ts';
import { LineSplitter } from '../attempt-log.ts';
import { RetryableError, UnrecoverableError } from '../errors.ts';
import type { ExecHandlerSpec, Handler, TaskContext } from '../types.ts';
import { childEnv } from './exec-env.ts';

const STDERR_TAIL_BYTES = 2048;
const EX_TEMPFAIL = 75;

export interface ExecRunOptions {
  /** Between SIGTERM and SIGKILL once the attempt is aborted (default 5000). */
  killGraceMs?: number;
}

/**
 * The `exec` built-in: runs the command with the task input as JSON on stdin
 * and takes stdout as the JSON output (empty = null). Exit codes follow
 * sysexits: 64-78 are the caller's fault and final, except 75 (EX_TEMPFAIL);
 * any other non-zero exit is retried. The command sees a minimal environment
 * (exec-env.ts), never the agent's. Each line of its stderr is logged through
 * ctx.log (stream: "stderr"), success or not; stdout, the output, is not.
 */
export function execHandler(spec: ExecHandlerSpec, opts: ExecRunOptions = {}): Handler {
  const killGraceMs = opts.killGraceMs ?? 5_000;
  return (ctx) => attempt(spec, ctx, killGraceMs);
}

async function attempt(spec: ExecHandlerSpec, ctx: TaskContext, killGraceMs: number): Promise<unknown> {
  ctx.signal.throwIfAborted();
  const env = childEnv(spec, ctx, process.env);
  if (env.HOME !== undefined) return run(spec, ctx, killGraceMs, env);
  // A private HOME per attempt rather than the agent's (which may hold ~/.kube or
  // other credentials) or its cwd (its config): tools that write caches or dotfiles
  // there work, and a retry starts clean instead of on what a failed attempt left.
  let home: string;
  try {
    home = await mkdtemp(join(tmpdir(), 'agentflow-home-'));
  } catch (err) {
    throw new RetryableError(`cannot create a HOME directory for the command: ${(err as Error).message}`, {
      code: 'EXEC_FAILED',
      cause: err,
    });
  }
  try {
    return await run(spec, ctx, killGraceMs, { ...env, HOME: home });
  } finally {
    await rm(home, { recursive: true, force: true }).catch((err: unknown) =>
      ctx.log.warn('Cannot remove the HOME directory of an exec command', { home, error: (err as Error).message }),
    );
  }
}

/** Signals the command's whole process group, so a shell's children go too. */
function signalGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // the group is gone already
  }
}

function run(
  spec: ExecHandlerSpec,
  ctx: TaskContext,
  killGraceMs: number,
  env: Record<string, string>,
): Promise<unknown> {
  // Aborted while HOME was being made: do not start the command at all.
  ctx.signal.throwIfAborted();
  const [file, ...args] = spec.command as [string, ...string[]];
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, {
      cwd: spec.cwd,
      env,
      stdio: 'pipe',
      // Its own process group, so an abort reaches everything the command started.
      detached: true,
    });
    const stdout: Buffer[] = [];
    let stdoutBytes = 0;
    let stderr = Buffer.alloc(0);
    let settled = false;
    // Logged line by line as it comes, so a long-running command's stderr is visible while it runs.
    const stderrLines = new LineSplitter((line) => {
      if (!settled) ctx.log.info(line, { stream: 'stderr' });
    });
    child.stdout.on('data', (b: Buffer) => {
      stdoutBytes += b.length;
      if (stdoutBytes <= MAX_PAYLOAD_BYTES) stdout.push(b);
    });
    child.stderr.on('data', (b: Buffer) => {
      stderrLines.push(b);
      stderr = Buffer.concat([stderr, b]);
      if (stderr.length > 2 * STDERR_TAIL_BYTES) stderr = stderr.subarray(-STDERR_TAIL_BYTES);
    });
    // EPIPE when the command exits without reading its input: its exit status says what happened.
    child.stdin.on('error', () => undefined);
    child.stdin.end(JSON.stringify(ctx.input ?? null));

    const settle = (fn: () => void) => {
      if (settled) return;
      // A last line without a newline; after this, lines are dropped (the attempt's end line is next).
      stderrLines.end();
      settled = true;
      ctx.signal.removeEventListener('abort', onAbort);
      fn();
    };
    const onAbort = () => {
      signalGroup(child, 'SIGTERM');
      // Not cleared on exit: a grandchild that ignores SIGTERM must not outlive the attempt.
      setTimeout(() => signalGroup(child, 'SIGKILL'), killGraceMs).unref();
    };
    ctx.signal.addEventListener('abort', onAbort, { once: true });

    child.on('error', (err: NodeJS.ErrnoException) => {
      // Missing or non-executable commands are a configuration problem no retry fixes.
      const final = err.code === 'ENOENT' || err.code === 'EACCES';
      const message = `cannot run ${JSON.stringify(file)}: ${err.message}`;
      settle(() =>
        reject(
          final
            ? new UnrecoverableError(message, { code: 'EXEC_FAILED', cause: err })
            : new RetryableError(message, { code: 'EXEC_FAILED', cause: err }),
        ),
      );
    });
    // After an abort, do not wait for 'close': a grandchild may hold stdout open.
    child.on('exit', () => {
      if (ctx.signal.aborted) settle(() => reject(ctx.signal.reason));
    });
    child.on('close', (code: number | null, signal: NodeJS.Signals | null) => {
      settle(() => {
        try {
          resolve(outcome(file, code, signal, Buffer.concat(stdout), stdoutBytes, stderr));
        } catch (err) {
          reject(err);
        }
      });
    });
  });
}

function outcome(
  file: string,
  code: number | null,
  signal: NodeJS.Signals | null,
  stdout: Buffer,
  stdoutBytes: number,
  stderr: Buffer,
): unknown {
  const tail = stderr.subarray(-STDERR_TAIL_BYTES).toString('utf8').trim();
  const withTail = (s: string) => (tail ? `${s}; stderr: ${tail}` : s);
  const name = JSON.stringify(file);
  if (code === null) {
    throw new RetryableError(withTail(`command ${name} was killed by ${signal}`), { code: 'KILLED' });
  }
  if (code !== 0) {
    const message = withTail(`command ${name} exited with code ${code}`);
    if (code >= 64 && code <= 78 && code !== EX_TEMPFAIL) {
      throw new UnrecoverableError(message, { code: `EXIT_${code}` });
    }
    throw new RetryableError(message, { code: `EXIT_${code}` });
  }
  if (stdoutBytes > MAX_PAYLOAD_BYTES) {
    throw new UnrecoverableError(
      `command ${name} wrote ${stdoutBytes} bytes to stdout; the output limit is ${MAX_PAYLOAD_BYTES}`,
      { code: 'OUTPUT_TOO_LARGE' },
    );
  }
  const text = stdout.toString('utf8').trim();
  if (text === '') return null;
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new UnrecoverableError(
      `stdout of command ${name} is not JSON (${(err as Error).message}): ${text.slice(0, 200)}`,
      { code: 'BAD_OUTPUT' },
    );
  }
}
