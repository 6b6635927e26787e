// Task attempt logs in etcd: what an attempt's handler logged, kept as a ring
// of its last LOG_RING_BYTES in chunks, so `agentflow logs` can read it after
// the agent is gone and follow it live (an etcd watch). The dispatcher writes
// (TaskLogWriter): lines that arrive on the agent streams are buffered and
// written every LOG_FLUSH_MS at most, many attempts in one transaction: never
// one write per line. Keys, under logs/<namespace>/<workflow>/<task>/<attempt>/:
//   c/<seq>   a chunk of lines, `<RFC 3339 time> <text>\n` each, seq zero-padded
//   dropped   present once older chunks were dropped to keep the ring's bound
//   end       the agent said the attempt ended: a follower stops here
// What the attempt streamed (ctx.stream) is a ring of its own, the same keys
// under logs/<namespace>/<workflow>/<task>/<attempt>-stream/: its text exactly as
// streamed, its last STREAM_RING_BYTES, written within STREAM_FLUSH_MS (so a
// follower sees a piece about 100 ms after the handler streamed it). Apart from
// the lines so that neither crowds the other out of its bound, and a follower
// of one never reads the other.

import { LOG_CHUNK_BYTES, LOG_FLUSH_MS, LOG_RING_BYTES, STREAM_FLUSH_MS, STREAM_RING_BYTES } from '../api/data-api.ts';
import type { Logger } from '../lib/log.ts';
import { MAX_TXN_OPS, pack } from './batch.ts';
import { fenceError } from './fence.ts';
import { putOp } from './put-op.ts';
import type { Fence, StateStore } from './store.ts';
import { type ChangeEvent, ResumableWatch } from './watch.ts';

export interface LogRef {
  namespace: string;
  workflow: string;
  task: string;
  attempt: number;
}

export interface LogLineIn {
  timeMs: number;
  text: string;
}

/** An attempt's log lines, or its streamed output. */
export type LogKind = 'lines' | 'stream';

const RING_BYTES: Record<LogKind, number> = { lines: LOG_RING_BYTES, stream: STREAM_RING_BYTES };
const FLUSH_MS: Record<LogKind, number> = { lines: LOG_FLUSH_MS, stream: STREAM_FLUSH_MS };

const SEQ_DIGITS = 10;
const seqKey = (seq: number) => `c/${String(seq).padStart(SEQ_DIGITS, '0')}`;
/** An attempt nobody wrote to for this long is forgotten by the writer (its agent died without an end). */
const IDLE_FORGET_MS = 10 * 60_000;

type RawOp = { request_put: { key: Buffer; value: Buffer } } | { request_delete_range: { key: Buffer } };

export function logBase(store: StateStore, r: LogRef, kind: LogKind = 'lines'): string {
  return store.key(
    'logs',
    r.namespace,
    r.workflow,
    r.task,
    kind === 'lines' ? String(r.attempt) : `${r.attempt}-stream`,
  );
}

/**
 * Where to cut `text` so the first part has at most `max` UTF-8 bytes: after the last newline in
 * reach when `atLine` (and there is one), else on a character boundary. text.length when it fits.
 */
function cutAt(text: string, max: number, atLine: boolean): number {
  if (text.length * 3 <= max) return text.length;
  // Only the first `max` units can be in the first part (each is a byte at least): no more is encoded.
  const buf = Buffer.from(text.length > max ? text.slice(0, max) : text, 'utf8');
  if (buf.length <= max && text.length <= max) return text.length;
  let end = max;
  while (end > 0 && ((buf[end] as number) & 0xc0) === 0x80) end--;
  const head = buf.subarray(0, end).toString('utf8');
  const nl = atLine ? head.lastIndexOf('\n') + 1 : 0;
  return nl > 0 ? nl : head.length;
}

/** The last `max` (UTF-16 units, about) of `text`, never starting inside a surrogate pair. */
function lastPart(text: string, max: number): string {
  let from = text.length - max;
  const c = text.charCodeAt(from);
  if (c >= 0xdc00 && c <= 0xdfff) from++;
  return text.slice(from);
}

/** One line as stored: newlines inside a message become separate lines with the same time. */
export function formatLines(lines: readonly LogLineIn[]): string {
  let out = '';
  for (const l of lines) {
    const at = new Date(Number.isFinite(l.timeMs) ? l.timeMs : Date.now()).toISOString();
    for (const part of l.text.split(/\r?\n/)) out += `${at} ${part}\n`;
  }
  return out;
}

interface AttemptState {
  kind: LogKind;
  base: string;
  loaded: boolean;
  nextSeq: number;
  /** Stored chunks, oldest first. */
  chunks: { seq: number; bytes: number }[];
  stored: number;
  dropped: boolean;
  /** The dropped marker is in etcd. */
  droppedStored: boolean;
  pending: string;
  end: boolean;
  /** The end mark is in etcd already (an earlier writer's): nothing more is written. */
  endStored: boolean;
  lastWrite: number;
}

/** The dispatcher's side: buffers lines per attempt and writes them in batched, fenced transactions. */
export class TaskLogWriter {
  private readonly store: StateStore;
  private readonly fences: () => Fence[];
  private readonly log: Logger;
  private readonly attempts = new Map<string, AttemptState>();
  private readonly dirty = new Set<AttemptState>();
  /** Attempts (by key prefix) whose lines the flush under way is writing. */
  private readonly writing = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  /** When the timer fires (Date.now() time; Infinity: no timer). */
  private due = Number.POSITIVE_INFINITY;
  private flushing: Promise<void> | undefined;
  private stopped = false;

  constructor(store: StateStore, fences: () => Fence[], log: Logger) {
    this.store = store;
    this.fences = fences;
    this.log = log;
  }

  /**
   * Queues lines of an attempt (and its end), written within LOG_FLUSH_MS, and what it streamed
   * (`stream`, its text in order), written within STREAM_FLUSH_MS.
   */
  append(ref: LogRef, lines: readonly LogLineIn[], end: boolean, stream = ''): void {
    if (this.stopped) return;
    if (lines.length > 0 || end) this.queue(ref, 'lines', formatLines(lines), end);
    // The end of an attempt that streamed ends its stream too (a follower of it stops there).
    const s = end ? this.attempts.get(logBase(this.store, ref, 'stream')) : undefined;
    if (stream !== '' || s) this.queue(ref, 'stream', stream, end);
  }

  private queue(ref: LogRef, kind: LogKind, text: string, end: boolean): void {
    const base = logBase(this.store, ref, kind);
    let a = this.attempts.get(base);
    if (!a) {
      a = {
        kind,
        base,
        loaded: false,
        nextSeq: 0,
        chunks: [],
        stored: 0,
        dropped: false,
        droppedStored: false,
        endStored: false,
        pending: '',
        end: false,
        lastWrite: 0,
      };
      this.attempts.set(base, a);
    }
    if (a.end) return; // nothing follows an end
    a.pending += text;
    // What waits is bounded like what is kept: an agent that floods loses its oldest lines here.
    const ring = RING_BYTES[kind];
    if (a.pending.length > ring) {
      if (kind === 'lines') {
        const cut = a.pending.indexOf('\n', a.pending.length - ring);
        a.pending = a.pending.slice(cut + 1);
      } else a.pending = lastPart(a.pending, ring);
      a.dropped = true;
    }
    a.end ||= end;
    a.lastWrite = Date.now();
    this.dirty.add(a);
    this.schedule(FLUSH_MS[kind]);
  }

  /** The next flush within `ms`: scheduled, or brought forward. */
  private schedule(ms: number): void {
    const at = Date.now() + ms;
    if (this.timer && this.due <= at) return;
    clearTimeout(this.timer);
    this.due = at;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.due = Number.POSITIVE_INFINITY;
      this.flush().catch((err: Error) => this.log.warn('Could not write task logs', { error: err }));
    }, ms);
  }

  /**
   * Lines of this attempt waiting to be written: written now (with everything else waiting), and the
   * promise says when. undefined when nothing of it waits (no cost on the path of attempts that log nothing).
   */
  flushFor(ref: LogRef): Promise<void> | undefined {
    // The common case on the result path: nothing waits or is being written, and no key is built.
    if (this.dirty.size === 0 && this.writing.size === 0) return undefined;
    const bases = [logBase(this.store, ref), logBase(this.store, ref, 'stream')];
    for (const base of bases) {
      const a = this.attempts.get(base);
      if (a && this.dirty.has(a)) {
        clearTimeout(this.timer);
        this.timer = undefined;
        this.due = Number.POSITIVE_INFINITY;
        return this.flush();
      }
    }
    // Its last lines are in the transaction under way (the attempt may be forgotten already: it ended).
    if (bases.some((b) => this.writing.has(b))) return this.flushing;
    return undefined;
  }

  /** Writes everything queued now (and waits for a flush under way). */
  async flush(): Promise<void> {
    while (this.flushing) await this.flushing;
    if (this.dirty.size === 0) return;
    this.flushing = this.write().finally(() => {
      this.flushing = undefined;
    });
    await this.flushing;
  }

  /** Final flush; later appends are ignored. */
  async stop(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.due = Number.POSITIVE_INFINITY;
    try {
      await this.flush();
    } finally {
      this.stopped = true;
    }
  }

  private async write(): Promise<void> {
    const batch = [...this.dirty];
    this.dirty.clear();
    for (const a of batch) this.writing.add(a.base);
    try {
      await this.writeBatch(batch);
    } finally {
      this.writing.clear();
    }
  }

  private async writeBatch(batch: AttemptState[]): Promise<void> {
    await Promise.all(batch.filter((a) => !a.loaded).map((a) => this.load(a)));
    const ops: RawOp[] = [];
    for (const a of batch) {
      let text = a.pending;
      a.pending = '';
      if (a.endStored) {
        this.attempts.delete(a.base);
        continue;
      }
      // Chunks of this flush by seq: one the ring drops at once is never written (etcd refuses a
      // transaction that puts and deletes one key).
      const puts = new Map<number, RawOp>();
      while (text.length > 0) {
        const cut = cutAt(text, LOG_CHUNK_BYTES, a.kind === 'lines');
        const chunk = text.slice(0, cut);
        text = text.slice(cut);
        const seq = a.nextSeq++;
        const bytes = Buffer.byteLength(chunk);
        puts.set(seq, putOp(`${a.base}/${seqKey(seq)}`, chunk));
        a.chunks.push({ seq, bytes });
        a.stored += bytes;
      }
      while (a.stored > RING_BYTES[a.kind] && a.chunks.length > 1) {
        const old = a.chunks.shift() as { seq: number; bytes: number };
        a.stored -= old.bytes;
        if (!puts.delete(old.seq)) {
          ops.push({ request_delete_range: { key: Buffer.from(`${a.base}/${seqKey(old.seq)}`) } });
        }
        a.dropped = true;
      }
      ops.push(...puts.values());
      if (a.dropped && !a.droppedStored) {
        ops.push(putOp(`${a.base}/dropped`, '1'));
        a.droppedStored = true;
      }
      if (a.end) {
        ops.push(putOp(`${a.base}/end`, new Date().toISOString()));
        this.attempts.delete(a.base);
      }
    }
    const fences = this.fences();
    const keyOf = (op: RawOp) => ('request_put' in op ? op.request_put.key : op.request_delete_range.key);
    const groups = pack(
      ops,
      (op) => ({ ops: 1, bytes: keyOf(op).length + ('request_put' in op ? op.request_put.value.length : 0) }),
      { ops: MAX_TXN_OPS - Math.max(1, fences.length), bytes: this.store.maxTxnBytes },
    );
    for (const g of groups) {
      // Raw request ops pass through etcd3's builder as they are (see put-op.ts).
      const res = await this.store
        .txn(fences)
        .then(...(g as never[]))
        .commit();
      if (!res.succeeded) throw (await fenceError(this.store, fences)) ?? new Error('writing task logs failed');
    }
    const now = Date.now();
    for (const [k, a] of this.attempts)
      if (now - a.lastWrite > IDLE_FORGET_MS && !this.dirty.has(a)) this.attempts.delete(k);
  }

  /** The first write of an attempt in this term: what an earlier leader stored (the ring goes on from it). */
  private async load(a: AttemptState): Promise<void> {
    const { entries } = await this.store.list(`${a.base}/`);
    for (const e of entries) {
      const rel = e.key.slice(a.base.length + 1);
      if (rel === 'end') a.endStored = true;
      else if (rel === 'dropped') {
        a.dropped = true;
        a.droppedStored = true;
      } else if (rel.startsWith('c/')) {
        const seq = Number(rel.slice(2));
        const bytes = Buffer.byteLength(e.value);
        a.chunks.push({ seq, bytes });
        a.stored += bytes;
        a.nextSeq = Math.max(a.nextSeq, seq + 1);
      }
    }
    a.loaded = true;
  }
}

export interface StoredLog {
  /** Older lines were dropped to keep the bound. */
  dropped: boolean;
  ended: boolean;
  text: string;
  /** The revision read at (a follower watches from the next). */
  revision: number;
  /** Highest chunk seq read (-1: none). */
  lastSeq: number;
}

/** Reads an attempt's stored log (or its streamed output). */
export async function readLog(store: StateStore, ref: LogRef, kind: LogKind = 'lines'): Promise<StoredLog> {
  const base = logBase(store, ref, kind);
  const { entries, revision } = await store.list(`${base}/`);
  const out: StoredLog = { dropped: false, ended: false, text: '', revision, lastSeq: -1 };
  for (const e of entries) {
    const rel = e.key.slice(base.length + 1);
    if (rel === 'dropped') out.dropped = true;
    else if (rel === 'end') out.ended = true;
    else if (rel.startsWith('c/')) {
      out.text += e.value;
      out.lastSeq = Math.max(out.lastSeq, Number(rel.slice(2)));
    }
  }
  return out;
}

/**
 * Follows an attempt's log (or its streamed output) from `after`: `onText` gets each new chunk in
 * order; resolves when the end marker arrives, `stop` resolves, or the signal aborts.
 */
export async function followLog(
  store: StateStore,
  ref: LogRef,
  after: StoredLog,
  onText: (text: string) => void,
  stop: Promise<unknown>,
  signal: AbortSignal,
  kind: LogKind = 'lines',
): Promise<void> {
  const base = logBase(store, ref, kind);
  let lastSeq = after.lastSeq;
  let finish: () => void = () => undefined;
  const done = new Promise<void>((r) => {
    finish = r;
  });
  const take = (rel: string, value: string | undefined) => {
    if (rel === 'end') finish();
    else if (rel.startsWith('c/') && value !== undefined) {
      const seq = Number(rel.slice(2));
      if (seq <= lastSeq) return;
      lastSeq = seq;
      onText(value);
    }
  };
  const watch = new ResumableWatch(store, `${base}/`, after.revision + 1, {
    onEvent: (e: ChangeEvent) => {
      if (e.type === 'put') take(e.key, e.value);
    },
    onResync: (entries) => {
      for (const e of entries) take(e.key, e.value);
    },
  });
  await watch.start();
  const aborted = new Promise<void>((r) => {
    if (signal.aborted) r();
    signal.addEventListener('abort', () => r(), { once: true });
  });
  try {
    await Promise.race([done, stop, aborted]);
  } finally {
    await watch.close();
  }
}
