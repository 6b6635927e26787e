// The dispatcher's two hot transactions (a group of claims, a group of commits) written as etcd's wire
// bytes directly, and their answers read for the two fields the caller uses. Through etcd3 each compare
// and operation is a builder object, then a protobufjs message, and the answer decodes every ResponseOp
// and its header into objects with string revisions (`longs: String`): per task, more than the task's
// own logic (bench/results/profile.md). The call still goes through etcd3's pool (host choice, auth
// metadata) and agentflow's at-most-once policy (transport.ts `guardCalls`), as every other call does.
import type { Etcd3 } from 'etcd3';

/** One compare: the key's createRevision, modRevision or version against a number. */
export interface LeanCompare {
  key: string;
  target: 'create' | 'mod' | 'version';
  result: 'equal' | 'greater';
  value: number;
}

/** One operation of the success branch. */
export type LeanOp =
  | { put: { key: string | Buffer; value: string | Buffer; lease?: string } }
  | { delete: { key: string | Buffer } };

export interface LeanTxnAnswer {
  succeeded: boolean;
  /** The store's revision after the transaction (header.revision): a success's revision. */
  revision: number;
}

// etcdserverpb (etcd3/proto/rpc.proto): field numbers and enum values.
const TARGET = { version: 0, create: 1, mod: 2 } as const;
const RESULT = { equal: 0, greater: 1 } as const;
const UNION_FIELD = { version: 4, create: 5, mod: 6 } as const;

/** A growable byte buffer with protobuf's varint and length-delimited writes. */
class Writer {
  buf: Buffer;
  len = 0;

  constructor(size: number) {
    this.buf = Buffer.allocUnsafe(size);
  }

  private room(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.len + n));
    this.buf.copy(next, 0, 0, this.len);
    this.buf = next;
  }

  /** A non-negative safe integer, or a negative one as int64 (ten bytes, two's complement). */
  varint(value: number): void {
    if (value < 0) {
      this.varintBig(BigInt(value));
      return;
    }
    this.room(10);
    let v = value;
    while (v >= 0x80) {
      this.buf[this.len++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.buf[this.len++] = v;
  }

  /** Any int64 (a lease id may pass 2^53), as its 64-bit two's complement. */
  varintBig(v: bigint): void {
    this.room(10);
    let big = BigInt.asUintN(64, v);
    while (big >= 0x80n) {
      this.buf[this.len++] = Number(big & 0x7fn) | 0x80;
      big >>= 7n;
    }
    this.buf[this.len++] = Number(big);
  }

  tag(field: number, wire: 0 | 2): void {
    this.varint(field * 8 + wire);
  }

  /** A string (as UTF-8) or bytes field. */
  bytes(field: number, s: string | Buffer): void {
    const n = typeof s === 'string' ? Buffer.byteLength(s) : s.length;
    this.tag(field, 2);
    this.varint(n);
    this.room(n);
    if (typeof s === 'string') this.len += this.buf.write(s, this.len, 'utf8');
    else this.len += s.copy(this.buf, this.len);
  }

  /** A nested message: written in place, its length prefix filled in once its size is known. */
  message(field: number, body: (w: Writer) => void): void {
    this.tag(field, 2);
    // Room for a 3-byte length prefix (up to 2 MiB); the body moves if the prefix is another size.
    this.room(3);
    const at = this.len;
    this.len += 3;
    body(this);
    const size = this.len - at - 3;
    const prefix = varintBytes(size);
    const delta = prefix.length - 3;
    if (delta !== 0) {
      if (delta > 0) this.room(delta);
      this.buf.copy(this.buf, at + prefix.length, at + 3, this.len);
      this.len += delta;
    }
    prefix.copy(this.buf, at);
  }
}

function varintBytes(value: number): Buffer {
  const out: number[] = [];
  let v = value;
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
  return Buffer.from(out);
}

/** A TxnRequest: every compare must hold for `success` to apply; the failure branch is empty. */
export function encodeTxn(compares: LeanCompare[], success: LeanOp[]): Buffer {
  let size = 64;
  // A first guess (3 bytes per UTF-16 unit, a Buffer counted alike); the writer grows past it if need be.
  for (const c of compares) size += c.key.length * 3 + 32;
  for (const o of success)
    size += 'put' in o ? (o.put.key.length + o.put.value.length) * 3 + 40 : o.delete.key.length * 3 + 16;
  const w = new Writer(size);
  for (const c of compares) {
    w.message(1, (m) => {
      if (RESULT[c.result] !== 0) {
        m.tag(1, 0);
        m.varint(RESULT[c.result]);
      }
      if (TARGET[c.target] !== 0) {
        m.tag(2, 0);
        m.varint(TARGET[c.target]);
      }
      m.bytes(3, c.key);
      // A oneof member is written even when it is 0: it says which member is set.
      m.tag(UNION_FIELD[c.target], 0);
      m.varint(c.value);
    });
  }
  for (const o of success) {
    w.message(2, (op) => {
      if ('put' in o) {
        op.message(2, (p) => {
          p.bytes(1, o.put.key);
          p.bytes(2, o.put.value);
          if (o.put.lease !== undefined && o.put.lease !== '0') {
            p.tag(3, 0);
            p.varintBig(BigInt(o.put.lease));
          }
        });
      } else {
        op.message(3, (d) => d.bytes(1, o.delete.key));
      }
    });
  }
  return w.buf.subarray(0, w.len);
}

/** Reads a varint at `pos`: [value, next position]. Values up to 2^53 (revisions) are exact. */
function readVarint(b: Buffer, from: number): [number, number] {
  let value = 0;
  let scale = 1;
  for (let i = 0; i < 10; i++) {
    const byte = b[from + i];
    if (byte === undefined) throw new Error('etcd TxnResponse: truncated varint');
    value += (byte & 0x7f) * scale;
    if (byte < 0x80) return [value, from + i + 1];
    scale *= 0x80;
  }
  throw new Error('etcd TxnResponse: varint longer than 10 bytes');
}

/** Skips one field of wire type `wire` at `pos`. */
function skip(b: Buffer, pos: number, wire: number): number {
  switch (wire) {
    case 0:
      return readVarint(b, pos)[1];
    case 1:
      return pos + 8;
    case 2: {
      const [n, at] = readVarint(b, pos);
      return at + n;
    }
    case 5:
      return pos + 4;
    default:
      throw new Error(`etcd TxnResponse: unexpected wire type ${wire}`);
  }
}

/** `succeeded` and `header.revision` of a TxnResponse; the per-operation responses are skipped unread. */
export function decodeTxnAnswer(b: Buffer): LeanTxnAnswer {
  let succeeded = false;
  let revision = 0;
  let pos = 0;
  while (pos < b.length) {
    const [key, at] = readVarint(b, pos);
    const field = Math.floor(key / 8);
    const wire = key % 8;
    pos = at;
    if (field === 1 && wire === 2) {
      const [n, start] = readVarint(b, pos);
      const end = start + n;
      let p = start;
      while (p < end) {
        const [k, a] = readVarint(b, p);
        p = a;
        if (Math.floor(k / 8) === 3 && k % 8 === 0) [revision, p] = readVarint(b, p);
        else p = skip(b, p, k % 8);
      }
      pos = end;
    } else if (field === 2 && wire === 0) {
      const [v, next] = readVarint(b, pos);
      succeeded = v !== 0;
      pos = next;
    } else {
      pos = skip(b, pos, wire);
    }
  }
  if (pos !== b.length) throw new Error('etcd TxnResponse: a field runs past the end');
  return { succeeded, revision };
}

/** The method name the lean call goes by on etcd3's KV client (etcd's own path is KV/Txn). */
const METHOD = 'txnLean';

interface GrpcClientLike {
  makeUnaryRequest(
    path: string,
    serialize: (b: Buffer) => Buffer,
    deserialize: (b: Buffer) => LeanTxnAnswer,
    argument: Buffer,
    metadata: unknown,
    options: unknown,
    callback: (err: Error | null, res?: LeanTxnAnswer) => void,
  ): unknown;
}

interface PoolLike {
  exec(service: string, method: string, payload: unknown, options?: unknown): Promise<unknown>;
  withConnection(service: string, fn: (c: { client: object }) => unknown): Promise<unknown>;
}

const identity = (b: Buffer) => b;

/**
 * Teaches etcd3's KV client a method that sends already-encoded TxnRequest bytes to etcd's KV/Txn and
 * reads back only `succeeded` and the revision. Calls go through the pool's `exec`, so host selection,
 * auth metadata and guardCalls' retry policy (a write that may have applied is OutcomeUnknown, never
 * retried) apply unchanged. etcd3 is pinned exactly (package.json): its pool is not public API, and
 * this checks what it relies on at start-up.
 */
export function leanTxnCaller(client: Etcd3): (req: Buffer) => Promise<LeanTxnAnswer> {
  const pool = (client as unknown as { pool: PoolLike }).pool;
  if (typeof pool?.exec !== 'function' || typeof pool.withConnection !== 'function') {
    throw new Error('etcd3: connection pool not found (unsupported etcd3 version)');
  }
  let installed = false;
  const install = async () => {
    if (installed) return;
    await pool.withConnection('KV', ({ client: kv }) => {
      const proto = Object.getPrototypeOf(kv) as Record<string, unknown> & GrpcClientLike;
      if (typeof proto.makeUnaryRequest !== 'function') throw new Error('etcd3: KV client is not a gRPC client');
      if (typeof proto[METHOD] !== 'function') {
        proto[METHOD] = function (
          this: GrpcClientLike,
          req: Buffer,
          metadata: unknown,
          options: unknown,
          cb: (err: Error | null, res?: LeanTxnAnswer) => void,
        ) {
          return this.makeUnaryRequest('/etcdserverpb.KV/Txn', identity, decodeTxnAnswer, req, metadata, options, cb);
        };
      }
    });
    installed = true;
  };
  return async (req) => {
    await install();
    return (await pool.exec('KV', METHOD, req)) as LeanTxnAnswer;
  };
}
