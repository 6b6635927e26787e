import { EventEmitter } from 'node:events';
import type { ServerDuplexStream } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { AgentConn, MAX_OUTBOUND_BYTES } from '../../../src/dispatcher/agent-conn.ts';
import type { AgentMessage__Output } from '../../../src/gen/agentflow/v1/AgentMessage.ts';
import type { DispatcherMessage } from '../../../src/gen/agentflow/v1/DispatcherMessage.ts';
import { silentLogger } from '../../../src/lib/log.ts';
import { KeptLease } from '../../../src/state/agent-leases.ts';

// The outbound queue of one agent stream with a stand-in for the gRPC stream: backpressure is
// honoured in order, and an agent that stops reading is cut off by bytes as well as by count.

class FakeStream extends EventEmitter {
  written: DispatcherMessage[] = [];
  accepting = false;
  ended = false;
  write(m: DispatcherMessage): boolean {
    this.written.push(m);
    return this.accepting;
  }
  end(): void {
    this.ended = true;
  }
}

function conn(stream: FakeStream): AgentConn {
  return new AgentConn(
    { agentId: 'a', namespace: 'ns', pool: 'p', pod: '', handlers: ['h'], capacity: 2 },
    new KeptLease('1', 10),
    { username: 'u', groups: [], serviceAccountNamespace: 'ns', expiresAt: Date.now() + 60_000 },
    stream as unknown as ServerDuplexStream<AgentMessage__Output, DispatcherMessage>,
    silentLogger,
  );
}

const mail = (n: number, bytes = 10): DispatcherMessage => ({
  mail: { workflow: 'wf', toAgent: 'a', fromAgent: 'b', topic: String(n), payloadJson: 'x'.repeat(bytes) },
});

describe('AgentConn outbound queue', () => {
  it('holds messages while the stream is full and sends them in order on drain', () => {
    const s = new FakeStream();
    const c = conn(s);
    c.send(mail(1)); // written, but the stream says "full"
    c.send(mail(2));
    c.send(mail(3));
    expect(s.written.map((m) => m.mail?.topic)).toEqual(['1']);
    s.accepting = true;
    s.emit('drain');
    expect(s.written.map((m) => m.mail?.topic)).toEqual(['1', '2', '3']);
    expect(c.closed).toBe(false);
  });

  it('cuts off an agent that stops reading once the queued bytes pass the limit, long before the count limit', () => {
    const s = new FakeStream();
    const c = conn(s);
    c.send(mail(0)); // the stream is now full
    const big = 3 * 1024 * 1024;
    const fits = Math.floor(MAX_OUTBOUND_BYTES / big);
    for (let i = 1; i <= fits; i++) c.send(mail(i, big));
    expect(c.closed).toBe(false);
    c.send(mail(fits + 1, big));
    expect(c.closed).toBe(true);
    expect(s.ended).toBe(true);
    expect(fits).toBeLessThan(100); // bytes, not the 10,000-message count, decided
  });
});
