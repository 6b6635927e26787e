import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { completionScript } from '../../../src/cli/user/completion.ts';
import { buildProgram } from '../../../src/cli/user/program.ts';
import { capture } from './capture.ts';

// The completion scripts run in the real shells: bash always, zsh and fish where installed. Workflow
// names come from `<the command> [connection flags] list -o name`, here a stub that records its arguments.

const dir = mkdtempSync(join(tmpdir(), 'agentflow-completion-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const stub = join(dir, 'agentflow');
const calls = join(dir, 'calls');
writeFileSync(
  stub,
  `#!/bin/sh\nprintf '%s\\n' "$*" >> '${calls}'\nprintf 'workflow.agentflow.io/hello\\nworkflow.agentflow.io/world\\n'\n`,
);
chmodSync(stub, 0o755);

const script = (shell: 'bash' | 'zsh' | 'fish') => {
  const file = join(dir, `completion.${shell}`);
  writeFileSync(file, completionScript(buildProgram(capture(), { code: 0 }), shell));
  return file;
};
const called = () => {
  try {
    return readFileSync(calls, 'utf8').trim().split('\n');
  } catch {
    return [];
  }
};

/** What bash completes for `words` (the last one being completed). */
function bash(...words: string[]): string[] {
  rmSync(calls, { force: true });
  const r = spawnSync(
    'bash',
    [
      '-c',
      `source '${script('bash')}'; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _agentflow; printf '%s\\n' "\${COMPREPLY[@]}"`,
      'x',
      stub,
      ...words,
    ],
    { encoding: 'utf8' },
  );
  expect(r.stderr).toBe('');
  return r.stdout.split('\n').filter(Boolean);
}

describe('bash completion', () => {
  it('completes commands, then their flags and the global ones', () => {
    expect(bash('re')).toEqual(['resume', 'retry', 'resubmit', 'reject', 'restore']);
    expect(bash('logs', '--')).toEqual([
      '--follow',
      '--attempt',
      '--timestamps',
      '--stream',
      '--help',
      '--namespace',
      '--context',
      '--kubeconfig',
      '--request-timeout',
      '--version',
    ]);
    expect(bash('list', '-o', '')).toEqual(['json', 'yaml', 'name', 'wide']);
    expect(bash('completion', '')).toEqual(['bash', 'zsh', 'fish']);
  });

  it('completes workflow names from `list -o name`, passing on -n, --context and --kubeconfig', () => {
    expect(bash('-n', 'team-a', 'get', '')).toEqual(['hello', 'world']);
    expect(called()).toEqual(['-n team-a list -o name']);
    expect(bash('logs', '--context', 'prod', 'w')).toEqual(['world']);
    expect(called()).toEqual(['--context prod list -o name']);
    // Only the first argument is a workflow; a flag's value is no argument.
    expect(bash('logs', '-f', 'hello', '')).toEqual([]);
    expect(bash('submit', '-f', '')).not.toContain('hello');
  });
});

// zsh and fish come with `npm run setup` (scripts/setup.sh APT_NEEDS): a missing shell fails, never skips.
describe('fish completion', () => {
  const fish = (line: string) => {
    rmSync(calls, { force: true });
    const r = spawnSync('fish', ['-c', `source '${script('fish')}'; complete -C '${line}'`], {
      encoding: 'utf8',
      env: { ...process.env, PATH: `${dir}:${process.env.PATH}` },
    });
    expect(r.stderr).toBe('');
    return r.stdout
      .split('\n')
      .filter(Boolean)
      .map((l) => l.split('\t')[0]);
  };

  it('completes commands, flags and workflow names', () => {
    expect(fish('agentflow sub')).toEqual(['submit']);
    expect(fish('agentflow list -o ')).toEqual(['json', 'name', 'wide', 'yaml']);
    expect(fish('agentflow -n team-a describe ')).toEqual(['hello', 'world']);
    expect(called()).toEqual(['-n team-a list -o name']);
  });
});

describe('zsh completion', () => {
  it('is a valid zsh script that registers itself with compdef', () => {
    const file = script('zsh');
    const r = spawnSync('zsh', ['-n', file], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(readFileSync(file, 'utf8')).toMatch(/^#compdef agentflow\n[\s\S]*compdef _agentflow agentflow\n/);
  });
});
