import { afterEach, describe, expect, it, vi } from 'vitest';
import { silentLogger } from '../../../src/lib/log.ts';
import {
  Controller,
  type ControllerObserver,
  type ReconcileResult,
  type Reconciler,
} from '../../../src/operator/kube/controller.ts';

type Result = 'success' | 'error' | 'requeue';

function recorder(): ControllerObserver & { results: Result[]; names: string[]; seconds: number[] } {
  const results: Result[] = [];
  const names: string[] = [];
  const seconds: number[] = [];
  return {
    results,
    names,
    seconds,
    reconciled(controller, result, s) {
      names.push(controller);
      results.push(result);
      seconds.push(s);
    },
  };
}

interface Gate {
  promise: Promise<void>;
  open(): void;
}

function gate(): Gate {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

const flush = () => new Promise<void>((resolve) => setImmediate(resolve));
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

let controller: Controller | undefined;

afterEach(async () => {
  await controller?.stop();
  controller = undefined;
});

function make(reconcile: Reconciler, workers?: number, observer?: ControllerObserver): Controller {
  controller = new Controller({
    name: 'test',
    reconcile,
    logger: silentLogger,
    ...(workers !== undefined && { workers }),
    ...(observer && { observer }),
  });
  return controller;
}

describe('Controller', () => {
  it('retries a failing key with back-off until it succeeds, then forgets its failures', async () => {
    const obs = recorder();
    const calls: { key: string; at: number }[] = [];
    const c = make(
      async (key) => {
        calls.push({ key, at: performance.now() });
        if (calls.length <= 2) throw new Error(`boom ${calls.length}`);
        return undefined;
      },
      2,
      obs,
    );
    c.start();
    c.enqueue('ns/a');
    await vi.waitFor(() => expect(obs.results).toHaveLength(3), { timeout: 2000, interval: 5 });
    expect(obs.results).toEqual(['error', 'error', 'success']);
    expect(obs.names).toEqual(['test', 'test', 'test']);
    for (const s of obs.seconds) expect(s).toBeGreaterThanOrEqual(0);
    expect(calls.map((c) => c.key)).toEqual(['ns/a', 'ns/a', 'ns/a']);
    const [c1, c2, c3] = calls.map((c) => c.at) as [number, number, number];
    // Back-off 5 ms, then 10 ms (timers may fire a little early on rounding).
    expect(c2 - c1).toBeGreaterThanOrEqual(4);
    expect(c3 - c2).toBeGreaterThanOrEqual(9);
    expect(c.queue.failuresOf('ns/a')).toBe(0);
    // Nothing further is scheduled.
    await sleep(50);
    expect(calls).toHaveLength(3);
    expect(c.queue.delayedCount).toBe(0);
  });

  it('re-runs a key after requeueAfterMs', async () => {
    const obs = recorder();
    const calls: number[] = [];
    const c = make(
      async (): Promise<ReconcileResult | undefined> => {
        calls.push(performance.now());
        return calls.length === 1 ? { requeueAfterMs: 40 } : undefined;
      },
      1,
      obs,
    );
    c.start();
    c.enqueue('ns/a');
    await vi.waitFor(() => expect(calls).toHaveLength(1), { timeout: 1000, interval: 2 });
    expect(obs.results).toEqual(['requeue']);
    expect(c.queue.delayedCount).toBe(1);
    await vi.waitFor(() => expect(calls).toHaveLength(2), { timeout: 1000, interval: 2 });
    expect((calls[1] ?? 0) - (calls[0] ?? 0)).toBeGreaterThanOrEqual(38);
    await vi.waitFor(() => expect(obs.results).toEqual(['requeue', 'success']), { timeout: 1000, interval: 2 });
    await sleep(80);
    expect(calls).toHaveLength(2);
  });

  it('never reconciles one key concurrently but runs different keys in parallel', async () => {
    const active = new Map<string, number>();
    const maxPerKey = new Map<string, number>();
    let running = 0;
    let maxRunning = 0;
    const calls: string[] = [];
    const gates: Gate[] = [];
    const c = make(async (key) => {
      calls.push(key);
      const n = (active.get(key) ?? 0) + 1;
      active.set(key, n);
      maxPerKey.set(key, Math.max(maxPerKey.get(key) ?? 0, n));
      running++;
      maxRunning = Math.max(maxRunning, running);
      const g = gate();
      gates.push(g);
      try {
        await g.promise;
      } finally {
        active.set(key, (active.get(key) ?? 1) - 1);
        running--;
      }
      return undefined;
    }, 4);
    c.start();
    c.enqueue('a');
    c.enqueue('b');
    await vi.waitFor(() => expect(calls).toEqual(['a', 'b']), { timeout: 1000, interval: 2 });
    // 'a' changes three times while it is being reconciled; a third key arrives.
    c.enqueue('a');
    c.enqueue('a');
    c.enqueue('a');
    c.enqueue('c');
    await vi.waitFor(() => expect(calls).toEqual(['a', 'b', 'c']), { timeout: 1000, interval: 2 });
    await sleep(20);
    // Two workers are idle, yet 'a' is not started again while it runs.
    expect(calls).toEqual(['a', 'b', 'c']);
    expect(running).toBe(3);
    gates[0]?.open(); // first 'a' finishes → 'a' runs once more
    await vi.waitFor(() => expect(calls).toEqual(['a', 'b', 'c', 'a']), { timeout: 1000, interval: 2 });
    for (const g of gates) g.open();
    await vi.waitFor(() => expect(running).toBe(0), { timeout: 1000, interval: 2 });
    await vi.waitFor(() => expect(c.queue.processingCount).toBe(0), { timeout: 1000, interval: 2 });
    for (const g of gates) g.open();
    await sleep(20);
    expect(calls).toEqual(['a', 'b', 'c', 'a']);
    expect(Object.fromEntries(maxPerKey)).toEqual({ a: 1, b: 1, c: 1 });
    expect(maxRunning).toBe(3);
  });

  it('limits concurrency to the number of workers', async () => {
    let running = 0;
    let maxRunning = 0;
    let done = 0;
    const c = make(async () => {
      running++;
      maxRunning = Math.max(maxRunning, running);
      await sleep(15);
      running--;
      done++;
      return undefined;
    }, 2);
    c.start();
    for (const k of ['a', 'b', 'c', 'd', 'e']) c.enqueue(k);
    await vi.waitFor(() => expect(done).toBe(5), { timeout: 2000, interval: 5 });
    expect(maxRunning).toBe(2);
  });

  it('stop() waits for a reconcile in progress and takes no further keys', async () => {
    const obs = recorder();
    const g = gate();
    const calls: string[] = [];
    let finished = false;
    const c = make(
      async (key) => {
        calls.push(key);
        if (key === 'slow') {
          await g.promise;
          finished = true;
        }
        return undefined;
      },
      1,
      obs,
    );
    c.start();
    c.enqueue('slow');
    await vi.waitFor(() => expect(calls).toEqual(['slow']), { timeout: 1000, interval: 2 });
    c.enqueue('queued'); // waits behind 'slow' (one worker)
    let stopped = false;
    const stopping = c.stop().then(() => {
      stopped = true;
    });
    await sleep(30);
    expect(stopped).toBe(false);
    expect(finished).toBe(false);
    g.open();
    await stopping;
    expect(finished).toBe(true);
    expect(obs.results).toEqual(['success']);
    c.enqueue('after');
    await flush();
    await sleep(10);
    expect(calls).toEqual(['slow']);
    controller = undefined;
  });
});
