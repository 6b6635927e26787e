import { TaskPhases } from '../api/workflow.ts';

/** The phases of one task instance (the CRD's status enum: one list for both). */
export type TaskPhase = (typeof TaskPhases)[number];

export const TASK_PHASES: readonly TaskPhase[] = TaskPhases;

export const TERMINAL: ReadonlySet<TaskPhase> = new Set<TaskPhase>(['Succeeded', 'Failed', 'Skipped', 'Cancelled']);
/** Handed to the dispatcher: what counts against parallelism. */
export const ACTIVE: ReadonlySet<TaskPhase> = new Set<TaskPhase>(['Queued', 'Running']);
