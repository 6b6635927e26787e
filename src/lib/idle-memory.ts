// Gives a process's heap back to the OS once its work goes quiet.
//
// Why: under load V8 grows the heap (the young generation to its largest, old-space pages left a few percent
// full by promoted short-lived objects) and keeps it: a regular full GC frees the objects but not the pages, and in
// Node the memory reducer, which would, keeps judging an idle process "high alloc" and never runs. Measured on an
// agent (bench/lib/agent-rss.ts): 81 MiB idle, 150-175 MiB after 20,000 tasks, still there a minute later. One
// memory-reducing GC after a quiet spell brings it back to the idle figure, at no cost while tasks run.
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/** A quiet spell: no activity for this long (at most twice this before the release runs). */
export const IDLE_RELEASE_AFTER_MS = 10_000;
/**
 * Above this much live heap, skip the release: its pause grows with the live heap (~25 ms at 15 MiB here), and a
 * heap that big is the handlers' working set rather than what load left behind.
 */
export const IDLE_RELEASE_MAX_HEAP_BYTES = 128 * 2 ** 20;

type GcFunction = NonNullable<typeof globalThis.gc>;

let exposed: GcFunction | undefined;

/**
 * V8's gc() without starting node with --expose-gc: the flag is set just long enough for a fresh context to get
 * the function, then cleared, so contexts made later (handlers' own vm sandboxes) do not see a `gc` global.
 */
function gcFunction(): GcFunction {
  if (typeof globalThis.gc === 'function') return globalThis.gc;
  if (!exposed) {
    setFlagsFromString('--expose-gc');
    try {
      exposed = runInNewContext('gc') as GcFunction;
    } finally {
      setFlagsFromString('--no-expose-gc');
    }
  }
  return exposed;
}

/** A full GC that also returns free pages to the OS (V8's "last resort" flavour: it compacts and shrinks). */
export function memoryReducingGc(): void {
  gcFunction()({ type: 'major', execution: 'sync', flavor: 'last-resort' });
}

export interface IdleMemoryReleaseOptions {
  idleMs?: number;
  maxHeapBytes?: number;
  /** For tests: what releases memory, and what the live heap is. */
  gc?: () => void;
  heapUsed?: () => number;
}

/**
 * Call `activity()` whenever work happens (cheap: a counter); after a quiet spell of `idleMs` that followed
 * some activity, one memory-reducing GC runs. Nothing runs again until there is new activity. Its timer never keeps
 * the process alive.
 */
export class IdleMemoryRelease {
  /** How many times memory was released (and how many were skipped for a heap over maxHeapBytes). */
  readonly counts = { released: 0, skipped: 0 };
  private readonly idleMs: number;
  private readonly maxHeapBytes: number;
  private readonly gc: () => void;
  private readonly heapUsed: () => number;
  private activities = 0;
  private seen = 0;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(opts: IdleMemoryReleaseOptions = {}) {
    this.idleMs = opts.idleMs ?? IDLE_RELEASE_AFTER_MS;
    this.maxHeapBytes = opts.maxHeapBytes ?? IDLE_RELEASE_MAX_HEAP_BYTES;
    this.gc = opts.gc ?? memoryReducingGc;
    this.heapUsed = opts.heapUsed ?? (() => process.memoryUsage().heapUsed);
  }

  readonly activity = (): void => {
    this.activities++;
    // One timer per quiet-spell check rather than one per activity: activity is per task, on the hot path.
    if (!this.timer && !this.stopped) this.arm();
  };

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private arm(): void {
    this.seen = this.activities;
    this.timer = setTimeout(() => this.check(), this.idleMs);
    this.timer.unref();
  }

  private check(): void {
    this.timer = undefined;
    if (this.stopped) return;
    if (this.activities !== this.seen) {
      this.arm(); // still busy: look again a spell later
      return;
    }
    if (this.heapUsed() > this.maxHeapBytes) {
      this.counts.skipped++;
      return;
    }
    this.gc();
    this.counts.released++;
  }
}
