// Large JSON values (task inputs and outputs up to the payload limit) kept
// in etcd as chunks, so that no single request comes near etcd's
// --max-request-bytes and no range answer near the client's receive limit.
//
// Chunks are content-addressed under their workflow
// (blobs/<ns>/<wf>/<sha256>/<index>): writing one twice is harmless, a result
// and the task record that copies it share one blob, and deleting a workflow's
// prefixes deletes its blobs. A record refers to a blob by {sha256, bytes,
// chunks}; readers reassemble it and check all three.
import { createHash } from 'node:crypto';
import { pack } from './batch.ts';
import { StateDecodeError, StateError } from './errors.ts';
import { fenceError } from './fence.ts';
import type { Fence, StateStore } from './store.ts';

/** Bytes per chunk. */
export const CHUNK_BYTES = 256 * 1024;
/** JSON values up to this size stay inline in their record; larger ones become blobs. */
export const INLINE_BYTES = 128 * 1024;
/** Chunks per range read: 12 × 256 KiB = 3 MiB, under gRPC's 4 MiB default receive limit. */
const CHUNKS_PER_PAGE = 12;

export interface BlobRef {
  sha256: string;
  bytes: number;
  chunks: number;
}

export const isBlobRef = (v: unknown): v is BlobRef =>
  typeof v === 'object' &&
  v !== null &&
  typeof (v as BlobRef).sha256 === 'string' &&
  /^[0-9a-f]{64}$/.test((v as BlobRef).sha256) &&
  Number.isInteger((v as BlobRef).bytes) &&
  Number.isInteger((v as BlobRef).chunks);

export class Blobs {
  private readonly store: StateStore;
  private readonly maxTxnBytes: number;

  constructor(store: StateStore, maxTxnBytes = store.maxTxnBytes) {
    this.store = store;
    this.maxTxnBytes = maxTxnBytes;
  }

  prefix(namespace: string, workflow: string): string {
    return `${this.store.key('blobs', namespace, workflow)}/`;
  }

  private chunkKey(namespace: string, workflow: string, sha: string, i: number): string {
    return `${this.prefix(namespace, workflow)}${sha}/${String(i).padStart(6, '0')}`;
  }

  /** Stores `json` (already-serialised JSON) as chunks, in transactions that each require the fences. */
  async put(namespace: string, workflow: string, json: string, fences: Fence[] = []): Promise<BlobRef> {
    const data = Buffer.from(json, 'utf8');
    const sha256 = createHash('sha256').update(data).digest('hex');
    const chunks = Math.max(1, Math.ceil(data.length / CHUNK_BYTES));
    const ref = { sha256, bytes: data.length, chunks };
    const id = `${namespace}/${workflow}/${sha256}`;
    // Groups are written in order, so a present last chunk means the whole blob is there
    // (a task record copying a committed output, or a re-sent result, writes nothing again).
    if (await this.store.client.get(this.chunkKey(namespace, workflow, sha256, chunks - 1)).exists()) return ref;
    const parts = Array.from({ length: chunks }, (_, i) => ({
      key: this.chunkKey(namespace, workflow, sha256, i),
      value: data.subarray(i * CHUNK_BYTES, (i + 1) * CHUNK_BYTES),
    }));
    const c = this.store.client;
    for (const group of pack(parts, (p) => ({ ops: 1, bytes: p.value.length + p.key.length }), {
      ops: 64,
      bytes: this.maxTxnBytes,
    })) {
      const res = await this.store
        .txn(fences)
        .then(...group.map((p) => c.put(p.key).value(p.value)))
        .commit();
      if (!res.succeeded)
        throw (await fenceError(this.store, fences)) ?? new StateError(`${id}: writing a blob failed`);
    }
    return ref;
  }

  /** Reads a blob back as the JSON text it was made from; StateDecodeError if it is incomplete or altered. */
  async get(namespace: string, workflow: string, ref: BlobRef): Promise<string> {
    const first = this.chunkKey(namespace, workflow, ref.sha256, 0);
    const end = `${this.prefix(namespace, workflow)}${ref.sha256}0`; // '/' + 1: just past the blob's keys
    const parts: Buffer[] = [];
    let start = first;
    let revision: string | undefined;
    for (;;) {
      let q = this.store.client.getAll().inRange({ start, end }).sort('Key', 'Ascend').limit(CHUNKS_PER_PAGE);
      if (revision) q = q.revision(revision);
      const res = await q.exec();
      revision ??= res.header.revision;
      for (const kv of res.kvs) parts.push(kv.value);
      const last = res.kvs[res.kvs.length - 1];
      if (!res.more || !last) break;
      start = `${last.key.toString('utf8')}\0`;
    }
    const data = Buffer.concat(parts);
    const sha = createHash('sha256').update(data).digest('hex');
    if (parts.length !== ref.chunks || data.length !== ref.bytes || sha !== ref.sha256) {
      throw new StateDecodeError(
        first,
        `blob is damaged: expected ${ref.chunks} chunks, ${ref.bytes} bytes, sha256 ${ref.sha256}; found ${parts.length} chunks, ${data.length} bytes, sha256 ${sha}`,
      );
    }
    return data.toString('utf8');
  }
}

/**
 * Moves every named field of `record` whose JSON exceeds `threshold` into a
 * blob, leaving `<field>Blob: BlobRef` in its place. Returns a new object.
 */
export async function spill<T extends object>(
  blobs: Blobs,
  namespace: string,
  workflow: string,
  record: T,
  fields: readonly (keyof T & string)[],
  fences: Fence[],
  threshold = INLINE_BYTES,
): Promise<T> {
  let out: Record<string, unknown> | undefined;
  for (const f of fields) {
    const v = record[f];
    if (v === undefined) continue;
    const json = JSON.stringify(v);
    if (Buffer.byteLength(json) <= threshold) continue;
    out ??= { ...(record as Record<string, unknown>) };
    delete out[f];
    out[`${f}Blob`] = await blobs.put(namespace, workflow, json, fences);
  }
  return (out ?? record) as T;
}

/**
 * `record` as the JSON it is stored as: `spill`ed, then serialised. A record whose whole JSON is
 * within `threshold` has no field over it, so it is serialised once and nothing more is measured
 * (the common case: one JSON.stringify per record, not one per field and one for the record).
 */
export async function spillJson<T extends object>(
  blobs: Blobs,
  namespace: string,
  workflow: string,
  record: T,
  fields: readonly (keyof T & string)[],
  fences: Fence[],
  threshold = INLINE_BYTES,
): Promise<string> {
  const json = JSON.stringify(record);
  // UTF-8 takes at most 3 bytes per UTF-16 unit: a short string needs no byte count.
  if (json.length * 3 <= threshold || Buffer.byteLength(json) <= threshold) return json;
  return JSON.stringify(await spill(blobs, namespace, workflow, record, fields, fences, threshold));
}

/** The inverse of `spill`: reads back every `<field>Blob` of `record` into `<field>`. */
export async function fill<T extends object>(
  blobs: Blobs,
  namespace: string,
  workflow: string,
  record: T,
  fields: readonly (keyof T & string)[],
  key: string,
): Promise<T> {
  let out: Record<string, unknown> | undefined;
  for (const f of fields) {
    const ref = (record as Record<string, unknown>)[`${f}Blob`];
    if (ref === undefined) continue;
    if (!isBlobRef(ref)) throw new StateDecodeError(key, `"${f}Blob" is not a blob reference {sha256, bytes, chunks}`);
    out ??= { ...(record as Record<string, unknown>) };
    delete out[`${f}Blob`];
    const text = await blobs.get(namespace, workflow, ref);
    try {
      out[f] = JSON.parse(text);
    } catch (err) {
      throw new StateDecodeError(key, `"${f}Blob" does not hold JSON (${(err as Error).message})`);
    }
  }
  return (out ?? record) as T;
}
