// The agentflow-agent command as pods run it: a real process, checked through
// its exit code and output. Only paths that end before connecting anywhere.
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify as toYaml } from 'yaml';

const MAIN = resolve(import.meta.dirname, '../../../src/agent/main.ts');
const TIMEOUT_MS = 30_000;

const VALID = {
  dispatcher: '127.0.0.1:1',
  namespace: 'team-a',
  pool: 'gpu',
  capacity: 2,
  handlers: { fetch: { kind: 'http', url: 'http://127.0.0.1:1/run' } },
};

let dir: string;
let validConfig: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agentflow-main-'));
  validConfig = join(dir, 'valid.yaml');
  await writeFile(validConfig, toYaml(VALID));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs `node src/agent/main.ts ...args` with only PATH, HOME and `env` in its environment. */
function agent(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [MAIN, ...args], {
      cwd: dir,
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? dir, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
    });
    // A config error must end the process by itself; if it hangs (say, connecting), kill it and fail.
    const timer = setTimeout(() => child.kill('SIGKILL'), TIMEOUT_MS - 5_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolvePromise({ code, signal, stdout, stderr });
    });
  });
}

describe('agentflow-agent', () => {
  it(
    'exits 2 on an unknown flag, naming it and printing the usage on stderr',
    async () => {
      const r = await agent(['--bogus']);
      expect(r).toMatchObject({ code: 2, signal: null, stdout: '' });
      expect(r.stderr).toMatch(/^agentflow-agent: .*'--bogus'/);
      expect(r.stderr).toContain('Usage: agentflow-agent [--config agent.yaml]');
    },
    TIMEOUT_MS,
  );

  it(
    'exits 2 when --config has no value',
    async () => {
      const r = await agent(['--config']);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain('--config');
      expect(r.stderr).toContain('Usage: agentflow-agent');
    },
    TIMEOUT_MS,
  );

  it.each([['--help'], ['-h']])(
    '%s prints the usage on stdout and exits 0',
    async (flag) => {
      const r = await agent([flag]);
      expect(r).toMatchObject({ code: 0, signal: null, stderr: '' });
      expect(r.stdout).toMatch(/^Usage: agentflow-agent \[--config agent\.yaml\] \[--handlers module\.js\]\n/);
      for (const v of ['AGENTFLOW_DISPATCHER', 'AGENTFLOW_CAPACITY', 'AGENTFLOW_HANDLERS_MODULE'])
        expect(r.stdout).toContain(v);
    },
    TIMEOUT_MS,
  );

  it(
    'exits 2 naming the file and "capacity" when the file says capacity: 0',
    async () => {
      const path = join(dir, 'zero.yaml');
      await writeFile(path, toYaml({ ...VALID, capacity: 0 }));
      const r = await agent(['--config', path]);
      expect(r).toMatchObject({ code: 2, signal: null, stdout: '' });
      expect(r.stderr).toBe(
        `agentflow-agent: invalid configuration: ${path}: capacity: must be an integer 1-1024, got 0\n`,
      );
    },
    TIMEOUT_MS,
  );

  it(
    'exits 2 naming AGENTFLOW_CAPACITY when the environment overrides a valid file with -3',
    async () => {
      const r = await agent(['-c', validConfig], { AGENTFLOW_CAPACITY: '-3' });
      expect(r).toMatchObject({ code: 2, signal: null, stdout: '' });
      expect(r.stderr).toBe(
        'agentflow-agent: invalid configuration: AGENTFLOW_CAPACITY: must be an integer 1-1024, got "-3"\n',
      );
    },
    TIMEOUT_MS,
  );

  it(
    'exits 2 naming --config when the file cannot be read',
    async () => {
      const path = join(dir, 'missing.yaml');
      const r = await agent(['--config', path]);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(`agentflow-agent: invalid configuration: --config: cannot read ${path}`);
    },
    TIMEOUT_MS,
  );

  it(
    'exits 2 when neither a file nor the environment gives any handlers',
    async () => {
      const r = await agent([], {
        AGENTFLOW_DISPATCHER: '127.0.0.1:1',
        AGENTFLOW_NAMESPACE: 'team-a',
        AGENTFLOW_POOL: 'gpu',
        AGENTFLOW_CAPACITY: '1',
      });
      expect(r.code).toBe(2);
      expect(r.stderr).toContain('agentflow-agent: invalid configuration: handlers: no handlers');
    },
    TIMEOUT_MS,
  );

  it(
    'exits 2 naming AGENTFLOW_ETCD_ENDPOINTS when a stale deployment still sets it',
    async () => {
      const r = await agent(['-c', validConfig], { AGENTFLOW_ETCD_ENDPOINTS: 'http://etcd:2379' });
      expect(r).toMatchObject({ code: 2, signal: null, stdout: '' });
      expect(r.stderr).toBe(
        'agentflow-agent: invalid configuration: AGENTFLOW_ETCD_ENDPOINTS: agents no longer connect to etcd; state and locks go through the dispatcher (remove it)\n',
      );
    },
    TIMEOUT_MS,
  );

  it(
    'exits 1, saying which token file it could not read, before connecting anywhere',
    async () => {
      const missing = join(dir, 'no-token');
      const r = await agent(['-c', validConfig], { AGENTFLOW_TOKEN_FILE: missing });
      expect(r).toMatchObject({ code: 1, signal: null });
      expect(r.stderr).toContain('Agent failed to start');
      expect(r.stderr).toContain(`token: cannot read the token file ${missing}`);
    },
    TIMEOUT_MS,
  );
});
