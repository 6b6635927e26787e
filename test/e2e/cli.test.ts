import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DATA_APISERVICE } from '../../src/api/data-api.ts';
import { installAgentflow } from '../cluster/agentflow-install.ts';
import { binaryPath } from '../cluster/binaries.ts';
import type { ClusterHandle } from '../cluster/cluster-handle.ts';
import { agentflowImage, etcdImage } from '../cluster/node-images.ts';
import { RealNode } from '../cluster/real-node.ts';
import { testCluster, uniqueName } from '../cluster/testing.ts';
import { apply, pool, until } from '../integration/operator/helpers.ts';
import { fixturePool, type Json, readHandlerLog } from '../integration/workflow/helpers.ts';

// The agentflow CLI, the real binary (bin/agentflow.mjs, also as `kubectl agentflow`), against the
// chart installed with helm on the local control plane: the operator's data API registered with the
// API server, users with their own kubeconfigs and RBAC. What a user sees: exit codes, live output,
// logs while a task runs, a retry that keeps what succeeded, 403 for every command without RBAC, and
// the live view through a real terminal (tmux). On a real node (test/cluster/real-node.ts): the chart
// as shipped, and the agents the tests steer are the Dockerfile's image running the fixture handlers,
// which see the test's work directory through a hostPath volume at the same path.

let cluster: ClusterHandle;
let ns: string;
let carol: string; // may use workflows in ns
let dave: string; // may not
let handlerLog: string;
let work: string;
let node: RealNode | undefined;
const group = uniqueName('cli');
/** The release's namespace. */
const release = uniqueName('agentflow-cli');
const fixture = resolve('test/fixtures/agent/data-api-handlers.mjs');
/** On kind (scripts/e2e-kind.sh): skipped, its nodes cannot see this machine's work directory. */
const external = testCluster().info.external;
const agentflowBin = resolve('bin/agentflow.mjs');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI as a user would, with that user's kubeconfig only. */
function cli(
  kubeconfig: string,
  args: string[],
  o: { onStdout?: (all: string) => void; timeoutMs?: number; env?: Record<string, string> } = {},
): Promise<Run> {
  return new Promise((res, reject) => {
    const child = spawn(process.execPath, [agentflowBin, ...args], {
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', KUBECONFIG: kubeconfig, ...o.env },
    });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`agentflow ${args.join(' ')} did not finish; stdout:\n${stdout}\nstderr:\n${stderr}`));
    }, o.timeoutMs ?? 120_000);
    child.stdout.on('data', (b: Buffer) => {
      stdout += b.toString();
      o.onStdout?.(stdout);
    });
    child.stderr.on('data', (b: Buffer) => {
      stderr += b.toString();
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      res({ code, stdout, stderr });
    });
  });
}

const wfFile = (name: string, spec: Json): string => {
  const path = join(work, `${name}.yaml`);
  writeFileSync(
    path,
    JSON.stringify({ apiVersion: 'agentflow.io/v1alpha1', kind: 'Workflow', metadata: { name }, spec }),
  );
  return path;
};
const getWf = (name: string) =>
  cluster.client.get<Json>(`/apis/agentflow.io/v1alpha1/namespaces/${ns}/workflows/${name}`);

/**
 * A fixture pool (fixturePool: host-process agents of the checkout) as the image runs it: `agent`
 * with the work directory (the fixture module copied there, its handler log, the files the tests
 * steer handlers with) mounted at the same path as on this machine. Nothing of the checkout is mapped in.
 */
function imagePool(manifest: Json, ref: string): Json {
  const spec = manifest.spec.template.spec;
  const { command: _hostProcess, ...container } = spec.containers[0];
  const handlers = join(work, 'handlers.mjs');
  copyFileSync(fixture, handlers);
  spec.volumes = [{ name: 'work', hostPath: { path: work, type: 'Directory' } }];
  spec.containers[0] = {
    ...container,
    image: ref,
    args: ['agent'],
    env: (container.env as { name: string; value: string }[]).map((e) =>
      e.name === 'AGENTFLOW_HANDLERS_MODULE' ? { ...e, value: handlers } : e,
    ),
    volumeMounts: [{ name: 'work', mountPath: work }],
  };
  return manifest;
}

beforeAll(async () => {
  cluster = testCluster();
  if (external) return; // the agents read and write this machine's files
  const image = await agentflowImage();
  // One node that takes any pod, the images the chart names in its containerd, and the bundled
  // etcd's volume reserved for its member's claim.
  node = await RealNode.start(cluster, { name: `${group}-a`, images: [image, await etcdImage()], taint: false });
  await node.hostPathVolume(`${group}-etcd-0`, '1Gi', { namespace: release, name: 'data-cli-agentflow-etcd-0' });
  const labelled = await cluster.kubectl(['label', 'node', node.name, `agentflow.test/group=${group}`]);
  expect(labelled.code, labelled.stderr).toBe(0);
  await installAgentflow(cluster, { release: 'cli', namespace: release, realNodes: true });
  await until(
    'the data API is Available',
    () => cluster.client.get<Json>(`/apis/apiregistration.k8s.io/v1/apiservices/${DATA_APISERVICE}`),
    (s) => s.status?.conditions?.some((c: Json) => c.type === 'Available' && c.status === 'True'),
    90_000,
  );
  ns = uniqueName('cli');
  await cluster.client.post('/api/v1/namespaces', { metadata: { name: ns } });
  work = join(cluster.info.dir, `cli-${ns}`);
  mkdirSync(work, { recursive: true });
  chmodSync(work, 0o777); // the agents' image runs as uid 65532
  handlerLog = join(work, 'handlers.jsonl');
  // The README's pool, and a pool of fixture agents whose handlers the tests steer.
  const examplePool = readFileSync('deploy/examples/agentpool.yaml', 'utf8');
  const r = await cluster.kubectl(['apply', '-n', ns, '-f', '-'], { input: examplePool });
  expect(r.code, r.stderr).toBe(0);
  await apply(
    cluster,
    imagePool(fixturePool(ns, 'steer', { group, replicas: 1, handlersModule: fixture, handlerLog }), image.ref),
  );
  await until(
    'agents connected',
    () => pool(cluster, ns, 'steer'),
    (p) => p.status?.connectedAgents === 1,
    90_000,
  );
  await until(
    'researchers up',
    () => pool(cluster, ns, 'researchers'),
    (p) => p.status?.connectedAgents >= 1,
    90_000,
  );

  carol = cluster.userKubeconfig('carol');
  dave = cluster.userKubeconfig('dave');
  for (const kc of [carol, dave]) {
    // Both users' kubeconfigs default to the test namespace, as `kubectl config set-context --namespace` does.
    execFileSync(binaryPath('kubectl'), ['config', 'set-context', '--current', `--namespace=${ns}`], {
      env: { KUBECONFIG: kc },
    });
  }
  await cluster.client.post(`/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/roles`, {
    metadata: { name: 'workflow-user' },
    rules: [
      {
        apiGroups: ['agentflow.io'],
        resources: ['workflows'],
        verbs: ['get', 'list', 'watch', 'create', 'update', 'patch'],
      },
      { apiGroups: ['agentflow.io'], resources: ['agentpools'], verbs: ['get', 'list', 'watch'] },
    ],
  });
  await cluster.client.post(`/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/rolebindings`, {
    metadata: { name: 'carol' },
    roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'workflow-user' },
    subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: 'carol' }],
  });
}, 300_000);

afterAll(async () => {
  if (external) return cluster.close();
  // Pools and workflows first (their finalizers need the operator), then the release: its APIService is
  // cluster-wide, and the next e2e file installs the chart again.
  await cluster.kubectl(['delete', 'workflows,agentpools', '--all', '-n', ns, '--wait=true', '--timeout=60s']);
  await cluster.helm(['uninstall', 'cli', '--namespace', release, '--wait', '--timeout', '120s']);
  await cluster.kubectl(['delete', 'namespace', ns, '--wait=false']);
  await node?.stop();
  await cluster.close();
});

describe.skipIf(external)('agentflow CLI against the chart on the local control plane', () => {
  it('submit --watch of the example exits 0, its output showing every task reaching Succeeded', async () => {
    const r = await cli(carol, ['submit', '-f', 'deploy/examples/workflow-research.yaml', '--watch']);
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toContain('workflow.agentflow.io/research-report created');
    for (const task of ['plan', 'research.0', 'research.1', 'research.2', 'write']) {
      expect(r.stdout, task).toMatch(new RegExp(`^\\S+ ${task.replace('.', '\\.')} Succeeded\\b`, 'm'));
    }
    expect(r.stdout).toMatch(/workflow\/research-report Succeeded/);
    // The per-task table of what ran: agents and nodes from the data API.
    const d = await cli(carol, ['describe', 'research-report']);
    expect(d.code, d.stderr).toBe(0);
    expect(d.stdout).toMatch(/TASK\s+PHASE\s+ATTEMPTS\s+AGENT\s+NODE/);
    expect(d.stdout).toMatch(/research\.2\s+Succeeded\s+1\s+researchers-\S+\s+\S+/);
    const out = await cli(carol, ['output', 'research-report', 'write', '-o', 'json']);
    expect(out.code, out.stderr).toBe(0);
    expect(JSON.parse(out.stdout).title).toBe('Report: warm agent pools');
    // And as a kubectl plugin: kubectl finds kubectl-agentflow on PATH.
    const plugins = join(work, 'plugins');
    mkdirSync(plugins, { recursive: true });
    if (!existsSync(join(plugins, 'kubectl-agentflow'))) symlinkSync(agentflowBin, join(plugins, 'kubectl-agentflow'));
    const k = await new Promise<Run>((res) => {
      const child = spawn(binaryPath('kubectl'), ['agentflow', 'get', 'research-report', '-o', 'name'], {
        env: {
          PATH: `${plugins}:${dirname(process.execPath)}:${process.env.PATH ?? ''}`,
          KUBECONFIG: carol,
          HOME: work,
        },
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (b: Buffer) => (stdout += b));
      child.stderr.on('data', (b: Buffer) => (stderr += b));
      child.on('exit', (code) => res({ code, stdout, stderr }));
    });
    expect(k.code, k.stderr).toBe(0);
    expect(k.stdout.trim()).toBe('workflow.agentflow.io/research-report');
  });

  it('the agent example: streams its draft, records usage, waits for `approve`, then publishes', async () => {
    // carol may decide approvals in her namespace through the chart's ClusterRole.
    await cluster.client.post(`/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/rolebindings`, {
      metadata: { name: 'carol-approves' },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'cli-agentflow-approver' },
      subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: 'carol' }],
    });
    const sub = await cli(carol, ['submit', '-f', 'deploy/examples/workflow-review.yaml']);
    expect(sub.code, sub.stderr).toBe(0);
    await until(
      'draft runs',
      () => getWf('review-notes'),
      (w) => w.status?.tasks?.some((t: Json) => t.name === 'draft' && t.phase !== 'Pending'),
      60_000,
    );
    // The draft's tokens, followed as they stream, exactly as streamed.
    const streamed = await cli(carol, ['logs', 'review-notes', 'draft', '--stream', '-f']);
    expect(streamed.code, streamed.stderr).toBe(0);
    expect(streamed.stdout).toMatch(
      /^warm agent pools stay warm so tasks start in milliseconds and no result is lost agents .*\.\n$/,
    );
    expect(streamed.stdout.split(' ')).toHaveLength(42); // "warm agent pools" and 39 more words
    // Waiting for a person: listed, and the slot is free.
    const waiting = await until(
      'review waits',
      () => cli(carol, ['approvals', 'review-notes']),
      (r) => r.stdout.includes('review'),
      60_000,
    );
    expect(waiting.stdout).toMatch(/^TASK\s+DEADLINE\s+ON-TIMEOUT\s+MESSAGE/);
    expect(waiting.stdout).toContain('Publish "Notes on warm agent pools" (40 words)?');
    // The status (written at most every 2 s) catches up with the usage the draft's result carried.
    const described = await until(
      'describe shows the usage',
      () => cli(carol, ['describe', 'review-notes']),
      (r) => r.stdout.includes('Usage:'),
      30_000,
    );
    expect(described.stdout).toMatch(/Usage:\s+68 tokens \(28 in, 40 out\), \$0\.000136/);
    expect(described.stdout).toMatch(/review\s+Waiting/);
    const approved = await cli(carol, ['approve', 'review-notes', 'review', '-m', 'ship it']);
    expect(approved.stdout).toBe('task review of workflow review-notes approved by carol\n');
    const watched = await cli(carol, ['watch', 'review-notes']);
    expect(watched.code, `${watched.stdout}\n${watched.stderr}`).toBe(0);
    const out = await cli(carol, ['output', 'review-notes', 'publish']);
    expect(JSON.parse(out.stdout)).toMatchObject({ published: 'Notes on warm agent pools', approvedBy: 'carol' });
    const review = await cli(carol, ['output', 'review-notes', 'review']);
    expect(JSON.parse(review.stdout)).toMatchObject({ approved: true, user: 'carol', message: 'ship it' });
  });

  it('a failing workflow exits 1 naming the task and its error', async () => {
    const file = wfFile('doomed', {
      pool: 'steer',
      tasks: [{ name: 'shut', handler: 'gate', input: { openFile: join(work, 'never') } }],
    });
    const r = await cli(carol, ['submit', '-f', file, '--watch']);
    expect(r.code).toBe(1);
    const all = `${r.stdout}\n${r.stderr}`;
    expect(all).toContain('shut');
    expect(all).toContain(`gate closed: ${join(work, 'never')} is missing`);
  });

  it('logs -f shows a task’s lines while it runs, and ends when the task does', async () => {
    const stopFile = join(work, 'stop-tail');
    const file = wfFile('tail', { pool: 'steer', tasks: [{ name: 't', handler: 'ticker', input: { stopFile } }] });
    expect((await cli(carol, ['submit', '-f', file])).code).toBe(0);
    await until(
      't runs',
      () => getWf('tail'),
      (w) => w.status?.phase === 'Running',
      60_000,
    );
    let stopped = false;
    const followed = cli(carol, ['logs', 'tail', 't', '-f'], {
      onStdout: (all) => {
        // Lines are on screen while the task still runs: only then is it told to stop.
        if (!stopped && (all.match(/^tick \d+$/gm) ?? []).length >= 5) {
          stopped = true;
          writeFileSync(stopFile, '');
        }
      },
    });
    const r = await followed;
    expect(stopped, 'tick lines arrived while the task ran').toBe(true);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trimEnd().split('\n').at(-1)).toBe('ticker done');
    expect((await getWf('tail')).status.phase).toBe('Succeeded');
  });

  it('retry completes a Failed run without re-running its succeeded tasks', async () => {
    const openFile = join(work, 'open');
    const file = wfFile('again', {
      pool: 'steer',
      tasks: [
        { name: 'first', handler: 'once' },
        { name: 'side', handler: 'once' },
        { name: 'door', handler: 'gate', dependsOn: ['first'], input: { openFile } },
        { name: 'after', handler: 'once', dependsOn: ['door'] },
      ],
    });
    const failed = await cli(carol, ['submit', '-f', file, '--watch']);
    expect(failed.code).toBe(1);
    writeFileSync(openFile, '');
    const r = await cli(carol, ['retry', 'again', '--watch']);
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect((await getWf('again')).status.phase).toBe('Succeeded');
    const runs = (task: string) => readHandlerLog(handlerLog).filter((l) => l.task === `again/${task}`);
    expect(runs('first')).toHaveLength(1);
    expect(runs('side')).toHaveLength(1);
    expect(runs('door').map((l) => l.attempt)).toEqual([1, 2]);
    expect(runs('after')).toHaveLength(1);
  });

  it('gives a user without RBAC on the namespace a clear 403 for every command', async () => {
    const file = wfFile('nope', { pool: 'steer', tasks: [{ name: 'x', handler: 'once' }] });
    const commands: string[][] = [
      ['submit', '-f', file],
      ['watch', 'research-report'],
      ['list'],
      ['get', 'research-report'],
      ['describe', 'research-report'],
      ['output', 'research-report', 'write'],
      ['logs', 'research-report', 'plan'],
      ['cancel', 'research-report'],
      ['suspend', 'research-report'],
      ['resume', 'research-report'],
      ['retry', 'research-report'],
      ['resubmit', 'research-report'],
      ['agents', 'steer'],
      ['agents'],
      ['state', 'list', '--workflow', 'research-report'],
      ['state', 'put', '--workflow', 'research-report', 'k', '1'],
      ['state', 'get', '--pool', 'steer', 'k'],
      ['audit', 'verify', 'research-report'],
    ];
    const results = await Promise.all(commands.map((c) => cli(dave, c)));
    commands.forEach((c, i) => {
      const r = results[i] as Run;
      expect(r.code, c.join(' ')).toBe(1);
      expect(r.stderr, c.join(' ')).toContain('Error from server (Forbidden)');
      expect(r.stderr, c.join(' ')).toContain('User "dave" cannot');
    });
    // Nothing changed on the user's behalf.
    expect((await getWf('research-report')).metadata.annotations ?? {}).not.toHaveProperty('agentflow.io/cancel');
  });

  it('reads, writes and watches shared state with the Workflow’s RBAC, and verifies the audit chain', async () => {
    const seed = await cli(carol, ['state', 'put', '--workflow', 'research-report', 'notes/seed', 'planted']);
    expect(seed.code, seed.stderr).toBe(0);
    const changes: string[] = [];
    let sawFirst: () => void = () => undefined;
    const first = new Promise<void>((r) => {
      sawFirst = r;
    });
    const child = spawn(
      process.execPath,
      [agentflowBin, 'state', 'watch', '--workflow', 'research-report', '--prefix', 'notes/'],
      {
        env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', KUBECONFIG: carol },
      },
    );
    child.stdout.on('data', (b: Buffer) => {
      changes.push(...b.toString().split('\n').filter(Boolean));
      if (changes.length > 0) sawFirst();
    });
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    // It prints what is there first, then follows from that listing's revision: once the seed shows,
    // no later write can be missed.
    await first;
    await until(
      'the seed listed',
      async () => changes,
      (c) => c.length >= 1,
      15_000,
    );
    expect(changes).toEqual(['PUT notes/seed planted']);
    const put = await cli(carol, ['state', 'put', '--workflow', 'research-report', 'notes/summary', '{"words":120}']);
    expect(put.code, put.stderr).toBe(0);
    expect(put.stdout).toMatch(/^state "notes\/summary" written \(revision \d+, version 1\)$/m);
    const got = await cli(carol, ['state', 'get', '--workflow', 'research-report', 'notes/summary']);
    expect(JSON.parse(got.stdout)).toEqual({ words: 120 });
    const list = await cli(carol, ['state', 'list', '--workflow', 'research-report']);
    expect(list.stdout).toMatch(/^KEY\s+REVISION\s+VERSION\s+VALUE$/m);
    expect(list.stdout).toMatch(/^notes\/summary\s+\d+\s+1\s+\{"words":120\}$/m);
    expect(list.stdout).toMatch(/^notes\/seed\s+\d+\s+1\s+planted$/m);
    // A stale compare-and-swap is refused, saying so.
    const stale = await cli(carol, [
      'state',
      'put',
      '--workflow',
      'research-report',
      'notes/summary',
      '1',
      '--expected-revision',
      '1',
    ]);
    expect(stale.code).toBe(1);
    expect(stale.stderr).toContain('Conflict');
    await until(
      'the watch printed the write',
      async () => changes,
      (c) => c.length >= 2,
      15_000,
    );
    child.kill('SIGINT');
    expect(await exited).toBe(0);
    expect(changes).toEqual(['PUT notes/seed planted', 'PUT notes/summary {"words":120}']);
    // The namespace's state needs update on agentpools, which carol lacks: reading works, writing is refused.
    expect((await cli(carol, ['state', 'list'])).code).toBe(0);
    const ns403 = await cli(carol, ['state', 'put', 'shared', 'x']);
    expect(ns403.code).toBe(1);
    expect(ns403.stderr).toContain('cannot update resource "agentpools"');
    // Usage errors name the flags.
    const both = await cli(carol, ['state', 'list', '--workflow', 'a', '--pool', 'b']);
    expect(both.code).toBe(2);
    expect(both.stderr).toContain('--workflow and --pool');

    const audit = await cli(carol, ['audit', 'verify', 'research-report']);
    expect(audit.code, audit.stderr).toBe(0);
    expect(audit.stdout).toMatch(/audit log of workflow research-report: \d+ entries, chain intact/);
  });

  it('agentflow ui serves the UI on loopback, only to the holder of its token', async () => {
    const child = spawn(process.execPath, [agentflowBin, 'ui', '--port', '0'], {
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', KUBECONFIG: carol },
    });
    let out = '';
    const url = await new Promise<string>((resolveUrl, reject) => {
      const t = setTimeout(() => reject(new Error(`no URL printed: ${out}`)), 30_000);
      child.stdout.on('data', (b: Buffer) => {
        out += b.toString();
        const m = /http:\/\/127\.0\.0\.1:\d+\/\?token=\S+/.exec(out);
        if (m) {
          clearTimeout(t);
          resolveUrl(m[0]);
        }
      });
    });
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    const u = new URL(url);
    expect((await fetch(`${u.origin}/`, { redirect: 'manual' })).status).toBe(401);
    const granted = await fetch(url, { redirect: 'manual' });
    expect(granted.status).toBe(303);
    const cookie = (granted.headers.get('set-cookie') ?? '').split(';')[0] ?? '';
    const page = await fetch(`${u.origin}/`, { headers: { cookie } });
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('<div id="app"></div>');
    const wfs = await fetch(`${u.origin}/apis/agentflow.io/v1alpha1/namespaces/${ns}/workflows`, {
      headers: { cookie },
    });
    expect(wfs.status).toBe(200);
    expect(((await wfs.json()) as Json).items.map((w: Json) => w.metadata.name)).toContain('research-report');
    child.kill('SIGINT');
    expect(await exited).toBe(0);
  });

  it('watch on a terminal redraws a task tree in place (tmux)', async () => {
    const stopFile = join(work, 'stop-tty');
    const file = wfFile('tty', {
      pool: 'steer',
      tasks: [
        { name: 'start', handler: 'once' },
        { name: 'long', handler: 'ticker', dependsOn: ['start'], input: { stopFile } },
        { name: 'fan', handler: 'once', dependsOn: ['start'], forEach: '[1, 2, 3]' },
        { name: 'end', handler: 'once', dependsOn: ['long', 'fan'] },
      ],
    });
    expect((await cli(carol, ['submit', '-f', file])).code).toBe(0);
    const socket = `agentflow-${ns}`;
    const tmux = (...args: string[]) =>
      execFileSync('tmux', ['-L', socket, ...args], {
        encoding: 'utf8',
        env: { PATH: process.env.PATH ?? '', TERM: 'xterm-256color' },
      });
    const command = `${process.execPath} ${agentflowBin} watch tty; echo "EXIT=$?"; sleep 60`;
    tmux('new-session', '-d', '-s', 'w', '-x', '110', '-y', '30', '-e', `KUBECONFIG=${carol}`, command);
    try {
      const screen = () => tmux('capture-pane', '-p', '-t', 'w');
      const running = await until(
        'the tree with long Running',
        async () => screen(),
        (s) => /long\s.*Running/.test(s),
        60_000,
      );
      expect(running).toMatch(/tty\s.*Running/);
      expect(running).toMatch(/start\s.*Succeeded/);
      // The fan-out is one group under its parent, its instances inside.
      expect(running).toMatch(/fan/);
      writeFileSync(stopFile, '');
      const done = await until(
        'EXIT=0',
        async () => screen(),
        (s) => s.includes('EXIT='),
        60_000,
      );
      expect(done).toContain('EXIT=0');
      expect(done).toMatch(/end\s.*Succeeded/);
      // Redrawn in place: the whole history (scrollback and screen) holds one frame's header, not one
      // per refresh, though the view was redrawn many times (ticks, phases) meanwhile.
      const history = tmux('capture-pane', '-p', '-S', '-2000', '-t', 'w');
      expect(history.split('\n').filter((l) => /^Name:\s+tty\s*$/.test(l))).toHaveLength(1);
    } finally {
      tmux('kill-server');
    }
  });
});
