/**
 * Queue-depth autoscaler for AgentPools: the HPA's algorithm, on task slots.
 *
 * Pure and deterministic: the caller passes the clock (`now`), the pool's
 * figures and the state returned by the previous call, and gets the replica
 * count to set plus the state to pass next time.
 *
 * - demand = inflight + queued slots;
 * - wanted = ceil(demand / (slotsPerAgent × targetUtilization / 100)), clamped to [min, max];
 * - scale up at once (from 0 too);
 * - scale down only after the recommendation has stayed below `current` for the
 *   whole scale-down delay, and then only to the highest recommendation seen
 *   during the last `scaleDownDelaySeconds` (HPA-style stabilisation window),
 *   so a dip that does not last the whole delay does not make the pool flap;
 * - a `current` outside [min, max] (replicas set by hand, or bounds changed) is
 *   clamped at once, without waiting for the delay; the usual rules then apply
 *   to the clamped count.
 */

/** Defaults of spec.autoscaling, for callers filling in optional fields. */
export const DEFAULT_TARGET_UTILIZATION = 80;
export const DEFAULT_SCALE_DOWN_DELAY_SECONDS = 300;

export interface AutoscaleInput {
  /** Clock, in ms. */
  now: number;
  /** Current spec.replicas. */
  current: number;
  min: number;
  max: number;
  /** Percent, 1..100. */
  targetUtilization: number;
  scaleDownDelaySeconds: number;
  /** spec.agent.capacity. */
  slotsPerAgent: number;
  /** Slots in use, from the dispatcher. */
  inflight: number;
  /** Slots wanted by queued tasks, from the dispatcher. */
  queued: number;
  /** State carried between calls (kept by the caller per pool; undefined at first). */
  state?: AutoscaleState;
}

export interface AutoscaleState {
  /** Since when the desired count has been below `current` (ms), or undefined. */
  belowSince?: number;
  /**
   * Recommendations (clamped to [min, max]) within the delay window, for
   * stabilisation. Kept as a sliding-window maximum: oldest first, strictly
   * decreasing replicas, so the first entry is the highest recommendation in
   * the window and the list stays short however often the autoscaler runs.
   */
  recommendations: { at: number; replicas: number }[];
}

export interface AutoscaleDecision {
  replicas: number;
  state: AutoscaleState;
  /** Human explanation, e.g. "12 slots wanted (4 in flight + 8 queued) at 80% target → 4 agents of 4 slots; scale up: 1 → 4". */
  reason: string;
}

const clamp = (n: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, n));
/** Non-negative integer (NaN and negatives are 0, fractions round down). */
const count = (n: number) => (Number.isFinite(n) && n > 0 ? Math.floor(n) : 0);
const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;

export function autoscale(i: AutoscaleInput): AutoscaleDecision {
  const now = i.now;
  // Sanitise: the CRD schema already enforces these, but a bad figure must
  // never produce a count outside [min, max] or NaN.
  const min = count(i.min);
  const max = Math.max(min, count(i.max));
  const target = clamp(Number.isFinite(i.targetUtilization) ? i.targetUtilization : 100, 1, 100);
  const slots = Math.max(1, count(i.slotsPerAgent));
  const delayMs = count(i.scaleDownDelaySeconds) * 1000;
  const inflight = count(i.inflight);
  const queued = count(i.queued);
  const demand = inflight + queued;

  // Integer arithmetic (demand × 100 / (slots × percent)) so that e.g. 8 slots
  // at 4 × 80% is exactly 2.5 → 3, with no float rounding on exact multiples.
  const wanted = Math.ceil((demand * 100) / (slots * target));
  const recommended = clamp(wanted, min, max);

  const parts = [
    `${plural(demand, 'slot')} wanted (${inflight} in flight + ${queued} queued) at ${target}% target → ${plural(wanted, 'agent')} of ${plural(slots, 'slot')}`,
  ];

  const requested = count(i.current);
  const current = clamp(requested, min, max);
  if (current !== requested) {
    parts.push(`replicas ${requested} outside [${min}, ${max}]: clamped to ${current} at once`);
  }

  // Sliding-window maximum of recommendations within [now - delay, now].
  // Entries from the future (clock went back) are dropped.
  const start = now - delayMs;
  const recommendations = (i.state?.recommendations ?? []).filter(
    (r) => r.at >= start && r.at <= now && Number.isFinite(r.replicas),
  );
  while (recommendations.length > 0 && (recommendations[recommendations.length - 1]?.replicas ?? 0) <= recommended) {
    recommendations.pop();
  }
  recommendations.push({ at: now, replicas: recommended });
  // Clamp again: min/max may have changed since older entries were recorded.
  const stabilised = clamp(recommendations[0]?.replicas ?? recommended, min, max);

  const done = (replicas: number, belowSince: number | undefined, action: string): AutoscaleDecision => {
    parts.push(action);
    const state: AutoscaleState = { recommendations };
    if (belowSince !== undefined) state.belowSince = belowSince;
    return { replicas, state, reason: parts.join('; ') };
  };
  const bound = (n: number) =>
    n >= max && wanted >= max ? ` (at max ${max})` : n <= min && wanted <= min ? ` (at min ${min})` : '';

  if (recommended > current) {
    return done(recommended, undefined, `scale up: ${current} → ${recommended}${bound(recommended)}`);
  }
  if (recommended === current) {
    const steady = wanted >= max ? `at max ${max}` : wanted <= min ? `at min ${min}` : `steady at ${current}`;
    return done(current, undefined, steady);
  }

  // recommended < current: below target since belowSince (never in the future).
  const prev = i.state?.belowSince;
  const belowSince = prev !== undefined && Number.isFinite(prev) && prev <= now ? prev : now;
  const elapsedMs = now - belowSince;
  if (elapsedMs < delayMs) {
    const left = Math.ceil((delayMs - elapsedMs) / 1000);
    return done(current, belowSince, `hold: waiting for the scale-down delay (${left}s left), keeping ${current}`);
  }
  if (stabilised >= current) {
    // Already stepped down to the highest recommendation of the window; the
    // next step waits for that recommendation to leave the window.
    return done(
      current,
      belowSince,
      `hold: ${stabilised} recommended within the last ${delayMs / 1000}s, keeping ${current}`,
    );
  }
  const elapsed = Math.floor(elapsedMs / 1000);
  return done(
    stabilised,
    belowSince,
    `scale down after ${elapsed}s below target: ${current} → ${stabilised}${bound(stabilised)}`,
  );
}
