// Plain-text building blocks of the CLI's output: kubectl-style tables and
// ages, durations, timestamps, JSON and YAML.
import { stringify as toYaml } from 'yaml';

/**
 * An age as kubectl prints it (k8s.io/apimachinery's HumanDuration): `42s`,
 * `3m5s`, `15m`, `2h30m`, `20h`, `3d4h`, `30d`, `2y3d`.
 */
export function humanAge(ms: number): string {
  const seconds = Math.floor(ms / 1000);
  if (seconds < -1) return '<invalid>';
  if (seconds < 0) return '0s';
  if (seconds < 120) return `${seconds}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 10) {
    const s = seconds % 60;
    return s === 0 ? `${minutes}m` : `${minutes}m${s}s`;
  }
  if (minutes < 180) return `${minutes}m`;
  const hours = Math.floor(minutes / 60);
  if (hours < 8) {
    const m = minutes % 60;
    return m === 0 ? `${hours}h` : `${hours}h${m}m`;
  }
  if (hours < 48) return `${hours}h`;
  if (hours < 24 * 8) {
    const h = hours % 24;
    return h === 0 ? `${Math.floor(hours / 24)}d` : `${Math.floor(hours / 24)}d${h}h`;
  }
  const days = Math.floor(hours / 24);
  if (days < 365 * 2) return `${days}d`;
  if (days < 365 * 8) {
    const d = days % 365;
    return d === 0 ? `${Math.floor(days / 365)}y` : `${Math.floor(days / 365)}y${d}d`;
  }
  return `${Math.floor(days / 365)}y`;
}

/** A run's duration: `850ms`, `4.2s`, `3m05s`, `2h07m`. */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return '';
  if (ms < 1000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${(Math.floor(ms / 100) / 10).toFixed(1)}s`;
  const s = Math.floor(ms / 1000);
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  const m = Math.floor(s / 60);
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m`;
}

/** Milliseconds between two RFC 3339 times (`to` absent: until `now`); undefined without a start. */
export function elapsedMs(from: string | undefined, to: string | undefined, now: number): number | undefined {
  if (!from) return undefined;
  const start = Date.parse(from);
  if (Number.isNaN(start)) return undefined;
  const end = to ? Date.parse(to) : now;
  return Number.isNaN(end) ? undefined : Math.max(0, end - start);
}

/** The local time of day, `HH:MM:SS`: the first column of the watch's line mode. */
export function clockTime(at: number): string {
  const d = new Date(at);
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':');
}

/** An RFC 3339 time without fractional seconds, or '' for none. */
export function shortTimestamp(t: string | undefined): string {
  if (!t) return '';
  const ms = Date.parse(t);
  return Number.isNaN(ms) ? t : new Date(ms).toISOString().replace(/\.\d+Z$/, 'Z');
}

/** One line, for a table cell: newlines and tabs become spaces. */
export const oneLine = (s: string | undefined): string => (s ?? '').replace(/\s*[\r\n\t]+\s*/g, ' ').trim();

/** A kubectl-style table: upper-case headers, columns left-aligned, three spaces apart, no trailing blanks. */
export function table(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join('   ')
      .trimEnd();
  return `${[line(headers), ...rows.map(line)].join('\n')}\n`;
}

export type DataFormat = 'json' | 'yaml';

/** An object as `-o json` (two-space indent, as kubectl) or `-o yaml` prints it. */
export function formatData(value: unknown, format: DataFormat): string {
  if (format === 'json') return `${JSON.stringify(value, null, 2)}\n`;
  return toYaml(value, { lineWidth: 0 });
}
