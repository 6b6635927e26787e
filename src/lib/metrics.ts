// A small Prometheus client: counters, gauges and histograms rendered in the
// text exposition format 0.0.4. Written here rather than taken from npm so the
// operator and the dispatcher carry no dependency for a few hundred lines; it
// follows client_golang's behaviour where the format leaves a choice
// (unlabelled series start at 0, families without series are left out,
// `le` comes last).

import { monitorEventLoopDelay } from 'node:perf_hooks';

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** client_golang's DefBuckets, extended down to 1 ms: request and reconcile latencies in seconds. */
export const DEFAULT_BUCKETS: readonly number[] = Object.freeze([
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
]);

/** Label values by label name; numbers are rendered as they print. A metric without labels takes none. */
export type LabelValues<L extends string> = [L] extends [never]
  ? Readonly<Record<string, never>>
  : Readonly<Record<L, string | number>>;

interface MetricIdentity<L extends string> {
  name: string;
  help: string;
  labelNames?: readonly L[];
}

export interface MetricOptions<L extends string, M> extends MetricIdentity<L> {
  /**
   * Runs before every scrape and receives the metric, so values owned by
   * something else (a queue's depth, the process's memory) are read live.
   */
  collect?: (metric: M) => void;
}

export interface HistogramOptions<L extends string> extends MetricOptions<L, Histogram<L>> {
  /** Upper bounds, strictly increasing; `+Inf` is always added. Default: DEFAULT_BUCKETS. */
  buckets?: readonly number[];
}

type MetricType = 'counter' | 'gauge' | 'histogram';

interface Series<S> {
  /** Values in the order of the declared label names. */
  readonly values: readonly string[];
  readonly state: S;
}

abstract class Metric<L extends string, S> {
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly L[];
  abstract readonly type: MetricType;
  private readonly series = new Map<string, Series<S>>();
  private readonly collectFn: (() => void) | undefined;

  constructor(opts: MetricIdentity<L>, collect: (() => void) | undefined) {
    if (!METRIC_NAME.test(opts.name)) {
      throw new Error(`Invalid metric name "${opts.name}": must match ${METRIC_NAME}`);
    }
    const labelNames = [...(opts.labelNames ?? [])];
    const seen = new Set<string>();
    for (const label of labelNames) {
      if (!LABEL_NAME.test(label)) {
        throw new Error(`Metric ${opts.name}: invalid label name "${label}": must match ${LABEL_NAME}`);
      }
      if (label.startsWith('__')) throw new Error(`Metric ${opts.name}: label name "${label}" is reserved`);
      if (seen.has(label)) throw new Error(`Metric ${opts.name}: duplicate label name "${label}"`);
      seen.add(label);
    }
    this.name = opts.name;
    this.help = opts.help;
    this.labelNames = labelNames;
    this.collectFn = collect;
  }

  /** Names of the samples this metric writes, to catch clashes such as `x_count` next to histogram `x`. */
  sampleNames(): string[] {
    return [this.name];
  }

  /** Drops every series (an unlabelled metric starts again from its initial value). */
  reset(): void {
    this.series.clear();
  }

  /** Drops one labelled series, e.g. for a pool that was deleted. Returns whether it existed. */
  remove(labels: LabelValues<L>): boolean {
    return this.series.delete(this.key(this.valuesOf(labels)));
  }

  collect(): void {
    if (!this.collectFn) return;
    try {
      this.collectFn();
    } catch (err) {
      throw new Error(`Metric ${this.name}: collect failed: ${err instanceof Error ? err.message : String(err)}`, {
        cause: err,
      });
    }
  }

  render(out: string[]): void {
    const all = [...this.allSeries()];
    if (all.length === 0) return;
    all.sort((a, b) => compareValues(a.values, b.values));
    out.push(`# HELP ${this.name} ${escapeHelp(this.help)}`, `# TYPE ${this.name} ${this.type}`);
    for (const s of all) {
      const pairs = this.labelNames.map((label, i) => `${label}="${escapeLabelValue(s.values[i] ?? '')}"`);
      this.renderSeries(pairs, s.state, out);
    }
  }

  protected abstract initialState(): S;
  /** Writes the samples of one series; `pairs` are its rendered `name="value"` label pairs. */
  protected abstract renderSeries(pairs: readonly string[], state: S, out: string[]): void;

  /** The state of the series for `labels`, created on first use. */
  protected state(labels: LabelValues<L> | undefined): S {
    const values = this.valuesOf(labels);
    const key = this.key(values);
    let s = this.series.get(key);
    if (!s) {
      s = { values, state: this.initialState() };
      this.series.set(key, s);
    }
    return s.state;
  }

  /** The state of the series for `labels` if it exists, without creating it. */
  protected peek(labels: LabelValues<L> | undefined): S | undefined {
    return this.series.get(this.key(this.valuesOf(labels)))?.state;
  }

  private *allSeries(): Iterable<Series<S>> {
    // An unlabelled metric always has its one series, so it reads 0 before first use.
    if (this.labelNames.length === 0 && !this.series.has('')) yield { values: [], state: this.initialState() };
    yield* this.series.values();
  }

  private valuesOf(labels: LabelValues<L> | undefined): string[] {
    const given = labels === undefined ? [] : Object.keys(labels);
    const record = (labels ?? {}) as Record<string, string | number | undefined>;
    const matches =
      given.length === this.labelNames.length && this.labelNames.every((label) => record[label] !== undefined);
    if (!matches) {
      throw new Error(
        `Metric ${this.name}: expected labels {${this.labelNames.join(', ')}}, got {${given.sort().join(', ')}}`,
      );
    }
    return this.labelNames.map((label) => String(record[label]));
  }

  private key(values: readonly string[]): string {
    return values.length === 0 ? '' : JSON.stringify(values);
  }
}

/** Splits `(value?)` / `(labels, value?)` call forms. */
function args<L extends string>(
  a: LabelValues<L> | number | undefined,
  b: number | undefined,
  fallback: number,
): [LabelValues<L> | undefined, number] {
  if (a === undefined || typeof a === 'number') return [undefined, a ?? fallback];
  return [a, b ?? fallback];
}

interface Box {
  value: number;
}

export class Counter<L extends string = string> extends Metric<L, Box> {
  readonly type = 'counter';

  inc(value?: number): void;
  inc(labels: LabelValues<L>, value?: number): void;
  inc(a?: LabelValues<L> | number, b?: number): void {
    const [labels, value] = args(a, b, 1);
    if (!(value >= 0)) throw new Error(`Metric ${this.name}: a counter can only go up, got inc(${value})`);
    this.state(labels).value += value;
  }

  /** The current value (tests, and collect callbacks that add a delta). */
  get(labels?: LabelValues<L>): number {
    return this.peek(labels)?.value ?? 0;
  }

  protected initialState(): Box {
    return { value: 0 };
  }

  protected renderSeries(pairs: readonly string[], state: Box, out: string[]): void {
    out.push(`${this.name}${braces(pairs)} ${formatValue(state.value)}`);
  }
}

export class Gauge<L extends string = string> extends Metric<L, Box> {
  readonly type = 'gauge';

  set(value: number): void;
  set(labels: LabelValues<L>, value: number): void;
  set(a: LabelValues<L> | number, b?: number): void {
    const [labels, value] = args(a, b, Number.NaN);
    this.state(labels).value = value;
  }

  inc(value?: number): void;
  inc(labels: LabelValues<L>, value?: number): void;
  inc(a?: LabelValues<L> | number, b?: number): void {
    const [labels, value] = args(a, b, 1);
    this.state(labels).value += value;
  }

  dec(value?: number): void;
  dec(labels: LabelValues<L>, value?: number): void;
  dec(a?: LabelValues<L> | number, b?: number): void {
    const [labels, value] = args(a, b, 1);
    this.state(labels).value -= value;
  }

  get(labels?: LabelValues<L>): number {
    return this.peek(labels)?.value ?? 0;
  }

  protected initialState(): Box {
    return { value: 0 };
  }

  protected renderSeries(pairs: readonly string[], state: Box, out: string[]): void {
    out.push(`${this.name}${braces(pairs)} ${formatValue(state.value)}`);
  }
}

interface HistogramState {
  /** Per-bucket (not cumulative) counts; the last slot is `+Inf`. */
  readonly counts: number[];
  sum: number;
  count: number;
}

export class Histogram<L extends string = string> extends Metric<L, HistogramState> {
  readonly type = 'histogram';
  readonly buckets: readonly number[];

  constructor(opts: HistogramOptions<L>, collect: (() => void) | undefined) {
    super(opts, collect);
    if (this.labelNames.some((label) => label === 'le')) {
      throw new Error(`Metric ${opts.name}: label name "le" is reserved for histogram buckets`);
    }
    const buckets = (opts.buckets ?? DEFAULT_BUCKETS).filter((b) => b !== Number.POSITIVE_INFINITY);
    const valid = buckets.every((b, i) => Number.isFinite(b) && (i === 0 || b > (buckets[i - 1] ?? b)));
    if (!valid) {
      throw new Error(`Metric ${opts.name}: buckets must be finite and strictly increasing, got [${buckets}]`);
    }
    this.buckets = Object.freeze(buckets);
  }

  override sampleNames(): string[] {
    return [`${this.name}_bucket`, `${this.name}_sum`, `${this.name}_count`];
  }

  observe(value: number): void;
  observe(labels: LabelValues<L>, value: number): void;
  observe(a: LabelValues<L> | number, b?: number): void {
    const [labels, value] = args(a, b, Number.NaN);
    const s = this.state(labels);
    let i = 0;
    while (i < this.buckets.length && !(value <= (this.buckets[i] ?? 0))) i++;
    s.counts[i] = (s.counts[i] ?? 0) + 1;
    s.sum += value;
    s.count++;
  }

  /** Starts timing; the returned function observes the elapsed seconds and returns them. */
  startTimer(labels?: LabelValues<L>): () => number {
    const start = performance.now();
    return () => {
      const seconds = (performance.now() - start) / 1_000;
      if (labels === undefined) this.observe(seconds);
      else this.observe(labels, seconds);
      return seconds;
    };
  }

  protected initialState(): HistogramState {
    return { counts: new Array<number>(this.buckets.length + 1).fill(0), sum: 0, count: 0 };
  }

  protected renderSeries(pairs: readonly string[], state: HistogramState, out: string[]): void {
    let cumulative = 0;
    for (let i = 0; i <= this.buckets.length; i++) {
      cumulative += state.counts[i] ?? 0;
      const bound = this.buckets[i];
      const le = bound === undefined ? '+Inf' : formatValue(bound);
      out.push(`${this.name}_bucket${braces([...pairs, `le="${le}"`])} ${formatValue(cumulative)}`);
    }
    out.push(`${this.name}_sum${braces(pairs)} ${formatValue(state.sum)}`);
    out.push(`${this.name}_count${braces(pairs)} ${formatValue(state.count)}`);
  }
}

type AnyMetric = Counter<string> | Gauge<string> | Histogram<string>;

export class Registry {
  readonly contentType = 'text/plain; version=0.0.4; charset=utf-8';
  private readonly metrics = new Map<string, AnyMetric>();
  /** Sample name → the metric that writes it. */
  private readonly samples = new Map<string, string>();

  counter<L extends string = never>(opts: MetricOptions<L, Counter<L>>): Counter<L> {
    const metric: Counter<L> = new Counter<L>(opts, opts.collect && (() => opts.collect?.(metric)));
    return this.register(metric);
  }

  gauge<L extends string = never>(opts: MetricOptions<L, Gauge<L>>): Gauge<L> {
    const metric: Gauge<L> = new Gauge<L>(opts, opts.collect && (() => opts.collect?.(metric)));
    return this.register(metric);
  }

  histogram<L extends string = never>(opts: HistogramOptions<L>): Histogram<L> {
    const metric: Histogram<L> = new Histogram<L>(opts, opts.collect && (() => opts.collect?.(metric)));
    return this.register(metric);
  }

  /** A registered metric by name. */
  get(name: string): AnyMetric | undefined {
    return this.metrics.get(name);
  }

  /** Runs every collect callback, then renders all metrics sorted by name. */
  render(): string {
    const sorted = [...this.metrics.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const metric of sorted) metric.collect();
    const out: string[] = [];
    for (const metric of sorted) metric.render(out);
    return out.length === 0 ? '' : `${out.join('\n')}\n`;
  }

  private register<M extends AnyMetric>(metric: M): M {
    if (this.metrics.has(metric.name)) throw new Error(`Metric ${metric.name} is already registered`);
    for (const sample of metric.sampleNames()) {
      const owner = this.samples.get(sample);
      if (owner !== undefined) {
        throw new Error(`Metric ${metric.name}: its sample ${sample} clashes with metric ${owner}`);
      }
    }
    for (const sample of metric.sampleNames()) this.samples.set(sample, metric.name);
    this.metrics.set(metric.name, metric);
    return metric;
  }
}

/**
 * Registers the usual process metrics, read at scrape time: resident memory,
 * CPU time, start time, event-loop lag (mean delay since the previous scrape)
 * and V8 heap in use.
 */
export function registerProcessMetrics(registry: Registry): void {
  registry.gauge({
    name: 'process_resident_memory_bytes',
    help: 'Resident memory size in bytes.',
    collect: (g) => g.set(process.memoryUsage.rss()),
  });
  registry.counter({
    name: 'process_cpu_seconds_total',
    help: 'Total user and system CPU time spent in seconds.',
    collect: (c) => {
      const { user, system } = process.cpuUsage();
      const total = (user + system) / 1e6;
      const delta = total - c.get();
      if (delta > 0) c.inc(delta);
    },
  });
  registry
    .gauge({ name: 'process_start_time_seconds', help: 'Start time of the process since unix epoch in seconds.' })
    .set(Math.round(performance.timeOrigin) / 1_000);

  // Node samples the loop by timer every `resolution` ms and records the full
  // interval; lag is what exceeds the resolution. The timer is unref'd, so it
  // never keeps the process alive. Never reset the histogram: a reset drops the
  // interval in progress, which would hide a stall that spans a scrape. Instead
  // take the mean of the samples added since the previous scrape.
  const resolutionMs = 10;
  const delay = monitorEventLoopDelay({ resolution: resolutionMs });
  delay.enable();
  let seenCount = 0;
  let seenSumNs = 0;
  registry.gauge({
    name: 'nodejs_eventloop_lag_seconds',
    help: 'Mean event-loop lag since the previous scrape, in seconds.',
    collect: (g) => {
      const count = delay.count;
      // No new samples (back-to-back scrapes): keep the last value.
      if (count <= seenCount) return;
      const sumNs = delay.mean * count;
      const meanNs = (sumNs - seenSumNs) / (count - seenCount);
      seenCount = count;
      seenSumNs = sumNs;
      g.set(Math.max(0, meanNs / 1e9 - resolutionMs / 1e3));
    },
  });
  registry.gauge({
    name: 'nodejs_heap_used_bytes',
    help: 'V8 heap in use, in bytes.',
    collect: (g) => g.set(process.memoryUsage().heapUsed),
  });
}

function braces(pairs: readonly string[]): string {
  return pairs.length === 0 ? '' : `{${pairs.join(',')}}`;
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Number.POSITIVE_INFINITY) return '+Inf';
  if (v === Number.NEGATIVE_INFINITY) return '-Inf';
  return String(v);
}

function escapeHelp(s: string): string {
  return s.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

function escapeLabelValue(s: string): string {
  return s.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function compareValues(a: readonly string[], b: readonly string[]): number {
  for (let i = 0; i < a.length; i++) {
    const x = a[i] ?? '';
    const y = b[i] ?? '';
    if (x !== y) return x < y ? -1 : 1;
  }
  return 0;
}
