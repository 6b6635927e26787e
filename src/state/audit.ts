import { hash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { ConflictError, OutcomeUnknownError, StateDecodeError, StateError } from './errors.ts';
import { fenceError } from './fence.ts';
import type { LeanTxnAnswer } from './lean-txn.ts';
import { type PutOp, putOp } from './put-op.ts';
import type { Entry, Fence, StateStore } from './store.ts';

/** Something that happened to a workflow's task, as the audit log records it. */
export interface AuditEvent {
  type: string;
  task?: string;
  attempt?: number;
  agentId?: string;
  detail?: Record<string, unknown>;
}

/** A recorded event: numbered, timestamped and chained to the entry before it. */
export interface AuditEntry extends AuditEvent {
  seq: number;
  /** When it was appended (ISO 8601). */
  at: string;
  /** `hash` of the previous entry; '' for seq 1. */
  prev: string;
  /** sha256 (hex) of the entry's canonical JSON without `hash` (see {@link auditHash}). */
  hash: string;
}

export type VerifyResult =
  | { ok: true; entries: number; head: string }
  | { ok: false; entries: number; problems: { seq: number; problem: string }[] };

/**
 * Entries per append transaction. They are stored in blocks (one key each, see
 * AUDIT_BLOCK_BYTES), plus the head put: a few puts per transaction, where there used to be one
 * per entry (etcd's --max-txn-ops is 128).
 */
export const AUDIT_BATCH = 250;
/** Soft bound on the bytes of one append transaction (etcd's --max-request-bytes defaults to 1.5 MiB). */
const BATCH_BYTES = 1024 * 1024;
/**
 * Soft bound on the bytes of one block: the JSON array of consecutive entries one key holds. An
 * entry larger than this is a block of its own. A key per entry cost etcd a key's worth of index,
 * MVCC and bbolt work per entry, three per task: a 10,000-task fan-out took 0.36 ms of etcd CPU
 * per task with a key per entry and 0.19 ms with blocks. 64 KiB blocks saved no more and left the
 * leader's RSS ~15 MiB higher (malloc'd buffers below the mmap threshold); 16 KiB did not.
 */
export const AUDIT_BLOCK_BYTES = 16 * 1024;
/** Tries of one append transaction against concurrent appenders before giving up with a ConflictError. */
export const AUDIT_APPEND_TRIES = 20;
/** Keys per read while listing a log: 512 blocks of AUDIT_BLOCK_BYTES stay under 8 MiB (listPaged halves past the limit). */
const PAGE = 512;
const SEQ_DIGITS = 12;

/** The newest entry of a log, as its head key records it. */
interface AuditHead {
  seq: number;
  hash: string;
}

const isHead = (v: unknown): v is AuditHead =>
  typeof v === 'object' &&
  v !== null &&
  Number.isSafeInteger((v as AuditHead).seq) &&
  (v as AuditHead).seq >= 0 &&
  typeof (v as AuditHead).hash === 'string';

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v) as unknown;
  return proto === Object.prototype || proto === null;
}

/** Why `v` is not an audit entry, or undefined if it is one. */
function entryShapeProblem(v: unknown): string | undefined {
  if (!isPlainObject(v)) return 'not a JSON object';
  if (!Number.isSafeInteger(v.seq) || (v.seq as number) < 1) return '"seq" is not a positive integer';
  if (typeof v.at !== 'string') return '"at" is not a string';
  if (typeof v.type !== 'string') return '"type" is not a string';
  if (v.task !== undefined && typeof v.task !== 'string') return '"task" is not a string';
  if (v.attempt !== undefined && !Number.isSafeInteger(v.attempt)) return '"attempt" is not an integer';
  if (v.agentId !== undefined && typeof v.agentId !== 'string') return '"agentId" is not a string';
  if (v.detail !== undefined && !isPlainObject(v.detail)) return '"detail" is not an object';
  if (typeof v.prev !== 'string') return '"prev" is not a string';
  if (typeof v.hash !== 'string') return '"hash" is not a string';
  return undefined;
}

/**
 * Canonical JSON of a value: object keys sorted (by UTF-16 code units) at
 * every depth, no whitespace, `toJSON` honoured, and what JSON cannot hold
 * dropped from objects (undefined, functions, symbols) or written as null in
 * arrays, exactly as JSON.stringify would. Parsing the result and
 * canonicalising again gives the same text, so hashes survive a round trip
 * through etcd.
 */
export function canonicalJson(value: unknown): string {
  const text = canon(value, new Set());
  if (text === undefined) throw new TypeError('canonicalJson: the value has no JSON form');
  return text;
}

function canon(value: unknown, seen: Set<object>): string | undefined {
  let v = value;
  if (typeof v === 'object' && v !== null && typeof (v as { toJSON?: unknown }).toJSON === 'function') {
    v = (v as { toJSON: () => unknown }).toJSON();
  }
  if (v === undefined || typeof v === 'function' || typeof v === 'symbol') return undefined;
  if (typeof v === 'bigint') throw new TypeError('canonicalJson: a bigint has no JSON form');
  if (typeof v !== 'object' || v === null) return JSON.stringify(v);
  if (seen.has(v)) throw new TypeError('canonicalJson: the value is circular');
  seen.add(v);
  let out: string;
  if (Array.isArray(v)) {
    out = `[${v.map((x) => canon(x, seen) ?? 'null').join(',')}]`;
  } else {
    const parts: string[] = [];
    for (const k of Object.keys(v).sort()) {
      const c = canon((v as Record<string, unknown>)[k], seen);
      if (c !== undefined) parts.push(`${JSON.stringify(k)}:${c}`);
    }
    out = `{${parts.join(',')}}`;
  }
  seen.delete(v);
  return out;
}

/**
 * The canonical JSON an entry's hash is taken over: fixed key order, absent fields left out, no `hash`.
 * Built by concatenation: it runs for every entry appended, and for every one verify() reads.
 * `atJson` is the JSON of `at` and `detailJson` the canonical JSON of the detail, so that an
 * append computes them once per transaction and per event.
 */
function entryBody(
  seq: number,
  atJson: string,
  e: Pick<AuditEvent, 'type' | 'task' | 'attempt' | 'agentId'>,
  detailJson: string | undefined,
  prev: string,
): string {
  let s = `{"seq":${seq},"at":${atJson},"type":${JSON.stringify(e.type)}`;
  if (e.task !== undefined) s += `,"task":${JSON.stringify(e.task)}`;
  if (e.attempt !== undefined) s += `,"attempt":${e.attempt}`;
  if (e.agentId !== undefined) s += `,"agentId":${JSON.stringify(e.agentId)}`;
  if (detailJson !== undefined) s += `,"detail":${detailJson}`;
  return `${s},"prev":${JSON.stringify(prev)}}`;
}

/** One call, no Hash object: it runs once per entry. */
const sha256 = (text: string): string => hash('sha256', text);

/** `,"hash":"` + 64 hex digits + `"}`: what the stored JSON has after the hashed body's last field. */
const HASH_SUFFIX_BYTES = 9 + 64 + 2;

/**
 * The stored JSON of an entry and its hash, from its hashed body: the body's bytes with the
 * hash as its last field, written into one buffer that is hashed in place (no second string).
 */
function encodeEntry(body: string): { value: Buffer; hash: string } {
  const n = Buffer.byteLength(body);
  const value = Buffer.allocUnsafe(n - 1 + HASH_SUFFIX_BYTES);
  value.write(body, 0, 'utf8');
  const h = hash('sha256', value.subarray(0, n));
  value.write(`,"hash":"${h}"}`, n - 1, 'latin1');
  return { value, hash: h };
}

/**
 * The items of a stored block: the array's elements, or a single entry object (a key written before
 * blocks); or why it is not a block.
 */
function decodeBlock(value: string): unknown[] | string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch (err) {
    return `not valid JSON (${(err as Error).message})`;
  }
  if (!Array.isArray(parsed)) return [parsed];
  if (parsed.length === 0) return 'an empty array';
  return parsed;
}

/** A block's stored value: `[` entry `,` entry … `]`, from entries' stored JSON; `bytes` is its length. */
function encodeBlock(entries: Buffer[], bytes: number): Buffer {
  const out = Buffer.allocUnsafe(bytes);
  out[0] = 0x5b; // [
  let at = 1;
  for (const e of entries) {
    e.copy(out, at);
    at += e.length;
    out[at] = 0x2c; // ,
    at += 1;
  }
  out[bytes - 1] = 0x5d; // ] over the last comma
  return out;
}

/** The hash an entry must carry: sha256 hex of its canonical JSON without `hash`. */
export function auditHash(e: Omit<AuditEntry, 'hash'>): string {
  const detail = e.detail === undefined ? undefined : canonicalJson(e.detail);
  return sha256(entryBody(e.seq, JSON.stringify(e.at), e, detail, e.prev));
}

function checkEvent(e: AuditEvent, i: number): void {
  const where = `AuditLog.append: event ${i}`;
  if (typeof e.type !== 'string' || e.type === '') throw new TypeError(`${where}: "type" must be a non-empty string`);
  if (e.task !== undefined && typeof e.task !== 'string') throw new TypeError(`${where}: "task" must be a string`);
  if (e.attempt !== undefined && !Number.isSafeInteger(e.attempt))
    throw new TypeError(`${where}: "attempt" must be an integer`);
  if (e.agentId !== undefined && typeof e.agentId !== 'string')
    throw new TypeError(`${where}: "agentId" must be a string`);
  if (e.detail !== undefined && !isPlainObject(e.detail))
    throw new TypeError(`${where}: "detail" must be a plain object`);
}

/**
 * An event checked and ready to append: a copy of its fields (the caller may reuse its
 * objects once append returns), its detail as the canonical JSON that is hashed and stored,
 * and the bytes it adds to a transaction.
 */
interface Prepared {
  type: string;
  task?: string;
  attempt?: number;
  agentId?: string;
  detailJson?: string;
  bytes: number;
}

function prepare(e: AuditEvent): Prepared {
  const p: Prepared = {
    type: e.type,
    bytes: 300 + Buffer.byteLength(e.type) + Buffer.byteLength(e.task ?? '') + Buffer.byteLength(e.agentId ?? ''),
  };
  if (e.task !== undefined) p.task = e.task;
  if (e.attempt !== undefined) p.attempt = e.attempt;
  if (e.agentId !== undefined) p.agentId = e.agentId;
  if (e.detail !== undefined) {
    p.detailJson = canonicalJson(e.detail);
    p.bytes += Buffer.byteLength(p.detailJson);
  }
  return p;
}

/** The entry as append returns it (and list() reads it back): the fields in the order they are stored. */
function entryOf(seq: number, at: string, p: Prepared, prev: string, h: string): AuditEntry {
  const entry: AuditEntry = { seq, at, type: p.type } as AuditEntry;
  if (p.task !== undefined) entry.task = p.task;
  if (p.attempt !== undefined) entry.attempt = p.attempt;
  if (p.agentId !== undefined) entry.agentId = p.agentId;
  if (p.detailJson !== undefined) entry.detail = JSON.parse(p.detailJson) as Record<string, unknown>;
  entry.prev = prev;
  entry.hash = h;
  return entry;
}

/**
 * A workflow's tamper-evident audit log in etcd. Each entry carries the hash
 * of the one before it, and a head key holds the seq and hash of the newest,
 * so rewriting, removing or re-hashing any entry (the newest included) is
 * caught by {@link AuditLog.verify}.
 *
 * Keys: `<store prefix>/audit/<namespace>/<workflow>/e/<seq, 12 digits>` and
 * `.../head` ({seq, hash}). An `e/` key holds a block: a JSON array of consecutive entries, the
 * first of which has the key's seq (up to AUDIT_BLOCK_BYTES; one append transaction writes one or
 * a few). A key whose value is a single entry object (how logs were written before blocks) is
 * read as a block of one, so older logs verify as they did and may be appended to.
 */
export class AuditLog {
  readonly store: StateStore;
  /** The log's key prefix, without the trailing "/". */
  readonly base: string;
  readonly headKey: string;
  /**
   * The head as this log's last append left it (or a read found it): the next append starts from
   * it instead of reading it again. Its transaction still compares the head, so a head moved by
   * another appender (or a delete) meanwhile fails it, and the append reads the head and retries.
   */
  private known: { head: AuditHead | undefined; modRevision: number } | undefined;

  constructor(store: StateStore, namespace: string, workflow: string) {
    this.store = store;
    this.base = store.key('audit', namespace, workflow);
    this.headKey = `${this.base}/head`;
  }

  /** The key of the block whose first entry is `seq`. */
  entryKey(seq: number): string {
    if (!Number.isSafeInteger(seq) || seq < 1 || String(seq).length > SEQ_DIGITS) {
      throw new RangeError(`audit seq ${seq} is out of range`);
    }
    return `${this.base}/e/${String(seq).padStart(SEQ_DIGITS, '0')}`;
  }

  /**
   * Appends `events` in order after the current head and returns the new
   * entries. Up to {@link AUDIT_BATCH} events go in one transaction that
   * requires every fence to hold and the head to be unchanged since it was
   * read; on a concurrent append it re-reads the head and retries (up to
   * {@link AUDIT_APPEND_TRIES} times, then ConflictError). A failed fence is
   * a FencedError. Larger calls are split into consecutive transactions: each
   * is atomic, but another appender's entries may land between them, and a
   * failure after the first leaves the earlier ones written.
   *
   * `returnEntries: false` returns an empty list instead, and makes no entry objects: for a
   * caller that writes many entries and reads none back (the workflow engine).
   */
  async append(
    events: AuditEvent[],
    fences: Fence[] = [],
    { returnEntries = true }: { returnEntries?: boolean } = {},
  ): Promise<AuditEntry[]> {
    const out: AuditEntry[] = [];
    await this.appendAll(events, fences, returnEntries ? out : undefined);
    return out;
  }

  private async appendAll(events: AuditEvent[], fences: Fence[], out: AuditEntry[] | undefined): Promise<void> {
    if (fences.length > 126) throw new RangeError('AuditLog.append: at most 126 fences');
    events.forEach(checkEvent);
    const prepared = events.map(prepare);
    let chunk: Prepared[] = [];
    let bytes = 0;
    for (const p of prepared) {
      if (chunk.length > 0 && (chunk.length >= AUDIT_BATCH || bytes + p.bytes > BATCH_BYTES)) {
        await this.appendChunk(chunk, fences, out);
        chunk = [];
        bytes = 0;
      }
      chunk.push(p);
      bytes += p.bytes;
    }
    if (chunk.length > 0) await this.appendChunk(chunk, fences, out);
  }

  /** One transaction's worth; its entries go to `out` (if given) once it applied. */
  private async appendChunk(events: Prepared[], fences: Fence[], out: AuditEntry[] | undefined): Promise<void> {
    let expected = 0;
    let found = 0;
    // Appends whose answer was lost (OutcomeUnknown), by the hash of their last entry: if the head
    // later shows one of them, it applied, and appending again would record the events twice.
    const unknown = new Map<string, AuditEntry[] | undefined>();
    for (let attempt = 1; attempt <= AUDIT_APPEND_TRIES; attempt++) {
      // Taken: it is known again only after this append succeeds or a read shows the head.
      const known = this.known ?? (await this.readHead());
      this.known = undefined;
      const { head, modRevision } = known;
      if (head && unknown.has(head.hash)) {
        this.known = known;
        for (const e of unknown.get(head.hash) ?? []) out?.push(e);
        return;
      }
      const at = new Date().toISOString();
      const atJson = JSON.stringify(at);
      const firstSeq = (head?.seq ?? 0) + 1;
      let prev = head?.hash ?? '';
      let seq = firstSeq - 1;
      const entries: AuditEntry[] | undefined = out && [];
      const puts: PutOp[] = [];
      let block: Buffer[] = [];
      let blockSeq = firstSeq;
      let blockBytes = 1;
      const close = () => {
        puts.push(putOp(this.entryKey(blockSeq), encodeBlock(block, blockBytes)));
        block = [];
        blockBytes = 1;
      };
      for (const p of events) {
        seq += 1;
        const { value, hash: h } = encodeEntry(entryBody(seq, atJson, p, p.detailJson, prev));
        if (block.length > 0 && blockBytes + value.length + 1 > AUDIT_BLOCK_BYTES) close();
        if (block.length === 0) blockSeq = seq;
        block.push(value);
        blockBytes += value.length + 1;
        entries?.push(entryOf(seq, at, p, prev, h));
        prev = h;
      }
      if (block.length > 0) close();
      const last: AuditHead = { seq, hash: prev };
      let res: LeanTxnAnswer;
      try {
        puts.push(putOp(this.headKey, JSON.stringify(last)));
        res = await this.store.leanTxn(
          fences,
          [
            { key: this.headKey, target: 'mod', result: 'equal', value: modRevision },
            { key: this.entryKey(firstSeq), target: 'create', result: 'equal', value: 0 },
          ],
          puts.map((op) => ({ put: { key: op.request_put.key, value: op.request_put.value } })),
        );
      } catch (err) {
        if (!(err instanceof OutcomeUnknownError) || attempt === AUDIT_APPEND_TRIES) throw err;
        unknown.set(last.hash, entries);
        continue; // the compare on the head lets at most one of these appends apply
      }
      if (res.succeeded) {
        // Every key of a transaction gets its revision: the head's mod revision is the txn's.
        this.known = { head: last, modRevision: res.revision };
        for (const e of entries ?? []) out?.push(e);
        return;
      }
      const fenced = await fenceError(this.store, fences);
      if (fenced) throw fenced;
      const now = await this.readHead();
      if (now.modRevision === modRevision) {
        throw new StateError(
          `${this.entryKey(firstSeq)}: an entry already exists after the head (seq ${head?.seq ?? 0}); the audit log is damaged, see AuditLog.verify()`,
        );
      }
      this.known = now;
      expected = modRevision;
      found = now.modRevision;
      // Full-jitter backoff so that concurrent appenders stop colliding. Capped at 1 s, not 50 ms: on a
      // loaded machine one read-and-commit takes longer than 50 ms, and four appenders backing off less
      // than that kept colliding until all 20 tries were spent (seen in CI under load).
      await sleep(Math.random() * Math.min(1_000, 2 ** attempt));
    }
    throw new ConflictError(this.headKey, expected, found);
  }

  private async readHead(): Promise<{ head: AuditHead | undefined; modRevision: number }> {
    const entry = await this.store.get(this.headKey);
    if (!entry) return { head: undefined, modRevision: 0 };
    let parsed: unknown;
    try {
      parsed = JSON.parse(entry.value);
    } catch {
      throw new StateDecodeError(entry.key, 'is not JSON; expected an audit log head {seq, hash}');
    }
    if (!isHead(parsed))
      throw new StateDecodeError(entry.key, `is not an audit log head: ${entry.value.slice(0, 200)}`);
    return { head: parsed, modRevision: entry.modRevision };
  }

  /** Every key of the log in key order (blocks, then the head), read at one revision, page by page. */
  private readAll(): Promise<Entry[]> {
    return this.store.listPaged(`${this.base}/`, PAGE);
  }

  private splitKeys(all: Entry[]): {
    blocks: { seq: number; entry: Entry }[];
    head: Entry | undefined;
    other: Entry[];
  } {
    const entryPrefix = `${this.base}/e/`;
    const blocks: { seq: number; entry: Entry }[] = [];
    const other: Entry[] = [];
    let head: Entry | undefined;
    for (const e of all) {
      const suffix = e.key.startsWith(entryPrefix) ? e.key.slice(entryPrefix.length) : undefined;
      if (suffix !== undefined && /^\d{12}$/.test(suffix) && Number(suffix) > 0) {
        blocks.push({ seq: Number(suffix), entry: e });
      } else if (e.key === this.headKey) {
        head = e;
      } else {
        other.push(e);
      }
    }
    return { blocks, head, other };
  }

  /** Every entry, oldest first. Throws StateDecodeError on a block or entry that is not one (see verify()). */
  async list(): Promise<AuditEntry[]> {
    const out: AuditEntry[] = [];
    for (const { seq, entry } of this.splitKeys(await this.readAll()).blocks) {
      const items = decodeBlock(entry.value);
      if (typeof items === 'string') throw new StateDecodeError(entry.key, `is not an audit block: ${items}`);
      for (const [i, item] of items.entries()) {
        const problem = entryShapeProblem(item);
        if (problem) {
          const where = items.length === 1 ? '' : ` (entry ${i + 1} of ${items.length}, seq ${seq + i})`;
          throw new StateDecodeError(entry.key, `is not an audit entry${where}: ${problem}`);
        }
        out.push(item as unknown as AuditEntry);
      }
    }
    return out;
  }

  /**
   * Checks the whole log at one revision and reports every problem with the
   * seq it concerns: an entry whose hash does not match its content
   * ("altered"), one whose prev is not the previous entry's hash ("chain
   * broken"), gaps ("entry N missing", a block deleted), a block that
   * overlaps the one before it, a head that is not the last entry (newest
   * entries removed, or entries beyond the head), undecodable values. An
   * empty log without a head is ok. `entries` counts the entries read (an
   * undecodable block counts as one).
   */
  async verify(): Promise<VerifyResult> {
    const { blocks, head, other } = this.splitKeys(await this.readAll());
    const problems: { seq: number; problem: string }[] = [];
    const report = (seq: number, problem: string) => problems.push({ seq, problem });
    for (const o of other) report(0, `unexpected key ${o.key} in the audit log`);

    let count = 0;
    let prevSeq = 0;
    // The stored hash of entry prevSeq; undefined when it could not be read.
    let prevHash: string | undefined = '';
    // After an undecodable block its end is unknown: the next block's seq is taken as where it ended.
    let extentKnown = true;
    for (const { seq: first, entry } of blocks) {
      if (first > prevSeq + 1 && extentKnown) {
        report(
          prevSeq + 1,
          first === prevSeq + 2 ? `entry ${prevSeq + 1} missing` : `entries ${prevSeq + 1}..${first - 1} missing`,
        );
        prevHash = undefined;
      } else if (first <= prevSeq) {
        report(first, `a block starts at seq ${first}, inside the block before it (which ends at seq ${prevSeq})`);
        prevHash = undefined;
      }
      extentKnown = true;
      const items = decodeBlock(entry.value);
      if (typeof items === 'string') {
        report(first, items === 'an empty array' ? 'an empty block' : 'not valid JSON');
        count += 1;
        prevSeq = first;
        prevHash = undefined;
        extentKnown = false;
        continue;
      }
      for (const [i, item] of items.entries()) {
        const seq = first + i;
        count += 1;
        prevSeq = seq;
        const shape = entryShapeProblem(item);
        if (shape) {
          report(seq, `not an audit entry: ${shape}`);
          prevHash = undefined;
          continue;
        }
        const e = item as unknown as AuditEntry;
        if (e.seq !== seq) report(seq, `stored as seq ${seq} but records seq ${e.seq}`);
        const { hash, ...body } = e;
        let actual: string | undefined;
        try {
          actual = auditHash(body);
        } catch {
          actual = undefined;
        }
        if (actual !== hash) report(seq, 'altered: its hash does not match its content');
        if (prevHash !== undefined && e.prev !== prevHash) {
          report(
            seq,
            seq === 1
              ? 'chain broken: the first entry has a previous hash'
              : `chain broken: prev does not match the hash of entry ${seq - 1}`,
          );
        }
        prevHash = hash;
      }
    }

    const lastSeq = prevSeq;
    if (head === undefined) {
      if (lastSeq > 0) report(lastSeq, `head does not match the last entry: there is no head but ${count} entries`);
    } else {
      let h: unknown;
      try {
        h = JSON.parse(head.value);
      } catch {
        h = undefined;
      }
      if (!isHead(h)) {
        report(lastSeq, 'head does not match the last entry: the head is not valid JSON {seq, hash}');
      } else if (h.seq > lastSeq) {
        report(
          h.seq,
          lastSeq === 0
            ? `head does not match the last entry: the head is at seq ${h.seq} but the log has no entries`
            : `head does not match the last entry: the head is at seq ${h.seq} but the last entry is seq ${lastSeq}`,
        );
      } else if (h.seq < lastSeq) {
        report(
          h.seq + 1,
          `head does not match the last entry: entries after the head (head at seq ${h.seq}, last entry seq ${lastSeq})`,
        );
      } else if (prevHash !== undefined && h.hash !== prevHash) {
        report(lastSeq, `head does not match the last entry: the head's hash differs from entry ${lastSeq}'s`);
      }
    }

    if (problems.length > 0) return { ok: false, entries: count, problems };
    return { ok: true, entries: count, head: prevHash ?? '' };
  }

  /** Deletes the whole log (workflow TTL cleanup) in one transaction that requires every fence to hold. */
  async delete(fences: Fence[] = []): Promise<void> {
    await this.store.deletePrefixes([`${this.base}/`], fences);
  }
}
