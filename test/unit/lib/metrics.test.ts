import { describe, expect, it } from 'vitest';
import { Registry, registerProcessMetrics } from '../../../src/lib/metrics.ts';

describe('Registry.render', () => {
  it('renders a labelled counter with its series sorted by label values', () => {
    const r = new Registry();
    const c = r.counter({
      name: 'agentflow_reconcile_total',
      help: 'Reconciles by controller and result.',
      labelNames: ['controller', 'result'],
    });
    c.inc({ result: 'success', controller: 'agentpool' });
    c.inc({ controller: 'agentpool', result: 'error' }, 2);
    c.inc({ controller: 'agentpool', result: 'success' });
    c.inc({ controller: 'agent', result: 'success' }, 0.5);
    expect(r.render()).toBe(
      [
        '# HELP agentflow_reconcile_total Reconciles by controller and result.',
        '# TYPE agentflow_reconcile_total counter',
        'agentflow_reconcile_total{controller="agent",result="success"} 0.5',
        'agentflow_reconcile_total{controller="agentpool",result="error"} 2',
        'agentflow_reconcile_total{controller="agentpool",result="success"} 2',
        '',
      ].join('\n'),
    );
    expect(c.get({ controller: 'agentpool', result: 'success' })).toBe(2);
  });

  it('reads a gauge through collect at every scrape', () => {
    const r = new Registry();
    const queue = ['a', 'b', 'c'];
    let calls = 0;
    r.gauge({
      name: 'agentflow_queue_depth',
      help: 'Keys waiting in the work queue.',
      labelNames: ['controller'],
      collect: (g) => {
        calls++;
        g.set({ controller: 'agentpool' }, queue.length);
      },
    });
    const text = (n: number) =>
      [
        '# HELP agentflow_queue_depth Keys waiting in the work queue.',
        '# TYPE agentflow_queue_depth gauge',
        `agentflow_queue_depth{controller="agentpool"} ${n}`,
        '',
      ].join('\n');
    expect(r.render()).toBe(text(3));
    queue.pop();
    expect(r.render()).toBe(text(2));
    expect(calls).toBe(2);
  });

  it('supports set, inc and dec on a gauge, and an unlabelled metric reads 0 before first use', () => {
    const r = new Registry();
    const g = r.gauge({ name: 'in_flight', help: 'Requests in flight.' });
    expect(r.render()).toBe('# HELP in_flight Requests in flight.\n# TYPE in_flight gauge\nin_flight 0\n');
    g.set(10);
    g.inc();
    g.inc(4);
    g.dec(2.5);
    expect(g.get()).toBe(12.5);
    expect(r.render()).toBe('# HELP in_flight Requests in flight.\n# TYPE in_flight gauge\nin_flight 12.5\n');
  });

  it('renders histogram buckets cumulatively with +Inf, _sum and _count', () => {
    const r = new Registry();
    const h = r.histogram({
      name: 'agentflow_reconcile_duration_seconds',
      help: 'Reconcile latency.',
      labelNames: ['controller'],
      buckets: [0.1, 0.5, 1],
    });
    for (const v of [0.05, 0.1, 0.3, 0.7, 2]) h.observe({ controller: 'agentpool' }, v);
    expect(r.render()).toBe(
      [
        '# HELP agentflow_reconcile_duration_seconds Reconcile latency.',
        '# TYPE agentflow_reconcile_duration_seconds histogram',
        'agentflow_reconcile_duration_seconds_bucket{controller="agentpool",le="0.1"} 2',
        'agentflow_reconcile_duration_seconds_bucket{controller="agentpool",le="0.5"} 3',
        'agentflow_reconcile_duration_seconds_bucket{controller="agentpool",le="1"} 4',
        'agentflow_reconcile_duration_seconds_bucket{controller="agentpool",le="+Inf"} 5',
        'agentflow_reconcile_duration_seconds_sum{controller="agentpool"} 3.15',
        'agentflow_reconcile_duration_seconds_count{controller="agentpool"} 5',
        '',
      ].join('\n'),
    );
  });

  it('gives an unlabelled histogram the default buckets and zeroes before any observation', () => {
    const r = new Registry();
    const h = r.histogram({ name: 'latency_seconds', help: 'Latency.' });
    expect(h.buckets).toEqual([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]);
    const lines = r.render().trimEnd().split('\n');
    expect(lines).toHaveLength(2 + 14 + 2);
    expect(lines[2]).toBe('latency_seconds_bucket{le="0.001"} 0');
    expect(lines[15]).toBe('latency_seconds_bucket{le="+Inf"} 0');
    expect(lines.slice(16)).toEqual(['latency_seconds_sum 0', 'latency_seconds_count 0']);
  });

  it('times with startTimer in seconds and observes the result', async () => {
    const r = new Registry();
    const h = r.histogram({ name: 'op_seconds', help: 'Op.', buckets: [0.001, 10] });
    const end = h.startTimer();
    await new Promise((resolve) => setTimeout(resolve, 20));
    const seconds = end();
    expect(seconds).toBeGreaterThanOrEqual(0.015);
    expect(seconds).toBeLessThan(10);
    const text = r.render();
    expect(text).toContain('op_seconds_bucket{le="0.001"} 0\nop_seconds_bucket{le="10"} 1\n');
    expect(text).toContain(`op_seconds_sum ${seconds}\nop_seconds_count 1\n`);
  });

  it('escapes help text and label values', () => {
    const r = new Registry();
    const c = r.counter({ name: 'odd_total', help: 'Path C:\\tmp\nsecond line "quoted"', labelNames: ['v'] });
    c.inc({ v: 'a\\b "c"\nd' });
    expect(r.render()).toBe(
      [
        '# HELP odd_total Path C:\\\\tmp\\nsecond line "quoted"',
        '# TYPE odd_total counter',
        'odd_total{v="a\\\\b \\"c\\"\\nd"} 1',
        '',
      ].join('\n'),
    );
  });

  it('sorts metrics by name, leaves out labelled metrics without series, and formats special values', () => {
    const r = new Registry();
    r.gauge({ name: 'zeta', help: 'Z.' }).set(Number.POSITIVE_INFINITY);
    r.counter({ name: 'unused_total', help: 'U.', labelNames: ['x'] });
    r.gauge({ name: 'alpha', help: 'A.' }).set(Number.NaN);
    r.gauge({ name: 'mid', help: 'M.', labelNames: ['n'] }).set({ n: 7 }, Number.NEGATIVE_INFINITY);
    expect(r.render()).toBe(
      [
        '# HELP alpha A.',
        '# TYPE alpha gauge',
        'alpha NaN',
        '# HELP mid M.',
        '# TYPE mid gauge',
        'mid{n="7"} -Inf',
        '# HELP zeta Z.',
        '# TYPE zeta gauge',
        'zeta +Inf',
        '',
      ].join('\n'),
    );
    expect(new Registry().render()).toBe('');
  });

  it('drops series with remove and reset', () => {
    const r = new Registry();
    const g = r.gauge({ name: 'pool_agents', help: 'Agents per pool.', labelNames: ['pool'] });
    g.set({ pool: 'a' }, 1);
    g.set({ pool: 'b' }, 2);
    expect(g.remove({ pool: 'a' })).toBe(true);
    expect(g.remove({ pool: 'a' })).toBe(false);
    expect(r.render()).toBe('# HELP pool_agents Agents per pool.\n# TYPE pool_agents gauge\npool_agents{pool="b"} 2\n');
    g.reset();
    expect(r.render()).toBe('');
  });

  it('names the metric when a collect callback throws', () => {
    const r = new Registry();
    r.gauge({
      name: 'broken',
      help: 'B.',
      collect: () => {
        throw new Error('queue gone');
      },
    });
    expect(() => r.render()).toThrow('Metric broken: collect failed: queue gone');
  });
});

describe('Registry validation', () => {
  it.each([
    ['1starts_with_digit', 'Invalid metric name "1starts_with_digit": must match /^[a-zA-Z_:][a-zA-Z0-9_:]*$/'],
    ['has-dash', 'Invalid metric name "has-dash"'],
    ['', 'Invalid metric name ""'],
  ])('rejects metric name %j', (name, message) => {
    expect(() => new Registry().counter({ name, help: 'x' })).toThrow(message);
  });

  it.each([
    ['bad-label', 'Metric m: invalid label name "bad-label": must match /^[a-zA-Z_][a-zA-Z0-9_]*$/'],
    ['a:b', 'Metric m: invalid label name "a:b"'],
    ['__reserved', 'Metric m: label name "__reserved" is reserved'],
  ])('rejects label name %j', (label, message) => {
    expect(() => new Registry().gauge({ name: 'm', help: 'x', labelNames: [label] })).toThrow(message);
  });

  it('rejects duplicate label names and "le" on a histogram', () => {
    const r = new Registry();
    expect(() => r.counter({ name: 'm', help: 'x', labelNames: ['a', 'a'] })).toThrow(
      'Metric m: duplicate label name "a"',
    );
    expect(() => r.histogram({ name: 'h', help: 'x', labelNames: ['le'] })).toThrow(
      'Metric h: label name "le" is reserved for histogram buckets',
    );
  });

  it('rejects unordered or non-finite buckets', () => {
    const r = new Registry();
    expect(() => r.histogram({ name: 'h', help: 'x', buckets: [1, 0.5] })).toThrow(
      'Metric h: buckets must be finite and strictly increasing, got [1,0.5]',
    );
    expect(() => r.histogram({ name: 'h2', help: 'x', buckets: [1, 1] })).toThrow('strictly increasing');
    expect(() => r.histogram({ name: 'h3', help: 'x', buckets: [Number.NaN] })).toThrow('must be finite');
    expect(r.histogram({ name: 'h4', help: 'x', buckets: [1, Number.POSITIVE_INFINITY] }).buckets).toEqual([1]);
  });

  it('throws when the labels given at use differ from those declared', () => {
    const r = new Registry();
    const c = r.counter({ name: 'reconcile_total', help: 'x', labelNames: ['controller', 'result'] });
    const g = r.gauge({ name: 'plain', help: 'x' });
    const untyped = c as unknown as { inc(labels?: Record<string, string>): void };
    expect(() => untyped.inc({ controller: 'agentpool' })).toThrow(
      'Metric reconcile_total: expected labels {controller, result}, got {controller}',
    );
    expect(() => untyped.inc({ controller: 'agentpool', result: 'ok', extra: 'x' })).toThrow(
      'Metric reconcile_total: expected labels {controller, result}, got {controller, extra, result}',
    );
    expect(() => untyped.inc({ controller: 'agentpool', reason: 'x' })).toThrow('got {controller, reason}');
    expect(() => untyped.inc()).toThrow('Metric reconcile_total: expected labels {controller, result}, got {}');
    expect(() => (g as unknown as { set(l: object, v: number): void }).set({ a: '1' }, 1)).toThrow(
      'Metric plain: expected labels {}, got {a}',
    );
    expect(c.get({ controller: 'agentpool', result: 'ok' })).toBe(0);
  });

  it('refuses to decrease a counter', () => {
    const c = new Registry().counter({ name: 'c_total', help: 'x' });
    expect(() => c.inc(-1)).toThrow('Metric c_total: a counter can only go up, got inc(-1)');
    expect(() => c.inc(Number.NaN)).toThrow('got inc(NaN)');
    expect(c.get()).toBe(0);
  });

  it('refuses a duplicate name and a clash with a histogram sample', () => {
    const r = new Registry();
    r.counter({ name: 'dup', help: 'x' });
    expect(() => r.gauge({ name: 'dup', help: 'y' })).toThrow('Metric dup is already registered');
    r.histogram({ name: 'latency', help: 'x' });
    expect(() => r.counter({ name: 'latency_count', help: 'x' })).toThrow(
      'Metric latency_count: its sample latency_count clashes with metric latency',
    );
    expect(r.get('dup')?.type).toBe('counter');
    expect(r.get('latency_count')).toBeUndefined();
  });
});

describe('registerProcessMetrics', () => {
  it('registers the process metrics and reads them at scrape time', async () => {
    const r = new Registry();
    registerProcessMetrics(r);
    await new Promise((resolve) => setTimeout(resolve, 50));
    const text = r.render();
    const value = (name: string) => {
      const match = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
      return match ? Number(match[1]) : undefined;
    };
    expect([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => `${m[1]} ${m[2]}`)).toEqual([
      'nodejs_eventloop_lag_seconds gauge',
      'nodejs_heap_used_bytes gauge',
      'process_cpu_seconds_total counter',
      'process_resident_memory_bytes gauge',
      'process_start_time_seconds gauge',
    ]);
    expect(value('process_resident_memory_bytes')).toBeGreaterThan(1_000_000);
    expect(value('nodejs_heap_used_bytes')).toBeGreaterThan(100_000);
    expect(value('process_cpu_seconds_total')).toBeGreaterThan(0);
    const start = value('process_start_time_seconds') ?? 0;
    expect(start).toBeLessThanOrEqual(Date.now() / 1_000);
    expect(start).toBeGreaterThan(Date.now() / 1_000 - 3_600);
    const lag = value('nodejs_eventloop_lag_seconds') ?? -1;
    expect(lag).toBeGreaterThanOrEqual(0);
    expect(lag).toBeLessThan(0.5);

    // Block the loop for 100 ms: both the CPU counter and the lag must move.
    const cpuBefore = value('process_cpu_seconds_total') ?? 0;
    const busyUntil = performance.now() + 100;
    while (performance.now() < busyUntil) {
      // spin
    }
    await new Promise((resolve) => setTimeout(resolve, 40));
    const next = r.render();
    const after = Number(/^process_cpu_seconds_total (\S+)$/m.exec(next)?.[1]);
    const lagAfter = Number(/^nodejs_eventloop_lag_seconds (\S+)$/m.exec(next)?.[1]);
    expect(lagAfter).toBeGreaterThan(0.01);
    expect(after).toBeGreaterThan(cpuBefore);
  });
});
