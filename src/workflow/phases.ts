/** The phases of one task instance. */
export type TaskPhase =
  | 'Pending'
  | 'Queued'
  | 'Running'
  | 'Retrying'
  | 'Succeeded'
  | 'Failed'
  | 'Skipped'
  | 'Cancelled';

export const TASK_PHASES: readonly TaskPhase[] = [
  'Pending',
  'Queued',
  'Running',
  'Retrying',
  'Succeeded',
  'Failed',
  'Skipped',
  'Cancelled',
];

export const TERMINAL: ReadonlySet<TaskPhase> = new Set<TaskPhase>(['Succeeded', 'Failed', 'Skipped', 'Cancelled']);
/** Handed to the dispatcher: what counts against parallelism. */
export const ACTIVE: ReadonlySet<TaskPhase> = new Set<TaskPhase>(['Queued', 'Running']);
