// Kubernetes-style structured logs: a capitalised sentence plus key/value
// context. JSON lines by default (production); AGENTFLOW_LOG_FORMAT=text for
// people. AGENTFLOW_LOG_LEVEL=debug|info|warn|error (default info).

export type Level = 'debug' | 'info' | 'warn' | 'error';
const ORDER: Record<Level, number> = { debug: 0, info: 1, warn: 2, error: 3 };

export interface Logger {
  debug(msg: string, kv?: Record<string, unknown>): void;
  info(msg: string, kv?: Record<string, unknown>): void;
  warn(msg: string, kv?: Record<string, unknown>): void;
  error(msg: string, kv?: Record<string, unknown>): void;
  /** A logger that adds `kv` to every line (e.g. {controller, reconcileID} or {agentId, taskId}). */
  with(kv: Record<string, unknown>): Logger;
  /**
   * Whether a line at `level` would be written (optional: loggers made
   * elsewhere may lack it). Lets a caller skip work, or a byte budget, for
   * lines that would be dropped anyway.
   */
  enabled?(level: Level): boolean;
}

export interface LoggerOptions {
  level?: Level;
  format?: 'json' | 'text';
  /** Where lines go (default: stderr). */
  write?: (line: string) => void;
}

let stampMs = -1;
let stamp = '';
/** The time as ISO 8601, made once per millisecond (toISOString costs ~1 µs, as much as the rest of a line). */
function now(): string {
  const ms = Date.now();
  if (ms !== stampMs) {
    stampMs = ms;
    stamp = new Date(ms).toISOString();
  }
  return stamp;
}

/** Keys every JSON line starts with: a field of that name takes the slow path (it replaces the line's own). */
const LINE_KEYS = new Set(['ts', 'level', 'msg']);

/** `,"key":value` for each field JSON can hold (an Error as its message), in order. */
function fieldsJson(fields: Record<string, unknown>): string {
  let out = '';
  for (const k in fields) {
    if (!Object.hasOwn(fields, k)) continue;
    const v = fields[k];
    const json = JSON.stringify(v instanceof Error ? v.message : v);
    if (json !== undefined) out += `,${JSON.stringify(k)}:${json}`;
  }
  return out;
}

export function createLogger(base: Record<string, unknown> = {}, opts: LoggerOptions = {}): Logger {
  const level = opts.level ?? (process.env.AGENTFLOW_LOG_LEVEL as Level | undefined) ?? 'info';
  const format = opts.format ?? (process.env.AGENTFLOW_LOG_FORMAT === 'text' ? 'text' : 'json');
  const write = opts.write ?? ((line: string) => process.stderr.write(`${line}\n`));
  const min = ORDER[level] ?? ORDER.info;
  // The base fields' JSON is made once per logger: a line costs only its own fields (the agent
  // makes a logger per attempt and writes two lines with it, per task).
  let baseJson: string | undefined;
  const baseKeys = Object.keys(base);
  const plainBase = !baseKeys.some((k) => LINE_KEYS.has(k));
  const emit = (lvl: Level, msg: string, kv?: Record<string, unknown>) => {
    if (ORDER[lvl] < min) return;
    if (format === 'json') {
      const head = `{"ts":"${now()}","level":"${lvl}","msg":${JSON.stringify(msg)}`;
      let fast = plainBase;
      if (fast && kv) for (const k in kv) if (k in base || LINE_KEYS.has(k)) fast = false;
      if (fast) {
        baseJson ??= fieldsJson(base);
        write(`${head}${baseJson}${kv ? fieldsJson(kv) : ''}}`);
        return;
      }
      // A field named again (or named ts, level, msg) replaces the earlier value where it stood.
      const fields = { ...base, ...kv };
      for (const [k, v] of Object.entries(fields)) if (v instanceof Error) fields[k] = v.message;
      write(JSON.stringify({ ts: now(), level: lvl, msg, ...fields }));
    } else {
      const fields = { ...base, ...kv };
      for (const [k, v] of Object.entries(fields)) if (v instanceof Error) fields[k] = v.message;
      const pairs = Object.entries(fields).map(
        ([k, v]) => `${k}=${typeof v === 'string' ? JSON.stringify(v) : JSON.stringify(v)}`,
      );
      write(`${now()} ${lvl.toUpperCase().padEnd(5)} ${msg}${pairs.length ? ` ${pairs.join(' ')}` : ''}`);
    }
  };
  return {
    debug: (m, kv) => emit('debug', m, kv),
    info: (m, kv) => emit('info', m, kv),
    warn: (m, kv) => emit('warn', m, kv),
    error: (m, kv) => emit('error', m, kv),
    with: (kv) => createLogger({ ...base, ...kv }, { level, format, write }),
    enabled: (lvl) => ORDER[lvl] >= min,
  };
}

/** A logger that drops everything (tests, benchmarks). */
export const silentLogger: Logger = createLogger({}, { write: () => undefined });
