// cache list|clear: the namespace's memoized task outputs (a task's `memoize`), through the data API
// (namespaces/<ns>/memo). Listing takes `list` on workflows in the namespace, clearing `delete` on
// workflows (docs/api.md).
import type { MemoItem } from '../../../api/data-api.ts';
import { UsageError } from '../errors.ts';
import { type DataFormat, formatData, humanAge, oneLine, table } from '../format.ts';
import type { Io } from '../io.ts';
import type { Cluster } from '../kube.ts';

export const CACHE_COLUMNS = ['KEY', 'WORKFLOW', 'TASK', 'ATTEMPT', 'AGE', 'SIZE'] as const;
/** A key longer than this (characters, the ellipsis included) is cut in the table; -o json has it whole. */
export const KEY_SHOWN = 48;

/** A key for a table cell: one line, at most KEY_SHOWN characters, a cut one ending in `…`. */
export function shownKey(key: string): string {
  const chars = Array.from(oneLine(key)); // by code point: a cut never splits a surrogate pair
  return chars.length <= KEY_SHOWN ? chars.join('') : `${chars.slice(0, KEY_SHOWN - 1).join('')}…`;
}

/** A size as `812B`, `4.0KiB`, `1.5MiB`. */
export function formatBytes(n: number): string {
  if (n < 1024) return `${n}B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)}KiB`;
  return `${(n / (1024 * 1024)).toFixed(1)}MiB`;
}

export function cacheRows(items: readonly MemoItem[], now: number): string[][] {
  return items.map((m) => [
    shownKey(m.key),
    m.workflow,
    m.task,
    String(m.attempt),
    humanAge(now - Date.parse(m.createdAt)),
    formatBytes(m.bytes),
  ]);
}

export async function cacheList(c: Cluster, io: Io, o: { output?: DataFormat | 'table' }, now = Date.now()) {
  const list = await c.memoList();
  if (o.output === 'json' || o.output === 'yaml') io.out(formatData(list, o.output));
  else if (list.items.length === 0) io.err(`No memoized outputs in ${c.namespace} namespace.\n`);
  else io.out(table(CACHE_COLUMNS, cacheRows(list.items, now)));
  return 0;
}

export type ClearTarget = { key: string } | { all: true };

/** What `cache clear` drops: exactly one of --key and --all, decided before anything is sent. */
export function clearTarget(o: { key?: string; all?: boolean }): ClearTarget {
  if (o.key !== undefined && o.all) {
    throw new UsageError('--key and --all: give one of them (--key KEY for one entry, --all for every entry)');
  }
  if (o.key !== undefined) {
    if (o.key === '') throw new UsageError('--key: must not be empty');
    return { key: o.key };
  }
  if (o.all) return { all: true };
  throw new UsageError(
    'cache clear needs --key KEY (one entry) or --all (every entry of the namespace): it clears nothing by default',
  );
}

export async function cacheClear(c: Cluster, io: Io, target: ClearTarget) {
  const r = await c.memoClear('key' in target ? target.key : undefined);
  if ('key' in target) {
    const shown = JSON.stringify(shownKey(target.key));
    io.out(
      r.deleted > 0 ? `memoized output ${shown} cleared\n` : `no memoized output has key ${shown}: nothing cleared\n`,
    );
  } else {
    io.out(`${r.deleted} memoized output${r.deleted === 1 ? '' : 's'} cleared from ${c.namespace} namespace\n`);
  }
  return 0;
}
