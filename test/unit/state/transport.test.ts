// How etcd failures are typed: what may be retried, what may have applied.
import { describe, expect, it } from 'vitest';
import { EtcdUnavailableError, OutcomeUnknownError, RequestTooLargeError } from '../../../src/state/errors.ts';
import { classify, isReadOnly } from '../../../src/state/transport.ts';

describe('classify', () => {
  const write = (message: string) => classify(new Error(message), 'KV', 'txn', false);
  const read = (message: string) => classify(new Error(message), 'KV', 'range', true);

  it('a write that never left (refused connection, no leader, load shed) is unavailable and retryable', () => {
    for (const m of [
      '14 UNAVAILABLE: No connection established. Last error: connect ECONNREFUSED 127.0.0.1:2379',
      'etcdserver: no leader',
      '8 RESOURCE_EXHAUSTED: etcdserver: too many requests',
    ]) {
      const c = write(m);
      expect(c.error).toBeInstanceOf(EtcdUnavailableError);
      expect(c.retryable).toBe(true);
    }
  });

  it('a write sent without an answer (deadline, dropped connection, leader change) may have applied', () => {
    for (const m of [
      '4 DEADLINE_EXCEEDED: Deadline exceeded after 5.001s,LB pick: 0.001s,remote_addr=127.0.0.1:32839',
      '14 UNAVAILABLE: Connection dropped',
      'etcdserver: leader changed',
      'etcdserver: request timed out',
    ]) {
      const c = write(m);
      expect(c.error).toBeInstanceOf(OutcomeUnknownError);
      expect(c.error.message).toContain('may or may not have applied');
      expect(c.retryable).toBe(false);
    }
  });

  it('a read that timed out or lost its connection is retryable, typed by kind', () => {
    const t = read('4 DEADLINE_EXCEEDED: Deadline exceeded after 5.001s');
    expect(t.error).toBeInstanceOf(EtcdUnavailableError);
    expect((t.error as EtcdUnavailableError).kind).toBe('timeout');
    expect(t.retryable).toBe(true);
    expect((read('14 UNAVAILABLE: Connection dropped').error as EtcdUnavailableError).kind).toBe('unavailable');
  });

  it('size limits are RequestTooLarge (nothing applied), other answers pass through untouched', () => {
    expect(write('3 INVALID_ARGUMENT: etcdserver: request is too large').error).toBeInstanceOf(RequestTooLargeError);
    expect(read('8 RESOURCE_EXHAUSTED: Received message larger than max (5242880 vs 4194304)').error).toBeInstanceOf(
      RequestTooLargeError,
    );
    const lease = new Error('etcdserver: requested lease not found');
    expect(write(lease.message).error.message).toBe(lease.message);
    expect(classify(lease, 'KV', 'txn', false).error).toBe(lease);
  });
});

describe('isReadOnly', () => {
  it('a txn of ranges only is a read; one that puts or deletes is a write; lease grants write', () => {
    expect(isReadOnly('KV', 'txn', { success: [{ request_range: {} }], failure: [{ request_range: {} }] })).toBe(true);
    expect(isReadOnly('KV', 'txn', { success: [{ request_range: {} }, { request_put: {} }] })).toBe(false);
    expect(isReadOnly('KV', 'range', {})).toBe(true);
    expect(isReadOnly('KV', 'put', {})).toBe(false);
    expect(isReadOnly('Lease', 'leaseGrant', {})).toBe(false);
    expect(isReadOnly('Lease', 'leaseTimeToLive', {})).toBe(true);
  });
});
