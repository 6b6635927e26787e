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

export function createLogger(base: Record<string, unknown> = {}, opts: LoggerOptions = {}): Logger {
  const level = opts.level ?? (process.env.AGENTFLOW_LOG_LEVEL as Level | undefined) ?? 'info';
  const format = opts.format ?? (process.env.AGENTFLOW_LOG_FORMAT === 'text' ? 'text' : 'json');
  const write = opts.write ?? ((line: string) => process.stderr.write(`${line}\n`));
  const min = ORDER[level] ?? ORDER.info;
  const emit = (lvl: Level, msg: string, kv: Record<string, unknown> = {}) => {
    if (ORDER[lvl] < min) return;
    const fields = { ...base, ...kv };
    for (const [k, v] of Object.entries(fields)) if (v instanceof Error) fields[k] = v.message;
    if (format === 'json') {
      write(JSON.stringify({ ts: new Date().toISOString(), level: lvl, msg, ...fields }));
    } else {
      const pairs = Object.entries(fields).map(
        ([k, v]) => `${k}=${typeof v === 'string' ? JSON.stringify(v) : JSON.stringify(v)}`,
      );
      write(
        `${new Date().toISOString()} ${lvl.toUpperCase().padEnd(5)} ${msg}${pairs.length ? ` ${pairs.join(' ')}` : ''}`,
      );
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
