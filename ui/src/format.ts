// Words and numbers as the page shows them.
import type { TaskView } from './api.ts';

/** Phases that do not change any more (a task's or a workflow's). */
const FINAL = new Set(['Succeeded', 'Failed', 'Skipped', 'Cancelled']);
export const isFinal = (phase: string | undefined) => phase !== undefined && FINAL.has(phase);
/** A task that has an attempt under way (its log grows). */
export const isRunning = (phase: string | undefined) => phase === 'Running';

/** The order phases are counted in ("28 Succeeded, 2 Running"). */
const PHASE_ORDER = [
  'Succeeded',
  'Running',
  'Waiting',
  'Retrying',
  'Queued',
  'Pending',
  'Failed',
  'Cancelled',
  'Skipped',
];

export function phaseCounts(tasks: readonly TaskView[]): [string, number][] {
  const counts = new Map<string, number>();
  for (const t of tasks) counts.set(t.phase, (counts.get(t.phase) ?? 0) + 1);
  const rank = (p: string) => {
    const i = PHASE_ORDER.indexOf(p);
    return i < 0 ? PHASE_ORDER.length : i;
  };
  return [...counts.entries()].sort((a, b) => rank(a[0]) - rank(b[0]));
}

export const countsText = (counts: [string, number][]) => counts.map(([p, n]) => `${n} ${p}`).join(', ');

/** One phase for a group of instances: what a person would want the colour to say. */
export function groupPhase(tasks: readonly TaskView[]): string {
  if (tasks.length === 0) return 'Pending';
  const has = (p: string) => tasks.some((t) => t.phase === p);
  if (has('Failed')) return 'Failed';
  if (has('Running')) return 'Running';
  if (has('Waiting')) return 'Waiting';
  if (has('Retrying')) return 'Retrying';
  if (tasks.every((t) => isFinal(t.phase))) {
    if (has('Succeeded')) return 'Succeeded';
    return has('Cancelled') ? 'Cancelled' : 'Skipped';
  }
  if (has('Queued')) return 'Queued';
  return 'Pending';
}

export function duration(ms: number | undefined): string {
  if (ms === undefined) return '–';
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${Math.floor(s % 60)}s`;
  return `${Math.floor(m / 60)}h ${m % 60}m`;
}

export function age(iso: string | undefined, now: number = Date.now()): string {
  if (!iso) return '–';
  const s = Math.max(0, Math.floor((now - Date.parse(iso)) / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h`;
  return `${Math.floor(h / 24)}d`;
}

export const time = (iso: string | undefined) => (iso ? new Date(iso).toLocaleString() : '–');

export function json(v: unknown): string {
  if (v === undefined) return '';
  return JSON.stringify(v, null, 2);
}
