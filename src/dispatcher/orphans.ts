/** How long an orphaned result waits for its task to be queued again (a new leader resuming its runs). */
export const ORPHAN_WAIT_MS = 15_000;
/** Most orphaned results held at once (each holds its output). */
export const MAX_ORPHANS = 10_000;

/** What the book needs of an orphan's connection. */
export interface OrphanOwner {
  readonly closed: boolean;
}

/**
 * Results whose claim went with the agent's lease while it was away (etcd's history shows the agent
 * held exactly that attempt): each is held, bounded in number and time, until the engine queues that
 * attempt again, when it is committed instead of run again. `expired` is told of each one that waited
 * out its time (the agent is then refused).
 */
export class OrphanResults<O extends { conn: OrphanOwner }> {
  private readonly held = new Map<string, { orphan: O; timer: NodeJS.Timeout }>();
  private readonly expired: (o: O) => void;
  private readonly waitMs: number;
  private readonly max: number;
  private closed = false;

  constructor(expired: (o: O) => void, opts: { waitMs?: number; max?: number } = {}) {
    this.expired = expired;
    this.waitMs = opts.waitMs ?? ORPHAN_WAIT_MS;
    this.max = opts.max ?? MAX_ORPHANS;
  }

  /**
   * Holds `orphan` for task `key`. False (not held) when another live stream's orphan holds the key,
   * the book is full, or closed; the same agent again on a newer stream replaces its older one.
   */
  park(key: string, orphan: O): boolean {
    const prev = this.held.get(key);
    if (prev && !prev.orphan.conn.closed) return false;
    if (prev) {
      clearTimeout(prev.timer);
      this.held.delete(key);
    }
    if (this.held.size >= this.max || this.closed) return false;
    const timer = setTimeout(() => {
      if (this.held.get(key)?.orphan !== orphan) return;
      this.held.delete(key);
      this.expired(orphan);
    }, this.waitMs);
    timer.unref();
    this.held.set(key, { orphan, timer });
    return true;
  }

  /** The orphan held for `key`, taken out of the book (its timer stopped). */
  take(key: string): O | undefined {
    const h = this.held.get(key);
    if (!h) return undefined;
    clearTimeout(h.timer);
    this.held.delete(key);
    return h.orphan;
  }

  get size(): number {
    return this.held.size;
  }

  /** Drops every orphan without telling anyone (the dispatcher stops; agents re-send to the next one). */
  close(): void {
    this.closed = true;
    for (const h of this.held.values()) clearTimeout(h.timer);
    this.held.clear();
  }
}
