import type { FileHandle } from 'node:fs/promises';

// Just enough of bbolt's file format (the database etcd's snapshot is) to read
// the snapshot's revision: etcd's `key` bucket holds one entry per revision,
// keyed by the revision (8 bytes big-endian, "_", the sub-revision), so its
// last key is the store's latest revision. etcd's Snapshot stream carries no
// revision of its own (its headers are empty), and the alternative, etcdutl,
// is not in the agentflow image. Layout: https://github.com/etcd-io/bbolt
// (page.go, node.go, bucket.go).

const PAGE_HEADER = 16;
const ELEMENT = 16;
const BRANCH = 0x01;
const LEAF = 0x02;
const META = 0x04;
/** A leaf element that is a (sub-)bucket: its value is a bucket header (root page id, sequence). */
const BUCKET_LEAF = 0x01;
export const BOLT_MAGIC = 0xed0cdaed;

export class BoltFormatError extends Error {
  override name = 'BoltFormatError';
}

interface Element {
  key: Buffer;
  value: Buffer;
  flags: number;
  child: bigint;
}

function elements(page: Buffer): { branch: boolean; list: Element[] } {
  const flags = page.readUInt16LE(8);
  const count = page.readUInt16LE(10);
  if (flags !== BRANCH && flags !== LEAF) throw new BoltFormatError(`page of type ${flags} where a tree page belongs`);
  const list: Element[] = [];
  for (let i = 0; i < count; i++) {
    const at = PAGE_HEADER + i * ELEMENT;
    if (flags === BRANCH) {
      const pos = page.readUInt32LE(at);
      const ksize = page.readUInt32LE(at + 4);
      list.push({
        key: page.subarray(at + pos, at + pos + ksize),
        value: Buffer.alloc(0),
        flags: 0,
        child: page.readBigUInt64LE(at + 8),
      });
    } else {
      const eflags = page.readUInt32LE(at);
      const pos = page.readUInt32LE(at + 4);
      const ksize = page.readUInt32LE(at + 8);
      const vsize = page.readUInt32LE(at + 12);
      const k = at + pos;
      list.push({
        key: page.subarray(k, k + ksize),
        value: page.subarray(k + ksize, k + ksize + vsize),
        flags: eflags,
        child: 0n,
      });
    }
  }
  return { branch: flags === BRANCH, list };
}

class Reader {
  private readonly fh: FileHandle;
  private readonly pageSize: number;
  private readonly size: number;

  constructor(fh: FileHandle, pageSize: number, size: number) {
    this.fh = fh;
    this.pageSize = pageSize;
    this.size = size;
  }

  async page(id: bigint): Promise<Buffer> {
    const offset = Number(id) * this.pageSize;
    if (offset + PAGE_HEADER > this.size) throw new BoltFormatError(`page ${id} lies past the end of the file`);
    const head = Buffer.alloc(PAGE_HEADER);
    await this.fh.read(head, 0, PAGE_HEADER, offset);
    const length = this.pageSize * (head.readUInt32LE(12) + 1);
    if (offset + length > this.size) throw new BoltFormatError(`page ${id} runs past the end of the file`);
    const buf = Buffer.alloc(length);
    await this.fh.read(buf, 0, length, offset);
    return buf;
  }

  /** The root page of a bucket from its header (an inline bucket carries its page in the value). */
  async bucketRoot(header: Buffer): Promise<Buffer> {
    const root = header.readBigUInt64LE(0);
    return root === 0n ? header.subarray(16) : this.page(root);
  }

  /** The value of `name` in the tree rooted at `page` (a bucket's elements), if present. */
  async find(page: Buffer, name: Buffer, depth = 0): Promise<Element | undefined> {
    if (depth > 64) throw new BoltFormatError('tree deeper than 64 levels');
    const { branch, list } = elements(page);
    if (!branch) return list.find((e) => e.key.equals(name));
    let child: Element | undefined;
    for (const e of list) if (Buffer.compare(e.key, name) <= 0) child = e;
    return child ? this.find(await this.page(child.child), name, depth + 1) : undefined;
  }

  /** The last element of the tree rooted at `page`. */
  async last(page: Buffer, depth = 0): Promise<Element | undefined> {
    if (depth > 64) throw new BoltFormatError('tree deeper than 64 levels');
    const { branch, list } = elements(page);
    const e = list.at(-1);
    if (!branch || !e) return e;
    return this.last(await this.page(e.child), depth + 1);
  }
}

/**
 * The etcd revision of a snapshot (the last key of its `key` bucket), from
 * the newer of bbolt's two meta pages. Throws BoltFormatError when the file is
 * not laid out as a bbolt database with that bucket.
 */
export async function snapshotRevision(fh: FileHandle, size: number): Promise<number> {
  const metas: { pageSize: number; root: bigint; txid: bigint }[] = [];
  const first = Buffer.alloc(64 + 8);
  await fh.read(first, 0, first.length, 0);
  const pageSize = first.readUInt32LE(24);
  if (pageSize < 512 || pageSize > 65536 || (pageSize & (pageSize - 1)) !== 0)
    throw new BoltFormatError(`page size ${pageSize} is not a power of two in 512-65536`);
  for (const at of [0, pageSize]) {
    const m = Buffer.alloc(72);
    await fh.read(m, 0, 72, at);
    if (m.readUInt16LE(8) !== META || m.readUInt32LE(16) !== BOLT_MAGIC) continue;
    metas.push({ pageSize: m.readUInt32LE(24), root: m.readBigUInt64LE(32), txid: m.readBigUInt64LE(64) });
  }
  const meta = metas.sort((a, b) => (a.txid < b.txid ? 1 : -1))[0];
  if (!meta) throw new BoltFormatError('neither meta page carries bbolt magic');
  const r = new Reader(fh, meta.pageSize, size);
  const key = await r.find(await r.page(meta.root), Buffer.from('key'));
  if (!key || !(key.flags & BUCKET_LEAF)) throw new BoltFormatError('no "key" bucket: not an etcd database');
  const last = await r.last(await r.bucketRoot(key.value));
  if (!last) return 0; // an etcd that never stored a key
  if (last.key.length < 8) throw new BoltFormatError('a revision key shorter than 8 bytes');
  return Number(last.key.readBigUInt64BE(0));
}
