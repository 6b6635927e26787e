// The NODE_OPTIONS agent pods' containers should run with (the operator's pod wiring sets it; a pool template's own
// NODE_OPTIONS, coming after, replaces it). Node refuses most V8 flags in NODE_OPTIONS; this one it takes.
//
// Why: under load V8 grows the young generation to 64 MiB per semi-space here (after 20,000 tasks the new space had
// 128 MiB reserved, 78 MiB touched, against 9 MiB of live old space). An agent's per-task garbage is small and
// short-lived, so 2 MiB semi-spaces hold it. Measured with bench/lib/agent-rss.ts (image entry, 20,000 no-op tasks,
// three runs each): busy peak 177-187 -> 105-118 MiB, idle 80-81 -> 77 MiB, agent CPU per task 0.06-0.10 ms either
// way (no difference beyond the noise). 1 MiB did as well on memory (93-115 busy, 75 idle); 2 leaves room for
// handlers that allocate more per task.
export const AGENT_NODE_OPTIONS = '--max-semi-space-size=2';
