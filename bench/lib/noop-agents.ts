// Child process of bench/dispatch.ts: W agents, each its own gRPC stream
// (TLS and a bearer token unless the dispatcher runs the plaintext baseline;
// the dispatcher grants and keeps their etcd leases), answering every Assign
// at once with an empty result (a no-op handler), so the benchmark measures
// the dispatcher and etcd.
//   node bench/lib/noop-agents.ts <port> <agents> <capacity> <token file> [<CA file> <server name>]
// Prints one JSON line per Assign received: {at: epoch ms (high-res), id}.
import { readFileSync } from 'node:fs';
import { credentials, Metadata } from '@grpc/grpc-js';
import type { DispatcherMessage__Output } from '../../src/gen/agentflow/v1/DispatcherMessage.ts';
import { agentflowProto, KEEPALIVE_OPTIONS } from '../../src/lib/proto.ts';

const [port, agentsArg, capacityArg, tokenFile, caFile, serverName] = process.argv.slice(2);
if (!port || !agentsArg || !capacityArg || !tokenFile) {
  throw new Error('usage: noop-agents.ts <port> <agents> <capacity> <token file> [<CA file> <server name>]');
}
const token = readFileSync(tokenFile, 'utf8').trim();
const channel = caFile ? credentials.createSsl(readFileSync(caFile)) : credentials.createInsecure();
const now = () => performance.timeOrigin + performance.now();
const Client = agentflowProto().agentflow.v1.Dispatcher;
const out: string[] = [];
const flush = () => {
  if (out.length) process.stdout.write(`${out.splice(0).join('\n')}\n`);
};
setInterval(flush, 50);
const registered: Promise<void>[] = [];
for (let i = 0; i < Number(agentsArg); i++) {
  const client = new Client(`127.0.0.1:${port}`, channel, {
    ...KEEPALIVE_OPTIONS,
    ...(serverName && { 'grpc.ssl_target_name_override': serverName, 'grpc.default_authority': serverName }),
  });
  const md = new Metadata();
  md.set('authorization', `Bearer ${token}`);
  const stream = client.Connect(md);
  registered.push(
    new Promise((resolve, reject) => {
      stream.on('error', reject);
      stream.on('data', (m: DispatcherMessage__Output) => {
        if (m.msg === 'registered') {
          // The dispatcher keeps the lease only while it hears from the agent.
          setInterval(() => stream.write({ heartbeat: { draining: false } }), 2_000).unref();
          resolve();
        }
        if (m.msg !== 'assign' || !m.assign) return;
        const a = m.assign;
        out.push(JSON.stringify({ at: now(), id: a.taskId }));
        stream.write({ result: { taskId: a.taskId, attempt: a.attempt, token: a.token, outputJson: 'null' } });
      });
    }),
  );
  stream.write({
    register: {
      namespace: 'bench',
      pool: 'noop',
      agentId: `agent-${i}`,
      pod: `pod-${i}`,
      handlers: ['noop'],
      capacity: Number(capacityArg),
      // Empty: the dispatcher grants the lease.
      leaseId: '',
      inFlight: [],
      runtimeVersion: 'bench',
    },
  });
}
await Promise.all(registered);
process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
process.on('SIGTERM', () => {
  flush();
  process.exit(0);
});
