import { spawn } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

// What a user runs first: the package's bin entries (npx agentflow, kubectl agentflow), --version
// on every command, and --help on the npm scripts, which must print usage and do nothing else.
// Every child starts at once, so the file costs about one operator start-up (~1 s), not twenty.
// "Did nothing" is checked by what acting would leave behind (a cluster directory, generated files),
// not by timing, which a loaded machine would make flaky.

const root = fileURLToPath(new URL('../../..', import.meta.url));
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as {
  version: string;
  bin: Record<string, string>;
};
const VERSION_LINE = `agentflow ${pkg.version}\n`;
const scratch = mkdtempSync(join(tmpdir(), 'agentflow-entrypoints-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs the project's node on `args` from the repository root. A child still running after 15 s is
 * killed with its process group: a script that acted may have started children of its own.
 */
function run(args: string[], env: Record<string, string> = {}, cwd = root): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, {
      cwd,
      env: { ...process.env, ...env },
      stdio: 'pipe',
      detached: true,
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      try {
        process.kill(-(child.pid as number), 'SIGKILL');
      } catch {
        // the group is gone already
      }
    }, 15_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/**
 * A cluster directory that does not exist yet, and a binary cache that is empty: a script that
 * acted would create the directory (and could start no real cluster).
 */
function clusterEnv(name: string): { env: Record<string, string>; dir: string } {
  const dir = join(scratch, `cluster-${name}`);
  return { dir, env: { AGENTFLOW_CLUSTER_DIR: dir, AGENTFLOW_CACHE: join(scratch, 'empty-cache') } };
}

/**
 * A copy of scripts/generate.ts in a root of its own, with the sources it reads linked in: what it
 * writes lands there (deploy/, charts/, src/gen/), never in the working tree.
 */
function generateRoot(name: string): string {
  const dir = join(scratch, `generate-${name}`);
  mkdirSync(join(dir, 'scripts'), { recursive: true });
  mkdirSync(join(dir, 'src'));
  for (const f of ['generate.ts', 'proto-types.ts']) copyFileSync(join(root, 'scripts', f), join(dir, 'scripts', f));
  symlinkSync(join(root, 'src/api'), join(dir, 'src/api'));
  symlinkSync(join(root, 'proto'), join(dir, 'proto'));
  symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'));
  copyFileSync(join(root, 'package.json'), join(dir, 'package.json'));
  return dir;
}
const generated = (dir: string) => ['deploy', 'charts', 'src/gen'].filter((d) => existsSync(join(dir, d)));

const bin = (name: string) => {
  const target = pkg.bin[name];
  if (target === undefined) throw new Error(`package.json has no bin "${name}"`);
  return join(root, target);
};
const BINS = ['agentflow', 'agentflow-agent', 'agentflow-operator'] as const;
const eachBin = (args: string[]) =>
  Object.fromEntries(BINS.map((b) => [b, run([bin(b), ...args])])) as Record<(typeof BINS)[number], Promise<Result>>;
const cluster = { help: clusterEnv('help'), bogus: clusterEnv('bogus') };
const generate = { help: generateRoot('help'), bogus: generateRoot('bogus') };

// All started here, awaited by the tests.
const runs = {
  version: eachBin(['--version']),
  help: eachBin(['--help']),
  bogus: eachBin(['--bogus']),
  operatorVersion: run([bin('agentflow'), 'operator', '--version']),
  agentVersion: run([bin('agentflow'), 'agent', '--version']),
  sdk: run([
    '--input-type=module',
    '-e',
    "const m = await import('agentflow/agent'); console.log(typeof m.createAgent)",
  ]),
  clusterUpHelp: run(['test/cluster/cli.ts', 'up', '--help'], cluster.help.env),
  clusterUpBogus: run(['test/cluster/cli.ts', 'up', '--bogus'], cluster.bogus.env),
  demoHelp: run(['scripts/demo.ts', '--help'], cluster.help.env),
  demoBogus: run(['scripts/demo.ts', '--bogus'], cluster.bogus.env),
  generateHelp: run([join(generate.help, 'scripts/generate.ts'), '--help'], {}, generate.help),
  generateBogus: run([join(generate.bogus, 'scripts/generate.ts'), '--bogus'], {}, generate.bogus),
};

// The children share two cores with the rest of the suite: give them time, once.
const slow = { timeout: 20_000 };

describe('package.json bin entries', slow, () => {
  it('are executable node scripts in the repository, and kubectl-agentflow is the agentflow CLI', () => {
    expect(Object.keys(pkg.bin).sort()).toEqual([...BINS, 'kubectl-agentflow'].sort());
    expect(pkg.bin['kubectl-agentflow']).toBe(pkg.bin.agentflow);
    for (const name of BINS) {
      const path = bin(name);
      expect(existsSync(path), `${name} -> ${pkg.bin[name]}`).toBe(true);
      expect(readFileSync(path, 'utf8').split('\n')[0], name).toBe('#!/usr/bin/env node');
      expect(statSync(path).mode & 0o111, `${name} is executable`).toBe(0o111);
    }
  });

  it.each(BINS)('%s --version prints "agentflow <version>" and exits 0', async (name) => {
    const r = await runs.version[name];
    expect(r).toMatchObject({ code: 0, stdout: VERSION_LINE, stderr: '' });
  });

  it.each(BINS)('%s --help prints its usage and exits 0', async (name) => {
    const r = await runs.help[name];
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^Usage: /);
  });

  it.each(BINS)('%s with an unknown flag prints usage to stderr and exits 2', async (name) => {
    const r = await runs.bogus[name];
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/--bogus[\s\S]*Usage: /);
  });

  it('agentflow operator --version and agentflow agent --version need no configuration', async () => {
    for (const r of [await runs.operatorVersion, await runs.agentVersion]) {
      expect(r).toMatchObject({ code: 0, stdout: VERSION_LINE, stderr: '' });
    }
  });

  it("the ./agent export resolves, so import 'agentflow/agent' works in the repository", async () => {
    const r = await runs.sdk;
    expect(r.stderr).toBe('');
    expect(r).toMatchObject({ code: 0, stdout: 'function\n' });
  });
});

describe('--help on the npm scripts prints usage and does nothing else', slow, () => {
  it('npm run cluster:up -- --help starts no cluster', async () => {
    const r = await runs.clusterUpHelp;
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^Usage: npm run cluster:up/);
    expect(existsSync(cluster.help.dir), 'the cluster directory was created').toBe(false);
  });

  it('npm run demo -- --help starts no cluster', async () => {
    const r = await runs.demoHelp;
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^Usage: npm run demo/);
    expect(existsSync(cluster.help.dir), 'the cluster directory was created').toBe(false);
  });

  it('npm run generate -- --help writes no file', async () => {
    const r = await runs.generateHelp;
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^Usage: npm run generate/);
    expect(r.stdout).toContain('--check');
    expect(generated(generate.help)).toEqual([]);
    expect(readdirSync(join(generate.help, 'src'))).toEqual(['api']);
  });

  it('an unknown flag prints usage to stderr, exits 2 and does nothing', async () => {
    for (const [what, r] of [
      ['cluster:up', await runs.clusterUpBogus],
      ['demo', await runs.demoBogus],
      ['generate', await runs.generateBogus],
    ] as const) {
      expect(r.code, `${what}: ${r.stderr}`).toBe(2);
      expect(r.stdout, what).toBe('');
      expect(r.stderr, what).toMatch(/--bogus[\s\S]*Usage: npm run /);
    }
    expect(existsSync(cluster.bogus.dir), 'the cluster directory was created').toBe(false);
    expect(generated(generate.bogus)).toEqual([]);
  });
});
