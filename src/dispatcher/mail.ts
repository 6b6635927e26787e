import type { AgentMail__Output } from '../gen/agentflow/v1/AgentMail.ts';
import type { DispatcherMessage } from '../gen/agentflow/v1/DispatcherMessage.ts';
import type { WireRefusal } from './task-state.ts';
import { checkMailPayload } from './wire-checks.ts';

/** What relaying needs of an agent's connection. */
export interface MailEndpoint {
  readonly agentId: string;
  readonly namespace: string;
  send(msg: DispatcherMessage): void;
}

/**
 * Relays an agent's mail to another connected agent of the same namespace, stamped with the sender's
 * registered id (an agent cannot pose as another). The refusal when it cannot go, else undefined.
 */
export function relayMail(
  from: MailEndpoint,
  mail: AgentMail__Output,
  find: (agentId: string) => MailEndpoint | undefined,
): WireRefusal | undefined {
  const tooBig = checkMailPayload(mail.payloadJson);
  if (tooBig) return tooBig;
  const to = find(mail.toAgent);
  // Another namespace's agent is as unknown as one that is not connected: no probing across tenants.
  if (!to || to.namespace !== from.namespace)
    return { code: 'INVALID', message: `agent "${mail.toAgent}" is not connected in namespace ${from.namespace}` };
  to.send({
    mail: {
      workflow: mail.workflow,
      toAgent: mail.toAgent,
      fromAgent: from.agentId,
      topic: mail.topic,
      payloadJson: mail.payloadJson,
    },
  });
  return undefined;
}
