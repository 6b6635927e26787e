// Child process of bench/dispatch.ts: W agents, each with its own etcd lease
// and gRPC stream, answering every Assign at once with an empty result (a
// no-op handler), so the benchmark measures the dispatcher and etcd.
// Prints one JSON line per Assign received: {at: epoch ms (high-res), id}.
import { credentials } from '@grpc/grpc-js';
import type { DispatcherMessage__Output } from '../../src/gen/agentflow/v1/DispatcherMessage.ts';
import { agentflowProto, KEEPALIVE_OPTIONS } from '../../src/lib/proto.ts';
import { StateStore } from '../../src/state/index.ts';

const [port, etcd, agentsArg, capacityArg] = process.argv.slice(2);
const store = new StateStore({ endpoints: [etcd as string], prefix: '/bench' });
const now = () => performance.timeOrigin + performance.now();
const Client = agentflowProto().agentflow.v1.Dispatcher;
const out: string[] = [];
const flush = () => {
  if (out.length) process.stdout.write(`${out.splice(0).join('\n')}\n`);
};
setInterval(flush, 50);
for (let i = 0; i < Number(agentsArg); i++) {
  const session = await store.session(10);
  const client = new Client(`127.0.0.1:${port}`, credentials.createInsecure(), KEEPALIVE_OPTIONS);
  const stream = client.Connect();
  stream.on('data', (m: DispatcherMessage__Output) => {
    if (m.msg !== 'assign' || !m.assign) return;
    const a = m.assign;
    out.push(JSON.stringify({ at: now(), id: a.taskId }));
    stream.write({ result: { taskId: a.taskId, attempt: a.attempt, token: a.token, outputJson: 'null' } });
  });
  stream.write({
    register: {
      namespace: 'bench',
      pool: 'noop',
      agentId: `agent-${i}`,
      pod: `pod-${i}`,
      handlers: ['noop'],
      capacity: Number(capacityArg),
      leaseId: session.id,
      inFlight: [],
      runtimeVersion: 'bench',
    },
  });
}
process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
process.on('SIGTERM', () => {
  flush();
  process.exit(0);
});
