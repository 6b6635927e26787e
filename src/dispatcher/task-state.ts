import type { Claim } from '../state/index.ts';
import type { TaskSpec } from './types.ts';

/**
 * The life of one task attempt inside the dispatcher, as one state value and
 * one transition function: every change of phase goes through `next`, and a
 * change the table does not allow is refused (a bug, never silently applied).
 *
 *   queued ──reserve──▶ claiming ──claimed──▶ assigned ──resultReceived──▶ committing ──settle──▶ settled
 *     ▲                   │                    │   │                           │
 *     └──claimRefused─────┘                    │   └──takeBack──▶ cancelling    └──commitRefused──▶ settled
 *     └──────────────────────lost──────────────┘   claiming ──settle──▶ settled (cancelled before its Assign went out)
 *   adopt (an agent re-registers holding the attempt): queued | claiming | assigned ──▶ assigned
 */
export type TaskPhase = 'queued' | 'claiming' | 'assigned' | 'committing' | 'cancelling' | 'settled';

export type TaskEventName =
  /** Picked for an agent in a dispatch turn; its claim is being written. */
  | 'reserve'
  /** The claim transaction succeeded. */
  | 'claimed'
  /** The claim was refused or the transaction failed: back in line. */
  | 'claimRefused'
  /** The claim was lost with the agent's lease: the next attempt goes back in line. */
  | 'lost'
  /** A re-registering agent still holds the attempt (after a reconnect or a leader change). */
  | 'adopt'
  /** The agent's Result arrived; the commit is queued. */
  | 'resultReceived'
  /** Cancelled, timed out or re-queued: the claim is released and the agent told to stop. */
  | 'takeBack'
  /** The attempt is over here (committed, refused at commit, or an adopted attempt that ended). */
  | 'settle';

const TABLE: Record<TaskPhase, Partial<Record<TaskEventName, TaskPhase>>> = {
  queued: { reserve: 'claiming', adopt: 'assigned', claimRefused: 'queued' },
  claiming: { claimed: 'assigned', claimRefused: 'queued', adopt: 'assigned', settle: 'settled' },
  assigned: {
    resultReceived: 'committing',
    takeBack: 'cancelling',
    lost: 'queued',
    adopt: 'assigned',
    settle: 'settled',
  },
  committing: { settle: 'settled' },
  cancelling: {},
  settled: {},
};

export class IllegalTransitionError extends Error {
  override name = 'IllegalTransitionError';
  readonly from: TaskPhase;
  readonly event: TaskEventName;

  constructor(task: string, from: TaskPhase, event: TaskEventName) {
    super(`task ${task}: "${event}" is not allowed in phase ${from}`);
    this.from = from;
    this.event = event;
  }
}

/** The phase after `event`, or IllegalTransitionError. */
export function nextPhase(task: string, from: TaskPhase, event: TaskEventName): TaskPhase {
  const to = TABLE[from][event];
  if (to === undefined) throw new IllegalTransitionError(task, from, event);
  return to;
}

/** Whether `event` may happen in `from` (for guards that would otherwise repeat the table). */
export function allows(from: TaskPhase, event: TaskEventName): boolean {
  return TABLE[from][event] !== undefined;
}

/** Every (phase, event) pair, allowed or not: what the unit test walks. */
export const PHASES: readonly TaskPhase[] = Object.keys(TABLE) as TaskPhase[];
export const EVENTS: readonly TaskEventName[] = [
  'reserve',
  'claimed',
  'claimRefused',
  'lost',
  'adopt',
  'resultReceived',
  'takeBack',
  'settle',
];

/** One attempt the dispatcher tracks, from queued to settled. */
export interface TaskEntry {
  readonly key: string;
  readonly spec: TaskSpec;
  attempt: number;
  readonly cost: number;
  /** Changed only by move(). */
  readonly phase: TaskPhase;
  agentId?: string;
  claim?: Claim;
  enqueuedAt: number;
  /** When this attempt's Assign was written (performance.now()); unknown for an adopted one. */
  assignedAt?: number;
  timer?: NodeJS.Timeout;
  /** Cancelled while claiming (why): its Assign never goes out. */
  cancelled?: string;
  /** Known only from an agent's re-registration (after a dispatcher restart): cannot be re-queued. */
  readonly adopted?: boolean;
  /** Place in line, fixed at the first enqueue. */
  seq?: number;
}

/** A new entry in phase queued (or assigned, for one adopted from a re-registering agent). */
export function newEntry(
  key: string,
  spec: TaskSpec,
  attempt: number,
  cost: number,
  extra: { adopted?: boolean; seq?: number } = {},
): TaskEntry {
  return {
    key,
    spec,
    attempt,
    cost,
    phase: extra.adopted ? 'assigned' : 'queued',
    enqueuedAt: performance.now(),
    ...(extra.adopted && { adopted: true }),
    ...(extra.seq !== undefined && { seq: extra.seq }),
  };
}

/** The one place an entry's phase changes: the transition table refuses what it does not allow. */
export function move(entry: TaskEntry, event: TaskEventName): void {
  (entry as { phase: TaskPhase }).phase = nextPhase(entry.key, entry.phase, event);
}

/** Why the dispatcher refused an agent's message (WireError.code); nothing changed because of it. */
export type WireErrorCode =
  | 'UNKNOWN_TASK'
  | 'STALE_ATTEMPT'
  | 'WRONG_POOL'
  | 'PAYLOAD_TOO_LARGE'
  | 'NOT_REGISTERED'
  | 'INVALID';

export interface WireRefusal {
  code: WireErrorCode;
  message: string;
}
