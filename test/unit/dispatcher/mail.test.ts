import { describe, expect, it } from 'vitest';
import { type MailEndpoint, relayMail } from '../../../src/dispatcher/mail.ts';
import type { AgentMail__Output } from '../../../src/gen/agentflow/v1/AgentMail.ts';
import type { DispatcherMessage } from '../../../src/gen/agentflow/v1/DispatcherMessage.ts';
import { MAX_PAYLOAD_BYTES } from '../../../src/lib/proto.ts';

// Mail between connected agents: stamped with the sender's registered id, kept within a namespace
// without telling the sender whether an agent of that name exists elsewhere, and bounded in size.

class Endpoint implements MailEndpoint {
  readonly inbox: DispatcherMessage[] = [];
  readonly agentId: string;
  readonly namespace: string;
  constructor(agentId: string, namespace: string) {
    this.agentId = agentId;
    this.namespace = namespace;
  }
  send(msg: DispatcherMessage): void {
    this.inbox.push(msg);
  }
}

function directory(...eps: Endpoint[]) {
  const looked: string[] = [];
  return {
    looked,
    find: (id: string) => {
      looked.push(id);
      return eps.find((e) => e.agentId === id);
    },
  };
}

const mail = (o: Partial<AgentMail__Output> = {}): AgentMail__Output => ({
  workflow: 'wf',
  toAgent: 'bob',
  fromAgent: '',
  topic: 'hello',
  payloadJson: '{"n":1}',
  ...o,
});

describe('relayMail', () => {
  it("delivers to the agent named, stamped with the sender's registered id whatever fromAgent it claimed", () => {
    const alice = new Endpoint('alice', 'research');
    const bob = new Endpoint('bob', 'research');
    const { find } = directory(alice, bob);
    expect(relayMail(alice, mail({ fromAgent: 'mallory' }), find)).toBeUndefined();
    expect(bob.inbox).toEqual([
      { mail: { workflow: 'wf', toAgent: 'bob', fromAgent: 'alice', topic: 'hello', payloadJson: '{"n":1}' } },
    ]);
    expect(alice.inbox).toEqual([]);
  });

  it('refuses an agent of another namespace exactly as one that is not connected, sending nothing', () => {
    const alice = new Endpoint('alice', 'research');
    const bobElsewhere = new Endpoint('bob', 'finance');
    const { find } = directory(alice, bobElsewhere);
    const refusal = { code: 'INVALID', message: 'agent "bob" is not connected in namespace research' };
    expect(relayMail(alice, mail({ toAgent: 'bob' }), find)).toEqual(refusal);
    expect(bobElsewhere.inbox).toEqual([]);
    // The same words for a name nobody has: nothing tells the two cases apart.
    expect(relayMail(alice, mail({ toAgent: 'carol' }), find)).toEqual({
      code: 'INVALID',
      message: 'agent "carol" is not connected in namespace research',
    });
  });

  it('refuses a payload over MAX_PAYLOAD_BYTES (in UTF-8 bytes) before looking anyone up', () => {
    const alice = new Endpoint('alice', 'research');
    const bob = new Endpoint('bob', 'research');
    const { find, looked } = directory(alice, bob);
    expect(relayMail(alice, mail({ payloadJson: `"${'é'.repeat(MAX_PAYLOAD_BYTES / 2)}"` }), find)).toEqual({
      code: 'PAYLOAD_TOO_LARGE',
      message: `mail payload over ${MAX_PAYLOAD_BYTES} bytes`,
    });
    expect(looked).toEqual([]);
    expect(bob.inbox).toEqual([]);
    const exact = `"${'a'.repeat(MAX_PAYLOAD_BYTES - 2)}"`;
    expect(relayMail(alice, mail({ payloadJson: exact }), find)).toBeUndefined();
    expect(bob.inbox[0]?.mail?.payloadJson).toBe(exact);
  });
});
