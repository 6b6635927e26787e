// The NODE_OPTIONS the operator runs with: the chart's default `operator.nodeOptions` (a chart test
// holds them equal) and what the benchmark's leader process gets.
//
// Why, measured with the workflow bench (10,000 tasks, `npm run bench -- --only workflow`, leader
// RSS peak / run time / leader CPU per task):
//   Node's defaults                                       424 MiB  2.9 s  0.54 ms
//   --max-semi-space-size=2                               314 MiB  3.0 s  0.59 ms
//   --max-semi-space-size=2 --max-old-space-size=1024     217 MiB  3.0 s  0.62 ms
//   --max-semi-space-size=2 --max-old-space-size=512      206 MiB  2.9 s  0.60 ms
//   --max-semi-space-size=2 --max-old-space-size=384      196 MiB  2.5 s  0.55 ms
// The young generation otherwise grows to 64 MiB per semi-space and keeps the pages; the old
// generation's growth factor follows its limit, and with Node's default limit (a share of the
// machine's memory, not the container's) V8 lets garbage pile up far past the live heap (~50 MiB
// here). 384 MiB is 75% of the chart's default memory limit (512Mi): raise both together.
export const OPERATOR_NODE_OPTIONS = '--max-semi-space-size=2 --max-old-space-size=384';
