// The lean transaction's bytes against etcd's own schema: what encodeTxn writes must decode, field for
// field, as the TxnRequest etcd3's protobufjs path would send, and decodeTxnAnswer must read what etcd
// answers, whatever the per-operation responses hold.
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { decodeTxnAnswer, encodeTxn, type LeanCompare, type LeanOp } from '../../../src/state/lean-txn.ts';

const require = createRequire(import.meta.url);
const protobuf = require('protobufjs') as typeof import('protobufjs');
const root = new protobuf.Root().loadSync(join(require.resolve('etcd3/package.json'), '..', 'proto', 'rpc.proto'), {
  keepCase: true,
});
const TxnRequest = root.lookupType('etcdserverpb.TxnRequest');
const TxnResponse = root.lookupType('etcdserverpb.TxnResponse');
const asObject = { longs: String, enums: String, bytes: String, oneofs: true, defaults: false } as const;

const decode = (b: Buffer) => TxnRequest.toObject(TxnRequest.decode(b), asObject);
const b64 = (s: string) => Buffer.from(s).toString('base64');

describe('lean etcd transactions', () => {
  it('encodes compares and operations as etcd reads them, zero-valued oneof members and big leases included', () => {
    const compares: LeanCompare[] = [
      { key: '/p/.always', target: 'version', result: 'greater', value: -1 },
      { key: '/p/leader', target: 'create', result: 'equal', value: 7 },
      { key: '/p/results/ns/wf/a', target: 'create', result: 'equal', value: 0 },
      { key: '/p/results/ns/wf/b', target: 'mod', result: 'equal', value: 2 ** 40 + 3 },
    ];
    const ops: LeanOp[] = [
      // A lease id past 2^53: etcd's ids are int64 and Number() would round it.
      { put: { key: '/p/results/ns/wf/a', value: '{"attempt":1}', lease: '7587881111222333444' } },
      { put: { key: '/p/results/ns/wf/ü', value: 'ünïcode ✓' } },
      { delete: { key: '/p/results/ns/wf/b' } },
    ];
    const got = decode(encodeTxn(compares, ops));
    expect(got.compare).toEqual([
      { key: b64('/p/.always'), result: 'Greater', version: '-1', target_union: 'version' },
      { key: b64('/p/leader'), target: 'Create', create_revision: '7', target_union: 'create_revision' },
      { key: b64('/p/results/ns/wf/a'), target: 'Create', create_revision: '0', target_union: 'create_revision' },
      {
        key: b64('/p/results/ns/wf/b'),
        target: 'Mod',
        mod_revision: String(2 ** 40 + 3),
        target_union: 'mod_revision',
      },
    ]);
    expect(got.success).toEqual([
      {
        request: 'request_put',
        request_put: { key: b64('/p/results/ns/wf/a'), value: b64('{"attempt":1}'), lease: '7587881111222333444' },
      },
      { request: 'request_put', request_put: { key: b64('/p/results/ns/wf/ü'), value: b64('ünïcode ✓') } },
      { request: 'request_delete_range', request_delete_range: { key: b64('/p/results/ns/wf/b') } },
    ]);
    expect(got.failure).toBeUndefined();
  });

  it('writes values whose length prefix is longer or shorter than its reserved 3 bytes', () => {
    const big = 'x'.repeat(3 * 1024 * 1024); // a 4-byte length prefix
    const got = decode(
      encodeTxn(
        [{ key: 'k', target: 'mod', result: 'equal', value: 1 }],
        [{ put: { key: 'k', value: big } }, { put: { key: 'k2', value: '' } }],
      ),
    );
    expect(Buffer.from(got.success[0].request_put.value, 'base64').length).toBe(big.length);
    expect(got.success[1].request_put).toEqual({ key: b64('k2'), value: '' });
  });

  it('reads succeeded and the revision, skipping every per-operation response', () => {
    const answer = (o: object) => Buffer.from(TxnResponse.encode(TxnResponse.fromObject(o)).finish());
    const header = { cluster_id: '14841639068965178418', member_id: '10276657743932975437', raft_term: '9' };
    const responses = Array.from({ length: 3 }, () => ({
      response_put: { header: { ...header, revision: '12' }, prev_kv: { key: b64('x'), value: b64('y') } },
    }));
    expect(
      decodeTxnAnswer(answer({ header: { ...header, revision: '123456789012' }, succeeded: true, responses })),
    ).toEqual({ succeeded: true, revision: 123456789012 });
    expect(decodeTxnAnswer(answer({ header: { ...header, revision: '5' }, succeeded: false }))).toEqual({
      succeeded: false,
      revision: 5,
    });
    const whole = answer({ header: { ...header, revision: '5' }, succeeded: true, responses });
    expect(() => decodeTxnAnswer(whole.subarray(0, whole.length - 2))).toThrow(/etcd TxnResponse/);
  });
});
