/** A put in the form etcd3's transaction builder passes on to etcd (an RPC.IRequestOp). */
export interface PutOp {
  request_put: { key: Buffer; value: Buffer };
}

/**
 * A put as etcd3's transaction builder takes it (`.then(...)`), built directly: a
 * `client.put(key).value(v)` builder costs a PutBuilder, an async op() and its promise
 * per key, which adds up on paths that write tens of thousands of keys per second (audit
 * entries, task records). Only for a client without an etcd3 namespace (StateStore's:
 * its prefix is in the keys), since the builder is what applies one.
 */
export function putOp(key: string, value: string | Buffer): PutOp {
  return { request_put: { key: Buffer.from(key), value: typeof value === 'string' ? Buffer.from(value) : value } };
}

/** Bytes a put carries (its key and value), for budgeting a transaction. */
export const putBytes = (op: PutOp): number => op.request_put.key.length + op.request_put.value.length;
