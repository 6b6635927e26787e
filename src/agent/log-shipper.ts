// Sends what an attempt logs to the dispatcher (protocol 3, TaskLog), which
// keeps the last part of it per attempt for `agentflow logs`. Lines wait at
// most SHIP_MS (or until SHIP_BYTES are waiting) and go in one message per
// attempt; the attempt's end flushes them with end=true before its result is
// sent, so a reader sees the whole log once the task is over. Best effort: a
// full stream or no stream drops lines here, never the agent's own log of them.
// Streamed output (ctx.stream, protocol 4) rides in the same messages as
// TaskLog.chunks, kept apart from the lines, and waits at most STREAM_SHIP_MS.

import { STREAM_MAX_CHUNKS_PER_MESSAGE } from '../api/data-api.ts';
import type { Level } from '../lib/log.ts';

/** How long a line waits to be batched with others. */
export const SHIP_MS = 100;
/** Bytes of lines that make a message go at once. */
export const SHIP_BYTES = 64 * 1024;
/** Lines in one message at most. */
export const SHIP_MAX_LINES = 1024;
/**
 * How long a streamed chunk waits to be batched with others: the dispatcher writes streamed output
 * within STREAM_FLUSH_MS more, so a reader sees a chunk about 100 ms after the handler streamed it.
 */
export const STREAM_SHIP_MS = 50;

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
  /** Streamed output, in order (absent: none waited). */
  chunks?: { timeMs: number; text: string }[];
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
  chunks: { timeMs: number; text: string }[];
  bytes: number;
}

export class LogShipper {
  private readonly send: (m: TaskLogMessage) => void;
  private readonly pending = new Map<string, Pending>();
  private timer: NodeJS.Timeout | undefined;
  /** When the timer fires (Date.now() time; Infinity: no timer). */
  private due = Number.POSITIVE_INFINITY;

  /** `send` writes one message if a stream that reads TaskLog is up, else drops it. */
  constructor(send: (m: TaskLogMessage) => void) {
    this.send = send;
  }

  line(a: ShippedAttempt, text: string): void {
    const [key, p] = this.pendingOf(a);
    p.lines.push({ timeMs: Date.now(), text });
    p.bytes += text.length;
    if (p.bytes >= SHIP_BYTES || p.lines.length >= SHIP_MAX_LINES) this.ship(key, p, false);
    else this.schedule(SHIP_MS);
  }

  /** A piece of the attempt's streamed output: goes within STREAM_SHIP_MS, in order with the others. */
  chunk(a: ShippedAttempt, text: string): void {
    const [key, p] = this.pendingOf(a);
    p.chunks.push({ timeMs: Date.now(), text });
    p.bytes += text.length;
    if (p.bytes >= SHIP_BYTES || p.chunks.length >= STREAM_MAX_CHUNKS_PER_MESSAGE) this.ship(key, p, false);
    else this.schedule(STREAM_SHIP_MS);
  }

  private pendingOf(a: ShippedAttempt): [string, Pending] {
    const key = `${a.taskId}#${a.attempt}`;
    let p = this.pending.get(key);
    if (!p) {
      p = { a, lines: [], chunks: [], bytes: 0 };
      this.pending.set(key, p);
    }
    p.a = a; // a reclaim changes the token
    return [key, p];
  }

  /** The timer fires within `ms`: set, or brought forward. */
  private schedule(ms: number): void {
    const at = Date.now() + ms;
    if (this.timer && this.due <= at) return;
    clearTimeout(this.timer);
    this.due = at;
    this.timer = setTimeout(() => this.flushAll(), ms);
  }

  /** The attempt is over: what waits goes now, marked as its end (sent even with nothing waiting when it logged or streamed before). */
  end(a: ShippedAttempt, logged: boolean): void {
    const key = `${a.taskId}#${a.attempt}`;
    const p = this.pending.get(key) ?? (logged ? { a, lines: [], chunks: [], bytes: 0 } : undefined);
    if (p) this.ship(key, { ...p, a }, true);
    else this.pending.delete(key);
  }

  private ship(key: string, p: Pending, end: boolean): void {
    this.pending.delete(key);
    // Read now: the token is a getter of the attempt and may have changed since the first line.
    this.send({
      taskId: p.a.taskId,
      attempt: p.a.attempt,
      token: p.a.token,
      lines: p.lines,
      end,
      ...(p.chunks.length > 0 && { chunks: p.chunks }),
    });
  }

  private flushAll(): void {
    this.timer = undefined;
    this.due = Number.POSITIVE_INFINITY;
    for (const [key, p] of [...this.pending]) this.ship(key, p, false);
  }

  /** Drops everything waiting (the agent stops). */
  clear(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.due = Number.POSITIVE_INFINITY;
    this.pending.clear();
  }
}
