// What a handler writes while an attempt runs (console.*, ctx.log, an exec
// command's stderr, progress messages) becomes agent log lines carrying the
// attempt's identity, so `kubectl logs` output can be matched to tasks. It is
// bounded per line and per attempt: one chatty handler cannot flood the pod's
// log, and the agent never holds more than a line of it in memory.
import { AsyncLocalStorage } from 'node:async_hooks';
import { formatWithOptions } from 'node:util';
import type { Level, Logger } from '../lib/log.ts';

/** Longest line of handler output logged (UTF-8 bytes); a longer one is cut and ends with LINE_TRUNCATED_MARKER. */
export const MAX_LOG_LINE_BYTES = 8 * 1024;
/**
 * Handler output logged per attempt (UTF-8 bytes of text and fields, all
 * sources together); past it one "Log output truncated" warning is logged and
 * the rest of the attempt's output is dropped (the end line counts what was).
 */
export const MAX_LOG_BYTES_PER_ATTEMPT = 1024 * 1024;
export const LINE_TRUNCATED_MARKER = `… [line truncated at ${MAX_LOG_LINE_BYTES} bytes]`;

/**
 * The handler's logger (`ctx.log`): call it to log an info line, or use its
 * levels. Every line carries the attempt's fields (workflow, namespace, task,
 * taskId, attempt, handler, agentId); a field of yours with one of those names
 * (or ts, level, msg) is logged as `user.<name>` instead. Bounded like console
 * output: MAX_LOG_LINE_BYTES per line, MAX_LOG_BYTES_PER_ATTEMPT per attempt.
 */
export interface TaskLog extends Logger {
  (message: string, fields?: Record<string, unknown>): void;
  with(kv: Record<string, unknown>): TaskLog;
}

/** Keys the attempt's lines carry (or the line format owns) that handler fields may not replace. */
export const ATTEMPT_LOG_KEYS: readonly string[] = [
  'ts',
  'level',
  'msg',
  'component',
  'agentId',
  'pool',
  'workflow',
  'namespace',
  'task',
  'taskId',
  'attempt',
  'handler',
];
const RESERVED = new Set(ATTEMPT_LOG_KEYS);

/** `text` cut to at most `max` UTF-8 bytes, on a character boundary. */
function cutUtf8(text: string, max: number): string {
  const buf = Buffer.from(text, 'utf8');
  if (buf.length <= max) return text;
  let end = max;
  while (end > 0 && ((buf[end] as number) & 0xc0) === 0x80) end--;
  return buf.subarray(0, end).toString('utf8');
}

function cutLine(text: string): string {
  // 4 bytes per UTF-16 unit at most: shorter strings need no measuring.
  if (text.length * 3 <= MAX_LOG_LINE_BYTES) return text;
  if (Buffer.byteLength(text) <= MAX_LOG_LINE_BYTES) return text;
  return cutUtf8(text, MAX_LOG_LINE_BYTES) + LINE_TRUNCATED_MARKER;
}

const errorsAsMessages = (_k: string, v: unknown) => (v instanceof Error ? v.message : v);

/** Handler fields made safe to log: no identity key replaced, JSON-serialisable, within a line's bound. */
function userFields(fields: Record<string, unknown>): { fields: Record<string, unknown>; bytes: number } {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(fields)) out[RESERVED.has(k) ? `user.${k}` : k] = v;
  let json: string | undefined;
  try {
    json = JSON.stringify(out, errorsAsMessages);
  } catch (err) {
    const problem = `fields are not JSON-serialisable: ${(err as Error).message}`;
    return { fields: { fieldsError: problem }, bytes: Buffer.byteLength(problem) };
  }
  if (json === undefined) return { fields: {}, bytes: 0 };
  if (Buffer.byteLength(json) > MAX_LOG_LINE_BYTES) {
    // Logged as text rather than dropped: the start of it is usually what the reader wants.
    const cut = cutLine(json);
    return { fields: { fieldsTruncated: cut }, bytes: Buffer.byteLength(cut) };
  }
  return { fields: JSON.parse(json) as Record<string, unknown>, bytes: Buffer.byteLength(json) };
}

/** Set while a captured line is being written, so a logger that itself uses console is not captured again. */
let writing = false;

/** One attempt's handler output: its logger (with the attempt's fields) and its byte budget. */
export class AttemptLog {
  private readonly log: Logger;
  private used = 0;
  private over = false;
  private ended = false;
  /** Lines (and their bytes) dropped past MAX_LOG_BYTES_PER_ATTEMPT. */
  droppedLines = 0;
  droppedBytes = 0;

  private readonly sink: ((level: Level, msg: string, fields?: Record<string, unknown>) => void) | undefined;
  private readonly streamSink: ((text: string) => void) | undefined;
  /** Lines and streamed chunks that went to the sinks. */
  shipped = 0;
  /** Bytes (UTF-16 units) of streamed output that went to the stream sink. */
  streamed = 0;

  /**
   * `log` already carries the attempt's fields; `sink` also gets every line (the task log the
   * dispatcher keeps), `streamSink` every piece of streamed output (ctx.stream).
   */
  constructor(
    log: Logger,
    sink?: (level: Level, msg: string, fields?: Record<string, unknown>) => void,
    streamSink?: (text: string) => void,
  ) {
    this.log = log;
    this.sink = sink;
    this.streamSink = streamSink;
  }

  /** The attempt is over: console output from code it left running goes to the console again. */
  get finished(): boolean {
    return this.ended;
  }

  end(): void {
    this.ended = true;
  }

  /** Logs one line of handler output, within the line and attempt bounds. */
  write(level: Level, text: string, fields?: Record<string, unknown>): void {
    if (this.log.enabled?.(level) === false) return;
    if (this.over) {
      this.droppedLines++;
      this.droppedBytes += Buffer.byteLength(text);
      return;
    }
    const line = cutLine(text);
    const extra = fields ? userFields(fields) : undefined;
    const bytes = Buffer.byteLength(line) + (extra?.bytes ?? 0);
    if (this.used + bytes > MAX_LOG_BYTES_PER_ATTEMPT) {
      this.over = true;
      this.droppedLines++;
      this.droppedBytes += bytes;
      this.emit('warn', 'Log output truncated: the rest of this attempt’s output is dropped', {
        limitBytes: MAX_LOG_BYTES_PER_ATTEMPT,
      });
      return;
    }
    this.used += bytes;
    this.emit(level, line, extra?.fields);
  }

  /**
   * A piece of the attempt's streamed output (checked by ctx.stream): to the dispatcher as it is, never
   * to the agent's own log. Once the attempt is over it is dropped (a late token callback is harmless).
   */
  stream(text: string): void {
    if (this.ended || !this.streamSink || text === '') return;
    this.shipped++;
    this.streamed += text.length;
    this.streamSink(text);
  }

  /** Runs `fn` (the handler) so that console output in it, and in what it awaits, is this attempt's. */
  capture<T>(fn: () => T): T {
    installConsoleCapture();
    return current.run(this, fn);
  }

  /** The handler's `ctx.log`, adding `base` to every line. */
  taskLog(base: Record<string, unknown> = {}): TaskLog {
    const at =
      (level: Level) =>
      (msg: string, kv?: Record<string, unknown>): void =>
        this.write(level, String(msg), kv || Object.keys(base).length ? { ...base, ...kv } : undefined);
    const info = at('info');
    return Object.assign((msg: string, kv?: Record<string, unknown>) => info(msg, kv), {
      debug: at('debug'),
      info,
      warn: at('warn'),
      error: at('error'),
      with: (kv: Record<string, unknown>) => this.taskLog({ ...base, ...kv }),
      enabled: (level: Level) => this.log.enabled?.(level) ?? true,
    });
  }

  private emit(level: Level, msg: string, kv?: Record<string, unknown>): void {
    if (this.sink) {
      this.shipped++;
      this.sink(level, msg, kv);
    }
    writing = true;
    try {
      this.log[level](msg, kv);
    } finally {
      writing = false;
    }
  }
}

/**
 * Splits a child's output into lines for an AttemptLog, holding at most one
 * line's bound of a line (the rest of an over-long line is dropped; its
 * logged part carries the truncation marker).
 */
export class LineSplitter {
  private readonly emit: (line: string) => void;
  private parts: Buffer[] = [];
  private held = 0;
  private long = false;

  constructor(emit: (line: string) => void) {
    this.emit = emit;
  }

  push(chunk: Buffer): void {
    let from = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, from);
      if (nl < 0) {
        this.hold(chunk.subarray(from));
        return;
      }
      this.hold(chunk.subarray(from, nl));
      this.flushLine();
      from = nl + 1;
    }
  }

  /** The output ended: a last line without a newline is still a line. */
  end(): void {
    if (this.held > 0 || this.long) this.flushLine();
  }

  private hold(b: Buffer): void {
    // Up to one byte past the bound, plus a character's worth, so the logged line is cut (and marked) by cutLine.
    const room = MAX_LOG_LINE_BYTES + 4 - this.held;
    if (b.length > room) this.long = true;
    const keep = b.subarray(0, Math.max(0, room));
    if (keep.length === 0) return;
    this.parts.push(keep);
    this.held += keep.length;
  }

  private flushLine(): void {
    let line = Buffer.concat(this.parts).toString('utf8');
    this.parts = [];
    this.held = 0;
    if (line.endsWith('\r')) line = line.slice(0, -1);
    if (this.long && Buffer.byteLength(line) <= MAX_LOG_LINE_BYTES) line += LINE_TRUNCATED_MARKER;
    this.long = false;
    this.emit(line);
  }
}

const current = new AsyncLocalStorage<AttemptLog>();

const CONSOLE_LEVELS = { log: 'info', info: 'info', debug: 'debug', warn: 'warn', error: 'error' } as const;
let installed = false;

/**
 * Routes console.log/info/debug/warn/error made inside a running attempt to its
 * AttemptLog (console.debug at debug level, as the agent's own debug lines);
 * outside any attempt, or once it has ended, they behave as before.
 */
function installConsoleCapture(): void {
  if (installed) return;
  installed = true;
  const c = console as unknown as Record<keyof typeof CONSOLE_LEVELS, (...args: unknown[]) => void>;
  for (const [method, level] of Object.entries(CONSOLE_LEVELS) as [keyof typeof CONSOLE_LEVELS, Level][]) {
    const original = c[method].bind(console);
    c[method] = (...args: unknown[]) => {
      const log = writing ? undefined : current.getStore();
      if (!log || log.finished) {
        original(...args);
        return;
      }
      log.write(level, formatWithOptions({ colors: false }, ...args), { stream: 'console' });
    };
  }
}
