import { ServerCredentials } from '@grpc/grpc-js';
import { AgentAuthError, Dispatcher } from '../../../src/dispatcher/index.ts';
import { silentLogger } from '../../../src/lib/log.ts';
import type { StateStore } from '../../../src/state/index.ts';
import { WorkflowEngine } from '../../../src/workflow/engine.ts';

const refuse = async (): Promise<never> => {
  throw new AgentAuthError('InvalidToken', 'no agents in this test');
};

/** A workflow engine on the real etcd behind `store`, with a dispatcher no agent can join. */
export function engineWithoutAgents(store: StateStore): { dispatcher: Dispatcher; engine: WorkflowEngine } {
  const dispatcher = new Dispatcher({
    store,
    auth: { authenticate: refuse, authorize: refuse },
    credentials: ServerCredentials.createInsecure(),
  });
  const engine = new WorkflowEngine({
    store,
    dispatcher,
    fences: () => [],
    logger: silentLogger,
    onChange: () => undefined,
  });
  return { dispatcher, engine };
}
