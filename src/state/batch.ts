// Group transactions that fit etcd's limits, and that a single bad item
// cannot sink: items are packed by operations and by bytes, and a batch etcd
// refuses because of one item (too large, a lease that does not exist) is
// split in halves until that item is alone, so it fails by itself and every
// other item commits.
import { RequestTooLargeError, StateError } from './errors.ts';

/** etcd's default --max-txn-ops: it bounds the compares and each branch's operations. */
export const MAX_TXN_OPS = 128;

/**
 * Bytes of keys and values one transaction carries at most. etcd's default
 * --max-request-bytes is 1.5 MiB; 1 MiB leaves room for the compares and
 * the encoding. Lower it (StoreOptions.maxTxnBytes) for an etcd configured smaller.
 */
export const DEFAULT_TXN_BYTES = 1024 * 1024;

/** What one item adds to a transaction. */
export interface ItemCost {
  ops: number;
  bytes: number;
}

/**
 * Splits `items` into consecutive groups none of which exceeds `maxOps`
 * operations or `maxBytes` bytes (an item that alone exceeds a bound gets a
 * group of its own: etcd will judge it, and `isolate` will blame it).
 */
export function pack<T>(items: T[], cost: (item: T) => ItemCost, limits: ItemCost): T[][] {
  const groups: T[][] = [];
  let group: T[] = [];
  let ops = 0;
  let bytes = 0;
  for (const item of items) {
    const c = cost(item);
    if (group.length > 0 && (ops + c.ops > limits.ops || bytes + c.bytes > limits.bytes)) {
      groups.push(group);
      group = [];
      ops = 0;
      bytes = 0;
    }
    group.push(item);
    ops += c.ops;
    bytes += c.bytes;
  }
  if (group.length > 0) groups.push(group);
  return groups;
}

/** An item etcd refused on its own account, with the reason in words. */
export class ItemRefusedError extends StateError {
  override name = 'ItemRefusedError';
  override readonly cause: Error;
  readonly reason: 'TooLarge' | 'LeaseNotFound';

  constructor(reason: 'TooLarge' | 'LeaseNotFound', message: string, cause: Error) {
    super(message, { cause });
    this.reason = reason;
    this.cause = cause;
  }
}

/** Whether `err` is etcd refusing a request because of something one item in it carries. */
export function itemFault(err: unknown): 'TooLarge' | 'LeaseNotFound' | undefined {
  if (err instanceof RequestTooLargeError) return 'TooLarge';
  if (
    err instanceof Error &&
    /requested lease not found|lease not found|EtcdLeaseInvalid/i.test(`${err.name} ${err.message}`)
  )
    return 'LeaseNotFound';
  return undefined;
}

/**
 * Applies `apply` to `group`; if etcd refuses it for an item's sake, splits
 * the group in halves and retries each, down to single items, which then get
 * an ItemRefusedError as their outcome. Any other error (etcd unavailable, an
 * unknown outcome) is thrown as is, for the caller to retry the whole group.
 */
export async function isolate<T, R>(
  group: T[],
  apply: (group: T[]) => Promise<R[]>,
  describe: (item: T) => string,
): Promise<(R | ItemRefusedError)[]> {
  try {
    return await apply(group);
  } catch (err) {
    const fault = itemFault(err);
    if (!fault) throw err;
    if (group.length === 1) {
      const what = fault === 'TooLarge' ? 'is too large for one etcd request' : 'names a lease etcd does not have';
      return [
        new ItemRefusedError(fault, `${describe(group[0] as T)} ${what}: ${(err as Error).message}`, err as Error),
      ];
    }
    const mid = Math.ceil(group.length / 2);
    const left = await isolate(group.slice(0, mid), apply, describe);
    const right = await isolate(group.slice(mid), apply, describe);
    return [...left, ...right];
  }
}
