import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';

// `agentflow agent` is what every agent pod runs: it must not load the operator's code (memory per
// agent), and `agentflow operator` need not load the agent runtime.

function run(args: string[], env: NodeJS.ProcessEnv = {}): string {
  const r = spawnSync(
    process.execPath,
    ['--import', './test/fixtures/cli/trace-modules.mjs', 'src/cli/main.ts', ...args],
    { encoding: 'utf8', env: { ...process.env, OTEL_EXPORTER_OTLP_ENDPOINT: '', ...env } },
  );
  expect(r.status).toBe(0);
  return r.stderr;
}

function listed(stderr: string, tag: string): string[] {
  const line = stderr.split('\n').find((l) => l.startsWith(`${tag} `));
  return JSON.parse((line ?? `${tag} []`).slice(tag.length + 1)) as string[];
}

const loaded = (args: string[]) => listed(run(args), 'LOADED');

describe('agentflow subcommands load lazily', () => {
  it('`agentflow agent` loads no operator, workflow-engine or etcd-layer module', () => {
    const mods = loaded(['agent', '--help']);
    expect(mods).toContain('src/agent/cli.ts');
    expect(mods.filter((m) => /^src\/(operator|workflow|dispatcher)\//.test(m))).toEqual([]);
    // The agent talks to etcd only through the dispatcher: no store, claims or leases code either.
    expect(mods.filter((m) => /^src\/state\/(store|claims|agent-leases|watch|audit)\.ts$/.test(m))).toEqual([]);
  });

  it('`agentflow agent` loads OpenTelemetry only when traces are to be exported', () => {
    // 1-3 MiB of RSS per agent pod (src/lib/trace-context.ts).
    const off = run(['agent', '--help']);
    expect(listed(off, 'PACKAGES')).toContain('@grpc/grpc-js');
    expect(listed(off, 'PACKAGES').filter((p) => p.startsWith('@opentelemetry/'))).toEqual([]);
    expect(listed(off, 'LOADED')).not.toContain('src/lib/tracing.ts');
  });

  it('`agentflow operator` does not load the agent runtime', () => {
    const mods = loaded(['operator', '--help']);
    expect(mods).toContain('src/operator/cli.ts');
    expect(mods.filter((m) => m.startsWith('src/agent/'))).toEqual([]);
  });
});
