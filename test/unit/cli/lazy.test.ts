import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';

// `agentflow agent` is what every agent pod runs: it must not load the operator's code (memory per
// agent), and `agentflow operator` need not load the agent runtime.

function loaded(args: string[]): string[] {
  const r = spawnSync(
    process.execPath,
    ['--import', './test/fixtures/cli/trace-modules.mjs', 'src/cli/main.ts', ...args],
    {
      encoding: 'utf8',
    },
  );
  expect(r.status).toBe(0);
  const line = r.stderr.split('\n').find((l) => l.startsWith('LOADED '));
  return JSON.parse((line ?? 'LOADED []').slice('LOADED '.length)) as string[];
}

describe('agentflow subcommands load lazily', () => {
  it('`agentflow agent` loads no operator, workflow-engine or etcd-layer module', () => {
    const mods = loaded(['agent', '--help']);
    expect(mods).toContain('src/agent/cli.ts');
    expect(mods.filter((m) => /^src\/(operator|workflow|dispatcher)\//.test(m))).toEqual([]);
    // The agent talks to etcd only through the dispatcher: no store, claims or leases code either.
    expect(mods.filter((m) => /^src\/state\/(store|claims|agent-leases|watch|audit)\.ts$/.test(m))).toEqual([]);
  });

  it('`agentflow operator` does not load the agent runtime', () => {
    const mods = loaded(['operator', '--help']);
    expect(mods).toContain('src/operator/cli.ts');
    expect(mods.filter((m) => m.startsWith('src/agent/'))).toEqual([]);
  });
});
