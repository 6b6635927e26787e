// Limits: what concurrency keys and rate limits cost the dispatcher's throughput. N no-op tasks at once
// through agentflow (TLS + token auth, etcd fsync on), in interleaved rounds of five modes: no limits;
// a concurrency key per task whose max is never reached and a rate limit whose tokens never run out (the
// bookkeeping alone); a key whose max holds half the slots and a rate limit below the peak (the held
// path: tasks wait in their gate's queue and are woken by attempts ending, or by the refill timer).
import { AgentflowSystem, NAMESPACE, POOL } from '../lib/agentflow.ts';
import type { BenchConfig } from '../lib/config.ts';
import { printTable, writeJson } from '../lib/report.ts';
import { percentile, round } from '../lib/stats.ts';
import { runBatch, withSystems } from '../lib/system.ts';

/** The rate of the held rate-limit mode, tasks/s (below the dispatcher's peak on any machine we run on). */
const HELD_RATE = 1_000;

interface Mode {
  key: string;
  label: string;
  limitsOf?: AgentflowSystem['limitsOf'];
}

export async function limits(cfg: BenchConfig): Promise<void> {
  const tasks = cfg.throughput.tasks;
  const rounds = 3;
  const slots = cfg.workers * cfg.capacity;
  const heldMax = Math.max(1, Math.floor(slots / 8));
  const modes: Mode[] = [
    { key: 'none', label: 'no limits' },
    {
      key: 'key-free',
      label: 'concurrency key, 16 keys, max never reached',
      limitsOf: (n) => ({ concurrency: { key: `customer-${n % 16}`, max: 10_000 } }),
    },
    {
      key: 'rate-free',
      label: 'rate limit, 16 keys, tokens never run out',
      limitsOf: (n) => ({ rateLimits: [{ name: 'calls', key: `tenant-${n % 16}` }] }),
    },
    {
      key: 'key-held',
      label: `concurrency key, 4 keys x max ${heldMax} (half the ${slots} slots)`,
      limitsOf: (n) => ({ concurrency: { key: `customer-${n % 4}`, max: heldMax } }),
    },
    {
      key: 'rate-held',
      label: `rate limit of ${HELD_RATE}/s, one bucket`,
      limitsOf: () => ({ rateLimits: [{ name: 'held' }] }),
    },
  ];
  const timeoutMs = 60_000 + tasks * 10;
  const measured = new Map<string, number[]>(modes.map((m) => [m.key, []]));
  await withSystems(
    [() => AgentflowSystem.start({ processes: cfg.workers, capacity: cfg.capacity })],
    async ([system]) => {
      const s = system as AgentflowSystem;
      s.dispatcher.setRateLimits(NAMESPACE, POOL, [
        { name: 'calls', perSecond: 100_000, burst: 10_000 },
        { name: 'held', perSecond: HELD_RATE },
      ]);
      console.log('limits: warming up (2,000 tasks)');
      await runBatch(s, 'warmup', 2_000, timeoutMs);
      for (let r = 1; r <= rounds; r++) {
        for (const m of modes) {
          s.limitsOf = m.limitsOf;
          const t0 = performance.now();
          await runBatch(s, `${m.key}${r}`, tasks, timeoutMs);
          const perSec = tasks / ((performance.now() - t0) / 1000);
          measured.get(m.key)?.push(perSec);
          console.log(`limits: round ${r}/${rounds} ${m.label}: ${Math.round(perSec)} tasks/s`);
        }
      }
      s.limitsOf = undefined;
    },
  );
  const median = (k: string) => percentile(measured.get(k) ?? [], 50);
  const base = median('none');
  const figures = Object.fromEntries(
    modes.map((m) => [
      m.key,
      {
        label: m.label,
        tasksPerSec: round(median(m.key), 0),
        ofNoLimits: round(median(m.key) / base, 3),
        rounds: (measured.get(m.key) ?? []).map((x) => round(x, 0)),
      },
    ]),
  );
  printTable(
    `limits: ${tasks} no-op tasks at once on ${cfg.workers} x ${cfg.capacity} slots (median of ${rounds} rounds)`,
    ['mode', 'tasks/s', 'vs no limits'],
    modes.map((m) => [m.label, round(median(m.key), 0), `${round((median(m.key) / base) * 100, 1)} %`]),
  );
  const file = writeJson('limits', { ...cfg, limits: { tasks, rounds, heldRate: HELD_RATE, heldMax } }, figures);
  console.log(`wrote ${file}`);
}
