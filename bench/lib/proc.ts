import { readFileSync } from 'node:fs';

// Linux reports CPU time in clock ticks of 1/100 s (sysconf(_SC_CLK_TCK) on every common kernel build).
const TICKS_PER_SECOND = 100;

/** CPU seconds (user + system) a live process has used so far; 0 once it is gone. */
export function cpuSeconds(pid: number): number {
  if (pid === process.pid) {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1e6;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
  } catch {
    return 0;
  }
}

/** Resident set size of a live process, in MiB; 0 once it is gone. */
export function rssMiB(pid: number): number {
  if (pid === process.pid) return process.memoryUsage().rss / 2 ** 20;
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return 0;
  }
}

export interface Role {
  role: string;
  pids: number[];
}

/** CPU seconds per role (driver, workers, store) between two snapshots. */
export class CpuMeter {
  private readonly roles: () => Role[];
  private start = new Map<number, number>();

  constructor(roles: () => Role[]) {
    this.roles = roles;
  }

  begin(): void {
    this.start = new Map(this.roles().flatMap((r) => r.pids.map((pid) => [pid, cpuSeconds(pid)] as const)));
  }

  /** CPU seconds used by each role since begin(). */
  end(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const r of this.roles()) {
      out[r.role] = r.pids.reduce((sum, pid) => sum + cpuSeconds(pid) - (this.start.get(pid) ?? 0), 0);
    }
    return out;
  }
}
