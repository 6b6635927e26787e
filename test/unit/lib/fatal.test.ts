import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';

// A rejection nobody handles ends the process with exit 1 and one JSON log line with its stack.

const script = `
import { installFatalHandlers } from './src/lib/fatal.ts';
import { createLogger } from './src/lib/log.ts';
installFatalHandlers(createLogger({ component: 'test' }));
setTimeout(() => process.stdout.write('still alive\\n'), 200);
Promise.reject(new Error('nobody caught me'));
`;

describe('installFatalHandlers', () => {
  it('logs an unhandled rejection with its stack and exits 1 before doing anything else', () => {
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stdout + r.stderr).not.toContain('still alive');
    const line = (r.stderr + r.stdout).split('\n').find((l) => l.includes('Fatal: unhandled promise rejection'));
    expect(line).toBeDefined();
    const entry = JSON.parse(line as string) as { level: string; stack?: string };
    expect(entry.level).toBe('error');
    expect(JSON.stringify(entry)).toContain('nobody caught me');
  });
});
