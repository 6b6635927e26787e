import { FencedError } from './errors.ts';
import type { Fence, StateStore } from './store.ts';

/** After a failed fenced transaction: which fence no longer holds, if any. */
export async function fenceError(store: StateStore, fences: Fence[]): Promise<FencedError | undefined> {
  for (const f of fences) {
    const now = await store.get(f.key);
    if (!now)
      return new FencedError(
        f.key,
        `no longer held (fencing token ${f.createRevision}; the key is gone: its lease expired or it was released)`,
      );
    if (now.createRevision !== f.createRevision) {
      return new FencedError(
        f.key,
        `held by someone newer (fencing token ${f.createRevision}, current ${now.createRevision})`,
      );
    }
  }
  return undefined;
}
