import { describe, expect, it } from 'vitest';
import {
  allows,
  EVENTS,
  IllegalTransitionError,
  nextPhase,
  PHASES,
  type TaskEventName,
  type TaskPhase,
} from '../../../src/dispatcher/task-state.ts';

// The dispatcher's per-task state machine: the legal moves, and every other (phase, event) pair refused.

const LEGAL: [TaskPhase, TaskEventName, TaskPhase][] = [
  ['queued', 'reserve', 'claiming'],
  ['queued', 'adopt', 'assigned'],
  ['queued', 'claimRefused', 'queued'],
  ['claiming', 'claimed', 'assigned'],
  ['claiming', 'claimRefused', 'queued'],
  ['claiming', 'adopt', 'assigned'],
  ['claiming', 'settle', 'settled'],
  ['assigned', 'resultReceived', 'committing'],
  ['assigned', 'takeBack', 'cancelling'],
  ['assigned', 'lost', 'queued'],
  ['assigned', 'adopt', 'assigned'],
  ['assigned', 'settle', 'settled'],
  ['committing', 'settle', 'settled'],
];

describe('task state machine', () => {
  it.each(LEGAL)('%s --%s--> %s', (from, event, to) => {
    expect(nextPhase('ns/wf/t', from, event)).toBe(to);
    expect(allows(from, event)).toBe(true);
  });

  const illegal = PHASES.flatMap((p) => EVENTS.map((e) => [p, e] as const)).filter(
    ([p, e]) => !LEGAL.some(([f, ev]) => f === p && ev === e),
  );

  it(`refuses the other ${illegal.length} (phase, event) pairs, naming the task, phase and event`, () => {
    expect(illegal.length).toBe(PHASES.length * EVENTS.length - LEGAL.length);
    for (const [from, event] of illegal) {
      expect(allows(from, event)).toBe(false);
      let err: unknown;
      try {
        nextPhase('ns/wf/t', from, event);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(IllegalTransitionError);
      expect((err as IllegalTransitionError).message).toBe(`task ns/wf/t: "${event}" is not allowed in phase ${from}`);
      expect(err).toMatchObject({ from, event });
    }
  });

  it('has no way out of cancelling and settled: a taken-back or finished attempt never runs again as itself', () => {
    for (const e of EVENTS) {
      expect(allows('cancelling', e)).toBe(false);
      expect(allows('settled', e)).toBe(false);
    }
  });

  it('never commits an attempt that was not assigned: only assigned receives a result', () => {
    expect(PHASES.filter((p) => allows(p, 'resultReceived'))).toEqual(['assigned']);
    expect(PHASES.filter((p) => allows(p, 'claimed'))).toEqual(['claiming']);
  });
});
