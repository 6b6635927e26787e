import { describe, expect, it } from 'vitest';
import {
  type AutoscaleDecision,
  type AutoscaleInput,
  type AutoscaleState,
  autoscale,
} from '../../../src/operator/pool/autoscaler.ts';

const S = 1000;

/** 4 slots per agent, 80% target, 0..5 agents, 300 s delay, idle, at t=0. */
function input(over: Partial<AutoscaleInput> = {}): AutoscaleInput {
  return {
    now: 0,
    current: 0,
    min: 0,
    max: 5,
    targetUtilization: 80,
    scaleDownDelaySeconds: 300,
    slotsPerAgent: 4,
    inflight: 0,
    queued: 0,
    ...over,
  };
}

/** Threads state and replicas through successive calls, like the pool controller does. */
class Pool {
  current: number;
  state: AutoscaleState | undefined;
  readonly history: AutoscaleDecision[] = [];
  private readonly base: Partial<AutoscaleInput>;
  constructor(current: number, base: Partial<AutoscaleInput> = {}) {
    this.current = current;
    this.base = base;
  }
  tick(seconds: number, inflight: number, queued = 0): AutoscaleDecision {
    const d = autoscale(
      input({ ...this.base, now: seconds * S, current: this.current, inflight, queued, state: this.state }),
    );
    this.current = d.replicas;
    this.state = d.state;
    this.history.push(d);
    return d;
  }
}

describe('autoscale: single decisions', () => {
  interface Row {
    name: string;
    in: Partial<AutoscaleInput>;
    replicas: number;
    reason: string;
  }
  const rows: Row[] = [
    {
      name: 'idle at min 0 stays at 0',
      in: {},
      replicas: 0,
      reason: '0 slots wanted (0 in flight + 0 queued) at 80% target → 0 agents of 4 slots; at min 0',
    },
    {
      name: '1 queued slot from 0 → 1',
      in: { queued: 1 },
      replicas: 1,
      reason: '1 slot wanted (0 in flight + 1 queued) at 80% target → 1 agent of 4 slots; scale up: 0 → 1',
    },
    {
      name: '30 queued slots, capacity 4 at 80% → ceil(30/3.2) = 10, capped at max 5',
      in: { current: 2, queued: 30 },
      replicas: 5,
      reason:
        '30 slots wanted (0 in flight + 30 queued) at 80% target → 10 agents of 4 slots; scale up: 2 → 5 (at max 5)',
    },
    {
      name: 'in-flight and queued slots add up: 4 + 8 = 12 → ceil(12/3.2) = 4',
      in: { current: 1, inflight: 4, queued: 8, max: 10 },
      replicas: 4,
      reason: '12 slots wanted (4 in flight + 8 queued) at 80% target → 4 agents of 4 slots; scale up: 1 → 4',
    },
    {
      name: 'exact multiple does not round up: 16 slots at 3.2 per agent → 5',
      in: { current: 5, inflight: 16, max: 10 },
      replicas: 5,
      reason: '16 slots wanted (16 in flight + 0 queued) at 80% target → 5 agents of 4 slots; steady at 5',
    },
    {
      name: 'no float error: 21 slots at 3 × 70% = 2.1 per agent → 10, not 11',
      in: { current: 1, queued: 21, slotsPerAgent: 3, targetUtilization: 70, max: 20 },
      replicas: 10,
      reason: '21 slots wanted (0 in flight + 21 queued) at 70% target → 10 agents of 3 slots; scale up: 1 → 10',
    },
    {
      name: 'target 100: 12 slots / 4 → 3',
      in: { current: 1, inflight: 12, targetUtilization: 100, max: 10 },
      replicas: 3,
      reason: '12 slots wanted (12 in flight + 0 queued) at 100% target → 3 agents of 4 slots; scale up: 1 → 3',
    },
    {
      name: 'target 50: 12 slots / 2 → 6',
      in: { current: 1, inflight: 12, targetUtilization: 50, max: 10 },
      replicas: 6,
      reason: '12 slots wanted (12 in flight + 0 queued) at 50% target → 6 agents of 4 slots; scale up: 1 → 6',
    },
    {
      name: 'min above wanted: 1 slot wants 1 agent, min 2 keeps 2',
      in: { current: 2, min: 2, inflight: 1 },
      replicas: 2,
      reason: '1 slot wanted (1 in flight + 0 queued) at 80% target → 1 agent of 4 slots; at min 2',
    },
    {
      name: 'already at max with more work: stays at max',
      in: { current: 5, queued: 100 },
      replicas: 5,
      reason: '100 slots wanted (0 in flight + 100 queued) at 80% target → 32 agents of 4 slots; at max 5',
    },
    {
      name: 'current above max (set by hand) is clamped down at once, without the delay',
      in: { current: 8, queued: 30 },
      replicas: 5,
      reason:
        '30 slots wanted (0 in flight + 30 queued) at 80% target → 10 agents of 4 slots; replicas 8 outside [0, 5]: clamped to 5 at once; at max 5',
    },
    {
      name: 'current above max with no work: clamped to max at once, then waits for the delay',
      in: { current: 8 },
      replicas: 5,
      reason:
        '0 slots wanted (0 in flight + 0 queued) at 80% target → 0 agents of 4 slots; replicas 8 outside [0, 5]: clamped to 5 at once; hold: waiting for the scale-down delay (300s left), keeping 5',
    },
    {
      name: 'current below min is raised at once',
      in: { current: 0, min: 2 },
      replicas: 2,
      reason:
        '0 slots wanted (0 in flight + 0 queued) at 80% target → 0 agents of 4 slots; replicas 0 outside [2, 5]: clamped to 2 at once; at min 2',
    },
    {
      name: 'no history (first call, e.g. after an operator restart): does not scale down yet',
      in: { current: 4, inflight: 1 },
      replicas: 4,
      reason:
        '1 slot wanted (1 in flight + 0 queued) at 80% target → 1 agent of 4 slots; hold: waiting for the scale-down delay (300s left), keeping 4',
    },
    {
      name: 'scale-down delay 0: scales down at once, to min',
      in: { current: 4, min: 1, scaleDownDelaySeconds: 0 },
      replicas: 1,
      reason:
        '0 slots wanted (0 in flight + 0 queued) at 80% target → 0 agents of 4 slots; scale down after 0s below target: 4 → 1 (at min 1)',
    },
    {
      name: 'bad figures are sanitised: negative/NaN demand is 0, capacity 0 is 1',
      in: { current: 0, inflight: Number.NaN, queued: -3, slotsPerAgent: 0 },
      replicas: 0,
      reason: '0 slots wanted (0 in flight + 0 queued) at 80% target → 0 agents of 1 slot; at min 0',
    },
  ];

  it.each(rows)('$name', (row) => {
    const d = autoscale(input(row.in));
    expect(d.replicas).toBe(row.replicas);
    expect(d.reason).toBe(row.reason);
  });

  it('returns the state to carry: the recommendation, and belowSince only while below current', () => {
    expect(autoscale(input({ now: 7 * S, queued: 30 })).state).toEqual({
      recommendations: [{ at: 7000, replicas: 5 }],
    });
    expect(autoscale(input({ now: 7 * S, current: 3 })).state).toEqual({
      belowSince: 7000,
      recommendations: [{ at: 7000, replicas: 0 }],
    });
  });

  it('does not mutate the state passed in', () => {
    const state: AutoscaleState = { belowSince: 0, recommendations: [{ at: 0, replicas: 1 }] };
    autoscale(input({ now: 10 * S, current: 3, queued: 30, state }));
    expect(state).toEqual({ belowSince: 0, recommendations: [{ at: 0, replicas: 1 }] });
  });
});

describe('autoscale: over time', () => {
  it('holds while demand is low, then steps down to the highest recommendation in the window, then to min', () => {
    const pool = new Pool(1);
    // t=0: 16 slots → 5 agents at once.
    expect(pool.tick(0, 16)).toMatchObject({ replicas: 5 });
    expect(pool.history[0]?.reason).toContain('scale up: 1 → 5 (at max 5)');

    // t=10: demand drops to 4 slots (2 agents): hold for the whole delay.
    let d = pool.tick(10, 4);
    expect(d.replicas).toBe(5);
    expect(d.reason).toContain('hold: waiting for the scale-down delay (300s left), keeping 5');
    expect(d.state.belowSince).toBe(10_000);

    // t=100: 8 slots (3 agents), still below 5.
    d = pool.tick(100, 8);
    expect(d.replicas).toBe(5);
    expect(d.reason).toContain('(210s left)');

    // t=200: nothing left.
    expect(pool.tick(200, 0).replicas).toBe(5);
    // t=309: 1 s short of the delay.
    d = pool.tick(309, 0);
    expect(d.replicas).toBe(5);
    expect(d.reason).toContain('(1s left)');

    // t=310: 300 s below target; the highest recommendation in [10, 310] is 3 (t=100).
    d = pool.tick(310, 0);
    expect(d.replicas).toBe(3);
    expect(d.reason).toBe(
      '0 slots wanted (0 in flight + 0 queued) at 80% target → 0 agents of 4 slots; scale down after 300s below target: 5 → 3',
    );
    expect(d.state).toEqual({
      belowSince: 10_000,
      recommendations: [
        { at: 100_000, replicas: 3 },
        { at: 310_000, replicas: 0 },
      ],
    });

    // t=350 and t=400: the 3 of t=100 is still within the last 300 s.
    d = pool.tick(350, 0);
    expect(d.replicas).toBe(3);
    expect(d.reason).toContain('hold: 3 recommended within the last 300s, keeping 3');
    expect(pool.tick(400, 0).replicas).toBe(3);

    // t=401: it has left the window → down to min 0.
    d = pool.tick(401, 0);
    expect(d.replicas).toBe(0);
    expect(d.reason).toContain('scale down after 391s below target: 3 → 0 (at min 0)');

    // t=402: settled at min; belowSince cleared.
    d = pool.tick(402, 0);
    expect(d.replicas).toBe(0);
    expect(d.reason).toContain('at min 0');
    expect(d.state).toEqual({ recommendations: [{ at: 402_000, replicas: 0 }] });

    expect(pool.history.map((h) => h.replicas)).toEqual([5, 5, 5, 5, 5, 3, 3, 3, 0, 0]);
  });

  it('idle for the whole delay from a scaled-up pool goes to min 0', () => {
    const pool = new Pool(0);
    expect(pool.tick(0, 0, 9).replicas).toBe(3); // ceil(9/3.2) = 3
    expect(pool.tick(60, 0).replicas).toBe(3); // belowSince = 60
    expect(pool.tick(359, 0).replicas).toBe(3);
    const d = pool.tick(360, 0);
    expect(d.replicas).toBe(0);
    expect(d.reason).toContain('scale down after 300s below target: 3 → 0 (at min 0)');
  });

  it('oscillating demand does not flap: scales up once, never down while the dips are shorter than the delay', () => {
    const pool = new Pool(1);
    // 16 slots (5 agents) and 0 slots alternating every minute, for 30 minutes.
    for (let t = 0; t <= 1800; t += 60) pool.tick(t, (t / 60) % 2 === 0 ? 16 : 0);
    const replicas = pool.history.map((h) => h.replicas);
    expect(replicas).toHaveLength(31);
    expect(replicas.every((r) => r === 5)).toBe(true);
    // Each peak resets the below-target clock: the last dip started at t=1740.
    expect(pool.history[30]?.state.belowSince).toBeUndefined();
    expect(pool.history[29]?.state.belowSince).toBe(1_740_000);
    // Then demand stays at 0: down after the full delay since the last peak's end.
    expect(pool.tick(1860, 0).replicas).toBe(5); // belowSince = 1860
    expect(pool.tick(2159, 0).replicas).toBe(5);
    expect(pool.tick(2160, 0).replicas).toBe(0);
  });

  it('a blip just before the delay ends restarts the wait', () => {
    const pool = new Pool(4, { max: 10 });
    expect(pool.tick(0, 0).reason).toContain('(300s left)');
    expect(pool.tick(290, 0).replicas).toBe(4);
    // t=295: 13 slots want 5 → scale up at once.
    expect(pool.tick(295, 13).replicas).toBe(5);
    // t=300: idle again; the wait starts over.
    const d = pool.tick(300, 0);
    expect(d.replicas).toBe(5);
    expect(d.reason).toContain('(300s left)');
    expect(pool.tick(599, 0).replicas).toBe(5);
    expect(pool.tick(600, 0).replicas).toBe(0);
  });

  it('a rise that stays below current resets nothing but bounds the step down', () => {
    const pool = new Pool(5);
    pool.tick(0, 0); // belowSince 0, recommendation 0
    pool.tick(100, 4); // 2 agents, still below 5
    pool.tick(200, 0);
    // t=300: delay passed; highest in [0, 300] is 2.
    expect(pool.tick(300, 0).replicas).toBe(2);
    // t=400: the 2 of t=100 has left the window.
    expect(pool.tick(400, 0).replicas).toBe(2);
    expect(pool.tick(401, 0).replicas).toBe(0);
  });

  it('keeps the window short however often it runs (sliding maximum)', () => {
    const pool = new Pool(0, { max: 10 });
    for (let t = 0; t < 600; t++) pool.tick(t, 8); // steady 3 agents every second
    expect(pool.current).toBe(3);
    expect(pool.state).toEqual({ recommendations: [{ at: 599_000, replicas: 3 }] });
    // Decreasing demand keeps one entry per distinct level still in the window.
    pool.tick(600, 4); // 2
    pool.tick(601, 1); // 1
    expect(pool.state?.recommendations).toEqual([
      { at: 599_000, replicas: 3 },
      { at: 600_000, replicas: 2 },
      { at: 601_000, replicas: 1 },
    ]);
  });

  it('clamps window entries to a lowered max', () => {
    // Recorded while max was 10; max is now 4.
    const state: AutoscaleState = { belowSince: 0, recommendations: [{ at: 100_000, replicas: 8 }] };
    const d = autoscale(input({ now: 300_000, current: 4, max: 4, state }));
    expect(d.replicas).toBe(4);
    expect(d.reason).toContain('hold: 4 recommended within the last 300s, keeping 4');
  });

  it('ignores window entries from the future (clock went back)', () => {
    const state: AutoscaleState = { belowSince: 0, recommendations: [{ at: 900_000, replicas: 5 }] };
    const d = autoscale(input({ now: 300_000, current: 5, state }));
    expect(d.replicas).toBe(0);
    expect(d.state.recommendations).toEqual([{ at: 300_000, replicas: 0 }]);
  });
});
