// The `agentflow ui` proxy `npm run demo` leaves running beside the local control plane: its pid
// lives in the cluster directory, and `npm run cluster:down` stops it with the cluster.
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';

export const UI_PID_FILE = 'ui.pid';

/** Whether a process with this pid exists (signal 0). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Stops the demo's `agentflow ui` proxy, if one runs. */
export function stopUiProxy(clusterDir: string): void {
  const file = join(clusterDir, UI_PID_FILE);
  if (!existsSync(file)) return;
  const pid = Number(readFileSync(file, 'utf8').trim());
  if (pid > 0 && alive(pid)) process.kill(pid, 'SIGTERM');
  rmSync(file, { force: true });
}
