import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { parse } from '../../../src/operator/cli.ts';
import { DEFAULT_WAITING_TIMEOUT_SECONDS } from '../../../src/operator/workflow/controller.ts';

// The operator's flags for etcd password auth: both or neither, the password
// from a file (never a flag value), and errors that name the flag.

const dir = mkdtempSync(join(tmpdir(), 'agentflow-operator-cli-'));
const kubeconfig = join(dir, 'kubeconfig');
writeFileSync(
  kubeconfig,
  JSON.stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'c', cluster: { server: 'https://127.0.0.1:6443' } }],
    users: [{ name: 'u', user: { token: 't' } }],
    contexts: [{ name: 'x', context: { cluster: 'c', user: 'u' } }],
    'current-context': 'x',
  }),
);
const passwordFile = join(dir, 'password');
const base = ['--kubeconfig', kubeconfig, '--etcd-endpoints', 'https://etcd:2379', '--agent-dispatcher', 'd:7070'];

const config = (argv: string[]) => {
  const cfg = parse([...base, ...argv]);
  if (cfg === 'help') throw new Error('unexpected help');
  return cfg;
};

beforeEach(() => {
  // The host's own settings must not leak into what the flags alone decide.
  for (const name of ['AGENTFLOW_ETCD_USERNAME', 'AGENTFLOW_ETCD_PASSWORD_FILE']) vi.stubEnv(name, '');
});
afterEach(() => {
  vi.unstubAllEnvs();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('agentflow-operator etcd password auth', () => {
  it('reads the password from the file, without its trailing newline', () => {
    writeFileSync(passwordFile, 's3cret\n');
    const cfg = config(['--etcd-username', 'agentflow-operator', '--etcd-password-file', passwordFile]);
    expect(cfg.etcdAuth).toEqual({ username: 'agentflow-operator', password: 's3cret' });
  });

  it('takes both from the environment', () => {
    writeFileSync(passwordFile, 'from-env');
    vi.stubEnv('AGENTFLOW_ETCD_USERNAME', 'op');
    vi.stubEnv('AGENTFLOW_ETCD_PASSWORD_FILE', passwordFile);
    expect(config([]).etcdAuth).toEqual({ username: 'op', password: 'from-env' });
  });

  it('uses no password auth when neither is set (the client certificate names the user)', () => {
    expect(config([]).etcdAuth).toBeUndefined();
  });

  it.each([
    [['--etcd-username', 'op'], '--etcd-username needs --etcd-password-file'],
    [['--etcd-password-file', '/dev/null'], '--etcd-password-file needs --etcd-username'],
  ])('refuses %j: %s', (argv, message) => {
    expect(() => config(argv)).toThrow(message);
  });

  it('names the flag and the file when the password file is missing or empty', () => {
    const missing = join(dir, 'nope');
    expect(() => config(['--etcd-username', 'op', '--etcd-password-file', missing])).toThrow(
      `--etcd-password-file: cannot read ${missing}`,
    );
    writeFileSync(passwordFile, '\n');
    expect(() => config(['--etcd-username', 'op', '--etcd-password-file', passwordFile])).toThrow(
      `--etcd-password-file: ${passwordFile} is empty`,
    );
  });
});

describe('--watch-namespace', () => {
  it('takes one namespace or several, comma-separated; none means all', () => {
    expect(config([]).watchNamespaces).toBeUndefined();
    expect(config(['--watch-namespace', 'research']).watchNamespaces).toEqual(['research']);
    expect(config(['--watch-namespace', 'team-a, team-b']).watchNamespaces).toEqual(['team-a', 'team-b']);
  });

  it.each([
    ['Team_A', '--watch-namespace: must be namespace names separated by commas, got "Team_A" in "Team_A"'],
    ['a,,b', '--watch-namespace: must be namespace names separated by commas, got "" in "a,,b"'],
    ['a,b,a', '--watch-namespace: "a,b,a" names a namespace twice'],
  ])('refuses %s, naming the flag and the value', (value, message) => {
    expect(() => config(['--watch-namespace', value])).toThrow(message);
  });
});

describe('operator flags: --waiting-timeout', () => {
  it('defaults to DEFAULT_WAITING_TIMEOUT_SECONDS and takes the flag or AGENTFLOW_WAITING_TIMEOUT', () => {
    expect(config([]).waitingTimeoutSeconds).toBe(DEFAULT_WAITING_TIMEOUT_SECONDS);
    expect(config(['--waiting-timeout', '30']).waitingTimeoutSeconds).toBe(30);
    vi.stubEnv('AGENTFLOW_WAITING_TIMEOUT', '45');
    expect(config([]).waitingTimeoutSeconds).toBe(45);
  });

  it.each(['0', '-5', 'soon', '604801'])('refuses %s, naming the flag', (value) => {
    expect(() => config(['--waiting-timeout', value])).toThrow(/--waiting-timeout/);
  });
});
