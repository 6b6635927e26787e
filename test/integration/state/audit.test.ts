import { createHash } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import {
  AUDIT_BATCH,
  AUDIT_BLOCK_BYTES,
  type AuditEvent,
  AuditLog,
  FencedError,
  StateError,
  type StateStore,
} from '../../../src/state/index.ts';
import { tamperAuditEntry, testStore } from './helpers.ts';

const prefix = `/test-audit-${Date.now()}`;
const stores: StateStore[] = [];
const open = () => {
  const s = testStore(prefix);
  stores.push(s);
  return s;
};
afterAll(() => {
  for (const s of stores) s.close();
});

let n = 0;
const nextWorkflow = () => {
  n += 1;
  return `wf-${n}`;
};
/** A log of its own for each test. */
const freshLog = (store: StateStore): AuditLog => new AuditLog(store, 'ns', nextWorkflow());

const events = (count: number, tag: string): AuditEvent[] =>
  Array.from({ length: count }, (_, i) => ({
    type: 'task.dispatched',
    task: `${tag}.${i}`,
    attempt: 1,
    agentId: 'agent-a',
    detail: { i, tag },
  }));

const revision = async (store: StateStore) => Number((await store.client.get('/').exec()).header.revision);
const keysUnder = async (store: StateStore, log: AuditLog) => (await store.list(`${log.base}/`)).entries;

/** A log of 10 entries in one block to tamper with. */
async function tenEntries(): Promise<{ store: StateStore; log: AuditLog }> {
  const store = open();
  const log = freshLog(store);
  await log.append(events(10, 't'));
  expect((await log.verify()).ok).toBe(true);
  return { store, log };
}

/** A log of 10 entries in three blocks (seq 1..4, 5..7, 8..10). */
async function threeBlocks(): Promise<{ store: StateStore; log: AuditLog }> {
  const store = open();
  const log = freshLog(store);
  await log.append(events(4, 'p'));
  await log.append(events(3, 'q'));
  await log.append(events(3, 'r'));
  expect((await store.list(`${log.base}/e/`)).entries.map((b) => Number(b.key.slice(-12)))).toEqual([1, 5, 8]);
  expect((await log.verify()).ok).toBe(true);
  return { store, log };
}

describe('audit log', () => {
  it('appends in order with seq 1..N, 250 events per transaction in blocks of at most 16 KiB, and verifies', async () => {
    const store = open();
    const log = freshLog(store);
    expect(await log.verify()).toEqual({ ok: true, entries: 0, head: '' });
    expect(await log.list()).toEqual([]);

    const a = await log.append(events(5, 'a'));
    const before = await revision(store);
    const b = await log.append(events(600, 'b'));
    const after = await revision(store);
    // 600 events = 3 transactions (250 + 250 + 100), each one etcd revision.
    expect(AUDIT_BATCH).toBe(250);
    expect(after - before).toBe(3);
    const c = await log.append([
      { type: 'workflow.finished', detail: { z: 1, a: { y: [2, { d: 1, c: 0 }], b: null } } },
    ]);

    // Each key is a block: a JSON array of consecutive entries starting at the key's seq, at most
    // AUDIT_BLOCK_BYTES, all the blocks of one transaction at its revision.
    const blocks = (await store.list(`${log.base}/e/`)).entries;
    const perRevision = new Map<number, number>();
    let next = 1;
    for (const block of blocks) {
      const items = JSON.parse(block.value) as { seq: number }[];
      expect(Array.isArray(items)).toBe(true);
      expect(items[0]?.seq).toBe(Number(block.key.slice(-12)));
      expect(items.map((e) => e.seq)).toEqual(Array.from({ length: items.length }, (_, i) => next + i));
      next += items.length;
      expect(Buffer.byteLength(block.value)).toBeLessThanOrEqual(AUDIT_BLOCK_BYTES);
      if (block.modRevision > before && block.modRevision <= after) {
        perRevision.set(block.modRevision, (perRevision.get(block.modRevision) ?? 0) + items.length);
      }
    }
    expect(next).toBe(607);
    expect([...perRevision.values()]).toEqual([250, 250, 100]);
    // Blocks are filled: far fewer keys than entries (~48 entries of ~330 bytes each per block).
    expect(blocks.length).toBeLessThanOrEqual(20);

    const all = await log.list();
    expect(all).toHaveLength(606);
    expect(all.map((e) => e.seq)).toEqual(Array.from({ length: 606 }, (_, i) => i + 1));
    expect(all).toEqual([...a, ...b, ...c]);
    expect(all.slice(5, 605).map((e) => e.task)).toEqual(events(600, 'b').map((e) => e.task));
    expect(all[0]?.prev).toBe('');
    for (let i = 1; i < all.length; i++) expect(all[i]?.prev).toBe(all[i - 1]?.hash);

    // The hash is sha256 over the canonical JSON: fixed key order, detail keys sorted at every depth.
    const last = all[605];
    expect(last).toMatchObject({ seq: 606, type: 'workflow.finished' });
    const canonical = `{"seq":606,"at":${JSON.stringify(last?.at)},"type":"workflow.finished","detail":{"a":{"b":null,"y":[2,{"c":0,"d":1}]},"z":1},"prev":"${all[604]?.hash}"}`;
    expect(last?.hash).toBe(createHash('sha256').update(canonical).digest('hex'));
    expect(Number.isNaN(Date.parse(last?.at ?? ''))).toBe(false);

    const result = await log.verify();
    expect(result).toEqual({ ok: true, entries: 606, head: last?.hash });
  });

  it('puts an event larger than a block in a block of its own', async () => {
    const store = open();
    const log = freshLog(store);
    const big = 'x'.repeat(AUDIT_BLOCK_BYTES);
    await log.append([...events(3, 'small'), { type: 'big', detail: { big } }, ...events(2, 'after')]);
    const blocks = (await store.list(`${log.base}/e/`)).entries;
    expect(blocks.map((b) => [Number(b.key.slice(-12)), (JSON.parse(b.value) as unknown[]).length])).toEqual([
      [1, 3],
      [4, 1],
      [5, 2],
    ]);
    expect(await log.verify()).toMatchObject({ ok: true, entries: 6 });
    expect((await log.list())[3]?.detail).toEqual({ big });
  });

  it('reports an entry whose content was rewritten as altered, and nothing else', async () => {
    const { store, log } = await tenEntries();
    await tamperAuditEntry(store, log.base, 4, (e) => ({ ...e, detail: { i: 999, tag: 't' } }));
    expect(await log.verify()).toEqual({
      ok: false,
      entries: 10,
      problems: [{ seq: 4, problem: expect.stringContaining('altered') }],
    });
  });

  it('reports a deleted block as its entries missing', async () => {
    const { store, log } = await threeBlocks();
    await store.client.delete().key(log.entryKey(5));
    const result = await log.verify();
    expect(result).toEqual({ ok: false, entries: 7, problems: [{ seq: 5, problem: 'entries 5..7 missing' }] });
  });

  it('catches an entry cut out of the middle of a block', async () => {
    const { store, log } = await tenEntries();
    await tamperAuditEntry(store, log.base, 6, () => undefined);
    const result = await log.verify();
    expect(result.ok).toBe(false);
    expect(!result.ok && result.problems.slice(0, 2)).toEqual([
      { seq: 6, problem: 'stored as seq 6 but records seq 7' },
      { seq: 6, problem: 'chain broken: prev does not match the hash of entry 5' },
    ]);
    expect(!result.ok && result.problems.at(-1)).toEqual({
      seq: 10,
      problem: 'head does not match the last entry: the head is at seq 10 but the last entry is seq 9',
    });
  });

  it('detects removal of the newest entry: the head no longer matches the last entry', async () => {
    const { store, log } = await tenEntries();
    await tamperAuditEntry(store, log.base, 10, () => undefined);
    const result = await log.verify();
    expect(result.ok).toBe(false);
    expect(!result.ok && result.problems).toEqual([
      { seq: 10, problem: expect.stringContaining('head does not match the last entry') },
    ]);
  });

  it('catches an attacker who rewrites an entry and re-hashes it: the chain breaks at the next entry', async () => {
    const { store, log } = await tenEntries();
    const entries = await log.list();
    const victim = entries[6];
    if (!victim) throw new Error('no entry 7');
    const { hash: _old, ...body } = victim;
    const forged = { ...body, agentId: 'mallory', detail: { forged: true } };
    const canonical = `{"seq":7,"at":${JSON.stringify(forged.at)},"type":"task.dispatched","task":"t.6","attempt":1,"agentId":"mallory","detail":{"forged":true},"prev":"${forged.prev}"}`;
    const hash = createHash('sha256').update(canonical).digest('hex');
    await tamperAuditEntry(store, log.base, 7, () => ({ ...forged, hash }));
    expect((await log.list())[6]).toMatchObject({ agentId: 'mallory', hash });
    expect(await log.verify()).toEqual({
      ok: false,
      entries: 10,
      problems: [{ seq: 8, problem: expect.stringContaining('chain broken') }],
    });
  });

  it('reports undecodable blocks, overlapping and empty ones, and entries beyond the head; append refuses to overwrite them', async () => {
    const { store, log } = await threeBlocks();
    await store.client.put(log.entryKey(5)).value('{not json');
    await store.client.put(log.entryKey(11)).value('{"sneaked":true}');
    const result = await log.verify();
    expect(!result.ok && result.problems).toEqual([
      { seq: 5, problem: 'not valid JSON' },
      { seq: 11, problem: expect.stringContaining('not an audit entry') },
      { seq: 11, problem: expect.stringContaining('head does not match the last entry') },
    ]);
    await expect(log.list()).rejects.toThrow(`${log.entryKey(5)}: is not an audit block: not valid JSON`);
    const rev = await revision(store);
    await expect(log.append(events(1, 'x'))).rejects.toThrow(StateError);
    await expect(log.append(events(1, 'x'))).rejects.toThrow('an entry already exists after the head (seq 10)');
    expect(await revision(store)).toBe(rev);

    const other = await threeBlocks();
    const copy = (await other.store.get(other.log.entryKey(1)))?.value ?? '';
    await other.store.client.put(other.log.entryKey(3)).value(copy);
    await other.store.client.put(other.log.entryKey(8)).value('[]');
    const more = await other.log.verify();
    expect(!more.ok && more.problems.slice(0, 3)).toEqual([
      { seq: 3, problem: 'a block starts at seq 3, inside the block before it (which ends at seq 4)' },
      { seq: 3, problem: 'stored as seq 3 but records seq 1' },
      { seq: 4, problem: 'stored as seq 4 but records seq 2' },
    ]);
    expect(!more.ok && more.problems).toContainEqual({ seq: 8, problem: 'an empty block' });
  });

  it('reads, verifies and appends to a log written one entry per key (before blocks)', async () => {
    const store = open();
    const source = freshLog(store);
    const written = await source.append(events(10, 'old'));
    // The same entries as the older layout stored them: each its own key, the head as it was.
    const log = freshLog(store);
    for (const e of written) await store.client.put(log.entryKey(e.seq)).value(JSON.stringify(e));
    await store.client.put(log.headKey).value((await store.get(source.headKey))?.value ?? '');
    expect(await log.list()).toEqual(written);
    expect(await log.verify()).toEqual({ ok: true, entries: 10, head: written[9]?.hash });

    const appended = await log.append(events(5, 'new'));
    expect(appended.map((e) => e.seq)).toEqual([11, 12, 13, 14, 15]);
    expect(appended[0]?.prev).toBe(written[9]?.hash);
    expect(await keysUnder(store, log)).toHaveLength(12); // 10 old keys, 1 block, the head
    expect(await log.verify()).toMatchObject({ ok: true, entries: 15 });

    await tamperAuditEntry(store, log.base, 4, (e) => ({ ...e, agentId: 'mallory' }));
    await store.client.delete().key(log.entryKey(7));
    expect(await log.verify()).toEqual({
      ok: false,
      entries: 14,
      problems: [
        { seq: 4, problem: 'altered: its hash does not match its content' },
        { seq: 7, problem: 'entry 7 missing' },
      ],
    });
  });

  it('4 concurrent appenders x 50 appends: 200 entries, no seq twice, each appender in its own order, verify ok', async () => {
    const wf = nextWorkflow();
    const base = new AuditLog(open(), 'ns', wf);
    // Each appender has a client of its own.
    const appenders = ['p', 'q', 'r', 's'].map((name) => ({ name, log: new AuditLog(open(), 'ns', wf) }));
    const returned = await Promise.all(
      appenders.map(async ({ name, log }) => {
        const mine = [];
        for (let i = 0; i < 50; i++) mine.push(...(await log.append([{ type: 'step', agentId: name, detail: { i } }])));
        return mine;
      }),
    );
    const all = await base.list();
    expect(all).toHaveLength(200);
    expect(all.map((e) => e.seq)).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));
    const returnedSeqs = returned.flat().map((e) => e.seq);
    expect(new Set(returnedSeqs).size).toBe(200);
    for (const { name } of appenders) {
      expect(all.filter((e) => e.agentId === name).map((e) => e.detail?.i)).toEqual(
        Array.from({ length: 50 }, (_, i) => i),
      );
    }
    // The appenders' view of what they wrote is what the log holds.
    expect(returned.flat().sort((x, y) => x.seq - y.seq)).toEqual(all);
    expect(await base.verify()).toMatchObject({ ok: true, entries: 200 });
  });

  it('an append that races a delete() starts a new chain at seq 1 instead of continuing the deleted one', async () => {
    const store = open();
    const wf = nextWorkflow();
    await new AuditLog(store, 'ns', wf).append(events(10, 'old'));
    // An appender that has not appended yet (a new leader, say) reads the head first.
    const log = new AuditLog(store, 'ns', wf);
    const other = new AuditLog(open(), 'ns', wf);
    // Right after the appender reads the head, someone else deletes the log.
    const get = store.get.bind(store);
    let raced = false;
    store.get = async (key) => {
      const got = await get(key);
      if (key === log.headKey && !raced) {
        raced = true;
        await other.delete();
      }
      return got;
    };
    const appended = await log.append(events(2, 'new'));
    expect(raced).toBe(true);
    expect(appended.map((e) => [e.seq, e.task])).toEqual([
      [1, 'new.0'],
      [2, 'new.1'],
    ]);
    expect(appended[0]?.prev).toBe('');
    expect(await log.verify()).toMatchObject({ ok: true, entries: 2 });
  });

  it('returnEntries: false writes the same entries and returns none', async () => {
    const store = open();
    const log = freshLog(store);
    expect(await log.append(events(130, 'quiet'), [], { returnEntries: false })).toEqual([]);
    const listed = await log.list();
    expect(listed.map((e) => [e.seq, e.task, e.detail])).toEqual(
      Array.from({ length: 130 }, (_, i) => [i + 1, `quiet.${i}`, { i, tag: 'quiet' }]),
    );
    const next = await log.append(events(1, 'loud'));
    expect(next).toEqual([(await log.list())[130]]);
    expect(await log.verify()).toMatchObject({ ok: true, entries: 131 });
  });

  it('an appender that remembers the head it wrote notices appends and a delete by others since', async () => {
    const store = open();
    const wf = nextWorkflow();
    const log = new AuditLog(store, 'ns', wf);
    const other = new AuditLog(open(), 'ns', wf);
    await log.append(events(3, 'mine'));
    await other.append(events(2, 'theirs'));
    expect((await log.append(events(1, 'after'))).map((e) => e.seq)).toEqual([6]);
    await other.delete();
    const appended = await log.append(events(2, 'new'));
    expect(appended.map((e) => [e.seq, e.prev])).toEqual([
      [1, ''],
      [2, appended[0]?.hash],
    ]);
    expect(await log.verify()).toMatchObject({ ok: true, entries: 2 });
  });

  it('a stale fence refuses the append with FencedError and writes nothing; a current one lets it through', async () => {
    const store = open();
    const log = freshLog(store);
    await log.append(events(3, 'before'));
    const fenceKey = store.key('fences', `leader-${n}`);
    await store.client.put(fenceKey).value('old leader');
    const old = { key: fenceKey, createRevision: (await store.get(fenceKey))?.createRevision ?? 0 };
    await store.client.delete().key(fenceKey);
    await store.client.put(fenceKey).value('new leader');
    const current = { key: fenceKey, createRevision: (await store.get(fenceKey))?.createRevision ?? 0 };
    expect(current.createRevision).not.toBe(old.createRevision);

    const listed = await log.list();
    const rev = await revision(store);
    await expect(log.append(events(5, 'stale'), [current, old])).rejects.toBeInstanceOf(FencedError);
    await expect(log.append(events(250, 'stale'), [old])).rejects.toThrow('held by someone newer');
    expect(await revision(store)).toBe(rev);
    expect(await log.list()).toEqual(listed);

    const ok = await log.append(events(2, 'fenced'), [current]);
    expect(ok.map((e) => e.seq)).toEqual([4, 5]);
    expect(await log.verify()).toMatchObject({ ok: true, entries: 5 });
  });

  it('delete() removes every key of the log, fenced, and leaves other workflows alone', async () => {
    const store = open();
    const log = freshLog(store);
    const other = freshLog(store);
    await log.append(events(130, 'gone'));
    await other.append(events(2, 'kept'));
    const keys = (await keysUnder(store, log)).length;
    expect(keys).toBe(4); // 130 entries in 3 blocks + head

    const fenceKey = store.key('fences', `cleanup-${n}`);
    await store.client.put(fenceKey).value('x');
    const created = (await store.get(fenceKey))?.createRevision ?? 0;
    await expect(log.delete([{ key: fenceKey, createRevision: created + 1 }])).rejects.toBeInstanceOf(FencedError);
    expect(await keysUnder(store, log)).toHaveLength(keys);

    await log.delete([{ key: fenceKey, createRevision: created }]);
    expect(await keysUnder(store, log)).toEqual([]);
    expect(await log.verify()).toEqual({ ok: true, entries: 0, head: '' });
    expect(await other.verify()).toMatchObject({ ok: true, entries: 2 });
    // A new log starts again at seq 1.
    expect((await log.append(events(1, 'again')))[0]).toMatchObject({ seq: 1, prev: '' });
  });
});
