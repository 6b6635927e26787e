import { describe, expect, it } from 'vitest';
import { type AgentTable, DispatcherMetrics, type PoolAgents, TASK_BUCKETS } from '../../../src/dispatcher/metrics.ts';
import { LATENCY_BUCKETS, Registry } from '../../../src/lib/metrics.ts';
import { KeptLease } from '../../../src/state/index.ts';
import { lintExposition, parseSamples, type Sample, sumOf } from '../../cluster/promlint.ts';

const scrape = async (r: Registry): Promise<Sample[]> => parseSamples(await r.metrics());
const ofPool = { namespace: 'team-a', pool: 'agents' };

class Table implements AgentTable {
  pools: PoolAgents[] = [];
  poolAgents(): Iterable<PoolAgents> {
    return this.pools;
  }
}

describe('DispatcherMetrics', () => {
  it('shows every outcome and re-queue reason of a pool at 0 once the pool is seen, then counts', async () => {
    const r = new Registry();
    const m = new DispatcherMetrics(r);
    expect((await scrape(r)).filter((s) => s.name === 'agentflow_tasks_total')).toEqual([]);
    m.ended('team-a', 'agents', 'succeeded');
    m.ended('team-a', 'agents', 'succeeded');
    m.ended('team-a', 'agents', 'cancelled');
    m.requeued('team-a', 'agents', 'lease_expired');
    const s = await scrape(r);
    const tasks = (outcome: string) => sumOf(s, 'agentflow_tasks_total', { ...ofPool, outcome });
    expect(['succeeded', 'failed', 'retried', 'cancelled'].map(tasks)).toEqual([2, 0, 0, 1]);
    const requeues = s.filter((x) => x.name === 'agentflow_task_requeues_total');
    expect(Object.fromEntries(requeues.map((x) => [x.labels.reason, x.value]))).toEqual({
      lease_expired: 1,
      agent_disconnected: 0,
      agent_reconnected: 0,
      claim_refused: 0,
      claim_failed: 0,
    });
    expect(sumOf(s, 'agentflow_agent_lease_expiries_total', ofPool)).toBe(0);
    expect(sumOf(s, 'agentflow_task_queue_wait_seconds_count', { pool: 'agents' })).toBe(0);
  });

  it('observes queue wait, dispatch and attempt times in seconds', async () => {
    const r = new Registry();
    const m = new DispatcherMetrics(r);
    m.assigned('team-a', 'agents', 1_500, 4);
    m.assigned('team-b', 'agents', 20, 2);
    m.ran('team-a', 'agents', 90_000);
    const s = await scrape(r);
    const queueWait = (le: string) => sumOf(s, 'agentflow_task_queue_wait_seconds_bucket', { pool: 'agents', le });
    // The same pool name in two namespaces shares the histogram (labelled by pool): both waits count.
    expect(sumOf(s, 'agentflow_task_queue_wait_seconds_count', { pool: 'agents' })).toBe(2);
    expect(sumOf(s, 'agentflow_task_queue_wait_seconds_sum', { pool: 'agents' })).toBeCloseTo(1.52);
    expect([queueWait('0.01'), queueWait('0.05'), queueWait('1'), queueWait('2.5')]).toEqual([0, 1, 1, 2]);
    expect(sumOf(s, 'agentflow_dispatch_duration_seconds_count')).toBe(2);
    expect(sumOf(s, 'agentflow_dispatch_duration_seconds_sum')).toBeCloseTo(0.006);
    expect(sumOf(s, 'agentflow_dispatch_duration_seconds_bucket', { le: '0.0025' })).toBe(1);
    expect(sumOf(s, 'agentflow_task_attempt_duration_seconds_bucket', { pool: 'agents', le: '60' })).toBe(0);
    expect(sumOf(s, 'agentflow_task_attempt_duration_seconds_bucket', { pool: 'agents', le: '120' })).toBe(1);
    const les = (name: string) => s.filter((x) => x.name === name).map((x) => x.labels.le);
    expect(les('agentflow_task_attempt_duration_seconds_bucket')).toEqual([...TASK_BUCKETS.map(String), '+Inf']);
    expect(les('agentflow_dispatch_duration_seconds_bucket')).toEqual([...LATENCY_BUCKETS.map(String), '+Inf']);
  });

  it('reads agents and free slots from the attached dispatcher at scrape, every existing pool included', async () => {
    const r = new Registry();
    const existing = [
      { namespace: 'team-a', pool: 'agents' },
      { namespace: 'team-a', pool: 'idle' },
    ];
    const m = new DispatcherMetrics(r, { pools: () => existing });
    const table = new Table();
    const gauges = async () => {
      const s = await scrape(r);
      const read = (name: string) =>
        Object.fromEntries(
          s.filter((x) => x.name === name).map((x) => [`${x.labels.namespace}/${x.labels.pool}`, x.value]),
        );
      return { agents: read('agentflow_agents_connected'), free: read('agentflow_agent_slots_free') };
    };
    expect(await gauges()).toEqual({
      agents: { 'team-a/agents': 0, 'team-a/idle': 0 },
      free: { 'team-a/agents': 0, 'team-a/idle': 0 },
    });
    m.attach(table);
    table.pools = [{ namespace: 'team-a', pool: 'agents', agents: 2, free: 7 }];
    expect(await gauges()).toEqual({
      agents: { 'team-a/agents': 2, 'team-a/idle': 0 },
      free: { 'team-a/agents': 7, 'team-a/idle': 0 },
    });
    // A deleted pool goes; the dispatcher of an ended term no longer counts.
    existing.pop();
    m.detach(new Table());
    expect((await gauges()).agents).toEqual({ 'team-a/agents': 2 });
    m.detach(table);
    expect(await gauges()).toEqual({ agents: { 'team-a/agents': 0 }, free: { 'team-a/agents': 0 } });
  });

  it('counts an agent lease that ran out, unless its agent drained before it left', async () => {
    const r = new Registry();
    const m = new DispatcherMetrics(r);
    const expiries = async () => sumOf(await scrape(r), 'agentflow_agent_lease_expiries_total', ofPool);
    const crashed = new KeptLease('1', 10);
    m.agentRegistered(crashed, 'team-a', 'agents');
    m.agentLeft(crashed, false);
    crashed.markLost('not kept alive past its TTL');
    expect(await expiries()).toBe(1);

    const drained = new KeptLease('2', 10);
    m.agentRegistered(drained, 'team-a', 'agents');
    m.agentLeft(drained, true);
    drained.markLost('not kept alive past its TTL');
    expect(await expiries()).toBe(1);

    // Drained, then back on the same lease (e.g. a reconnect) and gone for good without draining: counted.
    const back = new KeptLease('3', 10);
    m.agentRegistered(back, 'team-a', 'agents');
    m.agentLeft(back, true);
    m.agentRegistered(back, 'team-a', 'agents');
    back.markLost('expired before it could be kept alive');
    back.markLost('again');
    expect(await expiries()).toBe(2);
  });

  it('passes Prometheus’ parser and promlint', async () => {
    const r = new Registry();
    const m = new DispatcherMetrics(r, { pools: () => [{ namespace: 'team-a', pool: 'agents' }] });
    m.assigned('team-a', 'agents', 10, 1);
    m.ended('team-a', 'agents', 'failed');
    expect(await lintExposition(await r.metrics())).toEqual([]);
  });
});
