// Sends what an attempt logs to the dispatcher (protocol 3, TaskLog), which
// keeps the last part of it per attempt for `agentflow logs`. Lines wait at
// most SHIP_MS (or until SHIP_BYTES are waiting) and go in one message per
// attempt; the attempt's end flushes them with end=true before its result is
// sent, so a reader sees the whole log once the task is over. Best effort: a
// full stream or no stream drops lines here, never the agent's own log of them.

import type { Level } from '../lib/log.ts';

/** How long a line waits to be batched with others. */
export const SHIP_MS = 100;
/** Bytes of lines that make a message go at once. */
export const SHIP_BYTES = 64 * 1024;
/** Lines in one message at most. */
export const SHIP_MAX_LINES = 1024;

export interface ShippedAttempt {
  taskId: string;
  attempt: number;
  token: number;
}

export interface TaskLogMessage {
  taskId: string;
  attempt: number;
  token: number;
  lines: { timeMs: number; text: string }[];
  end: boolean;
}

/** The text a log call becomes in the task's log: stderr and console lines as written, others with their level and fields. */
export function logText(level: Level, msg: string, fields?: Record<string, unknown>): string {
  const { stream, ...rest } = fields ?? {};
  const raw = stream === 'stderr' || stream === 'console';
  const extra = Object.keys(rest).length > 0 ? ` ${JSON.stringify(rest)}` : '';
  if (raw && (level === 'info' || level === 'debug') && !extra) return msg;
  return `${level.toUpperCase()} ${msg}${extra}`;
}

interface Pending {
  a: ShippedAttempt;
  lines: { timeMs: number; text: string }[];
  bytes: number;
}

export class LogShipper {
  private readonly send: (m: TaskLogMessage) => void;
  private readonly pending = new Map<string, Pending>();
  private timer: NodeJS.Timeout | undefined;

  /** `send` writes one message if a stream that reads TaskLog is up, else drops it. */
  constructor(send: (m: TaskLogMessage) => void) {
    this.send = send;
  }

  line(a: ShippedAttempt, text: string): void {
    const key = `${a.taskId}#${a.attempt}`;
    let p = this.pending.get(key);
    if (!p) {
      p = { a, lines: [], bytes: 0 };
      this.pending.set(key, p);
    }
    p.a = a; // a reclaim changes the token
    p.lines.push({ timeMs: Date.now(), text });
    p.bytes += text.length;
    if (p.bytes >= SHIP_BYTES || p.lines.length >= SHIP_MAX_LINES) this.ship(key, p, false);
    else this.timer ??= setTimeout(() => this.flushAll(), SHIP_MS);
  }

  /** The attempt is over: what waits goes now, marked as its end (sent even with no lines when it logged any before). */
  end(a: ShippedAttempt, logged: boolean): void {
    const key = `${a.taskId}#${a.attempt}`;
    const p = this.pending.get(key) ?? (logged ? { a, lines: [], bytes: 0 } : undefined);
    if (p) this.ship(key, { ...p, a }, true);
    else this.pending.delete(key);
  }

  private ship(key: string, p: Pending, end: boolean): void {
    this.pending.delete(key);
    // Read now: the token is a getter of the attempt and may have changed since the first line.
    this.send({ taskId: p.a.taskId, attempt: p.a.attempt, token: p.a.token, lines: p.lines, end });
  }

  private flushAll(): void {
    this.timer = undefined;
    for (const [key, p] of [...this.pending]) this.ship(key, p, false);
  }

  /** Drops everything waiting (the agent stops). */
  clear(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.pending.clear();
  }
}
