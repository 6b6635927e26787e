// The kubeconfig resolver process (see credentials.ts): loads
// @kubernetes/client-node, resolves the kubeconfig named in argv to plain
// data, sends it to its parent over IPC and exits, taking client-node's
// memory with it.
import { KubeconfigError, type ResolverReply } from './credentials.ts';
import { resolveKubeconfig } from './kubeconfig.ts';

const send = process.send?.bind(process);
if (!send) throw new Error('credentials-child.ts runs only as a child of resolveKubeCredentials (see credentials.ts)');
const kubeconfig = process.argv[2] || undefined;
let reply: ResolverReply;
try {
  reply = { ok: true, value: await resolveKubeconfig({ kubeconfig }) };
} catch (err) {
  reply =
    err instanceof KubeconfigError
      ? { ok: false, problem: err.problem, message: err.message }
      : { ok: false, problem: 'internal', message: (err as Error).message ?? String(err) };
}
send(reply, undefined, {}, () => process.disconnect());
