// Step-to-step latency: a chain of tasks where the driver hands over task
// i+1 as soon as it learns task i's result is recorded (agentflow: the
// dispatcher's 'committed' event; BullMQ: QueueEvents 'completed'). A hop is
// the time between two consecutive results, as the driver sees them.
import { ALL_SYSTEMS, type BenchConfig, starter } from '../lib/config.ts';
import { printTable, writeJson, writeSvg } from '../lib/report.ts';
import { round, summarize } from '../lib/stats.ts';
import { barPanel, percentilePanel, svgDocument } from '../lib/svg.ts';
import { type Done, ids, type System, withSystems } from '../lib/system.ts';

const PERCENTILES = ['p50', 'p90', 'p95', 'p99', 'max'] as const;

export async function chain(cfg: BenchConfig): Promise<void> {
  const { hops } = cfg.chain;
  const measured = new Map<System, Done[]>();
  await withSystems(
    ALL_SYSTEMS.map((k) => starter(k, cfg)),
    async (systems) => {
      for (const s of systems) {
        await runChain(s, 'warmup', 20);
        console.log(`chain: ${s.label}, ${hops} tasks`);
        measured.set(s, await runChain(s, 'chain', hops));
      }
    },
  );

  const results = [...measured].map(([s, done]) => {
    const hopMs = done.slice(1).map((d, i) => d.observedAt - (done[i] as Done).observedAt);
    return {
      key: s.key,
      label: s.label,
      security: s.security,
      tasks: done.length,
      totalMs: round((done.at(-1) as Done).observedAt - (done[0] as Done).sentAt),
      hopMs: summarize(hopMs),
      /** Parts of a hop: hand-over -> handler start, handler start -> result recorded and seen. */
      handOverToStartMs: summarize(done.map((d) => d.startedAt - d.sentAt)),
      startToResultMs: summarize(done.map((d) => d.observedAt - d.startedAt)),
    };
  });
  const json = writeJson(
    'chain',
    { hops, workers: cfg.workers, capacity: cfg.capacity, next: 'handed over from the result event handler' },
    { unit: 'ms', systems: Object.fromEntries(results.map((r) => [r.key, r])) },
  );
  printTable(
    `Step-to-step: a chain of ${hops} tasks, each handed over when the previous result is recorded (ms per hop)`,
    ['system', 'p50', 'p95', 'p99', 'max', 'mean', 'hand-over->start p50', 'start->result p50', 'chain total'],
    results.map((r) => [
      r.label,
      r.hopMs.p50,
      r.hopMs.p95,
      r.hopMs.p99,
      r.hopMs.max,
      r.hopMs.mean,
      r.handOverToStartMs.p50,
      r.startToResultMs.p50,
      r.totalMs,
    ]),
  );
  const svg = svgDocument(
    'Step-to-step latency: result of task i -> result of task i+1',
    `a chain of ${hops} no-op tasks, next task handed over from the result event; ${new Date().toISOString().slice(0, 10)}`,
    [
      barPanel(
        'Time per hop, p50',
        'ms, lower is better',
        results.map((r) => ({ label: r.label, value: r.hopMs.p50, color: r.key, note: `p99 ${r.hopMs.p99}` })),
      ),
      percentilePanel(
        'Time per hop',
        'ms',
        [...PERCENTILES],
        results.map((r) => ({ label: r.label, color: r.key, values: PERCENTILES.map((p) => r.hopMs[p]) })),
      ),
    ],
  );
  console.log(`\nwrote ${json} and ${writeSvg('chain', svg)}`);
}

/** Runs `count` tasks one after another: each is handed over from the previous one's result event. */
function runChain(s: System, phase: string, count: number, timeoutMs = 60_000): Promise<Done[]> {
  return new Promise((resolve, reject) => {
    const done: Done[] = [];
    const timer = setTimeout(() => {
      s.off('done', onDone);
      reject(new Error(`${s.label}: chain stuck after ${done.length} of ${count} tasks`));
    }, timeoutMs);
    const onDone = (d: Done) => {
      if (!d.id.startsWith(`${phase}/`)) return;
      done.push(d);
      if (done.length < count) {
        s.send(ids(phase, 1, done.length));
        return;
      }
      clearTimeout(timer);
      s.off('done', onDone);
      resolve(done);
    };
    s.on('done', onDone);
    s.send(ids(phase, 1, 0));
  });
}
