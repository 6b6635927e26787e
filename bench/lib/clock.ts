/**
 * Wall-clock milliseconds with sub-millisecond resolution. Every process of a
 * benchmark runs on this machine, so timestamps taken in the driver, in agent
 * processes and in BullMQ worker processes are on one clock.
 */
export const now = (): number => performance.timeOrigin + performance.now();

export const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener(
      'abort',
      () => {
        clearTimeout(timer);
        reject(signal.reason);
      },
      { once: true },
    );
  });
