import { describe, expect, it } from 'vitest';
import { parseDuration, parseParam } from '../../../src/cli/user/args.ts';
import { main, programName } from '../../../src/cli/user/program.ts';
import { capture } from './capture.ts';

// The command line alone: what commander and the flag parsers refuse before anything is sent
// (exit 2, the flag named on stderr, nothing on stdout), and what the help says.

async function run(...argv: string[]) {
  const io = capture();
  // A kubeconfig that does not exist: any command that got as far as connecting would fail with exit 1.
  const code = await main([...argv, '--kubeconfig', '/nonexistent/kubeconfig'], io);
  return { code, stdout: io.stdout, stderr: io.stderr };
}

describe('usage errors exit 2 and name the flag or argument', () => {
  it.each([
    [['submit'], /^error: submit takes exactly one of -f <file> and --from workflowtemplate\/<name>$/m],
    [['submit', '-f', 'a.yaml', '--from', 'workflowtemplate/t'], /exactly one of -f <file> and --from/],
    [
      ['submit', '-f', 'wf.yaml', '-p', 'novalue'],
      /option '-p, --param <key=value>' argument 'novalue' is invalid\. expected key=value/,
    ],
    [['submit', '-f', 'wf.yaml', '-p', '=3'], /option '-p, --param <key=value>' argument '=3' is invalid/],
    [
      ['list', '-o', 'xml'],
      /option '-o, --output <format>' argument 'xml' is invalid\. Allowed choices are json, yaml, name, wide/,
    ],
    [['get', 'wf', '-o', 'wide'], /option '-o, --output <format>' argument 'wide' is invalid/],
    [['output', 'wf', 'task', '-o', 'name'], /option '-o, --output <format>' argument 'name' is invalid/],
    [['logs', 'wf', 'task', '--attempt', '0'], /option '--attempt <n>' argument '0' is invalid/],
    [['logs', 'wf', '--attempt', '2'], /--attempt needs a TASK/],
    [['logs', 'wf', '--stream'], /--stream needs a TASK/],
    [['logs', 'wf', 't', '--stream', '--timestamps'], /--stream and --timestamps/],
    [['list', '--request-timeout', 'soon'], /option '--request-timeout <duration>' argument 'soon' is invalid/],
    [['retry', 'wf', '--timeout', '5x'], /option '--timeout <duration>' argument '5x' is invalid/],
    [['get'], /missing required argument 'name'/],
    [['output', 'wf'], /missing required argument 'task'/],
    [['watch', 'a', 'b'], /too many arguments for 'watch'/],
    [['list', '--bogus'], /unknown option '--bogus'/],
    [['frobnicate'], /unknown command 'frobnicate'/],
    [['completion', 'tcsh'], /argument 'shell'.*Allowed choices are bash, zsh, fish/],
    [['-n', 'x', 'operator'], /"operator" must come first/],
  ])('%j', async (argv, message) => {
    const r = await run(...argv);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(r.stdout).toBe('');
  });

  it('a command that gets past its usage fails on the missing kubeconfig with exit 1, naming the flag', async () => {
    const r = await run('list');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: cannot load --kubeconfig \/nonexistent\/kubeconfig: /);
  });
});

describe('help', () => {
  it('--help lists every user command and the process commands, on stdout, exit 0', async () => {
    const r = await run('--help');
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/^Usage: agentflow /);
    for (const cmd of [
      'submit',
      'watch',
      'list',
      'get',
      'describe',
      'output',
      'logs',
      'cancel',
      'suspend',
      'resume',
      'retry',
      'resubmit',
      'agents',
      'completion',
      'operator',
      'agent',
      'backup',
      'restore',
    ]) {
      expect(r.stdout).toMatch(new RegExp(`^  ${cmd}\\b`, 'm'));
    }
    for (const flag of ['--namespace', '--context', '--kubeconfig', '--request-timeout'])
      expect(r.stdout).toContain(flag);
  });

  it("a command's --help shows its own flags and the global ones", async () => {
    const r = await run('submit', '--help');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^Usage: agentflow submit /);
    for (const flag of ['--filename', '--param', '--generate-name', '--watch', 'Global Options:', '--namespace']) {
      expect(r.stdout).toContain(flag);
    }
  });

  it('--version after other flags still prints the version line', async () => {
    const r = await run('list', '--version');
    expect(r).toMatchObject({ code: 0, stdout: expect.stringMatching(/^agentflow \d+\.\d+\.\d+/), stderr: '' });
  });

  it('is named "kubectl agentflow" when kubectl runs it as the kubectl-agentflow plugin', () => {
    expect(programName('/usr/local/bin/kubectl-agentflow')).toBe('kubectl agentflow');
    expect(programName('/repo/bin/agentflow.mjs')).toBe('agentflow');
  });
});

describe('-p key=value', () => {
  it('reads the value as a YAML scalar: numbers stay numbers', () => {
    expect(parseParam('count=3').slice(0, 2)).toEqual(['count', 3]);
    expect(parseParam('ratio=0.5').slice(0, 2)).toEqual(['ratio', 0.5]);
    expect(parseParam('ok=true').slice(0, 2)).toEqual(['ok', true]);
    expect(parseParam('none=null').slice(0, 2)).toEqual(['none', null]);
    expect(parseParam('topic=rust').slice(0, 2)).toEqual(['topic', 'rust']);
    expect(parseParam('quoted="3"').slice(0, 2)).toEqual(['quoted', '3']);
  });

  it('keeps what is no scalar, and everything after the first =, as the string typed', () => {
    expect(parseParam('msg=hello: world').slice(0, 2)).toEqual(['msg', 'hello: world']);
    expect(parseParam('list=[1, 2]').slice(0, 2)).toEqual(['list', '[1, 2]']);
    expect(parseParam('expr=a=b').slice(0, 2)).toEqual(['expr', 'a=b']);
    expect(parseParam('bad=: [').slice(0, 2)).toEqual(['bad', ': [']);
    expect(parseParam('empty=').slice(0, 2)).toEqual(['empty', '']);
  });

  it('keeps the text as typed, for a string parameter of a template', () => {
    expect(parseParam('version=3.10')).toEqual(['version', 3.1, '3.10']);
    expect(parseParam('flag=yes')).toEqual(['flag', 'yes', 'yes']);
  });

  it('refuses a missing key or =', () => {
    expect(() => parseParam('novalue')).toThrow(/expected key=value/);
    expect(() => parseParam('=3')).toThrow(/expected key=value/);
  });
});

describe('--request-timeout durations', () => {
  it('takes bare seconds and Go-style units, 0 for no limit', () => {
    expect(parseDuration('0')).toBe(0);
    expect(parseDuration('45')).toBe(45_000);
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('1m30s')).toBe(90_000);
    expect(parseDuration('1.5h')).toBe(5_400_000);
  });

  it('refuses anything else', () => {
    for (const bad of ['', 's', '5x', '1m 30s', '-1s', '10sec'])
      expect(() => parseDuration(bad), bad).toThrow(/duration/);
  });
});
