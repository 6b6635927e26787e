// `npm run demo`: the local control plane (kept running afterwards), the
// agentflow chart installed with helm, and the README's example — a pool of
// research agents and a plan -> research -> write workflow — watched until it
// succeeds. Prints how to explore the result with kubectl.
import { spawn, spawnSync } from 'node:child_process';
import { openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { installAgentflow } from '../test/cluster/agentflow-install.ts';
import { binaryPath, repoRoot } from '../test/cluster/binaries.ts';
import { ClusterHandle } from '../test/cluster/cluster-handle.ts';
import { ControlPlane } from '../test/cluster/control-plane.ts';
import { stopUiProxy, UI_PID_FILE } from '../test/cluster/ui-pid.ts';

const NAMESPACE = 'demo';
const dir = process.env.AGENTFLOW_CLUSTER_DIR ?? join(repoRoot, '.cluster');

const USAGE = `Usage: npm run demo

Starts the local control plane (npm run cluster:up; it keeps running afterwards), installs
agentflow with helm from charts/agentflow, applies deploy/examples/ in namespace ${NAMESPACE} (an
AgentPool and the plan -> research -> write Workflow), watches the workflow until it finishes and
prints how to explore the result with kubectl. A rerun re-creates the workflow. Exit code 0 when the
workflow succeeded, 1 otherwise. Stop the control plane with: npm run cluster:down

Environment:
  AGENTFLOW_CLUSTER_DIR  where the control plane keeps its data and logs (default .cluster)

Flags:
  -h, --help  this text
`;

/** Returns the exit code when the arguments say not to run the demo (help, or a bad flag). */
function usageExit(): number | undefined {
  try {
    const { values } = parseArgs({ options: { help: { type: 'boolean', short: 'h' } }, strict: true });
    if (!values.help) return undefined;
    process.stdout.write(USAGE);
    return 0;
  } catch (err) {
    process.stderr.write(`demo: ${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
}

function step(s: string): void {
  process.stdout.write(`\n==> ${s}\n`);
}

async function main(): Promise<number> {
  step('Starting the local control plane (etcd, kube-apiserver, controllers, a process kubelet with 2 nodes)');
  const up = spawnSync(process.execPath, [join(repoRoot, 'test/cluster/cli.ts'), 'up'], { stdio: 'inherit' });
  if (up.status !== 0) return 1;
  const info = ControlPlane.readInfo(dir);
  const cluster = new ClusterHandle(info);
  const kubectl = async (...args: string[]) => {
    const r = await cluster.kubectl(args);
    if (r.code !== 0) throw new Error(`kubectl ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };

  step('Installing agentflow with helm (charts/agentflow: CRDs, 2 operator replicas, RBAC, dispatcher Service)');
  await installAgentflow(cluster);
  process.stdout.write(await kubectl('get', 'pods', '-n', 'agentflow-system', '-L', 'agentflow.io/role'));

  step(`Applying deploy/examples/ in namespace ${NAMESPACE} (AgentPool "researchers", Workflow "research-report")`);
  await cluster.kubectl(['create', 'namespace', NAMESPACE]);
  // A rerun starts the workflow afresh.
  await cluster.kubectl([
    'delete',
    'workflow',
    'research-report',
    '-n',
    NAMESPACE,
    '--ignore-not-found',
    '--wait=true',
  ]);
  process.stdout.write(await kubectl('apply', '-n', NAMESPACE, '-f', 'deploy/examples/'));

  step(`Watching it with the agentflow CLI: npx agentflow watch research-report -n ${NAMESPACE}`);
  // The CLI as a user runs it, with the kubeconfig only: a live task tree on a terminal, a line per change otherwise.
  spawnSync(process.execPath, [join(repoRoot, 'bin/agentflow.mjs'), 'watch', 'research-report', '-n', NAMESPACE], {
    stdio: 'inherit',
    env: { ...process.env, KUBECONFIG: info.kubeconfig },
    timeout: 300_000,
  });
  const phase = (
    await kubectl('get', 'workflow', 'research-report', '-n', NAMESPACE, '-o', 'jsonpath={.status.phase}')
  ).trim();
  await new Promise((r) => setTimeout(r, 2_500)); // one pool status refresh, so AGENTS and SLOTS are current
  process.stdout.write(await kubectl('get', 'agentpools', '-n', NAMESPACE));
  if (phase !== 'Succeeded') {
    process.stdout.write(await kubectl('describe', 'workflow', 'research-report', '-n', NAMESPACE));
    process.stderr.write(`\nThe workflow did not succeed (phase ${phase || 'unknown'}).\n`);
    cluster.close().catch(() => undefined);
    return 1;
  }
  const report = await kubectl(
    'get',
    'workflow',
    'research-report',
    '-n',
    NAMESPACE,
    '-o',
    'jsonpath={.status.outputs.write.title}{range .status.outputs.write.sections[*]}{"\\n  - "}{.heading}{end}',
  );
  step('The report');
  process.stdout.write(`  ${report}\n`);

  // The web UI: `agentflow ui` left running (a loopback proxy with the kubeconfig's credentials), stopped by
  // npm run cluster:down.
  const ui = await startUi(info.kubeconfig).catch((err: Error) => {
    process.stderr.write(`(the web UI proxy did not start: ${err.message})\n`);
    return undefined;
  });
  const k = binaryPath('kubectl');
  process.stdout.write(`
Explore it (the control plane keeps running):

  export KUBECONFIG=${info.kubeconfig}
  alias kubectl=${k}
  npx agentflow describe research-report -n ${NAMESPACE}     # every task: attempts, agent, node, duration
  npx agentflow logs research-report -n ${NAMESPACE}         # what each task logged ([task] prefixed)
  npx agentflow output research-report write -n ${NAMESPACE} # a task's output
  npx agentflow agents -n ${NAMESPACE}                       # agents, slots, in flight
  npx agentflow resubmit research-report -n ${NAMESPACE} --watch   # run it again as a new copy
  kubectl get agentflow -n ${NAMESPACE}                     # pools and workflows
  kubectl describe workflow research-report -n ${NAMESPACE}  # conditions and Events
  kubectl get workflow research-report -n ${NAMESPACE} -o jsonpath='{.status.outputs}'
  kubectl get pods -n ${NAMESPACE} -o wide                   # agent pods, placed by the operator
  kubectl patch agentpool researchers -n ${NAMESPACE} --type=merge -p '{"spec":{"autoscaling":{"minReplicas":3}}}'
                                                             # the autoscaler owns replicas: move its bounds
  kubectl annotate workflow research-report -n ${NAMESPACE} agentflow.io/rerun=again   # a fresh copy runs
  kubectl logs -n ${NAMESPACE} -l agentflow.io/pool=researchers   # agent logs, one line per task start and end
  kubectl logs -n agentflow-system -l agentflow.io/role=leader

${ui ? `Web UI (open it in a browser; it shows the workflow's DAG, every task's output and log, the pools):\n\n  ${ui}\n\n` : ''}Stop it with: npm run cluster:down
`);
  await cluster.close();
  return 0;
}

/** Starts `agentflow ui -n demo` detached (its pid in the cluster directory) and returns the URL it prints. */
async function startUi(kubeconfig: string): Promise<string> {
  stopUiProxy(dir);
  const log = join(dir, 'ui.log');
  const out = openSync(log, 'w');
  const child = spawn(process.execPath, [join(repoRoot, 'bin/agentflow.mjs'), 'ui', '-n', NAMESPACE], {
    detached: true,
    stdio: ['ignore', out, out],
    env: { ...process.env, KUBECONFIG: kubeconfig },
  });
  child.unref();
  writeFileSync(join(dir, UI_PID_FILE), String(child.pid));
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    const m = /http:\/\/127\.0\.0\.1:\d+\/\?token=\S+/.exec(readFileSync(log, 'utf8'));
    if (m) return m[0];
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`no URL within 20 s; see ${log}`);
}

process.exit(usageExit() ?? (await main()));
