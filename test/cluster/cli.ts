// `npm run cluster:up | cluster:down | cluster:status`: a local control plane
// for manual use. `up` starts a detached runner process that owns the servers
// and the process kubelet, waits until it is ready and prints the KUBECONFIG.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, openSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { repoRoot } from './binaries.ts';
import { type ClusterInfo, ControlPlane } from './control-plane.ts';
import { localImages } from './images.ts';
import { waitFor } from './managed-process.ts';
import { RestClient } from './rest.ts';
import { stopUiProxy } from './ui-pid.ts';

const dir = process.env.AGENTFLOW_CLUSTER_DIR ?? join(repoRoot, '.cluster');

function alive(pid: number | undefined): boolean {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function running(): ClusterInfo | undefined {
  if (!existsSync(join(dir, 'cluster.json'))) return undefined;
  const info = ControlPlane.readInfo(dir);
  return alive(info.pids.runner) ? info : undefined;
}

function describe(info: ClusterInfo): string {
  return [
    `Local control plane is up (Kubernetes ${info.kubeVersion}).`,
    `  API server:        ${info.server}`,
    `  agentflow etcd:    ${info.stateEtcdEndpoint ?? '-'}`,
    ...(info.stateEtcd
      ? [
          `                     TLS and auth on: CA ${info.stateEtcd.caFile}`,
          `                     client certificates: ${info.stateEtcd.operatorCert.cert} (user agentflow-operator),`,
          `                     ${info.stateEtcd.rootCert.cert} (user root), each with its .key`,
        ]
      : []),
    `  logs and data:     ${info.dir}`,
    '',
    `  export KUBECONFIG=${info.kubeconfig}`,
    '  kubectl get nodes',
    '',
    'Stop it with: npm run cluster:down',
  ].join('\n');
}

async function up(): Promise<void> {
  const existing = running();
  if (existing) {
    console.log(describe(existing));
    return;
  }
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const log = openSync(join(dir, 'runner.log'), 'a');
  const child = spawn(process.execPath, [join(repoRoot, 'test/cluster/cli.ts'), 'serve'], {
    detached: true,
    stdio: ['ignore', log, log],
    env: process.env,
  });
  child.unref();
  const started = Date.now();
  console.error(
    `Starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the process kubelet in ${dir} ...`,
  );
  await waitFor(
    'the control plane to come up (see .cluster/runner.log)',
    () => {
      if (!alive(child.pid)) throw new Error(`the runner exited; see ${join(dir, 'runner.log')}`);
      return running() !== undefined;
    },
    180_000,
    250,
  );
  const info = running() as ClusterInfo;
  const client = RestClient.fromKubeconfig(info.kubeconfig);
  await waitFor(
    'nodes to be Ready',
    async () => {
      const nodes = await client.get<{ items: { status?: { conditions?: { type: string; status: string }[] } }[] }>(
        '/api/v1/nodes',
      );
      return (
        nodes.items.length > 0 &&
        nodes.items.every((n) => n.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True'))
      );
    },
    30_000,
  );
  client.close();
  console.log(describe(info));
  console.error(`(ready in ${((Date.now() - started) / 1000).toFixed(1)} s)`);
}

async function serve(): Promise<void> {
  const cp = new ControlPlane({ dir, kubelet: { images: localImages() } });
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await cp.stop();
    rmSync(join(dir, 'cluster.json'), { force: true });
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop());
  process.on('SIGINT', () => void stop());
  try {
    await cp.start();
  } catch (err) {
    console.error(`control plane failed to start: ${(err as Error).stack ?? err}`);
    await cp.stop().catch(() => undefined);
    process.exit(1);
  }
}

async function down(): Promise<void> {
  stopUiProxy(dir);
  const info = running();
  if (!info) {
    console.log('No local control plane is running.');
    return;
  }
  process.kill(info.pids.runner as number, 'SIGTERM');
  await waitFor('the control plane to stop', () => !alive(info.pids.runner), 60_000, 200);
  console.log('Local control plane stopped.');
}

async function status(): Promise<void> {
  const info = running();
  if (!info) {
    console.log('No local control plane is running. Start one with: npm run cluster:up');
    process.exitCode = 1;
    return;
  }
  console.log(describe(info));
}

const USAGE = `Usage: npm run cluster:up | cluster:down | cluster:status   (node test/cluster/cli.ts up|down|status)

A local Kubernetes control plane for manual use: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, a process kubelet with 2 nodes, and agentflow's own etcd (TLS and auth on).

Commands:
  up      start it in a detached runner process, wait until its nodes are Ready and print the
          KUBECONFIG; if one is already running, print that one's
  down    stop it
  status  print the running one's addresses and KUBECONFIG; exit 1 if none is running

Environment:
  AGENTFLOW_CLUSTER_DIR  its data, logs and kubeconfig (default .cluster; up wipes it first)

Flags:
  -h, --help  this text
`;

// "serve" is what "up" runs detached: the runner that owns the servers. It is not for people.
const commands: Record<string, () => Promise<void>> = { up, down, status, serve };
let run: (() => Promise<void>) | undefined;
try {
  const { values, positionals } = parseArgs({
    options: { help: { type: 'boolean', short: 'h' } },
    strict: true,
    allowPositionals: true,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  const [cmd, ...extra] = positionals;
  if (cmd === undefined) throw new Error('a command is required');
  if (extra.length > 0) throw new Error(`unexpected argument "${extra[0]}"`);
  run = commands[cmd];
  if (!run) throw new Error(`unknown command "${cmd}"`);
} catch (err) {
  process.stderr.write(`cli.ts: ${(err as Error).message}\n\n${USAGE}`);
  process.exit(2);
}
await run();
