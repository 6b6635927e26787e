/**
 * A binary min-heap: push and pop in O(log n), peek in O(1). The run's ready
 * queue (by instance order) and retry queue (by due time) are heaps so that
 * one event costs O(log n) instead of a scan of every instance.
 */
export class MinHeap<T> {
  private readonly items: T[] = [];
  private readonly less: (a: T, b: T) => boolean;

  constructor(less: (a: T, b: T) => boolean) {
    this.less = less;
  }

  get size(): number {
    return this.items.length;
  }

  peek(): T | undefined {
    return this.items[0];
  }

  push(item: T): void {
    const a = this.items;
    a.push(item);
    let k = a.length - 1;
    while (k > 0) {
      const up = (k - 1) >> 1;
      if (!this.less(a[k] as T, a[up] as T)) break;
      [a[k], a[up]] = [a[up] as T, a[k] as T];
      k = up;
    }
  }

  pop(): T | undefined {
    const a = this.items;
    const top = a[0];
    const last = a.pop();
    if (a.length === 0 || last === undefined) return top;
    a[0] = last;
    let k = 0;
    for (;;) {
      const l = 2 * k + 1;
      const r = l + 1;
      let m = k;
      if (l < a.length && this.less(a[l] as T, a[m] as T)) m = l;
      if (r < a.length && this.less(a[r] as T, a[m] as T)) m = r;
      if (m === k) break;
      [a[k], a[m]] = [a[m] as T, a[k] as T];
      k = m;
    }
    return top;
  }

  /** Drops every item (entries for a run that starts over). */
  clear(): void {
    this.items.length = 0;
  }
}
