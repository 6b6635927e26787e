import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';

// The user CLI stays out of the processes that run in pods, and its help loads no command's code
// nor @kubernetes/client-node (~88 MB): each command's module is imported when it runs.

const HOOK = `data:text/javascript,${encodeURIComponent(`
import { registerHooks } from 'node:module';
const loaded = new Set();
registerHooks({ load(url, context, next) { loaded.add(url); return next(url, context); } });
process.on('exit', () => {
  const mine = [...loaded].flatMap((u) => {
    const src = u.indexOf('/src/');
    if (src >= 0) return [u.slice(src + 1)];
    const nm = u.lastIndexOf('/node_modules/');
    return nm >= 0 ? [u.slice(nm + 1)] : [];
  });
  process.stderr.write('\\nLOADED ' + JSON.stringify(mine) + '\\n');
});`)}`;

function loaded(args: string[]): string[] {
  const r = spawnSync(process.execPath, ['--import', HOOK, 'src/cli/main.ts', ...args], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
  const line = r.stderr.split('\n').find((l) => l.startsWith('LOADED '));
  return JSON.parse((line ?? 'LOADED []').slice('LOADED '.length)) as string[];
}

describe('the user CLI loads lazily', () => {
  it('`agentflow agent` and `agentflow operator` load none of it, nor commander', () => {
    for (const cmd of ['agent', 'operator']) {
      const mods = loaded([cmd, '--help']);
      expect(mods, cmd).toContain(`src/${cmd}/cli.ts`);
      expect(mods.filter((m) => m.startsWith('src/cli/user/') || m.startsWith('node_modules/commander/'))).toEqual([]);
    }
  });

  it('`agentflow --help` loads the program, but no command and not @kubernetes/client-node', () => {
    const mods = loaded(['--help']);
    expect(mods).toContain('src/cli/user/program.ts');
    expect(mods.filter((m) => m.startsWith('src/cli/user/commands/') || m.includes('@kubernetes/client-node'))).toEqual(
      [],
    );
  });
});
