// The NODE_OPTIONS the operator runs with: the chart's default `operator.nodeOptions` (a chart test
// holds them equal) and what the benchmark's leader process gets.
//
// Why: under load V8 grows the young generation to 64 MiB per semi-space and keeps the pages. In the
// workflow bench (10,000 tasks, `npm run bench -- --only workflow`) the leader's RSS peaked at 424 MiB
// with Node's defaults and 288 MiB with 2 MiB semi-spaces, at the same CPU per task (0.53-0.54 ms).
export const OPERATOR_NODE_OPTIONS = '--max-semi-space-size=2';
