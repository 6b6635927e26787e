// A small Go program of tools/<name> that tests shell out to (lincheck, promlint), cached like the
// control-plane binaries in <cache>/bin/<name>-<content hash>/<name>, so an edited tool is rebuilt.
// scripts/setup.sh builds them (the hash is go_tool_version in scripts/versions.sh); a test builds
// one on first use when it is missing (go build takes seconds).
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { cacheDir, repoRoot } from './binaries.ts';

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/** Runs a command to its end; `input` goes to its stdin; `timeoutMs` kills it (timedOut). */
export function runCommand(
  command: string,
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv; input?: string; timeoutMs?: number } = {},
): Promise<RunResult> {
  return new Promise<RunResult>((resolve, reject) => {
    const child = spawn(command, args, {
      cwd: opts.cwd,
      env: opts.env,
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout?.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr?.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const timer = opts.timeoutMs
      ? setTimeout(() => {
          timedOut = true;
          child.kill('SIGKILL');
        }, opts.timeoutMs)
      : undefined;
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, timedOut });
    });
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

export class GoTool {
  private readonly name: string;
  private readonly sourceDir: string;
  private readonly unavailable: (message: string) => Error;
  private building: Promise<void> | undefined;

  /** `unavailable` makes the error thrown when Go is missing or the build fails. */
  constructor(name: string, unavailable: (message: string) => Error) {
    this.name = name;
    this.sourceDir = join(repoRoot, 'tools', name);
    this.unavailable = unavailable;
  }

  /** Where the tool for the current sources lives. */
  path(): string {
    const hash = createHash('sha256');
    for (const f of ['go.mod', 'go.sum', 'main.go']) hash.update(readFileSync(join(this.sourceDir, f)));
    return join(cacheDir(), 'bin', `${this.name}-${hash.digest('hex').slice(0, 16)}`, this.name);
  }

  /** The tool's path, building it into the cache first if it is missing. */
  async ensure(): Promise<string> {
    const path = this.path();
    if (existsSync(path)) return path;
    this.building ??= this.build(path).finally(() => {
      this.building = undefined;
    });
    await this.building;
    return path;
  }

  private async build(path: string): Promise<void> {
    await mkdir(dirname(path), { recursive: true });
    // A unique temporary name, renamed into place: concurrent test workers may build at once.
    const tmp = `${path}.tmp.${process.pid}.${Math.random().toString(36).slice(2)}`;
    let result: RunResult;
    try {
      result = await runCommand('go', ['build', '-o', tmp, '.'], {
        cwd: this.sourceDir,
        env: { ...process.env, GOFLAGS: '-mod=readonly -trimpath -buildvcs=false' },
      });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw this.unavailable(
          `${this.name} is not built at ${path} and Go is not on PATH to build it: install Go >= 1.24 or run \`npm run setup\``,
        );
      }
      throw err;
    }
    if (result.code !== 0) {
      await rm(tmp, { force: true });
      throw this.unavailable(`go build of tools/${this.name} failed:\n${result.stderr.trim()}`);
    }
    await rename(tmp, path);
  }
}
