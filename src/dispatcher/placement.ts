/** What a placement policy sees of an agent. */
export interface Candidate {
  agentId: string;
  capacity: number;
  used: number;
}

/** Chooses among agents that serve the handler and have room for the task. */
export type PlacementPolicy = (candidates: Candidate[]) => Candidate | undefined;

/** Lowest share of slots in use first; ties go to the agent with fewer tasks. */
export const leastLoaded: PlacementPolicy = (cs) => {
  let best: Candidate | undefined;
  for (const c of cs) {
    if (!best) best = c;
    else {
      const a = c.used / c.capacity;
      const b = best.used / best.capacity;
      if (a < b || (a === b && c.used < best.used)) best = c;
    }
  }
  return best;
};

/** Most free slots first (big agents fill up first in absolute terms). */
export const mostCapacity: PlacementPolicy = (cs) => {
  let best: Candidate | undefined;
  for (const c of cs) if (!best || c.capacity - c.used > best.capacity - best.used) best = c;
  return best;
};

/** Rotates through agents regardless of load. */
export function roundRobin(): PlacementPolicy {
  let next = 0;
  return (cs) => {
    if (cs.length === 0) return undefined;
    const sorted = [...cs].sort((a, b) => a.agentId.localeCompare(b.agentId));
    return sorted[next++ % sorted.length];
  };
}

export const POLICIES = {
  'least-loaded': () => leastLoaded,
  'most-capacity': () => mostCapacity,
  'round-robin': roundRobin,
} as const;
export type PolicyName = keyof typeof POLICIES;
